"""Step 1 of the protocol: from a path to the open directory that will hold it.

:func:`locate` resolves the path (following symlinks at its last component,
link by link, as the kernel would) to an open directory, the name in it and
the status of what is there now; :func:`replaced_file` says what a write may
do to that entry. :class:`~crashsafe.AtomicFile` calls both; ``write_many``
calls :func:`locate` for every path first, so that one open directory serves
all its files and two spellings of one file are caught before anything is
written, by the very resolution the write then uses.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Final, NamedTuple

from crashsafe import _platform
from crashsafe.objectstore._url import SCHEMES

__all__ = ["MAX_SYMLINKS", "Target", "locate", "replaced_file"]

MAX_SYMLINKS: Final = 40  # as Linux's MAXSYMLINKS


class Target(NamedTuple):
    """Where a write lands: an open *directory*, the *name* in it, and the
    *status* of the entry there now (None: no entry)."""

    directory: _platform.Directory
    name: str
    status: _platform.Status | None


def locate(
    path: str,
    follow_symlinks: bool,
    opened: dict[str, _platform.Directory] | None = None,
    *,
    parents: bool = False,
    sync_parents: bool = True,
) -> Target:
    """Open the directory that will hold *path*; return it, the target's name in it,
    and the target's own status (None if there is no such entry).

    With *follow_symlinks*, a symlink at the last component is followed (link
    by link, each relative to the directory that holds it) so that the file it
    points to is the one replaced, and a dangling link creates its target.
    Create-only writes never pass it: they publish at the path's own name, and
    any entry there, a symlink included, makes them fail.

    Without *opened*, the directory returned is the caller's to close, and
    none is left open on an error. With it, directories are taken from and
    added to *opened* (keyed by the path they were opened by), which owns
    them: one descriptor serves every file in a directory.

    With *parents*, a missing directory of *path* (not of a symlink's target)
    is created first, by :func:`crashsafe._platform.make_directories`, made
    durable with the directories it created when *sync_parents* says so. A
    directory that exists costs nothing more than without it.

    Raises :class:`IsADirectoryError` for a path ending in a directory name,
    :class:`NotADirectoryError` (with *parents*) for a non-directory where a
    directory of *path* goes,
    :class:`OSError` (``ELOOP``) after 40 links, and the :class:`OSError` of
    opening a directory or reading an entry.
    """
    if path.startswith(SCHEMES):
        raise ValueError(
            f"{path!r} is an object URL; this call writes local files only (atomic_write, "
            "atomic_open, atomic_copy, the JSON calls and transaction take s3:// URLs)"
        )
    head, name = os.path.split(path)
    if name in ("", ".", ".."):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
    directory = _open_making(head, opened, sync_parents) if parents else _open(head, opened)
    try:
        # The common case (no symlink) before the loop: 2 % of a write after an
        # fsync's wait, when every bytecode costs double (docs/benchmarks.md).
        st = directory.lstat(name)
        if st is None or not follow_symlinks or not stat.S_ISLNK(st.st_mode):
            return Target(directory, name, st)
        # Linux follows at most 40 links in a row; so does this, then says ELOOP.
        for _ in range(MAX_SYMLINKS):
            link_head, name = os.path.split(os.path.join(head, directory.readlink(name)))
            if link_head != head:
                # Open the next directory before closing this one, so that a
                # failure leaves exactly one descriptor for the handler to close.
                next_directory = _open(link_head, opened)
                if opened is None:
                    directory.close()
                directory, head = next_directory, link_head
            if name in ("", ".", ".."):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            st = directory.lstat(name)
            if st is None or not stat.S_ISLNK(st.st_mode):
                return Target(directory, name, st)
        raise OSError(errno.ELOOP, "Too many levels of symbolic links", path)
    except BaseException:
        if opened is None:
            directory.close()
        raise


def _open(head: str, opened: dict[str, _platform.Directory] | None) -> _platform.Directory:
    if opened is None:
        return _platform.Directory(head)
    head = head or "."  # the name Directory gives it: "a" and "./b" share one
    directory = opened.get(head)
    if directory is None:
        directory = opened[head] = _platform.Directory(head)
    return directory


def _open_making(
    head: str, opened: dict[str, _platform.Directory] | None, sync: bool
) -> _platform.Directory:
    try:
        return _open(head, opened)
    except (FileNotFoundError, NotADirectoryError):
        pass  # a missing component, or a file in the way: make_directories names it
    # The directory made, as made: opening *head* again would follow a link
    # put in the new part meanwhile.
    directory = _platform.make_directories(head, sync=sync)
    if opened is not None:
        opened[head or "."] = directory
    return directory


def replaced_file(
    old: _platform.Status | None, replace: bool, path: str
) -> _platform.Status | None:
    """The status of the regular file that the write will replace, or None if it
    creates one (no entry, or a symlink that is replaced, not followed).

    Raises for an entry that must not be replaced: in a create-only mode any
    entry at all (``FileExistsError``, as ``open(path, "x")`` and ``O_EXCL``
    say, for a directory or a symlink too, dangling or not); otherwise a
    directory, a FIFO or a device.
    """
    if old is None:
        return None
    if not replace:
        raise FileExistsError(errno.EEXIST, "File exists", path)
    if stat.S_ISDIR(old.st_mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
    if stat.S_ISREG(old.st_mode):
        return old
    if stat.S_ISLNK(old.st_mode):
        return None
    raise OSError(errno.EINVAL, "Not a regular file; only those are replaced", path)
