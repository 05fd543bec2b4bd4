"""An abstract filesystem: the directories before the run, with a chosen subset of the
run's operations replayed over them.

A :class:`Base` is built once from a :class:`~._ops.Snapshot`; each :meth:`Base.state`
is a fresh copy-on-write view of it to replay operations into. The model:

- names map to inodes; a directory is an inode holding ``name -> entry``; a regular file
  is an inode holding bytes and a mode; a symlink is an entry holding its target;
- a :class:`~._ops.Write` or :class:`~._ops.Truncate` applies to the inode whatever its
  names; an inode with no name under a root is invisible;
- an operation that cannot apply because of what was skipped before it is a no-op: a
  rename whose source is missing, an entry in a directory that does not exist, a write to
  an inode the model does not know (outside the roots). A name created over an existing
  one replaces it (the later operation persisted);
- a skipped :class:`~._ops.Create` or :class:`~._ops.Mkdir` still makes its inode, only
  not the name: its data can reach a root through a later link;
- rename is atomic; ``exchange`` swaps the two entries.

Paths are absolute and resolved (as in :mod:`._ops`); they are walked from ``/`` through
the directories known to the model, so a path outside the roots reaches nothing unless it
lies in a root's ancestor (kept as a synthetic directory that is never materialised).

Contents of files that existed before the run are read lazily from
:meth:`Snapshot.source` the first time an operation changes them, once per :class:`Base`.
Nothing here is thread-safe while a state is being replayed; a replayed state is only
read afterwards (:meth:`State.fingerprint`, :meth:`State.materialise`), which threads may
do at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass

from ._ops import (
    Create,
    Link,
    Mkdir,
    Operation,
    Output,
    Rename,
    Rmdir,
    SetMode,
    Snapshot,
    Symlink,
    Sync,
    SyncAll,
    Truncate,
    Unlink,
    Write,
)

__all__ = ["BLOCK", "GARBAGE", "KEEP", "Base", "State", "pieces"]

BLOCK = 4096
"""A write may persist in part, split at multiples of this many bytes of file offset."""

GARBAGE = 0xA5
"""The byte an appending write may leave where its data did not land (non-zero)."""

KEEP = 1 << 20
"""Files from before the run up to this size are kept in memory once read."""

# An entry in a directory: ("f", inode), ("d", inode) or ("l", symlink target).
Entry = tuple[str, int | str]

_TOP = -(1 << 62)  # the synthetic "/" and the roots' ancestors: never a real inode


def _digest(data: bytes | bytearray = b"") -> hashlib.blake2b:
    return hashlib.blake2b(data, digest_size=20)


def pieces(offset: int, length: int) -> list[tuple[int, int]]:
    """The pieces ``(start, end)`` a write of *length* bytes at *offset* may persist as:
    split at every multiple of :data:`BLOCK` of the file offset."""
    out: list[tuple[int, int]] = []
    start, end = offset, offset + length
    while start < end:
        cut = min(end, (start // BLOCK + 1) * BLOCK)
        out.append((start, cut))
        start = cut
    return out


@dataclass
class _File:
    mode: int
    source: str | None = None  # unchanged content from before the run, kept here
    data: bytearray | None = None
    digest: bytes | None = None  # of data, once a replayed state is fingerprinted


class Base:
    """The directories before the run (*snapshot*), to replay operations over."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.roots = list(snapshot.roots)
        self._dirs: dict[int, dict[str, Entry]] = {_TOP: {}}
        self._modes: dict[int, int] = {}
        self._files: dict[int, _File] = {}
        self._contents: dict[str, bytes] = {}
        synthetic: dict[str, int] = {"/": _TOP}
        for root in self.roots:  # the roots' ancestors, so that walks from "/" reach them
            parts = root.strip("/").split("/")
            for depth in range(1, len(parts)):
                path = "/" + "/".join(parts[:depth])
                if path not in synthetic:
                    synthetic[path] = _TOP - len(synthetic)
                    parent = synthetic[os.path.dirname(path)]
                    self._dirs[parent][parts[depth - 1]] = ("d", synthetic[path])
                    self._dirs[synthetic[path]] = {}
        for path in sorted(snapshot.entries):
            entry = snapshot.entries[path]
            if path in self.roots:
                parent = synthetic[os.path.dirname(path)]
            else:
                parent_entry = snapshot.entries[os.path.dirname(path)]
                parent = parent_entry.inode
            name = os.path.basename(path)
            if entry.kind == "dir":
                self._dirs[parent][name] = ("d", entry.inode)
                self._dirs[entry.inode] = {}
                self._modes[entry.inode] = entry.mode
            elif entry.kind == "symlink":
                self._dirs[parent][name] = ("l", entry.target)
            else:
                self._dirs[parent][name] = ("f", entry.inode)
                if entry.inode not in self._files:
                    self._files[entry.inode] = _File(entry.mode, snapshot.source(path))

    def content(self, source: str) -> bytes:
        """The bytes of an unchanged file from before the run (read once)."""
        data = self._contents.get(source)
        if data is None:
            with open(source, "rb") as f:
                data = f.read()
            self._contents[source] = data
        return data

    def small_content(self, source: str) -> bytes | None:
        """The bytes of an unchanged file from before the run if it is at most
        :data:`KEEP` bytes (read once and kept, to materialise states fast), else None."""
        if source not in self._contents:
            if os.stat(source).st_size > KEEP:
                return None
            return self.content(source)
        return self._contents[source]

    def state(self) -> State:
        """A fresh state: the directories as they were before the run."""
        return State(self)


class State:
    """The base with operations replayed over it (see the module's docstring)."""

    def __init__(self, base: Base) -> None:
        self._base = base
        self._dirs = dict(base._dirs)  # inner dicts shared until a change copies them
        self._own_dirs: set[int] = set()
        self._modes = dict(base._modes)
        self._files: dict[int, _File] = {}  # changed or new files; others are the base's

    # -- lookups --------------------------------------------------------------------

    def _locate(self, path: str) -> tuple[int, str] | None:
        """The directory inode holding *path*'s name and the name, if the directory
        exists in this state."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return None
        inode = _TOP
        for part in parts[:-1]:
            entry = self._dirs[inode].get(part)
            if entry is None or entry[0] != "d":
                return None
            inode = int(entry[1])
        return inode, parts[-1]

    def lookup(self, path: str) -> Entry | None:
        """The entry named *path*, or None."""
        where = self._locate(path)
        return None if where is None else self._dirs[where[0]].get(where[1])

    def parent_inode(self, path: str) -> int | None:
        """The inode of the directory that holds *path*'s name, if it exists."""
        where = self._locate(path)
        return None if where is None else where[0]

    def inode_of(self, path: str) -> int | None:
        """The file or directory inode named *path*, or None."""
        entry = self.lookup(path)
        return None if entry is None or entry[0] == "l" else int(entry[1])

    def _file(self, inode: int) -> _File | None:
        return self._files.get(inode) or self._base._files.get(inode)

    def _file_for_change(self, inode: int) -> _File | None:
        f = self._files.get(inode)
        if f is not None:
            f.digest = None  # about to change
            return f
        b = self._base._files.get(inode)
        if b is None:
            return None
        assert b.source is not None
        f = _File(b.mode, data=bytearray(self._base.content(b.source)))
        self._files[inode] = f
        return f

    def _dir_for_change(self, inode: int) -> dict[str, Entry]:
        if inode not in self._own_dirs:
            self._dirs[inode] = dict(self._dirs[inode])
            self._own_dirs.add(inode)
        return self._dirs[inode]

    def _put(self, path: str, entry: Entry) -> None:
        where = self._locate(path)
        if where is not None:
            self._dir_for_change(where[0])[where[1]] = entry

    def _remove(self, path: str, kinds: str) -> None:
        where = self._locate(path)
        if where is not None:
            entry = self._dirs[where[0]].get(where[1])
            if entry is not None and entry[0] in kinds:
                del self._dir_for_change(where[0])[where[1]]

    def size(self, inode: int) -> int | None:
        """The size of file *inode*, or None if the model does not know it."""
        f = self._file(inode)
        if f is None:
            return None
        if f.data is None:
            assert f.source is not None
            return len(self._base.content(f.source))
        return len(f.data)

    def clone(self) -> State:
        """An independent copy of this state, to replay further into."""
        other = State.__new__(State)
        other._base = self._base
        other._dirs = dict(self._dirs)
        self._own_dirs = set()  # both copy a directory before changing it from now on
        other._own_dirs = set()
        other._modes = dict(self._modes)
        other._files = {
            i: _File(f.mode, f.source, None if f.data is None else bytearray(f.data))
            for i, f in self._files.items()
        }
        return other

    # -- replay ---------------------------------------------------------------------

    def make_inode(self, op: Create | Mkdir) -> None:
        """The inode of *op* without its name (its create was not persisted)."""
        if isinstance(op, Create):
            self._files[op.inode] = _File(op.mode, data=bytearray())
        else:
            self._dirs[op.inode] = {}
            self._own_dirs.add(op.inode)
            self._modes[op.inode] = op.mode

    def apply(self, op: Operation) -> None:  # noqa: PLR0912 -- one branch per operation
        """Replay *op* whole over this state."""
        if isinstance(op, Create):
            self.make_inode(op)
            if op.named:
                self._put(op.path, ("f", op.inode))
        elif isinstance(op, Mkdir):
            self.make_inode(op)
            self._put(op.path, ("d", op.inode))
        elif isinstance(op, Symlink):
            self._put(op.path, ("l", op.target))
        elif isinstance(op, Link):
            if self._file(op.inode) is not None:
                self._put(op.path, ("f", op.inode))
        elif isinstance(op, Unlink):
            self._remove(op.path, "fl")
        elif isinstance(op, Rmdir):
            self._remove(op.path, "d")
        elif isinstance(op, Rename):
            self._rename(op)
        elif isinstance(op, Write):
            self.write(op, [(op.offset, op.offset + len(op.data))], None)
        elif isinstance(op, Truncate):
            f = self._file_for_change(op.inode)
            if f is not None and f.data is not None:
                self._resize(f.data, op.size)
        elif isinstance(op, SetMode):
            if op.inode in self._modes:
                self._modes[op.inode] = op.mode
            else:
                f = self._file_for_change(op.inode)
                if f is not None:
                    f.mode = op.mode
        else:
            assert isinstance(op, Sync | SyncAll | Output)

    def _rename(self, op: Rename) -> None:
        src, dst = self._locate(op.src), self._locate(op.dst)
        if src is None or dst is None or src == dst:
            return
        entry = self._dirs[src[0]].get(src[1])
        if entry is None:
            return
        if entry[0] == "d" and (op.dst + "/").startswith(op.src.rstrip("/") + "/"):
            return  # a directory into itself: the kernel refuses it
        if entry[0] == "f" and self._dirs[dst[0]].get(dst[1]) == entry:
            return  # two names of one file: rename does nothing (POSIX)
        if op.exchange:
            other = self._dirs[dst[0]].get(dst[1])
            if other is None:
                return
            self._dir_for_change(src[0])[src[1]] = other
        else:
            del self._dir_for_change(src[0])[src[1]]
        self._dir_for_change(dst[0])[dst[1]] = entry

    @staticmethod
    def _resize(data: bytearray, size: int) -> None:
        if size < len(data):
            del data[size:]
        else:
            data.extend(bytes(size - len(data)))

    def write(self, op: Write, landed: list[tuple[int, int]], fill: str | None) -> None:
        """Replay *op* in part: only the byte ranges *landed* of its data. With *fill*
        ``"zeros"`` or ``"garbage"`` the file also takes the size the write gave it, the
        space it added that no landed piece covers holding zeros or :data:`GARBAGE`."""
        if not op.data:
            return  # a write of nothing changes nothing, not even the size
        f = self._file_for_change(op.inode)
        if f is None or f.data is None:
            return
        data = f.data
        end = op.offset + len(op.data)
        if fill is not None and end > len(data):
            start = len(data)
            self._resize(data, end)
            if fill == "garbage":
                data[start:end] = bytes([GARBAGE]) * (end - start)
        for start, stop in landed:
            if stop > len(data):
                self._resize(data, stop)
            data[start:stop] = op.data[start - op.offset : stop - op.offset]

    # -- reading a replayed state -------------------------------------------------------

    def _walk(self, inode: int, prefix: str) -> list[tuple[str, Entry]]:
        out: list[tuple[str, Entry]] = []
        for name in sorted(self._dirs[inode]):
            entry = self._dirs[inode][name]
            out.append((prefix + name, entry))
            if entry[0] == "d":
                out.extend(self._walk(int(entry[1]), prefix + name + "/"))
        return out

    def tree(self, root: int) -> list[tuple[str, Entry]]:
        """Every entry under root number *root*, by path relative to it, parents first;
        empty if the root is missing."""
        entry = self.lookup(self._base.roots[root])
        if entry is None or entry[0] != "d":
            return []
        return self._walk(int(entry[1]), "")

    def fingerprint(self) -> bytes:
        """A digest of what this state shows under the roots: equal digests, equal trees
        (names, kinds, modes, contents, symlink targets, which names share an inode)."""
        h = hashlib.blake2b(digest_size=20)
        seen: dict[int, int] = {}
        for i in range(len(self._base.roots)):
            root = self.lookup(self._base.roots[i])
            h.update(b"\0root%d %r\0" % (i, root is not None and root[0] == "d"))
            if root is not None and root[0] == "d":
                h.update(b"%o" % self._modes.get(int(root[1]), 0))
            for path, (kind, value) in self.tree(i):
                h.update(path.encode("utf-8", "surrogateescape") + b"\0" + kind.encode())
                if kind == "l":
                    h.update(str(value).encode("utf-8", "surrogateescape"))
                elif kind == "d":
                    h.update(b"%o" % self._modes.get(int(value), 0))
                else:
                    inode = int(value)
                    h.update(b"#%d" % seen.setdefault(inode, len(seen)))
                    h.update(self._file_token(inode))
                h.update(b"\0")
        return h.digest()

    def _file_token(self, inode: int) -> bytes:
        f = self._file(inode)
        assert f is not None
        if f.digest is None:
            if f.data is None:  # unchanged since before the run: hashed once, not kept
                assert f.source is not None
                with open(f.source, "rb") as source:
                    f.digest = hashlib.file_digest(source, _digest).digest()
            else:
                f.digest = _digest(f.data).digest()
        return b"%o " % f.mode + f.digest

    def materialise(self, dests: list[str]) -> None:
        """Write each root's tree into the fresh directory ``dests[i]`` (created here;
        its parent must exist): directories, files with their content and mode (names
        sharing an inode as hard links), symlinks. Owners and times are not kept."""
        for i, dest in enumerate(dests):
            os.mkdir(dest)
            made: dict[int, str] = {}
            dir_modes: list[tuple[str, int]] = []
            root = self.lookup(self._base.roots[i])
            if root is not None and root[0] == "d":
                dir_modes.append((dest, self._modes.get(int(root[1]), 0o755)))
            for rel, (kind, value) in self.tree(i):
                path = os.path.join(dest, rel)
                if kind == "d":
                    os.mkdir(path)
                    dir_modes.append((path, self._modes.get(int(value), 0o755)))
                elif kind == "l":
                    os.symlink(str(value), path)
                else:
                    self._make_file(int(value), path, made)
            for path, mode in reversed(dir_modes):  # children first: a 0o500 dir last
                os.chmod(path, mode)

    def _make_file(self, inode: int, path: str, made: dict[int, str]) -> None:
        if inode in made:
            os.link(made[inode], path)
            return
        f = self._file(inode)
        assert f is not None
        data: bytes | bytearray | None = f.data
        if data is None:
            assert f.source is not None
            data = self._base.small_content(f.source)
            if data is None:
                shutil.copyfile(f.source, path)
                os.chmod(path, f.mode)
                made[inode] = path
                return
        # One open and one write: states are made by the thousand.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.chmod(fd, f.mode)
        finally:
            os.close(fd)
        made[inode] = path
