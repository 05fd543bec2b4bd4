"""Native shortcuts of the POSIX backend: statx(2) and pthread_sigmask(3) through ctypes.

Moved here unchanged from ``_posix`` (issue 14), so that the tuning lives in
one place and can be measured and pruned on its own.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable
from typing import Final

from crashsafe._platform._status import Status

assert sys.platform != "win32", "crashsafe._platform._native is not for Windows"

# statx(2): the flags, and the fields asked for: STATX_TYPE | STATX_MODE |
# STATX_UID | STATX_GID, and no timestamp (see _status).
_AT_SYMLINK_NOFOLLOW: Final = 0x100
_AT_EMPTY_PATH: Final = 0x1000
_STATX_WANTED: Final = 0x1 | 0x2 | 0x8 | 0x10
# What os.fsencode does, without its Python-level call on every write.
_FS_ENCODING: Final = sys.getfilesystemencoding()
_FS_ERRORS: Final = sys.getfilesystemencodeerrors()

_ALL_SIGNALS: Final = signal.valid_signals()
try:
    # signal.pthread_sigmask turns the old mask into a set of Signals enums,
    # which cost about 100 us per call here (measured with cProfile): more
    # than the write itself. The C function returns plain ints.
    from _signal import pthread_sigmask as _private_sigmask  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - an interpreter without CPython's module
    _private_sigmask = signal.pthread_sigmask
_sigmask: Callable[..., object] = _private_sigmask

# MEASUREMENT ONLY (issue 14): every piece of tuning can be switched off, so
# that the benchmark can price each one against the pure-Python way.
TUNING: Final = ("statx", "libc_sigmask", "private_signal", "tuple_new", "warmup", "pool")
_pieces: frozenset[str] | None = None
_use_tuple_new = True


def probe() -> frozenset[str]:
    """Choose the pieces of tuning from ``CRASHSAFE_NATIVE`` (unset: all; else a
    comma-separated list of :data:`TUNING` names); return them."""
    global _pieces, _sigmask, _use_tuple_new, _statx, _libc_sigmask, _reads_before_ctypes  # noqa: PLW0603
    from crashsafe import staging

    value = os.environ.get("CRASHSAFE_NATIVE")
    wanted = frozenset(TUNING if value is None else [p for p in value.split(",") if p])
    if not wanted <= set(TUNING):
        raise ValueError(f"CRASHSAFE_NATIVE: unknown {sorted(wanted - set(TUNING))}")
    _pieces = wanted
    _sigmask = _private_sigmask if "private_signal" in wanted else signal.pthread_sigmask
    _use_tuple_new = "tuple_new" in wanted
    staging._use_pool = "pool" in wanted
    _statx = _libc_sigmask = None
    if "warmup" in wanted:
        _reads_before_ctypes = 2
    else:
        _reads_before_ctypes = -1
        _load_ctypes()
    return wanted


class signals_deferred:
    """Hold back signal delivery to this thread for a few syscalls.

    Python raises ``KeyboardInterrupt`` (or whatever a handler raises) between
    any two bytecodes. Between "the kernel created a name" and "the code
    recorded it" such an exception would leak the name; between "renamed" and
    "marked committed" it would make a published file look unpublished.
    Blocked signals stay pending and are handled right after the block.
    SIGKILL cannot be blocked, and needs no handling: a killed writer's
    leftovers are what ``sweep()`` is for.

    Exact in a single-threaded program only: with other threads running, the
    kernel may hand the signal to one of them, and Python then still runs
    the handler in the main thread at its next bytecode.
    """

    # A class, not a @contextmanager generator: this runs twice per write,
    # and the generator machinery costs more than the syscalls.
    __slots__ = ("_call", "_old")

    def __enter__(self) -> None:
        # CPython runs the Python handlers of signals that arrived before the
        # block right after the call that blocks (at the call's end, or inside
        # signal.pthread_sigmask). A handler that raised there would take the
        # old mask with it, leaving this thread with every signal blocked for
        # good (seen 31 times in 31,093 interrupted writes), so the old mask
        # is in hand first: in a buffer that the C call fills in the same
        # syscall as it blocks, or, before ctypes is loaded, read by a call
        # of its own.
        if _pieces is None:
            probe()
        if _libc_sigmask is None:
            self._call = None
            self._old: object = _sigmask(signal.SIG_BLOCK, ())
            try:
                _sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
            except BaseException:
                _sigmask(signal.SIG_SETMASK, self._old)
                raise
            return
        # pthread_sigmask returns an error only for a bad first argument.
        self._call, new_set, every_signal = _libc_sigmask
        self._old = old = new_set()
        try:
            self._call(signal.SIG_BLOCK, every_signal, old)
        except BaseException:
            self._call(signal.SIG_SETMASK, old, None)
            raise

    def __exit__(self, *exc_info: object) -> None:
        if self._call is None:
            _sigmask(signal.SIG_SETMASK, self._old)
        else:
            self._call(signal.SIG_SETMASK, self._old, None)


_Sigmask = tuple[
    Callable[..., int],  # pthread_sigmask(how, set, oldset)
    Callable[[], object],  # a new, empty sigset_t
    object,  # a sigset_t with every signal in it
]


def _load_sigmask() -> _Sigmask | None:
    """pthread_sigmask(3) through ctypes, with the sets it takes; None where it
    is not used.

    It writes the old mask to a buffer in the same syscall as it blocks: one
    syscall fewer per block than :func:`signal.pthread_sigmask` (see
    :class:`signals_deferred`), and no Python sets built or read. Linux only,
    where it is verified; elsewhere :func:`signal.pthread_sigmask` serves.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        call, fill = libc.pthread_sigmask, libc.sigfillset
    except (OSError, AttributeError):
        return None
    call.restype = fill.restype = ctypes.c_int
    sigset = ctypes.c_char * 128  # the size of glibc's and musl's sigset_t
    every_signal = sigset()
    if fill(every_signal) != 0:
        return None
    return call, sigset, every_signal


_Statx = tuple[
    Callable[..., int],  # statx(dirfd, name, flags, mask, buffer)
    Callable[[], object],  # a new buffer for one struct statx
    Callable[..., tuple[int, ...]],  # its stx_mask, stx_uid, stx_gid and stx_mode
    Callable[[], int],  # ctypes.get_errno
]


def _load_statx() -> _Statx | None:
    """statx(2) through ctypes, and what reading its result takes; None where
    the C library has none (not Linux, glibc before 2.28)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # here, not at import: it costs 1 to 3 ms, once
    import struct

    try:
        call = ctypes.CDLL(None, use_errno=True).statx
    except (OSError, AttributeError):
        return None
    # No argtypes: ctypes's own conversions (int to int, bytes and a buffer to
    # pointers) are what statx takes, and skip a from_param call per argument
    # (0.6 us a call here, timeit).
    call.restype = ctypes.c_int
    # struct statx is 256 bytes: stx_mask at offset 0, stx_uid, stx_gid and
    # stx_mode at 20, 24 and 28.
    fields = struct.Struct("=I16xIIH").unpack_from
    return call, ctypes.c_char * 256, fields, ctypes.get_errno


_statx: _Statx | None = None
_libc_sigmask: _Sigmask | None = None
# ctypes takes 1 to 3 ms to import (more after the page cache was dropped),
# longer than a whole small write: the first two status reads of a process
# (one write's) use stat, and its signal blocks signal.pthread_sigmask; the
# C library's functions are loaded for the rest, where their saving repeats.
# -1: loading was tried.
_reads_before_ctypes = 2


def _load_ctypes() -> None:
    """Load statx and pthread_sigmask from the C library (see _reads_before_ctypes)."""
    global _statx, _libc_sigmask  # noqa: PLW0603 - loaded once per process
    assert _pieces is not None
    _statx = _load_statx() if "statx" in _pieces else None
    _libc_sigmask = _load_sigmask() if "libc_sigmask" in _pieces else None


# Status(mode, uid, gid) without the Python-level __new__ of a named tuple:
# two reads a write, on the path where every frame counts.
_new_status: Final = tuple.__new__


def _status(fd: int, name: str = "") -> Status:
    """The type, mode and owner of *name* relative to the directory *fd*,
    not following a symlink; of *fd* itself when *name* is empty.

    Read with statx(2) asking for no timestamp. A stat that returns an
    inode's ctime or mtime marks it "queried" (Linux 6.13's multigrain
    timestamps, fs/stat.c), and the next change to that inode then takes a
    fine-grained timestamp, which the filesystem must log: measured on xfs
    (Linux 6.18), reading the target and the staged file with ``lstat`` and
    ``fstat`` made a durable or consistent write 4 to 12 % slower; statx
    without timestamps cost nothing extra. (No effect measured on ext4.)
    Where statx is missing or refused (EPERM from a seccomp filter, ENOSYS
    where the C library does not emulate it on a kernel before 4.11: then
    it is not tried again), and for the first two reads of a process (see
    ``_reads_before_ctypes``), :func:`os.stat` does the same job.
    """
    global _statx, _reads_before_ctypes  # noqa: PLW0603 - loaded once, on the third read
    if _pieces is None:
        probe()
    if _statx is None and _reads_before_ctypes >= 0:
        if _reads_before_ctypes == 0:
            _load_ctypes()
        _reads_before_ctypes -= 1
    if _statx is not None:
        call, new_buffer, fields, get_errno = _statx
        result = new_buffer()  # one per call: threads read concurrently
        if name:
            if "\0" in name:  # C would read up to the NUL: refuse as os.stat does
                raise ValueError("embedded null byte")
            rc = call(fd, name.encode(_FS_ENCODING, _FS_ERRORS), _AT_SYMLINK_NOFOLLOW,
                      _STATX_WANTED, result)  # fmt: skip
        else:
            rc = call(fd, b"", _AT_SYMLINK_NOFOLLOW | _AT_EMPTY_PATH, _STATX_WANTED, result)
        if rc == 0:
            mask, uid, gid, mode = fields(result)
            if mask & _STATX_WANTED == _STATX_WANTED:
                if _use_tuple_new:
                    return _new_status(Status, (mode, uid, gid))
                return Status(mode, uid, gid)
        else:
            err = get_errno()
            if err not in (errno.ENOSYS, errno.EPERM):
                raise OSError(err, os.strerror(err))
            _statx = None  # a refusal holds for the process
    full = os.stat(name, dir_fd=fd, follow_symlinks=False) if name else os.fstat(fd)
    return Status(full.st_mode, full.st_uid, full.st_gid)
