"""Concurrency: racing writers of one name never publish a torn file or lose the race twice.

Promise 1 (all or nothing) under concurrency: readers in another process see one
writer's complete content at every instant, never a missing, empty, torn or mixed
file; create-only writers racing for one name have exactly one winner.

A deliberately broken writer (the classic fixed temporary name ``dir/.tmp-NAME``
opened with ``O_TRUNC``, then renamed) runs through the same reader check as a
control, to prove that the check can fail.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crashsafe import AtomicFile, atomic_open, atomic_write
from tests.children import blocked_in_flock, read_line, wait_until
from tests.children import start as start_child
from tests.harness.capabilities import capabilities
from tests.harness.checks import entries, leftovers

# --- child code: from here to its end marker also runs in child processes, which
# exec it after CHILD_IMPORTS (stdlib and crashsafe only: importing pytest in every
# child would cost more than the races themselves).
MAGIC = b"CSAFEPAY"
# magic, writer id, sequence number, body length, crc32 of the body
HEADER = struct.Struct(">8sIIQI")
CHUNK = 64 << 10
MIN_SIZE, MAX_SIZE = 64 << 10, 1 << 20
RACE_SIZE = 32 << 10


# --------------------------------------------------------------------------- payloads


def make_payload(writer: int, seq: int, size: int) -> bytes:
    """A self-checking payload: header, then a pattern unique to (writer, seq)."""
    unit = f"<writer {writer:03d} seq {seq:07d}>".encode()
    body = (unit * (size // len(unit) + 1))[:size]
    return HEADER.pack(MAGIC, writer, seq, size, zlib.crc32(body)) + body


def payload_size(writer: int, seq: int) -> int:
    """Sizes from 64 KiB to 1 MiB, different for every write."""
    return MIN_SIZE + (writer * 7919 + seq * 104729) % (MAX_SIZE - MIN_SIZE + 1)


def check_payload(data: bytes) -> str | None:
    """None for one complete payload, else what is wrong with *data*."""
    if not data:
        return "empty"
    if len(data) < HEADER.size:
        return "torn"
    magic, _, _, size, crc = HEADER.unpack_from(data)
    if magic != MAGIC:
        return "mixed"  # the header itself is not one writer's
    if len(data) != HEADER.size + size:
        return "torn"
    if zlib.crc32(memoryview(data)[HEADER.size :]) != crc:
        return "mixed"
    return None


# --------------------------------------------------------------------------- writers


def crashsafe_write(path: str, payload: bytes, durability: str) -> None:
    with atomic_open(path, "wb", durability=durability) as f:  # type: ignore[arg-type]
        view = memoryview(payload)
        for i in range(0, len(view), CHUNK):
            f.write(view[i : i + CHUNK])


def broken_write(path: str, payload: bytes, durability: str) -> None:
    """The classic bug, on purpose: one fixed temporary name, truncated and reused."""
    head, name = os.path.split(path)
    temp = os.path.join(head, ".tmp-" + name)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(payload)
        for i in range(0, len(view), CHUNK):
            chunk = view[i : i + CHUNK]
            while chunk:
                chunk = chunk[os.write(fd, chunk) :]
        if durability != "none":
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, path)  # FileNotFoundError when another writer renamed it away


WRITERS = {"crashsafe": crashsafe_write, "broken": broken_write}


def write_loop(
    path: str, writer: int, *, enough: str, min_writes: int, kind: str, durability: str
) -> dict[str, int]:
    """Write distinct payloads to *path* until *enough* exists (the reader's word that
    it has seen what it needs) and at least *min_writes* were tried; count writes
    and errors. Progress ends the loop, not a clock: the same on a busy machine."""
    write = WRITERS[kind]
    counts = {"writes": 0, "missing": 0, "errors": 0}
    seq = 0
    while seq < min_writes or not os.path.exists(enough):
        seq += 1
        try:
            write(path, make_payload(writer, seq, payload_size(writer, seq)), durability)
        except FileNotFoundError:
            counts["missing"] += 1
        except OSError:
            counts["errors"] += 1
        else:
            counts["writes"] += 1
    return counts


def _writer_main(
    path: str, writer: int, *, enough: str, min_writes: int, kind: str, durability: str
) -> None:
    """Entry point of a writer process: waits for "go" on stdin, prints its counts."""
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "go"
    counts = write_loop(
        path, writer, enough=enough, min_writes=min_writes, kind=kind, durability=durability
    )
    print(json.dumps(counts), flush=True)


def _reader_main(path: str, enough: str, min_reads: int, min_versions: int, damage: int) -> None:
    """Entry point of the reader process: reads *path* until it has read *min_reads*
    times, seen *min_versions* distinct versions and caught *damage* damaged
    reads, then creates *enough* (the writers stop) and prints its counts."""
    counts = {"reads": 0, "missing": 0, "empty": 0, "torn": 0, "mixed": 0}
    versions: set[tuple[int, int]] = set()
    print("ready", flush=True)
    try:
        while (
            counts["reads"] < min_reads
            or len(versions) < min_versions
            or sum(counts.values()) - counts["reads"] < damage
        ):
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                # No file at that name: ENOENT, or ESTALE where sshfs looked up the
                # name just before a rename replaced it. Anything else is raised.
                if e.errno not in (errno.ENOENT, errno.ESTALE):
                    raise
                counts["missing"] += 1
                continue
            counts["reads"] += 1
            problem = check_payload(data)
            if problem is None:
                versions.add(HEADER.unpack_from(data)[1:3])
            else:
                counts[problem] += 1
    finally:
        # The writers stop on this file: made even when the reader fails, so that
        # the test fails at once instead of writing forever.
        open(enough, "wb").close()
    counts["versions"] = len(versions)
    print(json.dumps(counts), flush=True)


def _create_racer_main(directory: str, gates: str, writer: int, rounds: int) -> None:
    """Entry point of a create-only racer process; one line of outcome per round.

    Rounds take turns: atomic_write; atomic_open("xb") writing after the start;
    an AtomicFile("xb") staged before the start, so every racer reaches the
    atomic publish step.
    """
    for r in range(rounds):
        path = os.path.join(directory, f"race-{r}")
        payload = make_payload(writer, r, RACE_SIZE)
        staged = None
        if r % 3 == 2:
            staged = AtomicFile(path, "xb", durability="none")
            staged.file.write(payload)
        print(f"ready {r}", flush=True)
        with open(os.path.join(gates, f"gate-{r}"), "rb") as gate:
            fcntl.flock(gate, fcntl.LOCK_SH)  # blocks until the parent opens the gate
        try:
            if staged is not None:
                staged.commit()
            elif r % 3 == 1:
                with atomic_open(path, "xb") as f:
                    f.write(payload)
            else:
                atomic_write(path, payload, overwrite=False)
            result = "won"
        except FileExistsError:
            result = "exists"
        print(f"{r} {result}", flush=True)


# --- end of child code
# --------------------------------------------------------------------------- processes


THIS_FILE = Path(__file__).resolve()
CHILD_IMPORTS = """\
import errno, fcntl, json, os, struct, sys, time, zlib
from crashsafe import AtomicFile, atomic_open, atomic_write
"""


def _child_code() -> str:
    text = THIS_FILE.read_text()
    return text[text.index("# --- child code:") : text.index("# --- end of child code")]


def _child(call: str, staging: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -c`` running *call* of the child code, staging chosen at the top."""
    prelude = ""
    if staging is not None:
        prelude = (
            f"import crashsafe._platform._posix as p\np.use_tmpfile = {staging == 'tmpfile'}\n"
        )
    script = f"{prelude}{CHILD_IMPORTS}{_child_code()}\n{call}\n"
    return start_child(script)


class Lines:
    """Line reader on a child's stdout with a timeout, so a stuck child fails the test."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.buffer = bytearray()

    def readline(self, timeout: float = 30.0) -> str:
        assert self.proc.stdout is not None
        who = f"child {self.proc.pid}"
        try:
            line = read_line(self.proc.stdout, self.buffer, timeout, who)
        except AssertionError:
            raise AssertionError(f"{who} exited: {self.proc.wait()}") from None
        if line is None:
            raise AssertionError(f"{who} said nothing for {timeout} s")
        return line


@contextlib.contextmanager
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started in the block are killed and reaped when it ends, however it ends."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


# --------------------------------------------------------------------------- the race check


def race_one_name(
    directory: Path,
    *,
    kind: str,
    how: str,
    writers: int,
    durability: str,
    staging: str | None,
    min_reads: int,
    min_versions: int = 20,
    min_writes: int = 5,
    damage: int = 0,
) -> tuple[dict[str, int], dict[str, int]]:
    """Run *writers* writers of one name and a reader process; return their counts.

    The writers write until the reader has read *min_reads* times, seen
    *min_versions* versions and caught *damage* damaged reads (and each tried
    *min_writes* writes): the race runs until it has shown what it must, not
    for a time, so a busy machine makes it slower, never different. The file
    exists before the reader starts, so a missing file is always an error.
    """
    path = directory / "data.bin"
    control = tempfile.TemporaryDirectory(prefix="crashsafe-race-")
    try:
        enough = str(Path(control.name) / "enough")
        atomic_write(path, make_payload(0, 0, MIN_SIZE))
        totals = {"writes": 0, "missing": 0, "errors": 0}
        with children() as procs:
            call = f"_reader_main({str(path)!r}, {enough!r}, {min_reads}, {min_versions}, {damage})"
            reader = _child(call)
            procs.append(reader)
            reader_out = Lines(reader)
            assert reader_out.readline() == "ready"
            try:
                if how == "threads":
                    results: list[dict[str, int]] = []

                    def run(w: int) -> None:
                        counts = write_loop(
                            str(path),
                            w,
                            enough=enough,
                            min_writes=min_writes,
                            kind=kind,
                            durability=durability,
                        )
                        results.append(counts)

                    threads = [
                        threading.Thread(target=run, args=(w,)) for w in range(1, writers + 1)
                    ]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                else:
                    outs = []
                    for w in range(1, writers + 1):
                        call = (
                            f"_writer_main({str(path)!r}, {w}, enough={enough!r}, "
                            f"min_writes={min_writes}, kind={kind!r}, durability={durability!r})"
                        )
                        procs.append(_child(call, staging))
                        outs.append(Lines(procs[-1]))
                    for out in outs:
                        assert out.readline() == "ready"
                    for proc in procs[1:]:
                        assert proc.stdin is not None
                        proc.stdin.write(b"go\n")
                        proc.stdin.flush()
                    # The bound only turns a hang into a failure.
                    results = [json.loads(out.readline(timeout=200)) for out in outs]
            finally:
                Path(enough).touch()  # a failed writer must not leave the others running
            seen = json.loads(reader_out.readline())
        for result in results:
            for key in totals:
                totals[key] += result[key]
    finally:
        control.cleanup()  # however the race ended
    return seen, totals


def test_reader_check_rejects_empty_prefix_zeros_and_mixed_payloads() -> None:
    """The reader's verdicts themselves: every kind of damage is named, nothing passes."""
    a, b = make_payload(1, 1, 100_000), make_payload(2, 1, 100_000)
    assert check_payload(a) is None
    assert check_payload(b"") == "empty"
    assert check_payload(a[:10]) == "torn"
    assert check_payload(a[:-1]) == "torn"
    assert check_payload(a + b"x") == "torn"
    assert check_payload(a[:50_000] + b[50_000:]) == "mixed"
    assert check_payload(b[:50_000] + a[50_000:]) == "mixed"
    assert check_payload(a[:50_000] + bytes(len(a) - 50_000)) == "mixed"
    assert check_payload(bytes(len(a))) == "mixed"


def assert_never_torn(
    seen: dict[str, int], totals: dict[str, int], *, min_reads: int, writers: int, where: Path
) -> None:
    problems = {k: seen[k] for k in ("missing", "empty", "torn", "mixed")}
    if capabilities(where).readers_may_miss:
        # FUSE: a reader racing a rename may find no file at all (inherent, documented
        # in the README's "Not promised"); what it reads is still never damaged.
        problems["missing"] = 0
    assert problems == {"missing": 0, "empty": 0, "torn": 0, "mixed": 0}, (seen, totals)
    assert totals["missing"] == totals["errors"] == 0, totals
    # The race ran until the reader had read enough and, interleaved with the
    # writes, seen many versions (see race_one_name): checked, not assumed.
    assert seen["reads"] >= min_reads, f"too few reads to prove anything: {seen}"
    assert seen["versions"] >= 20, seen
    assert totals["writes"] >= 5 * writers, totals


@pytest.mark.parametrize("how", ["threads", "processes"])
def test_racing_writers_never_show_readers_a_torn_file(
    workdir: Path, staging: str, how: str
) -> None:
    seen, totals = race_one_name(
        workdir, kind="crashsafe", how=how, writers=4, durability="none", staging=staging,
        min_reads=2000,
    )  # fmt: skip
    print(f"crashsafe {how} {staging} none: reader {seen}, writers {totals}")
    assert_never_torn(seen, totals, min_reads=2000, writers=4, where=workdir)
    assert check_payload((workdir / "data.bin").read_bytes()) is None
    assert entries(workdir) == ["data.bin"]


@pytest.mark.parametrize("how", ["threads", "processes"])
def test_racing_durable_writers_never_show_readers_a_torn_file(
    workdir: Path, staging: str, how: str
) -> None:
    seen, totals = race_one_name(
        workdir, kind="crashsafe", how=how, writers=3, durability="durable", staging=staging,
        min_reads=500,
    )  # fmt: skip
    print(f"crashsafe {how} {staging} durable: reader {seen}, writers {totals}")
    assert_never_torn(seen, totals, min_reads=500, writers=3, where=workdir)
    assert check_payload((workdir / "data.bin").read_bytes()) is None
    assert entries(workdir) == ["data.bin"]


@pytest.mark.parametrize("how", ["threads", "processes"])
def test_control_fixed_temp_name_is_caught_by_the_reader_check(tmp_path: Path, how: str) -> None:
    """The same check against the classic fixed-name writer must find torn content.

    The race runs until the reader has caught a damaged read (after at least 200
    reads): it ends once it has happened, whatever the machine's load; a
    reader check that cannot catch the damage would hang here until the
    bound of race_one_name fails the test."""
    seen, totals = race_one_name(
        tmp_path,
        kind="broken", how=how, writers=4, durability="none", staging=None, min_reads=200,
        damage=1,
    )  # fmt: skip
    print(f"broken control {how}: reader {seen}, writers {totals}")
    assert seen["reads"] >= 200, seen
    reader_found = seen["empty"] + seen["torn"] + seen["mixed"] + seen["missing"]
    assert reader_found > 0, f"the reader check failed to catch the broken writer: {seen}"


# --------------------------------------------------------------------------- create-only races


def race_to_create(path: Path, r: int, racers: int, api: str) -> dict[int, Any]:
    """*racers* threads create *path* at once; returns each one's outcome."""
    barrier = threading.Barrier(racers, timeout=30)
    outcome: dict[int, Any] = {}

    def racer(i: int) -> None:
        payload = make_payload(i, r, RACE_SIZE)
        staged = False
        try:
            if api == "staged":
                pending = AtomicFile(path, "xb", durability="none")
                pending.file.write(payload)
                staged = True
                barrier.wait()
                pending.commit()
            elif api == "atomic_write":
                barrier.wait()
                atomic_write(path, payload, overwrite=False)
            else:
                barrier.wait()
                with atomic_open(path, "xb") as f:
                    staged = True
                    f.write(payload)
            outcome[i] = "won"
        except FileExistsError:
            # Lost at the atomic publish step, or already when staging.
            outcome[i] = "lost at publish" if staged else "lost early"
        except BaseException as e:  # reported by the caller, with the barrier released
            barrier.abort()
            outcome[i] = e

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcome


@pytest.mark.parametrize("api", ["atomic_write", "atomic_open", "staged"])
def test_create_only_race_between_threads_has_exactly_one_winner(
    workdir: Path, staging: str, api: str
) -> None:
    """16 threads create one name at once, 8 rounds: one wins, the others get FileExistsError.

    ``staged``: every racer has already staged its file before any commits, so all
    16 race inside the atomic publish step itself.
    """
    racers, rounds = 16, 8
    tally: Counter[str] = Counter()
    for r in range(rounds):
        path = workdir / f"race-{r}"
        outcome = race_to_create(path, r, racers, api)
        tally.update(o for o in outcome.values() if isinstance(o, str))
        winners = [i for i, o in outcome.items() if o == "won"]
        losers = [i for i, o in outcome.items() if str(o).startswith("lost")]
        assert len(winners) == 1 and len(losers) == racers - 1, outcome
        assert path.read_bytes() == make_payload(winners[0], r, RACE_SIZE)
        assert leftovers(workdir) == []
    print(f"create-only threads {api} {staging}: {dict(tally)}")
    assert entries(workdir) == sorted(f"race-{r}" for r in range(rounds))
    if api == "staged":
        assert tally["lost at publish"] == (racers - 1) * rounds


def test_create_only_race_between_processes_has_exactly_one_winner(
    workdir: Path, tmp_path_factory: pytest.TempPathFactory, staging: str
) -> None:
    """8 processes released at once by a file lock, 6 rounds: one winner per round."""
    racers, rounds = 8, 6
    gates = tmp_path_factory.mktemp("gates")
    held = []
    for r in range(rounds):
        gate = open(gates / f"gate-{r}", "wb")  # noqa: SIM115 - closed in finally
        fcntl.flock(gate, fcntl.LOCK_EX)
        held.append(gate)
    try:
        with children() as procs:
            for w in range(racers):
                call = f"_create_racer_main({str(workdir)!r}, {str(gates)!r}, {w}, {rounds})"
                procs.append(_child(call, staging))
            outs = [Lines(p) for p in procs]
            for r in range(rounds):
                for out in outs:
                    assert out.readline() == f"ready {r}"
                # Every racer waits on the gate (queued in flock), then all go at once.
                for proc in procs:
                    wait_until(lambda pid=proc.pid: blocked_in_flock(pid), timeout=120)
                fcntl.flock(held[r], fcntl.LOCK_UN)
                results = {w: out.readline().split()[1] for w, out in enumerate(outs)}
                winners = [w for w, res in results.items() if res == "won"]
                assert len(winners) == 1, results
                assert sorted(results.values()) == ["exists"] * (racers - 1) + ["won"]
                data = (workdir / f"race-{r}").read_bytes()
                assert data == make_payload(winners[0], r, RACE_SIZE)
            for proc in procs:
                assert proc.wait(timeout=30) == 0
    finally:
        for gate in held:
            gate.close()
    assert entries(workdir) == sorted(f"race-{r}" for r in range(rounds))
