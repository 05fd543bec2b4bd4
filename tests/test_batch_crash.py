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

The runner is :func:`tests.harness.power_cut.power_cut_every_syscall` in its
``threads`` mode: strace attaches to the writer once its set-up is done, so
every thread's counters of ``when=`` start at zero; one recorded run gives the
names of the syscalls that touch the filesystem under test (a freeze right
after any other call leaves the filesystem as the previous one did) and, for
each, how many calls each thread made; each N from 1 to the largest count of
any thread then freezes whichever thread first reaches its N-th call of that
name, and the cut waits until every thread is stopped (or the writer has
returned). Which worker handles which file, and so where a worker's N-th call
lands, varies from run to run; the checks do not depend on the order, and the
coverage assertions prove the cuts landed inside the batch (some trials find
a mix of old and new files).

Two variants of the good batch: write_many's own pool (one worker per file
here, so a worker makes one call of each name and the cuts land at the first
worker's steps), and the pool capped at two threads (``_THREADS`` set by
``tests/writers/batch_commit.py``), where a worker publishes about three
files and the cuts also land after its second and third, in the middle of
the batch.

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

import os
from collections import Counter
from pathlib import Path

import pytest

from tests.harness import power_cut
from tests.harness.batch_cut import BAD, DIRS, NAMES, describe_batch, power_cut_batch
from tests.harness.power_cut import WRITERS
from tests.harness.summary import module_summary

BATCH_COMMIT = WRITERS / "batch_commit.py"
# Deliberately broken: write_many's shape, no fsync of the data before the rename.
BATCH_BROKEN = WRITERS / "batch_broken.py"


_note, _print_summary = module_summary("batch crash harness summary")


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
    run = power_cut_batch(mnt, tmp_path, BATCH_COMMIT, threads=threads)
    label = f"write_many {'own pool' if threads is None else f'{threads} threads'}"
    _note(describe_batch(fs, label, run))

    assert [(t.aimed, t.mode, t.where, t.problems) for t in run.trials if t.problems] == []
    assert len(run.trials) == len(run.points) * len(power_cut.MODES) > 0
    # The batch ran on worker threads, and cuts landed in them.
    assert any(len(threads) > 2 for threads in run.counts.values()), run.counts
    where = Counter(t.where for t in run.trials)
    assert where["worker"] > 0, where
    # ...and in the main thread, which stages every file's data: the runner
    # tells the two apart by the frozen process's own thread id.
    assert where["main"] > 0, where
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
    run = power_cut_batch(mnt, tmp_path, BATCH_BROKEN)
    caught = [
        (t.aimed, t.mode, t.where, key, found)
        for t in run.trials
        for key, found in t.files.items()
        if found.startswith(BAD)
    ]
    kinds = Counter(found for *_, found in caught)
    _note(
        describe_batch(fs, "BROKEN batch no fsync", run)
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
    run = power_cut_batch(mnt, tmp_path, BATCH_COMMIT, durability="consistent")
    returned = [t for t in run.trials if t.where in ("after end", "returned")]
    old = [t.mode for t in returned if "old" in t.files.values()]
    _note(
        describe_batch(fs, "consistent: no dir fsync", run)
        + f"; old after return: {len(old)} of {len(returned)} ({', '.join(old)})"
    )
    assert old, "the harness missed the missing directory fsync: it proves nothing"
    # Nothing else is wrong: every file old or new at every point.
    problems = [p for t in run.trials for p in t.problems]
    assert problems and all(p.endswith("old after return") for p in problems), problems
