"""Locked read-modify-write of a file, and JSON documents on top of it.

Atomic replacement alone does not stop two processes that read, modify and
write one file from losing each other's updates. :func:`update` and
:func:`update_json` hold a :class:`~crashsafe.locking.FileLock` on the file
from the read through the commit of the new content, so N processes that
each add one to a counter end at exactly N. :func:`write_json` takes the same
lock, so a blind write never lands between another writer's read and its
commit (where the update would then overwrite it with a value computed from
older data). :func:`read_json` takes no lock: every write is an atomic rename,
so a reader sees one complete version.

Every write goes through :func:`crashsafe.atomic_write` with its durability
levels and permission rules (a document written with ``perm=0o600`` is never
readable by others, not even for an instant). Each locked path gains a lock
file ``.NAME.lock`` beside it, which stays (see :mod:`crashsafe.locking`).

JSON is written as UTF-8 (the only encoding RFC 8259 allows between
systems), with non-ASCII characters as themselves (``ensure_ascii=False``),
so that the file stays readable by people; strings holding lone surrogates,
which UTF-8 cannot encode, raise :class:`UnicodeEncodeError`. ``NaN`` and the
infinities raise :class:`ValueError` (``allow_nan=False``): JSON has no such
values and other parsers reject them. The text ends with a newline.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from io import BufferedReader
from typing import TYPE_CHECKING, Any, Final, TypedDict, Unpack

from crashsafe import _platform
from crashsafe._checks import BytesLike, Durability, Validate, check_flag, check_options
from crashsafe._metadata import Hardlinks, Preserve, check_keywords
from crashsafe.atomic import atomic_write
from crashsafe.errors import JSONDocumentError
from crashsafe.locking import FileLock
from crashsafe.objectstore._url import is_url

if TYPE_CHECKING:
    from json import JSONDecodeError

    from crashsafe.objectstore import S3Store

__all__ = ["JSONDocumentError", "read_json", "update", "update_json", "write_json"]


class Missing:
    """Internal door (with :data:`MISSING`, :func:`make_parents` and
    :func:`local_only`) for :mod:`crashsafe.aio`: the type of "no default given"."""

    def __repr__(self) -> str:
        return "<no default>"


MISSING: Final = Missing()


class WriteOptions(TypedDict, total=False):
    """The keywords of :func:`crashsafe.atomic_write` that :func:`update` passes on."""

    perm: int | None
    durability: Durability
    overwrite: bool
    follow_symlinks: bool
    parents: bool
    preserve: Preserve
    hardlinks: Hardlinks
    validate: Validate
    encoding: str


# --------------------------------------------------------------------------- bytes


def update(
    path: str | os.PathLike[str],
    fn: Callable[[bytes], BytesLike],
    *,
    default: bytes = b"",
    timeout: float | None = None,
    store: S3Store | None = None,
    **write_keywords: Unpack[WriteOptions],
) -> bytes:
    """Replace the content of *path* with ``fn(old content)``, under its lock.

    Takes ``FileLock(path, timeout=timeout)``, reads the whole file (*default*
    if it does not exist), calls *fn* with those bytes and writes what it
    returns with :func:`crashsafe.atomic_write`, passing *write_keywords*
    (``perm``, ``durability``, ``follow_symlinks``, ...; with ``parents``,
    missing directories are made first, before the lock file). The lock is held
    from the read through the commit, so concurrent updates of one path, in
    threads or processes, never lose one another. Returns the new content.
    A thread that already holds the lock on *path* may call this (the lock is
    reentrant per thread).

    Raises, with *path* untouched and nothing left behind: whatever *fn*
    raises; :class:`TypeError` if *fn* returns anything but bytes, bytearray
    or memoryview (a ``str`` included: encode it yourself), or if *default*
    is not bytes; the errors of :class:`~crashsafe.locking.FileLock` (which
    name *path*, and the lock file as ``filename2``), of reading *path* and of
    :func:`crashsafe.atomic_write`. :class:`~crashsafe.NotDurableError` means
    the new content is in place but its durability is unconfirmed.

    *path* may be an ``s3://bucket/key`` URL (and *store* an
    :class:`~crashsafe.objectstore.S3Store`): the update is then a
    compare-and-swap loop instead of a lock, *fn* may run more than once
    (on newer content each time), *timeout* bounds the whole loop, and
    :class:`~crashsafe.errors.UpdateConflictError` means other writers won
    every race (see the README's object-storage section).
    """
    if not isinstance(default, bytes | bytearray | memoryview):
        raise TypeError(f"update: default must be bytes, not {type(default).__name__}")
    if is_url(path):
        from crashsafe.objectstore import _documents, _objects

        assert isinstance(path, str)
        _objects.check_options(
            path,
            perm=write_keywords.get("perm"),
            durability=write_keywords.get("durability", "durable"),
            follow_symlinks=write_keywords.get("follow_symlinks", True),
        )
        if write_keywords.get("overwrite", True) is not True:
            raise ValueError(f"{path!r}: overwrite has no meaning for an update; leave it out")
        return _documents.update(
            path,
            fn,
            default=bytes(default),
            timeout=timeout,
            validate=write_keywords.get("validate"),
            store=store,
        )
    local_only(store, path)
    # Checked before the lock, whose file the first lock of a path creates.
    check_options("wb", write_keywords.get("perm"), write_keywords.get("durability", "durable"))
    check_keywords(write_keywords.get("preserve", "all"), write_keywords.get("hardlinks", "refuse"))
    check_flag("overwrite", write_keywords.get("overwrite", True))
    follow = write_keywords.get("follow_symlinks", True)
    make_parents(path, write_keywords.get("parents", False), write_keywords.get("durability"))
    with FileLock(path, timeout=timeout, follow_symlinks=follow):
        try:
            with _open_read(path) as f:
                old = f.read()
        except FileNotFoundError:
            old = default
        new = fn(old)
        if not isinstance(new, bytes | bytearray | memoryview):
            raise TypeError(
                f"update: fn must return bytes, not {type(new).__name__}; nothing was written"
            )
        atomic_write(path, new, **write_keywords)
    return bytes(new)


def _open_read(path: str | os.PathLike[str]) -> BufferedReader:
    """*path* opened for reading; on FUSE and NFS, through the moments a rename
    over it makes it look missing (10 tries, 0.213 s of waiting at most: see
    :func:`crashsafe._platform.through_renames`)."""
    return _platform.through_renames(lambda: open(path, "rb"), os.fspath(path))


# --------------------------------------------------------------------------- JSON


def read_json(
    path: str | os.PathLike[str], default: Any = MISSING, *, store: S3Store | None = None
) -> Any:
    """The JSON document in *path*, parsed whole.

    If *path* does not exist (:class:`FileNotFoundError`, a dangling symlink
    included), returns *default* when one is given and raises otherwise. An
    existing file is never replaced by *default*: an empty, truncated or
    otherwise damaged one raises :class:`JSONDocumentError`, naming the file,
    the position and the likely cause; nothing parsed from it is returned.
    A UTF-8 byte order mark at the start is skipped (RFC 8259 lets parsers
    ignore it). ``NaN`` and ``Infinity`` are read as floats, as Python's
    :mod:`json` does.

    On FUSE (sshfs, ntfs-3g, exfat-fuse, passthroughs) and NFS, a rename over
    the file can make it look missing for a moment; an open that fails with
    ``ENOENT`` or ``ESTALE`` there is tried again, 10 times in all over
    0.213 s at most, so that a reader racing writers never sees the file
    missing; a file that really is missing is reported (or *default*
    returned) after those 0.213 s.

    A file that was cut short and whose prefix is itself a valid document
    (only possible when the whole document is a bare number) cannot be told
    from a complete one; objects, arrays and strings always can. Files
    written through crashsafe are never cut short.

    *path* may be an ``s3://bucket/key`` URL (with *store*, an
    :class:`~crashsafe.objectstore.S3Store`, or the ``AWS_*`` environment).
    """
    if is_url(path):
        from crashsafe.objectstore import _documents

        assert isinstance(path, str)
        return _documents.read_json(path, default, MISSING, store)
    local_only(store, path)
    try:
        with _open_read(path) as f:
            data = f.read()
    except FileNotFoundError:
        if isinstance(default, Missing):
            raise
        return default
    return parse_document(data, os.fsdecode(os.fspath(path)))


def write_json(
    path: str | os.PathLike[str],
    obj: object,
    *,
    perm: int | None = None,
    durability: Durability = "durable",
    indent: int | str | None = 2,
    timeout: float | None = None,
    parents: bool = False,
    preserve: Preserve = "all",
    hardlinks: Hardlinks = "refuse",
    store: S3Store | None = None,
) -> None:
    """Replace *path* with *obj* as a JSON document, all or nothing.

    The document is serialised first, so :class:`TypeError` (an object JSON
    cannot represent), :class:`ValueError` (NaN, infinities, a circular
    reference) and :class:`UnicodeEncodeError` (a lone surrogate) are raised
    before anything is created. Then, under the path's
    :class:`~crashsafe.locking.FileLock` (waiting at most *timeout* seconds),
    it is written with :func:`crashsafe.atomic_write` with *perm* and
    *durability*. *indent*: as for :func:`json.dumps`; None writes one line.
    *parents*: missing directories are made first, before the lock file, as
    :class:`~crashsafe.AtomicFile` makes them (durably with ``"durable"``).
    *preserve* and *hardlinks*: as for :class:`~crashsafe.AtomicFile`.

    Raises, besides those, the errors of
    :class:`~crashsafe.locking.FileLock` (which name *path*, and the lock
    file as ``filename2``; a directory that does not exist or that the
    caller may not write raises here) and of :func:`crashsafe.atomic_write`.

    *path* may be an ``s3://bucket/key`` URL: one PUT, no lock (*timeout* is
    unused, *parents* has nothing to do), and *perm* or a *durability*
    other than ``"durable"`` raise :class:`ValueError`.
    """
    if is_url(path):
        from crashsafe.objectstore import _documents, _objects

        assert isinstance(path, str)
        _objects.check_options(path, perm=perm, durability=durability)
        _documents.write_json(path, obj, indent, store)
        return
    local_only(store, path)
    check_options("wb", perm, durability)  # before the lock file is made
    check_keywords(preserve, hardlinks)
    data = dump_document(obj, indent)
    make_parents(path, parents, durability)
    with FileLock(path, timeout=timeout):
        atomic_write(
            path, data, perm=perm, durability=durability, preserve=preserve, hardlinks=hardlinks
        )


def update_json(
    path: str | os.PathLike[str],
    fn: Callable[[Any], Any],
    *,
    default: Any = MISSING,
    perm: int | None = None,
    durability: Durability = "durable",
    indent: int | str | None = 2,
    timeout: float | None = None,
    parents: bool = False,
    preserve: Preserve = "all",
    hardlinks: Hardlinks = "refuse",
    store: S3Store | None = None,
) -> Any:
    """Replace the document in *path* with ``fn(old document)``, under its lock.

    As :func:`update`, on parsed JSON: the old document is read with
    :func:`read_json` (a deep copy of *default* if the file does not exist;
    without a default, :class:`FileNotFoundError`), *fn* may return a new
    object or the old one changed in place, and the result is written as
    :func:`write_json` writes. Returns the new object. *fn* must return the
    document: ``None`` is refused (a document of JSON ``null`` is written
    with :func:`write_json`). *parents*, *preserve* and *hardlinks*: as for
    :func:`write_json`.

    Raises, with *path* untouched: whatever *fn* raises; :class:`TypeError`
    if *fn* returns None;
    :class:`JSONDocumentError` if the file is damaged (it is never silently
    replaced); the serialisation errors of :func:`write_json`; the errors of
    :class:`~crashsafe.locking.FileLock` and :func:`crashsafe.atomic_write`.

    *path* may be an ``s3://bucket/key`` URL: as :func:`update` does there,
    a compare-and-swap loop in which *fn* may run more than once.
    """
    if is_url(path):
        from crashsafe.objectstore import _documents, _objects

        assert isinstance(path, str)
        _objects.check_options(path, perm=perm, durability=durability)
        return _documents.update_json(
            path,
            fn,
            default=default,
            missing=MISSING,
            indent=indent,
            timeout=timeout,
            store=store,
        )
    local_only(store, path)
    check_options("wb", perm, durability)
    check_keywords(preserve, hardlinks)
    make_parents(path, parents, durability)
    with FileLock(path, timeout=timeout):
        try:
            old = read_json(path)
        except FileNotFoundError:
            if isinstance(default, Missing):
                raise
            import copy

            # fn may change what it gets in place; the caller's default must not change.
            old = copy.deepcopy(default)
        new = fn(old)
        if new is None:
            # An fn that edits in place and forgets to return the document
            # (d.update(...) returns None) would otherwise replace it with null.
            raise TypeError(
                f"update_json: fn returned None for {os.fsdecode(os.fspath(path))!r}; "
                "return the new document (the old one changed in place is fine); "
                "nothing was written"
            )
        atomic_write(
            path,
            dump_document(new, indent),
            perm=perm,
            durability=durability,
            preserve=preserve,
            hardlinks=hardlinks,
        )
    return new


def make_parents(
    path: str | os.PathLike[str], parents: object, durability: Durability | None
) -> None:
    """With *parents*, make *path*'s missing directories before its lock file
    goes there (the write that follows finds them made)."""
    check_flag("parents", parents)
    if parents:
        head = os.path.dirname(os.fsdecode(os.fspath(path)))
        _platform.make_directories(head, sync=durability in (None, "durable")).close()


def local_only(store: object, path: str | os.PathLike[str]) -> None:
    """Refuse *store* for a local *path* (a ValueError naming it)."""
    if store is not None:
        raise ValueError(f"{os.fsdecode(os.fspath(path))!r}: store= applies to s3:// URLs only")


def dump_document(obj: object, indent: int | str | None) -> bytes:
    """*obj* as the UTF-8 JSON text crashsafe writes (the module says how)."""
    import json

    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


# --------------------------------------------------------------------------- diagnosis

_EMPTY: Final = "the file is empty (a writer without crashsafe was interrupted?)"
_BLANK: Final = "the file holds only whitespace"
_ZEROS: Final = "the file holds only zero bytes (a power cut after a write that was not fsynced?)"
_TRUNCATED: Final = "the document ends early (truncated)"
_TRAILING: Final = "trailing data after the document (two writes mixed, or an append?)"
_TRAILING_ZEROS: Final = "zero bytes after the document (a power cut during a write?)"
_LEADING_ZEROS: Final = "the file starts with zero bytes (a power cut during a write?)"
_BAD_UTF8: Final = "invalid UTF-8 (not a text file, another encoding, or a torn write?)"
_INVALID: Final = "the text is not valid JSON"
# The tokens a cut can leave half-written where the parser stops at their start.
_LITERALS: Final = ("true", "false", "null", "NaN", "Infinity", "-Infinity")


def parse_document(data: bytes, filename: str) -> Any:
    """The JSON document in *data*; :class:`JSONDocumentError` naming *filename* if damaged."""
    import json

    try:
        full = data.decode("utf-8")
    except UnicodeDecodeError as e:
        good = data[: e.start].decode("utf-8")
        cut = e.end == len(data) and "end of data" in e.reason
        line, col = _line_col(good, len(good))
        raise JSONDocumentError(
            filename,
            _TRUNCATED if cut else _BAD_UTF8,
            detail=f"{e.reason} at byte {e.start}",
            lineno=line,
            colno=col,
            pos=len(good),
        ) from e
    skipped = 1 if full.startswith("\ufeff") else 0
    text = full[skipped:]
    if not text.strip(" \t\r\n\0"):
        raise JSONDocumentError(
            filename, _EMPTY if not data else _ZEROS if "\0" in text else _BLANK
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        line, col = _line_col(full, e.pos + skipped)
        raise JSONDocumentError(
            filename, _diagnose(e, text), detail=e.msg, lineno=line, colno=col, pos=e.pos + skipped
        ) from e
    except ValueError as e:  # a number longer than int() converts (sys.int_info)
        raise JSONDocumentError(filename, "a value too large to convert", detail=str(e)) from e
    except RecursionError as e:
        raise JSONDocumentError(filename, "arrays or objects nested too deeply to parse") from e


def _diagnose(error: JSONDecodeError, text: str) -> str:
    tail = text[error.pos :]
    if error.msg == "Extra data":
        return _TRAILING_ZEROS if not tail.strip("\0 \t\r\n") else _TRAILING
    if error.msg.startswith("Unterminated string"):
        return _TRUNCATED
    if text.startswith("\0"):
        return _LEADING_ZEROS
    if error.pos >= len(text.rstrip()) or _cut_token(tail):
        return _TRUNCATED
    return _INVALID


def _cut_token(tail: str) -> bool:
    """Whether *tail*, running to the end of the file, is a token cut short."""
    if any(literal.startswith(tail) for literal in _LITERALS):
        return True
    # "1." and "1e+" stop the parser at the fraction or exponent; "\u12" at the u.
    if tail in (".", "e", "E", "e+", "e-", "E+", "E-"):
        return True
    return (
        tail[:1] == "u" and len(tail) <= 5 and all(c in "0123456789abcdefABCDEF" for c in tail[1:])
    )


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - text.rfind("\n", 0, pos)
