"""ChecksumStore as it grows: cost per record and per verify at 10, 1,000 and 100,000
entries, and record_many of N files against N records.

Run alone with ``python3 benchmarks/checksums.py [--quick] [--dir /var/tmp]`` (prints
the section as Markdown), or as a section of ``benchmarks/run.py``.

Each store is built with one ``record_many`` of a tree of small real files (100
directories). Then, for each size: ``record`` of one of 10 files (durable: one
appended line and its fsync; compactions included, as they come), ``verify`` of
one of them in a process that has read the store before (it reads only what
was appended since), and a process's first ``verify``, which reads the store
whole. Each figure is the median over repetitions of the mean over *n* calls.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import Row, Section, fmt_time, per_op

from crashsafe import _checksum_log
from crashsafe.checksums import ChecksumStore

SIZES = (10, 1000, 100_000)


def _tree(root: Path, n: int) -> Path:
    """*n* small files under *root*/tree, in 100 directories (or fewer)."""
    tree = root / "tree"
    for i in range(n):
        directory = tree / f"d{i % 100:02d}"
        if i < 100:
            directory.mkdir(parents=True)
        (directory / f"f{i:06d}").write_bytes(b"%d" % i)
    return tree


def _measure(
    store: ChecksumStore, names: list[str], n_ops: int, reps: int
) -> tuple[float, float, float]:
    """(record, verify, a process's first verify): seconds per call."""
    count = iter(range(1 << 30))

    def record() -> None:
        store.record(names[next(count) % 10])

    def verify() -> None:
        assert store.verify(names[next(count) % 10])

    def first_verify() -> float:
        _checksum_log.forget_cached(store.path)
        return per_op(1, verify)

    rec = statistics.median(per_op(n_ops, record) for _ in range(reps))
    ver = statistics.median(per_op(n_ops * 10, verify) for _ in range(reps))
    first = statistics.median(first_verify() for _ in range(reps))
    return rec, ver, first


def growth(work: str, n_ops: int, reps: int, sizes: tuple[int, ...] = SIZES) -> Section:
    """Record and verify per call at each store size."""
    section = Section(
        "ChecksumStore: record and verify as the store grows (durable, one process)",
        ("median per call", "", ""),
    )
    base = Path(tempfile.mkdtemp(prefix="checksums-", dir=work))
    try:
        probes = base / "probes"
        probes.mkdir()
        for i in range(10):
            (probes / f"p{i}").write_bytes(b"probe %d" % i)
        names = [str(probes / f"p{i}") for i in range(10)]
        baseline: dict[str, float] = {}
        for size in sizes:
            root = base / f"n{size}"
            root.mkdir()
            tree = _tree(root, size)
            store_path = root / "sums.jsonl"
            store = ChecksumStore(store_path)
            started = time.perf_counter()
            store.record_many([tree])
            built = time.perf_counter() - started
            store.record_many(names)
            rec, ver, first = _measure(store, names, n_ops, reps)
            baseline.setdefault("record", rec)
            baseline.setdefault("verify", ver)
            mb = store_path.stat().st_size / 1e6
            for what, t in (("record", rec), ("verify", ver)):
                section.rows.append(
                    Row(
                        f"{size:,} entries: {what}",
                        fmt_time(t),
                        f"{t / baseline[what]:.2f}x the cost at {sizes[0]:,}",
                    )
                )
            section.rows.append(
                Row(
                    f"{size:,} entries: a process's first verify (reads {mb:.1f} MB whole)",
                    fmt_time(first),
                )
            )
            section.rows.append(
                Row(f"{size:,} entries: building the store, one record_many", fmt_time(built))
            )
            shutil.rmtree(root)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    section.notes.append(
        f"record: mean of {n_ops} durable records, median of {reps} repetitions; verify: "
        f"mean of {n_ops * 10}. A record appends one line and fsyncs it; compactions (a new "
        "file, written atomically, when the appended lines outgrow the live entries) are "
        "counted where they fall."
    )
    return section


def many(work: str, n: int) -> Section:
    """record_many of *n* files (one commit) against *n* records (one commit each)."""
    section = Section(
        f"ChecksumStore: {n:,} files, record_many against one record each", ("total", "", "")
    )
    base = Path(tempfile.mkdtemp(prefix="checksums-many-", dir=work))
    try:
        tree = _tree(base, n)
        files = sorted(str(p) for p in tree.rglob("f*"))
        one = ChecksumStore(base / "one.jsonl")
        started = time.perf_counter()
        for name in files:
            one.record(name)
        singles = time.perf_counter() - started
        batch = ChecksumStore(base / "many.jsonl")
        started = time.perf_counter()
        batch.record_many(files)
        together = time.perf_counter() - started
        assert dict(one.items()) == dict(batch.items())
        section.rows.append(Row(f"{n:,} records, one commit each", fmt_time(singles)))
        section.rows.append(
            Row(
                f"one record_many of {n:,} files",
                fmt_time(together),
                f"{singles / together:.0f}x faster",
            )
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return section


def _markdown(section: Section) -> str:
    out = [f"## {section.title}", "", f"| benchmark | {section.columns[0]} | |", "|---|---:|---|"]
    out += [f"| {row.name} | {row.ours} | {row.reference} |" for row in section.rows]
    out += ["", *section.notes]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="crashsafe-bench-", dir=args.dir)
    try:
        if args.quick:
            sections = [growth(work, 20, 3, (10, 1000)), many(work, 1000)]
        else:
            sections = [growth(work, 100, 5), many(work, 10_000)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = " ".join(["python3 benchmarks/checksums.py", *sys.argv[1:]])
    print(f"`{command}`, {when}, Linux {os.uname().release}, --dir {args.dir}\n")
    for section in sections:
        print(_markdown(section) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
