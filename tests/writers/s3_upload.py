"""Uploads a large object with ``crashsafe.atomic_open``: ``s3_upload.py URL MIB VERSION``.

Writes :func:`content` (MIB mebibytes, made from VERSION) at URL in ``"wb"`` mode, a
chunk at a time, so the object goes as a multipart upload above 64 MiB; the endpoint
comes from the environment. The test kills it with SIGKILL while the fault proxy holds
one of its requests.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator

import crashsafe


def chunks(mib: int, version: int) -> Iterator[bytes]:
    """The object's content, 1 MiB at a time: each MiB made from (version, its index)."""
    for i in range(mib):
        yield hashlib.sha256(f"{version}:{i}".encode()).digest() * (1 << 15)


def content(mib: int, version: int) -> bytes:
    return b"".join(chunks(mib, version))


if __name__ == "__main__":
    url, mib, version = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with crashsafe.atomic_open(url, "wb") as f:
        for chunk in chunks(mib, version):
            f.write(chunk)
