"""crashcheck: find the crash bugs of any program.

:func:`explore` runs a program (or a Python callable) once under strace, over the
directories it is given, then checks every crash state of those directories that the
conservative model allows (CONTRACT.md: only fsync orders anything; a directory entry is
durable only once its directory is synced; a write may persist in part) with a check the
caller gives, and reports each state the check finds broken as a :class:`Vulnerability`:
*atomicity*, *ordering* or *durability*, as the ALICE paper (OSDI 2014) names them.

The program runs on the real directories: after :func:`explore` they hold what the run
left. Their state before the run is copied first; every crash state is built from that
copy in a scratch directory, checked, and removed.

``crashsafe crashcheck`` is the command-line form; ``crashsafe.crashcheck.pytest_plugin``
gives pytest a ``crashcheck`` fixture.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import IO

from ._checkrun import Check, CheckContext
from ._errors import CrashcheckError
from ._explore import explore_operations
from ._ops import take_snapshot
from ._report import CrashPoint, Report, Vulnerability
from ._trace import record, record_call

__all__ = [
    "Check",
    "CheckContext",
    "CrashPoint",
    "CrashcheckError",
    "Report",
    "Vulnerability",
    "Workload",
    "explore",
]

Workload = Sequence[str] | Callable[[], object]


def explore(
    workload: Workload,
    check: Check,
    *,
    dirs: Sequence[str | os.PathLike[str]] = (".",),
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    exhaustive: bool = False,
    max_states: int = 100_000,
    jobs: int | None = None,
    timeout: float | None = None,
    ignore_mmap: Sequence[str] = (),
    stdout: int | IO[bytes] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Run *workload* once, traced, and check every crash state of *dirs* it allows.

    *workload* is a program and its arguments (run in *cwd* with *env*, like
    :class:`subprocess.Popen`), or a callable, called with no arguments in a forked child
    of this process (it sees this process's working directory, environment and memory;
    *cwd* and *env* do not apply). What it prints to standard output goes to *stdout*
    (default: this process's) and is what each check is told it had printed before the
    crash point: a program that prints ``saved`` once it has saved can be held to it.

    *check* is a shell command (run by ``/bin/sh -c`` in the copy of the first directory;
    ``CRASHCHECK_DIRS`` holds the copies of all of them, joined by ``:``,
    ``CRASHCHECK_STDOUT`` what the program had printed; a non-zero exit status means the
    state is broken) or a callable taking a :class:`CheckContext` (returning False, or
    raising, means broken; with *jobs* above 1 it is called from several threads at once).
    *timeout*: seconds a check may take before its state counts as broken.

    The states are ALICE's targeted families (every prefix of the run, each operation left
    out, each write torn); with *exhaustive*, every combination the model allows, up to
    *max_states*. Identical states are checked once; up to *jobs* checks (default: one per
    CPU) run at once. *progress* is called as ``progress(done, total)`` as checks finish.

    Returns a :class:`Report`, whose ``vulnerabilities`` are empty when no crash state
    broke the check. Raises :class:`CrashcheckError` when the run cannot be checked:
    strace is missing or may not trace, the program failed (a non-zero exit status), it
    wrote through a shared memory map the trace cannot see (unless the file matches an
    *ignore_mmap* pattern, for files rebuilt after a crash such as SQLite's ``-shm``), or
    the check fails before the run or after it (the check, not a crash, is then wrong).
    ``FileNotFoundError`` or ``NotADirectoryError`` names a directory in *dirs* that is not
    one. ``ValueError`` if *dirs* is empty or one directory is inside another.
    """
    roots = [os.fspath(d) for d in dirs]
    if not roots:
        raise ValueError("crashcheck needs at least one directory")
    for root in roots:
        if not os.path.isdir(root):
            error = NotADirectoryError if os.path.exists(root) else FileNotFoundError
            raise error(f"crashcheck: {root!r} is not a directory")
    name = _name(workload)
    scratch = tempfile.mkdtemp(prefix="crashcheck-")
    try:
        _outside(scratch, roots)
        snapshot = take_snapshot(roots, os.path.join(scratch, "before"))
        if callable(workload):
            recording = record_call(workload, snapshot, stdout=stdout, ignore_mmap=ignore_mmap)
        else:
            recording = record(
                list(workload),
                snapshot,
                cwd=None if cwd is None else os.fspath(cwd),
                env=env,
                stdout=stdout,
                ignore_mmap=ignore_mmap,
            )
        if recording.refused:
            raise CrashcheckError(f"cannot check {name}: " + "; ".join(recording.refused))
        if recording.status != 0:
            raise CrashcheckError(
                f"cannot check {name}: it exited with status {recording.status}; "
                "crashcheck explores the crash states of a run that succeeded"
            )
        report = explore_operations(
            snapshot,
            recording.operations,
            check,
            exhaustive=exhaustive,
            max_states=max_states,
            jobs=jobs,
            timeout=timeout,
            progress=progress,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.program = name
    report.syscalls = recording.calls
    report.operations = len(recording.operations)
    return report


def _name(workload: Workload) -> str:
    if callable(workload):
        return getattr(workload, "__qualname__", repr(workload))
    if isinstance(workload, str | bytes):
        raise TypeError(
            f"workload {workload!r} is a string: give the program and its arguments as a "
            "list, e.g. ['sh', '-c', 'COMMAND']"
        )
    if not workload:
        raise ValueError("crashcheck needs a program to run")
    return str(workload[0])


def _outside(scratch: str, roots: list[str]) -> None:
    """Refuse a scratch directory inside a directory being checked: the snapshot would
    copy itself, and every crash state would hold the others."""
    where = os.path.realpath(scratch)
    for root in roots:
        if (where + "/").startswith(os.path.realpath(root) + "/"):
            raise CrashcheckError(
                f"cannot check {root}: the temporary directory {os.path.dirname(scratch)} is "
                "inside it; set TMPDIR to a directory outside it"
            )
