"""crashcheck's explorer alone: crash states per second for hand-made workloads.

    python benchmarks/crashcheck_explore.py [--ops 50] [--files 20] [--jobs N] [--scratch DIR]

The workload saves files one after another with crashsafe's protocol without the
directory fsync (create a temporary file, write, fsync it, rename over the target), five
operations per file, over a directory that already holds *files* files; the check is
``true`` (a shell), then a Python callable that does nothing, so the figures are the
explorer's own cost: replaying, fingerprinting, materialising, starting the check.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parent.parent / "src")
if sys.path[:1] != [SRC]:
    sys.path.insert(0, SRC)

from crashsafe.crashcheck._checkrun import CheckContext  # noqa: E402
from crashsafe.crashcheck._explore import explore_operations  # noqa: E402
from crashsafe.crashcheck._ops import (  # noqa: E402
    Call,
    Create,
    Operation,
    Output,
    Rename,
    Sync,
    Write,
    take_snapshot,
)


def workload(root: Path, count: int) -> list[Operation]:
    ops: list[Operation] = []

    def call(text: str) -> Call:
        return Call(len(ops) + 1, 1, text)

    for n in range(count // 5):
        inode = -(n + 1)
        tmp, target = str(root / f"f{n}.tmp"), str(root / f"f{n}")
        ops.append(Create(call(f"openat({tmp})"), tmp, inode, 0o644))
        ops.append(Write(call("write"), inode, 0, b"x" * 6000))
        ops.append(Sync(call("fsync"), inode))
        ops.append(Rename(call("rename"), tmp, target))
        ops.append(Output(call("write(1)"), f"saved f{n}\n".encode()))
    return ops


def nothing(ctx: CheckContext) -> None:
    del ctx


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=50)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--scratch", help="where states are made (default: the explorer's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp, "data")
        root.mkdir()
        for i in range(args.files):
            (root / f"old{i}").write_bytes(b"o" * 1000)
        snapshot = take_snapshot([str(root)], str(Path(tmp, "snap")))
        ops = workload(root, args.ops)
        for name, check in (("sh true", "true"), ("callable", nothing)):
            start = time.perf_counter()
            report = explore_operations(
                snapshot,
                ops,
                check,
                jobs=args.jobs,
                scratch=args.scratch,
            )
            took = time.perf_counter() - start
            print(
                f"{name:9} {len(ops)} ops, {args.files} files before: "
                f"{report.states_enumerated} enumerated, {report.states_checked} checked "
                f"in {took:.2f} s: {report.states_checked / took:.0f} checked/s, "
                f"{report.states_enumerated / took:.0f} enumerated/s "
                f"(jobs={args.jobs}, scratch {args.scratch or 'default'}, "
                f"{len(report.vulnerabilities)} findings)"
            )


if __name__ == "__main__":
    main()
