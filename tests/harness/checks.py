"""Assertions shared by every test that writes."""

from __future__ import annotations

import os
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
