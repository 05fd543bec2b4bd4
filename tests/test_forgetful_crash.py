"""Power cuts where the shutdown ioctl does not reach: btrfs and overlayfs, through a
filesystem that forgets.

The shutdown ioctl cuts the power of ext4 and xfs only (tests/test_crash.py and its
siblings). Here the same writers from ``tests/writers/`` run on the FUSE filesystem of
:mod:`tests.harness.forgetful`, mounted over a directory of a loop btrfs and of an
overlayfs (upper layer on a loop ext4): it passes everything through and keeps account
of what was fsynced. :func:`tests.harness.forgetful_cut.forget_every_syscall` freezes the
writer right after each of its syscalls, kills it, and then puts in place, one after
another, the states a power cut at that instant may leave by the conservative model of
CONTRACT.md (unsynced writes, creates, renames, links and unlinks lost or kept in any
combination, writes torn); after each, the test's checks, a count of temporary files
and ``sweep``. Promises 1 (all or nothing), 2 (durable on return) and 4 (no debris) for:

* ``atomic_write`` and ``atomic_copy`` (durable): old up to the rename, new from the
  directory fsync on, never anything else;
* ``transaction`` (a four-file commit and a removal, then ``recover()``): all old
  before the journal is linked, all new from its directory fsync on, never a mix;
* ``write_many`` (six files in two directories, cuts in every thread): every file old
  or new, all new once the call returned.

The harness must catch broken protocols or it proves nothing: temp + rename without
any fsync (the target found empty or torn), without the directory fsync (the old
content after the call returned), a copy without fsync, files replaced one by one (a
mix), a batch without fsync (empty files) and ``write_many`` with
``durability="consistent"`` (an old file after return).

On FUSE ``O_TMPFILE`` is refused, so crashsafe stages named files here (its documented
fallback): the trials see those names, and sweep them. States per crash point are
capped (:func:`tests.harness.forgetful_cut.states_per_point`: 6 by default, for CI;
``CRASHSAFE_FORGETFUL_STATES=all`` enumerates every distinct state the filesystem
lists, up to its own bound).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from crashsafe.transactions import JOURNAL
from tests.harness import generations, traces
from tests.harness.batch_cut import BAD as BATCH_BAD
from tests.harness.batch_cut import DIRS, NAMES, describe_batch, power_cut_batch
from tests.harness.checks import leftovers
from tests.harness.forgetful import Forgetful, forgetful, require_forgetful
from tests.harness.forgetful_cut import ForgetRun, describe, forget_every_syscall, forget_runner
from tests.harness.mounts import loop_mount, overlay
from tests.harness.one_file import BAD, NEW, one_file
from tests.harness.payloads import durable_put, payload
from tests.harness.power_cut import WRITERS, violations
from tests.harness.require import require_tools
from tests.harness.summary import module_summary

SIZE = 64 << 10  # 16 pieces of 4096 bytes: torn writes have room, restores stay quick
WRITE_ATOMIC = WRITERS / "write_atomic.py"
COPY_ATOMIC = WRITERS / "copy_atomic.py"
TX_COMMIT = WRITERS / "tx_commit.py"
BATCH_COMMIT = WRITERS / "batch_commit.py"
# Deliberately broken twins: temp + rename with no fsync, or none of the directory;
# shutil.copyfile + rename, no fsync; files replaced one by one; a batch, no fsync.
WRITE_BROKEN = WRITERS / "write_broken.py"
COPY_BROKEN = WRITERS / "copy_broken.py"
TX_BROKEN = WRITERS / "tx_broken.py"
BATCH_BROKEN = WRITERS / "batch_broken.py"

_note, _print_summary = module_summary("forgetful crash summary")


@contextlib.contextmanager
def _forgetful_on(kind: str) -> Iterator[Forgetful]:
    require_forgetful()
    require_tools("strace")
    if kind == "btrfs":
        with loop_mount("btrfs") as mnt:
            (mnt / "backing").mkdir()
            with forgetful(mnt / "backing") as fs:
                yield fs
    else:
        with loop_mount("ext4") as upper, overlay(upper) as merged:
            (merged / "backing").mkdir()
            with forgetful(merged / "backing") as fs:
                yield fs


@pytest.fixture(params=["btrfs", "overlayfs"])
def forget_fs(request: pytest.FixtureRequest) -> Iterator[tuple[str, Forgetful]]:
    """The filesystem that forgets over a directory of a fresh loop btrfs, or of an
    overlayfs whose upper layer is a fresh loop ext4; yields ``(label, fs)``."""
    with _forgetful_on(request.param) as fs:
        yield request.param, fs


@pytest.fixture
def forget_btrfs() -> Iterator[tuple[str, Forgetful]]:
    """The same over btrfs only, for the broken twins: what they must show comes
    from the filesystem's model of durability, not from the filesystem beneath it,
    so one is enough (and keeps the suite's time down)."""
    with _forgetful_on("btrfs") as fs:
        yield "btrfs", fs


# --------------------------------------------------------------------------- one file


def _one_file(
    fs: Forgetful, tmp_path: Path, writer: Path, extra: list[str], *, copy: bool = False
) -> tuple[ForgetRun, Path]:
    """``mnt/d/target`` (old) replaced by *writer* with the content of a source (new):
    on the mount for a copy, outside it otherwise. Temporary files are counted in
    ``mnt/d`` and swept after every state."""
    if copy:
        (fs.mnt / "src").mkdir()
        source = fs.mnt / "src" / "new.bin"
        durable_put(source, payload(NEW, SIZE))
    else:
        source = tmp_path / "new.bin"
        source.write_bytes(payload(NEW, SIZE))
    directory, prepare, inspect = one_file(fs.mnt, source, size=SIZE)
    run = forget_every_syscall(
        fs,
        writer,
        [str(directory / "target"), str(source), *extra],
        prepare=prepare,
        inspect=inspect,
        sweep_dir=directory,
    )
    return run, directory


def _marks(run: ForgetRun, directory: Path) -> tuple[int, int]:
    commit = traces.commit_index(run.run.trace, "target")
    assert commit is not None, "no rename or link onto the target in the trace"
    dir_sync = traces.dir_sync_index(run.run.trace, str(directory), commit)
    assert dir_sync is not None, "no fsync of the directory after the commit"
    return commit, dir_sync


def _check_durable(run: ForgetRun, directory: Path, commit: int, dir_sync: int) -> None:
    """Old or new in every state at every point, old before the commit, new from the
    directory fsync on; both seen; some states held temporary files, all swept."""
    r = run.run
    bad = violations(r, commit, dir_sync)
    assert bad == [], [run.example(i) for i, t in enumerate(r.trials) if t.outcome != "new"][:5]
    assert len(r.trials) == sum(run.offered) > len(r.points)
    assert len(run.offered) == len(r.points)
    assert {t.outcome for t in r.trials} == {"old", "new"}
    # Between the rename and the directory fsync the rename may be lost or kept:
    # both were seen there (the model forgets directory changes, as it must).
    window = {t.outcome for t in r.trials if commit <= t.point.index < dir_sync}
    assert window == {"old", "new"}, window
    assert sum(len(t.leftovers) for t in r.trials) > 0
    assert [t.left_after_sweep for t in r.trials if t.left_after_sweep] == []
    assert leftovers(directory) == []


def _caught(run: ForgetRun) -> tuple[list[int], str]:
    """The trials that found the target damaged, and a line naming them."""
    found = [i for i, t in enumerate(run.run.trials) if t.outcome in BAD]
    kinds = Counter(str(run.run.trials[i].outcome) for i in found)
    example = f"; e.g. {run.example(found[0])}" if found else ""
    return found, f"; caught {len(found)} {dict(kinds)}{example}"


@pytest.mark.slow
def test_forgetful_power_cut_at_every_syscall_of_a_durable_write(
    forget_fs: tuple[str, Forgetful], tmp_path: Path
) -> None:
    label, fs = forget_fs
    run, directory = _one_file(fs, tmp_path, WRITE_ATOMIC, ["tmpfile", "durable"])
    commit, dir_sync = _marks(run, directory)
    _note(describe(label, "atomic_write durable", run, f"commit #{commit}, dir fsync #{dir_sync}"))
    _check_durable(run, directory, commit, dir_sync)


@pytest.mark.slow
def test_forgetful_power_cut_at_every_syscall_of_a_durable_copy(
    forget_fs: tuple[str, Forgetful], tmp_path: Path
) -> None:
    label, fs = forget_fs
    run, directory = _one_file(fs, tmp_path, COPY_ATOMIC, ["tmpfile"], copy=True)
    method = traces.copy_method(run.run.trace)
    commit, dir_sync = _marks(run, directory)
    marks = f"{method}, commit #{commit}, dir fsync #{dir_sync}"
    _note(describe(label, "atomic_copy durable", run, marks))
    # No reflink through FUSE; the filesystem does not implement copy_file_range,
    # so the kernel copies through it with reads and writes (each write recorded,
    # and tearable, like any other).
    assert method != "reflink", method
    _check_durable(run, directory, commit, dir_sync)


@pytest.mark.slow
def test_forgetful_harness_catches_rename_without_fsync(
    forget_btrfs: tuple[str, Forgetful], tmp_path: Path
) -> None:
    label, fs = forget_btrfs
    run, _ = _one_file(fs, tmp_path, WRITE_BROKEN, ["no-fsync"])
    found, text = _caught(run)
    _note(describe(label, "BROKEN no fsync", run, "temp + rename") + text)
    # The rename kept, the data lost (or torn): what the model allows and the
    # durable protocol's fsync before the rename rules out.
    assert found, "the harness missed the missing fsync: it proves nothing"


@pytest.mark.slow
def test_forgetful_harness_catches_missing_directory_fsync(
    forget_btrfs: tuple[str, Forgetful], tmp_path: Path
) -> None:
    label, fs = forget_btrfs
    run, _ = _one_file(fs, tmp_path, WRITE_BROKEN, ["fsync-file"])
    r = run.run
    commit = traces.commit_index(r.trace, "target")
    assert commit is not None
    lost = [
        i for i, (why, _, _) in enumerate(violations(r, commit, r.end)) if why == "old after return"
    ]
    after = [t for t in r.trials if t.point.index >= r.end]
    _note(
        describe(label, "BROKEN no dir fsync", run, f"commit #{commit}")
        + f"; lost after return (old content): {len(lost)} of {len(after)} states"
    )
    # The call returned, the power went, the old content came back: lost after return.
    assert lost, "the harness missed the missing directory fsync: it proves nothing"
    assert {t.outcome for t in r.trials} <= {"old", "new"}


@pytest.mark.slow
def test_forgetful_harness_catches_copy_without_fsync(
    forget_btrfs: tuple[str, Forgetful], tmp_path: Path
) -> None:
    label, fs = forget_btrfs
    run, _ = _one_file(fs, tmp_path, COPY_BROKEN, [], copy=True)
    found, text = _caught(run)
    _note(describe(label, "BROKEN copyfile no fsync", run, "temp + rename") + text)
    assert found, "the harness missed the copy without fsync: it proves nothing"


# --------------------------------------------------------------------------- transaction


def _transaction(
    fs: Forgetful, tmp_path: Path, writer: Path, limit: int | None = None
) -> tuple[ForgetRun, Path]:
    directory = fs.mnt / "d"
    directory.mkdir()
    args = generations.tx_writer_args(directory, tmp_path / "source", 2, staging="tmpfile")
    run = forget_every_syscall(
        fs,
        writer,
        args,
        prepare=lambda: generations.prepare_generation(directory, 1),
        inspect=lambda: generations.inspect_transaction(directory),
        sweep_dir=directory,
        limit=limit,
    )
    return run, directory


def _generation(after: int | str) -> str:
    if after in (1, 2):
        return "old" if after == 1 else "new"
    return "MIXED" if str(after).startswith("mixed") else str(after)


def _tx_line(label: str, what: str, run: ForgetRun, marks: str) -> str:
    r = run.run
    after = Counter(_generation(t.outcome.after) for t in r.trials)
    recoveries = Counter(t.outcome.recovery for t in r.trials)
    mixed = sum(str(t.outcome.before).startswith("mixed") for t in r.trials)
    most = max(run.offered, default=0)
    return (
        f"forgetful {label:<10} {what:<26} {len(r.points)} crash points x 1-{most} states "
        f"(cap {run.limit}) = {len(r.trials)} trials ({marks}): after recovery "
        f"{dict(sorted(after.items()))}; recoveries {dict(sorted(recoveries.items()))}; mixed "
        f"before recovery {mixed}; temp files {sum(len(t.leftovers) for t in r.trials)} -> "
        f"left {sum(len(t.left_after_sweep) for t in r.trials)}; {r.seconds:.0f} s"
    )


@pytest.mark.slow
def test_forgetful_power_cut_at_every_syscall_of_a_four_file_commit(
    forget_fs: tuple[str, Forgetful], tmp_path: Path
) -> None:
    label, fs = forget_fs
    run, directory = _transaction(fs, tmp_path, TX_COMMIT)
    r = run.run
    commit = traces.commit_index(r.trace, JOURNAL)
    assert commit is not None, "no link of the journal in the trace"
    durable = traces.dir_sync_index(r.trace, str(directory), commit)
    assert durable is not None, "no directory fsync after the journal was linked"
    _note(_tx_line(label, "transaction durable", run, f"journal #{commit}, dir fsync #{durable}"))
    problems = [(run.example(i), t.outcome.problems()) for i, t in enumerate(r.trials)]
    assert [p for p in problems if p[1]] == []
    wrong = []
    for i, t in enumerate(r.trials):
        at = t.point.index
        if t.outcome.after not in (1, 2):
            wrong.append((run.example(i), "not one generation"))
        elif at < commit and t.outcome.after != 1:
            wrong.append((run.example(i), "new before the journal was linked"))
        elif at >= durable and t.outcome.after != 2:
            wrong.append((run.example(i), "old after the journal's directory fsync"))
    assert wrong == []
    assert {t.outcome.after for t in r.trials} == {1, 2}
    # Recovery was needed both ways, and some states held a mix before it.
    assert {t.outcome.recovery for t in r.trials} >= {"forward", "back"}
    assert any(str(t.outcome.before).startswith("mixed") for t in r.trials)
    assert [t.left_after_sweep for t in r.trials if t.left_after_sweep] == []
    assert generations.protocol_leftovers(directory) == []


@pytest.mark.slow
def test_forgetful_harness_catches_files_replaced_one_by_one(
    forget_btrfs: tuple[str, Forgetful], tmp_path: Path
) -> None:
    label, fs = forget_btrfs
    # Two states a point: each file is published durably in turn, so the
    # pessimistic state between two of them is already a mix.
    run, _ = _transaction(fs, tmp_path, TX_BROKEN, limit=2)
    mixed = [i for i, t in enumerate(run.run.trials) if str(t.outcome.after).startswith("mixed")]
    example = f"; e.g. {run.example(mixed[0])}" if mixed else ""
    _note(_tx_line(label, "BROKEN one by one", run, "no journal") + example)
    assert mixed, "the harness saw no mix from a protocol without a journal: it proves nothing"
    assert not any(t.outcome.recovered for t in run.run.trials)


# --------------------------------------------------------------------------- write_many


@pytest.mark.slow
def test_forgetful_power_cut_in_any_thread_of_write_many(
    forget_fs: tuple[str, Forgetful], tmp_path: Path
) -> None:
    label, fs = forget_fs
    run = power_cut_batch(fs.mnt, tmp_path, BATCH_COMMIT, runner=forget_runner(fs))
    _note(describe_batch(f"{label} (forgetful)", "write_many own pool", run))
    assert [(t.aimed, t.mode, t.where, t.problems) for t in run.trials if t.problems] == []
    where = Counter(t.where for t in run.trials)
    assert where["worker"] > 0 and where["main"] > 0, where
    assert where["before start"] == 0, where
    assert where["after end"] + where["returned"] > 0, where
    outcomes = Counter(t.outcome for t in run.trials)
    assert outcomes["old"] > 0 and outcomes["mix"] > 0 and outcomes["new"] > 0, outcomes
    assert sum(t.found for t in run.trials) == sum(t.swept for t in run.trials) > 0
    for directory in DIRS:
        assert sorted(p.name for p in (fs.mnt / directory).iterdir()) == sorted(NAMES)


@pytest.mark.slow
def test_forgetful_harness_catches_batch_without_fsync(
    forget_btrfs: tuple[str, Forgetful], tmp_path: Path
) -> None:
    label, fs = forget_btrfs
    run = power_cut_batch(fs.mnt, tmp_path, BATCH_BROKEN, runner=forget_runner(fs))
    caught = [
        (t.aimed, t.mode, key, found)
        for t in run.trials
        for key, found in t.files.items()
        if found.startswith(BATCH_BAD)
    ]
    kinds = Counter(found for *_, found in caught)
    _note(
        describe_batch(f"{label} (forgetful)", "BROKEN batch no fsync", run)
        + f"; damaged files {len(caught)} {dict(kinds)}"
    )
    assert caught, "the harness missed the missing fsync: it proves nothing"


@pytest.mark.slow
def test_forgetful_harness_catches_batch_without_directory_fsync(
    forget_btrfs: tuple[str, Forgetful], tmp_path: Path
) -> None:
    """write_many with ``durability="consistent"`` skips the directory fsyncs, as
    documented: old or new everywhere, but an old file after the call returned."""
    label, fs = forget_btrfs
    # Two states a point: after the return, the pessimistic one has lost the renames.
    runner = forget_runner(fs, limit=2)
    run = power_cut_batch(fs.mnt, tmp_path, BATCH_COMMIT, durability="consistent", runner=runner)
    returned = [t for t in run.trials if t.where in ("after end", "returned")]
    old = [t for t in returned if "old" in t.files.values()]
    _note(
        describe_batch(f"{label} (forgetful)", "consistent: no dir fsync", run)
        + f"; old after return: {len(old)} of {len(returned)} states"
    )
    assert old, "the harness missed the missing directory fsync: it proves nothing"
    problems = [p for t in run.trials for p in t.problems]
    assert problems and all(p.endswith("old after return") for p in problems), problems
