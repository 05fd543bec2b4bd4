"""``import crashsafe`` time, what it imports, update_json lock round-trips, and the
cost of append mode on a large file."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Row, Section, fmt_time, interleave, paired_ratio, per_op, ratio_interval
from small import find_api, floor

import crashsafe

PACKAGE = Path(crashsafe.__file__).parent


def _python(code: str, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, "-c", code], env=env, check=True, capture_output=True, text=True
    )


def _import_us(env: dict[str, str]) -> float:
    """Cumulative microseconds of the ``crashsafe`` line of ``-X importtime``."""
    stderr = _python("import crashsafe", env, "-X", "importtime").stderr
    for line in stderr.splitlines():
        fields = [f.strip() for f in line.removeprefix("import time:").split("|")]
        if len(fields) == 3 and fields[2] == "crashsafe":
            return float(fields[1])
    raise RuntimeError(f"no crashsafe line in -X importtime output:\n{stderr}")


def import_time(runs: int) -> Section:
    """Median import time with and without bytecode, from a private copy of the package."""
    with tempfile.TemporaryDirectory(prefix="crashsafe-bench-import-") as tmp:
        cached_dir, source_dir = Path(tmp, "cached"), Path(tmp, "source")
        for where in (cached_dir, source_dir):
            shutil.copytree(
                PACKAGE, where / "crashsafe", ignore=shutil.ignore_patterns("__pycache__")
            )
        base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached = {**base, "PYTHONPATH": str(cached_dir)}
        source = {**base, "PYTHONPATH": str(source_dir), "PYTHONDONTWRITEBYTECODE": "1"}
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(cached_dir)], env=base, check=True
        )
        for env, where in ((cached, cached_dir), (source, source_dir)):
            found = _python("import crashsafe; print(crashsafe.__file__)", env).stdout
            if not found.startswith(str(where)):
                raise RuntimeError(f"imported {found!r}, not the copy in {where}")
        times = interleave(
            {"cached": lambda: _import_us(cached), "source": lambda: _import_us(source)}, runs
        )
        listing = "import sys; print(*sorted(sys.modules), sep=chr(10))"
        bare = set(_python(listing, cached).stdout.split())
        added = sorted(set(_python("import crashsafe; " + listing, cached).stdout.split()) - bare)
    section = Section(
        "import crashsafe",
        ("crashsafe, median", "", ""),
    )
    ms_cached = statistics.median(times["cached"]) / 1e3
    ms_source = statistics.median(times["source"]) / 1e3
    section.rows += [
        Row("import time, bytecode cached (compileall)", f"{ms_cached:.2f} ms", target="< 15 ms",
            ok=ms_cached < 15),
        Row("import time, no bytecode (PYTHONDONTWRITEBYTECODE=1, compiled every run)",
            f"{ms_source:.2f} ms"),
        Row("modules imported by `import crashsafe` beyond `python3 -c pass`", str(len(added))),
    ]  # fmt: skip
    section.notes += [
        f"Median of {runs} fresh `python3 -X importtime -c 'import crashsafe'` runs per variant, "
        "interleaved; the cumulative time of the `crashsafe` line. Each variant imports a "
        "private copy of the package (PYTHONPATH), with and without `__pycache__`; the "
        "standard library is imported from its usual, cached location in both.",
        "Modules added by `import crashsafe`: " + ", ".join(f"`{m}`" for m in added) + ".",
    ]
    return section


def _update_floor(path: str, lock: str) -> None:
    """A read-modify-write under an exclusive flock, published by the durable floor."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with open(path, "rb") as f:
            doc = json.loads(f.read())
        doc["n"] += 1
        floor(path, json.dumps(doc).encode(), fsync=True, dir_sync="open")
    finally:
        os.close(fd)  # releases the lock


def update_json(directory: str, n: int, reps: int) -> Section:
    """Lock round-trips of crashsafe.update_json against a flock + floor write."""
    section = Section(
        "update_json: locked read-modify-write round-trips",
        ("crashsafe, median per update", "floor, median per update", "time ratio (95 % interval)"),
    )
    ours_path, floor_path = os.path.join(directory, "ours.json"), os.path.join(directory, "f.json")
    for path in (ours_path, floor_path):
        Path(path).write_text('{"n": 0}')
    lock = floor_path + ".lock"

    def floor_op() -> float:
        return per_op(n, lambda: _update_floor(floor_path, lock))

    update, where = find_api("update_json", "crashsafe.documents")
    label = f"{where} / flock + floor"
    if update is None:
        floor_time = statistics.median(interleave({"floor": floor_op}, reps)["floor"])
        section.rows.append(Row(label, "not implemented yet", fmt_time(floor_time)))
        return section
    try:
        update(ours_path, lambda doc: {**doc, "n": doc["n"] + 1})
    except TypeError as e:
        section.rows.append(Row(label, f"present, but `update_json(path, fn)` failed: {e}"))
        return section

    def ours_op() -> float:
        return per_op(n, lambda: update(ours_path, lambda d: {**d, "n": d["n"] + 1}))

    times = interleave({"ours": ours_op, "floor": floor_op}, reps)
    ratio = paired_ratio(times["ours"], times["floor"])
    section.rows.append(
        Row(
            label,
            fmt_time(statistics.median(times["ours"])),
            fmt_time(statistics.median(times["floor"])),
            ratio,
            interval=ratio_interval(times["ours"], times["floor"]),
        )
    )
    section.notes.append(
        f"{reps} interleaved repetitions of {n} updates; the floor takes an exclusive flock on a "
        "lock file, reads and parses the JSON, and publishes it with the durable floor."
    )
    return section


def append_large(directory: str, size: int, reps: int) -> Section:
    """Append 100 bytes to a *size*-byte file: crashsafe's ``ab`` against an in-place append.

    Append mode publishes a new file holding the old content and the new bytes,
    so it copies the whole old file every time; an in-place append (``O_APPEND``,
    write, fsync) writes only the new bytes, and is not all or nothing.
    """
    section = Section(
        f"Append 100 bytes to a {size >> 20} MiB file",
        (
            'crashsafe `atomic_open(path, "ab")`, median',
            "in-place O_APPEND write + fsync, median",
            "time ratio (95 % interval)",
        ),
    )
    ours_path, floor_path = os.path.join(directory, "append.ours"), os.path.join(directory, "a.fl")
    for path in (ours_path, floor_path):
        with open(path, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
            os.fsync(f.fileno())
    line = b"x" * 99 + b"\n"

    def ours() -> None:
        with crashsafe.atomic_open(ours_path, "ab") as f:
            f.write(line)

    def floor() -> None:
        fd = os.open(floor_path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    times = interleave({"ours": lambda: per_op(1, ours), "floor": lambda: per_op(1, floor)}, reps)
    section.rows.append(
        Row(
            "one durable append",
            fmt_time(statistics.median(times["ours"])),
            fmt_time(statistics.median(times["floor"])),
            paired_ratio(times["ours"], times["floor"]),
            interval=ratio_interval(times["ours"], times["floor"]),
        )
    )
    section.notes.append(
        f"{reps} interleaved repetitions, page cache warm. The price of all or nothing: "
        "append mode copies the old content into the staged file (copy_file_range, or a "
        "reflink where the filesystem has one) and fsyncs it, so its time grows with the "
        "file; the in-place append can leave a torn last line after a crash."
    )
    for path in (ours_path, floor_path):
        os.unlink(path)
    return section


_CALL = re.compile(r"^(?:\d+ +)?(\w+)\((.*)")
_FSYNC = re.compile(r"^f(?:data)?sync\(\d+<(.*)>(?:\(deleted\))?\)")
# Memory management, not part of any protocol.
_IGNORED = frozenset({"mmap", "munmap", "brk", "mprotect", "madvise", "futex"})


def syscalls(directory: str) -> Section:
    """What each small-write contender asks of the kernel, from strace of one write."""
    section = Section("What each contender does per write (strace)", ("", "", ""))
    if shutil.which("strace") is None:
        section.notes.append("strace is not installed: skipped.")
        return section
    with tempfile.TemporaryDirectory(prefix="trace-", dir=directory) as tmp:
        out = os.path.join(tmp, "trace.txt")
        work = os.path.join(tmp, "work")
        os.mkdir(work)
        small_py = os.path.join(os.path.dirname(__file__), "small.py")
        subprocess.run(
            ["strace", "-f", "-qq", "-y", "-o", out, sys.executable, small_py, work], check=True
        )
        lines = Path(out).read_text().splitlines()
        calls: dict[str, list[str]] = {}
        fsyncs: dict[str, tuple[int, int]] = {}
        current: str | None = None
        for line in lines:
            match = _CALL.match(line)
            if match is None:
                continue
            name, args = match.groups()
            if name == "access" and '"/.bench-begin/' in args:
                current = args.split('"')[1].removeprefix("/.bench-begin/")
                calls[current], fsyncs[current] = [], (0, 0)
            elif name == "access" and '"/.bench-end"' in args:
                current = None
            elif current is not None and name not in _IGNORED:
                calls[current].append(name)
                if fsync := _FSYNC.match(f"{name}({args}"):
                    files, dirs = fsyncs[current]
                    is_dir = os.path.isdir(fsync.group(1))
                    fsyncs[current] = (files + (not is_dir), dirs + is_dir)
    table = [
        "| contender | syscalls | file fsyncs | dir fsyncs | sequence |",
        "|---|---:|---:|---:|---|",
    ]
    for name, names in calls.items():
        files, dirs = fsyncs[name]
        table.append(f"| {name} | {len(names)} | {files} | {dirs} | {', '.join(names)} |")
    section.text = "\n".join(table)
    section.notes.append(
        "One 100-byte overwrite per contender, after a warm-up write, traced with "
        "`strace -f -y`; memory-management calls (mmap, brk, futex...) left out. "
        "'cs' is crashsafe; 'named' is crashsafe with O_TMPFILE turned off."
    )
    return section
