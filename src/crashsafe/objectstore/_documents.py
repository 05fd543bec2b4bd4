"""JSON documents and read-modify-write updates of objects.

:func:`update` is the compare-and-swap loop of
:func:`crashsafe.objectstore._commit.update`: no lock exists across
machines, so instead of holding one from the read to the write, each write
says which version it replaces and the store refuses it if another writer
got there first; the loser reads again and retries. N processes that each add
one to a counter end at exactly N. *fn* may therefore run more than once per
call, on newer content each time: it must not have side effects that cannot
be repeated. A lost answer is resolved as :mod:`~crashsafe.objectstore._commit`
describes, so an update is never applied twice.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any, Final

from crashsafe._checks import BytesLike, Validate, validators_of
from crashsafe.documents import dump_document, parse_document
from crashsafe.objectstore import _commit
from crashsafe.objectstore._client import S3Store, Stat
from crashsafe.objectstore._objects import target, write
from crashsafe.objectstore._url import ObjectURL

__all__ = ["ATTEMPTS", "read_json", "update", "update_json", "write_json"]

# Refusals (another writer first) before UpdateConflictError; with the
# jittered backoff capped at 1 s, about a minute of losing every race.
ATTEMPTS: Final = 64


def read_json(url: str, default: object, missing: object, store: S3Store | None) -> Any:
    """:func:`crashsafe.read_json` for a URL; *missing* is the "no default" marker."""
    client, parsed = target(url, store)
    try:
        fetched = client.get(parsed)
    except FileNotFoundError:
        if default is missing:
            raise
        return default
    return parse_document(fetched.data, url)


def write_json(url: str, obj: object, indent: int | str | None, store: S3Store | None) -> None:
    """:func:`crashsafe.write_json` for a URL: one overwrite."""
    write(url, dump_document(obj, indent), overwrite=True, validate=None, store=store)


def update(
    url: str,
    fn: Callable[[bytes], BytesLike],
    *,
    default: bytes,
    timeout: float | None,
    validate: Validate,
    store: S3Store | None,
) -> bytes:
    """:func:`crashsafe.update` for a URL."""
    client, parsed = target(url, store)
    checks = validators_of(validate) if validate is not None else ()

    def read() -> tuple[bytes, Stat | None]:
        try:
            fetched = client.get(parsed)
        except FileNotFoundError:
            return bytes(default), None
        return fetched.data, fetched.stat

    def apply(old: bytes) -> bytes:
        new = fn(old)
        if not isinstance(new, bytes | bytearray | memoryview):
            raise TypeError(
                f"update: fn must return bytes, not {type(new).__name__}; nothing was written"
            )
        data = bytes(new)
        if checks:
            import io

            for check in checks:
                check(io.BytesIO(data))
        return data

    return _loop(client, parsed, read, apply, timeout)


def update_json(
    url: str,
    fn: Callable[[Any], Any],
    *,
    default: object,
    missing: object,
    indent: int | str | None,
    timeout: float | None,
    store: S3Store | None,
) -> Any:
    """:func:`crashsafe.update_json` for a URL; returns the new document."""
    client, parsed = target(url, store)
    results: dict[bytes, Any] = {}

    def read() -> tuple[Any, Stat | None]:
        try:
            fetched = client.get(parsed)
        except FileNotFoundError:
            if default is missing:
                raise
            # fn may change what it gets in place; the caller's default must not change.
            return copy.deepcopy(default), None
        return parse_document(fetched.data, url), fetched.stat

    def apply(old: Any) -> bytes:
        new = fn(old)
        if new is None:
            raise TypeError(
                f"update_json: fn returned None for {url!r}; return the new document (the old "
                "one changed in place is fine); nothing was written"
            )
        data = dump_document(new, indent)
        results[data] = new
        return data

    written = _loop(client, parsed, read, apply, timeout)
    return results[written]


def _loop(
    client: Any,
    url: ObjectURL,
    read: Callable[[], tuple[Any, Stat | None]],
    apply: Callable[[Any], bytes],
    timeout: float | None,
) -> bytes:
    deadline = None if timeout is None else time.monotonic() + timeout
    return _commit.update(client, url, read, apply, attempts=ATTEMPTS, deadline=deadline)
