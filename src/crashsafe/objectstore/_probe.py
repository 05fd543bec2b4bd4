"""What an endpoint honours, found by asking it once.

S3-compatible servers differ in the conditions they honour (seen here: moto
ignores ``If-Match`` on multipart completion; Ceph RGW ignores every
condition on completion and wants ``If-Match`` without the ETag's quotes;
``rclone serve s3`` ignores all of them). Nothing in a server's answers says
so: a condition that is ignored looks like one that held. So before the first
write that needs a condition, crashsafe writes a small object of its own
under ``.crashsafe/probe/`` in the bucket, tries each condition against it
where it must fail, and removes it. The answers are kept for the life of the
process, per endpoint and bucket. The multipart checks cost an upload each
and run only when a large conditional write first needs them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from crashsafe.errors import ObjectStoreError
from crashsafe.objectstore._client import Ambiguous, Client, Refused, S3Store
from crashsafe.objectstore._url import ObjectURL

__all__ = ["Capabilities", "capabilities", "upload_capabilities"]

PROBE_PREFIX: Final = ".crashsafe/probe/"
PROBE_TRIES: Final = 3
_WRONG_ETAG: Final = '"00000000000000000000000000000000"'


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The conditions an endpoint was seen to honour.

    *create*: ``If-None-Match: *`` on PUT. *replace*: ``If-Match`` on PUT.
    *quoted*: ``If-Match`` takes the ETag as returned, quotes included (else
    bare). *create_upload* / *replace_upload*: the same conditions on
    ``CompleteMultipartUpload``; None until a large write needs them.
    """

    create: bool
    replace: bool
    quoted: bool
    create_upload: bool | None = None
    replace_upload: bool | None = None

    def etag(self, etag: str) -> str:
        """*etag* in the form this endpoint compares in ``If-Match``."""
        return etag if self.quoted else etag.strip('"')


_lock = threading.Lock()
_known: dict[tuple[S3Store, str], Capabilities] = {}


def _new_lock() -> None:
    # Another thread of the parent may have been probing at the fork.
    global _lock  # noqa: PLW0603 - replaced, not shared, in the child
    _lock = threading.Lock()


if sys.platform != "win32":  # no fork there
    os.register_at_fork(after_in_child=_new_lock)


def capabilities(client: Client, bucket: str) -> Capabilities:
    """The endpoint's :class:`Capabilities` for *bucket*, probed on first use."""
    key = (client.store, bucket)
    found = _known.get(key)
    if found is None:
        with _lock:
            found = _known.get(key)
            if found is None:
                found = _known[key] = _afresh(
                    bucket, "conditional writes", lambda url: _probe(client, url)
                )
    return found


def upload_capabilities(client: Client, bucket: str) -> Capabilities:
    """As :func:`capabilities`, with the multipart-completion answers filled in."""
    caps = capabilities(client, bucket)
    if caps.create_upload is None:
        with _lock:
            first = caps
            caps = _known[(client.store, bucket)] = _afresh(
                bucket, "conditional uploads", lambda url: _probe_uploads(client, url, first)
            )
    return caps


def _afresh(bucket: str, what: str, probe: Callable[[ObjectURL], Capabilities]) -> Capabilities:
    """Run *probe* on an object of its own, again on a new one after a lost answer
    (which could hide whether a condition held), up to :data:`PROBE_TRIES` times."""
    for _ in range(PROBE_TRIES):
        url = ObjectURL(bucket, PROBE_PREFIX + secrets.token_hex(8))
        try:
            return probe(url)
        except Ambiguous as e:
            lost = e
    raise ObjectStoreError(
        f"could not probe the endpoint's {what}: an answer was lost {PROBE_TRIES} times",
        str(url),
    ) from lost


def _probe(client: Client, url: ObjectURL) -> Capabilities:
    try:
        etag = client.put(url, b"probe", metadata={})
        create = _refused(lambda: client.put(url, b"x", metadata={}, if_none_match=True))
        replace = _refused(lambda: client.put(url, b"x", metadata={}, if_match=_WRONG_ETAG))
        quoted = False
        if replace:
            # The right ETag must then pass, quoted as returned or bare (Ceph);
            # a form the server does not compare would refuse everything.
            current = client.head(url)
            etag = current.etag if current else etag
            quoted = not _refused(lambda: client.put(url, b"q", metadata={}, if_match=etag))
            if not quoted:
                bare, wrong = etag.strip('"'), _WRONG_ETAG.strip('"')
                replace = _refused(
                    lambda: client.put(url, b"x", metadata={}, if_match=wrong)
                ) and not _refused(lambda: client.put(url, b"b", metadata={}, if_match=bare))
    finally:
        _quietly_delete(client, url)
    return Capabilities(create=create, replace=replace, quoted=quoted)


def _probe_uploads(client: Client, url: ObjectURL, caps: Capabilities) -> Capabilities:
    try:
        client.put(url, b"probe", metadata={})
        create = _completion_refused(client, url, if_none_match=True, if_match=None)
        replaces = _completion_refused(
            client, url, if_none_match=False, if_match=caps.etag(_WRONG_ETAG)
        )
    finally:
        _quietly_delete(client, url)
    return dataclasses.replace(caps, create_upload=create, replace_upload=replaces)


def _completion_refused(
    client: Client, url: ObjectURL, *, if_none_match: bool, if_match: str | None
) -> bool:
    upload = client.start_upload(url, {})
    try:
        part = client.upload_part(url, upload, 1, b"part")
        try:
            client.complete_upload(
                url, upload, [part], if_none_match=if_none_match, if_match=if_match
            )
        except Refused:
            return True
        return False
    finally:
        client.abort_upload(url, upload)


def _refused(request: Callable[[], object]) -> bool:
    try:
        request()
    except Refused:
        return True
    return False


def _quietly_delete(client: Client, url: ObjectURL) -> None:
    with contextlib.suppress(OSError):  # one left behind is harmless; sweep() removes it
        client.delete(url)
