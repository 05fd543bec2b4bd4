"""The filesystem matrix: which tests run on each filesystem, which filesystems run,
and the one table of known library gaps.

A test in one of :data:`MODULES` that takes the ``workdir`` fixture runs once per
selected filesystem (``--fs``), in a fresh directory of a mount made once per
session (tests/conftest.py). Tests that bring their own setup (a loop filesystem
they remount read-only, a directory user nobody may not write) do not take
``workdir`` and run once, as before.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass

import pytest

from tests.harness.filesystems import NAMES
from tests.harness.require import IN_CI

# The modules of the contract (see the README's "Development"), and why each:
MODULES = frozenset(
    {
        "test_api.py",  # atomicity: all or nothing, the old file until commit, no debris
        "test_modes.py",  # replace, create-only and append; commit and discard
        "test_permissions.py",  # exact modes, umask, never more permissive while staged
        "test_symlinks.py",  # through a symlink, planted symlinks never followed
        "test_errors.py",  # errors name the path, nothing lost, nothing left behind
        "test_concurrency.py",  # many writers of one name, create-only races
        "test_sweep.py",  # orphans found and removed, live ones left alone
        "test_copy.py",  # atomic_copy: every method, metadata, source changes
        "test_documents.py",  # read-modify-write state: update_json and its lock
        "test_transaction.py",  # multi-file state: commit, recovery, snapshots
        "test_batch.py",  # write_many
        "test_atomic_path.py",  # a path for libraries that only take a path
        "test_planted_names.py",  # names an attacker or a crash left in the directory
    }
)

# Off the matrix although in MODULES: long runs whose cost times 15 filesystems
# would break the suite's budget; they run once, in pytest's temporary directory.
# nodeid pattern (fnmatch) -> why.
SINGLE = {
    "tests/test_transaction.py::test_a_commit_killed_after_any_syscall_recovers_to_old_or_new*": (
        "100+ kills of a child at every syscall, 38 s"
    ),
    "tests/test_errors.py::test_a_signal_at_any_moment_of_a_write_never_leaves_signals_blocked*": (
        "thousands of signals, 19 s"
    ),
    "tests/test_documents.py::test_8_processes_x_4_threads_x_50_increments_lose_nothing": (
        "6,400 locked increments, 7 s"
    ),
}

"""Tests that fail on a filesystem today ONLY because of a known library gap of issue
18 (being fixed on another branch). Each is xfail(strict=True): when the library
change merges, the test passes, the strict xfail turns into a failure, and the
entry must go. (filesystem names, nodeid pattern (fnmatch), reason)."""
KNOWN_GAPS: list[tuple[frozenset[str], str, str]] = []


@dataclass(frozen=True)
class Selection:
    """The filesystems chosen with ``--fs``, and why the matrix is off if it is."""

    names: tuple[str, ...]
    off_because: str = ""


def select(value: str) -> Selection:
    """Parse ``--fs``: ``all`` (every filesystem of the registry), ``tmp`` (no matrix:
    pytest's temporary directory only), or a comma-separated list of names."""
    if value == "tmp":
        return Selection((), "--fs tmp")
    if value == "all":
        if os.geteuid() != 0:
            if IN_CI:
                raise pytest.UsageError("--fs all under CI=true needs root (loop mounts)")
            return Selection((), "not root: nothing can be mounted")
        return Selection(NAMES)
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise pytest.UsageError(
            f"--fs: unknown {', '.join(unknown)}; known: all, tmp, {', '.join(NAMES)}"
        )
    return Selection(names)


def on_matrix(nodeid: str, fixturenames: list[str] | tuple[str, ...]) -> bool:
    """Whether the test *nodeid* runs once per filesystem."""
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    if module not in MODULES or "workdir" not in fixturenames:
        return False
    return not any(fnmatch.fnmatchcase(nodeid, p) for p in SINGLE)


def known_gap(fs: str, nodeid: str) -> str | None:
    """The reason of the :data:`KNOWN_GAPS` entry for *nodeid* on filesystem *fs*."""
    for names, pattern, reason in KNOWN_GAPS:
        if fs in names and fnmatch.fnmatchcase(nodeid, pattern):
            return reason
    return None
