"""The small tree the directory crash tests write and check: 3 files in 2 directories.

Each file holds its own name and a self-checking payload of the tree's version
(:func:`tests.harness.payloads.payload`), so a file of another version, a
file holding another file's content, a prefix or a zero fill is told apart.
"""

from __future__ import annotations

import os
from pathlib import Path

# At import, not in write_tree(): a writer imports this before its start
# marker, so that no crash point is spent on importing.
from tests.harness.payloads import classify_named, payload, read_or_none

FILES = ("a.bin", "sub/b.bin", "sub/c.bin")
SIZE = 12 << 10  # three 4 KiB blocks: a torn write shows


def content(name: str, version: int) -> bytes:
    return name.encode() + b":" + payload(version, SIZE)


def write_tree(root: str | os.PathLike[str], version: int) -> None:
    """Write the tree of *version* under *root* (which exists)."""
    os.mkdir(os.path.join(root, "sub"))
    for name in FILES:
        with open(os.path.join(root, name), "wb") as f:
            f.write(content(name, version))


def classify_tree(root: Path) -> int | str:
    """The version of a complete tree at *root* (a symlink to one is followed), else
    what is wrong: "missing", "not a directory", "extra or missing entries", or
    the first file's fault ("a.bin: empty"), or "mixed versions"."""
    if not root.exists():
        return "missing"
    if not root.is_dir():
        return "not a directory"
    names = sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir() or p.is_symlink()
    )
    found = {name: classify_named(name, read_or_none(root / name)) for name in FILES}
    for name, fault in found.items():
        if not isinstance(fault, int):
            return f"{name}: {fault}"
    if len(set(found.values())) > 1:
        return "mixed versions"
    return found[FILES[0]] if names == sorted(FILES) else "extra or missing entries"
