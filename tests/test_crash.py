"""Crashes: kill -9 right after every syscall in turn, and a power cut right after every syscall.

Promise 1 (all or nothing) against a killed writer and against a power cut at
any step, promise 2 (durable on return) against a power cut right after the
call returned, promise 4 (no debris) through :func:`crashsafe.sweep`.

The power-cut harness must catch a broken protocol or it proves nothing: two
deliberately broken writers (no fsync at all; fsync of the file but none of
the directory) run through the same harness, which must report the damage
docs/proving.md measured for them. The machinery is in :mod:`tests.harness.kill9`
and :mod:`tests.harness.power_cut`, the writer programs in ``tests/writers/``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from tests.harness import power_cut, traces
from tests.harness.kill9 import kill9_torture
from tests.harness.one_file import (
    NEW,
    check_durable,
    commit_of,
    cut_one_file,
    damage,
    durable_marks,
)
from tests.harness.payloads import payload
from tests.harness.power_cut import WRITERS
from tests.harness.summary import module_summary

WRITE_ATOMIC = WRITERS / "write_atomic.py"
# Deliberately broken: temp + rename, no fsync at all, or none of the directory.
WRITE_BROKEN = WRITERS / "write_broken.py"


_note, _print_summary = module_summary("crash harness summary")


# --------------------------------------------------------------------------- kill -9


@pytest.mark.slow
@pytest.mark.parametrize("staging", ["tmpfile", "named"])
def test_kill9_torture_never_tears_and_sweep_cleans(
    torture_dir: tuple[str, Path], staging: str
) -> None:
    where, directory = torture_dir
    kills = 200
    result = kill9_torture(directory, kills=kills, staging=staging)
    _note(
        f"kill -9   {where:<9} {staging:<8} {result.kills} kills: torn {result.torn} "
        f"{dict(result.outcomes)}, changed after {result.changed}, "
        f"orphans {result.orphans_before_sweep} -> swept {result.swept} -> "
        f"left {len(result.left_after_sweep)}; at {result.plan()}, {result.seconds:.1f} s"
    )
    assert result.kills == kills
    assert result.outcomes == Counter(complete=kills), result.outcomes
    # A write that returned before the kill is in place.
    assert result.returned_then_lost() == []
    # The kills landed in every phase (by construction: right after each call
    # of two writes in turn): some before a commit, some after one.
    assert 0 < result.changed < kills
    if staging == "named":
        # ...and some while the named temporary file existed.
        assert result.orphans_before_sweep > 0
    assert result.swept == result.orphans_before_sweep
    assert result.left_after_sweep == []
    assert os.listdir(directory) == ["target"]


# --------------------------------------------------------------------------- power cut


def _run(
    mnt: Path, tmp_path: Path, writer: Path, extra: list[str], *, crashsafe_temps: bool
) -> tuple[power_cut.PowerCutRun, Path]:
    source = tmp_path / "new.bin"
    source.write_bytes(payload(NEW))
    return cut_one_file(mnt, writer, source, extra, crashsafe_temps=crashsafe_temps)


@pytest.mark.slow
@pytest.mark.parametrize("staging", ["tmpfile", "named"])
def test_power_cut_at_every_syscall_of_a_durable_write(
    cut_fs: tuple[str, Path], tmp_path: Path, staging: str
) -> None:
    fs, mnt = cut_fs
    run, directory = _run(mnt, tmp_path, WRITE_ATOMIC, [staging, "durable"], crashsafe_temps=True)
    commit, dir_sync = durable_marks(run, directory)
    _note(
        power_cut.describe(
            fs, f"durable {staging}", run, f"commit #{commit}, dir fsync #{dir_sync}"
        )
    )

    check_durable(run, directory, commit, dir_sync)


@pytest.mark.slow
def test_power_cut_consistent_is_never_torn(cut_fs: tuple[str, Path], tmp_path: Path) -> None:
    fs, mnt = cut_fs
    run, directory = _run(
        mnt, tmp_path, WRITE_ATOMIC, ["tmpfile", "consistent"], crashsafe_temps=True
    )
    commit = commit_of(run)
    assert traces.dir_sync_index(run.trace, str(directory), commit) is None
    old_after_return = [t for t in run.trials if t.point.index >= run.end and t.outcome == "old"]
    _note(
        power_cut.describe(fs, "consistent tmpfile", run, f"commit #{commit}")
        + f"; old after return: {len(old_after_return)}"
        + (f" ({', '.join(t.mode for t in old_after_return)})" if old_after_return else "")
    )
    # Old or new at every point, old before the commit; old after return is allowed.
    assert power_cut.violations(run, commit, None) == []
    assert [t.left_after_sweep for t in run.trials if t.left_after_sweep] == []


@pytest.mark.slow
def test_harness_catches_rename_without_fsync(cut_fs: tuple[str, Path], tmp_path: Path) -> None:
    fs, mnt = cut_fs
    run, _ = _run(mnt, tmp_path, WRITE_BROKEN, ["no-fsync"], crashsafe_temps=False)
    commit = commit_of(run)
    caught, caught_text = damage(run)
    _note(power_cut.describe(fs, "BROKEN no fsync", run, f"commit #{commit}") + caught_text)
    # The harness must see what docs/proving.md measured: an empty (or zero-filled,
    # or partial) target once the rename reached the journal without the data.
    assert caught, "the harness missed the missing fsync: it proves nothing"
    assert power_cut.violations(run, commit, None) != []


@pytest.mark.slow
def test_harness_catches_missing_directory_fsync(cut_fs: tuple[str, Path], tmp_path: Path) -> None:
    fs, mnt = cut_fs
    run, _ = _run(mnt, tmp_path, WRITE_BROKEN, ["fsync-file"], crashsafe_temps=False)
    commit = commit_of(run)
    after_return = [t for t in run.trials if t.point.index >= run.end]
    old = [t.mode for t in after_return if t.outcome == "old"]
    _note(
        power_cut.describe(fs, "BROKEN no dir fsync", run, f"commit #{commit}")
        + f"; old after return: {len(old)} of {len(after_return)} ({', '.join(old)})"
    )
    # The call returned, the power went, the old content came back: the same
    # check that passes for crashsafe's durable writes fails here.
    assert old, "the harness missed the missing directory fsync: it proves nothing"
    assert any(
        why == "old after return" for why, _, _ in power_cut.violations(run, commit, run.end)
    )
