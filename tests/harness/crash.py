"""Crash machinery: kill -9 torture and a power cut right after every syscall.

Two runners, reusable by every write path (atomic_write, atomic_copy,
transactions):

* :func:`kill9_torture` forks a writer that overwrites one target with ever
  newer complete versions and SIGKILLs it after a random delay, over and over,
  checking the target after every kill.

* :func:`power_cut_every_syscall` runs a writer program under strace and
  freezes it right after its K-th syscall, for every syscall it makes between
  two markers (``start()`` and ``end()`` in the program), then cuts the power
  of the filesystem with the shutdown ioctl, kills the frozen program, unmounts
  and mounts again (replaying the journal) and lets the caller inspect what
  survived.

How the freeze works (measured with strace 6.1): ``-e inject=NAME:signal=STOP:when=N``
stops the tracee when its N-th call of NAME returns. The signal is queued at
syscall entry and delivered on the way back to user space, so the syscall has
completed and nothing after it has run; strace then prints ``--- stopped by
SIGSTOP ---`` and holds the tracee stopped. The counter of ``when=`` is per
syscall number and per tracee, counted from the start of the process (Python's
start-up included), not per set: ``inject=all:when=K`` stops at the first
syscall of any kind that reaches its own K-th call, which is no use. So a
recording run traces everything once; every syscall after the start marker
becomes a pair (name, N = how many calls of that name the process had made up
to and including it), and each crash point is one run with that pair. Python
with ``-S -B`` and a fixed environment makes the same syscalls before the
marker in every run; each trial checks that the syscall it froze on is the
one it aimed at, so a drift fails loudly instead of testing the wrong point.

The worst case is made deterministic as PROVING.md measured it: background
writeback is turned off for the run (:func:`writeback_off`), and in the
``commit`` mode an unrelated file on the same filesystem is fsynced right
before the cut, which commits the journal (the rename with it) as any other
process could at that moment. In the ``cut`` mode nothing is committed before
the cut, which is what shows a missing directory fsync. Both modes run at every
crash point.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import re
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import crashsafe
import crashsafe._platform._posix as posix
from tests.harness import mounts
from tests.harness.checks import leftovers
from tests.harness.require import require_root, require_tools

# --------------------------------------------------------------------------- payloads

_HEAD = re.compile(rb"\ACRASHSAFE-PAYLOAD v(\d{12}) n(\d{12})\n")


def payload(version: int, size: int = 1 << 20) -> bytes:
    """A self-checking payload: a header with version and length, then a pattern
    unique to the version. Any prefix, mix of two versions or zero fill differs
    from every complete payload."""
    head = b"CRASHSAFE-PAYLOAD v%012d n%012d\n" % (version, size)
    unit = hashlib.sha256(b"crashsafe %d" % version).digest()
    body = unit * ((size - len(head)) // len(unit) + 1)
    return (head + body)[:size]


def classify(data: bytes | None) -> int | str:
    """The version of a complete payload, else "missing", "empty", "zeros",
    "partial" (a prefix of one payload) or "torn" (anything else)."""
    if not data:
        return "missing" if data is None else "empty"
    if data.count(0) == len(data):
        return "zeros"
    m = _HEAD.match(data)
    if m and int(m[2]) > 1 << 30:
        return "torn"  # no payload is that large; do not build one
    expected = payload(int(m[1]), int(m[2])) if m else b""
    if data == expected:
        return int(m[1]) if m else "torn"
    return "partial" if m and expected.startswith(data) else "torn"


def read_or_none(path: str | os.PathLike[str]) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


def durable_put(path: str | os.PathLike[str], data: bytes) -> None:
    """Put *data* at *path* durably with plain os calls (setup, not under test)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.harness-setup")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# --------------------------------------------------------------------------- kill -9


@dataclass
class TortureResult:
    kills: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # "complete" or what was wrong
    changed: int = 0  # kills after which the target held a newer version than before
    orphans_before_sweep: int = 0
    swept: int = 0
    left_after_sweep: list[str] = field(default_factory=list)
    write_seconds: float = 0.0  # one write, measured before the torture
    max_delay: float = 0.0
    seconds: float = 0.0

    @property
    def torn(self) -> int:
        return self.kills - self.outcomes["complete"]


def _torture_child(
    target: str, *, first: int, staging: str, durability: str, size: int, ready: int
) -> None:
    """The writer: forked, it never returns (it is killed, or _exit()s on error)."""
    code = 3
    try:
        posix.use_tmpfile = staging == "tmpfile"
        version = first
        os.write(ready, b"s")
        os.close(ready)
        while True:
            crashsafe.atomic_write(target, payload(version, size), durability=durability)  # type: ignore[arg-type]
            version += 1
    except BaseException:
        code = 4
    finally:
        os._exit(code)


def kill9_torture(
    directory: str | os.PathLike[str],
    *,
    kills: int,
    staging: str,
    durability: str = "durable",
    size: int = 1 << 20,
    seed: int = 0,
) -> TortureResult:
    """Overwrite ``directory/target`` in a forked writer and SIGKILL it *kills* times.

    The writer loops over ever newer versions; each kill lands after a delay
    drawn uniformly from zero to three times the duration of one write, so the
    kills fall in every phase of the write in proportion to its duration. After
    every kill the target must hold one complete version, never an older one
    than seen before. At the end, :func:`crashsafe.sweep` runs once; what it
    removed and what it left are reported, not asserted (the caller asserts).
    """
    rng = random.Random(seed)
    directory = Path(directory)
    target = directory / "target"
    result = TortureResult()
    durable_put(target, payload(1, size))
    last = 1
    # Calibrate: one write in this process, on this filesystem, this staging path.
    saved = posix.use_tmpfile
    posix.use_tmpfile = staging == "tmpfile"
    try:
        started = time.perf_counter()
        for _ in range(3):
            last += 1
            crashsafe.atomic_write(target, payload(last, size), durability=durability)  # type: ignore[arg-type]
        result.write_seconds = (time.perf_counter() - started) / 3
    finally:
        posix.use_tmpfile = saved
    result.max_delay = 3 * result.write_seconds + 0.001
    began = time.perf_counter()
    for _ in range(kills):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            os.close(read_end)
            _torture_child(
                str(target),
                first=last + 1,
                staging=staging,
                durability=durability,
                size=size,
                ready=write_end,
            )
        os.close(write_end)
        try:
            started_ok = os.read(read_end, 1) == b"s"
            if started_ok:
                time.sleep(rng.uniform(0, result.max_delay))
            os.kill(pid, signal.SIGKILL)
        finally:
            os.close(read_end)
            _, status = os.waitpid(pid, 0)
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            raise AssertionError(f"the writer died on its own (wait status {status:#x})")
        result.kills += 1
        found = classify(read_or_none(target))
        if isinstance(found, int):
            if found < last:
                result.outcomes[f"older (v{found} after v{last})"] += 1
            else:
                result.outcomes["complete"] += 1
                result.changed += found > last
                last = found
        else:
            result.outcomes[found] += 1
    result.seconds = time.perf_counter() - began
    result.orphans_before_sweep = len(leftovers(directory))
    result.swept = len(crashsafe.sweep(directory))
    result.left_after_sweep = leftovers(directory)
    return result


# --------------------------------------------------------------------------- power cut

# XFS_IOC_GOINGDOWN, the same number as EXT4_IOC_SHUTDOWN; flag 2 is NOLOGFLUSH
# (XFS_FSOP_GOING_FLAGS_NOLOGFLUSH, EXT4_GOING_FLAGS_NOLOGFLUSH): the
# filesystem stops all I/O at once, its page cache and uncommitted journal lost.
SHUTDOWN_IOCTL = 0x8004587D
NOLOGFLUSH = 2
MODES = ("commit", "cut")  # fsync an unrelated file before the cut, or not
UNRELATED = ".crash-harness-unrelated"

# Prepended to every writer program: it calls start() right before the
# operation under test and end() right after it returned. The markers are
# access() calls on names that exist nowhere, recognised in the trace.
PRELUDE = """\
import os, sys
def start(): os.access("/.crashsafe-harness-start", os.F_OK)
def end(): os.access("/.crashsafe-harness-end", os.F_OK)
"""
_START, _END = "/.crashsafe-harness-start", "/.crashsafe-harness-end"
_LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(.*)$")
_STOPPED = "--- stopped by SIGSTOP ---"
_STRINGS = re.compile(r'"((?:[^"\\]|\\.)*)"')
_WRITEBACK = {
    "/proc/sys/vm/dirty_writeback_centisecs": "0",
    "/proc/sys/vm/dirty_expire_centisecs": "360000",
}


@dataclass(frozen=True)
class Syscall:
    """One syscall of the writer after its start marker."""

    index: int  # 0 is the start marker itself
    name: str
    nth: int  # calls of *name* by the process up to and including this one: when=
    args: str
    result: str

    def strings(self) -> list[str]:
        return _STRINGS.findall(self.args)

    def __str__(self) -> str:
        args = self.args if len(self.args) < 90 else self.args[:87] + "..."
        return f"#{self.index} {self.name}({args}) = {self.result}"


@dataclass
class Trial:
    point: Syscall
    mode: str
    outcome: Any  # what the caller's inspect() returned
    leftovers: list[str]  # crashsafe temporary names found after the remount
    swept: int  # how many of them sweep() removed
    left_after_sweep: list[str]


@dataclass
class PowerCutRun:
    trace: list[Syscall]  # start marker .. end marker, both included
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0
    drifts: int = 0  # attempts that froze elsewhere than aimed and were retried

    @property
    def end(self) -> int:
        """Index of the end marker: crash points from here on are after return."""
        return self.trace[-1].index


def _parse(text: str) -> tuple[list[Syscall], bool]:
    """The syscalls from the start marker to the end marker (or to the freeze),
    and whether the trace ends frozen."""
    counts: Counter[str] = Counter()
    out: list[Syscall] = []
    tracee: str | None = None
    ended = False
    for line in text.splitlines():
        if tracee is None:
            tracee = line.split(None, 1)[0]
        if not line.startswith(tracee + " "):
            continue  # another process (a child of the writer): not counted
        if _STOPPED in line:
            return out, True
        m = _LINE.match(line)
        if m is None or ended:
            continue  # signals, exits; the writer is single-threaded, no "resumed"
        name, args = m[2], m[3]
        counts[name] += 1
        if not out and _START not in args:
            continue
        out.append(Syscall(len(out), name, counts[name], args, m[4]))
        ended = _END in args
    return out, False


def _tracee_pid(text: str) -> int | None:
    first = text.split(None, 1)
    return int(first[0]) if first and first[0].isdigit() else None


class _Strace:
    """strace running the writer, in a process group of its own."""

    def __init__(self, workdir: Path, script: str, args: Sequence[str], inject: Syscall | None):
        self.out = workdir / "trace.txt"
        self.out.unlink(missing_ok=True)
        self.log = workdir / "stderr.txt"
        src = str(Path(crashsafe.__file__).resolve().parents[1])
        cmd = ["strace", "-f", "-qq", "-y", "-o", str(self.out)]
        if inject is not None:
            cmd += ["-e", f"inject={inject.name}:signal=STOP:when={inject.nth}"]
        # -S: no site (no .pth files, no coverage hooks); -B: never write .pyc,
        # so that every run makes the same syscalls before the start marker.
        cmd += ["--", sys.executable, "-S", "-B", "-c", PRELUDE + script, *args]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": src}
        env |= {"PYTHONHASHSEED": "0", "LC_ALL": "C.UTF-8"}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd="/",
                start_new_session=True,
            )

    def text(self) -> str:
        try:
            return self.out.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_frozen(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if _STOPPED in text:
                return text
            if self.proc.poll() is not None:
                raise AssertionError(
                    "the writer ended without freezing; stderr:\n"
                    + self.log.read_text(errors="replace")[-2000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError("the writer did not freeze in time")
            time.sleep(0.002)

    def finish(self, timeout: float = 60.0) -> str:
        rc = self.proc.wait(timeout)
        if rc != 0:
            raise AssertionError(
                f"the writer failed ({rc}):\n" + self.log.read_text(errors="replace")[-2000:]
            )
        return self.text()

    def kill(self) -> None:
        """SIGKILL the tracee (strace reaps it and exits), then the group."""
        if self.proc.poll() is None:
            pid = _tracee_pid(self.text())
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            if pid is not None:
                # Reparented if strace died first; init reaps it. The mount
                # must not be busy with its descriptors when we unmount.
                deadline = time.monotonic() + 10
                while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                    time.sleep(0.005)


@contextlib.contextmanager
def writeback_off() -> Iterator[None]:
    """No background writeback while the power-cut runs; restored afterwards."""
    saved = {path: Path(path).read_text().strip() for path in _WRITEBACK}
    try:
        for path, value in _WRITEBACK.items():
            Path(path).write_text(value)
        yield
    finally:
        for path, value in saved.items():
            Path(path).write_text(value)


def shutdown(mnt: str | os.PathLike[str]) -> None:
    """Cut the power of the filesystem at *mnt*: no more I/O, the journal not flushed."""
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, SHUTDOWN_IOCTL, struct.pack("I", NOLOGFLUSH))
    finally:
        os.close(fd)


def _commit_journal(mnt: Path) -> None:
    """What any other process might do: write and fsync a file of its own."""
    fd = os.open(mnt / UNRELATED, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, os.urandom(4096), 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def require_power_cut() -> None:
    require_root()
    require_tools("strace", "mkfs.xfs", "mkfs.ext4")


def record(script: str, args: Sequence[str]) -> list[Syscall]:
    """Run the writer once under strace, unfrozen; its syscalls from start to end."""
    with tempfile.TemporaryDirectory(prefix="crashsafe-trace-") as work:
        tracer = _Strace(Path(work), script, args, None)
        try:
            trace, _ = _parse(tracer.finish())
        finally:
            tracer.kill()
    if not trace or _END not in trace[-1].args:
        raise AssertionError("the writer never reached start() and end()")
    return trace


DRIFT_ATTEMPTS = 3


def power_cut_every_syscall(
    mnt: Path,
    script: str,
    args: Sequence[str],
    *,
    prepare: Callable[[], None],
    inspect: Callable[[], Any],
    sweep_dir: Path | None = None,
    modes: Sequence[str] = MODES,
) -> PowerCutRun:
    """Cut the power of *mnt* right after each syscall the writer makes from its
    start marker to its end marker, in each of *modes*.

    *script* is Python source run with :data:`PRELUDE` before it and *args* as
    ``sys.argv[1:]``; it must call ``start()`` and ``end()``. *prepare* puts the
    old state in place, durably, before every run. After the cut and the
    remount, *inspect* returns the outcome of the trial; then the crashsafe
    temporary files in *sweep_dir* are counted and :func:`crashsafe.sweep` runs
    there. Must run inside :func:`writeback_off`.
    """
    began = time.perf_counter()
    fd = os.open(mnt / UNRELATED, os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    prepare()
    run = PowerCutRun(record(script, args))
    with tempfile.TemporaryDirectory(prefix="crashsafe-trace-") as work:
        for point in run.trace:
            for mode in modes:
                for attempt in range(1, DRIFT_ATTEMPTS + 1):
                    prepare()
                    tracer = _Strace(Path(work), script, args, point)
                    try:
                        frozen, stopped = _parse(tracer.wait_frozen())
                        last = frozen[-1] if frozen else None
                        aimed = (point.index, point.name, point.nth)
                        if stopped and last and (last.index, last.name, last.nth) == aimed:
                            if mode == "commit":
                                _commit_journal(mnt)
                            shutdown(mnt)
                            break
                    finally:
                        tracer.kill()
                    # Froze elsewhere: nothing was cut, so trying again hides no
                    # outcome. Start-up can differ by a stat or two when another
                    # process rewrites bytecode caches meanwhile.
                    run.drifts += 1
                    if attempt == DRIFT_ATTEMPTS:
                        got = last or "nothing after the start marker"
                        raise AssertionError(f"aimed at {point}, froze after {got}")
                mounts.cycle(mnt)
                outcome = inspect()
                found, swept, left = [], 0, []
                if sweep_dir is not None:
                    found = leftovers(sweep_dir)
                    swept = len(crashsafe.sweep(sweep_dir))
                    left = leftovers(sweep_dir)
                run.trials.append(Trial(point, mode, outcome, found, swept, left))
    run.seconds = time.perf_counter() - began
    return run


# --------------------------------------------------------------------------- reading a trace


def commit_index(trace: Sequence[Syscall], target_name: str) -> int | None:
    """The first rename or link that makes *target_name* the new file."""
    for s in trace:
        if s.name in ("rename", "renameat", "renameat2", "link", "linkat") and s.result == "0":
            strings = s.strings()
            if strings and os.path.basename(strings[-1]) == target_name:
                return s.index
    return None


def dir_sync_index(trace: Sequence[Syscall], directory: str, after: int) -> int | None:
    """The first fsync of *directory* (by its descriptor) at or after index *after*."""
    pattern = re.compile(rf"^\d+<{re.escape(directory)}>$")
    for s in trace[after:]:
        if s.name in ("fsync", "fdatasync") and pattern.match(s.args) and s.result == "0":
            return s.index
    return None
