"""Replaying the calls of a trace that start processes, open, move and close fds, write,
copy, truncate and sync, into :mod:`._ops` operations (the names are in :mod:`._names`,
the model in :mod:`._tracestate`).
"""

from __future__ import annotations

import fnmatch
import os
from typing import Literal

from ._names import Names
from ._ops import (
    Create,
    Output,
    Sync,
    SyncAll,
    Truncate,
    Write,
)
from ._strace import Syscall, fd_arg, int_arg
from ._tracestate import (
    CLOSE_RANGE_CLOEXEC,
    CLOSE_RANGE_UNSHARE,
    F_DUPFD,
    F_DUPFD_CLOEXEC,
    F_SETFD,
    F_SETFL,
    FALLOC_FL_COLLAPSE_RANGE,
    FALLOC_FL_INSERT_RANGE,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    FICLONE,
    FICLONERANGE,
    FIELD,
    FIOCLEX,
    FIONCLEX,
    MAP_PRIVATE,
    MAP_TYPE,
    O_APPEND,
    O_CLOEXEC,
    O_CREAT,
    O_DIRECTORY,
    O_DSYNC,
    O_TMPFILE,
    O_TRUNC,
    PROT_WRITE,
    RWF_APPEND,
    RWF_DSYNC,
    RWF_SYNC,
    Desc,
    Files,
    Maps,
    Node,
    child_of,
    clone_flags,
    int_at,
    size_of,
)

__all__ = ["Model"]


class Model(Names):
    """The calls of a trace, replayed one by one with :meth:`~._tracestate.State.event`."""

    # ---- processes ---------------------------------------------------------------

    def on_clone(self, c: Syscall, args: list[str], child: int) -> None:
        flags = self.cloning.pop(c.pid, None)
        if flags is None:
            flags = clone_flags(c.name, args)
        if child not in self.early:
            self.procs[child] = child_of(self.proc, flags)
        self.early.discard(child)

    on_clone3 = on_fork = on_vfork = on_clone

    def on_execve(self, c: Syscall, args: list[str], result: int) -> None:
        # the new program gets a table of its own, without the close-on-exec fds
        files = self.proc.files
        kept = {fd: desc for fd, desc in files.fds.items() if fd not in files.cloexec}
        self.proc.files = Files(kept, set())
        self.proc.maps = Maps()

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
        if flags & O_TMPFILE and path is not None:  # Create(named=False): path = its dir
            inside = self.snapshot.inside(path)
            inode = self.new_inode() if inside else None
            if inode is not None:
                perm = mode & ~self.proc.fs.umask & 0o7777
                self.emit(Create(self.call, path, inode, perm, named=False))
            self.proc.files.fds[fd] = Desc(c.ret_path, inode, 0, append, sync)
            return
        if c.ret_path is not None and c.ret_path.startswith("/"):
            path = c.ret_path  # the kernel's name for what it opened: no symlink left
        if path is None or not self.snapshot.inside(path):
            self.proc.files.fds[fd] = Desc(path, None, 0, append, sync)
            return
        node = self.names.get(path)
        if node is None and flags & O_CREAT:
            node = self.names[path] = Node("file", self.new_inode())
            perm = mode & ~self.proc.fs.umask & 0o7777
            self.emit(Create(self.call, path, node.inode, perm))
        elif node is None:
            node = self.node(path, "dir" if flags & O_DIRECTORY else "file")
            assert node is not None
        elif flags & O_TRUNC and node.kind == "file" and self.size(node.inode):
            self.truncate(node.inode, 0)  # even through O_RDONLY: Linux truncates
        self.proc.files.fds[fd] = Desc(path, node.inode, 0, append, sync)

    def on_open(self, c: Syscall, args: list[str], result: int) -> None:
        self.open(c, None, args[0], int_arg(args[1]) or 0, int_at(args, 2))

    def on_creat(self, c: Syscall, args: list[str], result: int) -> None:
        self.open(c, None, args[0], O_CREAT | O_TRUNC | 1, int_at(args, 1))

    def on_openat(self, c: Syscall, args: list[str], result: int) -> None:
        self.open(c, args[0], args[1], int_arg(args[2]) or 0, int_at(args, 3))

    def on_openat2(self, c: Syscall, args: list[str], result: int) -> None:
        fields = dict(FIELD.findall(args[2]))
        flags = int_arg(fields.get("flags", "0")) or 0
        self.open(c, args[0], args[1], flags, int_arg(fields.get("mode", "0")) or 0)

    def on_close(self, c: Syscall, args: list[str], result: int) -> None:
        fd = fd_arg(args[0])
        if fd is not None:
            self.proc.files.fds.pop(fd.fd, None)
            self.proc.files.cloexec.discard(fd.fd)

    def on_close_range(self, c: Syscall, args: list[str], result: int) -> None:
        first, last, flags = int_at(args, 0), int_at(args, 1), int_at(args, 2)
        if flags & CLOSE_RANGE_UNSHARE:
            self.proc.files = Files(dict(self.proc.files.fds), set(self.proc.files.cloexec))
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
        self.dup(args[0], result, bool(int_at(args, 2) & O_CLOEXEC))

    def on_fcntl(self, c: Syscall, args: list[str], result: int) -> None:
        cmd = int_at(args, 1)
        if cmd in (F_DUPFD, F_DUPFD_CLOEXEC):
            self.dup(args[0], result, cmd == F_DUPFD_CLOEXEC)
        elif cmd == F_SETFL and (desc := self.desc(args[0])) is not None:
            desc.append = bool(int_at(args, 2) & O_APPEND)
        elif cmd == F_SETFD and (fd := fd_arg(args[0])) is not None:
            if int_at(args, 2) & 1:
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
        length, prot, flags = int_at(args, 1), int_at(args, 2), int_at(args, 3)
        self.proc.maps.drop(result, result + length)  # what it replaced is gone
        if flags & MAP_TYPE == MAP_PRIVATE:
            return
        desc = self.desc(args[4]) if len(args) > 4 else None
        if desc is None or desc.inode is None or desc.path is None or self.ignored(desc.path):
            return
        if prot & PROT_WRITE:
            self.refuse_map(desc.path)
        else:
            self.proc.maps.shared.append((result, result + length, desc.path))

    def on_mprotect(self, c: Syscall, args: list[str], result: int) -> None:
        start, length, prot = int_at(args, 0), int_at(args, 1), int_at(args, 2)
        if prot & PROT_WRITE:
            for path in self.proc.maps.within(start, start + length):
                self.refuse_map(path)
            self.proc.maps.drop(start, start + length)

    def on_munmap(self, c: Syscall, args: list[str], result: int) -> None:
        start = int_at(args, 0)
        self.proc.maps.drop(start, start + int_at(args, 1))

    def ignored(self, path: str) -> bool:
        root = next(r for r in self.snapshot.roots if self.snapshot.inside(path))
        names = (os.path.relpath(path, root), os.path.basename(path))
        return any(fnmatch.fnmatch(n, p) for p in self.ignore_mmap for n in names)

    def refuse_map(self, path: str) -> None:
        self.refused.append(
            f"{path} is mapped writable and shared ({self.call.text}, call "
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
        size = self.size(desc.inode)
        append = append or desc.append
        offset = size if append else desc.offset if at is None else at
        synced = sync or desc.sync
        self.emit(Write(self.call, desc.inode, offset, data, synced, append or offset >= size))
        self.sizes[desc.inode] = max(size, offset + len(data))
        if at is None:
            desc.offset = offset + len(data)

    def is_stdout(self, path: str | None, desc: Desc | None) -> bool:
        if self.stdout_id is not None:
            return path == self.stdout_id
        return desc is None or desc.inode is None

    def written(self, c: Syscall, n: int, fdarg: str) -> bytes:
        """The *n* bytes call *c* wrote through *fdarg*, from strace's hex dumps (refused
        if they are missing where they matter: into a file under the roots, or output)."""
        if len(c.data) >= n:
            return c.data[:n]
        fd, desc = fd_arg(fdarg), self.desc(fdarg)
        output = fd is not None and fd.fd == 1 and self.is_stdout(fd.path, desc)
        if output or (desc is not None and desc.inode is not None):
            self.refused.append(
                f"the trace lacks the data of call {self.call.index} ({self.call.text}): "
                "record with strace -e write=all"
            )
        return c.data.ljust(n, b"\0")

    def on_write(self, c: Syscall, args: list[str], result: int) -> None:
        self.write(args[0], self.written(c, result, args[0]), None)

    on_writev = on_write

    def on_pwrite64(self, c: Syscall, args: list[str], result: int) -> None:
        self.write(args[0], self.written(c, result, args[0]), int_at(args, 3))

    on_pwritev = on_pwrite64

    def on_pwritev2(self, c: Syscall, args: list[str], result: int) -> None:
        at, flags = int_at(args, 3), int_at(args, 4)
        sync = bool(flags & (RWF_DSYNC | RWF_SYNC))
        data = self.written(c, result, args[0])
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
            chunk = self.data(desc.inode)[offset : offset + n]
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

    def on_splice(self, c: Syscall, args: list[str], result: int) -> None:
        """Data spliced from a pipe into a file is in no trace: refused (its offset still
        moves). A file spliced into a pipe only moves the file's offset."""
        source, target = self.desc(args[0]), self.desc(args[2])
        if source is not None and int_arg(args[1]) is None:
            source.offset += result
        if target is not None and int_arg(args[3]) is None:
            target.offset += result
        if target is not None and target.inode is not None:
            self.refused.append(
                f"call {self.call.index} ({self.call.text}) splices data the trace does "
                f"not show into {target.path}"
            )

    def on_ioctl(self, c: Syscall, args: list[str], result: int) -> None:
        """FICLONE and FICLONERANGE: a write of the bytes cloned (a whole-file clone
        writes the source over the start of the destination, whose tail stays);
        FIOCLEX and FIONCLEX (how Python sets an fd inheritable): close-on-exec."""
        request = int_at(args, 1)
        if request in (FIOCLEX, FIONCLEX) and (fd := fd_arg(args[0])) is not None:
            if request == FIOCLEX:
                self.proc.files.cloexec.add(fd.fd)
            else:
                self.proc.files.cloexec.discard(fd.fd)
            return
        if request == FICLONE:
            src, at, n, to = args[2], 0, 0, 0
        elif request == FICLONERANGE:
            f = {k: int_arg(v) or 0 for k, v in FIELD.findall(args[2])}
            src, at, n, to = str(f.get("src_fd", -1)), f.get("src_offset", 0), 0, 0
            n, to = f.get("src_length", 0), f.get("dest_offset", 0)
        else:
            return
        dst, source = self.desc(args[0]), self.desc(src)
        if dst is None or dst.inode is None or source is None:
            return
        if n == 0:  # up to the source's end
            size = self.size(source.inode) if source.inode is not None else size_of(source)
            n = max(0, size - at)
        self.write(args[0], self.read_from(src, at, n), to)

    def truncate(self, inode: int | None, size: int) -> None:
        if inode is None:
            return
        self.sizes[inode] = size
        self.emit(Truncate(self.call, inode, size))

    def on_ftruncate(self, c: Syscall, args: list[str], result: int) -> None:
        desc = self.desc(args[0])
        self.truncate(desc.inode if desc else None, int_at(args, 1))

    def on_truncate(self, c: Syscall, args: list[str], result: int) -> None:
        path = self.path(None, args[0], follow=True)
        node = self.node(path) if path else None
        self.truncate(node.inode if node else None, int_at(args, 1))

    def on_fallocate(self, c: Syscall, args: list[str], result: int) -> None:
        desc = self.desc(args[0])
        if desc is None or desc.inode is None:
            return
        mode, offset, length = int_at(args, 1), int_at(args, 2), int_at(args, 3)
        size = self.size(desc.inode)
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
