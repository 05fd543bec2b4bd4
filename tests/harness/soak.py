"""The soak: many processes and threads doing every kind of write in one tree while
a reader checks every read, a killer ``kill -9``\\ s writers and a sweeper sweeps.

:func:`run_soak` starts *processes* writer processes of *threads* threads each
(``tests/writers/soak_worker.py``: ``atomic_write``, ``atomic_open``,
``atomic_copy``, ``update_json``, ``transaction``, ``write_many``,
``ChecksumStore.record``), half of them staging with ``O_TMPFILE`` and half with
named files, one reader process (``soak_reader.py``), and a sweeper thread here.
The killer, here too, waits a random pause from a generator seeded with
:attr:`SoakPlan.seed`, SIGKILLs a random writer process among those that have
acknowledged an operation since they started, and starts it again,
until the budget is spent *and* the minimum of work is done (every kind of
operation acknowledged :attr:`SoakPlan.min_ops` times, :attr:`SoakPlan.min_kills`
kills, and for a broken plan the damage it must show caught). The budget only
bounds the work: where the kills land changes the run, not the verdict, which
holds for a kill at any instant. A run that has not done its minimum by
:attr:`SoakPlan.hard_cap` fails, saying what was missing.

Then :func:`verify` checks the tree against the workers' logs (see
:mod:`tests.harness.soak_format`): every file one complete version of its own
file, made by an operation that was acknowledged or was in flight when its
process was killed; every counter exactly its acknowledged increments, plus at
most one in-flight increment per kill of its process; the transaction's files
of one commit; the checksum store holding each file's last acknowledged digest
(or an in-flight one); after ``recover`` and a final sweep, no temporary file
anywhere in the tree.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import crashsafe
from crashsafe.checksums import ChecksumStore
from crashsafe.documents import read_json
from crashsafe.staging import MARKER
from tests import children
from tests.harness.soak_format import (
    BATCH,
    CHECKED,
    COUNTERS,
    DIRECTORIES,
    FILES,
    JSON,
    KINDS,
    STORE,
    TOTAL,
    TX,
    TX_EXTRA,
    TX_FILES,
    Log,
    Version,
    check,
    payload,
    read_log,
    read_or_none,
    tree_files,
)

WRITERS = Path(children.ROOT) / "tests" / "writers"
# A transaction's own names (README, "How a transaction commits"): its staged
# files and its journal are debris once recovery has run; its lock file is kept.
TX_DEBRIS = (".crashsafe-tx.", ".crashsafe-journal")
TX_LOCK = ".crashsafe-tx.lock"


@dataclass(frozen=True)
class SoakPlan:
    """What a soak does; see :func:`run_soak`."""

    seconds: float
    seed: int
    processes: int = 4
    threads: int = 3
    min_kills: int = 10
    min_ops: int = 20  # acknowledged operations of each kind
    min_reads: int = 20  # checked reads of each kind (plain, read_json, snapshot)
    broken: tuple[str, ...] = ()  # "naive", "unlocked": see tests/writers/soak_worker.py
    pause: tuple[float, float] = (0.05, 0.6)  # the killer's random pause, seconds

    @property
    def hard_cap(self) -> float:
        """Seconds after which a run short of its minimum fails (only a bound on a hang)."""
        return 3 * self.seconds + 120


@dataclass
class SoakResult:
    plan: SoakPlan
    seconds: float = 0.0
    kills: int = 0
    kills_working: int = 0  # kills of a start that had acknowledged an operation
    ops: dict[str, int] = field(default_factory=dict)  # acknowledged, per kind
    reads: dict[str, int] = field(default_factory=dict)  # the reader's checked reads
    damage: list[str] = field(default_factory=list)  # the reader's damage lines
    sweeps: int = 0
    swept_during: int = 0
    swept_final: int = 0
    recovered: bool = False
    in_flight_counts: int = 0  # counter increments found beyond the acknowledged ones
    counter_total: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        p = self.plan
        ops = ", ".join(f"{k} {self.ops.get(k, 0):,}" for k in KINDS)
        reads = ", ".join(f"{k} {v:,}" for k, v in sorted(self.reads.items()))
        return [
            f"seed {p.seed}; {p.processes} writer processes x {p.threads} threads"
            f"{'; broken: ' + ','.join(p.broken) if p.broken else ''}; "
            f"{self.seconds:.0f} s (budget {p.seconds:g} s)",
            f"operations acknowledged: {sum(self.ops.values()):,} ({ops})",
            f"kill -9: {self.kills} (each writer process started again; {self.kills_working} "
            "after its start had acknowledged an operation); "
            f"counter increments in flight at a kill, found applied: {self.in_flight_counts}; "
            f"counters total {self.counter_total:,}",
            f"reads checked: {sum(self.reads.values()):,} ({reads}); damaged: "
            f"{len(self.damage)}{' (first: ' + self.damage[0] + ')' if self.damage else ''}",
            f"sweeps: {self.sweeps} removing {self.swept_during} orphans during the run, "
            f"{self.swept_final} at the end; transaction recovered at the end: {self.recovered}",
            f"problems: {len(self.problems)}" + "".join(f"\n  {q}" for q in self.problems[:20]),
        ]


class _Progress:
    """The logs' acknowledged operations, read incrementally (whole lines only)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.offsets: dict[Path, int] = {}
        self.ops: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()  # acknowledged increments per worker key
        self.lines: Counter[int] = Counter()  # acknowledged operations per writer slot

    def update(self) -> None:
        for path in sorted(self.logs.glob("*.log")):
            with open(path, "rb") as f:
                f.seek(self.offsets.get(path, 0))
                data = f.read()
            whole = data[: data.rfind(b"\n") + 1]
            self.offsets[path] = self.offsets.get(path, 0) + len(whole)
            for line in whole.decode().splitlines():
                kind = line.split(" ", 1)[0]
                self.ops[kind] += 1
                if kind == "count":
                    self.counts[path.stem] += 1
                self.lines[int(path.stem[1 : path.stem.index("t")])] += 1


class _Writers:
    """The writer processes: started, killed, started again; each start's stderr kept."""

    def __init__(self, tree: Path, logs: Path, stop: Path, plan: SoakPlan) -> None:
        self.tree, self.logs, self.stop, self.plan = tree, logs, stop, plan
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.incarnation: Counter[int] = Counter()
        self.killed: Counter[int] = Counter()
        self.started_at: dict[int, int] = {}  # the slot's acknowledged operations at its start

    def start(self, slot: int, progress: _Progress) -> None:
        self.incarnation[slot] += 1
        self.started_at[slot] = progress.lines[slot]
        inc = self.incarnation[slot]
        with open(self.logs / f"p{slot}.i{inc}.err", "wb") as err:
            self.procs[slot] = children.start(
                WRITERS / "soak_worker.py",
                *map(str, (self.tree, self.logs, self.stop, slot, inc, self.plan.threads)),
                str(self.plan.seed),
                "tmpfile" if slot % 2 == 0 else "named",
                ",".join(self.plan.broken) or "-",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def working(self, progress: _Progress) -> list[int]:
        """The slots whose current start has acknowledged an operation: only those are
        killed, so that a kill lands in the middle of the work, not in a start-up
        (which takes longer than the killer's pause on a busy machine)."""
        return [s for s, n in self.started_at.items() if progress.lines[s] > n]

    def failed(self) -> list[str]:
        """Writers that exited on their own (an operation raised), with their stderr."""
        return [
            f"writer p{slot} (start {self.incarnation[slot]}) exited {proc.returncode}: "
            + (self.logs / f"p{slot}.i{self.incarnation[slot]}.err").read_text()[-3000:]
            for slot, proc in self.procs.items()
            if proc.poll() is not None and proc.returncode != 0
        ]

    def kill(self, slot: int) -> bool:
        """SIGKILL the writer in *slot* and reap it; False if it had exited already."""
        proc = self.procs[slot]
        if proc.poll() is not None:
            return False
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        self.killed[slot] += 1
        return True

    def finish(self) -> list[str]:
        """After the stop file: each writer must end its operation and exit 0."""
        problems = []
        for slot, proc in self.procs.items():
            try:
                code = proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if code != 0:
                err = (self.logs / f"p{slot}.i{self.incarnation[slot]}.err").read_text()
                problems.append(f"writer p{slot} exited {code} when stopped: {err[-3000:]}")
        return problems

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


class _Sweeper(threading.Thread):
    """``crashsafe.sweep`` over every directory of the tree now and then (random pauses)."""

    def __init__(self, tree: Path, seed: int) -> None:
        super().__init__(daemon=True)
        self.tree, self.rng = tree, random.Random(f"{seed} sweeper")
        self.done = threading.Event()
        self.sweeps = self.removed = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.done.wait(self.rng.uniform(0.1, 1.0)):
                for d in DIRECTORIES:
                    # min_age=0: only files whose writer is proven dead are removed.
                    self.removed += len(crashsafe.sweep(self.tree / d, min_age=0))
                self.sweeps += 1
        except BaseException as e:  # reported by run_soak
            self.error = e


def _reader_lines(stream: IO[bytes], buffer: bytearray, wait: float) -> list[str]:
    """The reader's lines that arrive within *wait* seconds (the killer's pause)."""
    lines = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        line = children.read_line(stream, buffer, left, "the soak reader")
        if line is None:
            break
        lines.append(line)
    return lines


def run_soak(root: Path, plan: SoakPlan) -> SoakResult:
    """Run the soak in *root* (``tree/``, ``logs/``, ``control/`` made there); return
    what it did and every problem found (none for correct writers)."""
    tree, logs, control = root / "tree", root / "logs", root / "control"
    for d in DIRECTORIES:
        (tree / d).mkdir(parents=True)
    logs.mkdir()
    control.mkdir()
    stop = control / "stop"
    result = SoakResult(plan)
    rng = random.Random(plan.seed)
    progress = _Progress(logs)
    writers = _Writers(tree, logs, stop, plan)
    sweeper = _Sweeper(tree, plan.seed)
    reader = children.start(
        WRITERS / "soak_reader.py", str(tree), str(stop), stdin=subprocess.DEVNULL
    )
    assert reader.stdout is not None
    buffer = bytearray()
    began = time.monotonic()
    try:
        for slot in range(plan.processes):
            writers.start(slot, progress)
        sweeper.start()
        while True:
            elapsed = time.monotonic() - began
            progress.update()
            if failed := writers.failed():
                result.problems += failed
                break
            missing = _shortfall(plan, result, progress, tree)
            if elapsed >= plan.seconds and not missing:
                break
            if elapsed >= plan.hard_cap:
                result.problems.append(
                    f"the minimum of work was not done in {elapsed:.0f} s: {'; '.join(missing)}"
                )
                break
            for line in _reader_lines(reader.stdout, buffer, rng.uniform(*plan.pause)):
                result.damage.append(line.removeprefix("damage "))
            progress.update()
            working = writers.working(progress)
            if not working:
                continue
            slot = rng.choice(working)
            if writers.kill(slot):
                result.kills += 1
                progress.update()  # the killed start's last lines are not the next one's
                writers.start(slot, progress)
        stop.touch()
        result.problems += writers.finish()
        sweeper.done.set()
        sweeper.join()
        while True:
            said = children.read_line(reader.stdout, buffer, 300, "the soak reader")
            if said is None:
                raise AssertionError("the soak reader did not stop")
            if not said.startswith("damage "):
                break
            result.damage.append(said.removeprefix("damage "))
        result.reads = {k: v for k, v in json.loads(said).items() if k != "damaged"}
        if reader.wait(timeout=60) != 0:
            result.problems.append(f"the reader exited {reader.returncode}")
    finally:
        stop.touch()
        sweeper.done.set()
        writers.close()
        _reap(reader)
    result.seconds = time.monotonic() - began
    if sweeper.error is not None:
        result.problems.append(f"sweep raised {sweeper.error!r}")
    result.sweeps, result.swept_during = sweeper.sweeps, sweeper.removed
    verify(tree, logs, writers, result)
    return result


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _shortfall(plan: SoakPlan, result: SoakResult, progress: _Progress, tree: Path) -> list[str]:
    """What the run still lacks of its minimum (empty: enough)."""
    missing = []
    if result.kills < plan.min_kills:
        missing.append(f"{result.kills} of {plan.min_kills} kills")
    few = {k: progress.ops[k] for k in KINDS if progress.ops[k] < plan.min_ops}
    if few:
        missing.append(f"fewer than {plan.min_ops} acknowledged: {few}")
    if "naive" in plan.broken and not any(d.startswith(f"{FILES}/") for d in result.damage):
        missing.append("no damaged read of the naive writer's files caught yet")
    if "unlocked" in plan.broken and not _lost_increments(tree, progress):
        missing.append("no lost increment caught yet")
    return missing


def _lost_increments(tree: Path, progress: _Progress) -> list[str]:
    """Counters below their acknowledged increments, while the run goes on: the logs
    were read before the document, so a counter a correct writer keeps can only
    be ahead of them."""
    doc = read_json(tree / JSON / COUNTERS, default={})
    return [k for k, n in progress.counts.items() if doc.get(k, 0) < n]


# --------------------------------------------------------------------------- the verdict


def verify(tree: Path, logs: Path, writers: _Writers, result: SoakResult) -> None:
    """Check the tree once everything stopped; add what is wrong to ``result.problems``."""
    problems = result.problems
    keys = [f"p{s}t{j}" for s in range(writers.plan.processes) for j in range(writers.plan.threads)]
    log = {k: read_log(logs / f"{k}.log", k) for k in keys}
    result.ops = dict(sum((Counter(g.ops()) for g in log.values()), Counter()))

    def killed(key: str) -> int:
        return writers.killed[int(key[1 : key.index("t")])]

    def in_flight(key: str) -> list[Version]:
        """The operation each killed start of *key*'s process may have had running."""
        slot = int(key[1 : key.index("t")])
        last = writers.incarnation[slot]  # stopped, not killed: nothing in flight
        return [(key, i, log[key].last_seq.get(i, 0) + 1) for i in range(1, last)]

    def attempted(v: Version) -> bool:
        key, inc, seq = v
        return key in log and (seq <= log[key].last_seq.get(inc, 0) or v in in_flight(key))

    result.kills_working = sum(
        any(log[f"p{slot}t{j}"].last_seq.get(i) for j in range(writers.plan.threads))
        for slot in range(writers.plan.processes)
        for i in range(1, writers.incarnation[slot])
    )
    result.recovered = crashsafe.recover(tree / TX)
    result.swept_final = sum(len(crashsafe.sweep(tree / d, min_age=0)) for d in DIRECTORIES)
    for dirpath, _, names in os.walk(tree):
        for name in names:
            if MARKER in name or (name.startswith(TX_DEBRIS) and name != TX_LOCK):
                problems.append(f"left behind: {Path(dirpath, name).relative_to(tree)}")

    for rel in tree_files(tree):
        found = check(rel, read_or_none(tree / rel))
        if isinstance(found, str):
            problems.append(f"{rel}: {found}")
        elif not attempted(found):
            problems.append(f"{rel}: version {found} was never written")
    named = {d for g in log.values() for k in ("write", "open", "copy") for _, _, d in g.acked(k)}
    named |= {
        f"{BATCH}/{n}" for g in log.values() for *_, d in g.acked("batch") for n in d.split(",")
    }
    for rel in sorted(named - set(tree_files(tree))):
        problems.append(f"{rel}: written (acknowledged) and now missing")

    _verify_counters(tree, log, killed, result)
    _verify_transaction(tree, log, attempted, problems)
    _verify_checksums(tree, log, in_flight, problems)


def _verify_counters(
    tree: Path, log: dict[str, Log], killed: Callable[[str], int], result: SoakResult
) -> None:
    doc = read_json(tree / JSON / COUNTERS, default={})
    result.counter_total = doc.get(TOTAL, 0)
    mine = {k: v for k, v in doc.items() if k != TOTAL}
    if doc.get(TOTAL, 0) != sum(mine.values()):
        result.problems.append(f"counters: total {doc.get(TOTAL)} != sum {sum(mine.values())}")
    for key in sorted(set(mine) | {k for k, g in log.items() if g.acked("count")}):
        acked = [int(d) for *_, d in log[key].acked("count")]
        have = mine.get(key, 0)
        extra = have - len(acked)
        if extra < 0:
            result.problems.append(
                f"counter {key}: {have}, but {len(acked)} increments were acknowledged "
                f"({-extra} lost)"
            )
        elif extra > killed(key):
            result.problems.append(
                f"counter {key}: {have}, {len(acked)} acknowledged: {extra} more than the "
                f"{killed(key)} kills of its process could leave in flight"
            )
        else:
            result.in_flight_counts += extra
        if any(b <= a for a, b in itertools.pairwise(acked)) or (acked and acked[-1] > have):
            result.problems.append(
                f"counter {key}: update_json returned values out of order or above it: {acked[-5:]}"
            )


def _verify_transaction(
    tree: Path, log: dict[str, Log], attempted: Callable[[Version], bool], problems: list[str]
) -> None:
    if not any(g.acked("tx") for g in log.values()):
        return
    found = {n: check(f"{TX}/{n}", read_or_none(tree / TX / n)) for n in TX_FILES}
    versions = set(found.values())
    if len(versions) != 1 or any(isinstance(v, str) for v in versions):
        problems.append(f"transaction: not one generation: {found}")
        return
    (v,) = versions
    assert not isinstance(v, str)
    extra = read_or_none(tree / TX / TX_EXTRA)
    if not attempted(v):
        problems.append(f"transaction: generation {v} was never committed")
    if (extra is not None) != (v[2] % 2 == 0) or (
        extra is not None and check(f"{TX}/{TX_EXTRA}", extra) != v
    ):
        problems.append(f"transaction: {TX_EXTRA} does not belong to generation {v}")


def _verify_checksums(
    tree: Path, log: dict[str, Log], in_flight: Callable[[str], list[Version]], problems: list[str]
) -> None:
    stored = dict(ChecksumStore(tree / JSON / STORE).items())
    for key, g in sorted(log.items()):
        acked = g.acked("checksum")
        if not acked:
            continue
        rel = f"{CHECKED}/{key}.bin"
        inc, seq, returned = acked[-1]
        last: Version = (key, inc, seq)

        def digest(v: Version, rel: str = rel) -> str:
            return hashlib.sha256(payload(rel, v)).hexdigest()

        if returned != digest(last):
            problems.append(f"checksum of {rel}: record() returned {returned} for {last}")
        later = [v for v in in_flight(key) if v > last]
        allowed = {digest(v) for v in [last, *later]}
        have = stored.get(os.path.abspath(tree / rel))
        if have not in allowed:
            problems.append(f"checksum of {rel}: the store holds {have}, not that of {last}")
