"""The one door to an S3 endpoint: configuration, the boto3 clients, and errors.

Every request crashsafe makes to an object store goes through :class:`Client`,
which answers in three ways a caller can act on:

* the request succeeded;
* it was *refused* by a precondition (HTTP 412, or 409 for a conditional write
  that raced another): :class:`Refused`, and nothing was written;
* it was *ambiguous*: sent, but its answer was lost (a reset connection, a
  timeout, a 5xx); the write may or may not have landed: :class:`Ambiguous`.

Everything else is raised as the builtin :class:`OSError` a caller would catch
(:class:`FileNotFoundError`, :class:`PermissionError`) or as
:class:`~crashsafe.errors.ObjectStoreError`, with the object's URL as
``filename``.

Mutating requests are sent exactly once. A client that retried a conditional
write behind crashsafe's back would turn a lost answer into a false conflict
(its retry meets its own landed write and gets 412): the "ghost conflict".
Reads are idempotent and are retried by botocore.

Clients are cached per endpoint and per process: a child created by
:func:`os.fork` builds its own on first use and never touches the connection
pool it inherited, whose sockets its parent still uses.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, Final

from crashsafe.errors import ObjectStoreError
from crashsafe.objectstore._url import ObjectURL

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

__all__ = [
    "Ambiguous",
    "Client",
    "Fetched",
    "Refused",
    "S3Store",
    "Stat",
    "Upload",
    "client_for",
]

# Read at each call, so a program can point at another endpoint without a restart.
ENV: Final = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ALLOW_HTTP",
)
_TRUE: Final = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class S3Store:
    """Where and how to reach an S3-compatible store; pass it as ``store=``.

    Every field left ``None`` is read from the environment at each call
    (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ALLOW_HTTP``), and then
    boto3's own defaults apply (its configuration files, instance
    credentials); without ``store=`` every field comes from there. A plain
    ``http://`` endpoint sends data and signatures unencrypted and is refused
    unless *allow_http* (or ``AWS_ALLOW_HTTP=true``) says so.
    *addressing_style*: ``"path"`` (the default with an explicit endpoint,
    which rarely has a DNS name per bucket) or ``"virtual"`` (AWS's).
    """

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str | None = None
    allow_http: bool | None = None
    addressing_style: str | None = None

    def resolved(self) -> S3Store:
        """This store with every unset field taken from the environment now."""
        env = os.environ
        url = self.endpoint_url or env.get("AWS_ENDPOINT_URL") or None
        allow = self.allow_http
        if allow is None:
            allow = env.get("AWS_ALLOW_HTTP", "").strip().lower() in _TRUE
        return S3Store(
            endpoint_url=url,
            access_key_id=self.access_key_id or env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=self.secret_access_key or env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=self.session_token or env.get("AWS_SESSION_TOKEN") or None,
            region=self.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            allow_http=allow,
            addressing_style=self.addressing_style or ("path" if url else "virtual"),
        )


class Refused(Exception):
    """A precondition refused the request; nothing was written."""


class Ambiguous(Exception):
    """A mutating request was sent, and whether it took effect is unknown."""


@dataclass(frozen=True, slots=True)
class Stat:
    """What a HEAD (or the head of a GET) tells about one object."""

    etag: str
    size: int
    metadata: Mapping[str, str]
    last_modified: datetime | None = None


@dataclass(frozen=True, slots=True)
class Fetched:
    """A whole object and its :class:`Stat`."""

    data: bytes
    stat: Stat


@dataclass(frozen=True, slots=True)
class Upload:
    """A multipart upload in progress, as ``ListMultipartUploads`` reports it."""

    key: str
    upload_id: str
    initiated: datetime


# ---------------------------------------------------------------------------- clients

_lock = threading.Lock()
_clients: dict[S3Store, Client] = {}


def _forget_clients() -> None:
    # The child must not reuse the parent's pooled sockets (its parent still
    # reads from them); it builds fresh clients on first use. The lock is new
    # too: another thread of the parent may have held it at the fork.
    global _lock  # noqa: PLW0603 - replaced, not shared, in the child
    _lock = threading.Lock()
    _clients.clear()


if sys.platform != "win32":  # no fork there
    os.register_at_fork(after_in_child=_forget_clients)


def client_for(store: S3Store | None, url: str) -> Client:
    """The cached :class:`Client` for *store* (or the environment's), as configured now.

    Raises :class:`ValueError`, naming *url*, for a plain-HTTP endpoint that was
    not allowed, and :class:`ModuleNotFoundError` with the install command when
    boto3 is missing.
    """
    resolved = (store or S3Store()).resolved()
    endpoint = resolved.endpoint_url
    if endpoint and endpoint.startswith("http://") and not resolved.allow_http:
        raise ValueError(
            f"{url!r}: the endpoint {endpoint!r} is plain HTTP, which sends data unencrypted; "
            "set AWS_ALLOW_HTTP=true (or S3Store(allow_http=True)) to allow it"
        )
    client = _clients.get(resolved)
    if client is None:
        with _lock:
            client = _clients.get(resolved)
            if client is None:
                client = _clients[resolved] = Client(resolved)
    return client


def _boto3_client(store: S3Store, attempts: int) -> S3Client:
    try:
        import boto3.session
        from botocore.config import Config
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "crashsafe needs boto3 for s3:// URLs: pip install 'crashsafe[s3]'", name=e.name
        ) from e
    config = Config(
        retries={"total_max_attempts": attempts, "mode": "standard"},
        s3={"addressing_style": "path" if store.addressing_style == "path" else "virtual"},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=16,
    )
    # A session of its own: boto3's default session is not safe to share
    # between threads while clients are created.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=store.endpoint_url,
        aws_access_key_id=store.access_key_id,
        aws_secret_access_key=store.secret_access_key,
        aws_session_token=store.session_token,
        region_name=store.region,
        config=config,
    )


class Client:
    """Requests to one endpoint, each answered as success, :class:`Refused`,
    :class:`Ambiguous` or an :class:`OSError` naming the object's URL."""

    def __init__(self, store: S3Store) -> None:
        self.store = store  # resolved: every field as used
        self._reads = _boto3_client(store, attempts=5)
        self._writes = _boto3_client(store, attempts=1)

    # ------------------------------------------------------------------ reads

    def head(self, url: ObjectURL) -> Stat | None:
        """The object's :class:`Stat`, or None if there is no object at *url*."""
        try:
            r = self._reads.head_object(Bucket=url.bucket, Key=url.key)
        except Exception as e:
            if _status(e) == 404 and _code(e) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _os_error(e, url) from e
        return Stat(r["ETag"], r["ContentLength"], r.get("Metadata", {}), r.get("LastModified"))

    def get(self, url: ObjectURL) -> Fetched:
        """The whole object. Raises :class:`FileNotFoundError` if there is none."""
        last: Exception | None = None
        for _ in range(3):  # the body is read after botocore's retries are over
            try:
                r = self._reads.get_object(Bucket=url.bucket, Key=url.key)
                data = r["Body"].read()
            except Exception as e:
                if _is_transport(e):
                    last = e
                    continue
                raise _os_error(e, url) from e
            meta = r.get("Metadata", {})
            return Fetched(data, Stat(r["ETag"], len(data), meta, r.get("LastModified")))
        assert last is not None
        raise _os_error(last, url) from last

    def open(self, url: ObjectURL, etag: str | None = None) -> tuple[IO[bytes], Stat]:
        """A stream of the object's bytes, and its :class:`Stat` (the whole object's size).

        With *etag*, the server refuses (:class:`Refused`) if the object changed."""
        extra: dict[str, Any] = {"IfMatch": etag} if etag else {}
        try:
            r = self._reads.get_object(Bucket=url.bucket, Key=url.key, **extra)
        except Exception as e:
            if _status(e) == 412:
                raise Refused(url) from e
            raise _os_error(e, url) from e
        stat = Stat(r["ETag"], r["ContentLength"], r.get("Metadata", {}), r.get("LastModified"))
        return r["Body"], stat  # type: ignore[return-value]

    def listing(self, prefix: ObjectURL) -> Iterator[tuple[str, Stat]]:
        """Every object whose key starts with ``prefix.key``: (key, stat without metadata)."""
        pages = self._reads.get_paginator("list_objects_v2")
        try:
            for page in pages.paginate(Bucket=prefix.bucket, Prefix=prefix.key):
                for o in page.get("Contents", []):
                    yield o["Key"], Stat(o["ETag"], o["Size"], {}, o["LastModified"])
        except Exception as e:
            raise _os_error(e, prefix) from e

    def uploads(self, prefix: ObjectURL) -> Iterator[Upload]:
        """The multipart uploads in progress under ``prefix.key``."""
        pages = self._reads.get_paginator("list_multipart_uploads")
        try:
            for page in pages.paginate(Bucket=prefix.bucket, Prefix=prefix.key):
                for u in page.get("Uploads", []):
                    yield Upload(u["Key"], u["UploadId"], u["Initiated"])
        except Exception as e:
            raise _os_error(e, prefix) from e

    # ------------------------------------------------------------------ writes

    def put(
        self,
        url: ObjectURL,
        body: bytes | IO[bytes],
        *,
        metadata: Mapping[str, str],
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Write the whole object in one request; returns its ETag.

        *if_none_match*: only if no object is there. *if_match*: only if the
        object's ETag is this (sent exactly as given). Raises :class:`Refused`
        or :class:`Ambiguous` (see the module), or an :class:`OSError`.
        """
        extra: dict[str, Any] = {}
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = if_match
        try:
            r = self._writes.put_object(
                Bucket=url.bucket, Key=url.key, Body=body, Metadata=dict(metadata), **extra
            )
        except Exception as e:
            raise _write_error(e, url, conditional=bool(extra)) from e
        return r["ETag"]

    def delete(self, url: ObjectURL) -> None:
        """Remove the object (no error if it is already gone). Idempotent, so retried."""
        try:
            self._reads.delete_object(Bucket=url.bucket, Key=url.key)
        except Exception as e:
            raise _os_error(e, url) from e

    def start_upload(self, url: ObjectURL, metadata: Mapping[str, str]) -> str:
        """Begin a multipart upload to *url*; returns its upload id."""
        try:
            r = self._reads.create_multipart_upload(
                Bucket=url.bucket, Key=url.key, Metadata=dict(metadata)
            )
        except Exception as e:
            raise _os_error(e, url) from e
        return r["UploadId"]

    def upload_part(self, url: ObjectURL, upload_id: str, number: int, body: bytes) -> str:
        """Send part *number* (from 1); returns its ETag. Idempotent, so retried."""
        try:
            r = self._reads.upload_part(
                Bucket=url.bucket, Key=url.key, UploadId=upload_id, PartNumber=number, Body=body
            )
        except Exception as e:
            raise _os_error(e, url) from e
        return r["ETag"]

    def complete_upload(
        self,
        url: ObjectURL,
        upload_id: str,
        parts: Sequence[str],
        *,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Publish the upload from its parts' ETags (in order); returns the object's ETag.

        Conditions and answers as :meth:`put`.
        """
        extra: dict[str, Any] = {}
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = if_match
        numbered = [{"ETag": etag, "PartNumber": n} for n, etag in enumerate(parts, 1)]
        try:
            r = self._writes.complete_multipart_upload(
                Bucket=url.bucket,
                Key=url.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": numbered},  # type: ignore[typeddict-item]
                **extra,
            )
        except Exception as e:
            raise _write_error(e, url, conditional=bool(extra)) from e
        return r["ETag"]

    def abort_upload(self, url: ObjectURL, upload_id: str) -> None:
        """Abort the upload and free its parts (no error if it is already gone)."""
        try:
            self._reads.abort_multipart_upload(Bucket=url.bucket, Key=url.key, UploadId=upload_id)
        except Exception as e:
            if _code(e) == "NoSuchUpload":
                return
            raise _os_error(e, url) from e


# ---------------------------------------------------------------------------- errors


def _status(e: Exception) -> int | None:
    response = getattr(e, "response", None)
    if not isinstance(response, dict):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


def _code(e: Exception) -> str:
    response = getattr(e, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def _is_transport(e: Exception) -> bool:
    """A failure of the connection rather than an answer from the server."""
    from botocore.exceptions import BotoCoreError

    return isinstance(e, BotoCoreError | ConnectionError | TimeoutError)


def _never_sent(e: Exception) -> bool:
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

    return isinstance(e, EndpointConnectionError | ConnectTimeoutError)


def _write_error(e: Exception, url: ObjectURL, *, conditional: bool) -> Exception:
    status = _status(e)
    if conditional and status in (409, 412):
        return Refused(url)
    if conditional and status == 404 and _code(e) == "NoSuchKey":
        # If-Match on a missing key: AWS and moto answer 404, others 412.
        return Refused(url)
    if _code(e) == "NoSuchUpload":
        # A completion sent again after a lost answer: the first one may have
        # landed (or someone aborted the upload); only a read-back can tell.
        return Ambiguous(url)
    if (status is not None and status >= 500) or (
        status is None and _is_transport(e) and not _never_sent(e)
    ):
        return Ambiguous(url)
    return _os_error(e, url)


def _os_error(e: Exception, url: ObjectURL) -> OSError:
    """The builtin error a caller would catch for *e*, naming *url*."""
    if isinstance(e, OSError):
        return e
    name = str(url)
    status, code = _status(e), _code(e)
    if code == "NoSuchBucket":
        return FileNotFoundError(errno.ENOENT, f"no bucket {url.bucket!r}", name)
    if status == 404:
        return FileNotFoundError(errno.ENOENT, "no such object", name)
    if status == 403:
        return PermissionError(errno.EACCES, f"access denied ({code or 403})", name)
    if status is not None:
        return ObjectStoreError(f"{code or status}: {_message(e)}", name, status=status)
    return ObjectStoreError(f"{type(e).__name__}: {e}", name)


def _message(e: Exception) -> str:
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Message", "")) or str(e)
    return str(e)
