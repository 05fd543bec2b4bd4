"""crashcheck on issue 16's table: what it finds and what it costs, per workload.

    python benchmarks/crashcheck.py [--repeat N] [--jobs N] [--only NAME]...

Each workload (tests/harness/workloads.py: SQLite in four modes, a Git commit with and
without core.fsync=all, four naive writers, a correct hand-written one, crashsafe's own
calls) is prepared afresh, recorded under strace and explored with the targeted families,
*repeat* times (with --exhaustive: every combination the model allows, up to 100,000
states). Prints a Markdown table: operations and system calls of the run, crash
states enumerated and distinct ones checked, the findings by kind, and the median wall
time of the whole exploration (recording included). docs/crashcheck.md holds a run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for entry in (str(REPO / "src"), str(REPO)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from tests.harness import workloads as w  # noqa: E402

from crashsafe.crashcheck import Report  # noqa: E402

WORKLOADS = [
    w.SQLITE_FULL, w.SQLITE_EXTRA, w.SQLITE_WAL, w.SQLITE_OFF, w.GIT_DEFAULT, w.GIT_FSYNC_ALL,
    *w.NAIVE, w.HAND_WRITTEN_CORRECT, *w.CRASHSAFE,
]  # fmt: skip


def once(workload: w.Workload, jobs: int | None, exhaustive: bool) -> tuple[Report, float]:
    with tempfile.TemporaryDirectory(prefix="crashcheck-bench-") as tmp:
        directory = Path(tmp) / "work"
        workload.prepare(directory)
        started = time.perf_counter()
        report = workload.explore(directory, jobs=jobs, exhaustive=exhaustive, max_states=100_000)
        return report, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--only", action="append", default=[], metavar="NAME")
    parser.add_argument("--exhaustive", action="store_true", help="every combination, up to 100000")
    args = parser.parse_args()
    print("| workload | operations / syscalls | states enumerated | checked | found | seconds |")
    print("|---|---|---|---|---|---|")
    for workload in WORKLOADS:
        if args.only and workload.name not in args.only:
            continue
        times = []
        for _ in range(args.repeat):
            report, seconds = once(workload, args.jobs, args.exhaustive)
            times.append(seconds)
        kinds = Counter(v.kind for v in report.vulnerabilities)
        found = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
        if report.stopped_early:
            found += " (stopped at the cap)"
        print(
            f"| {workload.name} | {report.operations} / {report.syscalls} | "
            f"{report.states_enumerated} | {report.states_checked} | {found} | "
            f"{statistics.median(times):.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
