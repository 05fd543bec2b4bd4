"""Which S3 preconditions an endpoint honours, asked with boto3 making ONE attempt per call.

:func:`probe` runs every case against a fresh key of an existing bucket and returns one
:class:`Outcome` per case: the HTTP status, the error code, and what the key holds after the
request (so a condition the server ignores shows as an overwrite or a deletion).

``python -m tests.harness.s3conditions`` starts a single-node Ceph RGW (tests/harness/ceph.py)
under a temporary directory and prints the table in Markdown.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client
    from types_boto3_s3.type_defs import CompletedMultipartUploadTypeDef


@dataclass(frozen=True)
class Outcome:
    """What one request got: *status* and error *code* (None on success), and the key's
    body afterwards (*after*; None when the key does not exist, "-" when not read)."""

    case: str
    status: int
    code: str | None
    after: str | None

    def cell(self) -> str:
        """The outcome as a table cell: ``412 PreconditionFailed → v1``."""
        answer = f"{self.status} {self.code}" if self.code else str(self.status)
        if self.after == "-":
            return answer
        return f"{answer} → {'absent' if self.after is None else self.after}"


def _call(fn: Callable[[], Any]) -> tuple[int, str | None, Any]:
    try:
        response = fn()
    except ClientError as e:
        meta = e.response.get("ResponseMetadata", {})
        return int(meta.get("HTTPStatusCode", 0)), e.response.get("Error", {}).get("Code"), None
    return int(response["ResponseMetadata"]["HTTPStatusCode"]), None, response


def _body(client: S3Client, bucket: str, key: str) -> str | None:
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "NoSuchKey":
            return None
        raise


def _multipart(
    client: S3Client, bucket: str, key: str, body: bytes, **condition: Any
) -> tuple[int, str | None, Any]:
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    part = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=body)
    parts: CompletedMultipartUploadTypeDef = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
    result = _call(
        lambda: client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, MultipartUpload=parts, **condition
        )
    )
    if result[1] is not None:
        # A refused completion leaves the upload open; abort it so the bucket empties.
        _call(lambda: client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload))
    return result


def probe(client: S3Client, bucket: str) -> list[Outcome]:
    """Every case of the table against fresh keys in *bucket*; the outcomes in order.

    The client must make one attempt per call (a retried conditional request would turn a
    lost response into a 412 and hide what the server did). Raises ClientError if a request
    that is not under test fails.
    """
    rows: list[Outcome] = []
    key = f"cond-{uuid.uuid4().hex[:8]}"

    def record(case: str, result: tuple[int, str | None, Any], k: str = key) -> Any:
        rows.append(Outcome(case, result[0], result[1], _body(client, bucket, k)))
        return result[2]

    def put(body: str, k: str = key, **condition: Any) -> tuple[int, str | None, Any]:
        return _call(lambda: client.put_object(Bucket=bucket, Key=k, Body=body, **condition))

    first = record("PUT If-None-Match:* new key", put("v1", IfNoneMatch="*"))
    etag1: str = first["ETag"] if first else client.head_object(Bucket=bucket, Key=key)["ETag"]
    record("PUT If-None-Match:* existing key", put("v1b", IfNoneMatch="*"))
    second = record("PUT If-Match quoted, matching", put("v2", IfMatch=etag1))
    etag2 = second["ETag"] if second else etag1
    record("PUT If-Match quoted, stale", put("v3", IfMatch=etag1))
    record("PUT If-Match unquoted, matching", put("v4", IfMatch=etag2.strip('"')))
    record("PUT If-Match unquoted, stale", put("v5", IfMatch=etag1.strip('"')))
    missing = f"{key}-missing"
    record("PUT If-Match on missing key", put("x", missing, IfMatch=etag1), missing)

    mkey = f"{key}-mpu"
    record(
        "MPU complete If-None-Match:* new key",
        _multipart(client, bucket, mkey, b"m1", IfNoneMatch="*"),
        mkey,
    )
    metag1 = client.head_object(Bucket=bucket, Key=mkey)["ETag"]
    record(
        "MPU complete If-None-Match:* existing key",
        _multipart(client, bucket, mkey, b"m2", IfNoneMatch="*"),
        mkey,
    )
    record(
        "MPU complete If-Match quoted, matching",
        _multipart(client, bucket, mkey, b"m3", IfMatch=metag1),
        mkey,
    )
    record(
        "MPU complete If-Match quoted, stale",
        _multipart(client, bucket, mkey, b"m4", IfMatch=metag1),
        mkey,
    )
    record(
        "MPU complete If-Match unquoted, stale",
        _multipart(client, bucket, mkey, b"m5", IfMatch=metag1.strip('"')),
        mkey,
    )

    dkey = f"{key}-del"
    client.put_object(Bucket=bucket, Key=dkey, Body=b"d1")
    stale = client.head_object(Bucket=bucket, Key=dkey)["ETag"]
    client.put_object(Bucket=bucket, Key=dkey, Body=b"d2")
    record(
        "DELETE If-Match quoted, stale",
        _call(lambda: client.delete_object(Bucket=bucket, Key=dkey, IfMatch=stale)),
        dkey,
    )
    if _body(client, bucket, dkey) is None:  # the stale condition was ignored
        client.put_object(Bucket=bucket, Key=dkey, Body=b"d2")
    record(
        "DELETE If-Match unquoted, stale",
        _call(lambda: client.delete_object(Bucket=bucket, Key=dkey, IfMatch=stale.strip('"'))),
        dkey,
    )
    if _body(client, bucket, dkey) is None:
        client.put_object(Bucket=bucket, Key=dkey, Body=b"d2")
    current = client.head_object(Bucket=bucket, Key=dkey)["ETag"]
    record(
        "DELETE If-Match quoted, matching",
        _call(lambda: client.delete_object(Bucket=bucket, Key=dkey, IfMatch=current)),
        dkey,
    )

    ukey = f"{key}-open"
    upload = client.create_multipart_upload(Bucket=bucket, Key=ukey)["UploadId"]
    status, code, listed = _call(lambda: client.list_multipart_uploads(Bucket=bucket))
    ids = [u["UploadId"] for u in (listed or {}).get("Uploads", [])]
    found = "lists it" if upload in ids else "does not list it"
    rows.append(Outcome("ListMultipartUploads (1 open upload)", status, code, found))
    status, code, _ = _call(
        lambda: client.abort_multipart_upload(Bucket=bucket, Key=ukey, UploadId=upload)
    )
    listed_after = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    gone = "no longer listed" if upload not in [u["UploadId"] for u in listed_after] else "listed"
    rows.append(Outcome("AbortMultipartUpload", status, code, gone))
    status, code, _ = _call(lambda: client.list_parts(Bucket=bucket, Key=ukey, UploadId=upload))
    rows.append(Outcome("ListParts after abort", status, code, "-"))
    return rows


def main() -> int:
    """Start a Ceph RGW, probe it, print the table (and the time to ready)."""
    from tests.harness.ceph import ceph_rgw

    with tempfile.TemporaryDirectory(prefix="ceph-probe-") as tmp:
        started = time.monotonic()
        with ceph_rgw(Path(tmp)) as server:
            ready = time.monotonic() - started
            client = server.endpoint.client()
            bucket = f"cs-{uuid.uuid4().hex[:16]}"
            client.create_bucket(Bucket=bucket)
            rows = probe(client, bucket)
    print(f"Ceph RGW ready after {ready:.1f} s (build included)\n")
    print("| case | Ceph RGW |\n| --- | --- |")
    for row in rows:
        print(f"| {row.case} | {row.cell()} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
