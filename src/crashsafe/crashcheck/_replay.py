"""Replaying the system calls of a trace into crashcheck's operations.

:class:`Model` replays the calls of a trace (read by :mod:`._strace`) over a model of the
directories: which name is which inode (starting from the snapshot's entries; files the
run creates get -1, -2, ... in order), what each inode holds (starting from the snapshot's
copy), which fd of which process is which open file description (its inode, offset,
``O_APPEND``, ``O_SYNC``/``O_DSYNC``), each process's working directory and umask. Calls
that failed change nothing; calls on paths outside the snapshot's roots become no
operation, but still move offsets and names.

Where the model cannot know a file's content from the trace (``copy_file_range``,
``sendfile`` or a reflink whose source is outside the directories; a file moved or linked
in from outside them), it reads that file as it is when the trace is parsed: right after
the run, for :func:`~._trace.record`.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from typing import Literal

from ._ops import (
    Call,
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
from ._strace import AT_FDCWD, Exit, Started, Syscall, fd_arg, int_arg, str_arg

__all__ = ["Model"]

# open flags, x86-64 and arm64 values (as -X raw prints them)
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
CLONE_FS = 0x200
CLONE_FILES = 0x400
PROT_WRITE = 0x2
MAP_TYPE = 0xF
MAP_PRIVATE = 0x2
F_DUPFD, F_SETFD, F_SETFL, F_DUPFD_CLOEXEC = 0, 2, 4, 1030
CLOSE_RANGE_UNSHARE, CLOSE_RANGE_CLOEXEC = 0x2, 0x4

_PROC_FD = re.compile(r"^/proc/(?:self|thread-self|\d+)(?:/task/\d+)?/fd/(\d+)$")
_FLAGS_FIELD = re.compile(r"flags=([0-9a-fA-Fx|]+)")
_FIELD = re.compile(r"(\w+)=(-?(?:0x[0-9a-fA-F]+|\d+))")


@dataclass
class _Node:
    kind: str  # "file", "dir", "symlink", "other"
    inode: int
    target: str = ""


@dataclass
class _Desc:
    """An open file description: shared by dup'd fds and by a forked child's fds."""

    path: str | None  # where it was opened (the kernel's name for it), None if not known
    inode: int | None  # None: not a file or directory under the roots
    offset: int = 0
    append: bool = False
    sync: bool = False


@dataclass
class _Files:
    fds: dict[int, _Desc] = field(default_factory=dict)
    cloexec: set[int] = field(default_factory=set)


@dataclass
class _Fs:
    cwd: str
    umask: int


@dataclass
class _Proc:
    files: _Files
    fs: _Fs


class Model:
    def __init__(self, snapshot: Snapshot, cwd: str, umask: int, stdout_id: str | None):
        self.snapshot = snapshot
        self.stdout_id = stdout_id
        self.ignore_mmap: list[str] = []
        self.names: dict[str, _Node] = {}
        self.origin: dict[int, str] = {}  # a pre-existing inode's path in the snapshot
        self.content: dict[int, bytearray] = {}
        for path, entry in snapshot.entries.items():
            self.names[path] = _Node(entry.kind, entry.inode, entry.target)
            if entry.kind == "file":
                self.origin.setdefault(entry.inode, path)
        self.next_inode = -1
        self.procs: dict[int, _Proc] = {}
        self.cloning: dict[int, int] = {}  # pid -> clone flags of its unfinished clone
        self.first = _Proc(_Files(), _Fs(cwd, umask))
        self.root: int | None = None
        self.status = 0
        self.count = 0
        self.ops: list[Operation] = []
        self.refused: list[str] = []
        self.call: Call = Call(0, 0, "")
        self.proc = self.first

    # ---- the model ---------------------------------------------------------------

    def new_inode(self) -> int:
        inode = self.next_inode
        self.next_inode -= 1
        self.content[inode] = bytearray()
        return inode

    def data(self, inode: int) -> bytearray:
        """The content of *inode* as the run has left it so far."""
        if inode not in self.content:
            origin = self.origin.get(inode)
            base = b""
            if origin is not None:
                try:
                    with open(self.snapshot.source(origin), "rb") as f:
                        base = f.read()
                except OSError:
                    base = b""
            self.content[inode] = bytearray(base)
        return self.content[inode]

    def node(self, path: str, kind: str = "file") -> _Node | None:
        """The node at *path* under the roots (one the model missed is made up now, with
        a new inode); None outside them."""
        if not self.snapshot.inside(path):
            return None
        node = self.names.get(path)
        if node is None:
            node = self.names[path] = _Node(kind, self.new_inode())
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

    def desc(self, arg: str) -> _Desc | None:
        """The open file description an fd argument names (one the trace did not show
        being opened, such as an inherited fd, from the path ``-y`` shows)."""
        fd = fd_arg(arg)
        if fd is None or fd.fd < 0:
            return None
        desc = self.proc.files.fds.get(fd.fd)
        if desc is None and fd.path is not None and fd.path.startswith("/"):
            node = None if fd.deleted else self.node(fd.path)
            desc = _Desc(fd.path, node.inode if node else None)
            self.proc.files.fds[fd.fd] = desc
        return desc

    def emit(self, op: Operation) -> None:
        self.ops.append(op)

    # ---- events ------------------------------------------------------------------

    def event(self, event: Syscall | Exit | Started) -> None:
        if isinstance(event, Started):
            self.process(event.pid)
            if event.name in ("clone", "clone3", "fork", "vfork"):
                self.cloning[event.pid] = _clone_flags(event.name, [event.args])
            return
        proc = self.process(event.pid)
        if isinstance(event, Exit):
            if event.pid == self.root:
                self.status = event.status
            return
        self.count += 1
        self.proc = proc
        self.call = Call(self.count, event.pid, event.text())
        if not event.ok:
            self.cloning.pop(event.pid, None)
            return
        handler = getattr(self, "on_" + event.name, None)
        if handler is not None:
            handler(event, event.args, event.result)

    def process(self, pid: int) -> _Proc:
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
            proc = _child(self.procs[parent], self.cloning[parent])
        else:  # a thread that was there before the trace began
            proc = _child(self.procs[self.root], CLONE_FILES | CLONE_FS)
        self.procs[pid] = proc
        return proc

    # ---- processes ---------------------------------------------------------------

    def on_clone(self, c: Syscall, args: list[str], child: int) -> None:
        flags = self.cloning.pop(c.pid, None)
        if flags is None:
            flags = _clone_flags(c.name, args)
        if child not in self.procs:
            self.procs[child] = _child(self.proc, flags)

    on_clone3 = on_fork = on_vfork = on_clone

    def on_execve(self, c: Syscall, args: list[str], result: int) -> None:
        files = self.proc.files
        for fd in files.cloexec:
            files.fds.pop(fd, None)
        files.cloexec.clear()

    on_execveat = on_execve

    def on_chdir(self, c: Syscall, args: list[str], result: int) -> None:
        path = self.path(None, args[0], follow=True)
        if path is not None:
            self.proc.fs.cwd = path if self.snapshot.inside(path) else os.path.realpath(path)

    def on_fchdir(self, c: Syscall, args: list[str], result: int) -> None:
        fd = fd_arg(args[0])
        desc = self.desc(args[0])
        path = fd.path if fd is not None and fd.path else desc.path if desc else None
        if path is not None:
            self.proc.fs.cwd = path

    def on_umask(self, c: Syscall, args: list[str], result: int) -> None:
        self.proc.fs.umask = int_arg(args[0]) or 0

    # ---- fds ---------------------------------------------------------------------

    def open(self, c: Syscall, dirfd: str | None, arg: str, flags: int, mode: int) -> None:
        path = self.path(dirfd, arg, follow=True)
        fd = c.result
        assert fd is not None
        self.proc.files.fds.pop(fd, None)
        self.proc.files.cloexec.discard(fd)
        if flags & O_CLOEXEC:
            self.proc.files.cloexec.add(fd)
        append, sync = bool(flags & O_APPEND), bool(flags & O_DSYNC)
        if flags & O_TMPFILE and path is not None:
            inside = self.snapshot.inside(path)
            inode = self.new_inode() if inside else None
            if inode is not None:
                perm = mode & ~self.proc.fs.umask & 0o7777
                self.emit(Create(self.call, path, inode, perm, named=False))
            self.proc.files.fds[fd] = _Desc(c.ret_path, inode, 0, append, sync)
            return
        if c.ret_path is not None and c.ret_path.startswith("/"):
            path = c.ret_path  # the kernel's name for what it opened: no symlink left
        if path is None or not self.snapshot.inside(path):
            self.proc.files.fds[fd] = _Desc(path, None, 0, append, sync)
            return
        node = self.names.get(path)
        if node is None and flags & O_CREAT:
            node = self.names[path] = _Node("file", self.new_inode())
            perm = mode & ~self.proc.fs.umask & 0o7777
            self.emit(Create(self.call, path, node.inode, perm))
        elif node is None:
            node = self.node(path, "dir" if flags & O_DIRECTORY else "file")
            assert node is not None
        elif flags & O_TRUNC and flags & O_ACCMODE and self.data(node.inode):
            self.data(node.inode).clear()
            self.emit(Truncate(self.call, node.inode, 0))
        self.proc.files.fds[fd] = _Desc(path, node.inode, 0, append, sync)

    def on_open(self, c: Syscall, args: list[str], result: int) -> None:
        self.open(c, None, args[0], int_arg(args[1]) or 0, _int(args, 2))

    def on_creat(self, c: Syscall, args: list[str], result: int) -> None:
        self.open(c, None, args[0], O_CREAT | O_TRUNC | 1, _int(args, 1))

    def on_openat(self, c: Syscall, args: list[str], result: int) -> None:
        self.open(c, args[0], args[1], int_arg(args[2]) or 0, _int(args, 3))

    def on_openat2(self, c: Syscall, args: list[str], result: int) -> None:
        fields = dict(_FIELD.findall(args[2]))
        flags = int_arg(fields.get("flags", "0")) or 0
        self.open(c, args[0], args[1], flags, int_arg(fields.get("mode", "0")) or 0)

    def on_close(self, c: Syscall, args: list[str], result: int) -> None:
        fd = fd_arg(args[0])
        if fd is not None:
            self.proc.files.fds.pop(fd.fd, None)
            self.proc.files.cloexec.discard(fd.fd)

    def on_close_range(self, c: Syscall, args: list[str], result: int) -> None:
        first, last, flags = _int(args, 0), _int(args, 1), _int(args, 2)
        if flags & CLOSE_RANGE_UNSHARE:
            self.proc.files = _Files(dict(self.proc.files.fds), set(self.proc.files.cloexec))
        for fd in [fd for fd in self.proc.files.fds if first <= fd <= last]:
            if flags & CLOSE_RANGE_CLOEXEC:
                self.proc.files.cloexec.add(fd)
            else:
                self.proc.files.fds.pop(fd)
                self.proc.files.cloexec.discard(fd)

    def dup(self, old: str, new: int, cloexec: bool) -> None:
        desc = self.desc(old)
        files = self.proc.files
        files.cloexec.discard(new)
        if desc is None:
            files.fds.pop(new, None)
            return
        files.fds[new] = desc
        if cloexec:
            files.cloexec.add(new)

    def on_dup(self, c: Syscall, args: list[str], result: int) -> None:
        self.dup(args[0], result, False)

    def on_dup2(self, c: Syscall, args: list[str], result: int) -> None:
        self.dup(args[0], result, False)

    def on_dup3(self, c: Syscall, args: list[str], result: int) -> None:
        self.dup(args[0], result, bool(_int(args, 2) & O_CLOEXEC))

    def on_fcntl(self, c: Syscall, args: list[str], result: int) -> None:
        cmd = _int(args, 1)
        if cmd in (F_DUPFD, F_DUPFD_CLOEXEC):
            self.dup(args[0], result, cmd == F_DUPFD_CLOEXEC)
        elif cmd == F_SETFL and (desc := self.desc(args[0])) is not None:
            desc.append = bool(_int(args, 2) & O_APPEND)
        elif cmd == F_SETFD and (fd := fd_arg(args[0])) is not None:
            if _int(args, 2) & 1:
                self.proc.files.cloexec.add(fd.fd)
            else:
                self.proc.files.cloexec.discard(fd.fd)

    on_fcntl64 = on_fcntl

    def on_lseek(self, c: Syscall, args: list[str], result: int) -> None:
        if (desc := self.desc(args[0])) is not None:
            desc.offset = result

    def on_read(self, c: Syscall, args: list[str], result: int) -> None:
        if (desc := self.desc(args[0])) is not None:
            desc.offset += result

    on_readv = on_read

    def on_mmap(self, c: Syscall, args: list[str], result: int) -> None:
        prot, flags = _int(args, 2), _int(args, 3)
        if not prot & PROT_WRITE or flags & MAP_TYPE == MAP_PRIVATE:
            return
        desc = self.desc(args[4]) if len(args) > 4 else None
        if desc is None or desc.inode is None or desc.path is None:
            return
        root = next(r for r in self.snapshot.roots if self.snapshot.inside(desc.path))
        relative = os.path.relpath(desc.path, root)
        base = os.path.basename(desc.path)
        if any(fnmatch.fnmatch(n, p) for p in self.ignore_mmap for n in (relative, base)):
            return
        self.refused.append(
            f"{desc.path} is mapped writable and shared ({self.call.text}, call "
            f"{self.call.index}): writes through the map are invisible to a syscall trace "
            f"(give --ignore-mmap for a file that is rebuilt after a crash)"
        )

    # ---- data --------------------------------------------------------------------

    def write(
        self, fdarg: str, data: bytes, at: int | None, *, append: bool = False, sync: bool = False
    ) -> None:
        """*data* written through *fdarg* at *at* (None: at the fd's offset, moving it)."""
        fd = fd_arg(fdarg)
        desc = self.desc(fdarg)
        if fd is not None and fd.fd == 1 and self.is_stdout(fd.path, desc):
            self.emit(Output(self.call, data))
            return
        if desc is None:
            return
        if desc.inode is None:
            if at is None:
                desc.offset += len(data)
            return
        content = self.data(desc.inode)
        size = len(content)
        append = append or desc.append
        offset = size if append else desc.offset if at is None else at
        synced = sync or desc.sync
        self.emit(Write(self.call, desc.inode, offset, data, synced, append or offset >= size))
        _put(content, offset, data)
        if at is None:
            desc.offset = offset + len(data)

    def is_stdout(self, path: str | None, desc: _Desc | None) -> bool:
        if self.stdout_id is not None:
            return path == self.stdout_id
        return desc is None or desc.inode is None

    def written(self, c: Syscall, n: int) -> bytes:
        if len(c.data) < n:
            self.refused.append(
                f"the trace lacks the data of call {self.call.index} ({self.call.text}): "
                "record with strace -e write=all"
            )
            return c.data + bytes(n - len(c.data))
        return c.data[:n]

    def on_write(self, c: Syscall, args: list[str], result: int) -> None:
        self.write(args[0], self.written(c, result), None)

    on_writev = on_write

    def on_pwrite64(self, c: Syscall, args: list[str], result: int) -> None:
        self.write(args[0], self.written(c, result), _int(args, 3))

    on_pwritev = on_pwrite64

    def on_pwritev2(self, c: Syscall, args: list[str], result: int) -> None:
        at, flags = _int(args, 3), _int(args, 4)
        sync = bool(flags & (RWF_DSYNC | RWF_SYNC))
        data = self.written(c, result)
        self.write(
            args[0], data, None if at == -1 else at, append=bool(flags & RWF_APPEND), sync=sync
        )

    def read_from(self, arg: str, at: int | None, n: int) -> bytes:
        """*n* bytes of the file *arg* names, at *at* (None: at its offset, moving it)."""
        desc = self.desc(arg)
        if desc is None:
            return bytes(n)
        offset = desc.offset if at is None else at
        if at is None:
            desc.offset += n
        if desc.inode is not None:
            chunk = bytes(self.data(desc.inode)[offset : offset + n])
        else:
            try:
                with open(desc.path or "", "rb") as f:
                    f.seek(offset)
                    chunk = f.read(n)
            except OSError:
                chunk = b""
        if len(chunk) < n:
            self.refused.append(
                f"the content call {self.call.index} ({self.call.text}) copied is unknown"
            )
        return chunk.ljust(n, b"\0")

    def on_copy_file_range(self, c: Syscall, args: list[str], result: int) -> None:
        data = self.read_from(args[0], int_arg(args[1]), result)
        self.write(args[2], data, int_arg(args[3]))

    def on_sendfile(self, c: Syscall, args: list[str], result: int) -> None:
        self.write(args[0], self.read_from(args[1], int_arg(args[2]), result), None)

    on_sendfile64 = on_sendfile

    def on_ioctl(self, c: Syscall, args: list[str], result: int) -> None:
        """FICLONE and FICLONERANGE: a write of the bytes cloned (a whole-file clone
        writes the source over the start of the destination, whose tail stays)."""
        request = _int(args, 1)
        if request == FICLONE:
            src, at, n, to = args[2], 0, 0, 0
        elif request == FICLONERANGE:
            f = {k: int_arg(v) or 0 for k, v in _FIELD.findall(args[2])}
            src, at, n, to = str(f.get("src_fd", -1)), f.get("src_offset", 0), 0, 0
            n, to = f.get("src_length", 0), f.get("dest_offset", 0)
        else:
            return
        dst, source = self.desc(args[0]), self.desc(src)
        if dst is None or dst.inode is None or source is None:
            return
        if n == 0:  # up to the source's end
            size = len(self.data(source.inode)) if source.inode is not None else _size(source)
            n = max(0, size - at)
        self.write(args[0], self.read_from(src, at, n), to)

    def truncate(self, inode: int | None, size: int) -> None:
        if inode is None:
            return
        content = self.data(inode)
        if size < len(content):
            del content[size:]
        else:
            content.extend(bytes(size - len(content)))
        self.emit(Truncate(self.call, inode, size))

    def on_ftruncate(self, c: Syscall, args: list[str], result: int) -> None:
        desc = self.desc(args[0])
        self.truncate(desc.inode if desc else None, _int(args, 1))

    def on_truncate(self, c: Syscall, args: list[str], result: int) -> None:
        path = self.path(None, args[0], follow=True)
        node = self.node(path) if path else None
        self.truncate(node.inode if node else None, _int(args, 1))

    def on_fallocate(self, c: Syscall, args: list[str], result: int) -> None:
        desc = self.desc(args[0])
        if desc is None or desc.inode is None:
            return
        mode, offset, length = _int(args, 1), _int(args, 2), _int(args, 3)
        size = len(self.data(desc.inode))
        end = offset + length
        if mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE):
            self.refused.append(
                f"call {self.call.index} ({self.call.text}) shifts data in {desc.path}: "
                "collapse and insert ranges are not modelled"
            )
        elif mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            if mode & FALLOC_FL_KEEP_SIZE:
                end = min(end, size)
            if end > offset:
                self.write(args[0], bytes(end - offset), offset)
        elif not mode & FALLOC_FL_KEEP_SIZE and end > size:
            self.truncate(desc.inode, end)

    # ---- durability --------------------------------------------------------------

    def on_fsync(self, c: Syscall, args: list[str], result: int) -> None:
        desc = self.desc(args[0])
        if desc is not None and desc.inode is not None:
            kind: Literal["fsync", "fdatasync"] = "fdatasync" if c.name == "fdatasync" else "fsync"
            self.emit(Sync(self.call, desc.inode, kind))

    on_fdatasync = on_fsync

    def on_sync(self, c: Syscall, args: list[str], result: int) -> None:
        self.emit(SyncAll(self.call))

    on_syncfs = on_sync

    # ---- names -------------------------------------------------------------------

    def on_rename(self, c: Syscall, args: list[str], result: int) -> None:
        self.rename(self.path(None, args[0]), self.path(None, args[1]), 0)

    def on_renameat(self, c: Syscall, args: list[str], result: int) -> None:
        flags = _int(args, 4) if len(args) > 4 else 0
        self.rename(self.path(args[0], args[1]), self.path(args[2], args[3]), flags)

    on_renameat2 = on_renameat

    def rename(self, src: str | None, dst: str | None, flags: int) -> None:
        if src is None or dst is None:
            return
        if flags & RENAME_WHITEOUT:
            self.refused.append(f"call {self.call.index} ({self.call.text}): RENAME_WHITEOUT")
            return
        inside_src, inside_dst = self.snapshot.inside(src), self.snapshot.inside(dst)
        exchange = bool(flags & RENAME_EXCHANGE)
        moving = self.names.get(src)
        if exchange:
            self.move(src, "\0swap")
            self.move(dst, src)
            self.move("\0swap", dst)
        else:
            for p in [p for p in self.names if p == dst or p.startswith(dst + "/")]:
                del self.names[p]
            self.move(src, dst)
        if inside_src and inside_dst:
            self.emit(Rename(self.call, src, dst, exchange))
        elif inside_src:
            self.emit(Rmdir(self.call, src) if moving and moving.kind == "dir" else
                      Unlink(self.call, src))  # fmt: skip
        elif inside_dst:
            self.arrive(dst)

    def arrive(self, path: str) -> None:
        """A file came into the roots from outside them: its content is read now."""
        node = self.names[path] = _Node("file", self.new_inode())
        if os.path.isdir(path):
            node.kind = "dir"
            self.emit(Mkdir(self.call, path, node.inode, 0o755))
            return
        self.emit(Create(self.call, path, node.inode, 0o644))
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            data = b""
        if data:
            self.content[node.inode] = bytearray(data)
            self.emit(Write(self.call, node.inode, 0, data, False, True))

    def on_link(self, c: Syscall, args: list[str], result: int) -> None:
        self.link(self.path(None, args[0]), None, self.path(None, args[1]))

    def on_linkat(self, c: Syscall, args: list[str], result: int) -> None:
        flags = _int(args, 4)
        new = self.path(args[2], args[3])
        name = str_arg(args[1])
        if flags & AT_EMPTY_PATH and name == "":
            desc = self.desc(args[0])
            self.link(None, desc.inode if desc else None, new)
            return
        if flags & AT_SYMLINK_FOLLOW and name is not None and (m := _PROC_FD.match(name)):
            desc = self.proc.files.fds.get(int(m.group(1)))
            self.link(None, desc.inode if desc else None, new)
            return
        self.link(self.path(args[0], args[1], bool(flags & AT_SYMLINK_FOLLOW)), None, new)

    def link(self, old: str | None, inode: int | None, new: str | None) -> None:
        if new is None:
            return
        if old is not None:
            node = self.node(old)
            inode = node.inode if node else None
        if not self.snapshot.inside(new):
            return
        if inode is None:
            self.arrive(new)
            return
        self.names[new] = _Node("file", inode)
        self.emit(Link(self.call, new, inode))

    def on_symlink(self, c: Syscall, args: list[str], result: int) -> None:
        self.symlink(str_arg(args[0]), self.path(None, args[1]))

    def on_symlinkat(self, c: Syscall, args: list[str], result: int) -> None:
        self.symlink(str_arg(args[0]), self.path(args[1], args[2]))

    def symlink(self, target: str | None, path: str | None) -> None:
        if target is None or path is None or not self.snapshot.inside(path):
            return
        self.names[path] = _Node("symlink", self.new_inode(), target)
        self.emit(Symlink(self.call, path, target))

    def remove(self, path: str | None, directory: bool) -> None:
        if path is None:
            return
        for p in [p for p in self.names if p == path or p.startswith(path + "/")]:
            del self.names[p]
        if self.snapshot.inside(path):
            self.emit(Rmdir(self.call, path) if directory else Unlink(self.call, path))

    def on_unlink(self, c: Syscall, args: list[str], result: int) -> None:
        self.remove(self.path(None, args[0]), False)

    def on_unlinkat(self, c: Syscall, args: list[str], result: int) -> None:
        self.remove(self.path(args[0], args[1]), bool(_int(args, 2) & AT_REMOVEDIR))

    def on_rmdir(self, c: Syscall, args: list[str], result: int) -> None:
        self.remove(self.path(None, args[0]), True)

    def mkdir(self, path: str | None, mode: int) -> None:
        if path is None or not self.snapshot.inside(path):
            return
        node = self.names[path] = _Node("dir", self.new_inode())
        self.emit(Mkdir(self.call, path, node.inode, mode & ~self.proc.fs.umask & 0o7777))

    def on_mkdir(self, c: Syscall, args: list[str], result: int) -> None:
        self.mkdir(self.path(None, args[0]), _int(args, 1))

    def on_mkdirat(self, c: Syscall, args: list[str], result: int) -> None:
        self.mkdir(self.path(args[0], args[1]), _int(args, 2))

    def mknod(self, path: str | None, mode: int) -> None:
        if path is None or not self.snapshot.inside(path) or mode & 0o170000 not in (0, 0o100000):
            return  # devices, fifos and sockets hold no data
        node = self.names[path] = _Node("file", self.new_inode())
        self.emit(Create(self.call, path, node.inode, mode & ~self.proc.fs.umask & 0o7777))

    def on_mknod(self, c: Syscall, args: list[str], result: int) -> None:
        self.mknod(self.path(None, args[0]), _int(args, 1))

    def on_mknodat(self, c: Syscall, args: list[str], result: int) -> None:
        self.mknod(self.path(args[0], args[1]), _int(args, 2))

    def chmod(self, path: str | None, mode: int) -> None:
        node = self.node(path) if path else None
        if node is not None:
            self.emit(SetMode(self.call, node.inode, mode & 0o7777))

    def on_chmod(self, c: Syscall, args: list[str], result: int) -> None:
        self.chmod(self.path(None, args[0], follow=True), _int(args, 1))

    def on_fchmod(self, c: Syscall, args: list[str], result: int) -> None:
        desc = self.desc(args[0])
        if desc is not None and desc.inode is not None:
            self.emit(SetMode(self.call, desc.inode, _int(args, 1) & 0o7777))

    def on_fchmodat(self, c: Syscall, args: list[str], result: int) -> None:
        follow = not (_int(args, 3) & AT_SYMLINK_NOFOLLOW) if len(args) > 3 else True
        self.chmod(self.path(args[0], args[1], follow), _int(args, 2))


def _int(args: list[str], i: int) -> int:
    return (int_arg(args[i]) or 0) if i < len(args) else 0


def _put(content: bytearray, offset: int, data: bytes) -> None:
    if offset > len(content):
        content.extend(bytes(offset - len(content)))
    content[offset : offset + len(data)] = data


def _size(desc: _Desc) -> int:
    try:
        return os.stat(desc.path or "").st_size
    except OSError:
        return 0


def _clone_flags(name: str, args: list[str]) -> int:
    if name in ("fork", "vfork"):
        return 0
    m = _FLAGS_FIELD.search(" ".join(args))
    return (int_arg(m.group(1)) or 0) if m else 0


def _child(parent: _Proc, flags: int) -> _Proc:
    files = parent.files
    if not flags & CLONE_FILES:
        files = _Files(dict(files.fds), set(files.cloexec))
    fs = parent.fs if flags & CLONE_FS else _Fs(parent.fs.cwd, parent.fs.umask)
    return _Proc(files, fs)
