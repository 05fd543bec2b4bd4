"""A power cut at every syscall of a writer that replaces one file: old or new.

The scaffold of the single-file power-cut tests (atomic_write, atomic_copy and
their broken twins): ``mnt/d/target`` holds payload :data:`OLD`, put in place
durably before every run; the writer puts the content of a source file
(payload :data:`NEW`) there; after each cut the target is "old", "new", or
what :func:`tests.harness.payloads.classify` found instead (a word of
:data:`BAD`), and the source must be intact.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tests.harness.checks import leftovers
from tests.harness.payloads import classify, durable_put, payload, read_or_none
from tests.harness.power_cut import MODES, PowerCutRun, power_cut_every_syscall, violations
from tests.harness.traces import commit_index, dir_sync_index

OLD, NEW = 1, 2
BAD = ("missing", "empty", "zeros", "partial", "torn")


def one_file(
    mnt: Path, source: Path, *, size: int = 1 << 20
) -> tuple[Path, Callable[[], None], Callable[[], str]]:
    """Make ``mnt/d``; return it, *prepare* (``mnt/d/target`` holds payload
    :data:`OLD` of *size* bytes, durably, and nothing else is there) and
    *inspect* ("old", "new" or what is wrong; "source damaged" if *source*, which
    holds payload :data:`NEW`, is not intact)."""
    directory = mnt / "d"
    directory.mkdir()
    target = directory / "target"

    def prepare() -> None:
        for name in os.listdir(directory):
            if name != "target":
                os.unlink(directory / name)
        durable_put(target, payload(OLD, size))

    def inspect() -> str:
        if classify(read_or_none(source)) != NEW:
            return "source damaged"
        found = classify(read_or_none(target))
        return "old" if found == OLD else "new" if found == NEW else str(found)

    return directory, prepare, inspect


def cut_one_file(
    mnt: Path, writer: Path, source: Path, extra: list[str], *, crashsafe_temps: bool
) -> tuple[PowerCutRun, Path]:
    """Run *writer* with ``TARGET SOURCE *extra`` under
    :func:`tests.harness.power_cut.power_cut_every_syscall`; *source* must hold
    payload :data:`NEW` already. With *crashsafe_temps*, the directory's
    crashsafe temporary files are counted and swept after every cut. Returns
    the run and the target's directory."""
    directory, prepare, inspect = one_file(mnt, source)
    run = power_cut_every_syscall(
        mnt,
        writer,
        [str(directory / "target"), str(source), *extra],
        prepare=prepare,
        inspect=inspect,
        sweep_dir=directory if crashsafe_temps else (),
    )
    return run, directory


def durable_marks(run: PowerCutRun, directory: Path) -> tuple[int, int]:
    """The index of the commit (the rename or link onto the target) and of the
    directory fsync after it; fails if either is missing."""
    commit = commit_of(run)
    dir_sync = dir_sync_index(run.trace, str(directory), commit)
    assert dir_sync is not None, "no fsync of the directory after the commit"
    return commit, dir_sync


def check_durable(run: PowerCutRun, directory: Path, commit: int, dir_sync: int) -> None:
    """What a durable write of crashsafe must show: old or new at every point,
    old before the commit, new once the directory fsync returned; every trial
    ran and both sides of the commit point were seen; crashes left temporary
    files (the named one, or the O_TMPFILE's link name between linkat and
    rename), and sweep() removed every one."""
    assert violations(run, commit, dir_sync) == []
    assert len(run.trials) == len(run.trace) * len(MODES)
    assert {t.outcome for t in run.trials} == {"old", "new"}
    assert sum(len(t.leftovers) for t in run.trials) > 0
    assert [t.left_after_sweep for t in run.trials if t.left_after_sweep] == []
    assert leftovers(directory) == []


def commit_of(run: PowerCutRun) -> int:
    """The index of the rename or link onto the target; fails if there is none."""
    commit = commit_index(run.trace, "target")
    assert commit is not None, "no rename or link onto the target in the trace"
    return commit


def damage(run: PowerCutRun) -> tuple[list[tuple[str, str, str]], str]:
    """The trials that found the target damaged (a word of :data:`BAD`), as
    (outcome, mode, crash point), and a line naming them for the summary."""
    caught = [(t.outcome, t.mode, str(t.point)) for t in run.trials if t.outcome in BAD]
    text = f"; caught {len(caught)}: " + "; ".join(
        f"{o} ({m}) after {p.split('(')[0]}" for o, m, p in caught
    )
    return caught, text
