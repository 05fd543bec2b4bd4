"""Children of tests/test_s3_transaction.py that talk to an S3 store (AWS_* from the parent).

As a program: ``s3_tx.py URL TAG K``: opens ``transaction(URL)``, writes the first *K* of
:data:`NAMES` (content :func:`content`), prints ``written`` and blocks on a line of stdin;
then writes the rest and commits, and prints ``committed``. The test kills it with SIGKILL
where it wants. As a module: the targets of ``multiprocessing`` (spawn) children.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event

NAMES = ("a.json", "b.json", "c.json", "d.json")


def content(tag: str, name: str) -> bytes:
    """What generation *tag* writes to *name*: the tag and the name, so a mix shows."""
    return json.dumps({"tag": tag, "name": name}).encode()


def tag_of(data: bytes, name: str) -> str:
    doc = json.loads(data)
    assert doc["name"] == name, (doc, name)
    return str(doc["tag"])


def commit_generations(url: str, count: int) -> None:
    """Commit *count* generations, each writing all of :data:`NAMES` with tag = its number."""
    from crashsafe.transactions import transaction

    for g in range(1, count + 1):
        with transaction(url) as tx:
            for name in NAMES:
                tx.write(name, content(str(g), name))


def read_generations(url: str, last: int, done: Event) -> tuple[int, list[int]]:
    """Read every name through ``snapshot`` until generation *last* is seen (or the writer
    is done); raise AssertionError on a mix. Returns (snapshots read, generations seen)."""
    from crashsafe.transactions import snapshot

    reads, seen = 0, list[int]()
    while True:
        finished = done.is_set()
        with snapshot(url) as snap:
            generation: int = snap.generation  # type: ignore[attr-defined]
            if generation == 0:
                assert not any(snap.exists(name) for name in NAMES)
            else:
                tags = {tag_of(snap.read(name), name) for name in NAMES}
                assert tags == {str(generation)}, (generation, tags)
        reads += 1
        if not seen or seen[-1] != generation:
            seen.append(generation)
        if generation == last or finished:
            return reads, seen


def commit_one(url: str, own: str, tag: str) -> float:
    """One transaction writing *own* (a name no one else writes) and ``shared.json``;
    returns the time its commit returned."""
    from crashsafe.transactions import transaction

    with transaction(url) as tx:
        tx.write(own, content(tag, own))
        tx.write("shared.json", content(tag, "shared.json"))
    return time.time()


def commit_many(url: str, writer: int, count: int) -> None:
    """*count* transactions, each writing one name of this writer's own (content: the name)."""
    from crashsafe.transactions import transaction

    for i in range(count):
        with transaction(url) as tx:
            tx.write(f"w{writer}-{i}", f"w{writer}-{i}")


def broken_commit_one(url: str, own: str, tag: str) -> float:
    """:func:`commit_one` with the manifest put WITHOUT a condition (read, modify, put):
    what the compare-and-swap exists to prevent."""
    from crashsafe.objectstore._client import client_for
    from crashsafe.objectstore._manifest import (
        DATA,
        MANIFEST,
        Entry,
        _rebased,
        prefix_of,
        read_manifest,
    )
    from crashsafe.objectstore._url import ObjectURL

    client = client_for(None, url)
    prefix = prefix_of(url)
    changes: dict[str, Entry | None] = {}
    for name in (own, "shared.json"):
        key = f"{prefix.key}{DATA}broken-{tag}/{name}"
        body = content(tag, name)
        etag = client.put(ObjectURL(prefix.bucket, key), body, metadata={})
        changes[name] = Entry(key, len(body), etag)
    current = read_manifest(client, prefix.join(MANIFEST))
    client.put(prefix.join(MANIFEST), _rebased(current, changes, time.time()), metadata={})
    return time.time()


def reporting(
    queue: Queue[tuple[str, object]], target: Callable[..., object], *args: object
) -> None:
    """Run ``target(*args)`` and put ``("ok", result)`` or ``("error", repr)`` on *queue*."""
    try:
        queue.put(("ok", target(*args)))
    except BaseException as e:
        queue.put(("error", f"{type(e).__name__}: {e}"))
        raise


def main(argv: list[str]) -> None:
    from crashsafe.transactions import transaction

    url, tag, k = argv[1], argv[2], int(argv[3])
    with transaction(url) as tx:
        for name in NAMES[:k]:
            tx.write(name, content(tag, name))
        print("written", flush=True)
        sys.stdin.readline()
        for name in NAMES[k:]:
            tx.write(name, content(tag, name))
    print("committed", flush=True)


if __name__ == "__main__":
    main(sys.argv)
