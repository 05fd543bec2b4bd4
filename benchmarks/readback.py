"""What reading the staged file's mode back costs a write: this checkout against a base.

Since issue 18, a staged file whose mode or owner was changed (a named staged
file always is: it starts private) has its status read once more, so that a
filesystem that accepts chmod and keeps nothing (ntfs-3g, exFAT) is seen. This
measures 100-byte overwrites of an existing file with ``atomic_write`` through
this checkout's ``src`` and through the base revision's (``git archive``),
each in a child process of its own that times N writes after a warm-up, the
two interleaved in a fresh random order per repetition; the paired median
ratio (this / base) with its 95 % bootstrap interval.

Run on its own::

    python3 benchmarks/readback.py [--base REV] [--dir DIR] [--reps N] [--writes N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from common import filesystem, fmt_time, interleave, paired_ratio, ratio_interval

ROOT = Path(__file__).resolve().parent.parent
# A child: N overwrites of one existing file, after a warm-up; prints seconds per write.
CHILD = """
import os, sys, time, gc
import crashsafe
import crashsafe._platform._posix as posix
path, staging, durability, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
posix.use_tmpfile = staging == "tmpfile"
data = b"x" * 100
for _ in range(20):
    crashsafe.atomic_write(path, data, durability=durability)
gc.disable()
start = time.perf_counter()
for _ in range(n):
    crashsafe.atomic_write(path, data, durability=durability)
print((time.perf_counter() - start) / n)
"""


def _timed(src: str, path: str, staging: str, durability: str, writes: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, path, staging, durability, str(writes)],
        env={**os.environ, "PYTHONPATH": src},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base", default="main", help="the revision to compare with")
    parser.add_argument("--dir", default="/var/tmp", help="where the files are written")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--writes", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crashsafe-readback-", dir=args.dir) as work:
        base_src = Path(work) / "base"
        base_src.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.base, "src"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(base_src)], input=archive, check=True)
        sources = {"this": str(ROOT / "src"), "base": str(base_src / "src")}
        print(f"writes in {args.dir} ({filesystem(args.dir)}); base {args.base}; "
              f"{args.reps} reps x {args.writes} writes")  # fmt: skip
        print("| staging | durability | this | base | this / base (95 % interval) |")
        print("|---|---|---|---|---|")
        for staging in ("tmpfile", "named"):
            for durability in ("none", "durable"):
                paths = {name: os.path.join(work, f"{name}-{staging}-{durability}")
                         for name in sources}  # fmt: skip
                for p in paths.values():
                    Path(p).write_bytes(b"old")
                contenders: dict[str, Callable[[], float]] = {
                    name: partial(_timed, src, paths[name], staging, durability, args.writes)
                    for name, src in sources.items()
                }
                times = interleave(contenders, args.reps)
                ratio = paired_ratio(times["this"], times["base"])
                low, high = ratio_interval(times["this"], times["base"])
                this = sorted(times["this"])[len(times["this"]) // 2]
                base = sorted(times["base"])[len(times["base"]) // 2]
                print(f"| {staging} | {durability} | {fmt_time(this)} | {fmt_time(base)} | "
                      f"{ratio:.3f} ({low:.3f}-{high:.3f}) |")  # fmt: skip


if __name__ == "__main__":
    main()
