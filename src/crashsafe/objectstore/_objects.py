"""Whole objects: :func:`write`, :func:`open_for_write`, :func:`copy`, and the option rules.

What each public call promises on a URL (the README's object-storage column):
a reader sees the old object or the whole new one, never a part; an
exception or a killed writer leaves the old one (a killed writer's last
request may still land, whole); a create-only write raises
:class:`FileExistsError` if the key exists, even against racing machines;
validators run before anything is published. A write acknowledged by the
store is durable by the store's own guarantee, so ``durability`` can only be
``"durable"``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any, Final

from crashsafe._checks import Durability, Validate, validators_of
from crashsafe.errors import ObjectStoreError, VerificationError
from crashsafe.objectstore._client import Client, S3Store, client_for
from crashsafe.objectstore._commit import ANY, Expect
from crashsafe.objectstore._upload import publish
from crashsafe.objectstore._url import ObjectURL, is_url, parse

__all__ = ["check_options", "copy", "open_for_write", "target", "write"]

_TEXT_MODES: Final = ("w", "wt", "x", "xt")
_BINARY_MODES: Final = ("wb", "xb")


def target(url: str, store: S3Store | None) -> tuple[Client, ObjectURL]:
    """The client and parsed URL for one object; raises :class:`ValueError` naming *url*."""
    parsed = parse(url)
    return client_for(store, url), parsed


def check_options(
    url: str,
    *,
    perm: int | None = None,
    durability: Durability = "durable",
    follow_symlinks: bool = True,
) -> None:
    """Refuse, naming *url*, the local options that mean nothing on a store."""
    if perm is not None:
        raise ValueError(f"{url!r}: perm has no meaning for an object; leave it out")
    if durability != "durable":
        raise ValueError(
            f"{url!r}: durability={durability!r} has no meaning for an object: a write the "
            "store acknowledged is durable by its own guarantee; leave it out"
        )
    if follow_symlinks is not True:
        raise ValueError(f"{url!r}: follow_symlinks has no meaning for an object; leave it out")


def _validator(validate: Validate, url: str) -> Callable[[IO[bytes]], None] | None:
    if validate is None:
        return None
    checks = validators_of(validate)

    def run(f: IO[bytes]) -> None:
        for check in checks:
            f.seek(0)
            try:
                check(f)  # type: ignore[arg-type]
            except VerificationError as e:
                if e.filename is None:  # it read an anonymous staged copy
                    e.filename = url
                raise

    return run


def write(
    url: str,
    data: bytes,
    *,
    overwrite: bool,
    validate: Validate,
    store: S3Store | None,
) -> None:
    """:func:`crashsafe.atomic_write` for a URL."""
    client, parsed = target(url, store)
    expect: Expect = ANY if overwrite else None
    publish(client, parsed, io.BytesIO(data), len(data), expect, validate=_validator(validate, url))


@contextlib.contextmanager
def open_for_write(
    url: str,
    mode: str,
    *,
    validate: Validate,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
    store: S3Store | None,
) -> Iterator[Any]:
    """:func:`crashsafe.atomic_open` for a URL: stage in an anonymous local file, then publish.

    The staged file lives in the temporary directory (``TMPDIR``), holds the
    whole object until the block ends, and is gone when it does, whatever
    happens; memory stays small at any size.
    """
    if mode not in _TEXT_MODES + _BINARY_MODES:
        raise ValueError(
            f"{url!r}: mode {mode!r} is not supported for an object; use 'wb', 'xb', 'w' or 'x' "
            "(an object cannot be appended to in place)"
        )
    client, parsed = target(url, store)
    expect: Expect = None if mode.startswith("x") else ANY
    check = _validator(validate, url)
    with tempfile.TemporaryFile() as staged:
        if mode in _TEXT_MODES:
            text = io.TextIOWrapper(
                staged, encoding=encoding or "utf-8", errors=errors, newline=newline
            )
            yield text
            text.flush()
            text.detach()
        else:
            yield staged
        size = staged.seek(0, os.SEEK_END)
        if check is not None:
            check(staged)  # the large path cannot re-read what it sent
        staged.seek(0)
        publish(client, parsed, staged, size, expect)


def copy(
    src: str | os.PathLike[str] | IO[bytes],
    dst: str | os.PathLike[str],
    *,
    perm: int | None,
    durability: Durability,
    follow_symlinks: bool,
    validate: Validate,
    digest: str | None,
    progress: Callable[[int, int | None], object] | None,
    store: S3Store | None,
    hasher_for: Callable[[str | None], hashlib._Hash | None],
    parents: bool = False,
) -> tuple[int, str, str | None]:
    """:func:`crashsafe.atomic_copy` with a URL on either side or both.

    Returns ``(bytes, method, hexdigest)``. *parents* applies to a local *dst*
    (a key needs no directory).
    """
    if is_url(dst):
        assert isinstance(dst, str)
        check_options(dst, perm=perm, durability=durability, follow_symlinks=follow_symlinks)
        client, parsed = target(dst, store)
        if is_url(src):
            assert isinstance(src, str)
            with _download(src, store) as (body, size):
                return _upload(
                    client,
                    parsed,
                    body,
                    size,
                    validate=validate,
                    digest=digest,
                    progress=progress,
                    hasher_for=hasher_for,
                )
        if isinstance(src, str | os.PathLike):
            with open(src, "rb") as f:
                return _upload(
                    client,
                    parsed,
                    f,
                    None,
                    validate=validate,
                    digest=digest,
                    progress=progress,
                    hasher_for=hasher_for,
                )
        return _upload(
            client,
            parsed,
            src,
            None,
            validate=validate,
            digest=digest,
            progress=progress,
            hasher_for=hasher_for,
        )
    # An object to a local file: the local contract, with the object as a stream.
    assert isinstance(src, str)
    from crashsafe import validators
    from crashsafe.copying import atomic_copy

    with _download(src, store) as (body, size):
        checks = (
            [*validators_of(validate), validators.size(size)]
            if validate
            else [validators.size(size)]
        )
        report = None if progress is None else (lambda done, _total: progress(done, size))
        result = atomic_copy(
            body,
            dst,
            perm=perm,
            durability=durability,
            follow_symlinks=follow_symlinks,
            validate=checks,
            digest=digest,
            progress=report,
            parents=parents,
        )
    return result.bytes, "download", result.digest


def _upload(
    client: Client,
    url: ObjectURL,
    source: IO[bytes],
    size: int | None,
    *,
    validate: Validate,
    digest: str | None,
    progress: Callable[[int, int | None], object] | None,
    hasher_for: Callable[[str | None], hashlib._Hash | None],
) -> tuple[int, str, str | None]:
    hasher = hasher_for(digest)
    before = None
    fd = _fileno(source)
    if fd is not None and not stat.S_ISREG(os.fstat(fd).st_mode):
        fd = None  # a pipe or a terminal: read as a stream
    if size is None:
        if fd is not None:
            before = os.fstat(fd)
            size = before.st_size
            source.seek(0)
        elif source.seekable():
            size = source.seek(0, os.SEEK_END)
            source.seek(0)
        else:
            # A pipe: its length is known only at its end, and an object's must be
            # known before it is published; spooled to an anonymous local file.
            with tempfile.TemporaryFile() as spool:
                while chunk := source.read(1 << 20):
                    spool.write(chunk)
                spool.seek(0)
                return _upload(
                    client,
                    url,
                    spool,
                    None,
                    validate=validate,
                    digest=digest,
                    progress=progress,
                    hasher_for=hasher_for,
                )
    check = _validator(validate, str(url))
    if check is not None and size is not None and size > 0 and source.seekable():
        check(source)  # read the whole source before any byte is sent
        source.seek(0)
        check = None

    def unchanged() -> None:
        if before is not None and fd is not None:
            after = os.fstat(fd)
            if (after.st_size, after.st_mtime_ns, after.st_ino) != (
                before.st_size,
                before.st_mtime_ns,
                before.st_ino,
            ):
                raise VerificationError(
                    "the source changed while it was sent; nothing was published",
                    getattr(source, "name", None)
                    if isinstance(getattr(source, "name", None), str)
                    else None,
                )

    report = None if progress is None else (lambda done: progress(done, size))
    method = publish(
        client,
        url,
        source,
        size,
        ANY,
        validate=check,
        before_commit=unchanged,
        hasher=hasher,
        report=report,
    )
    if report is not None and size == 0:
        report(0)
    return size, method, hasher.hexdigest() if hasher is not None else None


def _fileno(f: IO[bytes]) -> int | None:
    try:
        return f.fileno()
    except (OSError, ValueError, AttributeError):
        return None


@contextlib.contextmanager
def _download(url: str, store: S3Store | None) -> Iterator[tuple[IO[bytes], int]]:
    client, parsed = target(url, store)
    body, stat = client.open(parsed)
    try:
        yield io.BufferedReader(_Body(body, url)), stat.size
    finally:
        body.close()


class _Body(io.RawIOBase):
    """An object's bytes as a file, whose transport errors name the object."""

    def __init__(self, body: IO[bytes], url: str) -> None:
        super().__init__()
        self._body, self._url = body, url

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._body.read(len(buffer))
        except Exception as e:
            raise ObjectStoreError(f"the download broke off: {e}", self._url) from e
        buffer[: len(data)] = data
        return len(data)
