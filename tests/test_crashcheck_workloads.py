"""crashcheck held to issue 16's table: real programs (Debian's sqlite3 and git, naive
writers, crashsafe's own calls) recorded under strace, every targeted crash state checked.

What each row must find is in EXPECTED; the figures (states, time) are in
docs/crashcheck.md, from ``benchmarks/crashcheck.py``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from crashsafe.crashcheck import Report
from tests.harness import workloads as w
from tests.harness.require import require_tools


def run(workload: w.Workload, tmp_path: Path) -> Report:
    require_tools("strace", "sqlite3", "git")
    workload.prepare(tmp_path / "work")
    return workload.explore(tmp_path / "work")


def kinds(report: Report) -> Counter[str]:
    return Counter(v.kind for v in report.vulnerabilities)


def lost(report: Report, kind: str) -> list[str]:
    """The first lost operation of each finding of *kind*."""
    return [v.lost[0] for v in report.vulnerabilities if v.kind == kind]


# ------------------------------------------------------------------------------ SQLite


def test_sqlite_rollback_full_has_alices_one_durability_finding(tmp_path: Path) -> None:
    # The journal is deleted and the directory never synced: after "committed", a crash
    # may bring the journal back, and SQLite rolls the committed transaction back.
    report = run(w.SQLITE_FULL, tmp_path)
    assert kinds(report) == {"durability": 1}, report.text()
    (finding,) = report.vulnerabilities
    assert finding.lost == ("unlink(db-journal)",)
    assert "committed, but the old rows" in finding.check_output


@pytest.mark.parametrize("workload", [w.SQLITE_EXTRA, w.SQLITE_WAL], ids=lambda x: x.name)
def test_sqlite_extra_and_wal_have_none(workload: w.Workload, tmp_path: Path) -> None:
    report = run(workload, tmp_path)
    assert report.vulnerabilities == [], report.text()
    assert report.states_checked > 10


def test_sqlite_synchronous_off_has_corrupting_states(tmp_path: Path) -> None:
    report = run(w.SQLITE_OFF, tmp_path)
    outputs = " ".join(v.check_output for v in report.vulnerabilities)
    assert "malformed" in outputs or "not a database" in outputs, report.text()


# ------------------------------------------------------------------------------ Git


def test_git_commit_has_every_kind_and_its_rename_before_data(tmp_path: Path) -> None:
    report = run(w.GIT_DEFAULT, tmp_path)
    assert set(kinds(report)) == {"atomicity", "ordering", "durability"}, report.text()
    # An object's data lost while its name persisted (git 2.39 syncs nothing by default).
    assert any(x.startswith("write(.git/objects/") for x in lost(report, "ordering"))
    # New object directories and names never synced.
    assert any(x.startswith("mkdir(.git/objects/") for x in lost(report, "ordering"))


def test_git_with_core_fsync_all_keeps_only_the_missing_directory_syncs(tmp_path: Path) -> None:
    report = run(w.GIT_FSYNC_ALL, tmp_path)
    every = [x for v in report.vulnerabilities for x in v.lost[:1]]
    assert not any(x.startswith("write(.git/objects/") for x in every), report.text()
    assert any(x.startswith(("mkdir(.git/objects/", "link(.git/objects/")) for x in every)
    assert "durability" in kinds(report)


# ------------------------------------------------------------------------------ writers


@pytest.mark.parametrize(
    ("workload", "expected", "first_lost"),
    [
        (w.NAIVE_IN_PLACE, {"atomicity"}, None),
        (w.NAIVE_RENAME_NO_FSYNC, {"ordering", "durability"}, ("ordering", "write(data.tmp")),
        (w.NAIVE_NO_DIR_FSYNC, {"durability"}, ("durability", "rename(data.tmp -> data)")),
        (w.NAIVE_FIXED_TEMP, {"ordering"}, ("ordering", "truncate(data.tmp, 0)")),
    ],
    ids=lambda x: getattr(x, "name", None),
)
def test_each_naive_writer_is_flagged_with_its_kind(
    workload: w.Workload,
    expected: set[str],
    first_lost: tuple[str, str] | None,
    tmp_path: Path,
) -> None:
    report = run(workload, tmp_path)
    assert set(kinds(report)) == expected, report.text()
    if first_lost is not None:
        kind, op = first_lost
        assert any(x.startswith(op) for x in lost(report, kind)), report.text()


@pytest.mark.parametrize("workload", [w.HAND_WRITTEN_CORRECT, *w.CRASHSAFE], ids=lambda x: x.name)
def test_correct_writers_and_crashsafes_own_calls_have_none(
    workload: w.Workload, tmp_path: Path
) -> None:
    report = run(workload, tmp_path)
    assert report.vulnerabilities == [], report.text()
    assert report.states_checked >= 3
