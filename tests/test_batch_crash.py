"""Power cuts inside write_many: every file old or new at any syscall of any thread.

What is proven, for :func:`crashsafe.write_many` with ``durability="durable"`` on
real loop filesystems (xfs, and ext4 mounted ``noauto_da_alloc``, whose default
hides missing fsyncs): six files in two directories, each holding an old
version put in place durably, are rewritten in one call, and the power is cut
(the shutdown ioctl, with and without a journal commit by another process first)
right after a syscall of the main thread or of a worker thread. After the
remount every file is complete, old or new (never missing, empty, zero-filled,
partial, torn or another file's content); every file is new if the call had
returned; nothing is left in the directories but crashsafe temporary files,
and :func:`crashsafe.sweep` removes every one of them (promises 1, 2 and 4).

Why a runner of its own: :func:`tests.harness.crash.power_cut_every_syscall`
aims at the main thread only, and strace's ``inject=NAME:signal=STOP:when=N``
counts the calls of NAME per thread from the moment it traces that thread.
Traced from the start of the process, the main thread has made hundreds of
``openat`` and ``close`` calls (Python's start-up) before the batch begins, so a
small N aimed at a worker thread would freeze the main thread during start-up.
So strace attaches (``-p``) to the writer once its set-up is done, while it
waits: every thread's counters then start at zero, at a point that makes no
call the batch makes. One recorded run gives the names of the syscalls that
touch the filesystem under test (a freeze right after any other call leaves
the filesystem as the previous one did) and, for each, how many calls each
thread made; each N from 1 to the largest count of any thread then freezes
whichever thread first reaches its N-th call of that name. SIGSTOP stops the
whole process: the trial waits until every thread is stopped (or the writer
has returned) before the cut. Which worker handles which file, and so where
a worker's N-th call lands, varies from run to run; the checks do not depend
on the order, and the coverage assertions prove the cuts landed inside the
batch (some trials find a mix of old and new files).

Two variants of the good batch: write_many's own pool (one worker per file
here, so a worker makes one call of each name and the cuts land at the first
worker's steps), and the pool capped at two threads (``_THREADS`` set in the
writer), where a worker publishes about three files and the cuts also land
after its second and third, in the middle of the batch.

The harness must catch a broken batch or it proves nothing: the same runner
and checks, on a batch that renames each file without fsyncing its data (then
syncs the directories), find empty files on both filesystems; on write_many
with ``durability="consistent"`` (no directory fsync, as documented) they find
old files after the call returned.

Sizes, for CI (measured on the 2-core VM, the whole file in about 50 s):
files of 320 to 960 bytes; 42 to 47 crash points x 2 modes for write_many
(6 to 8 s a run, four runs), 16 x 2 for the batch without fsync (about 2 s
each), 41 x 2 with "consistent" (about 7 s each).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import crashsafe
from tests.harness import crash, mounts
from tests.harness.checks import leftovers
from tests.harness.summary import module_summary

OLD, NEW = 1, 2
DIRS = ("a", "b")
NAMES = ("f0", "f1", "f2")
# Distinct sizes, so that a file holding another file's bytes cannot pass. The
# data is written by the main thread while each file is staged; the workers
# fsync, link and rename.
SIZES = {f"{d}/{n}": 320 + 128 * i for i, (d, n) in enumerate((d, n) for d in DIRS for n in NAMES)}
BAD = ("missing", "empty", "zeros", "partial", "torn", "another file's")

# Appended to crash.PRELUDE. The writer says "ready", then waits (select on
# stdin, a call no batch makes) until the runner has seen strace trace it and
# sends a byte: from then on every syscall is traced and counted.
ATTACH = """
import select
def wait_for_tracer():
    os.write(1, b"ready\\n")
    while not select.select([0], [], [], 0.001)[0]:
        pass
    os.read(0, 1)
"""

# write_many imports concurrent.futures.thread on first use; importing it
# before the markers keeps its reads of the standard library out of the
# crash points (they touch nothing on the filesystem under test). A second
# argument caps the pool (see test_power_cut_in_any_thread_of_write_many).
BATCH_WRITER = """
import json
import concurrent.futures.thread
import crashsafe.batch
from crashsafe.batch import write_many
plan = json.loads(sys.argv[1])
if sys.argv[2]:
    crashsafe.batch._THREADS = int(sys.argv[2])
durability = sys.argv[3]
data = {}
for target, source in plan.items():
    with open(source, "rb") as f:
        data[target] = f.read()
wait_for_tracer()
start()
write_many(data, durability=durability)
end()
"""

# Deliberately broken: write_many's shape (publish on a pool of threads, then
# sync each directory once) but no fsync of the data before the rename.
BROKEN_BATCH_WRITER = """
import json
from concurrent.futures import ThreadPoolExecutor
plan = json.loads(sys.argv[1])
data = {}
for target, source in plan.items():
    with open(source, "rb") as f:
        data[target] = f.read()
def publish(target):
    temp = os.path.join(os.path.dirname(target), "." + os.path.basename(target) + ".broken-tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    view = memoryview(data[target])
    while view:
        view = view[os.write(fd, view):]
    os.close(fd)
    os.rename(temp, target)
wait_for_tracer()
start()
with ThreadPoolExecutor(len(data)) as pool:
    list(pool.map(publish, data))
for directory in sorted({os.path.dirname(t) for t in data}):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
end()
"""


_note, _print_summary = module_summary("batch crash harness summary")


# --------------------------------------------------------------------------- contents


def _content(key: str, version: int) -> bytes:
    """The file's own name, then a payload: a file that got another's content differs."""
    return key.encode() + b":" + crash.payload(version, SIZES[key])


def _classify(key: str, data: bytes | None) -> str:
    """Returns "old", "new", or what is wrong with the file (a word of BAD first)."""
    prefix = key.encode() + b":"
    if not data or data.count(0) == len(data):
        found = crash.classify(data)
    elif data.startswith(prefix):
        found = crash.classify(data[len(prefix) :])
    else:
        return "another file's content" if b":CRASHSAFE-PAYLOAD" in data[:32] else "torn"
    return "old" if found == OLD else "new" if found == NEW else str(found)


# --------------------------------------------------------------------------- strace, attached

# strace pads the pid column ("873   openat(..."): \s+, not one space.
_CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)$")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$")
_INJECTED = re.compile(r"^(\d+)\s+--- SIGSTOP \{")
_STOPPED = "--- stopped by SIGSTOP ---"


@dataclass
class _Call:
    tid: int
    name: str
    nth: int  # calls of *name* by this thread since strace attached: when=nth
    text: str  # arguments and result, an unfinished call's resumed part appended


@dataclass
class _Trace:
    """A multi-threaded trace: calls in the order they entered, and the markers."""

    calls: list[_Call]
    start: int | None  # index in calls of the start marker
    end: int | None  # of the end marker
    stop: int | None  # calls entered before the injected SIGSTOP (None: never stopped)
    stopped_tid: int | None  # the thread the SIGSTOP was injected in


def _parse(text: str) -> _Trace:
    calls: list[_Call] = []
    counts: Counter[tuple[int, str]] = Counter()
    open_calls: dict[tuple[int, str], _Call] = {}
    start = end = stop = stopped_tid = None
    for line in text.splitlines():
        if m := _CALL.match(line):
            tid, name = int(m[1]), m[2]
            counts[tid, name] += 1
            call = _Call(tid, name, counts[tid, name], m[3])
            if line.endswith("<unfinished ...>"):
                open_calls[tid, name] = call
            if crash._START in m[3] and start is None:
                start = len(calls)
            if crash._END in m[3] and end is None:
                end = len(calls)
            calls.append(call)
        elif m := _RESUMED.match(line):
            pending = open_calls.pop((int(m[1]), m[2]), None)
            if pending is not None:
                pending.text += m[3]
        elif (m := _INJECTED.match(line)) and stop is None:
            stop, stopped_tid = len(calls), int(m[1])
    return _Trace(calls, start, end, stop, stopped_tid)


def _last_call(trace: _Trace, tid: int, before: int) -> _Call | None:
    return next((c for c in reversed(trace.calls[:before]) if c.tid == tid), None)


class _AttachedStrace:
    """The writer, started first, and strace attached to it (``-f -p``) once it waits.

    Both run in process groups of their own; :meth:`kill` ends exactly these two.
    """

    def __init__(self, workdir: Path, script: str, args: Sequence[str], inject: str | None):
        self.out = workdir / "trace.txt"
        self.out.unlink(missing_ok=True)
        self.log = workdir / "stderr.txt"
        src = str(Path(crashsafe.__file__).resolve().parents[1])
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": src}
        env |= {"PYTHONHASHSEED": "0", "LC_ALL": "C.UTF-8"}
        self.strace: subprocess.Popen[bytes] | None = None
        with open(self.log, "wb") as log:
            # -S -B as in crash._Strace: no site hooks, no .pyc written.
            self.writer = subprocess.Popen(
                [sys.executable, "-S", "-B", "-c", crash.PRELUDE + ATTACH + script, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                cwd="/",
                start_new_session=True,
            )
        try:
            self._attach(workdir, inject)
        except BaseException:
            self.kill()
            raise

    def _attach(self, workdir: Path, inject: str | None) -> None:
        assert self.writer.stdout is not None and self.writer.stdin is not None
        if self.writer.stdout.readline() != b"ready\n":
            raise AssertionError("the writer failed before it was ready:\n" + self._stderr())
        cmd = ["strace", "-f", "-qq", "-y", "-o", str(self.out)]
        if inject is not None:
            cmd += ["-e", f"inject={inject}"]
        with open(workdir / "strace.txt", "wb") as log:
            self.strace = subprocess.Popen(
                [*cmd, "-p", str(self.writer.pid)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        # A complete line from the writer: strace stops it at every syscall now.
        deadline = time.monotonic() + 30
        while "\n" not in self.text():
            if time.monotonic() > deadline or self.strace.poll() is not None:
                why = (workdir / "strace.txt").read_text(errors="replace")[-2000:]
                raise AssertionError("strace did not attach to the writer:\n" + why)
            time.sleep(0.002)
        self.writer.stdin.write(b"g")
        self.writer.stdin.close()

    def _stderr(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def text(self) -> str:
        try:
            return self.out.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _all_stopped(self) -> bool:
        for stat in glob.glob(f"/proc/{self.writer.pid}/task/*/stat"):
            try:
                state = Path(stat).read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue  # a thread that just exited
            if state not in ("t", "T", "Z", "X"):  # stopped, or exited and not reaped yet
                return False
        return True

    def wait_frozen_or_done(self, timeout: float = 30.0) -> bool:
        """True once every thread is stopped, False if the writer returned first.

        A thread that was inside a syscall when the SIGSTOP came (an fsync of
        another worker) finishes that syscall, then stops: what it did is part
        of the state the cut finds, as with any power cut at that instant.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.writer.poll() is not None:
                if self.writer.returncode != 0:
                    raise AssertionError(
                        f"the writer failed ({self.writer.returncode}):\n" + self._stderr()
                    )
                return False
            if _STOPPED in self.text() and self._all_stopped():
                return True
            if time.monotonic() > deadline:
                raise AssertionError("the writer neither froze nor returned in time")
            time.sleep(0.002)

    def finish(self, timeout: float = 60.0) -> str:
        rc = self.writer.wait(timeout)
        if rc != 0:
            raise AssertionError(f"the writer failed ({rc}):\n" + self._stderr())
        assert self.strace is not None
        self.strace.wait(timeout)  # it exits once its tracee is gone
        return self.text()

    def kill(self) -> None:
        """SIGKILL the writer (strace then exits), then strace's group if it did not."""
        if self.writer.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.writer.pid, signal.SIGKILL)
        # Reaped here, so its descriptors are closed before any unmount.
        self.writer.wait()
        for pipe in (self.writer.stdin, self.writer.stdout):
            if pipe is not None:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()
        if self.strace is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.strace.wait(10)
            if self.strace.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.strace.pid, signal.SIGKILL)
                self.strace.wait()


# --------------------------------------------------------------------------- the runner


@dataclass
class _Trial:
    aimed: str  # "NAME:N"
    mode: str
    where: str  # "worker", "main", "before start", "after end" or "returned"
    files: dict[str, str]  # _classify() of every file
    problems: list[str]
    found: int  # crashsafe temporary files after the remount
    swept: int

    @property
    def outcome(self) -> str:
        kinds = set(self.files.values())
        if not kinds <= {"old", "new"}:
            return "bad"
        return "mix" if len(kinds) == 2 else kinds.pop()


@dataclass
class _Run:
    points: list[tuple[str, int]]
    counts: dict[str, dict[str, int]]  # name -> "main" or "w1", "w2"... (most first) -> calls
    trials: list[_Trial] = field(default_factory=list)
    seconds: float = 0.0


def _crash_points(
    trace: _Trace, mnt: Path, main: int
) -> tuple[list[tuple[str, int]], dict[str, dict[str, int]]]:
    """Every (name, N) to freeze at, from a recorded run, and the per-thread counts."""
    assert trace.start is not None and trace.end is not None, "no start() and end() in the trace"
    batch = trace.calls[trace.start + 1 : trace.end]
    names = sorted({c.name for c in batch if str(mnt) in c.text})
    # The markers too: right after start() nothing changed; right after end()
    # the call has returned, so every file must be new.
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


def power_cut_batch(
    mnt: Path,
    tmp_path: Path,
    script: str,
    *,
    threads: int | None = None,
    durability: str = "durable",
    modes: Sequence[str] = crash.MODES,
) -> _Run:
    """Cut the power of *mnt* right after every (syscall name, N) of the batch in
    *script* (and at its two markers), in each of *modes*, and check the six
    files after every cut. *threads* caps write_many's pool (None: its own);
    *threads* and *durability* are the writer's second and third arguments."""
    began = time.perf_counter()
    dirs = [mnt / d for d in DIRS]
    for directory in dirs:
        directory.mkdir()
    targets = {key: mnt / key for key in SIZES}
    plan = {}
    for key, target in targets.items():
        source = tmp_path / key.replace("/", "-")
        source.write_bytes(_content(key, NEW))
        plan[str(target)] = str(source)
    args = [json.dumps(plan), str(threads or ""), durability]
    fd = os.open(mnt / crash.UNRELATED, os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)

    def prepare() -> None:
        for directory in dirs:
            for name in os.listdir(directory):
                if name not in NAMES:
                    os.unlink(directory / name)
        for key, target in targets.items():
            crash.durable_put(target, _content(key, OLD))

    def inspect(aimed: str, mode: str, where: str) -> _Trial:
        files = {key: _classify(key, crash.read_or_none(t)) for key, t in targets.items()}
        problems = [
            f"{key}: {found}" for key, found in files.items() if found not in ("old", "new")
        ]
        if where in ("after end", "returned"):
            problems += [f"{key}: old after return" for key, f in files.items() if f == "old"]
        found = swept = 0
        for directory in dirs:
            temps = leftovers(directory)
            strays = sorted(set(os.listdir(directory)) - set(NAMES) - set(temps))
            problems += [f"{directory.name}/{n}: not a crashsafe temporary file" for n in strays]
            found += len(temps)
            swept += len(crashsafe.sweep(directory))
            problems += [f"{directory.name}/{n}: left after sweep" for n in leftovers(directory)]
        return _Trial(aimed, mode, where, files, problems, found, swept)

    prepare()
    with tempfile.TemporaryDirectory(prefix="crashsafe-trace-") as work:
        tracer = _AttachedStrace(Path(work), script, args, None)
        try:
            recorded = _parse(tracer.finish())
        finally:
            tracer.kill()
        points, counts = _crash_points(recorded, mnt, tracer.writer.pid)
        run = _Run(points, counts)
        for name, nth in points:
            for mode in modes:
                prepare()
                tracer = _AttachedStrace(Path(work), script, args, f"{name}:signal=STOP:when={nth}")
                try:
                    frozen = tracer.wait_frozen_or_done()
                    if mode == "commit":
                        crash._commit_journal(mnt)
                    crash.shutdown(mnt)
                finally:
                    tracer.kill()
                trace = _parse(tracer.text())
                where = _where(trace, frozen, tracer.writer.pid, name, nth)
                mounts.cycle(mnt)
                run.trials.append(inspect(f"{name}:{nth}", mode, where))
    run.seconds = time.perf_counter() - began
    return run


def _where(trace: _Trace, frozen: bool, main: int, name: str, nth: int) -> str:
    """Where the freeze landed; fails if it is not the call aimed at."""
    if not frozen:
        return "returned"
    assert trace.stop is not None and trace.stopped_tid is not None, "stopped, not by the injection"
    last = _last_call(trace, trace.stopped_tid, trace.stop)
    got = (last.name, last.nth) if last else None
    assert got == (name, nth), f"aimed at {name}:{nth}, froze after {got}"
    if trace.start is None or trace.stop <= trace.start:
        return "before start"
    if trace.end is not None and trace.end < trace.stop:
        return "after end"
    return "main" if trace.stopped_tid == main else "worker"


def _describe(fs: str, label: str, run: _Run) -> str:
    outcomes = Counter(f"{t.mode}:{t.outcome}" for t in run.trials)
    where = Counter(t.where for t in run.trials)
    found = sum(t.found for t in run.trials)
    swept = sum(t.swept for t in run.trials)
    left = sum(1 for t in run.trials for p in t.problems if p.endswith("left after sweep"))
    return (
        f"power cut {fs:<20} {label:<24} {len(run.points)} crash points x {len(crash.MODES)} "
        f"modes = {len(run.trials)} trials: {dict(sorted(outcomes.items()))}; "
        f"froze in {dict(sorted(where.items()))}; "
        f"temp files after remount {found} -> swept {swept} -> left {left}; "
        f"{run.seconds:.0f} s; calls main/workers: {_counts(run.counts)}"
    )


def _counts(counts: dict[str, dict[str, int]]) -> str:
    return ", ".join(
        f"{name} {threads['main']}/" + ",".join(str(n) for t, n in threads.items() if t != "main")
        for name, threads in counts.items()
    )


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
@pytest.mark.parametrize("threads", [None, 2], ids=["own-pool", "2-threads"])
def test_power_cut_in_any_thread_of_write_many(
    cut_fs: tuple[str, Path], tmp_path: Path, threads: int | None
) -> None:
    """With its own pool (one worker per file here) a worker makes one call of
    each name, so the cuts land at the first worker's steps; capped at two
    threads, each worker publishes about three files and the cuts also land
    after its second and third file, in the middle of the batch."""
    fs, mnt = cut_fs
    run = power_cut_batch(mnt, tmp_path, BATCH_WRITER, threads=threads)
    label = f"write_many {'own pool' if threads is None else f'{threads} threads'}"
    _note(_describe(fs, label, run))

    assert [(t.aimed, t.mode, t.where, t.problems) for t in run.trials if t.problems] == []
    assert len(run.trials) == len(run.points) * len(crash.MODES) > 0
    # The batch ran on worker threads, and cuts landed in them.
    assert any(len(threads) > 2 for threads in run.counts.values()), run.counts
    where = Counter(t.where for t in run.trials)
    assert where["worker"] > 0, where
    assert where["before start"] == 0, "a freeze landed before the batch began"
    # Cuts after the call returned, where every file must be new (checked above).
    assert where["after end"] + where["returned"] > 0, where
    # Cuts landed before, inside and after the batch: some files new, the rest old.
    outcomes = Counter(t.outcome for t in run.trials)
    assert outcomes["old"] > 0 and outcomes["mix"] > 0 and outcomes["new"] > 0, outcomes
    # Every temporary name a cut left (an O_TMPFILE's link name between linkat
    # and rename) was swept; nothing else is left.
    assert sum(t.found for t in run.trials) == sum(t.swept for t in run.trials)
    for directory in DIRS:
        assert sorted(os.listdir(mnt / directory)) == sorted(NAMES)


@pytest.mark.slow
def test_harness_catches_batch_without_fsync(cut_fs: tuple[str, Path], tmp_path: Path) -> None:
    fs, mnt = cut_fs
    run = power_cut_batch(mnt, tmp_path, BROKEN_BATCH_WRITER)
    caught = [
        (t.aimed, t.mode, t.where, key, found)
        for t in run.trials
        for key, found in t.files.items()
        if found.startswith(BAD)
    ]
    kinds = Counter(found for *_, found in caught)
    _note(
        _describe(fs, "BROKEN batch no fsync", run)
        + f"; damaged files {len(caught)} {dict(kinds)} in "
        + f"{len({(a, m) for a, m, *_ in caught})} trials"
    )
    # What docs/proving.md measured for one file, here in a batch: a rename that
    # reached the journal without its data leaves an empty (or zero-filled)
    # file, and the same checks that pass for write_many flag it.
    assert caught, "the harness missed the missing fsync: it proves nothing"
    assert Counter(t.where for t in run.trials)["before start"] == 0


@pytest.mark.slow
def test_harness_catches_batch_without_directory_fsync(
    cut_fs: tuple[str, Path], tmp_path: Path
) -> None:
    """write_many with ``durability="consistent"`` skips the directory fsyncs, as
    documented: old or new at every point, but possibly old after return. The
    check that every file is new once the call returned must see it."""
    fs, mnt = cut_fs
    run = power_cut_batch(mnt, tmp_path, BATCH_WRITER, durability="consistent")
    returned = [t for t in run.trials if t.where in ("after end", "returned")]
    old = [t.mode for t in returned if "old" in t.files.values()]
    _note(
        _describe(fs, "consistent: no dir fsync", run)
        + f"; old after return: {len(old)} of {len(returned)} ({', '.join(old)})"
    )
    assert old, "the harness missed the missing directory fsync: it proves nothing"
    # Nothing else is wrong: every file old or new at every point.
    problems = [p for t in run.trials for p in t.problems]
    assert problems and all(p.endswith("old after return") for p in problems), problems
