"""The event loop's lag while 100 durable writes run: crashsafe.aio against the blocking API.

A ticker task asks for a 1 ms sleep over and over and records how late each
wake-up is (its lag): what every other task on the loop (a server answering
requests) waits on top of its own work. Meanwhile one task makes 100 durable
``atomic_write`` calls of 4 KiB, one after another, three ways, interleaved
round by round in the same run:

* ``aio``: ``await crashsafe.aio.atomic_write(...)``;
* ``aio, gathered``: the same 100 calls started at once (``asyncio.gather``);
* ``idle``: no writes, the ticker alone for 100 ms (the machine's own noise);
* ``blocking``: ``crashsafe.atomic_write(...)`` called from the coroutine, with
  ``await asyncio.sleep(0)`` after each write (the best case for the blocking
  API: the loop gets a turn between writes, never during one).

Reported per way: the median over the rounds of each round's largest lag,
the 99th and 50th percentiles over every tick of every round, the median
time the 100 writes took, and the ratios blocking / aio of the same run.
Run: ``python3 benchmarks/aio.py [--rounds N] [--dir DIR]`` (default: a
directory under /var/tmp, the machine's disk).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import common  # noqa: F401 - puts this checkout's crashsafe first on sys.path

import crashsafe
from crashsafe import aio

WRITES = 100
PAYLOAD = b"x" * 4096
TICK = 0.001


async def _ticker(lags: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        start = loop.time()
        await asyncio.sleep(TICK)
        lags.append(loop.time() - start - TICK)


async def _aio(d: Path) -> None:
    for i in range(WRITES):
        await aio.atomic_write(d / f"f{i}", PAYLOAD)


async def _gathered(d: Path) -> None:
    await asyncio.gather(*(aio.atomic_write(d / f"f{i}", PAYLOAD) for i in range(WRITES)))


async def _blocking(d: Path) -> None:
    for i in range(WRITES):
        crashsafe.atomic_write(d / f"f{i}", PAYLOAD)
        await asyncio.sleep(0)


async def _idle(d: Path) -> None:
    await asyncio.sleep(0.1)


WAYS: dict[str, Callable[[Path], Awaitable[None]]] = {
    "idle (no writes, 100 ms)": _idle,
    "aio": _aio,
    "aio, gathered": _gathered,
    "blocking": _blocking,
}


async def _round(way: Callable[[Path], Awaitable[None]], d: Path) -> tuple[list[float], float]:
    """The ticker's lags while *way* ran, and the time *way* took."""
    lags: list[float] = []
    stop = asyncio.Event()
    ticking = asyncio.create_task(_ticker(lags, stop))
    await asyncio.sleep(0.01)  # the ticker is running; its first lags are dropped below
    lags.clear()
    start = time.perf_counter()
    await way(d)
    took = time.perf_counter() - start
    stop.set()
    await ticking
    return lags, took


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="crashsafe-bench-aio-", dir=args.dir))
    lags: dict[str, list[float]] = {name: [] for name in WAYS}
    maxima: dict[str, list[float]] = {name: [] for name in WAYS}
    took: dict[str, list[float]] = {name: [] for name in WAYS}
    try:

        async def run_all() -> None:
            for r in range(args.rounds):
                for i, (name, way) in enumerate(WAYS.items()):
                    d = base / f"{r}-{i}"
                    d.mkdir()
                    seen, seconds = await _round(way, d)
                    lags[name] += seen
                    maxima[name].append(max(seen, default=0.0))
                    took[name].append(seconds)

        asyncio.run(run_all())
    finally:
        shutil.rmtree(base)

    def figures(name: str) -> tuple[float, float, float, float]:
        return (
            statistics.median(maxima[name]),
            _quantile(lags[name], 0.99),
            _quantile(lags[name], 0.5),
            statistics.median(took[name]),
        )

    print(f"{WRITES} durable 4 KiB writes, ticker every {TICK * 1000:g} ms, {args.rounds} rounds,")
    print(f"directory {args.dir}. Max lag: median over the rounds of each round's largest;")
    print("p99 and p50: over every tick of every round; time: median over the rounds.\n")
    print("| way | max lag | p99 lag | p50 lag | ticks | 100 writes took |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in WAYS:
        mx, p99, p50, t = figures(name)
        print(
            f"| {name} | {mx * 1e3:.2f} ms | {p99 * 1e3:.2f} ms | {p50 * 1e3:.2f} ms "
            f"| {len(lags[name])} | {t * 1e3:.0f} ms |"
        )
    print()
    ours, blocking = figures("aio"), figures("blocking")
    for label, i in (("max lag", 0), ("p99 lag", 1), ("time of the writes", 3)):
        print(f"- {label}, blocking / aio: {blocking[i] / ours[i]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
