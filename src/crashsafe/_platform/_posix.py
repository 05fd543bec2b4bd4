"""POSIX steps of the protocol: every operation relative to one open directory.

Linux is verified; macOS and the BSDs take the named-temporary path and
``F_FULLFSYNC`` where it exists, written with care but not verified here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
from collections.abc import Callable
from functools import partial
from typing import Final, TypeVar

from crashsafe._platform import _common, _linux
from crashsafe._platform._common import (
    create_private,
    directory_sync_unsupported,
    fresh_name,
    lock_file_linked,
    open_appending,
    open_lock_file,
)
from crashsafe._platform._status import Status
from crashsafe.errors import UnsupportedByFilesystemError

# Chosen by crashsafe._platform; on Windows its backend is _windows. Written as
# an assert, so that type checkers skip the rest of this module for Windows
# (``mypy --platform win32``) instead of reporting every POSIX call in it.
assert sys.platform != "win32", "crashsafe._platform._posix is not for Windows"

# Below the assert: _copy, _linux and _native are POSIX-only too, so that for
# Windows their names do not exist.
from crashsafe._platform._copy import append_only, copy_data, copy_into  # noqa: E402
from crashsafe._platform._linux import boot_tag, process_start  # noqa: E402
from crashsafe._platform._linux import proc_path as reopen_path  # noqa: E402
from crashsafe._platform._native import (  # noqa: E402
    _status,
    link_count_synced,
    signals_deferred,
    status_again,
)
from crashsafe._platform._xattr import copy_attributes, is_mount_point  # noqa: E402

__all__ = [
    "Directory",
    "Status",
    "append_only",
    "boot_tag",
    "copy_data",
    "copy_into",
    "create_private",
    "directory_sync_unsupported",
    "fsync_file",
    "lock",
    "lock_file_linked",
    "make_directories",
    "open_appending",
    "open_lock_file",
    "open_reading",
    "process_start",
    "renames_hide_files",
    "reopen_path",
    "set_metadata",
    "signals_deferred",
    "through_renames",
    "unlock",
]

_T = TypeVar("_T")

_O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY: Final = getattr(os, "O_DIRECTORY", 0)
_O_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
# A file of a staged tree opened to be fsynced: never through a symlink, never
# waiting on a FIFO that a caller left there.
_READ_FILE: Final = os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | getattr(os, "O_NONBLOCK", 0)
# A directory of a staged or an old tree, opened to walk it: never through a symlink.
_OPEN_DIR: Final = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
# Errors by which link() says "no hard links here"; renameat2 is tried next.
_NO_LINK: Final = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS})
# Errors by which renameat2(RENAME_NOREPLACE) says "not on this filesystem"
# (exfat-fuse: EINVAL) or "not on this system".
_NO_NOREPLACE: Final = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS})

# Whether create_temp tries an anonymous O_TMPFILE file first, where Linux has
# one; tests switch it off to prove the named path.
use_tmpfile: bool = _linux.TMPFILE_USABLE

if sys.platform == "darwin":  # pragma: no cover - not verified on this machine
    import fcntl

    def fsync_file(fd: int) -> None:
        """Flush *fd* to stable storage, drive cache included (``F_FULLFSYNC``)."""
        try:
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
        except OSError as e:
            # Filesystems that do not implement it (some network ones) say
            # ENOTSUP or ENOTTY; fsync is the best they offer.
            if e.errno not in (errno.ENOTSUP, errno.ENOTTY, errno.EINVAL):
                raise
            os.fsync(fd)

else:
    fsync_file = os.fsync


def renames_hide_files(where: str | int) -> bool:
    """Whether, on the filesystem of *where* (a path, or an open file or directory),
    a reader can find a file missing (ENOENT, ESTALE) while another is renamed
    over it: FUSE and NFS (statfs ``f_type``), on Linux. A path that is missing
    itself is asked about through its directory."""
    if sys.platform != "linux":  # pragma: no cover - not verified elsewhere
        return False
    magic = _linux.filesystem_magic(where)
    if magic is None and isinstance(where, str):
        magic = _linux.filesystem_magic(os.path.dirname(where) or ".")
    return magic in _linux.RENAMES_HIDE_FILES


def through_renames(attempt: Callable[[], _T], where: str | int) -> _T:
    """*attempt()*, an open for reading of a file at *where* (its path, or its
    directory's descriptor), ridden through the moments when a rename over the
    file makes it look missing on FUSE or NFS: see
    :func:`crashsafe._platform._common.through_renames` (10 tries, 0.213 s of
    waiting at most, only where :func:`renames_hide_files`)."""
    return _common.through_renames(attempt, where, renames_hide_files)


def open_reading(path: str) -> int:
    """Open *path* read-only, following symlinks, never waiting on a FIFO; on FUSE
    and NFS, through the moments a rename makes it look missing (see
    :func:`through_renames`)."""
    return through_renames(partial(_common.open_reading, path), path)


def _name_error(error: OSError, path: str) -> OSError:
    """Make *error* name what the caller knows: the directory or the target.

    The steps use names relative to the open directory (``"."`` for
    ``O_TMPFILE``, a private temporary name); those would point the reader of
    the error at the wrong place. The errno and the error itself stay. A
    second name (a rename's or link's) is deleted, not set to None: OSError
    prints any second name that was set, None as ``-> None``.
    """
    error.filename = path
    del error.filename2
    return error


class Directory:
    """An open directory; every later step names files relative to it.

    Holding the directory open pins it: a rename of a parent directory during
    the write cannot make the temporary file and the target end up in
    different places, and the directory fsync syncs the directory that was
    actually written.
    """

    def __init__(self, path: str) -> None:
        self.path = path or "."
        self.fd = os.open(self.path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)

    def _join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def close(self) -> None:
        os.close(self.fd)

    def lstat(self, name: str) -> Status | None:
        """The type, mode and owner of the entry *name* itself (a symlink is
        not followed), or None if absent."""
        try:
            return _status(self.fd, name)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _name_error(e, self._join(name)) from None

    def readlink(self, name: str) -> str:
        try:
            return os.readlink(name, dir_fd=self.fd)
        except OSError as e:
            raise _name_error(e, self._join(name)) from None

    def mtime(self, name: str) -> float | None:
        """When the regular file *name* was last modified; None if absent or not
        a regular file (a symlink is not followed)."""
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _name_error(e, self._join(name)) from None
        return st.st_mtime if stat.S_ISREG(st.st_mode) else None

    def is_mount_point(self, name: str, status: Status) -> bool:
        """Whether the entry *name*, whose *status* was just read, is the root of a
        mount (a bind-mounted file): see :func:`~crashsafe._platform._xattr.is_mount_point`."""
        return is_mount_point(self.fd, name, status)

    def link_count(self, name: str) -> int:
        try:
            return link_count_synced(self.fd, name)
        except OSError as e:
            raise _name_error(e, self._join(name)) from None

    def copy_attributes(self, name: str, fd: int) -> tuple[list[str], bool]:
        """Give the open file *fd* the extended attributes of the file *name* here;
        see :func:`~crashsafe._platform._xattr.copy_attributes`. They are read by
        path: on FUSE and NFS, through the moments another writer's rename makes
        the file look missing (see :func:`through_renames`; copying again is
        harmless). A file removed since the caller looked at it has nothing left
        to carry: ``([], False)``, as for a new file. Errors name the entry."""
        try:
            return through_renames(partial(copy_attributes, self.fd, name, fd), self.fd)
        except FileNotFoundError:
            # Removed by another process (an unlink, a transaction's remove:
            # found by the soak test), or still missing after the retries: the
            # write goes on as over a new file. Tried again first, so that a
            # rename on FUSE does not drop the old file's attributes.
            return [], False
        except OSError as e:
            raise _name_error(e, self._join(name)) from None

    def open_read(self, name: str) -> int:
        """Open the existing file *name* for reading, refusing a symlink; on FUSE and
        NFS, through the moments a rename makes it look missing (see
        :func:`through_renames`)."""
        flags = os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC
        try:
            return through_renames(partial(os.open, name, flags, dir_fd=self.fd), self.fd)
        except OSError as e:
            raise _name_error(e, self._join(name)) from None

    def create_temp(
        self,
        name: str,
        mode: int | None,
        owner: tuple[int, int] | None = None,
        *,
        named_suffix: str | None = None,
    ) -> tuple[int, str | None, int, tuple[str, ...]]:
        """Create an empty temporary file for target *name*, open for reading and
        writing, with its owner and exact mode already set (steps 2 and 3).

        Returns ``(fd, temp, mode, lost)``: *temp* is None for an anonymous
        ``O_TMPFILE`` (nothing to clean up after a crash), else the unguessable
        name it was created under, exclusively and without following symlinks;
        *mode* is the mode it has, read back after it was set; *lost* says
        what of *mode* and *owner* the file does not have: the filesystem
        accepted the call and kept nothing (ntfs-3g and exFAT ignore chmod
        and chown), or refused it (a non-root writer's chmod on sshfs). With
        *named_suffix*, the file is always named, and its name ends with that
        suffix. With *mode* None, that is the mode
        ``open()`` would give a new file here (0o666 less the umask, or the
        directory's default ACL), learned from the kernel without touching the
        process umask. *owner* ``(uid, gid)`` is given first, where permitted
        (see :func:`set_metadata`).

        On failure nothing is left. Errors name the directory.
        """
        try:
            if use_tmpfile and named_suffix is None:
                # Nobody can open an anonymous file before it is linked, so it
                # may be created with its final permission bits; when the umask
                # leaves them as they are (the common case), no chmod is needed.
                fd = _linux.open_tmpfile(self.fd, 0o666 if mode is None else mode & 0o777)
                if fd is not None:
                    try:
                        st = _status(fd)
                        if mode is None:
                            mode = stat.S_IMODE(st.st_mode)
                        lost: tuple[str, ...] = ()
                        if owner is not None or stat.S_IMODE(st.st_mode) != mode:
                            mode, lost = _set_checked(fd, mode, owner, st)
                    except BaseException:
                        os.close(fd)
                        raise
                    return fd, None, mode, lost
            return self._create_named_temp(name, mode, owner, named_suffix or "")
        except OSError as e:
            if e.errno == errno.ENOENT and os.fstat(self.fd).st_nlink > 0:
                # The directory is open and still there, so this ENOENT is its
                # filesystem refusing new files (procfs does): "No such file or
                # directory" naming the directory would send the reader
                # looking for one that exists.
                raise FileNotFoundError(
                    errno.ENOENT,
                    f"cannot create a file in {self.path!r}: its filesystem allows no new files",
                    self._join(name),
                ) from None
            raise _name_error(e, self.path) from None

    def _create_named_temp(
        self, name: str, mode: int | None, owner: tuple[int, int] | None, suffix: str
    ) -> tuple[int, str, int, tuple[str, ...]]:
        if mode is None:
            mode = self._new_file_mode(name)
        fds: list[int] = []
        flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | _O_NOFOLLOW | _O_CLOEXEC
        # A named file can be opened by others as soon as it exists: it
        # starts private, and gets its mode before any data is written.
        private = mode & 0o600

        def make(candidate: str) -> None:
            fds.append(os.open(candidate, flags, private, dir_fd=self.fd))

        temp = fresh_name(name, make, suffix)
        try:
            mode, lost = _set_checked(fds[0], mode, owner, None)
        except BaseException:
            self.discard(fds[0], temp)
            raise
        return fds[0], temp, mode, lost

    def _new_file_mode(self, name: str) -> int:
        # An empty probe file shows what the kernel gives a new file here. No
        # data is ever written to it, so exposing it for a moment leaks nothing.
        fds: list[int] = []
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | _O_NOFOLLOW | _O_CLOEXEC
        probe = fresh_name(name, lambda c: fds.append(os.open(c, flags, 0o666, dir_fd=self.fd)))
        try:
            return stat.S_IMODE(_status(fds[0]).st_mode)
        finally:
            os.close(fds[0])
            os.unlink(probe, dir_fd=self.fd)

    def create_anonymous(self) -> int | None:
        """An anonymous ``O_TMPFILE`` file, mode 0o600, that :meth:`link_anonymous`
        can name; None where Linux's /proc or the filesystem has none."""
        if not _linux.TMPFILE_USABLE:  # pragma: no cover - Linux without /proc, or not Linux
            return None
        try:
            return _linux.open_tmpfile(self.fd, 0o600)
        except OSError as e:
            raise _name_error(e, self.path) from None

    def link_anonymous(self, fd: int, name: str) -> None:
        """Give the anonymous file open as *fd* the new *name* here."""
        try:
            _linux.link_tmpfile(fd, self.fd, name)
        except OSError as e:
            raise _name_error(e, self._join(name)) from None

    def publish(
        self, fd: int, temp: str | None, name: str, *, replace: bool, private: bool = False
    ) -> None:
        """Atomically make the staged file visible as *name*, then close *fd*.

        With *replace* False, an existing *name* raises ``FileExistsError``
        atomically (no check-then-act window); where the filesystem can do
        that neither by ``link`` nor by ``renameat2(RENAME_NOREPLACE)``
        (exFAT), :class:`~crashsafe.errors.UnsupportedByFilesystemError`,
        unless *private* (a name only its caller, holding its lock, writes:
        then a plain rename). On any failure nothing visible
        has changed, *fd* is closed and no temporary name is left. Errors name
        the target.
        """
        try:
            if temp is None:
                if not replace:
                    _linux.link_tmpfile(fd, self.fd, name)
                else:
                    # link() cannot replace, so the file gets a temporary name
                    # first, removed below if the rename fails; a crash between
                    # the two syscalls leaves a name that sweep() removes.
                    temp = fresh_name(name, partial(_linux.link_tmpfile, fd, self.fd))
                    os.rename(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            elif replace:
                os.rename(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            else:
                self._rename_noreplace(temp, name, private)
        except BaseException as e:
            self.discard(fd, temp)
            if isinstance(e, OSError):
                raise _name_error(e, self._join(name)) from None
            raise
        os.close(fd)

    def _rename_noreplace(self, temp: str, name: str, private: bool) -> None:
        try:
            os.link(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
            try:
                _linux.renameat2_noreplace(self.fd, temp, name)
            except OSError as refused:
                if refused.errno not in _NO_NOREPLACE:
                    raise
                if not private:
                    raise UnsupportedByFilesystemError(
                        self._join(name),
                        "create-only is not possible on this filesystem: it has neither "
                        "link() nor rename without replace, so an existing file cannot "
                        "be refused atomically",
                    ) from refused
                # The caller's own name, under its lock: nobody else makes it.
                os.rename(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            return
        # The target is published; a failure to drop the second name only
        # leaves debris for sweep(), so it must not turn success into an error.
        self._unlink_quietly(temp)

    def discard(self, fd: int, temp: str | None) -> None:
        """Close *fd* and remove the temporary name, if there is one."""
        try:
            os.close(fd)
        finally:
            if temp is not None:
                self._unlink_quietly(temp)

    def _unlink_quietly(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=self.fd)

    def sync(self) -> None:
        """fsync the directory (as :func:`fsync_file` does a file), making renames
        and links in it durable.

        A filesystem that cannot sync directories at all (see
        :func:`directory_sync_unsupported`) is not an error: there is nothing
        more this write could do.
        """
        try:
            # The file's flush, F_FULLFSYNC on macOS: a plain fsync there
            # leaves the rename in the drive's cache.
            fsync_file(self.fd)
        except OSError as e:
            if not directory_sync_unsupported(e):
                raise

    def replace(self, src: str, dst: str) -> bool:
        """Rename *src* over *dst*; False if *src* does not exist."""
        try:
            os.rename(src, dst, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise _name_error(e, self._join(dst)) from None
        return True

    def names(self) -> list[str]:
        """The names in the directory."""
        return os.listdir(self.fd)

    def remove(self, name: str) -> bool:
        """Unlink *name*; False if it does not exist."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise _name_error(e, self._join(name)) from None
        return True

    def read(self, name: str) -> bytes:
        """The whole content of the regular file *name* (a symlink is refused)."""
        fd = self.open_read(name)
        try:
            with open(fd, "rb", closefd=False) as f:
                return f.read()
        finally:
            os.close(fd)

    def open_lock(self, name: str) -> int:
        """Open (creating it if needed) the lock file *name*; never follows a symlink.

        Read-only when the caller may not create or write it: a shared lock
        needs no write access.
        """
        flags = _O_NOFOLLOW | _O_CLOEXEC
        try:
            return os.open(name, os.O_RDWR | os.O_CREAT | flags, 0o666, dir_fd=self.fd)
        except (PermissionError, OSError) as e:
            if isinstance(e, PermissionError) or e.errno == errno.EROFS:
                with contextlib.suppress(OSError):
                    return os.open(name, os.O_RDONLY | flags, dir_fd=self.fd)
            raise _name_error(e, self._join(name)) from None

    def make_temp_directory(self, name: str, suffix: str) -> tuple[str, Directory]:
        """Create a private (0o700) directory under a fresh temporary name for
        target *name*, ending with *suffix*; return the name and it, open."""
        try:
            temp = fresh_name(name, partial(os.mkdir, mode=0o700, dir_fd=self.fd), suffix)
        except OSError as e:
            raise _name_error(e, self.path) from None
        try:
            fd = os.open(
                temp, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=self.fd
            )
            try:
                # A umask that takes the owner's own bits would leave it unwritable.
                if stat.S_IMODE(os.fstat(fd).st_mode) != 0o700:
                    os.fchmod(fd, 0o700)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            with contextlib.suppress(OSError):
                os.rmdir(temp, dir_fd=self.fd)
            raise
        made = object.__new__(Directory)  # Directory() would open the path again
        made.path, made.fd = self._join(temp), fd
        return temp, made

    def new_directory_mode(self, name: str) -> int:
        """The mode ``mkdir`` gives a new directory here, from an empty probe."""
        probe = fresh_name(name, partial(os.mkdir, mode=0o777, dir_fd=self.fd), "-probe")
        try:
            return stat.S_IMODE(os.stat(probe, dir_fd=self.fd, follow_symlinks=False).st_mode)
        finally:
            os.rmdir(probe, dir_fd=self.fd)

    def sync_tree(self) -> None:
        """fsync every regular file below, then each directory deepest first, this
        one last; nothing followed, FIFOs and devices not opened."""
        _sync_below(self.fd, self.path)

    def set_own_metadata(self, mode: int, owner: tuple[int, int] | None) -> None:
        """Give this directory the *owner* (where permitted), then exactly *mode*."""
        _set_metadata(self.fd, mode, owner, None)

    def exchange(self, a: str, b: str) -> None:
        """Swap *a* and *b* atomically: renameat2(RENAME_EXCHANGE)."""
        try:
            _linux.renameat2_exchange(self.fd, a, b)
        except OSError as e:
            raise _name_error(e, self._join(b)) from None

    def rename_noreplace(self, src: str, dst: str) -> None:
        """Rename *src* to *dst* unless *dst* exists: renameat2(RENAME_NOREPLACE)."""
        try:
            _linux.renameat2_noreplace(self.fd, src, dst)
        except OSError as e:
            raise _name_error(e, self._join(dst)) from None

    def symlink(self, target: str, name: str) -> None:
        """Create the symlink *name* to *target*, never over an existing entry."""
        try:
            os.symlink(target, name, dir_fd=self.fd)
        except OSError as e:
            raise _name_error(e, self._join(name)) from None

    def remove_tree(self, name: str) -> None:
        """Remove the directory *name* and all in it, relative to this one; quietly."""
        with contextlib.suppress(OSError):
            fd = os.open(name, _OPEN_DIR, dir_fd=self.fd)
            try:
                _empty(fd)
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=self.fd)


def _sync_below(fd: int, path: str) -> None:
    """fsync the regular files in the directory *fd*, then (deepest first) its
    directories, then itself. Entry types from ``getdents`` (no stat of each);
    each opened without following a link, a file never waiting on a FIFO."""
    with os.scandir(fd) as listing:
        entries = list(listing)
    for entry in entries:
        where = os.path.join(path, entry.name)
        try:
            if entry.is_dir(follow_symlinks=False):
                sub = os.open(entry.name, _OPEN_DIR, dir_fd=fd)
                try:
                    _sync_below(sub, where)
                finally:
                    os.close(sub)
            elif entry.is_file(follow_symlinks=False):
                file = os.open(entry.name, _READ_FILE, dir_fd=fd)
                try:
                    fsync_file(file)
                finally:
                    os.close(file)
        except OSError as e:
            if e.filename is None or e.filename == entry.name:
                raise _name_error(e, where) from None
            raise
    try:
        fsync_file(fd)
    except OSError as e:
        if not directory_sync_unsupported(e):
            raise _name_error(e, path) from None


def _empty(fd: int) -> None:
    """Remove everything in the directory *fd*, following no link: a directory is
    opened with ``O_NOFOLLOW``, so a symlink swapped in cannot send it elsewhere."""
    with os.scandir(fd) as listing:
        entries = list(listing)
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            sub = os.open(entry.name, _OPEN_DIR, dir_fd=fd)
            try:
                _empty(sub)
            finally:
                os.close(sub)
            os.rmdir(entry.name, dir_fd=fd)
        else:
            os.unlink(entry.name, dir_fd=fd)


def make_directories(path: str, *, sync: bool) -> Directory:
    """Create the missing directories of *path*, each mode 0o777 less the umask
    (or as the parent's default ACL says), as :func:`os.makedirs` does.

    The deepest existing ancestor is opened as a directory (the existing part
    of *path* is resolved as the kernel resolves it, symlinks included); each
    missing component is then made in the directory opened before it and
    opened in turn without following a symlink (``mkdirat``, then ``openat``
    with ``O_DIRECTORY | O_NOFOLLOW``), so that a symlink planted where a new
    directory goes is refused, never followed. A directory that a racing
    creator made first serves as well as one made here.

    With *sync*, every directory in the missing part (whoever made it) is
    fsynced, deepest first, and then the ancestor that holds the first of
    them: once this returns, the whole chain survives a power cut. A
    filesystem that cannot sync directories (see
    :func:`directory_sync_unsupported`) is not an error.

    Raises :class:`NotADirectoryError` naming the component where a
    non-directory (a file, a symlink, dangling or not) is in the way; the
    :class:`OSError` of a failed ``mkdirat`` (``EACCES``, ``EROFS``,
    ``ENOSPC``) naming the directory it would have made; the error of opening
    the deepest existing ancestor other than a missing entry. Directories made
    before an error stay, as :func:`os.makedirs` leaves them.

    Returns *path*'s directory, open: the very one made (or found) at the end
    of the chain, not *path* resolved again, so that a rename or a link put
    in the chain since cannot send the write elsewhere. The caller closes it.
    """
    fd, head, missing = _deepest_existing(path)
    chain, paths = [fd], [head or "."]
    try:
        for name in missing:
            head = os.path.join(head, name)
            chain.append(_make_one(chain[-1], name, head))
            paths.append(head)
        if sync and missing:
            # Deepest first: each fsync makes durable the entry of the
            # directory below it; the last one, the first new directory's entry.
            for directory, where in zip(reversed(chain), reversed(paths), strict=True):
                try:
                    fsync_file(directory)
                except OSError as e:
                    if not directory_sync_unsupported(e):
                        raise _name_error(e, where) from None
    except BaseException:
        for directory in chain:
            os.close(directory)
        raise
    for directory in chain[:-1]:
        os.close(directory)
    made = object.__new__(Directory)  # Directory() would open the path again
    made.path, made.fd = path or ".", chain[-1]
    return made


def _deepest_existing(path: str) -> tuple[int, str, list[str]]:
    """The deepest existing directory of *path*, open; its path; the names below it."""
    missing: list[str] = []
    head = path
    while True:
        try:
            return os.open(head or ".", os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC), head, missing
        except (FileNotFoundError, NotADirectoryError):
            # A missing component, or a file where a directory goes: look
            # higher; the walk down names which component it was.
            parent, name = os.path.split(head)
            if parent == head:
                raise
            if name:
                missing.insert(0, name)
            head = parent


def _make_one(parent: int, name: str, path: str) -> int:
    """Make the directory *name* in *parent* unless one is there; open it, no link followed."""
    try:
        os.mkdir(name, 0o777, dir_fd=parent)
    except FileExistsError:
        pass  # a racing creator's directory; anything else fails the open below
    except OSError as e:
        raise _name_error(e, path) from None
    try:
        return os.open(name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=parent)
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            why = " (a symlink, not followed here)" if _is_link(parent, name) else ""
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory" + why, path) from None
        raise _name_error(e, path) from None


def _is_link(directory: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode)
    except OSError:
        return False


def lock(fd: int, *, shared: bool = False, blocking: bool = True) -> bool:
    """Lock the open file *fd*, shared or exclusive; return whether it is held.

    ``flock``: the lock belongs to the open file description, so two opens in
    one process exclude each other as two processes do, and the kernel drops
    it when its holder dies, ``kill -9`` included. With *blocking*, wait in the
    kernel (a signal handler that raises ends the wait) and return True;
    without, return False at once if someone else holds it.
    """
    import fcntl

    operation = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
    try:
        fcntl.flock(fd, operation)
    except OSError as e:
        # NFS emulates flock with byte-range locks, which may say EACCES.
        if not blocking and e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return False
        raise
    return True


def unlock(fd: int) -> None:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


def set_metadata(fd: int, mode: int, owner: tuple[int, int] | None) -> None:
    """Give the open file *fd* the *owner* (uid, gid), where permitted, then exactly *mode*.

    The owner comes first because chown clears the setuid and setgid bits; a
    caller who may not give the file away keeps what it may (the group, if it
    is one of the caller's) and the mode is still applied exactly.
    """
    _set_metadata(fd, mode, owner, None)


def _set_checked(
    fd: int, mode: int, owner: tuple[int, int] | None, st: Status | None
) -> tuple[int, tuple[str, ...]]:
    """Set *owner* and *mode* on the staged file *fd* as :func:`set_metadata` does,
    then read them back: (the mode it has, what did not hold).

    Some filesystems accept chmod and chown and keep nothing (ntfs-3g with
    its default options, exFAT: every file 0o777, owned by the mounter);
    sshfs refuses a non-root writer's chmod of a file that shows up as the
    remote root's. Neither may pass unseen: the caller refuses an explicit
    mode, or warns. A chown the caller may not make is not "lost" (an owner
    is kept where permitted, as documented).
    """
    refused = False
    try:
        if not _set_metadata(fd, mode, owner, st):
            return mode, ()  # it had them already: st was just read
    except PermissionError:
        refused = True
    now = status_again(fd)
    lost: list[str] = []
    kept = stat.S_IMODE(now.st_mode)
    if kept != mode:
        why = "refused" if refused else "accepted, not kept"
        lost.append(f"mode {mode:#o} (chmod {why}: the file has {kept:#o})")
    if owner is not None and (now.st_uid, now.st_gid) != owner and _may_chown(owner):
        lost.append(
            f"owner {owner[0]}:{owner[1]} (chown accepted, not kept: "
            f"the file is {now.st_uid}:{now.st_gid})"
        )
    return kept, tuple(lost)


def _may_chown(owner: tuple[int, int]) -> bool:
    # Whether this process may give a file *owner*: root may; others may not
    # give it away, and keep the group only where it is one of theirs.
    if os.geteuid() == 0:
        return True
    return owner[0] == os.geteuid() and owner[1] in (os.getegid(), *os.getgroups())


def _set_metadata(fd: int, mode: int, owner: tuple[int, int] | None, st: Status | None) -> bool:
    # st: the file's status if the caller just took it; then only what
    # differs is changed (a chown, then the mode it may have cleared).
    # Returns whether anything was changed (else there is nothing to read back).
    chowned = False
    if owner is not None:
        if st is None:
            st = _status(fd)
        if (st.st_uid, st.st_gid) != owner:
            try:
                os.fchown(fd, *owner)
            except PermissionError:
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, -1, owner[1])
            chowned = True
    if chowned or st is None or stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)
        return True
    return False
