"""Small writes (100 B, 4 KiB) per durability level, and 1,000 new files one by one.

Every contender replaces its own existing target (small writes) or creates
new files in a fresh directory (many files). The floors are the minimal
syscall sequences of each protocol, written with raw ``os`` calls in this
process; see :func:`floor` and the notes each section prints.
"""

from __future__ import annotations

import gc
import importlib
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import atomicwrites
import safer
from boltons.fileutils import atomic_save
from common import (
    Op,
    Row,
    Section,
    check,
    fmt_time,
    interleave,
    paired_ratio,
    per_op,
    ratio_interval,
)

import crashsafe
import crashsafe._platform._posix as posix

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def floor(path: str, data: bytes, *, fsync: bool, dir_sync: str | None, dir_fd: int = -1) -> None:
    """The minimal protocol for one write of *data* to *path*.

    A temporary name in the same directory, created O_EXCL, one write, fsync
    if asked, close, rename, then the directory fsync: *dir_sync* "open"
    opens and closes the directory, "kept" uses *dir_fd*, opened once by the
    caller, None skips it. No mode or owner kept, no unguessable name, no
    cleanup on error, no signal handling: what a library adds to this is
    its overhead.
    """
    directory, name = os.path.split(path)
    temp = f"{directory}/.{name}.floor-tmp"
    fd = os.open(temp, _CREATE, 0o644)
    os.write(fd, data)  # a regular file takes a small write whole
    if fsync:
        os.fsync(fd)
    os.close(fd)
    os.rename(temp, path)
    if dir_sync == "open":
        dir_fd = os.open(directory, _DIR)
        os.fsync(dir_fd)
        os.close(dir_fd)
    elif dir_sync == "kept":
        os.fsync(dir_fd)


def _crashsafe(path: str, data: bytes, durability: crashsafe.atomic.Durability) -> Op:
    return lambda: crashsafe.atomic_write(path, data, durability=durability)


def _crashsafe_named(path: str, data: bytes, durability: crashsafe.atomic.Durability) -> Op:
    """crashsafe with a named temporary file instead of O_TMPFILE (diagnostic)."""

    def write() -> None:
        posix.use_tmpfile = False
        try:
            crashsafe.atomic_write(path, data, durability=durability)
        finally:
            posix.use_tmpfile = True

    return write


def _raw_statx() -> Callable[[int, bytes, int], int]:
    """statx(2) asking for type, mode and owner, as crashsafe does, with no Python around it."""
    import ctypes

    call = ctypes.CDLL(None, use_errno=True).statx
    call.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p)
    result = ctypes.create_string_buffer(256)
    return lambda fd, name, flags: call(fd, name, flags, 0x1 | 0x2 | 0x8 | 0x10, result)


def _steps(path: str, data: bytes, durability: str, *, statx: bool = True) -> Op:
    """crashsafe's syscalls for one ``atomic_write`` of an existing file, as raw ``os`` calls.

    The same sequence, in the same order, as the strace table shows for
    crashsafe (directory, the target's statx, O_TMPFILE created with its final
    mode, its statx, write, fsync, a linkat to an unguessable name, rename,
    directory fsync, signals held back around the create and the publish, each
    block reading the old mask first; one getrandom per name),
    with no checks, no error paths and no Python layers: ``steps / floor`` is
    what the contract's extra steps cost, ``crashsafe / steps`` what the
    library's Python costs on top. With *statx* False, ``lstat`` and
    ``fstat`` read the two inodes instead, timestamps included.
    """
    head, name = os.path.split(path)
    owner = f"{os.getpid()}-{os.getpid()}-00000000"  # the length of crashsafe's owner tag
    raw_statx = _raw_statx()
    # The C-level function that crashsafe calls, without the enum sets of signal's wrapper.
    from _signal import pthread_sigmask as sigmask  # type: ignore[import-not-found]

    every_signal = signal.valid_signals()
    encoded = os.fsencode(name)

    def write() -> None:
        dir_fd = os.open(head, _DIR)
        if statx:
            raw_statx(dir_fd, encoded, 0x100)  # AT_SYMLINK_NOFOLLOW
        else:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        old = sigmask(signal.SIG_BLOCK, ())
        sigmask(signal.SIG_BLOCK, every_signal)
        fd = os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        if statx:
            raw_statx(fd, b"", 0x1100)  # AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW
        else:
            os.fstat(fd)
        sigmask(signal.SIG_SETMASK, old)
        os.write(fd, data)
        if durability != "none":
            os.fsync(fd)
        old = sigmask(signal.SIG_BLOCK, ())
        sigmask(signal.SIG_BLOCK, every_signal)
        temp = f".{name}.{os.urandom(8).hex()}.{owner}.crashsafe-tmp"
        os.link(f"/proc/self/fd/{fd}", temp, dst_dir_fd=dir_fd, follow_symlinks=True)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.close(fd)
        sigmask(signal.SIG_SETMASK, old)
        if durability == "durable":
            os.fsync(dir_fd)
        os.close(dir_fd)

    return write


def _file_object(path: str, data: bytes, durability: crashsafe.atomic.Durability) -> Op:
    """``AtomicFile`` written through its file object, as ``atomic_open`` callers do."""

    def write() -> None:
        with crashsafe.AtomicFile(path, durability=durability) as staged:
            staged.file.write(data)

    return write


def _atomicwrites(path: str, data: bytes) -> Op:
    def write() -> None:
        with atomicwrites.atomic_write(path, mode="wb", overwrite=True) as f:
            f.write(data)

    return write


def _safer(path: str, data: bytes) -> Op:
    def write() -> None:
        with safer.open(path, "wb") as f:
            f.write(data)

    return write


def _boltons(path: str, data: bytes) -> Op:
    def write() -> None:
        with atomic_save(path) as f:
            f.write(data)

    return write


# (row label, crashsafe contender, reference contender, target)
SMALL_ROWS = [
    ("durable: crashsafe / floor, dir opened per call", "cs durable", "floor durable", "<= 1.10"),
    ("durable: crashsafe / floor, dir fd kept open", "cs durable", "floor durable kept", ""),
    ("consistent: crashsafe / floor", "cs consistent", "floor consistent", "<= 1.25"),
    ("none: crashsafe / floor", "cs none", "floor none", "<= 1.25"),
    ("durable: crashsafe / atomicwrites", "cs durable", "atomicwrites", "< 1.0"),
    # safer never fsyncs and boltons never fsyncs the directory: a durable
    # write does one or two flushes more, each dearer than their whole write.
    # The target applies to the level that does what the peer does.
    ("durable: crashsafe / safer (no fsync at all)", "cs durable", "safer", ""),
    ("durable: crashsafe / boltons atomic_save (no directory fsync)", "cs durable", "boltons", ""),
    ("like for like: crashsafe none / safer (no fsync)", "cs none", "safer", "< 1.0"),
    ("like for like: crashsafe consistent / boltons (file fsync)", "cs consistent", "boltons",
     "< 1.0"),
    ("diagnostic: crashsafe durable, named temp / O_TMPFILE", "cs durable named", "cs durable", ""),
    ("diagnostic: crashsafe none, named temp / O_TMPFILE", "cs none named", "cs none", ""),
    ("where the time goes, durable: crashsafe's syscalls as raw os calls / floor",
     "steps durable", "floor durable", ""),
    ("where the time goes, durable: crashsafe / its syscalls as raw os calls",
     "cs durable", "steps durable", ""),
    ("where the time goes, none: crashsafe's syscalls as raw os calls / floor",
     "steps none", "floor none", ""),
    ("where the time goes, none: crashsafe / its syscalls as raw os calls",
     "cs none", "steps none", ""),
    ("where the time goes, durable: those syscalls with lstat and fstat / with statx",
     "steps durable stat", "steps durable", ""),
    ("where the time goes, consistent: those syscalls with lstat and fstat / with statx",
     "steps consistent stat", "steps consistent", ""),
    ("where the time goes, none: AtomicFile through its file object / atomic_write",
     "cs none file object", "cs none", ""),
    # Two copies of one contender: what the method reads when nothing differs.
    ("control: floor durable / the same floor in another directory",
     "floor durable twin", "floor durable", ""),
    ("control: floor none / the same floor in another directory",
     "floor none twin", "floor none", ""),
]  # fmt: skip


def contenders(data: bytes, kept: list[int]) -> dict[str, Callable[[str], Op]]:
    """Every small-write contender: name -> (target path -> one write of *data*).

    The kept-directory floor opens its target's directory once, when it is
    bound to a path, and appends the descriptor to *kept* for the caller to close.
    """

    def floor_kept(path: str) -> Op:
        kept.append(dir_fd := os.open(os.path.dirname(path), _DIR))
        return lambda: floor(path, data, fsync=True, dir_sync="kept", dir_fd=dir_fd)

    return {
        "cs durable": lambda p: _crashsafe(p, data, "durable"),
        "floor durable": lambda p: lambda: floor(p, data, fsync=True, dir_sync="open"),
        "floor durable kept": floor_kept,
        "cs consistent": lambda p: _crashsafe(p, data, "consistent"),
        "floor consistent": lambda p: lambda: floor(p, data, fsync=True, dir_sync=None),
        "cs none": lambda p: _crashsafe(p, data, "none"),
        "floor none": lambda p: lambda: floor(p, data, fsync=False, dir_sync=None),
        "floor durable twin": lambda p: lambda: floor(p, data, fsync=True, dir_sync="open"),
        "floor none twin": lambda p: lambda: floor(p, data, fsync=False, dir_sync=None),
        "atomicwrites": lambda p: _atomicwrites(p, data),
        "safer": lambda p: _safer(p, data),
        "boltons": lambda p: _boltons(p, data),
        "cs durable named": lambda p: _crashsafe_named(p, data, "durable"),
        "cs none named": lambda p: _crashsafe_named(p, data, "none"),
        "steps durable": lambda p: _steps(p, data, "durable"),
        "steps none": lambda p: _steps(p, data, "none"),
        "steps durable stat": lambda p: _steps(p, data, "durable", statx=False),
        "steps consistent": lambda p: _steps(p, data, "consistent"),
        "steps consistent stat": lambda p: _steps(p, data, "consistent", statx=False),
        "cs none file object": lambda p: _file_object(p, data, "none"),
    }


def prepared(directory: str, data: bytes, kept: list[int]) -> dict[str, Op]:
    """Each contender bound to its own existing 0644 target, warmed up.

    Every contender gets a directory of its own under *directory*: in a shared
    one, each contender's temporary names would change the directory the
    others write to (a small xfs directory that a long name pushes out of the
    inode costs a block allocation and a free on every write).
    """
    ops = {}
    run = tempfile.mkdtemp(prefix="small-", dir=directory)
    for i, (name, make) in enumerate(contenders(data, kept).items()):
        os.mkdir(home := os.path.join(run, f"contender-{i}"))
        path = os.path.join(home, "target")
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o644)
        ops[name] = make(path)
        ops[name]()  # warm up: imports, caches, the first temporary file
    return ops


def _run_small(directory: str, data: bytes, n: int, reps: int) -> dict[str, list[float]]:
    kept: list[int] = []
    try:
        ops = prepared(directory, data, kept)
        return interleave({name: partial(per_op, n, op) for name, op in ops.items()}, reps)
    finally:
        for fd in kept:
            os.close(fd)


def small_writes(directory: str, label: str, size: int, n: int, reps: int) -> Section:
    """Replace a small file *n* times per contender and repetition, interleaved."""
    times = _run_small(directory, os.urandom(size), n, reps)
    section = Section(
        f"Small writes, {size} bytes, {label}",
        (
            "crashsafe, median per write",
            "reference, median per write",
            "time ratio (95 % interval)",
        ),
    )
    for row_name, ours, ref, target in SMALL_ROWS:
        ratio = paired_ratio(times[ours], times[ref])
        section.rows.append(
            Row(
                row_name,
                fmt_time(statistics.median(times[ours])),
                fmt_time(statistics.median(times[ref])),
                ratio,
                target,
                check(ratio, target),
                ratio_interval(times[ours], times[ref]),
            )
        )
    section.notes.append(
        f"{reps} interleaved repetitions of {n} overwrites of an existing 0644 file per "
        "contender; ratio = median of the per-repetition ratios."
    )
    return section


def find_api(name: str, module: str) -> tuple[Any, str]:
    """``crashsafe.NAME``, or the same function from *module* before it is exported.

    Returns the function (None if neither exists) and how to name it in the table.
    """
    if (found := getattr(crashsafe, name, None)) is not None:
        return found, f"crashsafe.{name}"
    try:
        return getattr(importlib.import_module(module), name), f"{module}.{name} (not exported yet)"
    except (ImportError, AttributeError):
        return None, f"crashsafe.{name}"


def _batch_floor(paths: list[str], data: bytes) -> None:
    """The floor of a batch: every temp written and fsynced, renamed, one directory fsync."""
    temps = [os.path.join(os.path.dirname(p), f".{os.path.basename(p)}.tmp") for p in paths]
    for temp in temps:
        fd = os.open(temp, _CREATE, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
    for temp, path in zip(temps, paths, strict=True):
        os.rename(temp, path)
    dfd = os.open(os.path.dirname(paths[0]), _DIR)
    os.fsync(dfd)
    os.close(dfd)


def many_files(parent: str, count: int, reps: int) -> Section:
    """Create *count* new 100-byte files durably, one by one, in a fresh directory."""
    data = os.urandom(100)

    def measure(write_all: Callable[[list[str]], object]) -> float:
        directory = tempfile.mkdtemp(prefix="many-", dir=parent)
        paths = [os.path.join(directory, f"file-{i:05d}") for i in range(count)]
        try:
            return per_op(1, lambda: write_all(paths)) / count
        finally:
            shutil.rmtree(directory)

    def one_by_one(paths: list[str]) -> None:
        for path in paths:
            crashsafe.atomic_write(path, data)

    def floor_loop(dir_sync: str) -> Callable[[list[str]], None]:
        def write_all(paths: list[str]) -> None:
            dir_fd = os.open(os.path.dirname(paths[0]), _DIR) if dir_sync == "kept" else -1
            for path in paths:
                floor(path, data, fsync=True, dir_sync=dir_sync, dir_fd=dir_fd)
            if dir_fd >= 0:
                os.close(dir_fd)

        return write_all

    write_many, where = find_api("write_many", "crashsafe.batch")
    contenders: dict[str, Callable[[], float]] = {
        "cs": lambda: measure(one_by_one),
        "floor": lambda: measure(floor_loop("open")),
        "floor kept": lambda: measure(floor_loop("kept")),
        "batch floor": lambda: measure(lambda paths: _batch_floor(paths, data)),
    }
    if write_many is not None:
        contenders["write_many"] = lambda: measure(
            lambda paths: write_many(dict.fromkeys(paths, data), durability="durable")
        )
    times = interleave(contenders, reps)
    section = Section(
        f"Many files: {count} new 100-byte files, durable",
        ("crashsafe, median per file", "reference, median per file", "time ratio (95 % interval)"),
    )

    def row(name: str, ours: str, ref: str, target: str = "") -> Row:
        ratio = paired_ratio(times[ours], times[ref])
        a, b = statistics.median(times[ours]), statistics.median(times[ref])
        interval = ratio_interval(times[ours], times[ref])
        return Row(name, fmt_time(a), fmt_time(b), ratio, target, check(ratio, target), interval)

    section.rows += [
        row("atomic_write one by one / floor loop, dir opened per file", "cs", "floor", "<= 1.10"),
        row("atomic_write one by one / floor loop, dir fd kept open", "cs", "floor kept"),
    ]
    if write_many is not None:
        section.rows.append(row(f"{where} / batch floor", "write_many", "batch floor"))
    else:
        batch = fmt_time(statistics.median(times["batch floor"]))
        section.rows.append(
            Row("write_many / batch floor", "not implemented yet", batch, None, "", None)
        )
    section.notes += [
        f"{reps} interleaved repetitions; each writes {count} new files into a fresh empty "
        "directory (created and removed outside the timing).",
        "Batch floor: every temporary file written and fsynced, then all renamed, then one "
        "directory fsync; the reference for a batch API.",
    ]
    return section


def after_a_wait(directory: str, label: str, reps: int, pause: float = 0.002) -> Section:
    """The same `none` write timed back to back and right after a sleep, on a tmpfs.

    A durable write sleeps in each fsync; whatever runs after the wait runs on
    a CPU that has been idle. Each repetition times one write of each contender
    right after another (warm) and one right after a *pause* sleep, in a fresh
    order; a tmpfs, so that the filesystem adds no wait of its own. crashsafe
    against its own syscalls as raw ``os`` calls (:func:`_steps`) shows what
    its Python costs in either state.
    """
    data = os.urandom(4096)
    run = tempfile.mkdtemp(prefix="wait-", dir=directory)
    ops: dict[str, Op] = {}
    for name in ("cs", "steps"):
        os.mkdir(home := os.path.join(run, name))
        with open(path := os.path.join(home, "target"), "wb") as f:
            f.write(data)
        ops[name] = _crashsafe(path, data, "none") if name == "cs" else _steps(path, data, "none")
        ops[name]()
    times: dict[str, list[float]] = {f"{n} {state}": [] for n in ops for state in ("warm", "cold")}
    clock = time.perf_counter
    enabled = gc.isenabled()
    gc.disable()
    try:
        for rep in range(reps):
            for name in random.Random(rep).sample(list(ops), len(ops)):  # noqa: S311 - an order
                op = ops[name]
                time.sleep(pause)
                start = clock()
                op()
                middle = clock()
                op()
                times[f"{name} cold"].append(middle - start)
                times[f"{name} warm"].append(clock() - middle)
    finally:
        if enabled:
            gc.enable()
        shutil.rmtree(run)
    section = Section(
        f"Python after a wait: 4096-byte `none` writes, {label}",
        ("first, median per write", "second, median per write", "time ratio (95 % interval)"),
    )

    def row(name: str, ours: str, ref: str) -> Row:
        a, b = times[ours], times[ref]
        ratio = paired_ratio(a, b)
        medians = fmt_time(statistics.median(a)), fmt_time(statistics.median(b))
        return Row(name, *medians, ratio, "", None, ratio_interval(a, b))

    section.rows += [
        row(f"crashsafe: after a {pause * 1e3:g} ms sleep / back to back", "cs cold", "cs warm"),
        row(f"raw syscalls: after a {pause * 1e3:g} ms sleep / back to back", "steps cold",
            "steps warm"),
        row("back to back: crashsafe / its syscalls as raw os calls", "cs warm", "steps warm"),
        row(f"after a {pause * 1e3:g} ms sleep: crashsafe / its syscalls as raw os calls",
            "cs cold", "steps cold"),
    ]  # fmt: skip
    python = {
        state: statistics.median(
            c - s for c, s in zip(times[f"cs {state}"], times[f"steps {state}"], strict=True)
        )
        for state in ("warm", "cold")
    }
    section.notes += [
        f"{reps} repetitions; in each, every contender in a fresh order: a {pause * 1e3:g} ms "
        "sleep, one write (first), and at once another (second).",
        f"The Python on top (crashsafe minus its raw syscalls, median of the paired "
        f"differences): {fmt_time(python['warm'])} back to back, {fmt_time(python['cold'])} "
        "after the sleep. A durable write waits twice (the file and the directory fsync), so "
        "its Python runs after a wait too.",
    ]
    return section


def trace_child(directory: str) -> None:
    """One 100-byte write per contender between two marker syscalls, for strace."""
    kept: list[int] = []
    for name, op in prepared(directory, os.urandom(100), kept).items():
        os.access(f"/.bench-begin/{name}", os.F_OK)
        op()
        os.access("/.bench-end", os.F_OK)
    for fd in kept:
        os.close(fd)


if __name__ == "__main__":
    trace_child(sys.argv[1])
