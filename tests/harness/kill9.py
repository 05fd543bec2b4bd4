"""kill -9 at chosen syscalls: a forked writer SIGKILLed right after each call, in turn.

:func:`kill9_loop` forks a writer (any function: atomic_write, atomic_copy,
a transaction, a deliberately broken writer) that writes ever newer
versions, and SIGKILLs it right after one of its syscalls, over and over,
checking the target after every kill: the kills cycle through every call of
two recorded writes that touches the directory, so where they land (before,
on and after the commit) does not depend on timing or on the machine's
load. :func:`kill9_torture` is that loop for atomic_write of 1 MiB payloads.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import coverage

import crashsafe
import crashsafe._platform._posix as posix
from tests.children import reap_group
from tests.harness.checks import leftovers
from tests.harness.payloads import classify, durable_put, payload, read_or_none
from tests.harness.require import require_tools

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
            reap_group(self.tracer, 30)
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
