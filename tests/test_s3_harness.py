"""The object-store tests' infrastructure, proved on the real servers: each server starts on
loopback only and round-trips an object; kill -9 and a restart keep SeaweedFS's acknowledged
writes (moto, in memory, loses everything: recorded as a fact); the fault proxy passes signed
requests through unchanged and its ghost, reset and hold faults do what they say, and a fault
that did not happen fails the test that asked for it; rclone ignores preconditions."""

from __future__ import annotations

import dataclasses
import http.client
import os
import threading
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError, ClientError

from tests.harness.s3proxy import (
    Exchange,
    FaultProxy,
    UnappliedRule,
    complete_upload,
    create_upload,
    fault_proxy,
    mutating,
    put_object,
    upload_part,
)
from tests.harness.s3servers import (
    SERVERS,
    Endpoint,
    S3Place,
    Server,
    ServerStartError,
    empty_bucket,
    group_members,
    listening,
    make_bucket,
    serve,
)

if TYPE_CHECKING:
    from types_boto3_s3.type_defs import CompletedPartTypeDef

# A bound on a wait that only turns a hang into a failure.
HANG = 120.0


def _status(error: ClientError) -> int:
    return error.response["ResponseMetadata"]["HTTPStatusCode"]


def _body(endpoint: Endpoint, bucket: str, key: str) -> bytes | None:
    """The object's bytes read straight from the server, None if there is none."""
    try:
        return endpoint.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as e:
        if _status(e) == 404:
            return None
        raise


@pytest.fixture(params=list(SERVERS))
def any_server(request: pytest.FixtureRequest) -> Server:
    server: Server = request.getfixturevalue(f"{request.param}_server")
    return server


# ------------------------------------------------------------------------------- servers


def test_server_listens_on_loopback_only_and_round_trips(any_server: Server) -> None:
    addresses = listening(any_server)
    port = int(any_server.endpoint.url.rsplit(":", 1)[1])
    assert ("127.0.0.1", port) in addresses
    assert {address for address, _ in addresses} == {"127.0.0.1"}, addresses
    bucket = make_bucket(any_server.endpoint)
    client = any_server.endpoint.client()
    try:
        client.put_object(Bucket=bucket, Key="dir/key", Body=b"round trip")
        assert _body(any_server.endpoint, bucket, "dir/key") == b"round trip"
        assert bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]
        # An upload left open: empty_bucket aborts it before removing the bucket.
        client.create_multipart_upload(Bucket=bucket, Key="open")
    finally:
        empty_bucket(any_server.endpoint, bucket)
    assert bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_a_server_that_exits_before_ready_fails_with_its_log(tmp_path: Path) -> None:
    """Started over (new ports) up to three times, then the error shows the log's tail;
    nothing is left of any attempt."""
    built: list[Server] = []

    def build() -> Server:
        workdir = tmp_path / f"attempt{len(built)}"
        command = ["sh", "-c", "echo cannot bind >&2; exit 3"]
        built.append(
            Server(Endpoint("broken", "http://127.0.0.1:9", "k", "s", "r"), command, workdir)
        )
        return built[-1]

    expected = "exited with 3; log tail:\ncannot bind"
    with pytest.raises(ServerStartError, match=expected) as e, serve(build):
        pass
    assert e.value.exited
    assert len(built) == 3
    assert list(tmp_path.iterdir()) == []
    assert all(server.pid is None for server in built)


def test_seaweedfs_checks_signatures(seaweedfs_server: Server) -> None:
    """What makes the proxy's pass-through test mean something: SeaweedFS refuses a request
    signed with another secret (and moto would not)."""
    endpoint = seaweedfs_server.endpoint
    wrong = dataclasses.replace(endpoint, secret_key=endpoint.secret_key + "x")
    with pytest.raises(ClientError) as e:
        wrong.client().list_buckets()
    assert _status(e.value) == 403


def test_s3_fixture_sets_the_environment(s3: S3Place) -> None:
    assert {k: os.environ[k] for k in s3.endpoint.env()} == s3.endpoint.env()
    assert os.environ["AWS_ENDPOINT_URL"] == s3.server.endpoint.url
    assert s3.url("a/b") == f"s3://{s3.bucket}/a/b"


def test_seaweedfs_keeps_acknowledged_writes_across_kill9(tmp_path: Path) -> None:
    with SERVERS["seaweedfs"](tmp_path) as server:
        assert server.pid is not None
        pgid, workdir = server.pid, server.workdir
        ports = {p for _, p in listening(server)}
        bucket = make_bucket(server.endpoint)
        client = server.endpoint.client()
        for i in range(20):
            client.put_object(Bucket=bucket, Key=f"k{i}", Body=f"acknowledged {i}".encode())
        server.kill9()
        assert group_members(pgid) == []
        server.start()
        # The ports the harness chose serve again; weed also listens on a port of its
        # own choosing (seen to change across restarts), so not all must be the same.
        after = listening(server)
        assert urlsplit(server.endpoint.url).port in {p for _, p in after}
        assert len(ports & {p for _, p in after}) >= len(ports) - 1
        assert {address for address, _ in after} == {"127.0.0.1"}
        for i in range(20):
            assert _body(server.endpoint, bucket, f"k{i}") == f"acknowledged {i}".encode()
        pgid = server.pid
    # Stopped: nothing of its group runs, its directory and its sockets are gone.
    assert group_members(pgid) == []
    assert not workdir.exists()
    assert not [s for p in ports for s in Path("/tmp").glob(f"seaweedfs-*-{p}.sock")]


def test_moto_loses_everything_across_kill9(tmp_path: Path) -> None:
    """A fact to know, not a failure: moto keeps its state in memory."""
    with SERVERS["moto"](tmp_path) as server:
        bucket = make_bucket(server.endpoint)
        server.endpoint.client().put_object(Bucket=bucket, Key="k", Body=b"v")
        server.kill9()
        server.start()
        assert server.endpoint.client().list_buckets()["Buckets"] == []


def test_rclone_ignores_preconditions(rclone_server: Server) -> None:
    """The fact the library's refusal rests on: a create-only put over an existing key, and a
    put conditional on a stale ETag, both succeed and overwrite."""
    endpoint = rclone_server.endpoint
    bucket = make_bucket(endpoint)
    client = endpoint.client()
    try:
        stale = client.put_object(Bucket=bucket, Key="k", Body=b"first")["ETag"]
        client.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
        assert _body(endpoint, bucket, "k") == b"second"
        client.put_object(Bucket=bucket, Key="k", Body=b"third", IfMatch=stale)
        assert _body(endpoint, bucket, "k") == b"third"
    finally:
        empty_bucket(endpoint, bucket)


def test_preconditions_honoured_where_the_s3_fixture_runs(s3: S3Place) -> None:
    """The contrast: both servers of the ``s3`` fixture refuse the same two puts."""
    client = s3.endpoint.client()
    stale = client.put_object(Bucket=s3.bucket, Key="k", Body=b"first")["ETag"]
    with pytest.raises(ClientError) as e:
        client.put_object(Bucket=s3.bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert _status(e.value) == 412
    client.put_object(Bucket=s3.bucket, Key="k", Body=b"third")
    with pytest.raises(ClientError) as e:
        client.put_object(Bucket=s3.bucket, Key="k", Body=b"fourth", IfMatch=stale)
    assert _status(e.value) == 412
    assert _body(s3.endpoint, s3.bucket, "k") == b"third"


# ------------------------------------------------------------------------------- proxy


def _put(proxy: FaultProxy, bucket: str, key: str, body: bytes) -> BaseException | None:
    """Put through the proxy; the error the client saw, or None."""
    try:
        proxy.endpoint.client().put_object(Bucket=bucket, Key=key, Body=body)
    except (BotoCoreError, ClientError) as e:
        return e
    return None


def _puts(log: list[Exchange]) -> list[Exchange]:
    return [x for x in log if x.method == "PUT"]


def test_proxy_passes_signed_requests_through(s3: S3Place) -> None:
    """Signatures made for the proxy's URL verify upstream (SeaweedFS checks them), over
    one kept-alive client, with Expect: 100-continue, multipart parts and a HEAD."""
    with fault_proxy(s3.endpoint) as proxy:
        client = proxy.endpoint.client()
        client.put_object(Bucket=s3.bucket, Key="small", Body=b"s")
        up = client.create_multipart_upload(Bucket=s3.bucket, Key="mp")["UploadId"]
        parts: list[CompletedPartTypeDef] = []
        for n, size in ((1, 5 << 20), (2, 1000)):
            body = bytes([n]) * size
            etag = client.upload_part(
                Bucket=s3.bucket, Key="mp", UploadId=up, PartNumber=n, Body=body
            )["ETag"]
            parts.append({"PartNumber": n, "ETag": etag})
        client.complete_multipart_upload(
            Bucket=s3.bucket, Key="mp", UploadId=up, MultipartUpload={"Parts": parts}
        )
        assert client.head_object(Bucket=s3.bucket, Key="mp")["ContentLength"] == (5 << 20) + 1000
        got = client.get_object(Bucket=s3.bucket, Key="mp")["Body"].read()
        assert got == b"\x01" * (5 << 20) + b"\x02" * 1000
        with pytest.raises(ClientError) as e:
            client.get_object(Bucket=s3.bucket, Key="missing")
        assert _status(e.value) == 404
    assert [(x.method, x.status, x.action) for x in proxy.log] == [
        ("PUT", 200, "forward"),
        ("POST", 200, "forward"),
        ("PUT", 200, "forward"),
        ("PUT", 200, "forward"),
        ("POST", 200, "forward"),
        ("HEAD", 200, "forward"),
        ("GET", 200, "forward"),
        ("GET", 404, "forward"),
    ]
    assert [x.index for x in proxy.log] == list(range(8))
    # The predicates rules use, on the requests boto3 really sent.
    kinds = {
        "put_object": put_object,
        "create_upload": create_upload,
        "upload_part": upload_part,
        "complete_upload": complete_upload,
    }
    assert [[k for k, p in kinds.items() if p(x.method, x.path, x.query)] for x in proxy.log] == [
        ["put_object"],
        ["create_upload"],
        ["upload_part"],
        ["upload_part"],
        ["complete_upload"],
        [],
        [],
        [],
    ]
    assert [mutating(x.method, x.path, x.query) for x in proxy.log] == [True] * 5 + [False] * 3


def _signed_chunked_put(endpoint: Endpoint, bucket: str, key: str, pieces: list[bytes]) -> int:
    """A SigV4-signed PUT whose body goes as Transfer-Encoding: chunked (UNSIGNED-PAYLOAD),
    sent with http.client; returns the status."""
    url = f"{endpoint.url}/{bucket}/{key}"
    request = AWSRequest(
        method="PUT",
        url=url,
        headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD", "Transfer-Encoding": "chunked"},
    )
    credentials = Credentials(endpoint.access_key, endpoint.secret_key)
    S3SigV4Auth(credentials, "s3", endpoint.region).add_auth(request)
    host, port = endpoint.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=HANG)
    try:
        conn.request(
            "PUT",
            f"/{bucket}/{key}",
            body=iter(pieces),
            headers=dict(request.headers.items()),
            encode_chunked=True,
        )
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_proxy_carries_chunked_uploads(s3: S3Place) -> None:
    pieces = [b"a" * 70000, b"b" * 3, b"c" * 100000]
    # Ceph RGW 16 refuses a body without a Content-Length (411 Length Required): the
    # proxy carries the request and that answer through, and nothing is written.
    expected = 411 if s3.endpoint.name == "ceph" else 200
    with fault_proxy(s3.endpoint) as proxy:
        assert _signed_chunked_put(proxy.endpoint, s3.bucket, "chunked", pieces) == expected
    assert [(x.method, x.status) for x in proxy.log] == [("PUT", expected)]
    if expected == 200:
        assert _body(s3.endpoint, s3.bucket, "chunked") == b"".join(pieces)


def test_proxy_streams_large_bodies(s3: S3Place, tmp_path: Path) -> None:
    """64 MiB up and down through the proxy while the test process (proxy threads and
    client) never holds more than a small part of it."""
    size = 64 << 20
    source = tmp_path / "big"
    with open(source, "wb") as f:
        for i in range(size >> 20):
            f.write(bytes([i]) * (1 << 20))
    with fault_proxy(s3.endpoint) as proxy:
        client = proxy.endpoint.client()
        tracemalloc.start()
        try:
            with open(source, "rb") as f:
                client.put_object(Bucket=s3.bucket, Key="big", Body=f)
            stream = client.get_object(Bucket=s3.bucket, Key="big")["Body"]
            total = 0
            while piece := stream.read(1 << 20):
                assert piece == bytes([total >> 20]) * len(piece)
                total += len(piece)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert total == size
    assert peak < size // 4, f"peak {peak} bytes traced for a {size}-byte body"


def test_proxy_relays_an_early_refusal_of_a_large_body(s3: S3Place) -> None:
    """A create-only put of 8 MiB over an existing key: the server may refuse before it has
    read the body; the client gets the 412 all the same, and the next request goes on."""
    with fault_proxy(s3.endpoint) as proxy:
        client = proxy.endpoint.client()
        client.put_object(Bucket=s3.bucket, Key="k", Body=b"first")
        for _ in range(2):
            with pytest.raises(ClientError) as e:
                client.put_object(Bucket=s3.bucket, Key="k", Body=bytes(8 << 20), IfNoneMatch="*")
            assert _status(e.value) == 412
        client.put_object(Bucket=s3.bucket, Key="k2", Body=b"next")
    assert [x.status for x in proxy.log] == [200, 412, 412, 200]
    assert _body(s3.endpoint, s3.bucket, "k") == b"first"


def _check_ghost(place: S3Place, proxy: FaultProxy) -> None:
    """The ghost promise: the write landed, the client saw a lost response."""
    error = _put(proxy, place.bucket, "ghost", b"landed")
    assert isinstance(error, BotoCoreError), error
    assert _body(place.endpoint, place.bucket, "ghost") == b"landed"
    assert [(x.status, x.action) for x in _puts(proxy.log)] == [(200, "ghost")]


def test_proxy_ghost_lands_the_write_and_loses_the_answer(s3: S3Place) -> None:
    with fault_proxy(s3.endpoint) as proxy:
        rule = proxy.ghost(match=put_object)
        _check_ghost(s3, proxy)
        # Only once (times=1): the next put is answered.
        assert _put(proxy, s3.bucket, "after", b"answered") is None
    assert rule.applied == 1


def test_a_ghost_rule_that_does_not_apply_is_detected(s3: S3Place) -> None:
    """The deliberately broken variant: a rule that matches nothing (a typo in the method)
    fails both the ghost check and the proxy's own check on leaving."""
    with pytest.raises(UnappliedRule), fault_proxy(s3.endpoint) as proxy:
        proxy.ghost(match=lambda method, path, query: method == "PTU")
        with pytest.raises(AssertionError):
            _check_ghost(s3, proxy)


def test_proxy_reset_lands_nothing(s3: S3Place) -> None:
    with fault_proxy(s3.endpoint) as proxy:
        proxy.reset(index=0)
        error = _put(proxy, s3.bucket, "reset", b"never")
        assert isinstance(error, BotoCoreError), error
        assert _body(s3.endpoint, s3.bucket, "reset") is None
        assert _put(proxy, s3.bucket, "reset", b"second") is None
    assert [(x.index, x.status, x.action) for x in proxy.log] == [
        (0, None, "reset"),
        (1, 200, "forward"),
    ]
    assert _body(s3.endpoint, s3.bucket, "reset") == b"second"


@pytest.mark.parametrize("then", ["forward", "ghost", "reset"])
def test_proxy_hold_blocks_until_released(s3: S3Place, then: str) -> None:
    outcome: list[BaseException | None] = []
    with fault_proxy(s3.endpoint) as proxy:
        hold = proxy.hold(match=lambda method, path, query: method == "PUT")
        writer = threading.Thread(
            target=lambda: outcome.append(_put(proxy, s3.bucket, "held", b"held"))
        )
        writer.start()
        hold.wait(HANG)
        # Arrived and held: nothing forwarded, the writer still waits for its answer.
        assert writer.is_alive()
        assert _body(s3.endpoint, s3.bucket, "held") is None
        assert proxy.log == []
        hold.release(then)  # type: ignore[arg-type]
        writer.join(HANG)
        assert not writer.is_alive()
    landed = _body(s3.endpoint, s3.bucket, "held")
    assert landed == (None if then == "reset" else b"held")
    assert (outcome[0] is None) == (then == "forward"), outcome
    assert [(x.action, x.held) for x in proxy.log] == [(then, True)]


def _chaos_run(place: S3Place, seed: int, tag: str) -> list[str]:
    with fault_proxy(place.endpoint) as proxy:
        proxy.chaos(seed, ghost=0.3, reset=0.3)
        for i in range(24):
            error = _put(proxy, place.bucket, f"{tag}{i}", b"v")
            landed = _body(place.endpoint, place.bucket, f"{tag}{i}") is not None
            action = proxy.log[-1].action
            assert (error is None) == (action == "forward"), (i, error, action)
            assert landed == (action != "reset"), (i, action)
    return [x.action for x in proxy.log]


def test_proxy_chaos_repeats_with_its_seed(s3: S3Place) -> None:
    first = _chaos_run(s3, 7, "a")
    assert _chaos_run(s3, 7, "b") == first
    assert {"forward", "ghost", "reset"} <= set(first)
    assert _chaos_run(s3, 8, "c") != first
