"""Crashes: kill -9 right after every syscall in turn, and a power cut right after every syscall.

Promise 1 (all or nothing) against a killed writer and against a power cut at
any step, promise 2 (durable on return) against a power cut right after the
call returned, promise 4 (no debris) through :func:`crashsafe.sweep`.

The power-cut harness must catch a broken protocol or it proves nothing: two
deliberately broken writers (no fsync at all; fsync of the file but none of
the directory) run through the same harness, which must report the damage
docs/proving.md measured for them. The machinery is in :mod:`tests.harness.crash`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import crash
from tests.harness.checks import leftovers
from tests.harness.mounts import tmpfs
from tests.harness.summary import module_summary

OLD, NEW = 1, 2
BAD = ("missing", "empty", "zeros", "partial", "torn")

# The writers run under strace (PRELUDE gives them start() and end()).
CRASHSAFE_WRITER = """
import crashsafe
import crashsafe._platform._posix as posix
target, source, staging, durability = sys.argv[1:5]
posix.use_tmpfile = staging == "tmpfile"
with open(source, "rb") as f:
    data = f.read()
start()
crashsafe.atomic_write(target, data, durability=durability)
end()
"""

# Deliberately broken: temp + rename, plain os calls. FSYNC_FILE selects the
# variant: False = no fsync at all; True = fsync of the file, none of the directory.
BROKEN_WRITER = """
target, source = sys.argv[1:3]
fsync_file = sys.argv[3] == "fsync-file"
temp = os.path.join(os.path.dirname(target), ".target.broken-tmp")
with open(source, "rb") as f:
    data = f.read()
start()
fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
view = memoryview(data)
while view:
    view = view[os.write(fd, view):]
if fsync_file:
    os.fsync(fd)
os.close(fd)
os.rename(temp, target)
end()
"""


_note, _print_summary = module_summary("crash harness summary")


# --------------------------------------------------------------------------- kill -9


@pytest.fixture(params=["ext4-tmp", "tmpfs"])
def torture_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if request.param == "ext4-tmp":
        yield request.param, tmp_path
    else:
        # Named orphans of 1 MiB pile up until the sweep: room for all of them.
        with tmpfs(size_kb=400 << 10) as mnt:
            yield request.param, mnt


@pytest.mark.slow
@pytest.mark.parametrize("staging", ["tmpfile", "named"])
def test_kill9_torture_never_tears_and_sweep_cleans(
    torture_dir: tuple[str, Path], staging: str
) -> None:
    where, directory = torture_dir
    kills = 200
    result = crash.kill9_torture(directory, kills=kills, staging=staging)
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
    mnt: Path, tmp_path: Path, script: str, extra: list[str], *, crashsafe_temps: bool
) -> tuple[crash.PowerCutRun, Path]:
    directory = mnt / "d"
    directory.mkdir()
    target = directory / "target"
    source = tmp_path / "new.bin"
    source.write_bytes(crash.payload(NEW))

    def prepare() -> None:
        for name in os.listdir(directory):
            if name != "target":
                os.unlink(directory / name)
        crash.durable_put(target, crash.payload(OLD))

    def inspect() -> str:
        found = crash.classify(crash.read_or_none(target))
        return "old" if found == OLD else "new" if found == NEW else str(found)

    run = crash.power_cut_every_syscall(
        mnt,
        script,
        [str(target), str(source), *extra],
        prepare=prepare,
        inspect=inspect,
        sweep_dir=directory if crashsafe_temps else None,
    )
    return run, directory


@pytest.mark.slow
@pytest.mark.parametrize("staging", ["tmpfile", "named"])
def test_power_cut_at_every_syscall_of_a_durable_write(
    cut_fs: tuple[str, Path], tmp_path: Path, staging: str
) -> None:
    fs, mnt = cut_fs
    run, directory = _run(
        mnt, tmp_path, CRASHSAFE_WRITER, [staging, "durable"], crashsafe_temps=True
    )
    commit = crash.commit_index(run.trace, "target")
    assert commit is not None, "no rename or link onto the target in the trace"
    dir_sync = crash.dir_sync_index(run.trace, str(directory), commit)
    assert dir_sync is not None, "no fsync of the directory after the commit"
    _note(crash.describe(fs, f"durable {staging}", run, f"commit #{commit}, dir fsync #{dir_sync}"))

    assert crash.violations(run, commit, dir_sync) == []
    # Every trial ran and both sides of the commit point were seen.
    assert len(run.trials) == len(run.trace) * len(crash.MODES)
    assert {t.outcome for t in run.trials} == {"old", "new"}
    # Crashes left temporary files (the named one, or the O_TMPFILE's link
    # name between linkat and rename), and sweep() removed every one.
    assert sum(len(t.leftovers) for t in run.trials) > 0
    assert [t.left_after_sweep for t in run.trials if t.left_after_sweep] == []
    assert leftovers(directory) == []


@pytest.mark.slow
def test_power_cut_consistent_is_never_torn(cut_fs: tuple[str, Path], tmp_path: Path) -> None:
    fs, mnt = cut_fs
    run, directory = _run(
        mnt, tmp_path, CRASHSAFE_WRITER, ["tmpfile", "consistent"], crashsafe_temps=True
    )
    commit = crash.commit_index(run.trace, "target")
    assert commit is not None
    assert crash.dir_sync_index(run.trace, str(directory), commit) is None
    old_after_return = [t for t in run.trials if t.point.index >= run.end and t.outcome == "old"]
    _note(
        crash.describe(fs, "consistent tmpfile", run, f"commit #{commit}")
        + f"; old after return: {len(old_after_return)}"
        + (f" ({', '.join(t.mode for t in old_after_return)})" if old_after_return else "")
    )
    # Old or new at every point, old before the commit; old after return is allowed.
    assert crash.violations(run, commit, None) == []
    assert [t.left_after_sweep for t in run.trials if t.left_after_sweep] == []


@pytest.mark.slow
def test_harness_catches_rename_without_fsync(cut_fs: tuple[str, Path], tmp_path: Path) -> None:
    fs, mnt = cut_fs
    run, _ = _run(mnt, tmp_path, BROKEN_WRITER, ["no-fsync"], crashsafe_temps=False)
    commit = crash.commit_index(run.trace, "target")
    assert commit is not None
    caught = [(t.outcome, t.mode, str(t.point)) for t in run.trials if t.outcome in BAD]
    _note(
        crash.describe(fs, "BROKEN no fsync", run, f"commit #{commit}")
        + f"; caught {len(caught)}: "
        + "; ".join(f"{o} ({m}) after {p.split('(')[0]}" for o, m, p in caught)
    )
    # The harness must see what docs/proving.md measured: an empty (or zero-filled,
    # or partial) target once the rename reached the journal without the data.
    assert caught, "the harness missed the missing fsync: it proves nothing"
    assert crash.violations(run, commit, None) != []


@pytest.mark.slow
def test_harness_catches_missing_directory_fsync(cut_fs: tuple[str, Path], tmp_path: Path) -> None:
    fs, mnt = cut_fs
    run, _ = _run(mnt, tmp_path, BROKEN_WRITER, ["fsync-file"], crashsafe_temps=False)
    commit = crash.commit_index(run.trace, "target")
    assert commit is not None
    after_return = [t for t in run.trials if t.point.index >= run.end]
    old = [t.mode for t in after_return if t.outcome == "old"]
    _note(
        crash.describe(fs, "BROKEN no dir fsync", run, f"commit #{commit}")
        + f"; old after return: {len(old)} of {len(after_return)} ({', '.join(old)})"
    )
    # The call returned, the power went, the old content came back: the same
    # check that passes for crashsafe's durable writes fails here.
    assert old, "the harness missed the missing directory fsync: it proves nothing"
    assert any(why == "old after return" for why, _, _ in crash.violations(run, commit, run.end))
