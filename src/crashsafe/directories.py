"""A whole directory tree published at once.

:func:`atomic_directory` stages a tree in a fresh private directory beside the
target and, when the block ends, fsyncs it (files, then directories deepest
first) and puts it at the target in one step: a create-only rename where
nothing is there, ``renameat2(RENAME_EXCHANGE)`` over an existing directory.
Where the filesystem has no exchange, the target is a symlink to a versioned
directory beside it, and the symlink is swapped (see the function's docstring).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Literal, TypeVar, overload

from crashsafe import _platform
from crashsafe._checks import Durability, check_flag, check_options
from crashsafe._target import locate
from crashsafe.errors import NotDurableError
from crashsafe.objectstore._url import is_url
from crashsafe.staging import TEMP_RE, temp_name

__all__ = ["atomic_directory"]

_P = TypeVar("_P", str, Path)
# Errors by which renameat2 says "not on this filesystem" (or "not on this system").
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})
# Errors by which symlink() says "no symlinks on this filesystem".
_NO_SYMLINKS = frozenset({errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP})
Scheme = Literal["new", "exchange", "link"]

# Whether the exchange (and the create-only rename) is tried at all; tests
# switch it off to prove the symlink scheme on filesystems that have both.
use_exchange: bool = True


@overload
def atomic_directory(
    path: str, *, durability: Durability = "durable", parents: bool = False
) -> AbstractContextManager[str]: ...
@overload
def atomic_directory(
    path: os.PathLike[str], *, durability: Durability = "durable", parents: bool = False
) -> AbstractContextManager[Path]: ...
def atomic_directory(
    path: str | os.PathLike[str], *, durability: Durability = "durable", parents: bool = False
) -> AbstractContextManager[str] | AbstractContextManager[Path]:
    """Stage a directory tree; publish it at *path* all at once, or not at all.

    Use it in a ``with`` statement. It yields the absolute path of a new,
    empty, private (0o700) directory beside *path* (a :class:`str` for a str
    *path*, a :class:`~pathlib.Path` for any path-like one); write the whole
    tree into it, and close the files you wrote::

        with crashsafe.atomic_directory("checkpoint") as staged:
            for i, shard in enumerate(shards):
                Path(staged, f"shard-{i}.bin").write_bytes(shard)

    Its name is a crashsafe temporary name (hidden, unguessable, naming its
    writer: ``.checkpoint.<random>.<writer>.crashsafe-tmp-dir``).

    Leaving the block normally commits: the staged directory is given its
    final mode and owner (the existing directory's; for a new one the mode
    ``mkdir`` would give, 0o777 less the umask or as a default ACL says);
    every regular file in the tree is fsynced, then every directory, deepest
    first (as *durability* says: ``"durable"`` and ``"consistent"`` do,
    ``"none"`` does not); then the tree appears at *path* in one step. Where
    nothing is at *path*, by a create-only rename (``RENAME_NOREPLACE``: a
    directory a concurrent writer created first is never overwritten, and
    :class:`FileExistsError` says so). Over an existing directory, by
    ``renameat2(RENAME_EXCHANGE)``, which swaps the two names atomically;
    the old tree, now at the staged name, is renamed to a hidden ``-old``
    name and removed (not durably: a crash leaves it for
    :func:`crashsafe.sweep`). With ``"durable"``, the parent directory is
    fsynced before this returns: the new tree survives a power cut.

    Leaving the block by an exception, ``KeyboardInterrupt`` included,
    publishes nothing and removes the staged tree. A crash (``kill -9``,
    power cut) at any point leaves *path* holding the complete old tree or
    the complete new one; the staged and old trees it may leave carry
    crashsafe's names, and :func:`crashsafe.sweep` removes them once their
    writer is dead (never a live writer's).

    What a reader sees. A reader that opens *path* once (``os.open(path,
    O_RDONLY | O_DIRECTORY)``) and opens every file relative to that
    descriptor (``dir_fd=``, ``os.fwalk``) reads one tree: the complete old
    one or the complete new one, never a mix. If a writer replaces the tree
    meanwhile, the old tree's files are removed under it: a file it had not
    opened yet is then missing (``FileNotFoundError``); never one of the new
    tree. Start over from a fresh open of *path* then. A reader that resolves
    each full path anew (``open("checkpoint/shard-1.bin")``, one file after
    another) can straddle a swap and read shard 0 of the old tree with shard
    1 of the new one: open the directory once instead. In the symlink scheme
    below, opening *path* once follows the symlink once: the same holds.

    Symlinks at *path*. One that atomic_directory made (to a ``-ver``
    directory beside it, the scheme below) is swapped. Any other symlink is
    followed (link by link, as :func:`~crashsafe.atomic_write` follows one)
    to the directory it names, which is replaced where it is; the link stays
    as it was. A symlink to nothing or to a non-directory raises
    :class:`NotADirectoryError`.

    Filesystems without the exchange (FUSE filesystems built on libfuse 2,
    such as ``bindfs``; NFS; macOS): a new *path* is created as a symlink to a
    versioned directory beside it (``.NAME.<random>.<writer>.crashsafe-tmp-ver``),
    and each replacement renames the staged tree to a new version, creates a
    symlink to it under a temporary name, fsyncs the parent, renames the
    symlink over *path* (atomic), fsyncs the parent again, and removes the
    old version: Kubernetes' AtomicWriter scheme, with the fsyncs it lacks.
    Read through *path* (or resolve the link once), never through a version's
    own name, which changes with every write. A real directory at *path* on
    such a filesystem cannot be swapped at once: :class:`OSError`
    (``EOPNOTSUPP``) says so, with nothing published; move it aside and let
    atomic_directory create *path* anew, in the symlink scheme. On a
    filesystem with neither a create-only rename nor symlinks (exFAT and FAT,
    through the FUSE exfat driver) nothing can be published atomically:
    :class:`OSError` (``EOPNOTSUPP``) says so, with nothing published.

    *parents*: create missing parent directories first, durably unless
    *durability* is ``"none"``.

    Raises, when called: :class:`ValueError` for a bad *durability* or an
    ``s3://`` URL; :class:`TypeError` for a *parents* that is not a bool. As the
    block is entered, before anything is staged: :class:`NotADirectoryError`
    if *path* is a regular file, a symlink to nothing or to a non-directory, or
    anything else that is not a directory; :class:`ValueError` for a *path*
    that names no entry (``""``, ``"."``, ``".."``); the :class:`OSError` of a
    missing or unwritable parent directory. At commit, with nothing published
    and the staged tree removed: the :class:`OSError` of an fsync (never
    retried) or of the rename; :class:`FileExistsError` if something appeared at
    a new *path* meanwhile; ``EOPNOTSUPP`` as above. :class:`NotDurableError`
    if the tree was published but the parent's fsync failed.
    """
    if is_url(path):
        raise ValueError(f"{path!r}: atomic_directory writes local directories only")
    check_options("wb", None, durability)
    if parents is not True and parents is not False:
        check_flag("parents", parents)
    as_path = not isinstance(path, str)
    target = os.fsdecode(os.fspath(path))
    if as_path:
        return _stage(Path, target, durability, parents)
    return _stage(str, target, durability, parents)


@contextmanager
def _stage(kind: type[_P], path: str, durability: Durability, parents: bool) -> Iterator[_P]:
    # Made as the block is entered: a context manager never entered leaves nothing.
    staged = _StagedTree(path, durability, parents)
    try:
        yield kind(staged.staged_path)
    except BaseException:
        staged.abort()
        raise
    staged.commit()


def _own_version(link: str) -> bool:
    """Whether a symlink's *link* text names a version directory of atomic_directory."""
    match = TEMP_RE.match(link)
    return "/" not in link and match is not None and match["tree"] == "ver"


class _StagedTree:
    """The staged tree of one :func:`atomic_directory` call, from creation to commit or abort."""

    def __init__(self, path: str, durability: Durability, parents: bool) -> None:
        self.path = path
        self._durability = durability
        head, name = os.path.split(path.rstrip("/") or path)
        if name in ("", ".", ".."):
            raise ValueError(f"{path!r} names no directory entry to publish a tree at")
        if parents:
            self._dir = _platform.make_directories(head, sync=durability != "none")
        else:
            self._dir = _platform.Directory(head)
        self._done = False
        try:
            self._name = name
            self._old_version: str | None = None
            self._scheme, mode, self._owner = self._inspect()
            self._mode = self._dir.new_directory_mode(name) if mode is None else mode
            with _platform.signals_deferred():
                self._temp, self._tree = self._dir.make_temp_directory(self._name, "-dir")
                self._tree_closed = False
        except BaseException:
            self._dir.close()
            raise
        self.staged_path = os.path.join(os.path.abspath(self._dir.path), self._temp)

    def _inspect(self) -> tuple[Scheme, int | None, tuple[int, int] | None]:
        """How the tree will be published, and the mode and owner it will have."""
        st = self._dir.lstat(self._name)
        if st is None:
            return "new", None, None
        if stat.S_ISLNK(st.st_mode):
            link = self._dir.readlink(self._name)
            if _own_version(link):
                self._old_version = link
                st = self._dir.lstat(link)
                if st is None or not stat.S_ISDIR(st.st_mode):
                    raise NotADirectoryError(
                        errno.ENOTDIR, f"the version directory {link!r} is missing", self.path
                    )
                return "link", stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
            # Someone else's symlink: the directory it names is replaced where it is.
            followed = locate(self.path.rstrip("/") or self.path, True)
            self._dir.close()
            self._dir, self._name, st = followed
            if st is None or not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(
                    errno.ENOTDIR, "a symlink, to nothing or to a non-directory", self.path
                )
        if not stat.S_ISDIR(st.st_mode):
            what = "a regular file" if stat.S_ISREG(st.st_mode) else "not a directory"
            raise NotADirectoryError(
                errno.ENOTDIR, f"{what}; atomic_directory replaces directories only", self.path
            )
        return "exchange", stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)

    def _close_tree(self) -> None:
        if not self._tree_closed:
            self._tree_closed = True
            self._tree.close()

    def _sync_parent(self) -> None:
        if self._durability != "none":
            self._dir.sync()

    def commit(self) -> None:
        try:
            # The mode before the fsync, so that the fsync of the root covers it.
            self._tree.set_own_metadata(self._mode, self._owner)
            if self._durability != "none":
                self._tree.sync_tree()
            self._close_tree()
            self._publish()
        except BaseException:
            if not self._done:
                self.abort()
            else:
                self._dir.close()
            raise
        try:
            if self._durability == "durable":
                self._dir.sync()
        except OSError as e:
            # The new tree is in place all the same: the old one is removed first.
            self._remove_old()
            self._dir.close()
            raise NotDurableError(e.errno, e.strerror, self.path) from e
        try:
            self._remove_old()
        finally:
            self._dir.close()

    def _publish(self) -> None:
        """The step that makes the tree visible at *path*; sets ``_done``."""
        if self._scheme == "exchange":
            try:
                if not use_exchange:
                    raise OSError(errno.ENOSYS, "the exchange is switched off", self.path)
                with _platform.signals_deferred():
                    self._dir.exchange(self._temp, self._name)
                    self._done = True
            except OSError as e:
                if e.errno not in _UNSUPPORTED:
                    raise
                raise OSError(
                    errno.EOPNOTSUPP,
                    "this filesystem cannot exchange two names (renameat2 RENAME_EXCHANGE), "
                    "so a real directory here cannot be replaced at once; nothing was "
                    "published. Move the directory aside and let atomic_directory create "
                    "the path anew: it then makes it a symlink to a versioned directory, "
                    "which it can swap",
                    self.path,
                ) from e
            return
        if self._scheme == "new" and use_exchange:
            try:
                with _platform.signals_deferred():
                    self._dir.rename_noreplace(self._temp, self._name)
                    self._done = True
                return
            except OSError as e:
                if e.errno not in _UNSUPPORTED:
                    raise
            # No create-only rename here: the symlink scheme, whose symlink() is.
        self._publish_link()

    def _publish_link(self) -> None:
        """The symlink scheme: the staged tree becomes a version, a symlink to it
        replaces *path*'s."""
        version = temp_name(self._name, "-ver")
        with _platform.signals_deferred():
            self._dir.replace(self._temp, version)
            self._temp = version  # an abort removes it under this name now
        if self._scheme == "new":
            # The version's name reaches the disk before a symlink names it.
            self._sync_parent()
            try:
                with _platform.signals_deferred():
                    self._dir.symlink(version, self._name)
                    self._done = True
            except OSError as e:
                if e.errno not in _NO_SYMLINKS:
                    raise
                raise OSError(
                    errno.EOPNOTSUPP,
                    "this filesystem has neither a create-only rename (renameat2 "
                    "RENAME_NOREPLACE) nor symlinks (exFAT and FAT have none), so "
                    "atomic_directory cannot publish a tree here; nothing was published. "
                    "Stage it on a filesystem that has one of them",
                    self.path,
                ) from e
            return
        link = temp_name(self._name, "-link")
        self._dir.symlink(version, link)
        try:
            # The version and the new symlink reach the disk before the swap.
            self._sync_parent()
            with _platform.signals_deferred():
                self._dir.replace(link, self._name)
                self._done = True
        except BaseException:
            if not self._done:
                self._dir.remove(link)
            raise

    def _remove_old(self) -> None:
        """Remove the replaced tree; a failure or a crash leaves it to sweep()."""
        try:
            if self._scheme == "exchange":
                # The old tree is at the staged name now; a name that says so.
                old = temp_name(self._name, "-old")
                if self._dir.replace(self._temp, old):
                    self._dir.remove_tree(old)
            elif self._scheme == "link" and self._old_version is not None:
                self._dir.remove_tree(self._old_version)
        except OSError:
            pass

    def abort(self) -> None:
        """Remove the staged tree, whatever is in it; *path* is untouched."""
        if self._done:
            return
        self._done = True
        try:
            self._close_tree()
            self._dir.remove_tree(self._temp)
        finally:
            self._dir.close()
