"""Faults on real S3 servers: a writer killed mid-upload, an exception mid-write, a
validator's refusal, and the server itself killed with SIGKILL.

A killed writer's multipart upload cannot be aborted by the writer: the old object must
stay whole (same bytes, same ETag), nothing partial may appear, and
``crashsafe.sweep(prefix, min_age=0)`` must abort exactly the upload crashsafe recorded
(never one another client started) and remove the record. The fault proxy
(tests/harness/s3proxy.py) holds the request at which the writer is killed, so the point
of the kill is chosen, not timed.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Literal
from urllib.parse import parse_qs

import pytest

import crashsafe
from tests import children
from tests.harness.s3proxy import MUTATING, Action, fault_proxy
from tests.harness.s3servers import SERVERS, Endpoint, S3Place, make_bucket
from tests.writers import s3_upload

# A bound that only turns a hang into a failure; no verdict depends on it.
HANG = 180.0
UPLOAD = Path(__file__).parent / "writers" / "s3_upload.py"
# Just above SINGLE_PUT_MAX (64 MiB): 5 parts (4 of 16 MiB, one of 2).
BIG_MIB = 66
PARTS = 5
OLD = b"the old object, whole\n" * 1000


def _body(endpoint: Endpoint, bucket: str, key: str) -> bytes | None:
    client = endpoint.client()
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except client.exceptions.NoSuchKey:
        return None


def _uploads(endpoint: Endpoint, bucket: str) -> list[tuple[str, str]]:
    found = endpoint.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return sorted((u["Key"], u["UploadId"]) for u in found)


def _keys(endpoint: Endpoint, bucket: str, prefix: str = "") -> list[str]:
    listing = endpoint.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _part(number: int) -> Callable[[str, str, str], bool]:
    def match(method: str, path: str, query: str) -> bool:
        q = parse_qs(query)
        return method == "PUT" and "uploadId" in q and q.get("partNumber") == [str(number)]

    return match


def _record(method: str, path: str, query: str) -> bool:
    return method == "PUT" and "/.crashsafe/uploads/" in path


def _completion(method: str, path: str, query: str) -> bool:
    return method == "POST" and "uploadId" in parse_qs(query)


# ------------------------------------------------------------------ 4. kill -9 mid-upload


@pytest.mark.parametrize(
    ("held", "then"),
    [
        ("record", "reset"),
        ("part 1", "reset"),
        (f"part {PARTS // 2 + 1}", "reset"),
        ("completion", "reset"),
        ("completion", "forward"),
    ],
)
def test_writer_killed_mid_upload_leaves_the_old_object_and_sweep_aborts_its_upload(
    s3: S3Place, held: str, then: Action
) -> None:
    """The writer is killed while the proxy holds one of its requests, which then goes on
    as *then*: dropped, or (the completion) forwarded after its writer died, when the new
    object lands whole."""
    direct = s3.endpoint.client()
    old_etag = direct.put_object(Bucket=s3.bucket, Key="data/big", Body=OLD)["ETag"]
    foreign = direct.create_multipart_upload(Bucket=s3.bucket, Key="data/foreign")["UploadId"]
    match = {"record": _record, "completion": _completion}.get(held) or _part(int(held[5:]))
    with fault_proxy(s3.endpoint) as proxy:
        hold = proxy.hold(match=match)
        writer = children.start(
            UPLOAD,
            s3.url("data/big"),
            str(BIG_MIB),
            "1",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env=proxy.endpoint.env(),
        )
        try:
            hold.wait(HANG)
            os.kill(writer.pid, signal.SIGKILL)
            assert writer.wait(HANG) == -signal.SIGKILL
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
        hold.release(then)
        children.wait_until(lambda: any(x.held for x in proxy.log), HANG)
    (last,) = [x for x in proxy.log if x.held]
    mutations = [x for x in proxy.log if x.method in MUTATING]
    # The writer got as far as the hold: start, record, the parts before it.
    assert [x.action for x in mutations[:-1]] == ["forward"] * (len(mutations) - 1)

    landed = then == "forward"
    assert last.status == (200 if landed else None), last
    stat = direct.head_object(Bucket=s3.bucket, Key="data/big")
    if landed:
        # The completion landed after the kill: the whole new object, never a part of it.
        assert _body(s3.endpoint, s3.bucket, "data/big") == s3_upload.content(BIG_MIB, 1)
    else:
        assert stat["ETag"] == old_etag
        assert _body(s3.endpoint, s3.bucket, "data/big") == OLD
    assert _keys(s3.endpoint, s3.bucket, "data/") == ["data/big"]

    dangling = [u for u in _uploads(s3.endpoint, s3.bucket) if u[0] == "data/big"]
    assert len(dangling) == (0 if landed else 1), dangling
    records = _keys(s3.endpoint, s3.bucket, ".crashsafe/uploads/")
    assert len(records) == (0 if held == "record" else 1), records

    removed = crashsafe.sweep(s3.url("data/"), min_age=0)
    if held == "record":
        # Killed between starting the upload and recording it: sweep cannot tell it from
        # another client's and leaves it (the documented limit; a lifecycle rule is the
        # backstop).
        assert removed == []
        left = [("data/big", dangling[0][1]), ("data/foreign", foreign)]
        assert _uploads(s3.endpoint, s3.bucket) == sorted(left)
        return
    if landed:
        assert removed == [s3.url(records[0])]
    else:
        assert removed == [f"{s3.url('data/big')} (upload {dangling[0][1]})"]
    # Exactly the crashsafe upload: another client's is left alone, the record is gone.
    assert _uploads(s3.endpoint, s3.bucket) == [("data/foreign", foreign)]
    assert _keys(s3.endpoint, s3.bucket, ".crashsafe/") == []
    assert crashsafe.sweep(s3.url("data/"), min_age=0) == []


def _publishes(method: str, path: str, query: str) -> bool:
    """The request that makes a large object appear at ``lost``: its multipart completion,
    or the one conditional PUT of an endpoint that ignores conditions on completion."""
    q = parse_qs(query)
    if not path.endswith("/lost"):
        return False
    return (method == "POST" and "uploadId" in q) or (method == "PUT" and "partNumber" not in q)


@pytest.mark.parametrize("fault", ["ghost", "reset"])
@pytest.mark.parametrize("mode", ["wb", "xb"])
def test_a_large_write_whose_publishing_answer_is_lost_lands_once(
    s3: S3Place, monkeypatch: pytest.MonkeyPatch, mode: Literal["wb", "xb"], fault: Action
) -> None:
    """The answer to the request that publishes a large object is lost: after it landed
    (ghost: the write recognises its token and reports success; for "xb" a blind retry
    would meet its own object and report FileExistsError) or before it was sent (reset:
    sent again). Either way the call succeeds, the object is the new one, and no upload or
    record is left."""
    direct = s3.endpoint.client()
    if mode == "wb":
        direct.put_object(Bucket=s3.bucket, Key="lost", Body=OLD)
    with fault_proxy(s3.endpoint) as proxy:
        for key, value in proxy.endpoint.env().items():
            monkeypatch.setenv(key, value)
        (proxy.ghost if fault == "ghost" else proxy.reset)(match=_publishes)
        with crashsafe.atomic_open(s3.url("lost"), mode) as f:
            for chunk in s3_upload.chunks(BIG_MIB, 5):
                f.write(chunk)
    assert _body(s3.endpoint, s3.bucket, "lost") == s3_upload.content(BIG_MIB, 5)
    assert _uploads(s3.endpoint, s3.bucket) == []
    assert _keys(s3.endpoint, s3.bucket, ".crashsafe/") == []
    publishing = [(x.action, x.status) for x in proxy.log if _publishes(x.method, x.path, x.query)]
    if fault == "ghost":
        assert publishing == [("ghost", 200)]
    else:
        assert publishing == [("reset", None), ("forward", 200)]


def test_exception_inside_atomic_open_of_a_large_object_sends_nothing(
    s3: S3Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The block's bytes are staged locally; an exception after BIG_MIB MiB of them publishes
    nothing and starts no upload (the proxy saw no mutating request at all)."""
    direct = s3.endpoint.client()
    old_etag = direct.put_object(Bucket=s3.bucket, Key="big", Body=OLD)["ETag"]
    with fault_proxy(s3.endpoint) as proxy:
        for key, value in proxy.endpoint.env().items():
            monkeypatch.setenv(key, value)
        with (
            pytest.raises(RuntimeError, match="mid-write"),
            crashsafe.atomic_open(s3.url("big"), "wb") as f,
        ):
            for chunk in s3_upload.chunks(BIG_MIB, 2):
                f.write(chunk)
            raise RuntimeError("mid-write")
    assert [x for x in proxy.log if x.method in MUTATING] == []
    assert direct.head_object(Bucket=s3.bucket, Key="big")["ETag"] == old_etag
    assert _body(s3.endpoint, s3.bucket, "big") == OLD
    assert _uploads(s3.endpoint, s3.bucket) == []


def test_a_validator_refusing_a_large_copy_sends_nothing(
    s3: S3Place, monkeypatch: pytest.MonkeyPatch, workdir: Path
) -> None:
    """atomic_copy(local, url) validates the whole source before a byte is sent: a
    validator that refuses leaves the old object and no upload behind."""
    source = workdir / "big"
    with open(source, "wb") as out:
        for chunk in s3_upload.chunks(BIG_MIB, 3):
            out.write(chunk)
    direct = s3.endpoint.client()
    old_etag = direct.put_object(Bucket=s3.bucket, Key="big", Body=OLD)["ETag"]
    seen: list[int] = []

    def refuse(f: BinaryIO) -> None:
        seen.append(len(f.read()))
        raise crashsafe.VerificationError("not this one")

    with fault_proxy(s3.endpoint) as proxy:
        for key, value in proxy.endpoint.env().items():
            monkeypatch.setenv(key, value)
        with pytest.raises(crashsafe.VerificationError, match="not this one"):
            crashsafe.atomic_copy(source, s3.url("big"), validate=refuse)
    assert seen == [BIG_MIB << 20]
    assert [x for x in proxy.log if x.method in MUTATING] == []
    assert direct.head_object(Bucket=s3.bucket, Key="big")["ETag"] == old_etag
    assert _uploads(s3.endpoint, s3.bucket) == []
    source.unlink()


# ------------------------------------------------------------------ 5. the server killed


def test_every_acknowledged_write_survives_a_server_kill9(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SeaweedFS only (moto keeps everything in memory): writes crashsafe reported done,
    of every kind, are all there after the server is killed with SIGKILL and restarted."""
    with SERVERS["seaweedfs"](tmp_path) as server:
        for key, value in server.endpoint.env().items():
            monkeypatch.setenv(key, value)
        bucket = make_bucket(server.endpoint)
        place = S3Place(server, server.endpoint, bucket)
        creates = 12
        for i in range(creates):
            crashsafe.atomic_write(
                place.url(f"created/{i}"), f"create {i}".encode(), overwrite=False
            )
        for _ in range(10):
            crashsafe.update_json(
                place.url("counter"), lambda d: {"n": d["n"] + 1}, default={"n": 0}
            )
        crashsafe.write_json(place.url("doc.json"), {"last": "acknowledged"})
        with crashsafe.atomic_open(place.url("big"), "wb") as f:
            for chunk in s3_upload.chunks(66, 4):
                f.write(chunk)
        server.kill9()
        server.start()
        for i in range(creates):
            assert _body(server.endpoint, bucket, f"created/{i}") == f"create {i}".encode()
        assert crashsafe.read_json(place.url("counter")) == {"n": 10}
        assert crashsafe.read_json(place.url("doc.json")) == {"last": "acknowledged"}
        assert _body(server.endpoint, bucket, "big") == s3_upload.content(66, 4)
        # And the store takes writes again, through the client cached before the kill.
        crashsafe.update_json(place.url("counter"), lambda d: {"n": d["n"] + 1})
        assert crashsafe.read_json(place.url("counter")) == {"n": 11}
        assert _uploads(server.endpoint, bucket) == []
