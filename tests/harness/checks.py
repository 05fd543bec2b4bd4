"""Assertions and set-up shared by every test that writes."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from crashsafe.staging import MARKER


def leftovers(directory: str | os.PathLike[str]) -> list[str]:
    """Names in *directory* that look like crashsafe temporary files."""
    return sorted(n for n in os.listdir(directory) if MARKER in n)


def verify_no_leftovers(directory: str | os.PathLike[str]) -> None:
    found = leftovers(directory)
    assert not found, f"temporary files left in {directory}: {found}"


def entries(directory: str | os.PathLike[str]) -> list[str]:
    return sorted(os.listdir(directory))


def read(path: str | os.PathLike[str]) -> bytes:
    return Path(path).read_bytes()


def snapshot(path: Path) -> tuple[object, ...]:
    """Everything about one entry (recursively, for a directory) that a write
    through it or over it, or a removal and re-creation, would change."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        detail: object = os.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        detail = {p.name: snapshot(p) for p in path.iterdir()}
    else:
        detail = path.read_bytes()
    return st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, detail


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """This process's umask set to *mask* in the block, restored after."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)
