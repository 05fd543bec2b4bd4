"""The checksum store's file (version 2): a header line, then JSON lines, appended.

The file is JSON Lines, readable by people and by ``jq``::

    {"format": "crashsafe-checksums", "version": 2, "generation": "6f1c...", ...}
    {"sha256": {"/usr/local/bin/hook": "9f86d081884c7d65...b0f00a08"}}
    {"sha256": {"/usr/local/bin/tool": "2c26b46b68ffc68f...6266e7ae"}}
    {"sha256": {"/usr/local/bin/hook": null}}

Every line after the header is one commit: its ``sha256`` object sets the
digests of the paths it names, ``null`` forgets one. The lines are applied in
order. A compaction writes the live entries, one a line and sorted (the
snapshot, ``snapshot_bytes`` long), with :func:`crashsafe.atomic_write`, under
a new random ``generation``; commits in between are appended to that file under
the store's lock and fsynced.

Why a torn line can be told from a damaged one. An append is never
overwritten in place: a file only grows until a compaction replaces it. So
after a ``kill -9`` mid-append the page cache holds complete lines and then at
most an unterminated prefix; after a power cut the disk holds what was fsynced
(complete lines) and, after it, any mix of the later appends' blocks, where a
block not written reads as zero bytes (filesystems never show another file's
stale data). Any damage a crash can make is therefore an unterminated last
line, or a line holding a NUL byte, which valid JSON never holds. Such lines
are not commits (their writer had not returned): readers skip them and the
next writer compacts them away. A terminated line without NUL that is not a
valid commit was not made by a crash: the store is damaged, reading it raises
:class:`~crashsafe.JSONDocumentError`, and it is never rewritten.

A line after a torn one may be whole: two writers that both died before their
fsync returned, the later one's blocks on disk and not the earlier one's. It
is applied: neither caller was told its record was kept, so either outcome is
one they allow, and each commit is all or nothing.

Readers keep what they read, per process, keyed by the store's path: the file's
device and inode and its header line (whose generation changes at every
compaction, so a recycled inode number is not mistaken for the same file), and
the offset up to which its complete lines were applied. A later read reads
only what was appended since; a replaced or shrunk file is read whole.
"""

from __future__ import annotations

import gc
import json
import os
import stat
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from crashsafe.errors import JSONDocumentError

FORMAT: Final = "crashsafe-checksums"
VERSION: Final = 2
ABOUT: Final = (
    "JSON lines: each line below sets the SHA-256 of the paths it names; null forgets a path"
)
HEAD_READ: Final = 4096  # the header line is far shorter
_HEX: Final = "0123456789abcdef"

Changes = Mapping[str, str | None]


@dataclass
class State:
    """What one process knows of a store file: its live entries up to *offset*."""

    identity: tuple[int, int]  # st_dev, st_ino
    header: bytes  # the first line, newline included (empty for version 1)
    snapshot_bytes: int
    offset: int  # where the first line not yet applied starts
    lines: int  # lines read so far (for error messages)
    files: dict[str, str]
    version: int


_guard = threading.Lock()
_cache: dict[str, State] = {}


def _reset_after_fork() -> None:
    global _guard  # noqa: PLW0603 - replaced, as locking.py replaces its own
    _guard = threading.Lock()  # a thread of the parent may have held it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


# --------------------------------------------------------------------------- writing


def dump_line(changes: Changes) -> bytes:
    """One commit line; raises :class:`UnicodeEncodeError` for a path UTF-8 cannot hold."""
    text = json.dumps({"sha256": changes}, ensure_ascii=False)
    return (text + "\n").encode("utf-8")


def dump_store(files: Mapping[str, str]) -> tuple[bytes, bytes, int]:
    """A compacted store: (its content, its header line, its snapshot's size)."""
    encode = json.encoder.encode_basestring  # as json.dumps(ensure_ascii=False) does
    body = "".join(
        f'{{"sha256": {{{encode(name)}: "{files[name]}"}}}}\n' for name in sorted(files)
    ).encode("utf-8")
    head = {
        "format": FORMAT,
        "version": VERSION,
        "generation": os.urandom(16).hex(),
        "snapshot_bytes": len(body),
        "about": ABOUT,
    }
    header = (json.dumps(head) + "\n").encode("utf-8")
    return header + body, header, len(body)


def remember(path: str, state: State) -> None:
    with _guard:
        _cache[path] = state


def forget_cached(path: str) -> None:
    with _guard:
        _cache.pop(path, None)


# --------------------------------------------------------------------------- reading


def read_at(fd: int, offset: int, size: int) -> bytes:
    """Up to *size* bytes at *offset* (fewer at the end of the file)."""
    os.lseek(fd, offset, os.SEEK_SET)  # not os.pread: Windows has none
    chunks = []
    while size > 0:
        chunk = os.read(fd, min(size, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def header_of(path: str, head: bytes) -> tuple[bytes, int] | None:
    """(header line, snapshot size) if *head* starts a version 2 store, None if it
    may be a version 1 document (read whole); raises for another version."""
    end = head.find(b"\n")
    if end < 0:
        return None
    try:
        value = json.loads(head[:end])
    except ValueError:
        return None  # "{" alone: the first line of an indented version 1 document
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        return None
    version = value.get("version")
    if version == 1:
        return None
    if version != VERSION:
        raise _bad(path, f"version {version!r}; this crashsafe reads versions 1 and 2")
    size = value.get("snapshot_bytes")
    if not (isinstance(size, int) and size >= 0 and isinstance(value.get("generation"), str)):
        raise _bad(path, 'a version 2 header needs "generation" and "snapshot_bytes"')
    return head[: end + 1], size


@contextmanager
def current(path: str, fd: int | None = None) -> Iterator[State | None]:
    """The store's state, brought up to date (None: there is no store), held for
    this thread while the block runs. *fd*: the store, already open."""
    with _guard:
        own = fd is None
        if own:
            from crashsafe import _platform

            try:
                fd = _platform.open_reading(path)
            except FileNotFoundError:
                _cache.pop(path, None)
                yield None
                return
        assert fd is not None
        try:
            state = _refresh(path, fd, _cache.get(path))
        except BaseException:
            _cache.pop(path, None)  # it may hold part of what failed: read whole next time
            raise
        finally:
            if own:
                os.close(fd)
        _cache[path] = state
        yield state


def _refresh(path: str, fd: int, known: State | None) -> State:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        import errno

        raise OSError(errno.EINVAL, "Not a regular file", path)
    identity = (st.st_dev, st.st_ino)
    head = read_at(fd, 0, HEAD_READ)
    if (
        known is not None
        and known.version == VERSION
        and known.identity == identity
        and head.startswith(known.header)
        and st.st_size >= known.offset
    ):
        if st.st_size > known.offset:
            _apply(path, known, read_at(fd, known.offset, st.st_size - known.offset))
        return known
    found = header_of(path, head)
    data = head if st.st_size <= len(head) else head + read_at(fd, len(head), st.st_size)
    if found is None:
        return State(identity, b"", 0, len(data), 0, _version_1(path, data), 1)
    header, snapshot = found
    state = State(identity, header, snapshot, len(header), 1, {}, VERSION)
    _apply(path, state, data[len(header) :])
    return state


def _apply(path: str, state: State, data: bytes) -> None:
    """Apply the complete lines of *data* (read at ``state.offset``) to *state*."""
    end = data.rfind(b"\n") + 1  # an unterminated rest is an append in progress, or torn
    if not end:
        return
    # Parsing 100,000 lines makes 200,000 objects that hold no cycles: the
    # cyclic collector would run dozens of times for nothing (half the time).
    collecting = gc.isenabled()
    gc.disable()
    try:
        _apply_lines(path, state, data[:end])
    finally:
        if collecting:
            gc.enable()
    state.offset += end


def _apply_lines(path: str, state: State, chunk: bytes) -> None:
    count = chunk.count(b"\n")
    values: Any = None
    if b"\0" not in chunk:
        try:  # every line at once, at the C parser's speed
            values = json.loads(b"[" + chunk[:-1].replace(b"\n", b",") + b"]")
        except ValueError:
            values = None
    if not (isinstance(values, list) and len(values) == count):
        lines = chunk.split(b"\n")[:-1]
        values = [_line(path, line, state.lines + n) for n, line in enumerate(lines, 1)]
    files = state.files
    for n, value in enumerate(values, state.lines + 1):
        if value is None:
            continue  # torn by a crash: no commit
        changes = value.get("sha256") if type(value) is dict and len(value) == 1 else None
        if type(changes) is not dict:
            raise _bad(path, f'line {n} is not {{"sha256": {{...}}}}')
        for name, digest in changes.items():
            if digest is None:
                files.pop(name, None)
            elif type(digest) is str and len(digest) == 64 and not digest.strip(_HEX):
                files[name] = digest
            else:
                raise _bad(path, f"line {n}: the digest of {name!r} is not 64 hex digits")
    state.lines += count


def _line(path: str, line: bytes, n: int) -> Any:
    """One line's value; None for a line a crash tore (it holds a NUL byte)."""
    if b"\0" in line:
        return None
    try:
        return json.loads(line)
    except ValueError as e:
        raise _bad(path, f"line {n} is not valid JSON (edited by hand?): {e}") from e


def _version_1(path: str, data: bytes) -> dict[str, str]:
    """The entries of a version 1 store: one JSON document."""
    from crashsafe.documents import parse_document

    document = parse_document(data, path)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise _bad(path, f'expected an object with "format": "{FORMAT}"')
    if document.get("version") != 1:
        raise _bad(
            path, f"version {document.get('version')!r}; this crashsafe reads versions 1 and 2"
        )
    files = document.get("sha256")
    if not isinstance(files, dict):
        raise _bad(path, '"sha256" is not an object')
    for name, digest in files.items():
        if not (isinstance(digest, str) and len(digest) == 64 and not digest.strip(_HEX)):
            raise _bad(path, f"the digest of {name!r} is not 64 hex digits")
    return files


def _bad(path: str, why: str) -> JSONDocumentError:
    return JSONDocumentError(path, f"not a crashsafe checksum store: {why}")
