"""A power cut (or a kill -9) right after every syscall of a writer program.

:func:`power_cut_every_syscall` runs a writer from ``tests/writers/`` (it
calls ``start()`` and ``end()`` of :mod:`tests.writers.markers` around the
operation under test), freezes it right after one of its syscalls, cuts the
power of the filesystem with the shutdown ioctl, kills the frozen program,
unmounts and mounts again (replaying the journal) and lets the caller's
*inspect* say what survived; then the next syscall. :func:`kill_every_syscall`
is the same without the cut (no root, any filesystem): what a killed process
leaves. Both are :func:`crash_every_syscall` with a :class:`Crash` that says
what happens once the writer is frozen; :mod:`tests.harness.forgetful_cut`
gives it the crash states of a filesystem that forgets what was not fsynced,
for the filesystems the shutdown ioctl does not reach.

How the freeze works (measured with strace 6.1): the writer starts, makes
its set-up, says "ready" and waits (a select() on its stdin, a call no
operation under test makes); only then does strace attach (``-f -p``), and
the runner lets the writer go once strace has traced it. ``-e
inject=NAME:signal=STOP:when=N`` then stops the writer when a thread's N-th
call of NAME since the attach returns: the signal is queued at syscall entry
and delivered on the way back to user space, so the call has completed and
nothing after it has run in that thread. Counting from the attach, not from
the start of the process, is what makes a small N aim at a worker thread
(Python's start-up makes hundreds of ``openat`` and ``close`` calls in the
main thread), and frees the counts from start-up, which another process
rewriting bytecode caches could change.

Two ways to choose the crash points, from one recorded run:

* every call (the default, for single-threaded writers): each syscall of the
  writer from its start marker to its end marker is one point, aimed at as
  (NAME, N) and checked to land on exactly that call (a drift is retried,
  then fails loudly);
* ``threads=True``, for writers with worker threads (write_many): the names
  of the syscalls that touch *mnt*, and for each every N from 1 to the most
  calls of it any thread made; whichever thread first reaches its N-th call
  is frozen, the runner waits until every thread is stopped (or the writer
  returned), and each trial says where the freeze landed (main thread,
  worker, after the end marker, or returned).

The worst case is made deterministic as docs/proving.md describes:
background writeback is turned off for the run (:func:`writeback_off`), and
in the ``commit`` mode an unrelated file on the same filesystem is fsynced
right before the cut, which commits the journal (the rename with it) as any
other process could at that moment. In the ``cut`` mode nothing is committed
before the cut, which is what shows a missing directory fsync.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import crashsafe
from tests.harness import mounts
from tests.harness.attach import Attached
from tests.harness.checks import leftovers
from tests.harness.require import require_root, require_tools
from tests.harness.traces import Syscall, Trace, parse

# XFS_IOC_GOINGDOWN, the same number as EXT4_IOC_SHUTDOWN; flag 2 is NOLOGFLUSH
# (XFS_FSOP_GOING_FLAGS_NOLOGFLUSH, EXT4_GOING_FLAGS_NOLOGFLUSH): the
# filesystem stops all I/O at once, its page cache and uncommitted journal lost.
SHUTDOWN_IOCTL = 0x8004587D
NOLOGFLUSH = 2
MODES = ("commit", "cut")  # fsync an unrelated file before the cut, or not
UNRELATED = ".crash-harness-unrelated"
DRIFT_ATTEMPTS = 3
WRITERS = Path(__file__).resolve().parents[1] / "writers"  # the writer programs
_WRITEBACK = {
    "/proc/sys/vm/dirty_writeback_centisecs": "0",
    "/proc/sys/vm/dirty_expire_centisecs": "360000",
}


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


def commit_journal(mnt: Path) -> None:
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


@dataclass
class Trial:
    point: Syscall  # the call the freeze landed right after (the end marker: returned)
    mode: str  # "commit", "cut", "kill", or the label of a forgetful crash state
    outcome: Any  # what the caller's inspect() returned
    leftovers: list[str]  # crashsafe temporary names found after the remount
    swept: int  # how many of them sweep() removed
    left_after_sweep: list[str]
    aimed: str = ""  # "NAME:N"
    where: str = "main"  # "main", "worker", "before start", "after end" or "returned"


@dataclass
class PowerCutRun:
    trace: list[Syscall]  # start marker .. end marker, both included (the main thread's)
    points: list[tuple[str, int]]  # (NAME, N) of every crash point
    trials: list[Trial] = field(default_factory=list)
    seconds: float = 0.0
    drifts: int = 0  # attempts that froze elsewhere than aimed and were retried
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # threads=True: NAME ->
    # "main" or "w1", "w2"... (most first) -> calls

    @property
    def end(self) -> int:
        """Index of the end marker: crash points from here on are after return."""
        return self.trace[-1].index


def _thread_points(
    trace: Trace, watch: str, main: int
) -> tuple[list[tuple[str, int]], dict[str, dict[str, int]]]:
    """Every (NAME, N) to freeze at in ``threads`` mode, and the per-thread counts."""
    assert trace.start is not None and trace.end is not None, "no start() and end() in the trace"
    batch = trace.calls[trace.start + 1 : trace.end]
    names = sorted({c.name for c in batch if watch in c.args})
    # The markers too: right after start() nothing changed; right after end()
    # the call has returned.
    points = {(c.name, c.nth) for c in (trace.calls[trace.start], trace.calls[trace.end])}
    counts: dict[str, dict[str, int]] = {}
    for name in names:
        per_thread = Counter(c.tid for c in batch if c.name == name)
        before = sum(1 for c in trace.calls[: trace.start] if c.tid == main and c.name == name)
        workers = sorted((n for t, n in per_thread.items() if t != main), reverse=True)
        counts[name] = {"main": per_thread[main]} | {f"w{i}": n for i, n in enumerate(workers, 1)}
        # The main thread's first call of *name* after the marker is its
        # (before + 1)-th; a worker's calls all come after the marker.
        last = max([before + per_thread[main], *workers])
        points |= {(name, n) for n in range(1, last + 1)}
    return sorted(points), counts


def _landing(trace: Trace, frozen: bool, main: int, run: PowerCutRun) -> tuple[Syscall, str]:
    """The call the freeze landed right after, and where that is."""
    if not frozen:
        return run.trace[-1], "returned"
    last = trace.last_before_stop()
    assert trace.stop is not None and last is not None, "stopped, not by the injection"
    if trace.start is None or trace.stop <= trace.start:
        return last, "before start"
    if trace.end is not None and trace.end < trace.stop:
        return last, "after end"
    return last, "main" if trace.stopped_tid == main else "worker"


class Crash(Protocol):
    """What a trial of :func:`crash_every_syscall` does once the writer is frozen
    right after the aimed call: the power cut of :class:`PowerCut`, the bare kill
    of :class:`KillOnly`, or the crash states of a filesystem that forgets
    (:mod:`tests.harness.forgetful_cut`)."""

    @property
    def modes(self) -> Sequence[str]:
        """The modes each crash point is tried in, each a run of the writer of its own."""
        ...

    def frozen(self, mode: str) -> None:
        """Called while the writer is frozen on its aimed call, before it is killed."""
        ...

    def states(self, mode: str) -> Iterator[str]:
        """Called after the kill: put each state the crash may have left in place,
        in turn, and yield a label for it (the trial's mode); the caller's
        inspect and sweep run at each."""
        ...


@dataclass(frozen=True)
class PowerCut:
    """The shutdown ioctl on *mnt* while the writer is frozen (after an unrelated
    fsync that commits the journal, in the ``commit`` mode), then a remount that
    replays the journal: one state per mode."""

    mnt: Path
    modes: Sequence[str] = MODES

    def frozen(self, mode: str) -> None:
        if mode == "commit":
            commit_journal(self.mnt)
        shutdown(self.mnt)

    def states(self, mode: str) -> Iterator[str]:
        mounts.cycle(self.mnt)
        yield mode


@dataclass(frozen=True)
class KillOnly:
    """Only the kill: what a killed process leaves, on any filesystem."""

    modes: Sequence[str] = ("kill",)

    def frozen(self, mode: str) -> None:
        pass

    def states(self, mode: str) -> Iterator[str]:
        yield mode


def crash_every_syscall(
    writer: Path,
    args: Sequence[str],
    *,
    prepare: Callable[[], None],
    inspect: Callable[[], Any],
    crash: Crash,
    sweep_dirs: Sequence[Path] = (),
    threads: Path | None = None,
) -> PowerCutRun:
    """The runner behind :func:`power_cut_every_syscall` (*crash* a :class:`PowerCut`),
    :func:`kill_every_syscall` (:class:`KillOnly`) and
    :func:`tests.harness.forgetful_cut.forget_every_syscall`: for each crash point
    and each of *crash*'s modes, *prepare*, run the writer frozen on that point,
    ``crash.frozen(mode)``, kill it, then for each state ``crash.states(mode)``
    puts in place one :class:`Trial` (*inspect*, leftovers in *sweep_dirs*, sweep).
    *threads*, the mount point under test, chooses the ``threads`` points (the
    calls of any thread that touch it) instead of every call of the main thread."""
    require_tools("strace")
    began = time.perf_counter()
    prepare()
    with tempfile.TemporaryDirectory(prefix="crashsafe-trace-") as scratch:
        work = Path(scratch)
        tracer = Attached(work, writer, args, None)
        try:
            recorded = parse(tracer.finish())
        finally:
            tracer.kill()
        main = tracer.writer.pid
        run = PowerCutRun(recorded.between_markers(None if threads else main), [])
        if threads is not None:
            run.points, run.counts = _thread_points(recorded, str(threads), main)
        else:
            run.points = [(s.name, s.nth) for s in run.trace]
        for n, (name, nth) in enumerate(run.points):
            for mode in crash.modes:
                for attempt in range(1, DRIFT_ATTEMPTS + 1):
                    prepare()
                    tracer = Attached(work, writer, args, f"{name}:signal=STOP:when={nth}")
                    try:
                        frozen = tracer.wait_frozen_or_done()
                        trace = parse(tracer.text())
                        point, where = _landing(trace, frozen, tracer.writer.pid, run)
                        on_target = threads is not None or (
                            frozen
                            and trace.stopped_tid == tracer.writer.pid
                            and (point.index, point.name, point.nth) == (n, name, nth)
                        )
                        if on_target:
                            crash.frozen(mode)
                    finally:
                        tracer.kill()
                    if on_target:
                        break
                    # Froze elsewhere: nothing was cut, so trying again hides no outcome.
                    run.drifts += 1
                    if attempt == DRIFT_ATTEMPTS:
                        raise AssertionError(f"aimed at {run.trace[n]}, froze after {point}")
                if threads is not None and frozen:
                    got = (point.name, point.nth)
                    assert got == (name, nth), f"aimed at {name}:{nth}, froze after {got}"
                for label in crash.states(mode):
                    outcome = inspect()
                    found = [name for d in sweep_dirs for name in leftovers(d)]
                    swept = sum(len(crashsafe.sweep(d)) for d in sweep_dirs)
                    left = [name for d in sweep_dirs for name in leftovers(d)]
                    trial = Trial(point, label, outcome, found, swept, left, f"{name}:{nth}", where)
                    run.trials.append(trial)
    run.seconds = time.perf_counter() - began
    return run


def power_cut_every_syscall(
    mnt: Path,
    writer: Path,
    args: Sequence[str],
    *,
    prepare: Callable[[], None],
    inspect: Callable[[], Any],
    sweep_dir: Path | Sequence[Path] = (),
    modes: Sequence[str] = MODES,
    threads: bool = False,
) -> PowerCutRun:
    """Cut the power of *mnt* right after each syscall the *writer* program makes
    from its start marker to its end marker (or, with *threads*, each (NAME, N)
    of any thread), in each of *modes*.

    *args* become the writer's ``sys.argv[1:]``. *prepare* puts the old state
    in place, durably, before every run. After the cut and the remount,
    *inspect* returns the outcome of the trial; then the crashsafe temporary
    files in *sweep_dir* (one directory or several) are counted and
    :func:`crashsafe.sweep` runs there. Must run inside :func:`writeback_off`.
    """
    fd = os.open(mnt / UNRELATED, os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    return crash_every_syscall(
        writer,
        args,
        prepare=prepare,
        inspect=inspect,
        crash=PowerCut(mnt, modes),
        sweep_dirs=[sweep_dir] if isinstance(sweep_dir, Path) else sweep_dir,
        threads=mnt if threads else None,
    )


def kill_every_syscall(
    writer: Path,
    args: Sequence[str],
    *,
    prepare: Callable[[], None],
    inspect: Callable[[], Any],
    sweep_dir: Path | None = None,
) -> PowerCutRun:
    """``kill -9`` the writer right after each syscall it makes from its start
    marker to its end marker: :func:`power_cut_every_syscall` without the power
    cut (no root, any filesystem), for the states a killed process leaves.

    Each trial's mode is ``"kill"``; then the crashsafe temporary files in
    *sweep_dir* are counted and swept.
    """
    return crash_every_syscall(
        writer,
        args,
        prepare=prepare,
        inspect=inspect,
        crash=KillOnly(),
        sweep_dirs=[] if sweep_dir is None else [sweep_dir],
    )


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


def describe(fs: str, label: str, run: PowerCutRun, marks: str) -> str:
    """One line summing up a power-cut run, for the figures the tests print."""
    outcomes = Counter(f"{t.mode}:{t.outcome}" for t in run.trials)
    found = sum(len(t.leftovers) for t in run.trials)
    swept = sum(t.swept for t in run.trials)
    left = sum(len(t.left_after_sweep) for t in run.trials)
    modes = len({t.mode for t in run.trials})
    return (
        f"power cut {fs:<20} {label:<26} {len(run.points)} crash points x {modes} "
        f"mode{'s' if modes != 1 else ''} = {len(run.trials)} trials ({marks}): "
        f"{dict(sorted(outcomes.items()))}; "
        f"temp files after remount {found} -> swept {swept} -> left {left}; "
        f"{run.seconds:.0f} s; drifts retried {run.drifts}"
    )
