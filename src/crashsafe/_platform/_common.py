"""Steps that are the same on every platform, written once for both backends.

Only :mod:`os` calls whose flags every platform either has or lacks harmlessly
(``getattr(os, FLAG, 0)``): a flag a platform lacks is one it does not need.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from typing import Final, TypeVar

from crashsafe.staging import temp_name

_NAME_TRIES: Final = 100
_T = TypeVar("_T")
# A reader racing renames on FUSE or NFS: the waits before each retry, in
# seconds (10 tries in all, 0.213 s of waiting at most). Measured on bindfs,
# ntfs-3g and exfat-fuse with a writer renaming over the file in a tight loop,
# 3,000 reads each: at most 6 tries in a row failed with these waits.
RENAME_RETRY_WAITS: Final = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.05, 0.05, 0.05)
# What such a reader sees: the entry gone (ENOENT), or the server's handle of
# it gone (ESTALE: sshfs, NFS).
_VANISHED: Final = frozenset({errno.ENOENT, errno.ESTALE})
# Not inherited by child processes; binary on Windows (else its reads and
# writes would translate line ends).
_EVERY_OPEN: Final = (
    getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOINHERIT", 0) | getattr(os, "O_BINARY", 0)
)
# Opening a FIFO for reading would wait for a writer: O_NONBLOCK makes it
# return at once, and changes nothing for a regular file. Windows has none.
_READ: Final = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _EVERY_OPEN
# A planted symlink is refused, never followed.
_LOCK_FILE_FLAGS: Final = _READ | getattr(os, "O_NOFOLLOW", 0)


def open_reading(path: str) -> int:
    """Open *path* read-only, following symlinks, never waiting on a FIFO."""
    return os.open(path, _READ)


# The checksum store's log: appended to, read back, never truncated. O_RDWR, not
# O_WRONLY: a FIFO planted at the name then opens at once instead of waiting.
_APPEND: Final = os.O_RDWR | os.O_APPEND | getattr(os, "O_NONBLOCK", 0) | _EVERY_OPEN


def open_appending(path: str) -> int:
    """Open the existing file *path* for reading and appending (following
    symlinks), never waiting on a FIFO, not inherited by child processes."""
    return os.open(path, _APPEND)


def create_private(path: str) -> int:
    """Create the new file *path* (an existing one raises ``FileExistsError``),
    mode 0o600, open for reading and writing."""
    return os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | _EVERY_OPEN, 0o600)


def fresh_name(name: str, make: Callable[[str], object], suffix: str = "") -> str:
    """Call *make(candidate)* with fresh temporary names (ending with *suffix*)
    until one is not taken."""
    for _ in range(_NAME_TRIES):
        candidate = temp_name(name, suffix)
        try:
            make(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(errno.EEXIST, "no free temporary name after 100 tries", name)


def open_lock_file(path: str) -> int:
    """Open the lock file *path* read-only, creating it (0o666 less the umask)
    where it is missing; never through a symlink, never waiting on a FIFO.

    Raises the error of the open, and ``EINVAL`` for a file that is not regular.
    """
    try:
        fd = os.open(path, _LOCK_FILE_FLAGS | os.O_CREAT, 0o666)
    except PermissionError as e:
        # An existing lock file of another user in a sticky directory
        # (protected_regular) refuses O_CREAT, but may still be opened.
        # Without one, the directory refused the creation: that is the error.
        try:
            fd = os.open(path, _LOCK_FILE_FLAGS)
        except FileNotFoundError:
            raise e from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Lock file is not a regular file", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_file_linked(path: str, fd: int) -> bool:
    """Whether *path* still names the file open as *fd*: a lock on a file that
    was removed or replaced meanwhile excludes no one who opens *path* now."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def directory_sync_unsupported(error: OSError) -> bool:
    """Whether a directory fsync error means "this filesystem cannot sync directories".

    Some FUSE, CIFS and virtual-machine shares answer EINVAL (or ENOTSUP) to
    fsync of a directory: they offer no directory durability at all. That is a
    property of the filesystem, not a failure of this write.
    """
    return error.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)


def through_renames(
    attempt: Callable[[], _T], where: str | int, renames_hide_files: Callable[[str | int], bool]
) -> _T:
    """*attempt()* (an open for reading), tried again while it fails with ENOENT or
    ESTALE on a filesystem where *renames_hide_files(where)* says a rename over
    a file can make it look missing for a moment.

    *where*: the file's path or its directory's descriptor, asked about only
    after a first failure, so that readers elsewhere pay nothing. At most
    ``1 + len(RENAME_RETRY_WAITS)`` tries (10), waiting
    :data:`RENAME_RETRY_WAITS` between them (0.213 s in all); then the last
    error is raised: a file that is really missing is reported that much later
    there. Any other error is raised at once.
    """
    try:
        return attempt()
    except OSError as e:
        if e.errno not in _VANISHED or not renames_hide_files(where):
            raise
    for wait in RENAME_RETRY_WAITS[:-1]:
        time.sleep(wait)
        try:
            return attempt()
        except OSError as e:
            if e.errno not in _VANISHED:
                raise
    time.sleep(RENAME_RETRY_WAITS[-1])
    return attempt()
