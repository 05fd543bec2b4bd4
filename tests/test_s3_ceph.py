"""Ceph RGW (Debian ``ceph-mon ceph-osd radosgw``) started on loopback by the test itself:
a round trip, the preconditions it honours and ignores, and a kill -9 of the whole server.

The condition table is asserted cell by cell, so CI notices when Ceph's behaviour changes
(the object-store layer's probe and refusals are built on it).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from types_boto3_s3.type_defs import CompletedPartTypeDef

    from tests.harness.ceph import CephRGW

# What Ceph RGW 16.2.15 (Debian bookworm) answers, with one boto3 attempt per call; the
# body after each request shows whether a condition was honoured. Quoted If-Match values
# (the form ETags come in, and the form AWS documents) never match on PUT, bare ones do; the
# conditions on multipart completion and on DELETE are ignored.
EXPECTED = {
    "PUT If-None-Match:* new key": "200 → v1",
    "PUT If-None-Match:* existing key": "412 PreconditionFailed → v1",
    "PUT If-Match quoted, matching": "412 PreconditionFailed → v1",
    "PUT If-Match quoted, stale": "412 PreconditionFailed → v1",
    "PUT If-Match unquoted, matching": "200 → v4",
    "PUT If-Match unquoted, stale": "412 PreconditionFailed → v4",
    "PUT If-Match on missing key": "412 PreconditionFailed → absent",
    "MPU complete If-None-Match:* new key": "200 → m1",
    "MPU complete If-None-Match:* existing key": "200 → m2",
    "MPU complete If-Match quoted, matching": "200 → m3",
    "MPU complete If-Match quoted, stale": "200 → m4",
    "MPU complete If-Match unquoted, stale": "200 → m5",
    "DELETE If-Match quoted, stale": "204 → absent",
    "DELETE If-Match unquoted, stale": "204 → absent",
    "DELETE If-Match quoted, matching": "204 → absent",
    "ListMultipartUploads (1 open upload)": "200 → lists it",
    "AbortMultipartUpload": "204 → no longer listed",
    "ListParts after abort": "404 NoSuchKey",
}


@pytest.fixture
def ceph(ceph_server: CephRGW) -> CephRGW:
    """The session's cluster (tests/conftest.py), shared with the library's tests."""
    return ceph_server


def _bucket(ceph: CephRGW) -> str:
    name = f"cs-{uuid.uuid4().hex[:16]}"
    ceph.endpoint.client().create_bucket(Bucket=name)
    return name


def test_round_trip_on_loopback_only(ceph: CephRGW) -> None:
    client = ceph.endpoint.client()
    bucket = _bucket(ceph)
    client.put_object(Bucket=bucket, Key="a/b", Body=b"hello ceph")
    assert client.get_object(Bucket=bucket, Key="a/b")["Body"].read() == b"hello ceph"
    listening = ceph.listening()
    assert {address for address, _ in listening} == {"127.0.0.1"}
    assert ("127.0.0.1", ceph.rgw_port) in listening
    assert ("127.0.0.1", ceph.mon_port) in listening


def test_condition_table(ceph: CephRGW) -> None:
    from tests.harness.s3conditions import probe

    rows = probe(ceph.endpoint.client(), _bucket(ceph))
    assert {row.case: row.cell() for row in rows} == EXPECTED


def test_kill9_keeps_every_acknowledged_write(ceph: CephRGW) -> None:
    client = ceph.endpoint.client()
    bucket = _bucket(ceph)
    written = {f"k{i}": f"value {i}".encode() * (i + 1) for i in range(20)}
    for key, body in written.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    # A multipart object too (two parts: the first at the 5 MiB minimum).
    parts_body = [b"p" * (5 * 1024 * 1024), b"tail"]
    upload = client.create_multipart_upload(Bucket=bucket, Key="mpu")["UploadId"]
    parts: list[CompletedPartTypeDef] = []
    for number, body in enumerate(parts_body, start=1):
        etag = client.upload_part(
            Bucket=bucket, Key="mpu", UploadId=upload, PartNumber=number, Body=body
        )["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    client.complete_multipart_upload(
        Bucket=bucket, Key="mpu", UploadId=upload, MultipartUpload={"Parts": parts}
    )
    written["mpu"] = b"".join(parts_body)
    # The last write was acknowledged; crash everything now and bring it back.
    before = ceph.pids
    ceph.kill9()
    assert ceph.pids == {}
    ceph.start()
    assert set(ceph.pids.values()).isdisjoint(before.values())
    client = ceph.endpoint.client()
    for key, body in written.items():
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body, key
    # The OSD and radosgw alone, the monitor staying up: it must take the OSD's restart.
    client.put_object(Bucket=bucket, Key="late", Body=b"after the first crash")
    written["late"] = b"after the first crash"
    mon = ceph.pids["mon"]
    ceph.kill9("osd", "rgw")
    assert set(ceph.pids) == {"mon"}
    ceph.start()
    assert ceph.pids["mon"] == mon
    client = ceph.endpoint.client()
    for key, body in written.items():
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == body, key
