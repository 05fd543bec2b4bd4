"""Patch 16 bytes of a file's header through ``atomic_open(path, "r+b")``: large against small.

    sudo python3 benchmarks/inplace.py [--size-gib 2] [--reps 7] [--dir /var/tmp]

The staged file of an update mode starts as a copy of the target. On xfs
(``reflink=1``) and btrfs the copy is a reflink: the staged file shares the
target's blocks, and a patch of its header costs about what a patch of a
small file costs. On ext4 there is no reflink: the copy moves every byte
(``copy_file_range``) and the fsync writes them all. Each filesystem is a fresh
loop device (``--direct-io=on``, so the page cache of the image file does not
absorb the fsyncs), its image a sparse file in ``--dir``.

For each filesystem, every repetition patches the large file and a 4 KiB
file once each, durably, in a fresh (seeded) random order, and the ratio is
the median of the per-repetition ratios (with its 95 % bootstrap interval):
both sides measured in the same run, minutes apart at most. Needs root (loop
devices); everything made is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from common import (
    Row,
    Section,
    fmt_time,
    interleave,
    loop_fs,
    paired_ratio,
    ratio_interval,
)

import crashsafe

PATCH = b"patched: 16 byte"
SMALL = 4096


def _fill(path: str, size: int) -> None:
    """*size* bytes of incompressible data at *path*, fsynced."""
    block = os.urandom(16 << 20)
    with open(path, "wb") as f:
        done = 0
        while done < size:
            done += f.write(block[: min(len(block), size - done)])
        os.fsync(f.fileno())


def _patch(path: str) -> float:
    """Seconds for one durable 16-byte patch of *path*'s header through r+b."""
    start = time.perf_counter()
    with crashsafe.atomic_open(path, "r+b") as f:
        f.write(PATCH)
    return time.perf_counter() - start


def measure(fstype: str, parent: str, size: int, reps: int) -> tuple[list[float], list[float]]:
    """Per-repetition seconds of the large and the small patch on a fresh *fstype*."""
    # Room for the file and a whole copy of it (ext4 copies every byte).
    with loop_fs(fstype, parent, 2 * size + size // 4 + (512 << 20)) as mnt:
        large, small = os.path.join(mnt, "large.bin"), os.path.join(mnt, "small.bin")
        _fill(large, size)
        _fill(small, SMALL)
        _patch(large)  # the first patch unshares nothing yet on a reflink: warm both paths
        _patch(small)
        times = interleave({"large": lambda: _patch(large), "small": lambda: _patch(small)}, reps)
        with open(large, "rb") as f:
            assert f.read(len(PATCH)) == PATCH
        assert os.path.getsize(large) == size
        return times["large"], times["small"]


def inplace(parent: str, size: int, reps: int, ext4_reps: int) -> Section:
    """The section: for xfs, btrfs and ext4, the large patch against the small one."""
    section = Section(
        f"Patch 16 bytes of a {size / (1 << 30):g} GiB file's header through "
        '`atomic_open(path, "r+b")`, durably',
        (
            f"{size / (1 << 30):g} GiB file, median",
            "4 KiB file, median",
            "time ratio (95 % interval)",
        ),
    )
    results = {}
    for fstype in ("xfs", "btrfs", "ext4"):
        n = ext4_reps if fstype == "ext4" else reps
        large, small = measure(fstype, parent, size, n)
        results[fstype] = large
        how = "reflink" if fstype != "ext4" else "copy_file_range: every byte"
        section.rows.append(
            Row(
                f"{fstype} (loop, {how}), {n} repetitions",
                fmt_time(statistics.median(large)),
                fmt_time(statistics.median(small)),
                paired_ratio(large, small),
                interval=ratio_interval(large, small),
            )
        )
    ext4, xfs = statistics.median(results["ext4"]), statistics.median(results["xfs"])
    section.notes.append(
        f"The large patch on ext4 took {ext4 / xfs:.0f}x its time on xfs (medians). Loop "
        "devices with --direct-io=on, images on the VM's disk; each filesystem fresh, the "
        "file written and fsynced before, then patched once untimed."
    )
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--ext4-reps", type=int, default=3)
    parser.add_argument("--dir", default="/var/tmp")
    args = parser.parse_args()
    section = inplace(args.dir, int(args.size_gib * (1 << 30)), args.reps, args.ext4_reps)
    print(f"## {section.title}\n")
    print(f"| | {' | '.join(section.columns)} |\n|---|---|---|---|")
    for row in section.rows:
        low, high = row.interval or (0.0, 0.0)
        ratio = f"{row.ratio:.2f}x ({low:.2f}-{high:.2f})"
        print(f"| {row.name} | {row.ours} | {row.reference} | {ratio} |")
    for note in section.notes:
        print(f"\n{note}")


if __name__ == "__main__":
    main()
