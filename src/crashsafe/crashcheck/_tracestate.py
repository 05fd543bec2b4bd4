"""The model of the directories, fds and processes that a trace is replayed over.

:class:`~._replay.Model` replays the calls of a trace (read by :mod:`._strace`) over a
model of the directories: which name is which inode (starting from the snapshot's
entries; files, directories and symlinks the run creates get -1, -2, ... in order), each
changed inode's size (its content is the snapshot's copy with the operations so far
replayed over it), which fd of which process is which open file description (its inode,
offset, ``O_APPEND``, ``O_SYNC``/``O_DSYNC``), each process's working directory and
umask. Calls that failed change nothing; calls on paths outside the snapshot's roots
become no operation, but still move offsets and names.

Where the model cannot know a file's content from the trace (``copy_file_range``,
``sendfile`` or a reflink whose source is outside the directories; a file moved or linked
in from outside them), it reads that file as it is when the trace is parsed: right after
the run, for :func:`~._trace.record`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ._ops import Call, Operation, Snapshot, Truncate, Write
from ._strace import AT_FDCWD, Exit, Started, Syscall, fd_arg, int_arg, str_arg

__all__ = ["State"]

# Flags as ``-X raw`` prints them: the values of x86-64 and arm64 Linux.
O_ACCMODE = 0o3
O_CREAT = 0o100
O_TRUNC = 0o1000
O_APPEND = 0o2000
O_DSYNC = 0o10000
O_DIRECTORY = 0o200000
O_CLOEXEC = 0o2000000
O_TMPFILE = 0o20000000  # __O_TMPFILE, without O_DIRECTORY
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
FALLOC_FL_KEEP_SIZE = 0x1
FALLOC_FL_PUNCH_HOLE = 0x2
FALLOC_FL_COLLAPSE_RANGE = 0x8
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_FL_INSERT_RANGE = 0x20
RWF_DSYNC = 0x2
RWF_SYNC = 0x4
RWF_APPEND = 0x10
FICLONE = 0x40049409
FICLONERANGE = 0x4020940D
FIONCLEX, FIOCLEX = 0x5450, 0x5451
CLONE_VM = 0x100
CLONE_FS = 0x200
CLONE_FILES = 0x400
PROT_WRITE = 0x2
MAP_TYPE = 0xF
MAP_PRIVATE = 0x2
F_DUPFD, F_SETFD, F_SETFL, F_DUPFD_CLOEXEC = 0, 2, 4, 1030
CLOSE_RANGE_UNSHARE, CLOSE_RANGE_CLOEXEC = 0x2, 0x4

PROC_FD = re.compile(r"^/proc/(?:self|thread-self|\d+)(?:/task/\d+)?/fd/(\d+)$")
_FLAGS_FIELD = re.compile(r"flags=([0-9a-fA-Fx|]+)")
FIELD = re.compile(r"(\w+)=(-?(?:0x[0-9a-fA-F]+|\d+))")


@dataclass
class Node:
    kind: str  # "file", "dir", "symlink", "other"
    inode: int
    target: str = ""


@dataclass
class Desc:
    """An open file description: shared by dup'd fds and by a forked child's fds."""

    path: str | None  # where it was opened (the kernel's name for it), None if not known
    inode: int | None  # None: not a file or directory under the roots
    offset: int = 0
    append: bool = False
    sync: bool = False


@dataclass
class Files:
    fds: dict[int, Desc] = field(default_factory=dict)
    cloexec: set[int] = field(default_factory=set)


@dataclass
class Fs:
    cwd: str
    umask: int


@dataclass
class Maps:
    """A process's shared maps of files under the roots that are not writable (yet):
    ``(start, end, path)``; an ``mprotect`` that makes one writable is refused."""

    shared: list[tuple[int, int, str]] = field(default_factory=list)

    def drop(self, start: int, end: int) -> None:
        self.shared = [m for m in self.shared if m[1] <= start or m[0] >= end]

    def within(self, start: int, end: int) -> list[str]:
        return [m[2] for m in self.shared if m[0] < end and start < m[1]]


@dataclass
class Proc:
    files: Files
    fs: Fs
    maps: Maps = field(default_factory=Maps)


class State:
    """The model, and what every kind of call needs of it; the calls themselves are in
    :mod:`._names` and :mod:`._replay`."""

    def __init__(self, snapshot: Snapshot, cwd: str, umask: int, stdout_id: str | None):
        self.snapshot = snapshot
        self.stdout_id = stdout_id
        self.ignore_mmap: list[str] = []
        self.names: dict[str, Node] = {}
        self.origin: dict[int, str] = {}  # a pre-existing inode's path in the snapshot
        self.sizes: dict[int, int] = {}  # the size of each inode the run changed
        for path, entry in snapshot.entries.items():
            self.names[path] = Node(entry.kind, entry.inode, entry.target)
            if entry.kind == "file":
                self.origin.setdefault(entry.inode, path)
        self.next_inode = -1
        self.procs: dict[int, Proc] = {}
        self.cloning: dict[int, int] = {}  # pid -> clone flags of its unfinished clone
        self.early: set[int] = set()  # children that acted before their clone returned
        self.first = Proc(Files(), Fs(cwd, umask))
        self.root: int | None = None
        self.status = 0
        self.count = 0
        self.ops: list[Operation] = []
        self.refused: list[str] = []
        self.later_modes: list[tuple[int, int]] = []  # (index in ops, inode)
        self.current: Syscall | None = None  # the call being replayed
        self.made: Call | None = None  # its Call, made when first needed
        self.proc = self.first

    # ---- the model ---------------------------------------------------------------

    @property
    def call(self) -> Call:
        """The :class:`~._ops.Call` of the call being replayed (its text is made only for
        calls that give an operation or a refusal)."""
        if self.made is None:
            assert self.current is not None
            self.made = Call(self.count, self.current.pid, self.current.text())
        return self.made

    def new_inode(self) -> int:
        inode = self.next_inode
        self.next_inode -= 1
        self.sizes[inode] = 0
        return inode

    def size(self, inode: int) -> int:
        """The size of *inode* as the run has left it so far."""
        if inode not in self.sizes:
            origin = self.origin.get(inode)
            try:
                self.sizes[inode] = os.stat(self.snapshot.source(origin)).st_size if origin else 0
            except OSError:
                self.sizes[inode] = 0
        return self.sizes[inode]

    def data(self, inode: int) -> bytes:
        """The content of *inode* as the run has left it so far: its content before the
        run with the operations so far replayed over it. Only copies need it, so it is
        not kept (the operations hold the data already)."""
        content = bytearray()
        if (origin := self.origin.get(inode)) is not None:
            try:
                with open(self.snapshot.source(origin), "rb") as f:
                    content[:] = f.read()
            except OSError:
                pass
        for op in self.ops:
            if isinstance(op, Write) and op.inode == inode:
                put(content, op.offset, op.data)
            elif isinstance(op, Truncate) and op.inode == inode:
                del content[op.size :]
                content.extend(bytes(op.size - len(content)))
        return bytes(content)

    def node(self, path: str, kind: str = "file") -> Node | None:
        """The node at *path* under the roots (one the model missed is made up now, with
        a new inode); None outside them."""
        if not self.snapshot.inside(path):
            return None
        node = self.names.get(path)
        if node is None:
            node = self.names[path] = Node(kind, self.new_inode())
        return node

    def move(self, src: str, dst: str) -> None:
        moved = {p: n for p, n in self.names.items() if p == src or p.startswith(src + "/")}
        for p in moved:
            del self.names[p]
        for p, n in moved.items():
            self.names[dst + p[len(src) :]] = n

    def resolve(self, path: str, follow: bool) -> str:
        """*path* (absolute, normalised) with the symlinks the model knows resolved (the
        last component's only if *follow*)."""
        for _ in range(40):
            parts = [p for p in path.split("/") if p]
            cur = ""
            for i, part in enumerate(parts):
                nxt = cur + "/" + part
                node = self.names.get(nxt)
                if node is not None and node.kind == "symlink" and (follow or i < len(parts) - 1):
                    base = os.path.join(cur or "/", node.target)
                    path = os.path.normpath(os.path.join(base, *parts[i + 1 :]))
                    break
                cur = nxt
            else:
                return path
        return path

    def path(self, dirfd: str | None, arg: str, follow: bool = False) -> str | None:
        """The absolute path a path argument names, relative to *dirfd* (an fd argument,
        or None for the working directory)."""
        name = str_arg(arg)
        if name is None:
            return None
        base = self.proc.fs.cwd
        if dirfd is not None and not name.startswith("/"):
            fd = fd_arg(dirfd)
            if fd is not None and fd.fd == AT_FDCWD:
                if fd.path is not None and fd.path.startswith("/"):
                    base = self.proc.fs.cwd = fd.path  # the kernel's own word for it
            elif fd is not None:
                desc = self.proc.files.fds.get(fd.fd)
                known = fd.path if fd.path is not None else desc.path if desc else None
                if known is None or not known.startswith("/"):
                    return None
                base = known
        return self.resolve(os.path.normpath(os.path.join(base, name)), follow)

    def desc(self, arg: str) -> Desc | None:
        """The open file description an fd argument names (one the trace did not show
        being opened, such as an inherited fd, from the path ``-y`` shows)."""
        fd = fd_arg(arg)
        if fd is None or fd.fd < 0:
            return None
        desc = self.proc.files.fds.get(fd.fd)
        if desc is None and fd.path is not None and fd.path.startswith("/"):
            node = None if fd.deleted else self.node(fd.path)
            desc = Desc(fd.path, node.inode if node else None)
            self.proc.files.fds[fd.fd] = desc
        return desc

    def emit(self, op: Operation) -> None:
        self.ops.append(op)

    # ---- events ------------------------------------------------------------------

    def event(self, event: Syscall | Exit | Started) -> None:
        if isinstance(event, Started):
            self.process(event.pid)
            if event.name in ("clone", "clone3", "fork", "vfork"):
                self.cloning[event.pid] = clone_flags(event.name, [event.args])
            return
        if isinstance(event, Exit):
            if event.pid == self.root:
                self.status = event.status
            self.procs.pop(event.pid, None)  # its pid may be handed out again
            return
        proc = self.process(event.pid)
        self.count += 1
        self.proc = proc
        self.current, self.made = event, None
        if not event.ok:
            self.cloning.pop(event.pid, None)
            return
        handler = getattr(self, "on_" + event.name, None)
        if handler is not None:
            handler(event, event.args, event.result)

    def process(self, pid: int) -> Proc:
        proc = self.procs.get(pid)
        if proc is not None:
            return proc
        if self.root is None:
            self.root = pid
            proc = self.first
        elif self.cloning:
            # a child that acted before its parent's clone returned: the parent is one
            # whose clone has not returned (the latest, if several)
            parent = next(reversed(self.cloning))
            proc = child_of(self.procs[parent], self.cloning[parent])
            self.early.add(pid)
        else:  # a thread that was there before the trace began
            proc = child_of(self.first, CLONE_FILES | CLONE_FS)
        self.procs[pid] = proc
        return proc


def int_at(args: list[str], i: int) -> int:
    return (int_arg(args[i]) or 0) if i < len(args) else 0


def put(content: bytearray, offset: int, data: bytes) -> None:
    if offset > len(content):
        content.extend(bytes(offset - len(content)))
    content[offset : offset + len(data)] = data


def size_of(desc: Desc) -> int:
    try:
        return os.stat(desc.path or "").st_size
    except OSError:
        return 0


def clone_flags(name: str, args: list[str]) -> int:
    if name in ("fork", "vfork"):
        return 0
    m = _FLAGS_FIELD.search(" ".join(args))
    return (int_arg(m.group(1)) or 0) if m else 0


def child_of(parent: Proc, flags: int) -> Proc:
    files = parent.files
    if not flags & CLONE_FILES:
        files = Files(dict(files.fds), set(files.cloexec))
    fs = parent.fs if flags & CLONE_FS else Fs(parent.fs.cwd, parent.fs.umask)
    maps = parent.maps if flags & CLONE_VM else Maps(list(parent.maps.shared))
    return Proc(files, fs, maps)
