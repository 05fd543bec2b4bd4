""":func:`crashsafe.sweep` for a URL prefix: what killed writers left in a bucket.

Removed, when older than *min_age* and under the prefix:

* multipart uploads that crashsafe started and recorded (see
  :mod:`~crashsafe.objectstore._upload`), aborted, with their records; an
  upload without a crashsafe record is never touched, whoever started it;
* records whose upload is already gone;
* probe objects (``.crashsafe/probe/``) a killed probe left;
* the objects of transactions that no manifest references (see
  :mod:`~crashsafe.objectstore._manifest`).

No object a reader could reach through crashsafe is removed. Across machines
there is no way to ask whether a writer is still alive, so age is the only
proof: *min_age* must be longer than any upload or transaction takes.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Final

from crashsafe.objectstore._client import Client, S3Store, client_for
from crashsafe.objectstore._probe import PROBE_PREFIX
from crashsafe.objectstore._upload import RECORDS, record_url
from crashsafe.objectstore._url import ObjectURL, parse

__all__ = ["MIN_AGE", "sweep"]

# A day: uploads of large objects over slow links take hours, and aborting a
# live one makes its writer fail. S3 lifecycle rules count in days too.
MIN_AGE: Final = 86_400.0


def sweep(
    url: str, *, min_age: float, grace: float | None, dry_run: bool, store: S3Store | None
) -> list[str]:
    """Remove what the module lists under the prefix *url*; returns what was (or would be).

    *grace*: how long a generation replaced by a transaction's commit stays
    readable (None: :data:`~crashsafe.objectstore._manifest.GRACE`).
    """
    from crashsafe.objectstore._manifest import GRACE, sweep_transactions, transaction_prefixes

    prefix = parse(url, prefix=True)
    client = client_for(store, url)
    now = datetime.now(UTC)
    removed: list[str] = []
    recorded = _records(client, prefix.bucket)
    live: set[str] = set()
    for upload in client.uploads(prefix):
        live.add(upload.upload_id)
        if upload.upload_id not in recorded:
            continue
        record, written = recorded[upload.upload_id]
        # The younger of the two clocks: moto reports every upload as initiated
        # in 2010, and the record is written right after the upload starts.
        if min(_age(upload.initiated, now), _age(written, now)) < min_age:
            continue
        target = ObjectURL(prefix.bucket, upload.key)
        removed.append(f"{target} (upload {upload.upload_id})")
        if not dry_run:
            client.abort_upload(target, upload.upload_id)
            _delete(client, record)
    for upload_id, (record, written) in recorded.items():
        if upload_id not in live and _age(written, now) >= min_age:
            removed.append(str(record))
            if not dry_run:
                _delete(client, record)
    if PROBE_PREFIX.startswith(prefix.key) or prefix.key.startswith(PROBE_PREFIX):
        for key, stat in client.listing(ObjectURL(prefix.bucket, PROBE_PREFIX)):
            if key.startswith(prefix.key) and _age(stat.last_modified, now) >= min_age:
                removed.append(str(ObjectURL(prefix.bucket, key)))
                if not dry_run:
                    _delete(client, ObjectURL(prefix.bucket, key))
    for place in transaction_prefixes(client, prefix):
        removed += sweep_transactions(
            client,
            place,
            min_age=min_age,
            grace=GRACE if grace is None else grace,
            dry_run=dry_run,
        )
    return removed


def _records(client: Client, bucket: str) -> dict[str, tuple[ObjectURL, datetime | None]]:
    """Upload id -> its record and when that was written, for every record in *bucket*."""
    found: dict[str, tuple[ObjectURL, datetime | None]] = {}
    for key, stat in client.listing(ObjectURL(bucket, RECORDS)):
        where = ObjectURL(bucket, key)
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            upload_id = json.loads(client.get(where).data)["upload_id"]
            if isinstance(upload_id, str) and record_url(bucket, upload_id) == where:
                found[upload_id] = (where, stat.last_modified)
    return found


def _age(when: datetime | None, now: datetime) -> float:
    return (now - when).total_seconds() if when is not None else 0.0


def _delete(client: Client, url: ObjectURL) -> None:
    with contextlib.suppress(FileNotFoundError):
        client.delete(url)
