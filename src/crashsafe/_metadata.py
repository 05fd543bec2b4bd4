"""What a replacement keeps of the old file, and the targets no rename can replace well.

Every call that replaces a file checks the target with :func:`check_target`
before anything is staged (a hard-linked file, a mount point) and, with
``preserve="all"``, gives the staged file the old file's extended attributes
with :func:`carry` right after it is created, before any data is written:
the staged file is invisible (anonymous, or a private name) until the
rename, so a reader of the target sees the old file with its attributes or
the new file with the same attributes, never a file without them.
"""

from __future__ import annotations

import stat
import sys
import warnings
from typing import Final, Literal

from crashsafe import _platform
from crashsafe.errors import (
    HardLinkedTargetError,
    MetadataNotPreservedWarning,
    MountedTargetError,
    UnsupportedByFilesystemError,
)

__all__ = [
    "HARDLINKS",
    "PRESERVE",
    "Hardlinks",
    "OwnPerm",
    "Preserve",
    "carry",
    "check_keywords",
    "check_target",
    "metadata_not_kept",
]  # fmt: skip

Preserve = Literal["all", "mode"]
Hardlinks = Literal["refuse", "break"]
PRESERVE: Final = ("all", "mode")
HARDLINKS: Final = ("refuse", "break")


def check_keywords(preserve: object, hardlinks: object) -> None:
    """Raise :class:`ValueError` naming the word given for a *preserve* or
    *hardlinks* that is not one of the words they take."""
    if preserve != "all" and preserve != "mode":  # noqa: PLR1714 - no tuple per write
        raise ValueError(f"invalid preserve {preserve!r}: expected one of {', '.join(PRESERVE)}")
    if hardlinks != "refuse" and hardlinks != "break":  # noqa: PLR1714
        raise ValueError(f"invalid hardlinks {hardlinks!r}: expected one of {', '.join(HARDLINKS)}")


def check_target(
    directory: _platform.Directory,
    name: str,
    existing: _platform.Status,
    path: str,
    hardlinks: Hardlinks,
) -> None:
    """Refuse, before anything is staged, a regular file a rename cannot replace as asked.

    Raises :class:`~crashsafe.MountedTargetError` (``EBUSY``) for a mount
    point (a bind-mounted file), :class:`~crashsafe.HardLinkedTargetError`
    (``EMLINK``) for a file with more than one link unless *hardlinks* is
    ``"break"``.
    """
    # A count above 1 is asked again past the attribute cache: bindfs (FUSE)
    # showed 2 for a second after a create-only publish by link() and unlink().
    if existing.st_nlink > 1 and hardlinks != "break" and (n := directory.link_count(name)) > 1:
        raise HardLinkedTargetError(path, n)
    if existing.mount_root is not False and directory.is_mount_point(name, existing):
        raise MountedTargetError(path)


def carry(directory: _platform.Directory, name: str, fd: int, mode: int, path: str) -> None:
    """Give the staged file open as *fd* the extended attributes of the file *name*,
    then exactly *mode* again where an access ACL changed it (``chmod`` sets an
    ACL's mask from the group bits, as ``setfacl`` documents, so a *perm* given
    wins over the old ACL's mask; its named entries stay, limited by it).

    Warns :class:`~crashsafe.MetadataNotPreservedWarning` naming what could not
    be kept; raises the :class:`OSError` of any other failure.
    """
    lost, acl_changed = directory.copy_attributes(name, fd)
    if acl_changed or stat.S_IMODE(mode) & (stat.S_ISUID | stat.S_ISGID):
        # Setting an ACL rewrites the group bits and may clear setgid.
        _platform.set_metadata(fd, mode, None)
    if lost:
        warnings.warn(MetadataNotPreservedWarning(path, lost), stacklevel=_caller_level())


class OwnPerm(int):
    """The *perm* of a file of crashsafe's own (a transaction's journal): best
    effort, since no caller asked for it. Where the filesystem does not keep
    it (ntfs-3g, exFAT), :func:`metadata_not_kept` neither refuses nor warns."""

    __slots__ = ()


def metadata_not_kept(path: str, perm: int | None, mode: int, lost: tuple[str, ...]) -> None:
    """Refuse or name what the filesystem did not keep of a staged file's mode and
    owner (*lost*, from :meth:`~crashsafe._platform.Directory.create_temp`),
    before any data is written.

    An explicit *perm* that did not hold raises
    :class:`~crashsafe.UnsupportedByFilesystemError` (the caller then discards
    the staged file: nothing is published, nothing is left); a mode or owner
    only carried from the old file, or a new file's default, warns
    :class:`~crashsafe.MetadataNotPreservedWarning`: the file gets *mode*.
    """
    if isinstance(perm, OwnPerm):
        return
    if perm is not None:
        raise UnsupportedByFilesystemError(
            path,
            f"this filesystem does not keep the mode perm={perm:#o} asks for "
            f"(the file would have {mode:#o}: {'; '.join(lost)})",
        )
    warnings.warn(MetadataNotPreservedWarning(path, list(lost)), stacklevel=_caller_level())


def _caller_level() -> int:
    """The stack level of the first frame outside crashsafe (and contextlib, through
    which atomic_open and atomic_path are entered): the caller's own line."""
    level, frame = 2, sys._getframe(2)  # the frame that called carry()
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
        ("crashsafe.", "contextlib")
    ):
        level, frame = level + 1, frame.f_back
    return level
