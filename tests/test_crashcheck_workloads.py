"""crashcheck held to issue 16's table: real programs (Debian's sqlite3 and git, naive
writers, crashsafe's own calls) recorded under strace, every targeted crash state checked.

What each row must find is in EXPECTED; the figures (states, time) are in
docs/crashcheck.md, from ``benchmarks/crashcheck.py``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from crashsafe.crashcheck import Report, explore
from tests.harness import workloads as w
from tests.harness.require import require_tools

# workload -> the vulnerabilities it must show, by kind (exactly these counts).
EXPECTED: dict[str, dict[str, int]] = {}
# workload -> the kinds it must show at least once (counts vary with the program).
SOME: dict[str, set[str]] = {}


def run(workload: w.Workload, tmp_path: Path) -> Report:
    require_tools("strace", "sqlite3", "git")
    directory = tmp_path / "work"
    workload.prepare(directory)
    return explore(
        workload.argv,
        workload.check,
        dirs=[directory],
        cwd=directory,
        env=workload.environ(),
        ignore_mmap=workload.ignore_mmap,
    )


def kinds(report: Report) -> Counter[str]:
    return Counter(v.kind for v in report.vulnerabilities)
