"""Self-checking contents and setup writes for the crash tests.

A :func:`payload` names its version and length and is otherwise a pattern
unique to its version, so :func:`classify` tells a complete version from a
prefix, a mix of two versions or a zero fill. :func:`durable_put` puts the old
state in place with plain ``os`` calls: setup, never the code under test.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

_HEAD = re.compile(rb"\ACRASHSAFE-PAYLOAD v(\d{12}) n(\d{12})\n")


def payload(version: int, size: int = 1 << 20) -> bytes:
    """A self-checking payload: a header with version and length, then a pattern
    unique to the version. Any prefix, mix of two versions or zero fill differs
    from every complete payload."""
    head = b"CRASHSAFE-PAYLOAD v%012d n%012d\n" % (version, size)
    unit = hashlib.sha256(b"crashsafe %d" % version).digest()
    body = unit * ((size - len(head)) // len(unit) + 1)
    return (head + body)[:size]


def classify(data: bytes | None) -> int | str:
    """The version of a complete payload, else "missing", "empty", "zeros",
    "partial" (a prefix of one payload) or "torn" (anything else)."""
    if not data:
        return "missing" if data is None else "empty"
    if data.count(0) == len(data):
        return "zeros"
    m = _HEAD.match(data)
    if m and int(m[2]) > 1 << 30:
        return "torn"  # no payload is that large; do not build one
    expected = payload(int(m[1]), int(m[2])) if m else b""
    if data == expected:
        return int(m[1]) if m else "torn"
    return "partial" if m and expected.startswith(data) else "torn"


def classify_named(name: str, data: bytes | None) -> int | str:
    """:func:`classify` of a file whose content is ``name:`` then a payload (so a
    file holding another file's content cannot pass): "torn" if the name is
    not its own."""
    prefix = name.encode() + b":"
    if not data or data.count(0) == len(data):
        return classify(data)
    if not data.startswith(prefix):
        return "torn"
    return classify(data[len(prefix) :])


def read_or_none(path: str | os.PathLike[str]) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def durable_put(
    path: str | os.PathLike[str], data: bytes, perm: int = 0o644, *, sync_dir: bool = True
) -> None:
    """Put *data* at *path* with mode *perm*, fsynced, with plain os calls (setup,
    not under test); with *sync_dir*, the directory is fsynced too."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.harness-setup")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, perm)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    if sync_dir:
        fsync_directory(path.parent)
