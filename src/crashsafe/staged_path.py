"""A staged path, for libraries and programs that write only to a path.

:func:`atomic_path` gives ``sqlite3.connect``, an image encoder, ``VACUUM INTO``
or a subprocess a fresh private path beside the target, and publishes whatever
regular file is at that path when the block ends, with the protocol of
:mod:`crashsafe.atomic` (fsync, validate, mode, rename, directory fsync). The
staged file cannot be anonymous (``O_TMPFILE``): a library needs a name to
open, so a crash can leave it, and its name is one :func:`crashsafe.sweep`
recognises and removes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TypeVar, overload

from crashsafe import _platform
from crashsafe._checks import (
    Durability,
    Validate,
    Validator,
    check_flag,
    check_options,
    validators_of,
)
from crashsafe._metadata import (
    Hardlinks,
    Preserve,
    carry,
    check_keywords,
    check_target,
    metadata_not_kept,
)
from crashsafe._target import locate, replaced_file
from crashsafe.errors import NotDurableError, VerificationError
from crashsafe.objectstore._url import is_url
from crashsafe.staging import SIDE_FILES, staged_suffix

__all__ = ["atomic_path"]

# A rollback journal whose header SQLite has zeroed (journal_mode=PERSIST)
# holds nothing to roll back; these first bytes decide it.
_JOURNAL_HEADER = 28
_P = TypeVar("_P", str, Path)


@overload
def atomic_path(
    path: str,
    *,
    perm: int | None = None,
    durability: Durability = "durable",
    validate: Validate = None,
    follow_symlinks: bool = True,
    preserve: Preserve = "all",
    hardlinks: Hardlinks = "refuse",
) -> AbstractContextManager[str]: ...
@overload
def atomic_path(
    path: os.PathLike[str],
    *,
    perm: int | None = None,
    durability: Durability = "durable",
    validate: Validate = None,
    follow_symlinks: bool = True,
    preserve: Preserve = "all",
    hardlinks: Hardlinks = "refuse",
) -> AbstractContextManager[Path]: ...
def atomic_path(
    path: str | os.PathLike[str],
    *,
    perm: int | None = None,
    durability: Durability = "durable",
    validate: Validate = None,
    follow_symlinks: bool = True,
    preserve: Preserve = "all",
    hardlinks: Hardlinks = "refuse",
) -> AbstractContextManager[str] | AbstractContextManager[Path]:
    """Stage a file at a fresh private path; publish it at *path*, all or nothing.

    Use it in a ``with`` statement. It yields the absolute path of a new,
    empty file in *path*'s directory (a :class:`str` for a str *path*, a
    :class:`~pathlib.Path` for any path-like one), for a library or a
    program that only takes a path to write::

        with crashsafe.atomic_path("app.db") as staged:
            with contextlib.closing(sqlite3.connect(staged)) as db:
                source.backup(db)

    The staged file is created exclusively, never through a symlink, with
    its final mode already set (*perm*, else the existing target's mode and
    owner, else what ``open()`` would give a new file). Its name is a
    crashsafe temporary name (hidden, unguessable, naming its writer) that
    ends with *path*'s own suffixes (``app.db`` gives
    ``.app.db.<random>.<writer>.crashsafe-tmp-path.db``, ``a.tar.gz``
    ``....tar.gz``), so libraries that choose a format by the extension
    choose the right one.

    Leaving the block normally publishes whatever regular file is at the
    staged path then: the same file, or one a library renamed onto it. It
    is opened without following a symlink; the mode (and owner) above is
    given to it again (a library's own file has its own); *validate* (a
    callable or a sequence of them, as for :func:`~crashsafe.atomic_write`)
    reads it from its start; it is fsynced, renamed over *path*, and the
    directory fsynced, as *durability* says (``"durable"``, ``"consistent"``,
    ``"none"``: see :class:`~crashsafe.AtomicFile`). A file a library
    renamed onto the staged path came by a rename of its own: unless
    *durability* is ``"none"``, the directory is fsynced before the
    publishing rename too, so that a power cut cannot keep the publishing
    rename and lose the library's (publishing the empty file made here).
    *follow_symlinks*: a symlink at *path* is followed and the file it
    points to replaced (False: the link itself is replaced). *preserve* and
    *hardlinks* are those of :class:`~crashsafe.AtomicFile`; the old file's
    extended attributes are given to the staged file at the end of the
    block (a library may have renamed its own file onto the staged path),
    before it is fsynced and published.

    Side files: SQLite keeps ``<staged>-journal``, ``<staged>-wal`` and
    ``<staged>-shm`` beside a database. Exactly these three names are
    removed when the block ends, whichever way. A ``-wal`` that is not
    empty, or a ``-journal`` with a live header, holds part of the database
    (a connection still open in WAL mode, a transaction not finished): then
    nothing is published and :class:`OSError` (``EBUSY``) says so; close the
    connection inside the block. Any other file a library leaves is its own.

    Leaving the block by an exception, ``KeyboardInterrupt`` included,
    publishes nothing and removes the staged path (whatever is there) and
    its side files; *path* is untouched. A crash (``kill -9``, power cut)
    leaves *path* old or new, whole; the staged file and its side files
    carry crashsafe's temporary names, and :func:`crashsafe.sweep` removes
    them once their writer is dead.

    Raises, when called: :class:`ValueError` for a bad *perm* or
    *durability*, or an ``s3://`` URL (stage locally and
    :func:`~crashsafe.atomic_copy` the file to the URL); :class:`TypeError`
    for a bad *validate* or *follow_symlinks*. As the block is entered,
    before anything is created (nothing is until then):
    :class:`IsADirectoryError` if *path* is a directory, :class:`OSError`
    (``EINVAL``) if it is another non-regular file; the :class:`OSError` of
    a missing or unwritable directory. At the end of the block, with nothing published and the
    staged path removed: :class:`FileNotFoundError` if nothing is at the
    staged path, :class:`IsADirectoryError` for a directory there,
    :class:`OSError` (``EINVAL``) for a symlink or another non-regular file,
    (``EBUSY``) for the side files above; each names the staged path and
    *path* (``filename``, ``filename2``). Whatever a validator raises
    (:class:`~crashsafe.VerificationError` with ``filename`` set to *path*);
    the :class:`OSError` of the fsync (never retried) or of the rename.
    :class:`NotDurableError` if *path* was replaced but the directory fsync
    failed.
    """
    if is_url(path):
        raise ValueError(
            f"{path!r}: atomic_path stages a local file; for an object URL, stage the file "
            "locally (or with atomic_path) and publish it with atomic_copy(local, url)"
        )
    check_options("wb", perm, durability)
    check_keywords(preserve, hardlinks)
    if follow_symlinks is not True and follow_symlinks is not False:
        check_flag("follow_symlinks", follow_symlinks)
    checks = () if validate is None else validators_of(validate)
    as_path = not isinstance(path, str)
    target = os.fsdecode(os.fspath(path))
    if as_path:
        return _stage(Path, target, perm, durability, checks, follow_symlinks, preserve, hardlinks)
    return _stage(str, target, perm, durability, checks, follow_symlinks, preserve, hardlinks)


@contextmanager
def _stage(  # noqa: PLR0917 - atomic_path's arguments, checked, passed on as they are
    kind: type[_P],
    path: str,
    perm: int | None,
    durability: Durability,
    checks: tuple[Validator, ...],
    follow_symlinks: bool,
    preserve: Preserve,
    hardlinks: Hardlinks,
) -> Iterator[_P]:
    # Made as the block is entered, not when atomic_path() is called: a
    # context manager that is never entered leaves nothing behind.
    staged = _Staged(
        path, perm, durability, checks, follow_symlinks, preserve=preserve, hardlinks=hardlinks
    )
    try:
        yield kind(staged.staged_path)
    except BaseException:
        staged.abort()
        raise
    staged.commit()


class _Staged:
    """The staged path of one :func:`atomic_path` call, from creation to commit or abort."""

    def __init__(
        self,
        path: str,
        perm: int | None,
        durability: Durability,
        checks: tuple[Validator, ...],
        follow_symlinks: bool,
        *,
        preserve: Preserve = "all",
        hardlinks: Hardlinks = "refuse",
    ) -> None:
        self.path = path
        self._durability = durability
        self._checks = checks
        # Step 1: the directory, once; a symlink at the target followed as
        # atomic_write follows it.
        self._dir, self._name, old = locate(path, follow_symlinks)
        fd: int | None = None
        try:
            existing = replaced_file(old, True, path)
            if existing:
                check_target(self._dir, self._name, existing, path, hardlinks)
            # Carried at commit, onto whatever file is then at the staged path.
            self._carry = existing is not None and preserve == "all"
            mode_bits = (
                perm if perm is not None else existing.st_mode & 0o7777 if existing else None
            )
            self._owner = (existing.st_uid, existing.st_gid) if existing and perm is None else None
            # Steps 2 and 3: a named file (a library opens it by name), made
            # exclusively with its owner and final mode before anything is in it.
            # The descriptor and the name are kept in the same breath as they
            # are made, or an interrupt could leave a file nobody removes.
            with _platform.signals_deferred():
                fd, temp, self._mode, lost = self._dir.create_temp(
                    self._name, mode_bits, self._owner, named_suffix=staged_suffix(self._name)
                )
                assert temp is not None
                self._temp = temp
            if lost:
                metadata_not_kept(path, perm, self._mode, lost)
            self._done = False  # published or aborted: the staged name is no longer ours
            # The library opens the path itself; this descriptor only tells
            # which file was made, to see at commit whether it was replaced.
            self._made = _identity(os.fstat(fd))
            self._replaced = False
            os.close(fd)
        except BaseException:
            if fd is not None:
                self._dir.discard(fd, self._temp)  # closes it, removes the name
            self._dir.close()
            raise
        self.staged_path = os.path.join(os.path.abspath(self._dir.path), temp)

    def _error(self, code: int, why: str) -> OSError:
        # Names the staged path and the target (filename, filename2; None is
        # winerror). OSError picks the subclass from the errno, as the kernel's do.
        return OSError(code, f"{why}; nothing was published", self.staged_path, None, self.path)

    def _open_staged(self) -> int:
        """The regular file now at the staged path, opened without following a link."""
        st = self._dir.lstat(self._temp)
        if st is None:
            raise self._error(errno.ENOENT, "no file at the staged path when the block ended")
        if stat.S_ISDIR(st.st_mode):
            raise self._error(errno.EISDIR, "a directory at the staged path, not a file")
        if not stat.S_ISREG(st.st_mode):
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise self._error(errno.EINVAL, f"{kind} at the staged path, which is never followed")
        fd = self._dir.open_read(self._temp)
        st_now = os.fstat(fd)
        if not stat.S_ISREG(st_now.st_mode):  # pragma: no cover - swapped since lstat
            os.close(fd)
            raise self._error(errno.EINVAL, "not a regular file at the staged path")
        self._replaced = _identity(st_now) != self._made
        return fd

    def _check_side_files(self) -> None:
        """Refuse to publish a database whose content is partly in a side file."""
        for side, live in (("-wal", _nonempty), ("-journal", _live_journal)):
            name = self._temp + side
            if self._dir.mtime(name) is None:  # absent, or not a regular file
                continue
            fd = self._dir.open_read(name)
            try:
                if live(fd):
                    raise self._error(
                        errno.EBUSY,
                        f"SQLite's {side} beside the staged database holds part of it (a "
                        "connection still open, or a transaction not finished): close it "
                        "inside the block",
                    )
            finally:
                os.close(fd)

    def _remove_side_files(self) -> None:
        for side in SIDE_FILES:
            with contextlib.suppress(OSError):
                self._dir.remove(self._temp + side)

    def commit(self) -> None:
        fd: int | None = None
        try:
            fd = self._open_staged()
            self._check_side_files()
            # Step 3 again: a library's own file (renamed onto the staged
            # path) has its own mode, and a write may have cleared setuid.
            # The old file's attributes go on the file that will be published,
            # still unpublished (a library's own file has none of them).
            if self._carry:
                carry(self._dir, self._name, fd, self._mode, self.path)
            _platform.set_metadata(fd, self._mode, self._owner)
            # Step 4: the validators read the content the rename will publish.
            for check in self._checks:
                os.lseek(fd, 0, os.SEEK_SET)
                with open(fd, "rb", closefd=False) as reader:
                    check(reader)
            # Step 5: the data reaches the disk before any name points to it.
            if self._durability != "none":
                _platform.fsync_file(fd)
                if self._replaced:
                    # A library renamed its own file onto the staged path: that
                    # rename reaches the disk before the one that publishes the
                    # name, or a crash could publish the empty file made here.
                    self._dir.sync()
            self._remove_side_files()
            # Step 6: the platform takes the descriptor and the name; on a
            # failure it has closed the one and removed the other.
            with _platform.signals_deferred():
                owned, fd = fd, None
                self._dir.publish(owned, self._temp, self._name, replace=True)
                self._done = True
        except BaseException as e:
            if fd is not None:
                os.close(fd)
            if self._done:
                # A signal held back during the rename, raised as the block
                # ended: the target is replaced, and must not be reported otherwise.
                self._dir.close()
                raise
            self.abort()
            if isinstance(e, VerificationError) and e.filename is None:
                e.filename = self.path
            raise
        try:
            # Step 7: the rename reaches the disk.
            if self._durability == "durable":
                self._dir.sync()
        except OSError as e:
            raise NotDurableError(e.errno, e.strerror, self.path) from e
        finally:
            self._dir.close()

    def abort(self) -> None:
        """Step 8: remove the staged path, whatever is there, and its side files."""
        if self._done:
            return
        self._done = True
        try:
            self._remove_side_files()
            st = self._dir.lstat(self._temp)
            if st is not None and stat.S_ISDIR(st.st_mode):
                # What a library made there is ours to remove, never to follow.
                fd = getattr(self._dir, "fd", None)
                where = self._temp if fd is not None else self.staged_path
                shutil.rmtree(where, dir_fd=fd, ignore_errors=True)
            elif st is not None:
                self._dir.remove(self._temp)
        finally:
            self._dir.close()


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _nonempty(fd: int) -> bool:
    return os.fstat(fd).st_size > 0


def _live_journal(fd: int) -> bool:
    # SQLite's journal_mode=PERSIST keeps the file and zeroes its header;
    # TRUNCATE leaves it empty: neither holds anything to roll back.
    os.lseek(fd, 0, os.SEEK_SET)
    return any(os.read(fd, _JOURNAL_HEADER))
