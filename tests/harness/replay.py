"""Replaying every operation of a recording over its snapshot, for checking a tracer.

If the tracer understood a run, applying all of its operations, in order, to the
directories as they were before must give the directories as the run left them: every
name, every file's content and permission bits, every symlink's target. A tracer that
lost a write, misplaced an offset or a relative path, or missed a rename fails this.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from crashsafe.crashcheck._ops import (
    Create,
    Link,
    Mkdir,
    Operation,
    Rename,
    Rmdir,
    SetMode,
    Snapshot,
    Symlink,
    Truncate,
    Unlink,
    Write,
)


@dataclass
class Entry:
    kind: str  # "file", "dir", "symlink"
    inode: int
    target: str = ""


def replay(snapshot: Snapshot, operations: list[Operation]) -> dict[str, tuple[str, object, int]]:
    """The directories after *operations*: path -> (kind, content or target, mode)."""
    names = {p: Entry(e.kind, e.inode, e.target) for p, e in snapshot.entries.items()}
    modes = {e.inode: e.mode for e in snapshot.entries.values()}
    data: dict[int, bytearray] = {}
    for path, e in snapshot.entries.items():
        if e.kind == "file" and e.inode not in data:
            with open(snapshot.source(path), "rb") as f:
                data[e.inode] = bytearray(f.read())

    def subtree(path: str) -> list[str]:
        return [p for p in names if p == path or p.startswith(path + "/")]

    for op in operations:
        if isinstance(op, Create):
            data[op.inode] = bytearray()
            modes[op.inode] = op.mode
            if op.named:
                names[op.path] = Entry("file", op.inode)
        elif isinstance(op, Mkdir):
            names[op.path] = Entry("dir", op.inode)
            modes[op.inode] = op.mode
        elif isinstance(op, Symlink):
            names[op.path] = Entry("symlink", 0, op.target)
        elif isinstance(op, Link):
            names[op.path] = Entry("file", op.inode)
        elif isinstance(op, (Unlink, Rmdir)):
            for p in subtree(op.path):
                del names[p]
        elif isinstance(op, Rename):
            src = {p[len(op.src) :]: names.pop(p) for p in subtree(op.src)}
            dst = {p[len(op.dst) :]: names.pop(p) for p in subtree(op.dst)}
            names.update({op.dst + rest: e for rest, e in src.items()})
            if op.exchange:
                names.update({op.src + rest: e for rest, e in dst.items()})
        elif isinstance(op, Write):
            content = data[op.inode]
            if op.offset > len(content):
                content.extend(bytes(op.offset - len(content)))
            content[op.offset : op.offset + len(op.data)] = op.data
        elif isinstance(op, Truncate):
            content = data[op.inode]
            del content[op.size :]
            content.extend(bytes(op.size - len(content)))
        elif isinstance(op, SetMode):
            modes[op.inode] = op.mode
    state: dict[str, tuple[str, object, int]] = {}
    for path, entry in names.items():
        if entry.kind == "file":
            state[path] = ("file", bytes(data[entry.inode]), modes[entry.inode])
        elif entry.kind == "dir":
            state[path] = ("dir", None, modes[entry.inode])
        else:
            state[path] = ("symlink", entry.target, 0o777)
    return state


def actual(roots: list[str]) -> dict[str, tuple[str, object, int]]:
    """The directories *roots* as they are, in :func:`replay`'s terms."""
    state: dict[str, tuple[str, object, int]] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [".", *dirnames, *filenames]:
                path = os.path.normpath(os.path.join(dirpath, name))
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    state[path] = ("symlink", os.readlink(path), 0o777)
                elif stat.S_ISDIR(st.st_mode):
                    state[path] = ("dir", None, stat.S_IMODE(st.st_mode))
                else:
                    with open(path, "rb") as f:
                        state[path] = ("file", f.read(), stat.S_IMODE(st.st_mode))
    return state
