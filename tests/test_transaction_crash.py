"""transaction(): kill -9 and a power cut right after every syscall of a commit.

Issue 4's promise for ``crashsafe.transactions.transaction(directory)``: after a
crash at any point, once recovery has run, the files of a transaction are all
old or all new, never a mix; a concurrent reader through ``snapshot()`` never
sees a mix either. Proven here with four files (one of them a 0o600 key) and a
fifth name that each commit writes or removes in turn:

* kill -9 of a writer that commits generation after generation, right after
  each syscall of two commits that touches the directory, in turn (200 kills
  per staging path and filesystem, :func:`tests.harness.kill9_loop`):
  after each kill, ``recover()`` (or ``snapshot()``, which
  recovers by itself, leaving staged debris to the next writer's own recovery)
  finds one complete generation, never an older one than before; recovery
  rolls forward exactly when the journal exists and back otherwise; no
  protocol name is left after recovery, no file is ever more permissive than
  its final mode, and ``sweep()`` removes every temporary file. A reader
  running ``snapshot()`` throughout the kills never sees a mix.
* A power cut (the shutdown ioctl, on loop xfs and on ext4 ``noauto_da_alloc``)
  right after every syscall of a four-file commit, in the ``commit`` and ``cut``
  modes of :func:`tests.harness.power_cut.power_cut_every_syscall`: after the
  remount and ``recover()``, all old before the journal is linked, all new once
  the journal's directory fsync returned (and so after the call returned),
  never a mix.
* The harness is shown to catch a broken protocol: the same files replaced one
  by one with ``crashsafe.atomic_write`` (each write atomic, the set not)
  through the same power-cut harness leaves mixes.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from crashsafe.transactions import JOURNAL, LOCK, recover, snapshot, transaction
from tests import children
from tests.harness import generations, power_cut, traces
from tests.harness.checks import leftovers
from tests.harness.kill9 import kill9_loop
from tests.harness.mounts import loop_mount
from tests.harness.power_cut import WRITERS
from tests.harness.summary import module_summary

TX_COMMIT = WRITERS / "tx_commit.py"
# Deliberately broken: the same files replaced one by one with atomic_write, no journal.
TX_BROKEN = WRITERS / "tx_broken.py"

_note, _print_summary = module_summary("transaction crash summary")


def _writer(directory: Path, durability: str = "durable") -> Callable[[int], None]:
    def write(generation: int) -> None:
        with transaction(directory, durability=durability) as tx:  # type: ignore[arg-type]
            generations.write_generation(tx, generation)

    return write


def _snapshot_generation(directory: Path) -> int | str:
    with snapshot(directory) as snap:
        return generations.classify_generation(lambda n: snap.read(n) if snap.exists(n) else None)


class RecoveringCheck:
    """kill9_loop's check(): after each kill, look at what the kill left, recover, and
    name the generation. Odd calls recover with ``recover()``; even calls read through
    ``snapshot()`` (which completes a journal by itself) and leave staged files
    without a journal to the next writer's ``transaction()``, whose own recovery the
    next kill may interrupt."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.calls = 0
        self.recoveries: Counter[str] = Counter()
        self.mixed_before = 0
        self.problems: list[str] = []

    def __call__(self) -> int | str:
        self.calls += 1
        if self.calls % 2:
            state = generations.inspect_transaction(self.directory)
            self.recoveries[f"recover(): {state.recovery}"] += 1
            self.mixed_before += str(state.before).startswith("mixed")
            if state.problems():
                self.problems.append(f"after kill check {self.calls}: {state.problems()}")
                return "problem (see the list)"
            return state.after
        journal = os.path.lexists(self.directory / JOURNAL)
        staged = [n for n in generations.protocol_leftovers(self.directory) if n != JOURNAL]
        exposed = generations.exposed_entries(self.directory)
        before = generations.read_generation(self.directory)
        self.mixed_before += str(before).startswith("mixed")
        found = _snapshot_generation(self.directory)
        if journal:
            self.recoveries["snapshot(): forward"] += 1
        elif staged:
            self.recoveries["left to the writer: back"] += 1
        else:
            self.recoveries["snapshot(): none"] += 1
        if os.path.lexists(self.directory / JOURNAL) or exposed:
            self.problems.append(f"after kill check {self.calls}: journal left or {exposed}")
            return "problem (see the list)"
        if not journal and found != before:
            self.problems.append(f"snapshot read {found}, the files held {before}")
            return "problem (see the list)"
        return found


@pytest.mark.slow
@pytest.mark.parametrize("staging", ["tmpfile", "named"])
def test_kill9_at_every_syscall_then_recovery_is_never_a_mix(
    torture_dir: tuple[str, Path], staging: str
) -> None:
    where, directory = torture_dir
    kills = 200
    with transaction(directory) as tx:
        generations.write_generation(tx, 1)
    check = RecoveringCheck(directory)
    result = kill9_loop(
        directory,
        kills=kills,
        write=_writer(directory),
        check=check,
        staging=staging,
        min_age=0,
    )
    # The last kill may have left staged files to the next writer: recover them.
    recover(directory)
    final = generations.read_generation(directory)
    _note(
        f"kill -9 {where:<8} {staging:<8} {result.kills} kills: {dict(result.outcomes)}, "
        f"generation advanced after {result.changed}, final generation {final}; "
        f"recoveries {dict(sorted(check.recoveries.items()))}; mixed before recovery "
        f"{check.mixed_before}; temp files {result.orphans_before_sweep} -> swept "
        f"{result.swept} -> left {len(result.left_after_sweep)}; at {result.plan()}, "
        f"{result.seconds:.1f} s"
    )
    assert check.problems == []
    assert result.kills == kills
    assert result.outcomes == Counter(complete=kills), result.outcomes
    # Kills landed before and after commits, and on both sides of the commit
    # point (by construction: right after each call of two commits, in turn).
    assert 0 < result.changed < kills
    assert check.recoveries["recover(): forward"] + check.recoveries["snapshot(): forward"] > 0
    assert check.recoveries["recover(): back"] + check.recoveries["left to the writer: back"] > 0
    assert result.left_after_sweep == []
    assert isinstance(final, int)
    assert generations.protocol_leftovers(directory) == []
    assert set(os.listdir(directory)) <= {LOCK, *generations.TX_NAMES}


SNAPSHOT_READER = WRITERS / "snapshot_reader.py"


@pytest.mark.slow
def test_kill9_with_a_concurrent_snapshot_reader(tmp_path: Path) -> None:
    """A reader loops on snapshot() while the writer is killed 100 times; it recovers
    interrupted commits by itself and never sees a mix. Every tenth kill, the test
    asks it for a snapshot and waits for the answer: it read during the kills,
    and saw the generations advance, whatever the machine's load."""
    directory = tmp_path / "d"
    directory.mkdir()
    with transaction(directory) as tx:
        generations.write_generation(tx, 1)
    reader = children.start(SNAPSHOT_READER, str(directory), text=True)
    asked: list[int | str] = []
    kills = 0

    def check() -> int | str:
        nonlocal kills
        kills += 1
        found = _snapshot_generation(directory)
        if kills % 10 == 0:
            assert reader.stdin is not None and reader.stdout is not None
            reader.stdin.write("read\n")
            reader.stdin.flush()
            asked.append(json.loads(reader.stdout.readline()))
        return found

    try:
        assert reader.stdout is not None and reader.stdin is not None
        assert reader.stdout.readline() == "ready\n"
        result = kill9_loop(
            directory,
            kills=100,
            write=_writer(directory),
            check=check,
            staging="tmpfile",
            min_age=0,
        )
        out, _ = reader.communicate("stop\n", timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    seen = json.loads(out)
    _note(
        f"kill -9 with a snapshot() reader: {result.kills} kills, {dict(result.outcomes)}, "
        f"advanced after {result.changed}; reader: {seen['reads']} reads, "
        f"{seen['generations']} generations, bad {seen['bad']}; asked after every tenth "
        f"kill, it read {asked}; {result.seconds:.1f} s"
    )
    assert reader.returncode == 0
    assert seen["bad"] == {}
    assert all(isinstance(g, int) for g in asked), asked
    # Asked 10 times during the kills (the first check ran before them), it saw
    # the generations advance.
    assert len(asked) == 10 and len(set(asked)) > 1, asked
    assert seen["reads"] >= len(asked) and seen["generations"] > 1
    assert result.outcomes == Counter(complete=100), result.outcomes
    assert result.left_after_sweep == []
    recover(directory)
    assert isinstance(generations.read_generation(directory), int)
    assert generations.protocol_leftovers(directory) == []


# --------------------------------------------------------------------------- power cut


def _power_cut(
    mnt: Path, tmp_path: Path, writer: Path, staging: str
) -> tuple[power_cut.PowerCutRun, Path]:
    directory = mnt / "d"
    directory.mkdir()
    args = generations.tx_writer_args(directory, tmp_path / "source", 2, staging=staging)
    run = power_cut.power_cut_every_syscall(
        mnt,
        writer,
        args,
        prepare=lambda: generations.prepare_generation(directory, 1),
        inspect=lambda: generations.inspect_transaction(directory),
        sweep_dir=directory,
    )
    return run, directory


def _label(after: int | str) -> str:
    if after in (1, 2):
        return "old" if after == 1 else "new"
    return "MIXED" if str(after).startswith("mixed") else str(after)


def _outcomes(run: power_cut.PowerCutRun) -> dict[str, int]:
    found = Counter(f"{t.mode}:{_label(t.outcome.after)}" for t in run.trials)
    return dict(sorted(found.items()))


@pytest.mark.slow
@pytest.mark.parametrize("staging", ["tmpfile", "named"])
def test_power_cut_at_every_syscall_of_a_four_file_commit(
    cut_fs: tuple[str, Path], tmp_path: Path, staging: str
) -> None:
    fs, mnt = cut_fs
    run, directory = _power_cut(mnt, tmp_path, TX_COMMIT, staging)
    commit = traces.commit_index(run.trace, JOURNAL)
    assert commit is not None, "no link of the journal in the trace"
    durable = traces.dir_sync_index(run.trace, str(directory), commit)
    assert durable is not None, "no directory fsync after the journal was linked"
    states: list[generations.TxState] = [t.outcome for t in run.trials]
    recoveries = Counter(f"{t.mode}:{t.outcome.recovery}" for t in run.trials)
    mixed_before = Counter(t.mode for t in run.trials if str(t.outcome.before).startswith("mixed"))
    temps = sum(len(t.leftovers) for t in run.trials)
    _note(
        f"power cut {fs:<20} {staging:<8} {len(run.trace)} crash points x "
        f"{len(power_cut.MODES)} modes = {len(run.trials)} trials (journal linked #{commit}, its "
        f"dir fsync #{durable}, end #{run.end}): after recovery {_outcomes(run)}; recoveries "
        f"{dict(sorted(recoveries.items()))}; mixed before recovery {dict(mixed_before)}; "
        f"temp files {temps} -> left {sum(len(t.left_after_sweep) for t in run.trials)}; "
        f"{run.seconds:.0f} s, drifts {run.drifts}"
    )
    problems = [(t.mode, str(t.point), t.outcome.problems()) for t in run.trials]
    assert [p for p in problems if p[2]] == []
    wrong = []
    for t in run.trials:
        i = t.point.index
        if t.outcome.after not in (1, 2):
            wrong.append((t.mode, str(t.point), f"{t.outcome.after}"))
        elif i < commit and t.outcome.after != 1:
            wrong.append((t.mode, str(t.point), "new before the journal was linked"))
        elif i >= durable and t.outcome.after != 2:
            why = "old after return" if i >= run.end else "old after the journal's dir fsync"
            wrong.append((t.mode, str(t.point), why))
    assert wrong == []
    assert len(run.trials) == len(run.trace) * len(power_cut.MODES)
    assert {s.after for s in states} == {1, 2}
    # Recovery was exercised both ways, and was needed: some cuts left a mix on disk.
    assert any(s.recovery == "forward" for s in states)
    assert any(s.recovery == "back" for s in states)
    assert sum(mixed_before.values()) > 0
    assert [t.left_after_sweep for t in run.trials if t.left_after_sweep] == []
    assert leftovers(directory) == []
    assert generations.protocol_leftovers(directory) == []


@pytest.mark.slow
def test_harness_catches_files_replaced_one_by_one(tmp_path: Path) -> None:
    """Deliberately broken: the same four files and removal done one by one with
    atomic_write (each of them crash-safe, the set not). The harness must find mixes,
    or the transaction test above proves nothing."""
    power_cut.require_power_cut()
    with loop_mount("xfs") as mnt, power_cut.writeback_off():
        run, _ = _power_cut(mnt, tmp_path, TX_BROKEN, "tmpfile")
    mixed = [t for t in run.trials if str(t.outcome.after).startswith("mixed")]
    _note(
        f"power cut xfs BROKEN one by one   {len(run.trace)} crash points x "
        f"{len(power_cut.MODES)} modes = {len(run.trials)} trials: after recovery "
        f"{_outcomes(run)}; recover() did something in "
        f"{sum(t.outcome.recovered for t in run.trials)}; caught {len(mixed)} mixes, e.g. "
        f"{mixed[0].outcome.after if mixed else None} after {mixed[0].point if mixed else None}"
        f"; {run.seconds:.0f} s"
    )
    assert mixed, "the harness saw no mix from a protocol without a journal: it proves nothing"
    assert {t.mode for t in mixed} == set(power_cut.MODES)
    assert not any(t.outcome.recovered for t in run.trials)
