"""Shared pieces: interleaved timing, result rows, filesystems, a loop-mounted xfs."""

from __future__ import annotations

import contextlib
import gc
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

Op = Callable[[], object]

# Benchmark the crashsafe of this checkout, whatever `pip install -e` points at
# (another clone, say); every benchmark module imports this one before
# crashsafe, and the child processes inherit PYTHONPATH.
SRC = str(Path(__file__).resolve().parent.parent / "src")
if sys.path[:1] != [SRC]:
    sys.path.insert(0, SRC)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [SRC, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != SRC)]
)


@dataclass
class Row:
    """One line of a results table; the cells are already formatted."""

    name: str
    ours: str
    reference: str = ""
    ratio: float | None = None
    target: str = ""  # "<= 1.10", ">= 0.90", "< 15 ms"...; empty: for information
    ok: bool | None = None
    interval: tuple[float, float] | None = None  # 95 % interval of the ratio: ratio_interval


@dataclass
class Section:
    title: str
    columns: tuple[str, str, str]  # headers of the ours, reference and ratio columns
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    text: str = ""  # more Markdown, after the notes


def check(ratio: float, target: str) -> bool | None:
    """Whether *ratio* meets a target written as "<= 1.10", "< 1.0" or ">= 0.9"."""
    if not target:
        return None
    op, value = target.split()
    limit = float(value)
    return {
        "<=": ratio <= limit,
        "<": ratio < limit,
        ">=": ratio >= limit,
        ">": ratio > limit,
    }[op]


def per_op(n: int, op: Op) -> float:
    """Seconds per call of *op*, over *n* calls, with the garbage collector paused."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(n):
            op()
        return (time.perf_counter() - start) / n
    finally:
        if enabled:
            gc.enable()


def interleave(contenders: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Run every contender once per repetition, in a fresh order each time; return its results.

    Each contender returns one measurement (seconds per op). The order is a
    seeded random permutation per repetition, not a rotation: a rotation
    keeps every contender behind the same predecessor (A B C, B C A, C A B),
    and a predecessor's writeback or freed blocks slow the next one.
    """
    names = list(contenders)
    results: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in random.Random(rep).sample(names, len(names)):  # noqa: S311 - an order, not a secret
            results[name].append(contenders[name]())
    return results


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over repetitions of a[i] / b[i]: each pair was measured side by side."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def ratio_interval(a: list[float], b: list[float], resamples: int = 2000) -> tuple[float, float]:
    """A 95 % bootstrap interval for :func:`paired_ratio` of *a* and *b*.

    The per-repetition ratios are resampled with replacement (seeded, so the
    same times give the same interval) and the median taken each time; the
    interval spans the middle 95 % of those medians. It shows how far the
    median ratio moves on repetition noise alone: a target inside the
    interval is within the run's resolution, whichever side the median fell.
    """
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    draw = random.Random(0).choices  # noqa: S311 - resampling, not a secret
    medians = sorted(statistics.median(draw(ratios, k=len(ratios))) for _ in range(resamples))
    return medians[int(resamples * 0.025)], medians[int(resamples * 0.975) - 1]


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} µs"


def run(cmd: list[str]) -> str:
    """Run a known system tool; return its output, raise on failure."""
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def filesystem(path: str) -> str:
    """Say "ext4 on /dev/vda (rw,relatime,...)" for the filesystem holding *path*."""
    try:
        # A path under two stacked mounts gets a line for each; the last is the visible one.
        fstype, source, options = (
            run(["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "-T", path])
            .splitlines()[-1]
            .split()
        )
    except (OSError, subprocess.CalledProcessError, ValueError):
        return "unknown"
    return f"{fstype} on {source} ({options})"


def drop_caches() -> bool:
    """sync, then drop the page cache; False if this process may not (not root)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


# How each benchmark filesystem is made: xfs with reflinks, btrfs, ext4 (none).
MKFS = {
    "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
    "ext4": ["mkfs.ext4", "-q", "-F"],
}


@contextlib.contextmanager
def loop_fs(fstype: str, parent: str, size: int) -> Iterator[str]:
    """A fresh *fstype* (a key of :data:`MKFS`) on a loop device backed by an image in
    *parent*.

    Yields the mount point. Whatever happens (an error, Ctrl-C), it is
    unmounted and exactly the loop devices backed by this image are detached:
    they are looked up by the image's path, so even a device whose name was
    never returned (an interrupt inside losetup) is found.
    """
    work = tempfile.mkdtemp(prefix=f"crashsafe-bench-{fstype}-", dir=parent)
    image = os.path.join(work, f"{fstype}.img")
    mnt = os.path.join(work, "mnt")
    try:
        with open(image, "wb") as f:
            f.truncate(size)
        device = run(["losetup", "--find", "--show", "--direct-io=on", image])
        run([*MKFS[fstype], device])
        os.mkdir(mnt)
        run(["mount", device, mnt])
        yield mnt
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", mnt], check=False)
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            for dev in run(["losetup", "-l", "-n", "-O", "NAME", "-j", image]).split():
                subprocess.run(["losetup", "-d", dev], check=False)
        shutil.rmtree(work, ignore_errors=True)


def loop_xfs(parent: str, size: int) -> contextlib.AbstractContextManager[str]:
    """:func:`loop_fs` of an xfs with reflinks."""
    return loop_fs("xfs", parent, size)


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``): memory of this process."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")
