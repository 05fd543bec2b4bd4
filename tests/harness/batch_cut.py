"""write_many under a crash right after any syscall of any thread: the runner and its checks.

Six files in two directories (:data:`DIRS` x :data:`NAMES`), each holding an old
version put in place durably, rewritten in one ``write_many`` by a writer from
``tests/writers/``; after each crash every file is classified ("old", "new",
or a word of :data:`BAD`) and what is left in the directories checked. Used by
tests/test_batch_crash.py (the shutdown ioctl on loop xfs and ext4) and
tests/test_forgetful_crash.py (the crash states of a filesystem that forgets).
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tests.harness import power_cut
from tests.harness.checks import leftovers
from tests.harness.payloads import classify, durable_put, payload, read_or_none
from tests.harness.power_cut import PowerCutRun


class Runner(Protocol):
    """:func:`tests.harness.power_cut.power_cut_every_syscall` with its mount point bound."""

    def __call__(
        self,
        writer: Path,
        args: list[str],
        *,
        prepare: Any,
        inspect: Any,
        sweep_dir: list[Path],
        threads: bool,
    ) -> PowerCutRun: ...


OLD, NEW = 1, 2
DIRS = ("a", "b")
NAMES = ("f0", "f1", "f2")
# Distinct sizes, so that a file holding another file's bytes cannot pass. The
# data is written by the main thread while each file is staged; the workers
# fsync, link and rename.
SIZES = {f"{d}/{n}": 320 + 128 * i for i, (d, n) in enumerate((d, n) for d in DIRS for n in NAMES)}
BAD = ("missing", "empty", "zeros", "partial", "torn", "another file's")

# --------------------------------------------------------------------------- contents


def content(key: str, version: int) -> bytes:
    """The file's own name, then a payload: a file that got another's content differs."""
    return key.encode() + b":" + payload(version, SIZES[key])


def classify_file(key: str, data: bytes | None) -> str:
    """Returns "old", "new", or what is wrong with the file (a word of BAD first)."""
    prefix = key.encode() + b":"
    if not data or data.count(0) == len(data):
        found = classify(data)
    elif data.startswith(prefix):
        found = classify(data[len(prefix) :])
    else:
        return "another file's content" if b":CRASHSAFE-PAYLOAD" in data[:32] else "torn"
    return "old" if found == OLD else "new" if found == NEW else str(found)


# --------------------------------------------------------------------------- the runner


@dataclass
class BatchTrial:
    aimed: str  # "NAME:N"
    mode: str
    where: str  # "worker", "main", "before start", "after end" or "returned"
    files: dict[str, str]  # classify_file() of every file
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
class BatchRun:
    points: list[tuple[str, int]]
    counts: dict[str, dict[str, int]]  # name -> "main" or "w1", "w2"... (most first) -> calls
    trials: list[BatchTrial] = field(default_factory=list)
    seconds: float = 0.0


def power_cut_batch(
    mnt: Path,
    tmp_path: Path,
    writer: Path,
    *,
    threads: int | None = None,
    durability: str = "durable",
    runner: Runner | None = None,
) -> BatchRun:
    """Cut the power of *mnt* right after every (syscall name, N) of any thread of
    the batch in *writer* (and at its two markers), in both modes, and check the
    six files after every cut: :func:`tests.harness.power_cut.power_cut_every_syscall`
    with ``threads=True``. *threads* caps write_many's pool (None: its own);
    *threads* and *durability* are the writer's second and third arguments.
    *runner* replaces the power cut (the shutdown ioctl on *mnt*), for
    example with the crash states of a filesystem that forgets
    (:func:`tests.harness.forgetful_cut.forget_every_syscall`)."""
    dirs = [mnt / d for d in DIRS]
    for directory in dirs:
        directory.mkdir()
    targets = {key: mnt / key for key in SIZES}
    plan = {}
    for key, target in targets.items():
        source = tmp_path / key.replace("/", "-")
        source.write_bytes(content(key, NEW))
        plan[str(target)] = str(source)

    def prepare() -> None:
        for directory in dirs:
            for name in os.listdir(directory):
                if name not in NAMES:
                    os.unlink(directory / name)
        for key, target in targets.items():
            durable_put(target, content(key, OLD))

    def inspect() -> tuple[dict[str, str], list[str]]:
        files = {key: classify_file(key, read_or_none(t)) for key, t in targets.items()}
        problems = [
            f"{key}: {found}" for key, found in files.items() if found not in ("old", "new")
        ]
        for directory in dirs:
            strays = sorted(set(os.listdir(directory)) - set(NAMES) - set(leftovers(directory)))
            problems += [f"{directory.name}/{n}: not a crashsafe temporary file" for n in strays]
        return files, problems

    if runner is None:
        runner = functools.partial(power_cut.power_cut_every_syscall, mnt)
    run = runner(
        writer,
        [json.dumps(plan), str(threads or ""), durability],
        prepare=prepare,
        inspect=inspect,
        sweep_dir=dirs,
        threads=True,
    )
    batch = BatchRun(run.points, run.counts, seconds=run.seconds)
    for t in run.trials:
        files, problems = t.outcome
        if t.where in ("after end", "returned"):
            problems += [f"{key}: old after return" for key, f in files.items() if f == "old"]
        problems += [f"{n}: left after sweep" for n in t.left_after_sweep]
        trial = BatchTrial(t.aimed, t.mode, t.where, files, problems, len(t.leftovers), t.swept)
        batch.trials.append(trial)
    return batch


def describe_batch(fs: str, label: str, run: BatchRun) -> str:
    """One line summing up a batch run, for the figures the tests print."""
    modes = {t.mode for t in run.trials}
    cut = modes <= set(power_cut.MODES)  # else the trials' modes are crash states' families
    each = f"{len(modes)} modes" if cut else "their crash states"
    outcomes = Counter(f"{t.mode}:{t.outcome}" if cut else t.outcome for t in run.trials)
    where = Counter(t.where for t in run.trials)
    found = sum(t.found for t in run.trials)
    swept = sum(t.swept for t in run.trials)
    left = sum(1 for t in run.trials for p in t.problems if p.endswith("left after sweep"))
    return (
        f"power cut {fs:<20} {label:<24} {len(run.points)} crash points x {each} "
        f"= {len(run.trials)} trials: {dict(sorted(outcomes.items()))}; "
        f"froze in {dict(sorted(where.items()))}; "
        f"temp files after remount {found} -> swept {swept} -> left {left}; "
        f"{run.seconds:.0f} s; calls main/workers: {_counts(run.counts)}"
    )


def _counts(counts: dict[str, dict[str, int]]) -> str:
    return ", ".join(
        f"{name} {threads['main']}/" + ",".join(str(n) for t, n in threads.items() if t != "main")
        for name, threads in counts.items()
    )
