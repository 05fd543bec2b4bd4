"""The facts of a whole run that the explorer needs: when each operation becomes
durable under the conservative model, short descriptions of the operations, and the
standard output written up to each crash point."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ._model import Base, State
from ._ops import (
    Create,
    Link,
    Mkdir,
    Operation,
    Output,
    Rename,
    Rmdir,
    SetMode,
    Symlink,
    Sync,
    SyncAll,
    Truncate,
    Unlink,
    Write,
)
from ._report import CrashPoint

__all__ = ["NEVER", "STATEFUL", "Run"]

NEVER = 1 << 62
"""The ``covered`` value of an operation no barrier covers."""

STATEFUL = (Create, Mkdir, Symlink, Link, Unlink, Rmdir, Rename, Write, Truncate, SetMode)
"""The operations that change the directories (and so may be lost)."""


class Run:
    """The facts of the whole run, from one replay of every operation in order."""

    def __init__(self, base: Base, ops: Sequence[Operation]) -> None:
        self.ops = ops
        n = len(ops)
        self.covered = [0] * (n + 1)  # the barrier making op i durable; 0: never lost
        self.grows = [False] * (n + 1)  # a write ending past the file's size
        self.descs = [""] * (n + 1)
        self.stdout = [b""] * (n + 1)
        self.stdout_id = [0] * (n + 1)  # equal ids, equal standard output
        roots = base.roots
        names: dict[int, str] = {}
        for path in sorted(base.snapshot.entries, reverse=True):
            names[base.snapshot.entries[path].inode] = path
        self._roots = roots
        state = base.state()
        self._pending: dict[int, list[int]] = {}  # by the inode whose sync covers them
        self._pending_mode: dict[int, list[int]] = {}  # mode changes: fdatasync skips them
        self._uncovered: set[int] = set()
        for i, op in enumerate(ops, 1):
            self.stdout[i] = self.stdout[i - 1]
            self.stdout_id[i] = self.stdout_id[i - 1]
            self.descs[i] = self._describe(op, names)
            if isinstance(op, Output) and op.data:
                self.stdout[i] += op.data
                self.stdout_id[i] += 1
            elif isinstance(op, Create) and not op.named:
                names[op.inode] = "<unnamed file in " + self.show(op.path) + ">"
            self._cover(i, op, state)
            if isinstance(op, Write):
                size = state.size(op.inode)
                end = op.offset + len(op.data)
                self.grows[i] = size is not None and bool(op.data) and end > size
            self._rename_names(state, op, names)
            state.apply(op)

    def _cover(self, i: int, op: Operation, state: State) -> None:
        """Note which barrier makes *op* (number *i*) durable, or what it makes durable."""
        if isinstance(op, Sync):
            tables = (self._pending, self._pending_mode) if op.kind == "fsync" else (self._pending,)
            for table in tables:
                for j in table.pop(op.inode, []):
                    if j in self._uncovered:
                        self.covered[j] = i
                        self._uncovered.discard(j)
        elif isinstance(op, SyncAll):
            for j in self._uncovered:
                self.covered[j] = i
            self._uncovered.clear()
            self._pending.clear()
            self._pending_mode.clear()
        elif isinstance(op, STATEFUL) and not (isinstance(op, Create) and not op.named):
            if isinstance(op, Write) and op.synced:
                self.covered[i] = i
                return
            self._uncovered.add(i)
            self.covered[i] = NEVER
            key: int | None
            if isinstance(op, Write | Truncate | SetMode):
                key = op.inode
            else:
                key = state.parent_inode(op.dst if isinstance(op, Rename) else op.path)
            table = self._pending_mode if isinstance(op, SetMode) else self._pending
            if key is not None:
                table.setdefault(key, []).append(i)

    @staticmethod
    def _rename_names(state: State, op: Operation, names: dict[int, str]) -> None:
        if isinstance(op, Create | Mkdir | Link) and not (isinstance(op, Create) and not op.named):
            names[op.inode] = op.path
        elif isinstance(op, Rename):
            src, dst = state.inode_of(op.src), state.inode_of(op.dst)
            if src is not None:
                names[src] = op.dst
            if op.exchange and dst is not None:
                names[dst] = op.src

    def show(self, path: str) -> str:
        """*path* relative to its root (prefixed by the root's name when there are
        several), or as it is when it is in none."""
        for root in self._roots:
            if path == root or path.startswith(root + "/"):
                rel = os.path.relpath(path, root)
                return rel if len(self._roots) == 1 else os.path.join(os.path.basename(root), rel)
        return path

    def _describe(self, op: Operation, names: dict[int, str]) -> str:  # noqa: PLR0911
        def name(inode: int) -> str:
            return self.show(names.get(inode, f"<inode {inode}>"))

        if isinstance(op, Create):
            return f"create({self.show(op.path)})" if op.named else f"create({name(op.inode)})"
        if isinstance(op, Mkdir | Rmdir | Unlink):
            return f"{type(op).__name__.lower()}({self.show(op.path)})"
        if isinstance(op, Symlink):
            return f"symlink({self.show(op.path)} -> {op.target})"
        if isinstance(op, Link):
            return f"link({name(op.inode)} -> {self.show(op.path)})"
        if isinstance(op, Rename):
            arrow = "<->" if op.exchange else "->"
            return f"rename({self.show(op.src)} {arrow} {self.show(op.dst)})"
        if isinstance(op, Write):
            sync = ", O_SYNC" if op.synced else ""
            return f"write({name(op.inode)}, {op.offset}..{op.offset + len(op.data)}{sync})"
        if isinstance(op, Truncate):
            return f"truncate({name(op.inode)}, {op.size})"
        if isinstance(op, SetMode):
            return f"chmod({name(op.inode)}, {op.mode:o})"
        if isinstance(op, Sync):
            return f"{op.kind}({name(op.inode)})"
        if isinstance(op, SyncAll):
            return "sync()"
        return f"output({op.data[:40]!r})"

    def loseable(self, i: int, k: int) -> bool:
        """Whether operation i may be lost at crash point k."""
        return self.covered[i] > k

    def crash_point(self, k: int) -> CrashPoint:
        if k == 0:
            return CrashPoint(0, "(before the first operation)")
        call = self.ops[k - 1].call
        return CrashPoint(call.index, call.text)
