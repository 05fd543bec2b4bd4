"""What each piece of native tuning is worth: a write with it against the same write without.

The pieces live in ``crashsafe._platform._native``; its documented switch,
the ``CRASHSAFE_NATIVE`` environment variable read by ``_native.probe()``,
chooses which of them a write uses. Every configuration writes its own
existing file in a directory of its own, at each durability level,
interleaved in fresh random orders like every other small-write benchmark;
the probe runs between measurements, outside the timing.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable

from common import Row, Section, fmt_time, interleave, paired_ratio, per_op, ratio_interval

import crashsafe
from crashsafe._platform import _native

LEVELS = ("durable", "consistent", "none")

# name -> the pieces it switches on (CRASHSAFE_NATIVE). Without the warm-up,
# which only moves the loading of statx to a process's second write (priced
# by first_writes); "none" is the pure-Python way.
STEADY = tuple(p for p in _native.PIECES if p != "warmup")
CONFIGS: dict[str, tuple[str, ...]] = {
    "all": STEADY,
    **{f"all but {p}": tuple(q for q in STEADY if q != p) for p in STEADY},
    # _signal serves the signal blocks only where libc_sigmask does not.
    "statx only": ("statx",),
    "none": (),
    # Two copies of one configuration: what the method reads when nothing differs.
    "all, twin": STEADY,
}

# (what is priced, the configuration without it, the configuration with it)
ROWS: list[tuple[str, str, str]] = [
    *((piece, f"all but {piece}", "all") for piece in STEADY if piece != "_signal"),
    ("_signal (with libc_sigmask off)", "statx only", "all but libc_sigmask"),
    ("every piece (the pure-Python write / all)", "none", "all"),
    ("control: the same configuration in another directory", "all, twin", "all"),
]


def _use(pieces: tuple[str, ...]) -> None:
    os.environ["CRASHSAFE_NATIVE"] = ",".join(pieces)
    _native.probe()


def steady(directory: str, label: str, n: int, reps: int) -> Section:
    """Each row's two configurations at each level, *n* 100-byte overwrites a measurement."""
    data = os.urandom(100)
    run = tempfile.mkdtemp(prefix="tuning-", dir=directory)
    needed = sorted({c for _, without, with_ in ROWS for c in (without, with_)})
    contenders: dict[str, Callable[[], float]] = {}
    saved = os.environ.get("CRASHSAFE_NATIVE")
    try:
        for config in needed:
            for level in LEVELS:
                os.mkdir(
                    home := os.path.join(
                        run, f"{config}-{level}".replace(" ", "-").replace(",", "")
                    )
                )
                path = os.path.join(home, "target")
                with open(path, "wb") as f:
                    f.write(data)
                os.chmod(path, 0o644)

                def measure(path: str = path, level: str = level, config: str = config) -> float:
                    _use(CONFIGS[config])
                    crashsafe.atomic_write(path, data, durability=level)  # type: ignore[arg-type]
                    return per_op(
                        n,
                        lambda: crashsafe.atomic_write(path, data, durability=level),  # type: ignore[arg-type]
                    )

                contenders[f"{config} {level}"] = measure
        times = interleave(contenders, reps)
    finally:
        if saved is None:
            os.environ.pop("CRASHSAFE_NATIVE", None)
        else:
            os.environ["CRASHSAFE_NATIVE"] = saved
        _native.probe()
        subprocess.run(["rm", "-rf", run], check=False)
    section = Section(
        f"What each piece of tuning is worth, 100-byte writes, {label}",
        ("without it, median per write", "with it, median per write", "time ratio (95 % interval)"),
    )
    for piece, without, with_ in ROWS:
        for level in LEVELS:
            a, b = times[f"{without} {level}"], times[f"{with_} {level}"]
            section.rows.append(_without_with(f"{level}: {piece}", a, b))
    section.notes.append(
        f"{reps} interleaved repetitions of {n} overwrites of an existing 0644 file per "
        "configuration and level; a ratio above 1.00 is what the piece saves (1.03: 3 % of "
        "a write). Configurations are chosen with CRASHSAFE_NATIVE and `_native.probe()`."
    )
    return section


FIRST_WRITE = """
import os, sys, time
clock = time.perf_counter
t0 = clock()
import crashsafe
t1 = clock()
crashsafe.atomic_write(sys.argv[1], b"x" * 100, durability=sys.argv[2])
t2 = clock()
crashsafe.atomic_write(sys.argv[1], b"y" * 100, durability=sys.argv[2])
t3 = clock()
print(t1 - t0, t2 - t1, t3 - t2)
"""

# The first writes of a fresh process: statx loaded (with ctypes) at the
# first write, or after a first write that reads with stat (the warm-up), or
# never (signals still through _signal).
FIRST_CONFIGS = {
    "warm-up": _native.PIECES,
    "at the first write": STEADY,
    "no statx": tuple(p for p in STEADY if p != "statx"),
}


def first_writes(directory: str, label: str, reps: int) -> Section:
    """``import crashsafe`` and a process's first two writes, in fresh child processes."""
    run = tempfile.mkdtemp(prefix="tuning-first-", dir=directory)
    contenders: dict[str, Callable[[], float]] = {}
    results: dict[str, list[tuple[float, float, float]]] = {}
    try:
        for config, pieces in FIRST_CONFIGS.items():
            for level in LEVELS:
                os.mkdir(home := os.path.join(run, f"{config}-{level}".replace(" ", "-")))
                path = os.path.join(home, "target")
                with open(path, "wb") as f:
                    f.write(b"old")
                key = f"{config} {level}"
                results[key] = []
                env = {**os.environ, "CRASHSAFE_NATIVE": ",".join(pieces)}

                def measure(
                    path: str = path, level: str = level, env: dict[str, str] = env, key: str = key
                ) -> float:
                    out = subprocess.run(
                        [sys.executable, "-c", FIRST_WRITE, path, level],
                        env=env,
                        check=True,
                        capture_output=True,
                        text=True,
                    ).stdout
                    imported, first, second = map(float, out.split())
                    results[key].append((imported, first, second))
                    return first

                contenders[key] = measure
        interleave(contenders, reps)
    finally:
        subprocess.run(["rm", "-rf", run], check=False)
    section = Section(
        f"What each piece of tuning is worth: a process's first writes, {label}",
        ("without it, median", "with it, median", "time ratio (95 % interval)"),
    )
    parts: dict[str, Callable[[tuple[float, float, float]], float]] = {
        "first write": lambda r: r[1],
        "second write": lambda r: r[2],
        "import + first two writes": lambda r: r[0] + r[1] + r[2],
    }
    pairs = [
        ("warm-up (statx loaded at the first write / at the second)", "at the first write",
         "warm-up"),
        ("statx with the warm-up (no statx / statx loaded at the second write)", "no statx",
         "warm-up"),
    ]  # fmt: skip
    for piece, without, with_ in pairs:
        for level in LEVELS:
            for part, pick in parts.items():
                a = [pick(r) for r in results[f"{without} {level}"]]
                b = [pick(r) for r in results[f"{with_} {level}"]]
                section.rows.append(_without_with(f"{level}, {part}: {piece}", a, b))
    section.notes.append(
        f"{reps} interleaved repetitions; each is a fresh `python3 -c` process that imports "
        "crashsafe and overwrites a 100-byte file twice, with every piece: statx (and "
        "ctypes) loaded at the third status read (the warm-up: the second write) or at the "
        "first; or without statx. Each process's `import crashsafe` is in the sum."
    )
    return section


def _without_with(what: str, without: list[float], with_: list[float]) -> Row:
    """A row pricing a piece: the times without it over the times with it."""
    return Row(
        f"{what}, without / with",
        fmt_time(statistics.median(without)),
        fmt_time(statistics.median(with_)),
        paired_ratio(without, with_),
        "",
        None,
        ratio_interval(without, with_),
    )
