"""The native calls that pay for themselves, chosen by one probe, each with a pure-Python fallback.

Each piece stays because the benchmark showed it saves at least 3 % of a
write on ext4 or xfs (``docs/benchmarks.md``, "What each piece of tuning is
worth", where the pieces that did not pay and were removed are listed too):

``"statx"``
    The status reads of a write (the target, the staged file) use statx(2)
    through ctypes, asking for type, mode, link count and owner only (and
    reading whether the entry is a mount's root, which costs nothing more). A ``stat`` that
    returns an inode's ctime or mtime marks it "queried" (Linux 6.13's
    multigrain timestamps, fs/stat.c), and the next change to that inode then
    takes a fine-grained timestamp, which the filesystem must log. Fallback:
    :func:`os.stat` and :func:`os.fstat`, also used where statx is missing or
    refused.
``"warmup"``
    With ``"statx"`` or ``"libc_sigmask"``: a process's first two status
    reads (its first write) use the fallbacks, and ctypes is loaded at the
    third (or at once where a target shows more than one link, which is
    confirmed past FUSE's attribute cache: :func:`link_count_synced`).
    Importing ctypes takes longer than a small write; a process that writes
    once never pays it.
``"_signal"``
    :class:`signals_deferred` calls CPython's C-level
    ``_signal.pthread_sigmask``, which returns the old mask as a set of
    ints. Fallback: :func:`signal.pthread_sigmask`, which turns every mask it
    returns into :class:`signal.Signals` members, and fails a lookup (an
    exception caught inside) for each real-time signal of the
    all-signals mask that the restore returns.
``"libc_sigmask"``
    :class:`signals_deferred` calls the C library's pthread_sigmask(3)
    through ctypes, which writes the old mask to a buffer in the same
    syscall that blocks: two syscalls a block instead of three, and no
    Python sets. Linux only (a 128-byte ``sigset_t``, glibc's and musl's
    size). Fallback: ``"_signal"`` or :func:`signal.pthread_sigmask`.

The switch, for tests and benchmarks: the environment variable
``CRASHSAFE_NATIVE``, read by :func:`probe`. Unset: every piece this
interpreter supports; ``none`` (or empty): the pure-Python fallback
throughout; else a comma-separated list of :data:`PIECES`. The probe runs by
itself at the first status read or signal block of the process; calling it
again re-reads the variable.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any, Final

from crashsafe._platform._status import Status

assert sys.platform != "win32", "crashsafe._platform._native is not for Windows"

__all__ = ["PIECES", "link_count_synced", "probe", "signals_deferred", "status_again"]

PIECES: Final = ("statx", "warmup", "_signal", "libc_sigmask")

# statx(2): the flags, and the fields asked for: STATX_TYPE | STATX_MODE |
# STATX_NLINK | STATX_UID | STATX_GID, and no timestamp (see the module's docstring).
_AT_SYMLINK_NOFOLLOW: Final = 0x100
_AT_EMPTY_PATH: Final = 0x1000
# Ask the filesystem, not an attribute cache: FUSE answers from one for a
# second (bindfs showed a link that was gone); local filesystems have no such
# cache and ignore the flag. Only to confirm a link count: on sshfs, every
# target read asked this way met writers racing renames with errors.
_AT_STATX_FORCE_SYNC: Final = 0x2000
_STATX_NLINK: Final = 0x4
_STATX_WANTED: Final = 0x1 | 0x2 | 0x4 | 0x8 | 0x10
# stx_attributes: the entry is the root of a mount (Linux 5.8), a bind-mounted
# file among them; stx_attributes_mask says whether the kernel reports it.
_STATX_ATTR_MOUNT_ROOT: Final = 0x2000
_FS_ENCODING: Final = sys.getfilesystemencoding()
_FS_ERRORS: Final = sys.getfilesystemencodeerrors()
_ALL_SIGNALS: Final = signal.valid_signals()
# With the warm-up, the status read that loads the ctypes pieces: a process's third.
_WARM_UP_READS: Final = 3
# The ctypes pieces, loaded together (one import of ctypes).
_CTYPES_PIECES: Final = frozenset({"statx", "libc_sigmask"})

_Sigmask = Callable[[int, Iterable[int]], Iterable[int]]
_LibcSigmask = tuple[
    Callable[..., int],  # pthread_sigmask(how, set, oldset)
    Callable[[], object],  # a new, empty sigset_t
    object,  # a sigset_t with every signal in it
]
_Statx = tuple[
    Callable[..., int],  # statx(dirfd, name, flags, mask, buffer)
    Callable[[], object],  # a new buffer for one struct statx
    # its stx_mask, stx_attributes, stx_nlink, stx_uid, stx_gid, stx_mode, stx_attributes_mask
    Callable[..., tuple[int, ...]],
    Callable[[], int],  # ctypes.get_errno
]

# What the probe chose; None until it ran.
_pieces: frozenset[str] | None = None
_sigmask: _Sigmask = signal.pthread_sigmask
_statx: _Statx | None = None
_libc_sigmask: _LibcSigmask | None = None
# Status reads left until the ctypes pieces are loaded (the last of them loads
# them); 0: none.
_reads_to_ctypes = 0


def probe() -> frozenset[str]:
    """Choose the pieces this process uses, from ``CRASHSAFE_NATIVE``; return them.

    A piece the interpreter or the C library lacks (``_signal`` outside
    CPython, the ctypes pieces off Linux, statx before glibc 2.28) is left
    out; with the warm-up, the ctypes pieces are looked up only at the third
    status read, and where one is missing then, its fallback serves. Raises
    :class:`ValueError` for a name that is not one of :data:`PIECES`.
    """
    global _pieces, _sigmask, _statx, _libc_sigmask, _reads_to_ctypes  # noqa: PLW0603
    value = os.environ.get("CRASHSAFE_NATIVE")
    if value is None:
        wanted = set(PIECES)
    else:
        wanted = {p.strip() for p in value.split(",")} - {"", "none"}
        if unknown := wanted - set(PIECES):
            raise ValueError(
                f"CRASHSAFE_NATIVE={value!r}: unknown {', '.join(sorted(unknown))}; "
                f"expected none or some of {', '.join(PIECES)}"
            )
    _sigmask = signal.pthread_sigmask
    if "_signal" in wanted:
        try:
            from _signal import pthread_sigmask  # type: ignore[import-not-found]
        except ImportError:  # pragma: no cover - an interpreter without CPython's module
            wanted.discard("_signal")
        else:
            _sigmask = pthread_sigmask
    _statx = _libc_sigmask = None
    _reads_to_ctypes = 0
    if not sys.platform.startswith("linux"):
        wanted -= _CTYPES_PIECES
    if not wanted & _CTYPES_PIECES:
        wanted.discard("warmup")
    elif "warmup" in wanted:
        _reads_to_ctypes = _WARM_UP_READS
    else:
        wanted -= _CTYPES_PIECES - _load_ctypes_now(wanted)
    _pieces = frozenset(wanted)
    return _pieces


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
    _call: Callable[..., int] | None
    _old: Any  # a sigset_t buffer, or the set the fallback returned

    def __enter__(self) -> None:
        if _pieces is None:
            probe()
        if _libc_sigmask is not None:
            # The old mask lands in a buffer that the C call fills in the same
            # syscall as it blocks: a handler that raises right after the call
            # (CPython runs them at its end) cannot take the old mask with it.
            self._call, new_set, every_signal = _libc_sigmask
            self._old = old = new_set()
            try:
                self._call(signal.SIG_BLOCK, every_signal, old)
            except BaseException:
                self._call(signal.SIG_SETMASK, old, None)
                raise
            return
        self._call = None
        # CPython runs the Python handlers of signals that arrived before the
        # block right after the call that blocks (inside pthread_sigmask). A
        # handler that raised there would take the old mask with it, leaving
        # this thread with every signal blocked for good (seen 31 times in
        # 31,093 interrupted writes), so the old mask is read first, by a
        # call of its own.
        self._old = _sigmask(signal.SIG_BLOCK, ())
        try:
            _sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
        except BaseException:
            _sigmask(signal.SIG_SETMASK, self._old)
            raise

    def __exit__(self, *exc_info: object) -> None:
        if self._call is None:
            _sigmask(signal.SIG_SETMASK, self._old)
        else:
            self._call(signal.SIG_SETMASK, self._old, None)


def _load_ctypes_now(wanted: set[str] | frozenset[str]) -> frozenset[str]:
    """Load the ctypes pieces among *wanted* (into ``_statx`` and ``_libc_sigmask``);
    return those that loaded (the C library may lack them)."""
    global _libc_sigmask  # noqa: PLW0603 - loaded once per probe
    loaded: set[str] = set()
    if "statx" in wanted and _load_statx():
        loaded.add("statx")
    if "libc_sigmask" in wanted:
        _libc_sigmask = _load_libc_sigmask()
        if _libc_sigmask is not None:
            loaded.add("libc_sigmask")
    return frozenset(loaded)


def _load_libc_sigmask() -> _LibcSigmask | None:
    """pthread_sigmask(3) through ctypes, with the sets it takes; None where the
    C library has none."""
    import ctypes  # here, not at import: it costs 1 to 3 ms, once

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


def _load_statx() -> bool:
    """Load statx(2) through ctypes, and what reading its result takes, into
    ``_statx``; False where the C library has none (glibc before 2.28)."""
    global _statx  # noqa: PLW0603 - loaded once per probe
    import ctypes  # here, not at import: it costs 1 to 3 ms, once
    import struct

    try:
        call = ctypes.CDLL(None, use_errno=True).statx
    except (OSError, AttributeError):
        return False
    # No argtypes: ctypes's own conversions (int to int, bytes and a buffer to
    # pointers) are what statx takes, and skip a from_param call per argument.
    call.restype = ctypes.c_int
    # struct statx is 256 bytes: stx_mask at offset 0, stx_attributes at 8,
    # stx_nlink, stx_uid, stx_gid and stx_mode at 16, 20, 24 and 28,
    # stx_attributes_mask at 56 (include/uapi/linux/stat.h).
    fields = struct.Struct("=I4xQIIIH26xQ").unpack_from
    _statx = call, ctypes.c_char * 256, fields, ctypes.get_errno
    return True


def _status(fd: int, name: str = "") -> Status:
    """The type, mode, owner and link count of *name* relative to the directory
    *fd*, not following a symlink; of *fd* itself when *name* is empty. Whether
    it is a mount's root is known with statx only (``mount_root`` None without).

    Read with statx(2) asking for no timestamp where the probe chose it (see
    the module's docstring), else with :func:`os.stat`. Where statx is
    refused (EPERM from a seccomp filter, ENOSYS where the C library does not
    emulate it on a kernel before 4.11) the fallback takes over for the rest
    of the process. Raises the :class:`OSError` of the read.
    """
    global _statx, _reads_to_ctypes  # noqa: PLW0603 - the warm-up's count; a refusal
    if _pieces is None:
        probe()
    if _reads_to_ctypes:  # the warm-up: the fallbacks until the read that loads ctypes
        _reads_to_ctypes -= 1
        if not _reads_to_ctypes:
            _load_ctypes_now(_pieces or frozenset())
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
            mask, attributes, nlink, uid, gid, mode, known = fields(result)
            if mask & _STATX_WANTED == _STATX_WANTED:
                root = (
                    bool(attributes & _STATX_ATTR_MOUNT_ROOT)
                    if known & _STATX_ATTR_MOUNT_ROOT
                    else None
                )
                return Status(mode, uid, gid, nlink, root)
        else:
            err = get_errno()
            if err not in (errno.ENOSYS, errno.EPERM):
                raise OSError(err, os.strerror(err))
            _statx = None  # a refusal holds for the process
    full = os.stat(name, dir_fd=fd, follow_symlinks=False) if name else os.fstat(fd)
    return Status(full.st_mode, full.st_uid, full.st_gid, full.st_nlink)


def status_again(fd: int) -> Status:
    """The status of the open file *fd*, read again right after the caller changed
    it (the read-back of a staged file's mode and owner).

    As :func:`_status`, but never the read that loads ctypes and not counted by
    the warm-up: while it lasts, :func:`os.fstat` serves, so that a process's
    first write, which makes this one read more than the warm-up counts, stays
    free of ctypes.
    """
    if _pieces is None:
        probe()
    if _reads_to_ctypes:
        full = os.fstat(fd)
        return Status(full.st_mode, full.st_uid, full.st_gid, full.st_nlink)
    return _status(fd)


def link_count_synced(fd: int, name: str) -> int:
    """The link count of *name* relative to the directory *fd* (not following a
    symlink), asked of the filesystem itself rather than of its attribute cache.

    After a create-only publish by ``link()`` and ``unlink()``, bindfs (FUSE)
    went on showing two links for the published file for a second. statx(2)
    with ``AT_STATX_FORCE_SYNC`` asks again; a write asks only to confirm a
    count above 1, so this ends the warm-up early (loading ctypes) only then.
    Without statx (``CRASHSAFE_NATIVE`` without it, an old C library),
    :func:`os.stat`'s count. Raises the :class:`OSError` of the read.
    """
    global _reads_to_ctypes  # noqa: PLW0603 - the warm-up, ended early
    if _pieces is None:
        probe()
    if _reads_to_ctypes:
        _reads_to_ctypes = 0
        _load_ctypes_now(_pieces or frozenset())
    if _statx is not None:
        call, new_buffer, fields, get_errno = _statx
        result = new_buffer()
        encoded = name.encode(_FS_ENCODING, _FS_ERRORS)
        flags = _AT_SYMLINK_NOFOLLOW | _AT_STATX_FORCE_SYNC
        if call(fd, encoded, flags, _STATX_NLINK, result) == 0:
            mask, _, nlink, *_ = fields(result)
            if mask & _STATX_NLINK:
                return int(nlink)
        elif (err := get_errno()) not in (errno.ENOSYS, errno.EPERM):
            raise OSError(err, os.strerror(err))
    return os.stat(name, dir_fd=fd, follow_symlinks=False).st_nlink
