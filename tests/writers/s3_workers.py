"""Functions run in ``multiprocessing`` spawn children by tests/test_s3_races.py.

Each child starts with the environment it is given (the endpoint: a server or a fault
proxy in front of it), makes its first request before the common barrier (so that the
client, and the probe of the endpoint's conditions, are behind it), and then races the
others with no sleep: the barrier releases every child at once. Outcomes go back through a
queue as plain tuples, so the parent judges everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier, Event
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, IncompleteReadError, ResponseStreamingError

import crashsafe

# A header line of JSON, then the body: each version of a raced object says what it is.
HEADER_END = b"\n"
# A bound that only turns a hang into a failure.
HANG = 120.0


def _use(env: Mapping[str, str]) -> None:
    os.environ.update(env)


def create_race(
    rounds: list[tuple[Mapping[str, str], str]],
    me: int,
    warm_urls: list[str],
    barrier: Barrier,
    results: Queue[tuple[int, int, str, str]],
) -> None:
    """For each (environment, URL) in turn, after the barrier,
    ``atomic_write(url, payload, overwrite=False)`` with that environment; puts (me, round,
    outcome, detail) per round: outcome ``won`` or the exception's name. The library reads
    the environment at each call, so one child can race on several endpoints in turn."""
    for (env, _), warm in zip(_first_of_each(rounds), warm_urls, strict=True):
        _use(env)
        crashsafe.atomic_write(warm, b"warm", overwrite=False)
    for round_, (env, url) in enumerate(rounds):
        _use(env)
        barrier.wait()
        try:
            crashsafe.atomic_write(url, payload(me, round_), overwrite=False)
        except Exception as e:  # the parent judges every outcome
            results.put((me, round_, type(e).__name__, str(e)))
        else:
            results.put((me, round_, "won", ""))


def _first_of_each(
    rounds: list[tuple[Mapping[str, str], str]],
) -> list[tuple[Mapping[str, str], str]]:
    """The first round of each distinct environment, in order."""
    seen: list[Mapping[str, str]] = []
    for env, _ in rounds:
        if env not in seen:
            seen.append(env)
    return [next(r for r in rounds if r[0] == env) for env in seen]


def payload(me: int, round_: int) -> bytes:
    """What child *me* writes in round *round_*: distinct for every child and round."""
    return f"child {me} round {round_} ".encode() * 64


def counter(
    phases: list[tuple[str, Mapping[str, str], str, str]],
    times: int,
    barrier: Barrier,
    results: Queue[tuple[int, str, str]],
) -> None:
    """For each phase (kind, environment, URL, warm-up URL): add one to ``n`` at URL,
    *times* times, with ``update_json`` (kind ``crashsafe``) or with the naive
    read-modify-write of :func:`naive_counter` (kind ``naive``). The phase's first write
    waits at the barrier after every child has read the same (missing) object: a sure
    conflict. Puts (phase, "done", "") or (phase, exception name, message)."""
    for phase, (kind, env, url, warm) in enumerate(phases):
        _use(env)
        try:
            if kind == "naive":
                bucket, _, key = url.removeprefix("s3://").partition("/")
                _naive(env, bucket, key, times, barrier)
            else:
                _counted(url, warm, times, barrier)
        except Exception as e:
            results.put((phase, type(e).__name__, str(e)))
        else:
            results.put((phase, "done", ""))


def _counted(url: str, warm: str, times: int, barrier: Barrier) -> None:
    crashsafe.write_json(warm, {"warm": True})
    first = [True]
    wrote = [0]  # the last value this child wrote: no later read may show less

    def add(doc: dict[str, int]) -> dict[str, int]:
        if doc["n"] < wrote[0]:
            raise AssertionError(f"read n={doc['n']} after writing n={wrote[0]}: a stale read")
        if first:
            first.clear()
            barrier.wait()
        return {"n": doc["n"] + 1}

    for _ in range(times):
        wrote[0] = crashsafe.update_json(url, add, default={"n": 0})["n"]


def naive_counter(
    env: Mapping[str, str],
    url: str,
    times: int,
    barrier: Barrier,
    results: Queue[tuple[int, str, str]],
) -> None:
    """The broken twin of :func:`counter`: get, add one, unconditional put, with boto3 and
    nothing else; the first round's put waits at the barrier after every child has read."""
    counter([("naive", env, url, "")], times, barrier, results)


def _naive(env: Mapping[str, str], bucket: str, key: str, times: int, barrier: Barrier) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
        # botocore's response checksums wrap an error's body so that it cannot parse it
        # (rclone answers a GET that meets a concurrent PUT with an error).
        config=Config(
            s3={"addressing_style": "path"},
            response_checksum_validation="when_required",
            request_checksum_calculation="when_required",
        ),
    )
    for i in range(times):
        doc = _naive_read(client, bucket, key)
        if i == 0:
            barrier.wait()
        body = json.dumps({"n": doc["n"] + 1}).encode()
        client.put_object(Bucket=bucket, Key=key, Body=body)


def _naive_read(client: Any, bucket: str, key: str) -> dict[str, int]:
    """The document, read again while a concurrent put makes the server answer an error, a
    torn body or a body cut short of its length (rclone writes in place): the naive client
    is given every chance."""
    for _ in range(1000):
        try:
            doc: dict[str, int] = json.loads(
                client.get_object(Bucket=bucket, Key=key)["Body"].read()
            )
        except client.exceptions.NoSuchKey:
            return {"n": 0}
        except (ClientError, IncompleteReadError, ResponseStreamingError, ValueError):
            continue
        return doc
    raise AssertionError(f"no whole read of {key} in 1000 attempts")


def versioned(version: int, size: int) -> bytes:
    """A self-describing object of *size* body bytes: a JSON header line (version, length,
    sha256 of the body), then the body, made from the version number."""
    block = hashlib.sha256(f"version {version}".encode()).digest() * (1 << 15)  # 1 MiB
    body = (block * (size // len(block) + 1))[:size]
    header = json.dumps(
        {"version": version, "length": size, "sha256": hashlib.sha256(body).hexdigest()}
    ).encode()
    return header + HEADER_END + body


def check_versioned(data: bytes) -> int:
    """The version *data* is, if it is one whole self-describing object; AssertionError if
    it is partial or mixed."""
    header, sep, body = data.partition(HEADER_END)
    assert sep, f"no header line in {len(data)} bytes"
    meta: dict[str, Any] = json.loads(header)
    assert len(body) == meta["length"], (meta, len(body))
    assert hashlib.sha256(body).hexdigest() == meta["sha256"], meta
    version = meta["version"]
    assert isinstance(version, int)
    return version


def version_writer(  # noqa: PLR0917 - a Process target takes its arguments by position
    env: Mapping[str, str],
    url: str,
    sizes: list[int],
    reads: Synchronized[int],
    done: Event,
    results: Queue[tuple[str, str]],
) -> None:
    """Replace the object at *url* with each version in turn (``atomic_write``, large ones
    multipart); before each next version, wait until the readers have finished two more
    reads, so that reads overlap every write."""
    _use(env)
    try:
        for version, size in enumerate(sizes, 1):
            seen = reads.value
            deadline = time.monotonic() + HANG
            while reads.value < seen + 2:
                # A wait for an event, not for a time: the bound only turns a hang
                # (a dead reader) into a failure.
                if time.monotonic() > deadline:
                    raise AssertionError(f"the readers made no progress in {HANG} s")
                time.sleep(0.002)
            crashsafe.atomic_write(url, versioned(version, size))
    except Exception as e:
        results.put((type(e).__name__, str(e)))
    else:
        results.put(("done", ""))
    finally:
        done.set()


def version_reader(  # noqa: PLR0917 - a Process target takes its arguments by position
    env: Mapping[str, str],
    url: str,
    local: str,
    reads: Synchronized[int],
    done: Event,
    results: Queue[tuple[str, str]],
) -> None:
    """``atomic_copy(url, local)`` until the writer is done; each copy must be one whole
    version. Puts ("versions", json list of the versions seen in order) or the error."""
    _use(env)
    seen: list[int] = []
    try:
        while not done.is_set():
            crashsafe.atomic_copy(url, local)
            with open(local, "rb") as f:
                seen.append(check_versioned(f.read()))
            with reads.get_lock():
                reads.value += 1
    except BaseException as e:
        results.put((type(e).__name__, str(e)))
        raise
    results.put(("versions", json.dumps(seen)))
