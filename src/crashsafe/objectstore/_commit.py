"""The object-store protocol: how one write lands once, and an update never loses another.

An object store publishes a PUT (or a multipart completion) atomically: a
reader sees the old object or the whole new one. What is left to get right is
the race between writers and the answer that never comes back.

**One write** (:func:`commit`). Every write carries, in its metadata, a fresh
random token (``crashsafe-writer``) and the tokens of the last
:data:`HISTORY` writers of the key, its own last (``crashsafe-history``). A
create-only write is sent with ``If-None-Match: *``; a write meant to replace
one version with ``If-Match`` on that version's ETag; both are refused before
they are sent if the endpoint was probed and does not honour them
(:class:`~crashsafe.errors.StoreCapabilityError`). The request is sent once:
the client never retries it. When its answer is lost, the object is read
back:

* our token is in its history: our write landed; report success;
* the version we expected is still there (same ETag, or no object for a
  create): nothing landed yet; send again, with the same token, so that if the
  first request lands late the two are one write;
* the writer we expected is in the history but not followed by us: a write
  conditioned on that version can no longer land; report what the condition
  says (a conflict, or :class:`FileExistsError`);
* otherwise the evidence was overwritten:
  :class:`~crashsafe.errors.AmbiguousWriteError`, never a guess.

**An update** (:func:`update`) is a compare-and-swap loop: read the object
and its ETag, apply the function, write with ``If-Match`` on that ETag (with
``If-None-Match: *`` when there was no object), and on a refusal read again
after a jittered backoff. Tokens of attempts whose answer was lost are kept
until the history proves each landed (the update is done: its value is
returned, and the function is never applied twice) or can no longer land;
they are settled at once after every refusal or lost answer, before the
backoff, while the version they expected is still in the history.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

from crashsafe.errors import AmbiguousWriteError, StoreCapabilityError, UpdateConflictError
from crashsafe.objectstore._client import Ambiguous, Client, Refused, Stat
from crashsafe.objectstore._probe import Capabilities, capabilities
from crashsafe.objectstore._url import ObjectURL

__all__ = ["ANY", "HISTORY", "Expect", "Version", "commit", "update"]

WRITER: Final = "crashsafe-writer"
HISTORY_KEY: Final = "crashsafe-history"
# 32 tokens of 16 hex digits: 544 bytes of the 2 KB of user metadata S3 allows.
HISTORY: Final = 32
# Lost answers in a row before a write gives up (each is followed by a read-back).
LOST_ANSWERS: Final = 4

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Version:
    """One version of an object, as read: its ETag and its writers' tokens (oldest first)."""

    etag: str
    history: tuple[str, ...]

    @classmethod
    def of(cls, stat: Stat) -> Version:
        return cls(stat.etag, history_of(stat.metadata))


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Final = _Any()
# What a write expects at the key: a Version (replace exactly it), None (no
# object: create-only), or ANY (overwrite whatever is there).
Expect = Version | None | _Any


def history_of(metadata: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(metadata.get(HISTORY_KEY, "").split())


def token() -> str:
    return secrets.token_hex(8)


def metadata(token_: str, expect: Expect) -> dict[str, str]:
    """The metadata a write by *token_* on top of *expect* carries."""
    before = expect.history if isinstance(expect, Version) else ()
    return {WRITER: token_, HISTORY_KEY: " ".join((*before, token_)[-HISTORY:])}


def required(caps: Capabilities, expect: Expect, url: ObjectURL, endpoint: str) -> None:
    """Raise :class:`StoreCapabilityError` if the endpoint cannot hold *expect*'s condition."""
    if expect is None and not caps.create:
        raise StoreCapabilityError(
            f"the endpoint {endpoint} ignores If-None-Match (probed), so a create-only write "
            "cannot be atomic there; nothing was written",
            str(url),
        )
    if isinstance(expect, Version) and not caps.replace:
        raise StoreCapabilityError(
            f"the endpoint {endpoint} ignores If-Match (probed), so a compare-and-swap write "
            "cannot be atomic there; nothing was written",
            str(url),
        )


class _Verdict:
    LANDED: Final = "landed"
    PENDING: Final = "pending"  # not landed, and may still: safe to send again
    DEAD: Final = "dead"  # not landed, and never will
    UNKNOWN: Final = "unknown"


def _verdict(  # noqa: PLR0911 - one return per case of the module's list
    token_: str, expect: Expect, now: Stat | None
) -> str:
    """What the object as it is *now* says of the write by *token_* on top of *expect*."""
    history = history_of(now.metadata) if now is not None else ()
    if token_ in history:
        return _Verdict.LANDED
    if isinstance(expect, _Any):
        # An overwrite may be sent again whatever happened: the object then
        # holds this write, which is what an overwrite asks.
        return _Verdict.PENDING
    if expect is None:
        if now is None:
            return _Verdict.PENDING
        # A created object's history starts with its creator, until it is full.
        return _Verdict.DEAD if 0 < len(history) < HISTORY else _Verdict.UNKNOWN
    if now is not None and now.etag == expect.etag:
        return _Verdict.PENDING
    if expect.history and expect.history[-1] in history:
        return _Verdict.DEAD  # the version we needed has a successor that is not us
    if now is None:
        return _Verdict.DEAD  # deleted: an If-Match write cannot land on nothing
    return _Verdict.UNKNOWN


def commit(
    client: Client,
    url: ObjectURL,
    expect: Expect,
    send: Callable[[Mapping[str, str], bool, str | None], str],
) -> None:
    """Land one write at *url* once, as the module describes.

    *send(metadata, if_none_match, if_match)* makes the request (a PUT or a
    multipart completion) and raises :class:`Refused` or :class:`Ambiguous`.
    Raises :class:`FileExistsError` if a create-only write found an object,
    :class:`Refused` if a replacing write found another version,
    :class:`StoreCapabilityError` before anything is sent if the endpoint
    cannot hold the condition, :class:`AmbiguousWriteError` as described.
    """
    if not isinstance(expect, _Any):
        caps = capabilities(client, url.bucket)
        required(caps, expect, url, client.store.endpoint_url or "(AWS)")
        if_match = caps.etag(expect.etag) if isinstance(expect, Version) else None
    else:
        if_match = None
    mine = token()
    meta = metadata(mine, expect)
    lost = False
    for _ in range(LOST_ANSWERS):
        try:
            send(meta, expect is None, if_match)
            return
        except Refused:
            if lost and _verdict(mine, expect, client.head(url)) == _Verdict.LANDED:
                return  # our earlier request landed late: the refusal was our own
            if expect is None:
                raise FileExistsError(17, "an object already exists", str(url)) from None
            raise
        except Ambiguous:
            lost = True
            verdict = _verdict(mine, expect, client.head(url))
            if verdict == _Verdict.LANDED:
                return
            if verdict == _Verdict.DEAD:
                if expect is None:
                    raise FileExistsError(17, "an object already exists", str(url)) from None
                raise Refused(url) from None
            if verdict == _Verdict.UNKNOWN:
                break
    raise AmbiguousWriteError(
        "the write's answer was lost and the object no longer shows whether it landed",
        str(url),
    )


def update(
    client: Client,
    url: ObjectURL,
    read: Callable[[], tuple[T, Stat | None]],
    apply: Callable[[T], bytes],
    *,
    attempts: int,
    deadline: float | None,
    backoff: Callable[[int], float] | None = None,
) -> bytes:
    """Replace the object at *url* with ``apply(value read)``, losing no concurrent update.

    *read()* returns the current value and its :class:`Stat` (None when there
    is no object). Returns the bytes written. Raises
    :class:`UpdateConflictError` after *attempts* refusals (or at *deadline*,
    a :func:`time.monotonic` time), :class:`AmbiguousWriteError` as
    :func:`commit` does, :class:`StoreCapabilityError` before writing if the
    endpoint cannot hold the conditions, and whatever *read* or *apply* raise.
    """
    caps = capabilities(client, url.bucket)
    wait = backoff or _jitter
    pending: dict[str, tuple[Expect, bytes]] = {}
    for attempt in range(attempts):
        value, stat = read()
        if pending and (landed := _settle(pending, stat, url)) is not None:
            return landed
        expect: Expect = Version.of(stat) if stat is not None else None
        required(caps, expect, url, client.store.endpoint_url or "(AWS)")
        data = apply(value)
        mine = token()
        if_match = caps.etag(expect.etag) if isinstance(expect, Version) else None
        try:
            client.put(
                url,
                data,
                metadata=metadata(mine, expect),
                if_none_match=expect is None,
                if_match=if_match,
            )
            return data
        except Refused:
            pass
        except Ambiguous:
            pending[mine] = (expect, data)
        # Settled now, not after the backoff: the evidence is the expected
        # version's writer in the history, and under contention more writers
        # than the history keeps can land during a backoff.
        if pending and (landed := _settle(pending, client.head(url), url)) is not None:
            return landed
        if deadline is not None and time.monotonic() >= deadline:
            break
        time.sleep(wait(attempt))
    raise UpdateConflictError(str(url), attempt + 1)


def _settle(
    pending: dict[str, tuple[Expect, bytes]], now: Stat | None, url: ObjectURL
) -> bytes | None:
    """What *now* tells of the writes whose answers were lost: the bytes of one
    that landed, or None after forgetting those that never will.

    Raises :class:`AmbiguousWriteError` when the evidence for one is gone.
    """
    for mine, (expected, written) in list(pending.items()):
        verdict = _verdict(mine, expected, now)
        if verdict == _Verdict.LANDED:
            return written
        if verdict == _Verdict.DEAD:
            del pending[mine]
        elif verdict == _Verdict.UNKNOWN:
            raise AmbiguousWriteError(
                "an update's answer was lost and the object no longer shows whether it landed",
                str(url),
            )
    return None


def _jitter(attempt: int) -> float:
    """Full jitter: uniform in [0, min(1 s, 10 ms * 2**attempt)]."""
    return random.uniform(0.0, min(1.0, 0.01 * 2.0**attempt))  # noqa: S311 - not a secret
