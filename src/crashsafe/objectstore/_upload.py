"""Sending a staged object: one PUT, or a multipart upload that is never left behind.

Up to :data:`SINGLE_PUT_MAX` bytes go in one PUT from memory. Above it the
object goes in parts of :data:`PART_SIZE` bytes (memory holds one part), and
is published by ``CompleteMultipartUpload``; S3 shows nothing at the key until
then, and then the whole object. A create-only or compare-and-swap upload
needs the endpoint to honour its condition on the completion (probed); where
it does not, a seekable source of up to :data:`MAX_PUT` bytes is sent as one
conditional PUT streamed from the file instead, and anything larger is
refused with :class:`~crashsafe.errors.StoreCapabilityError` before a byte is
sent.

An upload that fails or is interrupted by an exception is aborted. One whose
process is killed cannot abort itself; so each upload, once started, is
recorded in a small object ``.crashsafe/uploads/<hash of its id>`` at the top
of the bucket (S3 does not list an upload's metadata), and
:func:`crashsafe.sweep` aborts the recorded uploads older than its *min_age*,
and only those. A writer killed between starting an upload and recording it
(one request) leaves an upload that sweep does not recognise: an S3 lifecycle
rule (``AbortIncompleteMultipartUpload``) is the backstop for those.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any, Final

from crashsafe.errors import StoreCapabilityError, VerificationError
from crashsafe.objectstore._client import Client
from crashsafe.objectstore._commit import ANY, Expect, commit
from crashsafe.objectstore._probe import upload_capabilities
from crashsafe.objectstore._url import ObjectURL

__all__ = ["MAX_PUT", "PART_SIZE", "RECORDS", "SINGLE_PUT_MAX", "publish", "record_url"]

SINGLE_PUT_MAX: Final = 64 << 20
PART_SIZE: Final = 16 << 20
MAX_PUT: Final = 5 << 30  # S3's limit for one PUT
_MAX_PARTS: Final = 10_000
RECORDS: Final = ".crashsafe/uploads/"

Report = Callable[[int], object]


def record_url(bucket: str, upload_id: str) -> ObjectURL:
    """Where the record of the upload *upload_id* lives."""
    return ObjectURL(bucket, RECORDS + hashlib.sha256(upload_id.encode()).hexdigest()[:32])


def publish(
    client: Client,
    url: ObjectURL,
    source: IO[bytes],
    size: int,
    expect: Expect,
    *,
    validate: Callable[[IO[bytes]], None] | None = None,
    before_commit: Callable[[], None] | None = None,
    hasher: hashlib._Hash | None = None,
    report: Report | None = None,
) -> str:
    """Send *size* bytes read from *source* (from its position) as the object at *url*.

    *validate(f)* checks the content before anything is published: for a
    small object it reads the bytes about to be sent; for a large one the
    caller validates *source* itself first and *before_commit()* then checks
    the source did not change. *hasher* sees every byte sent, *report(done)*
    the count so far. Returns how the object went: ``"put"`` or ``"multipart"``.

    Raises :class:`~crashsafe.errors.VerificationError` if *source* holds
    fewer bytes than *size*, and the errors of
    :func:`crashsafe.objectstore._commit.commit`.
    """
    sending = _Sending(client, url, source, size, expect, before_commit, hasher, report)
    if size <= SINGLE_PUT_MAX:
        return sending.from_memory(validate)
    if expect is not ANY:
        caps = upload_capabilities(client, url.bucket)
        if not (caps.create_upload if expect is None else caps.replace_upload):
            return sending.streamed()
    return sending.multipart()


@dataclass
class _Sending:
    client: Client
    url: ObjectURL
    source: IO[bytes]
    size: int
    expect: Expect
    before_commit: Callable[[], None] | None
    hasher: hashlib._Hash | None
    report: Report | None

    def from_memory(self, validate: Callable[[IO[bytes]], None] | None) -> str:
        data = _read_exactly(self.source, self.size, self.url)
        if self.hasher is not None:
            self.hasher.update(data)
        if self.report is not None:
            self.report(self.size)
        if validate is not None:
            validate(io.BytesIO(data))  # exactly the bytes about to be sent
        if self.before_commit is not None:
            self.before_commit()
        client, url = self.client, self.url
        commit(
            client,
            url,
            self.expect,
            lambda meta, create, match: client.put(
                url, data, metadata=meta, if_none_match=create, if_match=match
            ),
        )
        return "put"

    def streamed(self) -> str:
        """One conditional PUT streamed from a file: for an endpoint that ignores
        the condition on multipart completion."""
        source, size, url = self.source, self.size, self.url
        if size > MAX_PUT or not source.seekable():
            condition = "If-None-Match" if self.expect is None else "If-Match"
            raise StoreCapabilityError(
                f"the endpoint {self.client.store.endpoint_url or '(AWS)'} ignores {condition} "
                f"on multipart completion (probed), and {size} bytes cannot go in one "
                f"conditional PUT (at most {MAX_PUT} bytes, from a file); nothing was written",
                str(url),
            )
        start = source.tell()
        # The PUT must not begin before the content is known good.
        _read_through(source, size, url, self.hasher)
        if self.before_commit is not None:
            self.before_commit()

        def send(meta: Mapping[str, str], create: bool, match: str | None) -> str:
            source.seek(start)
            body: Any = _Window(source, size)  # botocore reads any file-like body
            return self.client.put(url, body, metadata=meta, if_none_match=create, if_match=match)

        commit(self.client, url, self.expect, send)
        if self.report is not None:
            self.report(size)
        return "put"

    def multipart(self) -> str:
        client, url, size = self.client, self.url, self.size
        part_size = max(PART_SIZE, -(-size // _MAX_PARTS))
        upload: list[str] = []  # its id, once started
        parts: list[str] = []

        def send(meta: Mapping[str, str], create: bool, match: str | None) -> str:
            if not upload:  # the first attempt sends the parts; later ones only complete
                upload.append(client.start_upload(url, meta))
                _record(client, url, upload[0])
                done = 0
                ahead = _Readahead(self.source)
                while done < size:
                    chunk = _read_exactly(self.source, min(part_size, size - done), url)
                    ahead.next(part_size)  # the disk reads the next part while this one goes
                    if self.hasher is not None:
                        self.hasher.update(chunk)
                    parts.append(client.upload_part(url, upload[0], len(parts) + 1, chunk))
                    done += len(chunk)
                    del chunk  # or two parts are held while the next is read
                    if self.report is not None:
                        self.report(done)
                if self.before_commit is not None:
                    self.before_commit()
            return client.complete_upload(
                url, upload[0], parts, if_none_match=create, if_match=match
            )

        try:
            commit(client, url, self.expect, send)
        except BaseException:
            if upload:
                with contextlib.suppress(Exception):
                    client.abort_upload(url, upload[0])
                _forget(client, url, upload[0])
            raise
        _forget(client, url, upload[0])
        return "multipart"


class _Readahead:
    """Asks the kernel to read a file source's next part while the current one is sent
    (``POSIX_FADV_WILLNEED``); nothing for a source without a descriptor."""

    def __init__(self, source: IO[bytes]) -> None:
        try:
            self._fd: int | None = source.fileno()
        except (OSError, ValueError, AttributeError):
            self._fd = None
        self._source = source

    def next(self, length: int) -> None:
        if self._fd is None or sys.platform in ("win32", "darwin"):  # no posix_fadvise
            return
        try:
            os.posix_fadvise(self._fd, self._source.tell(), length, os.POSIX_FADV_WILLNEED)
        except OSError:
            self._fd = None  # a pipe or a file system without it: no hint, no harm


def _record(client: Client, url: ObjectURL, upload_id: str) -> None:
    body = json.dumps(
        {
            "key": url.key,
            "upload_id": upload_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
        }
    ).encode()
    client.put(record_url(url.bucket, upload_id), body, metadata={})


def _forget(client: Client, url: ObjectURL, upload_id: str) -> None:
    with contextlib.suppress(OSError):  # a stale record only costs sweep a look
        client.delete(record_url(url.bucket, upload_id))


def _read_exactly(source: IO[bytes], n: int, url: ObjectURL) -> bytes:
    chunks, left = [], n
    while left:
        chunk = source.read(left)
        if not chunk:
            raise VerificationError(
                f"the source ended {left} bytes short of the {n} expected", str(url)
            )
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_through(
    source: IO[bytes], size: int, url: ObjectURL, hasher: hashlib._Hash | None
) -> None:
    start, left = source.tell(), size
    while left:
        chunk = source.read(min(1 << 20, left))
        if not chunk:
            raise VerificationError(f"the source ended {left} bytes short of {size}", str(url))
        if hasher is not None:
            hasher.update(chunk)
        left -= len(chunk)
    source.seek(start)


class _Window:
    """The next *size* bytes of a file, as a body botocore can read (and rewind)."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self._f, self._start, self._left, self._size = f, f.tell(), size, size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._size - self._left + offset
        else:
            pos = self._size + offset
        self._f.seek(self._start + pos)
        self._left = self._size - pos
        return pos

    def tell(self) -> int:
        return self._size - self._left

    def __len__(self) -> int:
        return self._size
