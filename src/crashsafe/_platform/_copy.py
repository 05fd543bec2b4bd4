"""The copy paths of the POSIX backend, for :func:`crashsafe.atomic_copy` and
append mode: reflink, ``copy_file_range``, ``sendfile``, then read/write, with
the destination's space reserved first (``fallocate``).
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Final

# As in _posix: type checkers skip the rest for Windows instead of reporting
# every POSIX call in it.
assert sys.platform != "win32", "crashsafe._platform._copy is not for Windows"


def copy_into(src_fd: int, dst_fd: int) -> None:
    """Copy all of *src_fd* to the empty *dst_fd*, then make *dst_fd* append-only
    so later writes land after the copy, as with ``open('a')``.
    """
    copy_data(src_fd, dst_fd, os.fstat(src_fd).st_size)
    append_only(dst_fd)


def append_only(fd: int) -> None:
    """Make every later write to *fd* land at its end (``O_APPEND``), as ``open('a')``
    does, and move its position there."""
    import fcntl

    os.lseek(fd, 0, os.SEEK_END)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)


def copy_data(
    src_fd: int,
    dst_fd: int,
    size: int,
    progress: Callable[[int], object] | None = None,
) -> tuple[int, str]:
    """Copy *src_fd* from offset 0 to its end into the empty *dst_fd*, the fastest way
    the two files allow; return ``(bytes copied, method)``.

    The methods, in order: ``"reflink"`` (``FICLONE``: the copy shares the
    source's blocks, copy-on-write, in O(1); xfs and btrfs), else
    ``"copy_file_range"`` (in the kernel, server-side on NFS),
    ``"sendfile"`` (in the kernel, across filesystems on older kernels), else
    ``"read/write"``. A method the files do not support is skipped; the next
    one continues from the same offset. Before the copy (unless reflinked),
    *size* bytes are reserved so that a disk too small fails at once with
    ``ENOSPC``. The copy runs until the source's end, whatever *size* said;
    the caller compares. *progress(done)* is called after every step of at
    most 16 MiB. Neither descriptor's file position is used.
    """
    if reflink(src_fd, dst_fd):
        done = os.fstat(dst_fd).st_size
        if progress is not None:
            progress(done)
        return done, "reflink"
    _reserve(dst_fd, size)
    done = 0
    method = "read/write"
    for method, step in _COPY_STEPS:
        if step is None:
            continue
        try:
            while n := step(src_fd, dst_fd, done):
                done += n
                if progress is not None:
                    progress(done)
            return done, method
        except OSError as e:
            if e.errno not in _NO_FAST_COPY or method == "read/write":
                raise
    raise AssertionError("unreachable: read/write never falls back")  # pragma: no cover


_FICLONE: Final = 0x40049409
_FALLOC_FL_KEEP_SIZE: Final = 0x01
_STEP: Final = 1 << 24
# Errors by which a filesystem (or a pair of them) says "not this way"; the
# next, slower method follows. Anything else (EIO, ENOSPC) is a real failure.
_NO_FAST_COPY: Final = frozenset(
    {
        errno.EXDEV,
        errno.EINVAL,
        errno.EOPNOTSUPP,
        errno.ENOTTY,
        errno.ENOSYS,
        errno.EBADF,
        errno.ETXTBSY,
        errno.EPERM,
    }
)


def reflink(src_fd: int, dst_fd: int) -> bool:
    """Make *dst_fd* share *src_fd*'s blocks (``FICLONE``, copy-on-write, O(1));
    False where the files cannot (not Linux, another filesystem, no reflink on
    this one). Real failures (``EIO``, ``ENOSPC``) raise."""
    if not sys.platform.startswith("linux"):
        return False  # pragma: no cover - FICLONE is Linux's
    import fcntl

    try:
        fcntl.ioctl(dst_fd, _FICLONE, src_fd)
    except OSError as e:
        if e.errno not in _NO_FAST_COPY:
            raise
        return False
    return True


def _reserve(fd: int, size: int) -> None:
    """Reserve *size* bytes for *fd* without changing its size; ENOSPC raises.

    ``fallocate`` with ``FALLOC_FL_KEEP_SIZE``, so a copy that ends short
    still shows its true size. ``os.posix_fallocate`` is not used: where the
    filesystem lacks fallocate, glibc emulates it by writing every block.
    """
    if size <= 0 or not sys.platform.startswith("linux"):
        return
    import ctypes  # only here: copies are rare next to writes, and ctypes costs import time

    libc = ctypes.CDLL(None, use_errno=True)
    fallocate = getattr(libc, "fallocate64", None) or libc.fallocate
    fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    if fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, size) != 0:
        err = ctypes.get_errno()
        if err not in _NO_FAST_COPY:  # no fallocate on this filesystem: copy without
            raise OSError(err, os.strerror(err))


# Linux's; macOS has none.
_os_copy_file_range: Callable[[int, int, int, int, int], int] | None = getattr(
    os, "copy_file_range", None
)


def _copy_file_range(src_fd: int, dst_fd: int, offset: int) -> int:
    assert _os_copy_file_range is not None  # else not one of the _COPY_STEPS
    return _os_copy_file_range(src_fd, dst_fd, _STEP, offset, offset)


def _sendfile(src_fd: int, dst_fd: int, offset: int) -> int:
    # sendfile writes at the destination's file position.
    os.lseek(dst_fd, offset, os.SEEK_SET)
    return os.sendfile(dst_fd, src_fd, offset, _STEP)


def _read_write(src_fd: int, dst_fd: int, offset: int) -> int:
    chunk = os.pread(src_fd, 1 << 20, offset)
    view = memoryview(chunk)
    while view:
        view = view[os.pwrite(dst_fd, view, offset + len(chunk) - len(view)) :]
    return len(chunk)


_COPY_STEPS: Final[tuple[tuple[str, Callable[[int, int, int], int] | None], ...]] = (
    ("copy_file_range", _copy_file_range if _os_copy_file_range is not None else None),
    ("sendfile", _sendfile if sys.platform.startswith("linux") else None),
    ("read/write", _read_write),
)
