"""crashsafe.aio: real concurrency on one loop, and a cancellation at every await.

The cancellation harness counts the steps a call submits to the loop's
executor, then for each step k cancels the task deterministically: "before"
(the task is cancelled, and has seen it, before step k's work starts),
"after" (once step k's work is done, before the step returns), "after, twice"
(cancelled again while it waits for that step); and right before and right
after the commit gate that lets the rename go. Each run checks the promise:
the call returned and published, or raised CancelledError and published
exactly when it said so (the note), and the directory held the old or the
new file and nothing else both when the call ended and after every thread
was done. No sleeps: each handshake waits on events the loop sets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import crashsafe
from crashsafe import _aio_steps, aio
from tests.children import Child, spawned

if TYPE_CHECKING:
    from tests.harness.s3servers import Server

OLD, NEW = b"old content\n", b"new content, longer than the old\n" * 50


# --------------------------------------------------------------------------- the harness


class CancellingExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, counting submissions; at submission *at* it
    cancels *task* before (or after) the job's work, and waits until the task
    has seen the cancellation."""

    def __init__(self, at: int | None, phase: str) -> None:
        super().__init__(max_workers=4)
        self.at, self.phase = at, phase
        self.count = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None

    def cancel_task(self) -> None:
        """From a worker thread: cancel the task; return once the loop ran its wakeup
        (with "twice" in the phase, cancel it again once it has seen the first)."""
        assert self.loop is not None and self.task is not None
        seen = threading.Event()

        def cancel() -> None:
            assert self.task is not None and self.loop is not None
            self.task.cancel()
            if "twice" in self.phase:
                # After the task's wakeup, which cancel() just scheduled.
                self.loop.call_soon(self.task.cancel)
            # Queued after the task's wakeup(s).
            self.loop.call_soon(seen.set)

        self.loop.call_soon_threadsafe(cancel)
        assert seen.wait(30), "the loop never saw the cancellation"

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        k, self.count = self.count, self.count + 1
        if k != self.at or "gate" in self.phase:
            return super().submit(fn, *args, **kwargs)

        def job() -> Any:
            if self.phase.startswith("before"):
                self.cancel_task()
            try:
                return fn(*args, **kwargs)
            finally:
                if self.phase.startswith("after"):
                    self.cancel_task()

        return super().submit(job)


# The executor of the call run_call is running, for a call that cancels itself.
RUNNING: list[CancellingExecutor] = []


@dataclass
class Outcome:
    steps: int
    result: str  # "returned", "cancelled", "cancelled, replaced" or an exception's name
    at_end: dict[str, bytes]  # the directory when the call ended
    final: dict[str, bytes]  # and once every thread was done


def listing(d: Path) -> dict[str, bytes]:
    """Every file under *d* but lock files (which stay, by design), by relative path."""
    return {
        str(p.relative_to(d)): p.read_bytes()
        for p in sorted(d.rglob("*"))
        if not p.is_dir() and not p.name.endswith(".lock")
    }


def run_call(
    d: Path, call: Callable[[], Awaitable[object]], at: int | None = None, phase: str = "before"
) -> Outcome:
    executor = CancellingExecutor(at, phase)
    RUNNING[:] = [executor]
    result = ""
    at_end: dict[str, bytes] = {}

    async def main() -> None:
        nonlocal result, at_end
        loop = asyncio.get_running_loop()
        loop.set_default_executor(executor)
        executor.loop, executor.task = loop, asyncio.current_task()
        try:
            await call()
            result = "returned"
        except asyncio.CancelledError as e:
            notes = getattr(e, "__notes__", [])
            result = "cancelled, replaced" if any("replaced" in n for n in notes) else "cancelled"
        except Exception as e:  # reported, and judged by the test
            result = type(e).__name__
        at_end = listing(d)  # before asyncio.run waits for the executor's threads

    if "gate" in phase:
        # "before the gate" or "after the gate": the committing thread's own hook.
        _aio_steps._test_hook = lambda where: executor.cancel_task() if where == phase else None
    try:
        asyncio.run(main())
    finally:
        _aio_steps._test_hook = None
    return Outcome(executor.count, result, at_end, listing(d))


def check(outcome: Outcome, old: dict[str, bytes], new: dict[str, bytes]) -> list[str]:
    """What is wrong with *outcome*; empty if it keeps the promise."""
    wrong = []
    if outcome.final != outcome.at_end:
        wrong.append("the directory changed after the call ended (a thread still working)")
    if outcome.result == "returned" and outcome.at_end != new:
        wrong.append(f"returned, but the directory holds {sorted(outcome.at_end)}")
    if outcome.result == "cancelled" and outcome.at_end != old:
        published = outcome.at_end == new
        wrong.append(
            "raised CancelledError but the file was published"
            if published
            else f"cancelled, and the directory holds {sorted(outcome.at_end)} (debris?)"
        )
    if outcome.result == "cancelled, replaced" and outcome.at_end != new:
        wrong.append("said replaced, but the new file is not there")
    if outcome.result not in ("returned", "cancelled", "cancelled, replaced"):
        wrong.append(f"raised {outcome.result}")
    return wrong


def explore(
    tmp_path: Path,
    make_call: Callable[[Path], Callable[[], Awaitable[object]]],
    old: dict[str, bytes],
    new: dict[str, bytes],
    setup: Callable[[Path], None],
) -> tuple[list[str], list[tuple[int | None, str, str]]]:
    """Cancel *make_call(d)*'s call at every step, in every phase; return the
    failures and what each run did."""
    failures: list[str] = []
    seen: list[tuple[int | None, str, str]] = []
    counting = tmp_path / "count"
    counting.mkdir()
    setup(counting)
    steps = run_call(counting, make_call(counting)).steps
    assert steps >= 1
    phases = ("before", "after", "after, twice")
    plans: list[tuple[int | None, str]] = [(k, p) for k in range(steps) for p in phases]
    plans += [(None, "before the gate"), (None, "after the gate")]
    for i, (k, phase) in enumerate(plans):
        d = tmp_path / f"run{i}"
        d.mkdir()
        setup(d)
        outcome = run_call(d, make_call(d), k, phase)
        seen.append((k, phase, outcome.result))
        failures += [f"step {k} {phase}: {w}" for w in check(outcome, old, new)]
    return failures, seen


def with_old(d: Path) -> None:
    (d / "target").write_bytes(OLD)


OLD_DIR, NEW_DIR = {"target": OLD}, {"target": NEW}


def aio_write(d: Path) -> Callable[[], Awaitable[object]]:
    return lambda: aio.atomic_write(d / "target", NEW)


def aio_open(d: Path) -> Callable[[], Awaitable[object]]:
    async def call() -> None:
        async with aio.atomic_open(d / "target", "wb") as f:
            await f.write(NEW[:100])
            await f.write(NEW[100:])
            await f.flush()

    return call


def aio_copy(d: Path) -> Callable[[], Awaitable[object]]:
    return lambda: aio.atomic_copy(d / "source", d / "target")


def with_source(d: Path) -> None:
    with_old(d)
    (d / "source").write_bytes(NEW)


# --------------------------------------------------------------------------- cancellation


Case = tuple[
    Callable[[Path], Callable[[], Awaitable[object]]],
    Callable[[Path], None],
    dict[str, bytes],
    dict[str, bytes],
]
CASES: dict[str, Case] = {
    "atomic_write": (aio_write, with_old, OLD_DIR, NEW_DIR),
    "atomic_open": (aio_open, with_old, OLD_DIR, NEW_DIR),
    "atomic_copy": (aio_copy, with_source, {**OLD_DIR, "source": NEW}, {**NEW_DIR, "source": NEW}),
}


@pytest.mark.parametrize("name", CASES)
def test_cancelled_at_every_await_publishes_exactly_when_it_says(
    tmp_path: Path, staging: str, name: str
) -> None:
    make_call, setup, old, new = CASES[name]
    failures, seen = explore(tmp_path, make_call, old, new, setup)
    assert failures == [], seen
    results = {r for _, _, r in seen}
    # Both sides of the commit were reached: some cancellations published nothing,
    # the one during the commit published and said so.
    assert "cancelled" in results and "cancelled, replaced" in results, seen
    assert seen[-2:] == [
        (None, "before the gate", "cancelled"),
        (None, "after the gate", "cancelled, replaced"),
    ]


def test_update_json_cancelled_at_every_await(tmp_path: Path, staging: str) -> None:
    def setup(d: Path) -> None:
        (d / "sub").mkdir()
        (d / "sub" / "doc.json").write_bytes(b'{"n": 1}\n')

    def make_call(d: Path) -> Callable[[], Awaitable[object]]:
        return lambda: aio.update_json(
            d / "sub" / "doc.json", lambda doc: {"n": doc["n"] + 1}, parents=True
        )

    failures, seen = explore(
        tmp_path,
        make_call,
        {"sub/doc.json": b'{"n": 1}\n'},
        {"sub/doc.json": b'{\n  "n": 2\n}\n'},
        setup,
    )
    assert failures == [], seen
    assert seen[-2:] == [
        (None, "before the gate", "cancelled"),
        (None, "after the gate", "cancelled, replaced"),
    ]


def test_atomic_open_committed_says_what_a_cancellation_left(tmp_path: Path) -> None:
    with_old(tmp_path)
    staged: list[aio.AtomicFile[Any]] = []

    async def call() -> None:
        f = aio.atomic_open(tmp_path / "target", "wb")
        staged.append(f)
        async with f:
            await f.write(NEW)

    outcome = run_call(tmp_path, call, phase="after the gate")
    assert outcome.result == "cancelled, replaced" and staged[0].committed
    assert outcome.final == NEW_DIR


# ------------------------------------------------------------------ the broken variants


async def naive_step(call: Any, fn: Callable[..., Any], *args: Any, **_: Any) -> Any:
    """A commit that is not shielded: the thread is awaited as a plain to_thread."""
    return await asyncio.to_thread(fn, *args)


# The broken variant leaves staged files to the garbage collector, which says so.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("make_call", [aio_write, aio_open])
def test_harness_catches_an_unshielded_commit(
    tmp_path: Path,
    staging: str,
    monkeypatch: pytest.MonkeyPatch,
    make_call: Callable[[Path], Callable[[], Awaitable[object]]],
) -> None:
    monkeypatch.setattr(aio, "_step", naive_step)
    failures, _ = explore(tmp_path, make_call, OLD_DIR, NEW_DIR, with_old)
    text = "\n".join(failures)
    assert "raised CancelledError but the file was published" in text
    if make_call is aio_write:
        # Cancelled before the thread's work: the thread publishes after the call ended.
        assert "the directory changed after the call ended" in text


def test_harness_catches_plain_to_thread(tmp_path: Path) -> None:
    def make_call(d: Path) -> Callable[[], Awaitable[object]]:
        return lambda: asyncio.to_thread(crashsafe.atomic_write, d / "target", NEW)

    failures, _ = explore(tmp_path, make_call, OLD_DIR, NEW_DIR, with_old)
    assert any("published" in f for f in failures), failures


# --------------------------------------------------------------------------- concurrency


def test_hundreds_of_tasks_one_loop_each_file_one_whole_version(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    versions = {bytes([65 + i % 26]) * (1000 + 37 * i) for i in range(100)}
    torn: list[bytes] = []

    async def reader(stop: asyncio.Event) -> int:
        reads = 0
        while not stop.is_set():
            try:
                data = await asyncio.to_thread(shared.read_bytes)
            except FileNotFoundError:
                data = None
            if data is not None and data not in versions:
                torn.append(data)
            reads += 1
            await asyncio.sleep(0)
        return reads

    async def main() -> int:
        stop = asyncio.Event()
        reading = asyncio.create_task(reader(stop))
        writes = [aio.atomic_write(tmp_path / f"own-{i}", f"file {i}\n") for i in range(200)]
        writes += [aio.atomic_write(shared, v) for v in versions]

        async def opened(i: int) -> None:
            async with aio.atomic_open(tmp_path / f"text-{i}", "w") as f:
                await f.write(f"text {i}\n")

        writes += [opened(i) for i in range(50)]
        await asyncio.gather(*writes)
        stop.set()
        return await reading

    reads = asyncio.run(main())
    assert reads > 0 and torn == []
    assert shared.read_bytes() in versions
    for i in range(200):
        assert (tmp_path / f"own-{i}").read_text() == f"file {i}\n"
    for i in range(50):
        assert (tmp_path / f"text-{i}").read_text() == f"text {i}\n"
    assert len(os.listdir(tmp_path)) == 251  # no temporary file left


def test_update_json_under_concurrency_loses_no_update(tmp_path: Path) -> None:
    doc = tmp_path / "counter.json"

    async def main() -> None:
        await asyncio.gather(
            *(
                aio.update_json(doc, lambda d: {"n": d["n"] + 1}, default={"n": 0})
                for _ in range(150)
            )
        )

    asyncio.run(main())
    assert crashsafe.read_json(doc) == {"n": 150}
    assert sorted(os.listdir(tmp_path)) == [".counter.json.lock", "counter.json"]


# --------------------------------------------------------------------------- the lock


def test_lock_is_reentrant_per_task_and_excludes_other_tasks(tmp_path: Path) -> None:
    path = tmp_path / "f"
    order: list[str] = []

    async def holder(entered: asyncio.Event, go: asyncio.Event) -> None:
        async with aio.FileLock(path) as lock:
            assert lock.is_locked
            # The same task again, through another object and update_json.
            async with aio.FileLock(path):
                await aio.update_json(path, lambda d: {"by": "holder"}, default={})
            entered.set()
            await go.wait()
            order.append("holder leaves")

    async def other(entered: asyncio.Event) -> None:
        await entered.wait()
        async with aio.FileLock(path) as lock:
            order.append("other enters")
            assert lock.is_locked

    async def main() -> None:
        entered, go = asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(holder(entered, go))
        b = asyncio.create_task(other(entered))
        await entered.wait()
        with pytest.raises(crashsafe.LockTimeoutError):
            await aio.FileLock(path, timeout=0).acquire()
        go.set()
        await asyncio.gather(a, b)

    asyncio.run(main())
    assert order == ["holder leaves", "other enters"]
    assert crashsafe.read_json(path) == {"by": "holder"}


LOCK_HOLDER = """
import sys, crashsafe
with crashsafe.FileLock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_lock_wait_cancelled_holds_nothing_and_leaves_no_thread(tmp_path: Path) -> None:
    path = tmp_path / "f"
    with spawned() as children:
        child = Child(LOCK_HOLDER, str(path))
        children.append(child)
        assert child.readline() == "held"

        async def main() -> None:
            with pytest.raises(crashsafe.LockTimeoutError) as timed_out:
                await aio.FileLock(path, timeout=0.05).acquire()
            assert timed_out.value.filename == str(path)
            waiter = asyncio.create_task(aio.FileLock(path).acquire())
            await asyncio.sleep(0.1)  # several tries; the result does not depend on how many
            assert not waiter.done()
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            lock = aio.FileLock(path)
            assert not lock.is_locked
            child.send("release")
            await lock.acquire()  # the child's release is seen; nothing of ours held it
            lock.release()
            with pytest.raises(RuntimeError, match="not held"):
                lock.release()

        # asyncio.run waits for the executor: a thread blocked in flock would hang here.
        asyncio.run(main())
        assert child.proc.wait(timeout=30) == 0  # it ends on its own (its coverage saved)


def test_lock_refuses_urls_and_use_outside_a_task(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="s3://b/k"):
        aio.FileLock("s3://b/k")
    with pytest.raises(ValueError, match="timeout"):
        aio.FileLock(tmp_path / "f", timeout=-1)


# --------------------------------------------------------------------------- errors and misc


def test_errors_are_the_synchronous_ones(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(FileExistsError):
            await aio.atomic_write(tmp_path, b"x", overwrite=False)
        (tmp_path / "t").write_bytes(OLD)
        with pytest.raises(crashsafe.VerificationError):
            await aio.atomic_write(tmp_path / "t", b"not json", validate=crashsafe.validators.json)
        with pytest.raises(ZeroDivisionError):
            async with aio.atomic_open(tmp_path / "t", "w") as f:
                await f.write("partial")
                raise ZeroDivisionError
        with pytest.raises(TypeError, match="fn returned None"):
            await aio.update_json(tmp_path / "d.json", lambda d: None, default={})
        with pytest.raises(FileNotFoundError):
            await aio.update_json(tmp_path / "missing.json", lambda d: d)
        with pytest.raises(TypeError, match="progress"):
            await aio.atomic_copy(tmp_path / "t", tmp_path / "u", progress=3)  # type: ignore[arg-type]
        g = aio.atomic_open(tmp_path / "t", "wb")
        with pytest.raises(ValueError, match="outside"):
            await g.write(b"x")
        async with g:
            with pytest.raises(RuntimeError, match="another operation"):
                await asyncio.gather(g.write(b"a" * 100), g.write(b"b"))
            await g.discard()
        assert not g.committed and "discarded" in repr(g)

    asyncio.run(main())
    assert (tmp_path / "t").read_bytes() == OLD
    assert sorted(os.listdir(tmp_path)) == [".d.json.lock", ".missing.json.lock", "t"]


def test_copy_reports_progress_and_text_mode_and_digest(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(NEW)
    done: list[int] = []

    async def main() -> crashsafe.CopyResult:
        async with aio.atomic_open(tmp_path / "text", "w", encoding="latin-1") as f:
            await f.write("é")
        return await aio.atomic_copy(
            tmp_path / "src",
            tmp_path / "dst",
            digest="sha256",
            progress=lambda d, t: done.append(d),
        )

    result = asyncio.run(main())
    assert result.bytes == len(NEW) and result.digest is not None and done[-1] == len(NEW)
    assert (tmp_path / "dst").read_bytes() == NEW
    assert (tmp_path / "text").read_bytes() == "é".encode("latin-1")


def test_copy_cancelled_mid_copy_stops_at_its_next_progress_point(
    tmp_path: Path, staging: str
) -> None:
    with_old(tmp_path)
    with open(tmp_path / "source", "wb") as f:
        f.truncate(40 << 20)  # three steps of at most 16 MiB
    calls: list[int] = []

    def progress(done: int, total: int | None) -> None:
        calls.append(done)
        if len(calls) == 1:
            RUNNING[0].cancel_task()

    async def call() -> None:
        await aio.atomic_copy(tmp_path / "source", tmp_path / "target", progress=progress)

    outcome = run_call(tmp_path, call, at=None)
    assert outcome.result == "cancelled"
    # The second step's report stopped the copy (a reflink copies in one step,
    # and the cancellation then still comes before the commit).
    assert len(calls) == 1 and calls[0] in (16 << 20, 40 << 20)
    assert outcome.final == outcome.at_end and outcome.final["target"] == OLD
    assert sorted(outcome.final) == ["source", "target"]


def test_a_cancellation_caught_in_the_block_still_publishes_nothing(tmp_path: Path) -> None:
    with_old(tmp_path)

    async def call() -> None:
        async with aio.atomic_open(tmp_path / "target", "wb") as f:
            try:
                await f.write(NEW)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                assert task is not None
                task.uncancel()  # a task that catches it and goes on
            await f.commit()

    outcome = run_call(tmp_path, call, at=1, phase="after")
    assert outcome.result == "cancelled" and outcome.final == OLD_DIR


def test_lock_cancelled_at_every_await_holds_nothing(tmp_path: Path) -> None:
    import fcntl

    path = tmp_path / "f"
    path.touch()

    def make_call(d: Path) -> Callable[[], Awaitable[object]]:
        async def call() -> None:
            async with aio.FileLock(path):
                pass

        return call

    fds_before = len(os.listdir("/proc/self/fd"))
    steps = run_call(tmp_path, make_call(tmp_path)).steps
    assert steps == 1
    for phase in ("before", "after"):
        outcome = run_call(tmp_path, make_call(tmp_path), 0, phase)
        assert outcome.result == "cancelled", phase
        # Nothing of ours holds the lock: another open file takes it at once.
        with open(tmp_path / ".f.lock", "rb") as other:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert len(os.listdir("/proc/self/fd")) == fds_before  # the try's descriptor was closed


def test_atomic_open_refuses_urls() -> None:
    with pytest.raises(ValueError, match="s3://b/k"):
        aio.atomic_open("s3://b/k", "wb")


def test_urls_run_as_one_step_that_is_the_commit(
    tmp_path: Path, moto_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.harness.s3servers import empty_bucket, make_bucket

    bucket = make_bucket(moto_server.endpoint)
    for key, value in moto_server.endpoint.env().items():
        monkeypatch.setenv(key, value)
    client = moto_server.endpoint.client()

    def names() -> list[str]:
        listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
        return sorted(o["Key"] for o in listed if not o["Key"].startswith(".crashsafe/"))

    try:

        async def main() -> None:
            await aio.atomic_write(f"s3://{bucket}/a", b"one")
            result = await aio.atomic_copy(f"s3://{bucket}/a", tmp_path / "a")
            assert result.method == "download" and (tmp_path / "a").read_bytes() == b"one"
            doc = await aio.update_json(f"s3://{bucket}/d.json", lambda d: {"n": 1}, default={})
            assert doc == {"n": 1}

        asyncio.run(main())
        assert names() == ["a", "d.json"]

        def write_b() -> Awaitable[None]:
            return aio.atomic_write(f"s3://{bucket}/b", b"two")

        # Cancelled before the upload started: nothing; during it: it ends, and says so.
        assert run_call(tmp_path, write_b, 0, "before").result == "cancelled"
        assert names() == ["a", "d.json"]
        assert run_call(tmp_path, write_b, 0, "after").result == "cancelled, replaced"
        assert names() == ["a", "b", "d.json"]
    finally:
        empty_bucket(moto_server.endpoint, bucket)


def test_lock_errors_name_the_path_and_the_lock_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "f"

    async def main() -> None:
        lock = aio.FileLock(missing)
        with pytest.raises(FileNotFoundError) as e:
            await lock.acquire(timeout=1)
        assert (e.value.filename, e.value.filename2) == (str(missing), lock.lock_file)
        assert "no-such-dir" in repr(lock)
        f = aio.atomic_open(tmp_path / "g", "wb")
        async with f:
            with pytest.raises(RuntimeError, match="already entered"):
                await f.__aenter__()
            await f.write(b"x")
        assert "committed" in repr(f)

    asyncio.run(main())
    assert (tmp_path / "g").read_bytes() == b"x"


TYPED = """\
from typing import reveal_type
from crashsafe import aio


async def good(p: str) -> None:
    async with aio.atomic_open(p, "w") as t:
        reveal_type(t)  # R: crashsafe.aio.AtomicFile[typing.TextIO]
        await t.write("é")
    async with aio.atomic_open(p) as b:
        reveal_type(b)  # R: crashsafe.aio.AtomicFile[typing.BinaryIO]
        await b.write(bytearray(b"x"))
    copied = await aio.atomic_copy(p, p)
    reveal_type(copied.digest)  # R: str | None


async def bad_text(p: str) -> None:
    async with aio.atomic_open(p, "w") as t:
        await t.write(b"x")  # E


async def bad_binary(p: str) -> None:
    async with aio.atomic_open(p, "xb") as b:
        await b.write("x")  # E
"""


def test_mypy_types_the_staged_file_by_mode(tmp_path: Path) -> None:
    import re

    from tests.test_typing import _mypy

    (tmp_path / "typed.py").write_text(TYPED)
    reports = [
        (int(m[1]), m[2], m[3])
        for line in _mypy(tmp_path)
        if (m := re.match(r".*typed\.py:(\d+): (error|note): (.*)", line))
    ]
    lines = TYPED.splitlines()
    marked = [n for n, text in enumerate(lines, 1) if text.endswith("# E")]
    assert [n for n, kind, _ in reports if kind == "error"] == marked, reports
    revealed = {n: text for n, kind, text in reports if kind == "note"}
    for n, text in enumerate(lines, 1):
        if "# R: " in text:
            assert revealed.get(n) == f'Revealed type is "{text.split("# R: ")[1]}"', reports
