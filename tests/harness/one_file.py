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
from pathlib import Path

from tests.harness.payloads import classify, durable_put, payload, read_or_none
from tests.harness.power_cut import PowerCutRun, power_cut_every_syscall

OLD, NEW = 1, 2
BAD = ("missing", "empty", "zeros", "partial", "torn")


def cut_one_file(
    mnt: Path, writer: Path, source: Path, extra: list[str], *, crashsafe_temps: bool
) -> tuple[PowerCutRun, Path]:
    """Run *writer* with ``TARGET SOURCE *extra`` under
    :func:`tests.harness.power_cut.power_cut_every_syscall`; *source* must hold
    payload :data:`NEW` already. With *crashsafe_temps*, the directory's
    crashsafe temporary files are counted and swept after every cut. Returns
    the run and the target's directory."""
    directory = mnt / "d"
    directory.mkdir()
    target = directory / "target"

    def prepare() -> None:
        for name in os.listdir(directory):
            if name != "target":
                os.unlink(directory / name)
        durable_put(target, payload(OLD))

    def inspect() -> str:
        if classify(read_or_none(source)) != NEW:
            return "source damaged"
        found = classify(read_or_none(target))
        return "old" if found == OLD else "new" if found == NEW else str(found)

    run = power_cut_every_syscall(
        mnt,
        writer,
        [str(target), str(source), *extra],
        prepare=prepare,
        inspect=inspect,
        sweep_dir=directory if crashsafe_temps else (),
    )
    return run, directory
