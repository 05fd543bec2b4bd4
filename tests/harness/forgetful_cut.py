"""A power cut right after every syscall, on any filesystem: through one that forgets.

The shutdown ioctl cuts the power of ext4 and xfs only. :func:`forget_every_syscall`
runs a writer from ``tests/writers/`` on :func:`tests.harness.forgetful.forgetful`
mounted over a directory of any filesystem (btrfs, overlayfs, tmpfs...), freezes
it right after each of its syscalls exactly as
:func:`tests.harness.power_cut.power_cut_every_syscall` does (the same loop,
:func:`~tests.harness.power_cut.crash_every_syscall`, with :class:`Forget` as its
crash), kills it, and then, for each state the filesystem says a power cut at that
instant may leave, puts that state in place (:meth:`Forgetful.restore`) and runs the
test's *inspect*, counts the crashsafe temporary files and sweeps. A trial is one
(crash point, state): trials = points x states.

The states are those of the conservative model (CONTRACT.md), by the filesystem's
ledger: only what was fsynced (pessimistic), everything (optimistic), each prefix
of the unsynced operations, each left out alone, each kept alone, writes torn at
4096-byte pieces, then subsets. That is many per point once a writer has a few
unsynced operations, so each point offers at most :func:`states_per_point`:
:data:`DEFAULT_STATES` in the default run (the families come in the order above,
so the pessimistic and optimistic states and the prefixes come first), and as many
as the variable ``CRASHSAFE_FORGETFUL_STATES`` says (a number, or ``all``: every
distinct state up to :data:`ALL_STATES`) for a longer run. Each point's subsets are
drawn with a seed of its own (the point's number), so the points together sample
different combinations; every run draws the same ones.

Differences from the shutdown ioctl, on purpose: nothing is guessed from a real
journal. A rename whose data was never fsynced *can* come back empty here on
every filesystem (the model allows it; btrfs and ext4's ``auto_da_alloc`` usually
hide it), and an unsynced directory change may be lost on any of them. What the
model does not cover (owners, timestamps, extended attributes, ``O_TMPFILE``,
which FUSE refuses: writers stage named files) is in tests/harness/forgetful_fs.py.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.forgetful import Forgetful
from tests.harness.power_cut import PowerCutRun, crash_every_syscall

STATES_VARIABLE = "CRASHSAFE_FORGETFUL_STATES"
DEFAULT_STATES = 6
"""States per crash point in the default run (CI): see :func:`states_per_point`."""
ALL_STATES = 1 << 14
"""``CRASHSAFE_FORGETFUL_STATES=all``: the filesystem's own bound on candidates."""
MODE = "forget"


def states_per_point(default: int = DEFAULT_STATES) -> int:
    """The cap on states per crash point: ``CRASHSAFE_FORGETFUL_STATES`` (a number of
    at least 2, or ``all``), else *default*."""
    value = os.environ.get(STATES_VARIABLE, "").strip()
    if not value:
        return default
    if value == "all":
        return ALL_STATES
    if not value.isdigit() or int(value) < 2:
        raise ValueError(f"{STATES_VARIABLE} must be a number of at least 2, or 'all': {value!r}")
    return int(value)


@dataclass
class Forget:
    """The crash of :func:`forget_every_syscall`: nothing while the writer is frozen
    (the filesystem already holds what it did), then, after the kill, each state
    :meth:`Forgetful.crash_states` lists, restored in turn. Keeps the account of
    what it offered: states per crash, and each trial's description, in order."""

    fs: Forgetful
    limit: int
    modes: Sequence[str] = (MODE,)
    offered: list[int] = field(default_factory=list)  # states listed at each crash
    described: list[str] = field(default_factory=list)  # each state restored, in order

    def frozen(self, mode: str) -> None:
        pass

    def states(self, mode: str) -> Iterator[str]:
        states = self.fs.crash_states(limit=self.limit, seed=len(self.offered))
        self.offered.append(len(states))
        for state in states:
            self.fs.restore(state)
            self.described.append(state.describe())
            yield state.family


@dataclass
class ForgetRun:
    """A :class:`~tests.harness.power_cut.PowerCutRun` whose trials' modes are the
    families of the crash states, with what :class:`Forget` recorded."""

    run: PowerCutRun
    limit: int
    offered: list[int]
    described: list[str]

    def example(self, index: int) -> str:
        """Trial *index* in words: its crash point and the state it found."""
        t = self.run.trials[index]
        return f"after {t.point} ({t.where}): {self.described[index]} -> {t.outcome}"


def forget_every_syscall(
    fs: Forgetful,
    writer: Path,
    args: Sequence[str],
    *,
    prepare: Callable[[], None],
    inspect: Callable[[], Any],
    sweep_dir: Path | Sequence[Path] = (),
    threads: bool = False,
    limit: int | None = None,
) -> ForgetRun:
    """:func:`tests.harness.power_cut.power_cut_every_syscall` on the filesystem that
    forgets: right after each syscall of *writer* (with *threads*, each (NAME, N) of
    any thread that touches ``fs.mnt``), kill it, and for each of at most *limit*
    (:data:`DEFAULT_STATES` if None) crash states, restore it, *inspect*, count and
    sweep the crashsafe temporary files in *sweep_dir*. ``CRASHSAFE_FORGETFUL_STATES``
    overrides *limit* (:func:`states_per_point`).

    *prepare* puts the old state in place; everything is made durable after it
    (``fs.sync_all()``), so that each crash's states start from it.
    """
    cap = states_per_point(DEFAULT_STATES if limit is None else limit)
    crash = Forget(fs, cap)

    def prepared() -> None:
        prepare()
        fs.sync_all()

    run = crash_every_syscall(
        writer,
        args,
        prepare=prepared,
        inspect=inspect,
        crash=crash,
        sweep_dirs=[sweep_dir] if isinstance(sweep_dir, Path) else list(sweep_dir),
        threads=fs.mnt if threads else None,
    )
    return ForgetRun(run, cap, crash.offered, crash.described)


def forget_runner(fs: Forgetful, limit: int | None = None) -> Callable[..., PowerCutRun]:
    """:func:`forget_every_syscall` shaped as :class:`tests.harness.batch_cut.Runner`
    (the same arguments as ``power_cut_every_syscall`` once its mount is bound)."""

    def runner(writer: Path, args: Sequence[str], **kwargs: Any) -> PowerCutRun:
        return forget_every_syscall(fs, writer, args, limit=limit, **kwargs).run

    return runner


def describe(fs: str, label: str, run: ForgetRun, marks: str) -> str:
    """One line summing up a run, for the figures the tests print."""
    r = run.run
    outcomes = Counter(str(t.outcome) for t in r.trials)
    found = sum(len(t.leftovers) for t in r.trials)
    swept = sum(t.swept for t in r.trials)
    left = sum(len(t.left_after_sweep) for t in r.trials)
    most = max(run.offered, default=0)
    return (
        f"forgetful {fs:<10} {label:<26} {len(r.points)} crash points x 1-{most} states "
        f"(cap {run.limit}) = {len(r.trials)} trials ({marks}): {dict(sorted(outcomes.items()))}; "
        f"temp files after restore {found} -> swept {swept} -> left {left}; "
        f"{r.seconds:.0f} s; drifts retried {r.drifts}"
    )
