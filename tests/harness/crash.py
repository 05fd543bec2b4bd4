"""Crash machinery: kill -9 torture and a power cut right after every syscall.

Two runners, reusable by every write path (atomic_write, atomic_copy,
transactions):

* :func:`kill9_loop` forks a writer (any function: atomic_write, atomic_copy,
  a transaction, a deliberately broken writer) that writes ever newer
  versions, and SIGKILLs it right after one of its syscalls, over and over,
  checking the target after every kill: the kills cycle through every call of
  two recorded writes that touches the directory, so where they land (before,
  on and after the commit) does not depend on timing or on the machine's
  load. :func:`kill9_torture` is that loop for atomic_write of 1 MiB payloads.

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

The worst case is made deterministic as docs/proving.md describes: background
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
import re
import select
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

import coverage

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

# How a kill lands at a deterministic point (measured with strace 6.1, kernel
# 6.x): the writer is forked from the test process (so *write* may be any
# callable, and the forked writer starts with everything the parent loaded),
# writes a "ready" byte to a pipe and then spins in a wait loop of
# access(WAIT_MARK) and a 1 ms select() on another pipe. Only then does strace
# attach to it (``-p``) with ``inject=NAME:signal=STOP:when=K`` (started
# earlier, strace could count a call the child makes right after the fork:
# seen once under load, a close() that moved every later close by one); once
# strace has printed the wait marker, it traces every syscall of the writer,
# and only then does the test write the byte that ends the wait; the writer
# marks that with access(GO_MARK). From there the counter of ``when=`` (per
# syscall name and per tracee, counted from the attach; the wait loop's names
# are never aimed at) sees exactly the writer's calls of NAME, so the writer is
# stopped right after its K-th call of NAME returned (SIGSTOP is delivered on
# the way back to user space: the call completed, nothing after it ran), and
# then SIGKILLed. No timing decides where a kill lands, however busy the
# machine. ``signal=KILL`` would be shorter but is not the same: a SIGKILL
# queued at syscall entry makes a write of a regular file return before it
# copies a byte (measured: the K-th write wrote nothing), so it would kill
# *before* the call, at some calls and not at others.
#
# The crash points come from one recording: the same fork and handshake, the
# writer making RECORDED_WRITES writes under plain strace, each write followed
# by access(DONE_MARK). Every call of those writes that names the directory
# under test (a path in it, or a descriptor of it or of a file in it: ``-y``)
# is a crash point (name, K). The kills cycle through the points in trace
# order, so they land before the first commit, on the commit (the rename or
# link), after it, between two writes and in the second write, whatever the
# machine's load. Points of calls the writer makes many times (the writes of
# a big file, a validator's reads) are thinned evenly when there are more
# points than kills; every call of a name made few times is kept.

WAIT_MARK = "/.crashsafe-harness-wait"
GO_MARK = "/.crashsafe-harness-go"
DONE_MARK = "/.crashsafe-harness-write-done"
RECORDED_WRITES = 2
# A trial's writer stops after this many writes if no kill came: the point it
# aimed at was never reached, which fails the run instead of hanging it.
_MAX_WRITES = RECORDED_WRITES + 4
_CALL_LINE = re.compile(r"^(\w+)\((.*)$")
_STOP_SEEN = "--- stopped by SIGSTOP ---"


@dataclass(frozen=True)
class KillPoint:
    """A crash point of :func:`kill9_loop`: right after the writer's *nth* call of *name*."""

    name: str
    nth: int  # calls of *name* since strace attached, this one included: when=
    write: int  # which write of the recording (1, 2, ...) the call belongs to
    call: str  # the recorded call, for messages

    def __str__(self) -> str:
        call = self.call if len(self.call) < 100 else self.call[:97] + "..."
        return f"{self.name}#{self.nth} (write {self.write}: {call})"


@dataclass
class TortureResult:
    kills: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # "complete" or what was wrong
    changed: int = 0  # kills after which the target held a newer version than before
    orphans_before_sweep: int = 0
    swept: int = 0
    left_after_sweep: list[str] = field(default_factory=list)
    points: list[KillPoint] = field(default_factory=list)  # the recorded crash points
    aimed: list[KillPoint] = field(default_factory=list)  # the point of every kill, in order
    firsts: list[int] = field(default_factory=list)  # the version each killed writer began with
    found: list[int | str] = field(default_factory=list)  # what check() said after each kill
    seconds: float = 0.0
    returned: Any = None  # kill9_loop: what the last warm-up write returned

    @property
    def torn(self) -> int:
        return self.kills - self.outcomes["complete"]

    def returned_then_lost(self) -> list[str]:
        """Kills aimed at a later write whose check found an older version than the
        writer's first: that write had returned before the kill, so it must be
        there (for writers whose versions only grow and that make the recorded
        calls in every write: a kill aimed at write w >= 2 lands after write w-1
        returned)."""
        return [
            f"after {p}: {f}, but v{first} had returned"
            for p, first, f in zip(self.aimed, self.firsts, self.found, strict=True)
            if p.write > 1 and not (isinstance(f, int) and f >= first)
        ]

    def plan(self) -> str:
        """The kills per syscall name, and how many distinct points they covered."""
        names = Counter(p.name for p in self.aimed)
        return (
            f"{len(set(self.aimed))} of {len(self.points)} crash points "
            + "("
            + " ".join(f"{n}:{c}" for n, c in sorted(names.items()))
            + ")"
        )


def _kill_child(
    write: Callable[[int], object],
    *,
    first: int,
    staging: str,
    ready: int,
    go: int,
    writes: int,
) -> None:
    """The forked writer: says it is ready, waits for the tracer, then writes versions
    ``first, first + 1...``.

    It never returns: it is killed, or it ``_exit()``\\ s (0 after *writes* writes,
    4 on an exception). Between its ready byte and the go byte it makes no
    call but the wait loop's: strace attaches in that interval, and any other
    call would count towards ``when=``."""
    code = 4
    try:
        posix.use_tmpfile = staging == "tmpfile"
        if (cov := coverage.Coverage.current()) is not None:
            cov.stop()  # the tracer the fork inherited: a killed writer saves no data anyway
        os.write(ready, b"r")
        while True:
            os.access(WAIT_MARK, os.F_OK)
            if select.select([go], [], [], 0.001)[0]:
                break
        os.access(GO_MARK, os.F_OK)
        for version in range(first, first + writes):
            write(version)
            os.access(DONE_MARK, os.F_OK)
        code = 0
    finally:
        os._exit(code)


class _Attached:
    """One forked writer with strace attached to it (``-p``), the handshake done.

    strace writes its trace to a pipe read here (no polling: a read blocks
    until strace has printed what is waited for) and runs in a process group
    of its own; :meth:`close` kills the writer (if alive), reaps it, and waits
    for strace (killing its group if it hangs).
    """

    def __init__(
        self,
        write: Callable[[int], object],
        *,
        first: int,
        staging: str,
        writes: int,
        inject: KillPoint | None,
        marker: str | None,
    ) -> None:
        self.trace = b""
        self.status: int | None = None
        self.tracer: subprocess.Popen[bytes] | None = None
        ready_read, ready_write = os.pipe()
        go_read, go_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            _kill_child(
                write, first=first, staging=staging, ready=ready_write, go=go_read, writes=writes
            )
        os.close(go_read)
        os.close(ready_write)
        self.pid = pid
        try:
            # strace starts only once the writer is in its wait loop (see _kill_child).
            if os.read(ready_read, 1) != b"r":
                raise AssertionError("the forked writer failed before its wait loop")
            cmd = ["strace", "-qq"]
            if inject is None:
                cmd += ["-y"]  # the recording: descriptors shown with their paths
            else:
                # Trace only the aimed name (injection needs it traced) and the
                # markers': the trial's trace stays short.
                cmd += ["-e", f"trace={inject.name},{marker}"]
                cmd += ["-e", f"inject={inject.name}:signal=STOP:when={inject.nth}"]
            self.tracer = subprocess.Popen(
                [*cmd, "-p", str(pid)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,  # the trace, and strace's own errors
                start_new_session=True,
            )
            if not self._read_until(WAIT_MARK.encode()):
                raise AssertionError("strace did not attach:\n" + self.text()[-2000:])
            os.write(go_write, b"g")
        except BaseException:
            self.close()
            raise
        finally:
            os.close(go_write)
            os.close(ready_read)

    def text(self) -> str:
        return self.trace.decode(errors="replace")

    def _read_until(self, seen: bytes | None, timeout: float = 120) -> bool:
        """Read the trace until it holds *seen* (True) or ends (False: strace
        exited, as it does once the writer is gone). The deadline only turns a
        hang into a failure: no trial comes near it."""
        assert self.tracer is not None and self.tracer.stderr is not None
        fd = self.tracer.stderr.fileno()
        deadline = time.monotonic() + timeout
        while seen is None or seen not in self.trace:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"strace said nothing for {timeout} s:\n{self.text()[-2000:]}")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return False
            self.trace += chunk
        return True

    def _reap(self, flags: int) -> bool:
        if self.status is None:
            pid, status = os.waitpid(self.pid, flags)
            if pid:
                self.status = status
        return self.status is not None

    def stopped(self) -> bool:
        """True once the injected SIGSTOP holds the writer, False if it exited first."""
        return self._read_until(_STOP_SEEN.encode())

    def finish(self) -> int:
        """Wait for the writer to exit on its own (all the trace read); its exit status."""
        self._read_until(None)
        self._reap(0)
        assert self.status is not None
        return self.status

    def close(self) -> None:
        if not self._reap(os.WNOHANG):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._reap(0)
        if self.tracer is not None:
            with contextlib.suppress(AssertionError):
                self._read_until(None, timeout=30)  # the rest of the trace, to its end
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.tracer.wait(30)
            if self.tracer.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.tracer.pid, signal.SIGKILL)
                self.tracer.wait()
            assert self.tracer.stderr is not None
            self.tracer.stderr.close()


def _record_points(
    write: Callable[[int], object],
    *,
    first: int,
    staging: str,
    watch: Path,
) -> tuple[list[KillPoint], str]:
    """Run RECORDED_WRITES writes under strace; the crash points, and the name of
    the wait marker's syscall (``access`` on x86-64)."""
    run = _Attached(
        write, first=first, staging=staging, writes=RECORDED_WRITES, inject=None, marker=None
    )
    try:
        status = run.finish()
    finally:
        run.close()
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        raise AssertionError(f"the recorded writer failed (wait status {status:#x})")
    counts: Counter[str] = Counter()
    calls: list[tuple[str, int, int, str]] = []  # name, nth, write, call
    waiting: set[str] = set()  # names called before the go marker
    marker = None
    write_no = 0  # 0: still in the wait loop
    for line in run.text().splitlines():
        m = _CALL_LINE.match(line)
        if m is None:
            continue
        name, rest = m[1], m[2]
        counts[name] += 1
        if write_no == 0:
            waiting.add(name)
            if GO_MARK in rest:
                marker, write_no = name, 1
        elif DONE_MARK in rest:
            write_no += 1
        elif write_no <= RECORDED_WRITES:
            calls.append((name, counts[name], write_no, line))
    if marker is None or write_no != RECORDED_WRITES + 1:
        raise AssertionError("the recording did not show the go marker and every write")
    # The wait loop's calls (and so the counts of their names) depend on
    # timing: no crash point on those names.
    under = str(watch)
    points = [
        KillPoint(name, nth, w, call)
        for name, nth, w, call in calls
        if name not in waiting and under in call
    ]
    if not points:
        raise AssertionError(f"the recorded writes made no call that touches {watch}")
    return points, marker


def _choose(points: list[KillPoint], kills: int) -> list[KillPoint]:
    """*kills* points, in trace order, cycling when there are fewer points than kills.

    With more points than kills: every call of a name the recorded writes make
    at most twice per write is kept (opens, renames, links, fsyncs, unlinks),
    the rest (the many reads and writes of data) are thinned evenly."""
    if len(points) <= kills:
        return [points[i % len(points)] for i in range(kills)]
    per_name = Counter(p.name for p in points)
    rare = [p for p in points if per_name[p.name] <= 2 * RECORDED_WRITES]
    if len(rare) >= kills:
        chosen = {rare[i * len(rare) // kills] for i in range(kills)}
    else:
        bulk = [p for p in points if per_name[p.name] > 2 * RECORDED_WRITES]
        room = kills - len(rare)
        chosen = set(rare) | {bulk[i * len(bulk) // room] for i in range(room)}
    return [p for p in points if p in chosen]


def _kill_at(
    write: Callable[[int], object],
    point: KillPoint,
    *,
    first: int,
    staging: str,
    marker: str,
) -> None:
    """One trial: the writer stopped right after *point*, then SIGKILLed and reaped."""
    run = _Attached(
        write, first=first, staging=staging, writes=_MAX_WRITES, inject=point, marker=marker
    )
    try:
        stopped = run.stopped()
        if stopped:
            os.kill(run.pid, signal.SIGKILL)
    finally:
        run.close()
    if not stopped:
        raise AssertionError(
            f"aimed at {point}: the writer exited first (wait status {run.status:#x}); "
            "it makes fewer such calls than the recording showed"
        )
    status = run.status
    assert status is not None
    if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
        raise AssertionError(f"the writer died on its own (wait status {status:#x})")
    # The kill landed where it was aimed: right after the nth call of the name.
    text = run.text()
    after_go = [m[1] for m in map(_CALL_LINE.match, text.partition(GO_MARK)[2].splitlines()) if m]
    if after_go.count(point.name) != point.nth or after_go[-1:] != [point.name]:
        raise AssertionError(f"aimed at {point}, the trace shows:\n{text[-1500:]}")


def kill9_loop(
    directory: str | os.PathLike[str],
    *,
    kills: int,
    write: Callable[[int], object],
    check: Callable[[], int | str],
    staging: str,
    ordered: bool = True,
    min_age: float = 0.0,
    watch: str | os.PathLike[str] | None = None,
) -> TortureResult:
    """SIGKILL a forked ``write`` loop *kills* times, each time right after a chosen syscall.

    *write(n)* makes version *n* the target's content (through the code under
    test, or a deliberately broken writer); the forked child calls it for
    ``n = last + 1, last + 2, ...`` until it is killed. *check()* names what
    the target holds: an int for a complete version, or a str saying what is
    wrong with it (each distinct str is one outcome, so keep them categories).
    With *ordered*, versions only grow and a smaller one after a kill is
    reported as ``"older"``; without, a version is an identity (for example
    ``n % 3``, the pre-built file that ``write(n)`` copies) and only its
    being complete is checked; then "changed" counts kills after which the
    target differs from what it held before.

    *check()* must name a complete version before the run. Three calls of
    *write* in this process (the staging path set by *staging*) warm it up
    (lazy imports and loads happen here, not in the forked writers), and what
    the last returned is kept in ``returned``; the target must then hold a
    complete version, or *write* is no writer at all. One recorded run gives
    the crash points: every syscall of two writes that touches *watch*
    (default: *directory*); the kills cycle through them (see the comment
    above :data:`WAIT_MARK`), so where each kill lands, and so every count in
    the result, is the same on every run, however busy the machine. At the
    end :func:`crashsafe.sweep` runs once on *directory* with *min_age*; what
    it removed and what it left are reported, not asserted.
    """
    require_tools("strace")
    directory = Path(directory)
    result = TortureResult()
    found = check()
    if not isinstance(found, int):
        raise AssertionError(f"the target holds no complete version before the run: {found}")
    saved = posix.use_tmpfile
    posix.use_tmpfile = staging == "tmpfile"
    try:
        for n in range(found + 1, found + 4):
            result.returned = write(n)
    finally:
        posix.use_tmpfile = saved
    last = check()
    if not isinstance(last, int):
        raise AssertionError(f"write() ran to its end and left no complete version: {last}")
    began = time.perf_counter()
    result.points, marker = _record_points(
        write, first=last + 1, staging=staging, watch=Path(watch or directory)
    )
    # The recording changed the target: its last write is the new "last".
    last = check()
    if not isinstance(last, int):
        raise AssertionError(f"the recorded writes left no complete version: {last}")
    for point in _choose(result.points, kills):
        _kill_at(write, point, first=last + 1, staging=staging, marker=marker)
        result.kills += 1
        result.aimed.append(point)
        result.firsts.append(last + 1)
        found = check()
        result.found.append(found)
        if not isinstance(found, int):
            result.outcomes[found] += 1
        elif ordered and found < last:
            result.outcomes[f"older (v{found} after v{last})"] += 1
        else:
            result.outcomes["complete"] += 1
            result.changed += found > last if ordered else found != last
            last = found
    result.seconds = time.perf_counter() - began
    result.orphans_before_sweep = len(leftovers(directory))
    result.swept = len(crashsafe.sweep(directory, min_age=min_age))
    result.left_after_sweep = leftovers(directory)
    return result


def kill9_torture(
    directory: str | os.PathLike[str],
    *,
    kills: int,
    staging: str,
    durability: str = "durable",
    size: int = 1 << 20,
) -> TortureResult:
    """Overwrite ``directory/target`` with :func:`crashsafe.atomic_write` in a forked
    writer and SIGKILL it *kills* times, with :func:`kill9_loop`: right after
    each syscall of the writer that touches *directory*, in turn.

    After every kill the target must hold one complete version, never an
    older one than seen before. At the end, :func:`crashsafe.sweep` runs once;
    what it removed and what it left are reported, not asserted (the caller
    asserts).
    """
    directory = Path(directory)
    target = directory / "target"
    durable_put(target, payload(1, size))

    def write(version: int) -> None:
        crashsafe.atomic_write(target, payload(version, size), durability=durability)  # type: ignore[arg-type]

    return kill9_loop(
        directory,
        kills=kills,
        write=write,
        check=lambda: classify(read_or_none(target)),
        staging=staging,
    )


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
# statx now, not at the writer's second write (no warm-up): loading it imports
# ctypes, dozens of syscalls on the root filesystem, where a cut of the test
# mount changes nothing.
os.environ.setdefault("CRASHSAFE_NATIVE", "statx,_signal")
from crashsafe._platform import _native
_native.probe()
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


def violations(
    run: PowerCutRun, commit: int, durable_from: int | None, *, good: Sequence[str] = ("old", "new")
) -> list[tuple[str, str, str]]:
    """Trials that break the contract, for an *inspect* that returns "old", "new" or
    what else it found: anything but *good* at any point, "new" before the
    *commit* index, "old" from the index *durable_from* on (None: not checked).
    Returns (why, mode, crash point) for each."""
    bad = []
    for t in run.trials:
        i = t.point.index
        if t.outcome not in good:
            why = f"{t.outcome} target"
        elif i < commit and t.outcome != "old":
            why = "new before the commit point"
        elif durable_from is not None and i >= durable_from and t.outcome != "new":
            why = "old after the directory fsync returned" if i < run.end else "old after return"
        else:
            continue
        bad.append((why, t.mode, str(t.point)))
    return bad


def copy_method(trace: Sequence[Syscall]) -> str:
    """How a traced copy moved its data: "reflink" (a FICLONE ioctl that returned
    0), else the first data-moving syscall that copied bytes, else "none"."""
    for s in trace:
        if s.name == "ioctl" and "FICLONE" in s.args and s.result == "0":
            return "reflink"
    for s in trace:
        moved = s.result != "0" and not s.result.startswith("-1")
        if s.name in ("copy_file_range", "sendfile", "splice") and moved:
            return s.name
    for s in trace:
        if s.name in ("write", "pwrite64") and not s.result.startswith("-1"):
            return "read/write"
    return "none"


# --------------------------------------------------------------------------- transactions

# What every transaction crash test commits: generation g of four files (with
# their exact modes, one of them a private key) and a fifth name that holds
# generation g when g is odd and is removed when g is even, so that a removal
# belongs to every commit too. Each file's content names the file and the
# generation: a file swapped with another, a prefix or a mix of two
# generations differs from every complete one.
TX_FILES: dict[str, int] = {"a": 0o644, "b": 0o644, "c": 0o640, "key": 0o600}
TX_TOGGLE = "odd"
TX_NAMES = (*TX_FILES, TX_TOGGLE)
TX_SIZE = 16 << 10


def generation_data(generation: int, name: str, size: int = TX_SIZE) -> bytes:
    return name.encode() + b":" + payload(generation, size)


def write_generation(tx: Any, generation: int, size: int = TX_SIZE) -> None:
    """Stage generation *generation* in the open :class:`crashsafe.transactions.Transaction`."""
    for name, perm in TX_FILES.items():
        tx.write(name, generation_data(generation, name, size), perm=perm)
    if generation % 2:
        tx.write(TX_TOGGLE, generation_data(generation, TX_TOGGLE, size), perm=0o644)
    else:
        tx.remove(TX_TOGGLE)


def classify_generation(read: Callable[[str], bytes | None]) -> int | str:
    """The generation the files hold, read with *read(name)* (None: no such file),
    else what is wrong: "NAME missing/empty/partial/torn..." or "mixed (...)"."""
    found: dict[str, int | str] = {}
    for name in TX_NAMES:
        data = read(name)
        prefix = name.encode() + b":"
        if data is None:
            found[name] = "missing"
        elif not data.startswith(prefix):
            found[name] = classify(data) if not data or data.count(0) == len(data) else "torn"
        else:
            found[name] = classify(data[len(prefix) :])
    for name in TX_FILES:
        if not isinstance(found[name], int):
            return f"{name} {found[name]}"
    generations = {found[name] for name in TX_FILES}
    generation = found["a"]
    assert isinstance(generation, int)
    toggle = found[TX_TOGGLE]
    expected_toggle: int | str = generation if generation % 2 else "missing"
    if len(generations) > 1 or toggle != expected_toggle:
        return "mixed (" + " ".join(f"{n}={found[n]}" for n in TX_NAMES) + ")"
    return generation


def read_generation(directory: str | os.PathLike[str]) -> int | str:
    """:func:`classify_generation` of the files in *directory*, read directly."""
    return classify_generation(lambda name: read_or_none(Path(directory) / name))


def _put_private(path: Path, data: bytes, perm: int) -> None:
    tmp = path.with_name(f".{path.name}.harness-setup")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, perm)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def put_generation(directory: str | os.PathLike[str], generation: int) -> None:
    """Put generation *generation* in place durably, with their modes, with plain
    os calls (setup, not under test)."""
    directory = Path(directory)
    for name, perm in TX_FILES.items():
        _put_private(directory / name, generation_data(generation, name), perm)
    if generation % 2:
        _put_private(directory / TX_TOGGLE, generation_data(generation, TX_TOGGLE), 0o644)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / TX_TOGGLE)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


_TX_PROTOCOL = re.compile(r"\A\.crashsafe-(journal|tx\.\d+)\Z")


def protocol_leftovers(directory: str | os.PathLike[str]) -> list[str]:
    """The transaction protocol's own names in *directory*: the journal and staged
    files (``.crashsafe-journal``, ``.crashsafe-tx.N``); the lock file is not one."""
    return sorted(n for n in os.listdir(directory) if _TX_PROTOCOL.match(n))


def kill_every_syscall(
    script: str,
    args: Sequence[str],
    *,
    prepare: Callable[[], None],
    inspect: Callable[[], Any],
    sweep_dir: Path | None = None,
) -> PowerCutRun:
    """``kill -9`` the writer right after each syscall it makes from its start
    marker to its end marker: :func:`power_cut_every_syscall` without the power
    cut (no root, any filesystem), for the states a killed process leaves.

    The writer is frozen right after the aimed syscall returned (the same
    ``inject=NAME:signal=STOP:when=N`` and drift check), then SIGKILLed, so
    nothing after that syscall ran. *prepare* puts the old state in place
    before every run; *inspect* returns the trial's outcome (mode ``"kill"``);
    then the crashsafe temporary files in *sweep_dir* are counted and swept.
    """
    require_tools("strace")
    began = time.perf_counter()
    prepare()
    run = PowerCutRun(record(script, args))
    with tempfile.TemporaryDirectory(prefix="crashsafe-trace-") as work:
        for point in run.trace:
            for attempt in range(1, DRIFT_ATTEMPTS + 1):
                prepare()
                tracer = _Strace(Path(work), script, args, point)
                try:
                    frozen, stopped = _parse(tracer.wait_frozen())
                finally:
                    tracer.kill()
                last = frozen[-1] if frozen else None
                aimed = (point.index, point.name, point.nth)
                if stopped and last and (last.index, last.name, last.nth) == aimed:
                    break
                run.drifts += 1
                if attempt == DRIFT_ATTEMPTS:
                    got = last or "nothing after the start marker"
                    raise AssertionError(f"aimed at {point}, froze after {got}")
            outcome = inspect()
            found, swept, left = [], 0, []
            if sweep_dir is not None:
                found = leftovers(sweep_dir)
                swept = len(crashsafe.sweep(sweep_dir))
                left = leftovers(sweep_dir)
            run.trials.append(Trial(point, "kill", outcome, found, swept, left))
    run.seconds = time.perf_counter() - began
    return run


def exposed_entries(directory: str | os.PathLike[str]) -> list[str]:
    """Entries of *directory* more permissive than the final mode of the file they
    will become (known by content, or by a temporary name's stem); the journal,
    and anything unknown, must be 0o600 or less. The lock file holds no data."""
    import stat

    from crashsafe.transactions import JOURNAL, LOCK

    directory = Path(directory)
    perms = {**TX_FILES, TX_TOGGLE: 0o644, JOURNAL: 0o600}
    exposed = []
    for name in sorted(os.listdir(directory)):
        st = os.lstat(directory / name)
        if name == LOCK or name.endswith(".harness-setup") or not stat.S_ISREG(st.st_mode):
            continue
        data = read_or_none(directory / name) or b""
        owner = next((n for n in TX_NAMES if data.startswith(n.encode() + b":")), None)
        if owner is None:
            owner = next((n for n in perms if name == n or name.startswith(f".{n}.")), None)
        allowed = perms.get(owner, 0o600) if owner is not None else 0o600
        if stat.S_IMODE(st.st_mode) & ~allowed:
            exposed.append(f"{name} {stat.S_IMODE(st.st_mode):o} (for {owner}: {allowed:o})")
    return exposed


@dataclass(frozen=True)
class TxState:
    """A transactional directory after a crash: before and after :func:`recover`."""

    before: int | str  # read_generation() of the files as a crash left them
    journal: bool  # a journal was there (the commit point was passed)
    staged: tuple[str, ...]  # .crashsafe-tx.N names that were there
    staged_generations: tuple[int | str, ...]  # what they held
    exposed: tuple[str, ...]  # exposed_entries() before recovery
    recovered: bool  # what recover() returned
    after: int | str  # read_generation() after recovery
    left: tuple[str, ...]  # protocol_leftovers() after recovery

    @property
    def recovery(self) -> str:
        """How recovery had to act: ``forward`` (a journal: the commit is completed),
        ``back`` (staged files without a journal: they are removed) or ``none``."""
        return "forward" if self.journal else "back" if self.staged else "none"

    def problems(self) -> list[str]:
        """What breaks the contract in this state; empty when all is well."""
        bad = []
        if not isinstance(self.after, int):
            bad.append(f"after recovery: {self.after}")
        if self.recovered != (self.recovery != "none"):
            bad.append(f"recover() returned {self.recovered} for a {self.recovery} recovery")
        if self.left:
            bad.append(f"protocol names left after recovery: {list(self.left)}")
        if self.exposed:
            bad.append(f"more permissive than final: {list(self.exposed)}")
        complete = [g for g in self.staged_generations if isinstance(g, int)]
        if len(complete) != len(self.staged_generations):
            bad.append(f"a staged file is not complete: {self.staged_generations}")
        if self.recovery == "back" and self.after != self.before:
            bad.append(f"rolled back from {self.before} to {self.after}")
        if self.recovery == "forward" and complete and self.after != max(complete):
            bad.append(f"rolled forward to {self.after}, staged {complete}")
        return bad


def _staged_generation(data: bytes | None) -> int | str:
    for name in TX_NAMES:
        prefix = name.encode() + b":"
        if data is not None and data.startswith(prefix):
            return classify(data[len(prefix) :])
    return classify(data)


def inspect_transaction(directory: str | os.PathLike[str]) -> TxState:
    """Look at *directory* as a crash left it, run :func:`recover` on it, look again."""
    from crashsafe.transactions import JOURNAL, recover

    directory = Path(directory)
    staged = tuple(n for n in protocol_leftovers(directory) if n != JOURNAL)
    state = {
        "before": read_generation(directory),
        "journal": os.path.lexists(directory / JOURNAL),
        "staged": staged,
        "staged_generations": tuple(
            _staged_generation(read_or_none(directory / n)) for n in staged
        ),
        "exposed": tuple(exposed_entries(directory)),
    }
    recovered = recover(directory)
    return TxState(
        **state,
        recovered=recovered,
        after=read_generation(directory),
        left=tuple(protocol_leftovers(directory)),
    )


# Commits one generation of the files in TX_FILES (and removes or writes
# TX_TOGGLE) with crashsafe.transaction, between the markers; the contents
# come from files in a source directory, read before the start marker.
TX_WRITER = """
import fcntl, json
import crashsafe._platform._posix as posix
from crashsafe.transactions import transaction
directory, source, staging, durability, plan = sys.argv[1:6]
posix.use_tmpfile = staging == "tmpfile"
plan = json.loads(plan)
data = {}
for name, perm in plan:
    if perm is not None:
        with open(os.path.join(source, name), "rb") as f:
            data[name] = f.read()
start()
with transaction(directory, durability=durability) as tx:
    for name, perm in plan:
        if perm is None:
            tx.remove(name)
        else:
            tx.write(name, data[name], perm=perm)
end()
"""

# Deliberately broken: the same files, each one replaced on its own with
# crashsafe.atomic_write (each write crash-safe, the set not), no journal.
TX_BROKEN_WRITER = """
import fcntl, json
import crashsafe
import crashsafe._platform._posix as posix
directory, source, staging, durability, plan = sys.argv[1:6]
posix.use_tmpfile = staging == "tmpfile"
plan = json.loads(plan)
data = {}
for name, perm in plan:
    if perm is not None:
        with open(os.path.join(source, name), "rb") as f:
            data[name] = f.read()
start()
for name, perm in plan:
    path = os.path.join(directory, name)
    if perm is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    else:
        crashsafe.atomic_write(path, data[name], perm=perm, durability=durability)
end()
"""


def tx_writer_args(
    directory: str | os.PathLike[str],
    source: str | os.PathLike[str],
    generation: int,
    *,
    staging: str,
    durability: str = "durable",
) -> list[str]:
    """Arguments for :data:`TX_WRITER` that commit *generation*; its contents are
    written to the *source* directory (outside the filesystem under test)."""
    import json

    source = Path(source)
    source.mkdir(parents=True, exist_ok=True)
    plan: list[tuple[str, int | None]] = list(TX_FILES.items())
    plan.append((TX_TOGGLE, 0o644 if generation % 2 else None))
    for name, perm in plan:
        if perm is not None:
            (source / name).write_bytes(generation_data(generation, name))
    return [os.fspath(directory), os.fspath(source), staging, durability, json.dumps(plan)]


def prepare_generation(directory: str | os.PathLike[str], generation: int) -> None:
    """Empty *directory* of everything but the files, then put *generation* in place."""
    directory = Path(directory)
    for name in os.listdir(directory):
        if name not in TX_NAMES:
            os.unlink(directory / name)
    put_generation(directory, generation)


def describe(fs: str, label: str, run: PowerCutRun, marks: str) -> str:
    """One line summing up a power-cut run, for the figures the tests print."""
    outcomes = Counter(f"{t.mode}:{t.outcome}" for t in run.trials)
    found = sum(len(t.leftovers) for t in run.trials)
    swept = sum(t.swept for t in run.trials)
    left = sum(len(t.left_after_sweep) for t in run.trials)
    return (
        f"power cut {fs:<20} {label:<26} {len(run.trace)} crash points x {len(MODES)} "
        f"modes = {len(run.trials)} trials ({marks}): {dict(sorted(outcomes.items()))}; "
        f"temp files after remount {found} -> swept {swept} -> left {left}; "
        f"{run.seconds:.0f} s; drifts retried {run.drifts}"
    )
