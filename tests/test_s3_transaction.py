"""transaction() and snapshot() on an s3:// prefix, proved on real servers (SeaweedFS, moto).

The promises: a commit of several objects is all or nothing, to snapshot readers racing it
and after a committer is killed at any point (before, or while its swap of the manifest is
in flight); two commits racing on one prefix both land, last wins per name and nothing only
one wrote is lost (and a commit that swaps without a condition loses it: the race is real);
a snapshot keeps reading its generation after it is replaced, for the grace period; sweep
removes what a killed or losing commit left and old generations past their grace, never a
referenced object; options with no meaning on a store are refused.

Children that talk to S3 are started with ``spawn`` (or as programs), never forked.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
from collections.abc import Sequence
from typing import Any, cast

import pytest

import crashsafe
from crashsafe.errors import ForeignJournalError, ObjectStoreError
from crashsafe.objectstore._client import client_for
from crashsafe.objectstore._manifest import (
    ATTEMPTS,
    DATA,
    GRACE,
    MANIFEST,
    RETAIN,
    Store,
    prefix_of,
    sweep_transactions,
    transaction_prefixes,
)
from crashsafe.transactions import recover, snapshot, transaction
from tests.children import ROOT, Child, spawned, wait_until
from tests.harness.s3proxy import fault_proxy
from tests.harness.s3servers import S3Place
from tests.writers import s3_tx
from tests.writers.s3_tx import NAMES, content, tag_of

# A bound that only turns a hang into a failure.
HANG = 120.0
ctx = multiprocessing.get_context("spawn")


def reap(
    procs: Sequence[multiprocessing.process.BaseProcess],
    results: multiprocessing.Queue[tuple[str, object]],
) -> list[int | None]:
    """Kill (if alive), join and close *procs*, close *results*; returns the exit codes.
    Nothing is left for a later test's garbage collection to close."""
    codes = []
    for p in procs:
        if p.pid is not None:
            p.kill()
            p.join()
        codes.append(p.exitcode)
        p.close()
    results.close()
    results.join_thread()
    return codes


def manifest_put(method: str, path: str, query: str) -> bool:
    """The proxy's predicate for a write of a manifest (the commit point)."""
    return method == "PUT" and path.endswith("/" + MANIFEST)


@pytest.fixture
def url(s3: S3Place) -> str:
    return s3.url("tables/t1/")


def data_keys(s3: S3Place, url: str) -> set[str]:
    """Every data object under the prefix, as the store lists it."""
    prefix = prefix_of(url).key + DATA
    pages = s3.endpoint.client().get_paginator("list_objects_v2")
    return {
        o["Key"]
        for page in pages.paginate(Bucket=s3.bucket, Prefix=prefix)
        for o in page.get("Contents", [])
    }


def manifest(s3: S3Place, url: str) -> dict[str, Any]:
    """The current manifest, read with a plain client."""
    body = s3.endpoint.client().get_object(Bucket=s3.bucket, Key=prefix_of(url).key + MANIFEST)
    doc: dict[str, Any] = json.loads(body["Body"].read())
    return doc


def referenced(s3: S3Place, url: str) -> set[str]:
    """The keys the current manifest names."""
    return {e["key"] for e in manifest(s3, url)["entries"].values()}


def retired(s3: S3Place, url: str) -> set[str]:
    """The keys the current manifest lists as retired."""
    return {r["key"] for r in manifest(s3, url)["retired"]}


def sweep(url: str, *, min_age: float, grace: float = GRACE, dry_run: bool = False) -> set[str]:
    found = sweep_transactions(
        client_for(None, url), prefix_of(url), min_age=min_age, grace=grace, dry_run=dry_run
    )
    return {u.split("/", 3)[3] for u in found}  # s3://bucket/KEY -> KEY


def commit_all(url: str, tag: str) -> None:
    with transaction(url) as tx:
        for name in NAMES:
            tx.write(name, content(tag, name))


def whole(url: str) -> tuple[int, str]:
    """(generation, tag) of the current generation; AssertionError on a mix."""
    with snapshot(url) as snap:
        tags = {tag_of(snap.read(name), name) for name in NAMES}
        assert len(tags) == 1, tags
        return snap.generation, tags.pop()  # type: ignore[attr-defined]


# ------------------------------------------------------------------------ all or nothing


def test_commit_of_four_is_all_or_nothing(s3: S3Place, url: str) -> None:
    commit_all(url, "1")
    assert whole(url) == (1, "1")
    first = data_keys(s3, url)
    assert first == referenced(s3, url) and len(first) == 4

    with pytest.raises(RuntimeError, match="in the block"), transaction(url) as tx:
        for name in NAMES:
            tx.write(name, content("2", name))
        assert len(data_keys(s3, url)) == 8  # sent at once, to keys no snapshot names
        raise RuntimeError("in the block")
    assert whole(url) == (1, "1")
    assert data_keys(s3, url) == first  # the discarded transaction's objects are deleted

    with transaction(url) as tx:
        tx.write("a.json", b"never")
        tx.discard()
    assert whole(url) == (1, "1")
    assert data_keys(s3, url) == first

    with transaction(url) as tx:
        tx.write("a.json", content("3", "a.json"))
        tx.remove("b.json")
        tx.write("e.json", b"e")
    with snapshot(url) as snap:
        assert snap.names() == ["a.json", "c.json", "d.json", "e.json"]  # type: ignore[attr-defined]
        assert tag_of(snap.read("a.json"), "a.json") == "3"
        assert tag_of(snap.read("c.json"), "c.json") == "1"
        assert not snap.exists("b.json")
        with pytest.raises(FileNotFoundError) as e:
            snap.read("b.json")
        assert e.value.filename == url + "b.json"


def test_snapshot_of_a_prefix_with_no_commit_is_empty(s3: S3Place, url: str) -> None:
    with snapshot(url) as snap:
        assert snap.generation == 0  # type: ignore[attr-defined]
        assert not snap.exists("a.json")
        assert snap.names() == []  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="after its with block"):
        snap.exists("a.json")


def test_a_prefix_with_or_without_its_slash_is_one(s3: S3Place) -> None:
    with transaction(s3.url("t2")) as tx:
        tx.write("a.json", b"1")
        tx.write("gone.json", b"x")
        tx.remove("gone.json")  # its object is deleted at once, and it is not published
    with transaction(s3.url("t2/")):
        pass  # nothing written: no new generation
    with snapshot(s3.url("t2/")) as snap:
        assert snap.generation == 1  # type: ignore[attr-defined]
        assert snap.names() == ["a.json"]  # type: ignore[attr-defined]
    assert data_keys(s3, s3.url("t2")) == referenced(s3, s3.url("t2"))


def test_a_missing_bucket_is_not_an_empty_generation(s3: S3Place) -> None:
    missing = f"s3://{s3.bucket}-missing/t/"
    with pytest.raises(FileNotFoundError, match="no bucket") as e, snapshot(missing):
        pass
    assert e.value.filename == missing + MANIFEST


def test_an_object_replaced_behind_the_manifest_is_refused(s3: S3Place, url: str) -> None:
    commit_all(url, "1")
    key = next(k for k in referenced(s3, url) if k.endswith("/a.json"))
    s3.endpoint.client().put_object(Bucket=s3.bucket, Key=key, Body=content("X", "a.json"))
    with snapshot(url) as snap, pytest.raises(ObjectStoreError, match="not the one") as e:
        snap.read("a.json")
    assert e.value.filename == url + "a.json"


def test_a_lost_answer_to_a_data_put_is_sent_again(
    s3: S3Place, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fault_proxy(s3.endpoint) as proxy:
        proxy.ghost(match=lambda m, p, q: m == "PUT" and "/.crashsafe/data/" in p)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint.url)
        commit_all(url, "1")
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint.url)
    assert whole(url) == (1, "1")
    assert data_keys(s3, url) == referenced(s3, url)


def test_readers_racing_a_writer_never_see_a_mix(s3: S3Place, url: str) -> None:
    generations, readers = 12, 3
    done = ctx.Event()
    results: multiprocessing.Queue[tuple[str, object]] = ctx.Queue()
    procs = [
        ctx.Process(
            target=s3_tx.reporting,
            args=(results, s3_tx.read_generations, url, generations, done),
        )
        for _ in range(readers)
    ]
    writer = ctx.Process(
        target=s3_tx.reporting, args=(results, s3_tx.commit_generations, url, generations)
    )
    for p in [*procs, writer]:
        p.start()
    codes: list[int | None] = []
    try:
        writer.join(HANG)
        done.set()
        for p in procs:
            p.join(HANG)
        outcomes = [results.get(timeout=HANG) for _ in range(readers + 1)]
    finally:
        codes = reap([*procs, writer], results)
    errors = [r for status, r in outcomes if status != "ok"]
    assert not errors, errors
    assert codes == [0] * (readers + 1)
    seen_lists = [cast(tuple[int, list[int]], r) for _, r in outcomes if r is not None]
    assert len(seen_lists) == readers
    for reads, seen in seen_lists:
        assert reads >= len(seen)
        assert seen[-1] == generations
        assert seen == sorted(seen)  # a later snapshot never shows an older generation
    assert whole(url) == (generations, str(generations))


# ------------------------------------------------------------------------------ kill -9


def start_writer(url: str, tag: str, k: int) -> Child:
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r})\n"
        "from tests.writers.s3_tx import main\nmain(['s3_tx', *sys.argv[1:]])\n"
    )
    return Child(code, url, tag, str(k))


@pytest.mark.parametrize("k", [2, 4])
def test_committer_killed_before_the_swap(s3: S3Place, url: str, k: int) -> None:
    commit_all(url, "1")
    first = data_keys(s3, url)
    with spawned() as children:
        child = start_writer(url, "2", k)
        children.append(child)
        assert child.readline(HANG) == "written"
        child.kill9()
    assert whole(url) == (1, "1")
    orphans = data_keys(s3, url) - first
    assert len(orphans) == k

    assert sweep(url, min_age=3600) == set()  # younger than min_age: maybe an open one
    assert sweep(url, min_age=0, dry_run=True) == orphans
    assert data_keys(s3, url) == first | orphans
    # The public sweep of the whole bucket finds the transaction's prefix by itself.
    removed = crashsafe.sweep(s3.url(""), min_age=0)
    assert {u.split("/", 3)[3] for u in removed} == orphans
    assert data_keys(s3, url) == first == referenced(s3, url)
    assert whole(url) == (1, "1")


@pytest.mark.parametrize("then", ["forward", "reset"])
def test_committer_killed_while_its_swap_is_in_flight(
    s3: S3Place, url: str, then: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swap held in a proxy, the writer killed, then the request let through (it lands
    after the writer's death: the new generation, whole) or reset (the old one, whole)."""
    commit_all(url, "1")
    first = data_keys(s3, url)
    with fault_proxy(s3.endpoint) as proxy, spawned() as children:
        hold = proxy.hold(match=manifest_put)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint.url)
        child = start_writer(url, "2", 4)
        children.append(child)
        assert child.readline(HANG) == "written"
        child.send("commit")
        hold.wait(HANG)  # the whole request is at the proxy: the kill cannot cut it short
        child.kill9()
        hold.release(then)  # type: ignore[arg-type]
        wait_until(lambda: any(x.held for x in proxy.log), HANG)
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint.url)
    if then == "forward":
        assert whole(url) == (2, "2")
        assert sweep(url, min_age=0, grace=0) == first  # the replaced generation only
    else:
        assert whole(url) == (1, "1")
        orphans = data_keys(s3, url) - first
        assert len(orphans) == 4
        assert sweep(url, min_age=0, grace=0) == orphans
        assert whole(url) == (1, "1")
    assert data_keys(s3, url) == referenced(s3, url)


def test_a_lost_answer_to_the_swap_is_one_commit(
    s3: S3Place, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit_all(url, "1")
    with fault_proxy(s3.endpoint) as proxy:
        proxy.ghost(match=manifest_put)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint.url)
        commit_all(url, "2")
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint.url)
    assert whole(url) == (2, "2")  # landed once: not refused as a conflict, not twice


def test_a_swap_whose_outcome_is_unknown_keeps_its_objects(
    s3: S3Place, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swap lands but its answer is lost, and so is every read-back: the commit raises,
    and must not delete its objects, which the generation that landed names."""
    commit_all(url, "1")
    with fault_proxy(s3.endpoint) as proxy:
        proxy.ghost(match=manifest_put)
        proxy.reset(match=lambda m, p, q: m == "HEAD" and p.endswith("/" + MANIFEST), times=None)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint.url)
        with pytest.raises(OSError) as e:
            commit_all(url, "2")
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint.url)
    assert e.value.filename == url + MANIFEST
    assert whole(url) == (2, "2")  # it landed, and every object it names is there


# ------------------------------------------------------------------------- racing commits


@pytest.mark.parametrize("broken", [False, True], ids=["compare-and-swap", "unconditional"])
def test_two_commits_racing(
    s3: S3Place, url: str, broken: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both read the same generation: the first swap is held in the proxy until the other
    commit has landed. With compare-and-swap the held one is refused, rebases, and lands on
    top: both own names are there and it wins shared.json. The broken commit (a put of the
    manifest without a condition) loses the other's name in the same race."""
    with transaction(url) as tx:
        tx.write("shared.json", content("0", "shared.json"))
    target = s3_tx.broken_commit_one if broken else s3_tx.commit_one
    results: multiprocessing.Queue[tuple[str, object]] = ctx.Queue()
    with fault_proxy(s3.endpoint) as proxy:
        hold = proxy.hold(match=manifest_put)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint.url)
        procs = {
            tag: ctx.Process(
                target=s3_tx.reporting, args=(results, target, url, f"{tag}-only.json", tag)
            )
            for tag in ("A", "B")
        }
        try:
            for p in procs.values():
                p.start()
            hold.wait(HANG)
            ready = multiprocessing.connection.wait([p.sentinel for p in procs.values()], HANG)
            assert len(ready) == 1, "both ended while one's swap was held"
            first = next(t for t, p in procs.items() if p.sentinel in ready)
            held = "B" if first == "A" else "A"
            hold.release("forward")
            for p in procs.values():
                p.join(HANG)
            outcomes = [results.get(timeout=HANG) for _ in procs]
        finally:
            reap(list(procs.values()), results)
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint.url)
    assert [s for s, _ in outcomes] == ["ok", "ok"], outcomes
    with snapshot(url) as snap:
        assert tag_of(snap.read("shared.json"), "shared.json") == held  # the last one wins
        assert snap.exists(f"{held}-only.json")
        if broken:
            assert not snap.exists(f"{first}-only.json")  # lost: the race is real
        else:
            assert snap.exists(f"{first}-only.json")
            assert tag_of(snap.read(f"{first}-only.json"), f"{first}-only.json") == first
            assert snap.generation == 3  # type: ignore[attr-defined]


def test_a_commit_that_loses_every_race_gives_up(
    s3: S3Place, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of the commit's ATTEMPTS swaps is held until another commit has landed, so each
    is refused: UpdateConflictError naming the manifest, nothing published, its objects
    deleted."""
    commit_all(url, "1")
    results: multiprocessing.Queue[tuple[str, object]] = ctx.Queue()
    with fault_proxy(s3.endpoint) as proxy:
        holds = [proxy.hold(match=manifest_put) for _ in range(ATTEMPTS)]
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint.url)
        loser = ctx.Process(
            target=s3_tx.reporting, args=(results, s3_tx.commit_one, url, "A-only.json", "A")
        )
        loser.start()
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint.url)  # this process: direct
        try:
            for i, hold in enumerate(holds):
                hold.wait(HANG)
                with transaction(url) as tx:
                    tx.write("shared.json", content(f"w{i}", "shared.json"))
                hold.release("forward")
            loser.join(HANG)
            status, outcome = results.get(timeout=HANG)
        finally:
            reap([loser], results)
    assert status == "error"
    assert outcome == (
        f"UpdateConflictError: could not update {url + MANIFEST!r}: other writers replaced it "
        f"first in each of {ATTEMPTS} attempts; nothing was written"
    )
    with snapshot(url) as snap:
        assert snap.generation == 1 + ATTEMPTS  # type: ignore[attr-defined]
        assert not snap.exists("A-only.json")
        assert tag_of(snap.read("shared.json"), "shared.json") == f"w{ATTEMPTS - 1}"
    keys = data_keys(s3, url)
    assert not any(k.endswith("/A-only.json") for k in keys)  # the loser's: deleted
    assert len(keys - referenced(s3, url)) == ATTEMPTS - 1  # the others' replaced shared.json


def test_many_committers_lose_no_name(s3: S3Place, url: str) -> None:
    writers, each = 4, 4
    results: multiprocessing.Queue[tuple[str, object]] = ctx.Queue()
    procs = [
        ctx.Process(target=s3_tx.reporting, args=(results, s3_tx.commit_many, url, w, each))
        for w in range(writers)
    ]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(HANG)
        outcomes = [results.get(timeout=HANG) for _ in procs]
    finally:
        reap(procs, results)
    assert [s for s, _ in outcomes] == ["ok"] * writers, outcomes
    with snapshot(url) as snap:
        assert snap.generation == writers * each  # type: ignore[attr-defined]
        names = snap.names()  # type: ignore[attr-defined]
        assert names == sorted(f"w{w}-{i}" for w in range(writers) for i in range(each))
        for name in names:
            assert snap.read(name) == name.encode()


# ---------------------------------------------------------------------------- grace, sweep


def test_a_snapshot_reads_its_generation_for_the_grace_period(s3: S3Place, url: str) -> None:
    """A snapshot opened before a commit reads its own generation after it; sweep with the
    default grace keeps that generation; sweep with grace 0 removes it, and the snapshot
    then says it outlived the grace period; the current generation is never touched."""
    commit_all(url, "1")
    first = data_keys(s3, url)
    with snapshot(url) as old:
        commit_all(url, "2")
        assert {tag_of(old.read(n), n) for n in NAMES} == {"1"}
        assert whole(url) == (2, "2")
        assert sweep(url, min_age=0) == set()  # retired just now: within the grace
        assert {tag_of(old.read(n), n) for n in NAMES} == {"1"}
        assert retired(s3, url) == first
        assert sweep(url, min_age=0, grace=0) == first
        assert retired(s3, url) == set()  # the sweep keeps the list as short as it can
        assert manifest(s3, url)["generation"] == 2
        with pytest.raises(FileNotFoundError, match="outlived the grace period") as e:
            old.read("a.json")
        assert e.value.filename == url + "a.json"
        assert old.exists("a.json")  # the generation names it; its object is gone
    assert whole(url) == (2, "2")
    assert data_keys(s3, url) == referenced(s3, url)


def test_sweep_takes_a_transaction_open_longer_than_min_age(s3: S3Place, url: str) -> None:
    """A sweep whose min_age the transaction outlived removes its objects; the commit then
    refuses to publish a generation naming them, instead of one that cannot be read."""
    commit_all(url, "1")
    first = data_keys(s3, url)
    with (
        pytest.raises(FileNotFoundError, match="a sweep removed it") as e,
        transaction(url) as tx,
    ):
        tx.write("a.json", content("2", "a.json"))
        tx.write("b.json", content("2", "b.json"))
        assert sweep(url, min_age=3600) == set()
        assert len(sweep(url, min_age=0)) == 2
    assert str(e.value.filename).startswith(f"s3://{s3.bucket}/")
    assert whole(url) == (1, "1")
    assert data_keys(s3, url) == first


def test_transaction_prefixes_finds_nested_ones(s3: S3Place) -> None:
    for prefix in ("", "a/", "a/b/", "c/"):
        commit_all(s3.url(prefix), "1")
    s3.endpoint.client().put_object(Bucket=s3.bucket, Key="d/plain.json", Body=b"{}")
    client = client_for(None, s3.url(""))
    found = transaction_prefixes(client, prefix_of(s3.url("")))
    assert [p.key for p in found] == ["", "a/", "a/b/", "c/"]
    assert [p.key for p in transaction_prefixes(client, prefix_of(s3.url("a/")))] == [
        "a/",
        "a/b/",
    ]


def test_a_foreign_manifest_is_refused_and_nothing_swept(s3: S3Place, url: str) -> None:
    client = s3.endpoint.client()
    key = prefix_of(url).key
    client.put_object(Bucket=s3.bucket, Key=key + DATA + "x/orphan", Body=b"o")
    client.put_object(Bucket=s3.bucket, Key=key + MANIFEST, Body=b'{"not": "ours"}')
    with pytest.raises(ForeignJournalError) as e, snapshot(url):
        pass
    assert e.value.filename == url + MANIFEST
    with pytest.raises(ForeignJournalError):
        sweep(url, min_age=0, grace=0)
    with pytest.raises(ForeignJournalError), transaction(url) as tx:
        tx.write("a.json", b"a")
    assert data_keys(s3, url) == {key + DATA + "x/orphan"}  # the failed write's is deleted


# ------------------------------------------------------------------------------ options


def test_options_with_no_meaning_on_a_store(s3: S3Place, url: str) -> None:
    for durability in ("none", "consistent"):
        with (
            pytest.raises(ValueError, match="durability") as e,
            transaction(url, durability=durability),
        ):
            pass
        assert url in str(e.value)
    with pytest.raises(ValueError, match="perm") as e, transaction(url) as tx:
        tx.write("a.json", b"a", perm=0o600)
    assert url + "a.json" in str(e.value)
    assert data_keys(s3, url) == set()
    with pytest.raises(ValueError, match="store="), transaction("relative-dir", store=Store()):
        pass
    assert recover(url) is False
    with pytest.raises(ValueError, match="no bucket"):
        recover("s3:///p/")
    with pytest.raises(ValueError, match="grace"):
        sweep(url, min_age=0, grace=-1)
    with pytest.raises(ValueError, match="grace must be a number of seconds from 0 up to 86400"):
        sweep(url, min_age=0, grace=RETAIN + 1)
    with pytest.raises(ValueError, match="min_age"):
        sweep(url, min_age=-1)
