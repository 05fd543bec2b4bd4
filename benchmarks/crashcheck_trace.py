"""What recording costs: a small git commit and a SQLite transaction, run plainly and
under crashcheck's tracer (strace, then parsing the trace into operations).

    python benchmarks/crashcheck_trace.py [--repeat N]

Prints, per workload, the median wall time of the plain run, of record() (strace and
parsing), of parsing its trace alone, the trace's size, its calls and its operations.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

import common  # noqa: F401  # this checkout's crashsafe first on the path

from crashsafe.crashcheck._ops import take_snapshot
from crashsafe.crashcheck._trace import parse, record

GIT_ENV = {"PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}
GIT = ["git", "-c", "user.name=a", "-c", "user.email=a@b"]


def git_setup(d: str) -> list[str]:
    subprocess.run(["git", "init", "-q", d], check=True, env=GIT_ENV)
    for i in range(20):
        with open(os.path.join(d, f"f{i}"), "w") as f:
            f.write(f"line {i}\n" * 50)
    subprocess.run([*GIT, "-C", d, "add", "."], check=True, env=GIT_ENV)
    subprocess.run([*GIT, "-C", d, "commit", "-qm", "one"], check=True, env=GIT_ENV)
    with open(os.path.join(d, "f3"), "a") as f:
        f.write("changed\n")
    return ["sh", "-c", " ".join([*GIT, "commit", "-qam", "two"])]


def sqlite_setup(d: str) -> list[str]:
    db = os.path.join(d, "db")
    subprocess.run(["sqlite3", db, "CREATE TABLE t(x, y);"], check=True)
    # 100 rows in one transaction (a recursive CTE: no SQL text built from data)
    sql = (
        "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL; BEGIN; "
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) "
        "INSERT INTO t SELECT i, 'row ' || i FROM n; COMMIT;"
    )
    return ["sqlite3", "db", sql]


def measure(name: str, setup: Callable[[str], list[str]], repeat: int) -> None:
    plain: list[float] = []
    traced: list[float] = []
    parsing: list[float] = []
    sizes: list[int] = []
    calls = ops = 0
    for _ in range(repeat):
        for mode in ("plain", "traced"):
            base = tempfile.mkdtemp(prefix="cc-bench-")
            try:
                d = os.path.join(base, "d")
                os.mkdir(d)
                argv = setup(d)
                env = GIT_ENV if name == "git commit" else None
                if mode == "plain":
                    started = time.perf_counter()
                    subprocess.run(argv, cwd=d, env=env, check=True, stdout=subprocess.DEVNULL)
                    plain.append(time.perf_counter() - started)
                    continue
                snapshot = take_snapshot([d], os.path.join(base, "snap"))
                trace = os.path.join(base, "trace")
                started = time.perf_counter()
                rec = record(argv, snapshot, cwd=d, env=env, stdout=io.BytesIO(),
                             trace_file=trace)  # fmt: skip
                traced.append(time.perf_counter() - started)
                assert rec.status == 0 and not rec.refused
                started = time.perf_counter()
                with open(trace, encoding="utf-8", errors="surrogateescape") as f:
                    again = parse(f, snapshot, cwd=d)
                parsing.append(time.perf_counter() - started)
                sizes.append(os.path.getsize(trace))
                calls, ops = again.calls, len(again.operations)
            finally:
                shutil.rmtree(base)

    def ms(xs: list[float]) -> float:
        return statistics.median(xs) * 1000

    print(
        f"{name:15} plain {ms(plain):6.1f} ms | record() {ms(traced):6.1f} ms "
        f"(parsing alone {ms(parsing):5.1f} ms) | trace {statistics.median(sizes) / 1024:.0f} "
        f"KiB, {calls} calls, {ops} operations"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    measure("git commit", git_setup, args.repeat)
    measure("sqlite3 txn", sqlite_setup, args.repeat)


if __name__ == "__main__":
    main()
