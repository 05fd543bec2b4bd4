"""What a filesystem does, measured in a scratch directory that is removed afterwards.

Each probe calls the platform seam's own step (``O_TMPFILE``, ``renameat2``,
``FICLONE``, fsync), so a "yes" here is what crashsafe's writes will get.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

assert sys.platform != "win32", "crashsafe.doctor is for Linux"

from crashsafe._platform import (  # noqa: E402
    _linux,
    directory_sync_unsupported,
    fsync_file,
)
from crashsafe._platform._copy import reflink  # noqa: E402

SCRATCH_PREFIX = ".crashsafe-doctor-"
ROUNDS = 20
_BLOCK = b"\xa5" * 4096


@dataclass(frozen=True)
class Probe:
    """One capability: whether the filesystem did it, and what showed it."""

    supported: bool
    evidence: str


@dataclass(frozen=True)
class Latency:
    """Wall-clock times of *rounds* repetitions of one durable step, in microseconds.

    ``p99_us`` is the nearest-rank 99th percentile: of 20 rounds, the slowest.
    """

    what: str
    rounds: int
    median_us: float
    p99_us: float


@dataclass(frozen=True)
class Measured:
    """Everything measured in the scratch directory."""

    refused: str | None  # what crashsafe needs that the filesystem refused, or None
    probes: dict[str, Probe]
    fsync: Latency | None
    dir_fsync: Latency | None


def _why(e: OSError) -> str:
    name = errno.errorcode.get(e.errno or 0, str(e.errno))
    return f"{name} ({e.strerror})"


def _write(dir_fd: int, name: str, data: bytes) -> None:
    fd = os.open(name, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _read(dir_fd: int, name: str) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def _tmpfile(dir_fd: int) -> Probe:
    fd = _linux.open_tmpfile(dir_fd, 0o600) if _linux.TMPFILE_USABLE else None
    if fd is None:
        return Probe(False, "open(O_TMPFILE) refused: crashsafe stages under a hidden name")
    try:
        os.write(fd, b"anonymous")
        _linux.link_tmpfile(fd, dir_fd, "tmpfile")
    except OSError as e:
        return Probe(False, f"O_TMPFILE opened, but linking it failed: {_why(e)}")
    finally:
        os.close(fd)
    ok = _read(dir_fd, "tmpfile") == b"anonymous"
    return Probe(ok, "open(O_TMPFILE), then linkat through /proc: the file had its data")


def _hard_link(dir_fd: int) -> Probe:
    _write(dir_fd, "link-src", b"x")
    try:
        os.link("link-src", "link-dst", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as e:
        return Probe(False, f"link() refused: {_why(e)}; create-only writes use renameat2")
    return Probe(True, "link() made a second name (create-only publishes this way)")


def _noreplace(dir_fd: int) -> Probe:
    _write(dir_fd, "nr-a", b"a")
    _write(dir_fd, "nr-b", b"b")
    try:
        _linux.renameat2_noreplace(dir_fd, "nr-a", "nr-b")
    except FileExistsError:
        pass
    except OSError as e:
        return Probe(False, f"renameat2(RENAME_NOREPLACE) refused: {_why(e)}")
    else:
        return Probe(False, "renameat2(RENAME_NOREPLACE) replaced an existing name")
    try:
        _linux.renameat2_noreplace(dir_fd, "nr-a", "nr-c")
    except OSError as e:
        # The kernel answers EEXIST itself; only a free name reaches the
        # filesystem, which may not have the call (FUSE without rename2: EINVAL).
        return Probe(False, f"renameat2(RENAME_NOREPLACE) to a free name refused: {_why(e)}")
    return Probe(True, "renameat2(RENAME_NOREPLACE): EEXIST over a name, renamed to a free one")


def _exchange(dir_fd: int) -> Probe:
    _write(dir_fd, "ex-a", b"a")
    _write(dir_fd, "ex-b", b"b")
    try:
        _linux.renameat2_exchange(dir_fd, "ex-a", "ex-b")
    except OSError as e:
        return Probe(False, f"renameat2(RENAME_EXCHANGE) refused: {_why(e)}")
    swapped = (_read(dir_fd, "ex-a"), _read(dir_fd, "ex-b")) == (b"b", b"a")
    return Probe(swapped, "renameat2(RENAME_EXCHANGE) swapped two files' contents")


def _reflink(dir_fd: int) -> Probe:
    _write(dir_fd, "rl-src", _BLOCK * 4)
    src = os.open("rl-src", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    dst = os.open("rl-dst", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        cloned = reflink(src, dst)
        same = os.pread(dst, len(_BLOCK) * 4, 0) == _BLOCK * 4
    finally:
        os.close(src)
        os.close(dst)
    if not cloned:
        return Probe(False, "ioctl(FICLONE) between two scratch files refused")
    return Probe(same, "ioctl(FICLONE) between two scratch files: the clone read back equal")


def _modes(dir_fd: int) -> Probe:
    # A mode no filesystem gives a new file by default, set and read back:
    # ntfs-3g (default options) and exFAT accept chmod and keep 0o777.
    _write(dir_fd, "mode", b"m")
    try:
        os.chmod("mode", 0o640, dir_fd=dir_fd)
    except OSError as e:
        return Probe(False, f"chmod refused: {_why(e)}; perm= is refused here")
    kept = stat.S_IMODE(os.stat("mode", dir_fd=dir_fd).st_mode)
    if kept != 0o640:
        return Probe(
            False,
            f"chmod 0o640 accepted, the file has {kept:#o}: perm= is refused here, "
            "carried modes are warned about",
        )
    return Probe(True, "chmod 0o640 of a scratch file read back as 0o640")


def _dir_fsync(dir_fd: int) -> Probe:
    try:
        fsync_file(dir_fd)
    except OSError as e:
        if not directory_sync_unsupported(e):
            raise
        return Probe(False, f"fsync of a directory: {_why(e)}; renames cannot be made durable")
    return Probe(True, "fsync of a directory returned 0")


def _timed(what: str, step: Callable[[int], None]) -> Latency:
    step(-1)  # a first round to warm caches and allocate, not counted
    times = []
    for i in range(ROUNDS):
        start = time.perf_counter_ns()
        step(i)
        times.append((time.perf_counter_ns() - start) / 1000)
    times.sort()
    median = (times[(ROUNDS - 1) // 2] + times[ROUNDS // 2]) / 2
    p99 = times[math.ceil(0.99 * ROUNDS) - 1]
    return Latency(what, ROUNDS, median, p99)


def _fsync_latency(dir_fd: int) -> Latency:
    fd = os.open("timed", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)

    def append_and_sync(i: int) -> None:
        # A new block each round: the file grows, so each fsync also commits
        # its size, as a write of a new file does.
        os.pwrite(fd, _BLOCK, (i + 1) * len(_BLOCK))
        fsync_file(fd)

    try:
        return _timed("write 4 KiB + fsync", append_and_sync)
    finally:
        os.close(fd)


def _dir_fsync_latency(dir_fd: int) -> Latency:
    def create_and_sync(i: int) -> None:
        # A new name each round, so that there is something to sync.
        os.close(os.open(f"entry-{i + 1}", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=dir_fd))
        fsync_file(dir_fd)

    return _timed("create + fsync directory", create_and_sync)


def measure(directory: str) -> Measured:
    """Probe the filesystem of *directory* in a scratch directory inside it,
    removed afterwards (also on error).

    ``refused`` names what crashsafe needs and the filesystem refused
    (creating a file, renaming over one); then nothing else is measured.
    Raises ``OSError`` only for failures that are not the filesystem's answer
    to a probe (``EIO``, for instance).
    """
    try:
        scratch = tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=directory)
    except OSError as e:
        return Measured(f"creating a directory in it: {_why(e)}", {}, None, None)
    dir_fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            _write(dir_fd, "old", b"old")
            _write(dir_fd, "new", b"new")
            os.rename("new", "old", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as e:
            return Measured(f"creating and renaming files: {_why(e)}", {}, None, None)
        probes = {
            "o_tmpfile": _tmpfile(dir_fd),
            "hard_link": _hard_link(dir_fd),
            "rename_noreplace": _noreplace(dir_fd),
            "rename_exchange": _exchange(dir_fd),
            "reflink": _reflink(dir_fd),
            "modes": _modes(dir_fd),
            "dir_fsync": _dir_fsync(dir_fd),
        }
        fsync = _fsync_latency(dir_fd)
        dir_fsync = _dir_fsync_latency(dir_fd) if probes["dir_fsync"].supported else None
        return Measured(None, probes, fsync, dir_fsync)
    finally:
        os.close(dir_fd)
        shutil.rmtree(scratch, ignore_errors=True)
