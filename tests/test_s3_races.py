"""Races on real S3 servers: processes against processes, through lost answers, and the
refusal where the guarantee cannot be given.

Every race runs in ``multiprocessing`` spawn children (tests/writers/s3_workers.py)
released together by a barrier, never after a sleep; each child builds its own client from
the environment it was given (which is also the proof that spawn works). A forked child is
tested on its own. Each proof runs on every server of the
``s3`` fixture (SeaweedFS and moto), directly and through the fault proxy
(tests/harness/s3proxy.py), which loses answers after the server committed (ghosts) and
resets connections before it did. Its broken twin, a naive read-modify-write with plain
puts, loses updates in the same race: the race is real. ``rclone serve s3`` ignores
preconditions: there crashsafe refuses before writing a byte of the user's key.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import multiprocessing
import queue as queue_module
import time
from collections.abc import Callable, Iterator
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any

import pytest

import crashsafe
from tests import children
from tests.harness.s3proxy import MUTATING, fault_proxy
from tests.harness.s3servers import (
    Endpoint,
    S3Place,
    Server,
    empty_bucket,
    make_bucket,
    rclone_s3,
)
from tests.writers import s3_workers

# A bound that only turns a hang into a failure; no verdict depends on it.
HANG = 180.0
WRITERS = 16
ROUNDS = 4
COUNTERS = 8
INCREMENTS = 25


def _ctx() -> SpawnContext:
    return multiprocessing.get_context("spawn")


@contextlib.contextmanager
def _processes(
    ctx: SpawnContext, targets: list[tuple[Callable[..., None], tuple[Any, ...]]]
) -> Iterator[list[SpawnProcess]]:
    """Start one spawn child per (function, args); on leaving, each must have exited 0 (a
    child still running after the block is killed and fails the test)."""
    procs = [ctx.Process(target=f, args=args, daemon=True) for f, args in targets]
    for p in procs:
        p.start()
    try:
        yield procs
    finally:
        for p in procs:
            p.join(HANG)
            if p.exitcode is None:
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0] * len(procs)


def _collect(queue: Any, n: int, procs: list[SpawnProcess]) -> list[Any]:
    """*n* results from the children, in the order they came; fails as soon as a child
    died without giving its results."""
    got: list[Any] = []
    deadline = time.monotonic() + HANG
    while len(got) < n:
        with contextlib.suppress(queue_module.Empty):
            got.append(queue.get(timeout=0.5))
            continue
        dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
        assert not dead, f"children died: exit codes {dead}; results so far {got}"
        assert time.monotonic() < deadline, f"no results in {HANG} s; so far {got}"
    return got


def _not_internal(method: str, path: str, query: str) -> bool:
    """Chaos on the user's writes only: the probe of the endpoint and each child's first
    write (before the race) are left alone; a lost answer there is another test's matter."""
    return method in MUTATING and "/.crashsafe/probe/" not in path and "/warm-" not in path


def _body(endpoint: Endpoint, bucket: str, key: str) -> bytes:
    return endpoint.client().get_object(Bucket=bucket, Key=key)["Body"].read()


# ------------------------------------------------------------------ 1. create-only race

DIRECT_ROUNDS = 2
CHAOS_ROUNDS = 3


def test_create_only_race_has_one_truthful_winner(s3: S3Place) -> None:
    """WRITERS children race ``atomic_write(overwrite=False)`` on a fresh key each round:
    first straight to the server, then through the fault proxy. In the first proxied
    round EVERY create is ghosted (forwarded, its answer dropped), the winner's landed one
    included: the winner must recognise its token and report success, every loser must
    learn of its 412 by reading back and raise FileExistsError. In the later rounds, seeded
    chaos ghosts and resets the user's writes. Every round: exactly one winner, and the
    object holds its payload (no loser's write landed while it was told FileExistsError)."""
    with fault_proxy(s3.endpoint) as proxy:
        ghosted = DIRECT_ROUNDS
        proxy.ghost(match=lambda m, p, q: m == "PUT" and p.endswith(f"/race-{ghosted}"), times=None)
        proxy.chaos(15, ghost=0.2, reset=0.1, match=_not_internal)
        envs = [s3.endpoint.env()] * DIRECT_ROUNDS + [proxy.endpoint.env()] * (1 + CHAOS_ROUNDS)
        rounds = [(env, s3.url(f"race-{r}")) for r, env in enumerate(envs)]
        ctx = _ctx()
        barrier = ctx.Barrier(WRITERS, timeout=HANG)
        results = ctx.Queue()
        targets = [
            (s3_workers.create_race, (rounds, me, warm, barrier, results))
            for me in range(WRITERS)
            for warm in [[s3.url(f"warm-{me}"), s3.url(f"warm-p{me}")]]
        ]
        with _processes(ctx, targets) as procs:
            outcomes = _collect(results, WRITERS * len(rounds), procs)
    by_round: list[list[tuple[int, str]]] = [[] for _ in rounds]
    for me, round_, outcome, detail in outcomes:
        by_round[round_].append((me, outcome))
        assert outcome in ("won", "FileExistsError"), (me, round_, outcome, detail)
    for round_, got in enumerate(by_round):
        winners = [me for me, outcome in got if outcome == "won"]
        assert len(winners) == 1, (round_, got)
        stored = _body(s3.endpoint, s3.bucket, f"race-{round_}")
        assert stored == s3_workers.payload(winners[0], round_), round_
    first = [x for x in proxy.log if x.method == "PUT" and x.path.endswith(f"/race-{ghosted}")]
    assert {x.action for x in first} == {"ghost"}
    assert sorted(x.status or 0 for x in first) == [200] + [412] * (len(first) - 1), first
    chaos = [x for x in proxy.log if x.action != "forward" and f"/race-{ghosted}" not in x.path]
    assert chaos, "the chaos never struck"


# ------------------------------------------------------------------ 2. counter race


def test_update_json_race_is_exact_also_through_lost_answers(s3: S3Place) -> None:
    """COUNTERS children each add one INCREMENTS times: first straight to the server, then
    through the fault proxy with seeded ghosts and resets. This is the ghost-conflict
    proof: an update whose landed write lost its answer must be neither applied again (a
    naive retry double-counts) nor lost. Last, the broken twin in the same race (a naive
    read-modify-write with plain puts) loses updates: the race is real."""
    with fault_proxy(s3.endpoint) as proxy:
        proxy.chaos(2, ghost=0.1, reset=0.05, match=_not_internal)
        ctx = _ctx()
        barrier = ctx.Barrier(COUNTERS, timeout=HANG)
        results = ctx.Queue()
        targets = []
        for i in range(COUNTERS):
            phases = [
                ("crashsafe", s3.endpoint.env(), s3.url("counter"), s3.url(f"warm-{i}")),
                ("crashsafe", proxy.endpoint.env(), s3.url("proxied"), s3.url(f"warm-p{i}")),
                ("naive", s3.endpoint.env(), s3.url("naive"), ""),
            ]
            targets.append((s3_workers.counter, (phases, INCREMENTS, barrier, results)))
        with _processes(ctx, targets) as procs:
            outcomes = _collect(results, len(phases) * COUNTERS, procs)
    assert sorted(outcomes) == [(p, "done", "") for p in range(len(phases)) for _ in targets]
    for key in ("counter", "proxied"):
        assert json.loads(_body(s3.endpoint, s3.bucket, key)) == {"n": COUNTERS * INCREMENTS}
    landed_ghosts = [x for x in proxy.log if x.action == "ghost" and x.status == 200]
    resets = [x for x in proxy.log if x.action == "reset"]
    assert landed_ghosts, "no landed write lost its answer: the proof proved nothing"
    assert resets, "no connection was reset"
    # Every child read before any wrote in the naive phase's first round: at least
    # COUNTERS - 1 increments are lost for sure.
    naive = json.loads(_body(s3.endpoint, s3.bucket, "naive"))["n"]
    assert naive <= COUNTERS * INCREMENTS - (COUNTERS - 1), naive


# ------------------------------------------------------------------ 3. refusal on rclone


@pytest.fixture
def rclone_place(rclone_server: Server) -> Iterator[S3Place]:
    bucket = make_bucket(rclone_server.endpoint)
    try:
        yield S3Place(rclone_server, rclone_server.endpoint, bucket)
    finally:
        empty_bucket(rclone_server.endpoint, bucket)


def _keys(place: S3Place) -> list[str]:
    listing = place.endpoint.client().list_objects_v2(Bucket=place.bucket)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _add(doc: dict[str, int]) -> dict[str, int]:
    return {"n": doc["n"] + 1}


def _bang(data: bytes) -> bytes:
    return data + b"!"


def _refused(call: Callable[[], object], url: str) -> None:
    with pytest.raises(crashsafe.StoreCapabilityError) as e:
        call()
    assert e.value.errno == errno.ENOTSUP
    assert e.value.filename == url


def test_rclone_refuses_before_writing(
    rclone_place: S3Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    place = rclone_place
    place.endpoint.client().put_object(Bucket=place.bucket, Key="existing", Body=b'{"n": 7}')
    with fault_proxy(place.endpoint) as proxy:
        for key, value in proxy.endpoint.env().items():
            monkeypatch.setenv(key, value)
        new, existing = place.url("new"), place.url("existing")
        _refused(lambda: crashsafe.atomic_write(new, b"x", overwrite=False), new)
        _refused(lambda: crashsafe.atomic_write(existing, b"x", overwrite=False), existing)
        for url in (new, existing):
            _refused(functools.partial(crashsafe.update_json, url, _add, default={"n": 0}), url)
            _refused(functools.partial(crashsafe.update, url, _bang, default=b""), url)

        def create_in_block() -> None:
            with crashsafe.atomic_open(new, "xb") as f:
                f.write(b"never published")

        _refused(create_in_block, new)
    written = [x for x in proxy.log if x.method in MUTATING]
    assert written, "not even the probe wrote: the proxy saw nothing"
    assert all(f"/{place.bucket}/.crashsafe/probe/" in x.path for x in written), written
    assert _keys(place) == ["existing"]
    assert _body(place.endpoint, place.bucket, "existing") == b'{"n": 7}'


def test_naive_read_modify_write_loses_updates_on_rclone(tmp_path: Path) -> None:
    """Where crashsafe refuses, the naive loop runs and loses updates: the refusal is not
    over-caution.

    It has an rclone of its own, stopped and removed with its files at the end: eight
    unconditional puts racing on one key leave a ghost of the key in rclone's directory
    cache (listed, and the bucket "not empty", long after the last delete, with the
    directory on disk empty), so the shared server's bucket could not be removed.
    """
    with rclone_s3(tmp_path) as server:
        _race_naive_counters(S3Place(server, server.endpoint, make_bucket(server.endpoint)))


def _race_naive_counters(place: S3Place) -> None:
    ctx = _ctx()
    barrier = ctx.Barrier(COUNTERS, timeout=HANG)
    results = ctx.Queue()
    env = place.endpoint.env()
    targets = [
        (s3_workers.naive_counter, (env, place.url("naive"), INCREMENTS, barrier, results))
        for _ in range(COUNTERS)
    ]
    with _processes(ctx, targets) as procs:
        assert _collect(results, COUNTERS, procs) == [(0, "done", "")] * COUNTERS
    n = json.loads(_body(place.endpoint, place.bucket, "naive"))["n"]
    assert n <= COUNTERS * INCREMENTS - (COUNTERS - 1), n


# ------------------------------------------------------------------ 6. readers vs writer

# Two of them above SINGLE_PUT_MAX (64 MiB): published by a multipart completion.
VERSION_SIZES = [1 << 20, 66 << 20, 3 << 20, 65 << 20, 2 << 20]
READERS = 2


def test_readers_never_see_a_partial_or_mixed_object(s3: S3Place, workdir: Path) -> None:
    url = s3.url("versions")
    crashsafe.atomic_write(url, s3_workers.versioned(0, 1000))
    ctx = _ctx()
    reads = ctx.Value("i", 0)
    done = ctx.Event()
    results = ctx.Queue()
    env = s3.endpoint.env()
    targets: list[tuple[Callable[..., None], tuple[Any, ...]]] = [
        (s3_workers.version_writer, (env, url, VERSION_SIZES, reads, done, results))
    ]
    targets += [
        (s3_workers.version_reader, (env, url, str(workdir / f"r{i}"), reads, done, results))
        for i in range(READERS)
    ]
    with _processes(ctx, targets) as procs:
        outcomes = _collect(results, 1 + READERS, procs)
    assert ("done", "") in outcomes, outcomes
    seen = [json.loads(detail) for what, detail in outcomes if what == "versions"]
    assert len(seen) == READERS, outcomes
    last = len(VERSION_SIZES)
    for versions in seen:
        # Whole versions only (each read was checked), in the order they were written.
        assert versions == sorted(versions), versions
        assert set(versions) <= set(range(last + 1))
    # Every version was read by someone: reads overlapped every write.
    assert set().union(*seen) >= set(range(last)), seen
    assert s3_workers.check_versioned(_body(s3.endpoint, s3.bucket, "versions")) == last
    for i in range(READERS):
        (workdir / f"r{i}").unlink(missing_ok=True)


# ------------------------------------------------------------------ 7. fork and spawn

FORK = Path(__file__).parent / "writers" / "s3_fork.py"


def test_a_forked_child_uses_the_store_and_so_does_its_parent(s3: S3Place) -> None:
    """The parent made requests (its clients hold pooled connections) and forks; parent
    and child then read their own documents at the same time (tests/writers/s3_fork.py),
    the child writes and exits 0, and the parent's next call works. Without the library's
    at-fork handler the child reuses the parent's pooled socket and reads the parent's
    answers (seen: "the child read {'who': 'parent'}"); a hang there becomes exit 124
    under ``timeout``, which kills the whole group."""
    ran = children.run(
        FORK, s3.url("fork"), wrapper=["timeout", "--signal=KILL", "120"], timeout=HANG
    )
    assert ran.returncode == 0, (ran.returncode, ran.stdout, ran.stderr)
    assert ran.result == {"child": 0, "parent_after": {"n": 3}}
    assert _body(s3.endpoint, s3.bucket, "fork-created") == b"from the child"
    assert json.loads(_body(s3.endpoint, s3.bucket, "fork")) == {"n": 3}
