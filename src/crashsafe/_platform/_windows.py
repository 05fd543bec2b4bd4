"""Windows steps of the protocol. Written with care, NOT verified on this project's CI.

Windows has no directory file descriptors and no directory fsync: durability of
the rename comes from ``MoveFileExW(MOVEFILE_WRITE_THROUGH)``, which returns
only after the move is flushed. ``MoveFileExW`` fails while another process
holds the target open without delete sharing (antivirus scanners, indexers):
ERROR_ACCESS_DENIED (5) or ERROR_SHARING_VIOLATION (32). Those are retried for
about a second, which is what works in practice; any other error is raised.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import time
from collections.abc import Callable
from typing import Final, TypeVar

from crashsafe._platform._common import (
    create_private,
    directory_sync_unsupported,
    fresh_name,
    lock_file_linked,
    open_appending,
    open_lock_file,
    open_reading,
)
from crashsafe._platform._status import Status

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

_MOVEFILE_REPLACE_EXISTING: Final = 0x1
_MOVEFILE_WRITE_THROUGH: Final = 0x8
_RETRY_WINERRORS: Final = frozenset({5, 32})
_RETRY_DELAYS: Final = (0.01, 0.02, 0.05, 0.1, 0.1, 0.2, 0.25, 0.25)
_O_BINARY: Final = getattr(os, "O_BINARY", 0)
_O_NOINHERIT: Final = getattr(os, "O_NOINHERIT", 0)

# Windows has no signal mask; Ctrl-C arrives as SIGINT in the main thread
# between bytecodes, and the few unguarded instructions are a known limit.
signals_deferred = contextlib.nullcontext
fsync_file = os.fsync  # _commit(): FlushFileBuffers


def renames_hide_files(where: str | int) -> bool:
    """False: a rename over a file on Windows is not known here to hide it
    from readers (not verified)."""
    return False


def through_renames(attempt: Callable[[], _T], where: str | int) -> _T:
    """*attempt()* once: see :func:`renames_hide_files`."""
    return attempt()


def _move(src: str, dst: str, *, replace: bool) -> None:
    flags = _MOVEFILE_WRITE_THROUGH | (_MOVEFILE_REPLACE_EXISTING if replace else 0)
    move = ctypes.windll.kernel32.MoveFileExW  # type: ignore[attr-defined,unused-ignore]
    for delay in (*_RETRY_DELAYS, None):
        if move(src, dst, flags):
            return
        code = ctypes.GetLastError()  # type: ignore[attr-defined,unused-ignore]
        if code not in _RETRY_WINERRORS or delay is None:
            # OSError maps the Windows error to errno and to the right
            # subclass (183 -> FileExistsError).
            message = ctypes.FormatError(code)  # type: ignore[attr-defined,unused-ignore]
            raise OSError(None, message, dst, code)
        time.sleep(delay)


class Directory:
    """A directory named by path; Windows offers no descriptor to hold it open."""

    def __init__(self, path: str) -> None:
        self.path = path or "."
        if not os.path.isdir(self.path):
            code = errno.ENOTDIR if os.path.exists(self.path) else errno.ENOENT
            raise OSError(code, os.strerror(code), self.path)

    def _join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def close(self) -> None:
        pass

    def lstat(self, name: str) -> Status | None:
        try:
            st = os.lstat(self._join(name))
        except FileNotFoundError:
            return None
        return Status(st.st_mode, st.st_uid, st.st_gid, st.st_nlink, False)

    def is_mount_point(self, name: str, status: Status) -> bool:
        """False: a file cannot be a mount point on Windows."""
        return False

    def link_count(self, name: str) -> int:
        return os.lstat(self._join(name)).st_nlink

    def copy_attributes(self, name: str, fd: int) -> tuple[list[str], bool]:
        """Nothing: alternate data streams and Windows ACLs are not carried."""
        return [], False

    def mtime(self, name: str) -> float | None:
        try:
            st = os.lstat(self._join(name))
        except FileNotFoundError:
            return None
        return st.st_mtime if stat.S_ISREG(st.st_mode) else None

    def readlink(self, name: str) -> str:
        return os.readlink(self._join(name))

    def open_read(self, name: str) -> int:
        return os.open(self._join(name), os.O_RDONLY | _O_BINARY | _O_NOINHERIT)

    def create_temp(
        self,
        name: str,
        mode: int | None,
        owner: tuple[int, int] | None = None,
        *,
        named_suffix: str | None = None,
    ) -> tuple[int, str | None, int, tuple[str, ...]]:
        flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | _O_BINARY | _O_NOINHERIT
        fds: list[int] = []
        try:
            temp = fresh_name(
                name,
                lambda c: fds.append(os.open(self._join(c), flags, 0o666)),
                named_suffix or "",
            )
        except OSError as e:
            e.filename = self.path  # not the private name
            del e.filename2  # set to None, it would print as "-> None"
            raise
        return fds[0], temp, 0o666 if mode is None else mode, ()

    def create_anonymous(self) -> int | None:
        """None: Windows has no anonymous files that can be named later."""
        return None

    def link_anonymous(self, fd: int, name: str) -> None:
        raise OSError(errno.ENOTSUP, "no anonymous files on Windows", self._join(name))

    def publish(
        self, fd: int, temp: str | None, name: str, *, replace: bool, private: bool = False
    ) -> None:
        # MoveFileExW without MOVEFILE_REPLACE_EXISTING refuses an existing
        # target on every Windows filesystem: *private* changes nothing.
        assert temp is not None
        # An open handle without delete sharing blocks the move: close first.
        os.close(fd)
        try:
            _move(self._join(temp), self._join(name), replace=replace)
        except BaseException:
            self._unlink_quietly(temp)
            raise

    def discard(self, fd: int, temp: str | None) -> None:
        try:
            os.close(fd)
        finally:
            if temp is not None:
                self._unlink_quietly(temp)

    def _unlink_quietly(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self._join(name))

    def replace(self, src: str, dst: str) -> bool:
        try:
            _move(self._join(src), self._join(dst), replace=True)
        except FileNotFoundError:
            return False
        return True

    def names(self) -> list[str]:
        return os.listdir(self.path)

    def remove(self, name: str) -> bool:
        try:
            os.unlink(self._join(name))
        except FileNotFoundError:
            return False
        return True

    def read(self, name: str) -> bytes:
        with open(self._join(name), "rb") as f:
            return f.read()

    def open_lock(self, name: str) -> int:
        return os.open(self._join(name), os.O_RDWR | os.O_CREAT | _O_BINARY | _O_NOINHERIT)

    def sync(self) -> None:
        """No directory fsync exists on Windows; MOVEFILE_WRITE_THROUGH did its work."""

    def make_temp_directory(self, name: str, suffix: str) -> tuple[str, Directory]:
        temp = fresh_name(name, lambda c: os.mkdir(self._join(c), 0o700), suffix)
        return temp, Directory(self._join(temp))

    def new_directory_mode(self, name: str) -> int:
        """0o777: Windows has no POSIX mode bits to give a new directory."""
        return 0o777

    def sync_tree(self) -> None:
        """Flush every regular file below (FlushFileBuffers needs write access);
        Windows has no directory flush."""
        for top, _, names in os.walk(self.path):
            for name in names:
                path = os.path.join(top, name)
                if stat.S_ISREG(os.lstat(path).st_mode):
                    fd = os.open(path, os.O_RDWR | _O_BINARY | _O_NOINHERIT)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)

    def set_own_metadata(self, mode: int, owner: tuple[int, int] | None) -> None:
        """Nothing: see :func:`set_metadata`."""

    def exchange(self, a: str, b: str) -> None:
        raise OSError(errno.ENOTSUP, "no atomic exchange of two names on Windows", self._join(b))

    def rename_noreplace(self, src: str, dst: str) -> None:
        _move(self._join(src), self._join(dst), replace=False)

    def symlink(self, target: str, name: str) -> None:
        os.symlink(target, self._join(name), target_is_directory=True)

    def remove_tree(self, name: str) -> None:
        import shutil

        shutil.rmtree(self._join(name), ignore_errors=True)


def make_directories(path: str, *, sync: bool) -> Directory:
    """Create the missing directories of *path*, as :func:`os.makedirs` does.

    Windows opens no directory to fsync and does not follow a new directory's
    name through a link planted by an unprivileged user (creating symlinks
    needs a privilege there), so *sync* adds nothing: NTFS journals the
    creation itself. A non-directory in the way raises
    :class:`NotADirectoryError` naming it. Returns *path*'s :class:`Directory`
    (which holds no handle open on Windows).
    """
    del sync
    try:
        os.makedirs(path or ".", exist_ok=True)
    except FileExistsError as e:
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", e.filename) from None
    return Directory(path)


def lock(fd: int, *, shared: bool = False, blocking: bool = True) -> bool:
    """Lock the first byte of *fd*; return whether it is held. Windows' byte
    locks are exclusive only, so a shared lock is an exclusive one here, and
    ``LK_LOCK`` gives up after ten seconds, so a blocking wait polls."""
    import msvcrt

    while True:
        os.lseek(fd, 0, os.SEEK_SET)  # msvcrt locks from the current position
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined,unused-ignore]
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EDEADLK):
                raise
            if not blocking:
                return False
            time.sleep(0.01)
            continue
        return True


def unlock(fd: int) -> None:
    import msvcrt

    os.lseek(fd, 0, os.SEEK_SET)
    msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined,unused-ignore]


def reopen_path(fd: int) -> str | None:
    """None: Windows has no path that reopens an open file."""
    return None


def process_start(pid: int) -> int | None:
    """None: not read on Windows, so whether a writer lives cannot be proven."""
    return None


def boot_tag() -> int | None:
    """None: not read on Windows (see :func:`process_start`)."""
    return None


def set_metadata(fd: int, mode: int, owner: tuple[int, int] | None) -> None:
    """Nothing: Windows has no POSIX owner or mode bits to carry over.

    Its one such bit, read-only, is left alone on purpose: a read-only file
    cannot be replaced by ``MoveFileExW``, so setting it would break the next
    write.
    """


def append_only(fd: int) -> None:
    """Move *fd*'s position to its end: Windows cannot add ``O_APPEND`` to an open
    descriptor, so a write after a seek lands where the seek put it."""
    os.lseek(fd, 0, os.SEEK_END)


def copy_into(src_fd: int, dst_fd: int) -> None:
    """Copy all of *src_fd* to *dst_fd*; later writes continue at the end."""
    copy_data(src_fd, dst_fd, 0)


def copy_data(
    src_fd: int,
    dst_fd: int,
    size: int,
    progress: Callable[[int], object] | None = None,
) -> tuple[int, str]:
    """Copy *src_fd* from offset 0 to its end into *dst_fd*; return ``(bytes, "read/write")``.

    Windows offers no copy between descriptors, so this is a plain loop;
    *size* is not reserved. Both descriptors' positions end at the end.
    """
    os.lseek(src_fd, 0, os.SEEK_SET)
    done = 0
    while chunk := os.read(src_fd, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst_fd, view) :]
        done += len(chunk)
        if progress is not None:
            progress(done)
    return done, "read/write"
