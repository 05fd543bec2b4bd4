"""Replaying the calls that change names: rename, link, symlink, unlink, mkdir, rmdir,
mknod, chmod (see :mod:`._tracestate`)."""

from __future__ import annotations

import os
import stat

from ._ops import (
    Create,
    Link,
    Mkdir,
    Rename,
    Rmdir,
    SetMode,
    Symlink,
    Unlink,
    Write,
)
from ._strace import Syscall, str_arg
from ._tracestate import (
    AT_EMPTY_PATH,
    AT_REMOVEDIR,
    AT_SYMLINK_FOLLOW,
    AT_SYMLINK_NOFOLLOW,
    PROC_FD,
    RENAME_EXCHANGE,
    RENAME_WHITEOUT,
    Node,
    State,
    int_at,
)

__all__ = ["Names"]


class Names(State):
    def on_rename(self, c: Syscall, args: list[str], result: int) -> None:
        self.rename(self.path(None, args[0]), self.path(None, args[1]), 0)

    def on_renameat(self, c: Syscall, args: list[str], result: int) -> None:
        flags = int_at(args, 4) if len(args) > 4 else 0
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
        moving, over = self.names.get(src), self.names.get(dst)
        if src == dst or (moving is not None and moving == over and moving.kind == "file"):
            return  # a name, or two names of one file: the kernel changes nothing
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
        """A file, symlink or directory (with all it holds) came into the roots from
        outside them: what it holds is read now, when the trace is parsed."""
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                children = sorted(os.listdir(path))
            else:
                with open(path, "rb") as f:
                    data = f.read()
        except OSError:
            return  # gone already: nothing to say about it
        node = self.names[path] = Node("file", self.new_inode())
        if stat.S_ISLNK(st.st_mode):
            node.kind, node.target = "symlink", target
            self.emit(Symlink(self.call, path, target))
        elif stat.S_ISDIR(st.st_mode):
            node.kind = "dir"
            self.emit(Mkdir(self.call, path, node.inode, stat.S_IMODE(st.st_mode)))
            for name in children:
                self.arrive(os.path.join(path, name))
        else:
            self.emit(Create(self.call, path, node.inode, stat.S_IMODE(st.st_mode)))
            if data:
                self.sizes[node.inode] = len(data)
                self.emit(Write(self.call, node.inode, 0, data, False, True))

    def on_link(self, c: Syscall, args: list[str], result: int) -> None:
        self.link(self.path(None, args[0]), None, self.path(None, args[1]))

    def on_linkat(self, c: Syscall, args: list[str], result: int) -> None:
        flags = int_at(args, 4)
        new = self.path(args[2], args[3])
        name = str_arg(args[1])
        if flags & AT_EMPTY_PATH and name == "":
            desc = self.desc(args[0])
            self.link(None, desc.inode if desc else None, new)
            return
        if flags & AT_SYMLINK_FOLLOW and name is not None and (m := PROC_FD.match(name)):
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
            if node is not None and node.kind == "symlink" and self.snapshot.inside(new):
                self.symlink(node.target, new)  # a hard link to a symlink is a symlink
                return
        if not self.snapshot.inside(new):
            return
        if inode is None:
            self.arrive(new)
            return
        self.names[new] = Node("file", inode)
        self.emit(Link(self.call, new, inode))

    def on_symlink(self, c: Syscall, args: list[str], result: int) -> None:
        self.symlink(str_arg(args[0]), self.path(None, args[1]))

    def on_symlinkat(self, c: Syscall, args: list[str], result: int) -> None:
        self.symlink(str_arg(args[0]), self.path(args[1], args[2]))

    def symlink(self, target: str | None, path: str | None) -> None:
        if target is None or path is None or not self.snapshot.inside(path):
            return
        self.names[path] = Node("symlink", self.new_inode(), target)
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
        self.remove(self.path(args[0], args[1]), bool(int_at(args, 2) & AT_REMOVEDIR))

    def on_rmdir(self, c: Syscall, args: list[str], result: int) -> None:
        self.remove(self.path(None, args[0]), True)

    def mkdir(self, path: str | None, mode: int) -> None:
        if path is None or not self.snapshot.inside(path):
            return
        node = self.names[path] = Node("dir", self.new_inode())
        self.emit(Mkdir(self.call, path, node.inode, mode & ~self.proc.fs.umask & 0o7777))

    def on_mkdir(self, c: Syscall, args: list[str], result: int) -> None:
        self.mkdir(self.path(None, args[0]), int_at(args, 1))

    def on_mkdirat(self, c: Syscall, args: list[str], result: int) -> None:
        self.mkdir(self.path(args[0], args[1]), int_at(args, 2))

    def mknod(self, path: str | None, mode: int) -> None:
        if path is None or not self.snapshot.inside(path) or mode & 0o170000 not in (0, 0o100000):
            return  # devices, fifos and sockets hold no data
        node = self.names[path] = Node("file", self.new_inode())
        self.emit(Create(self.call, path, node.inode, mode & ~self.proc.fs.umask & 0o7777))

    def on_mknod(self, c: Syscall, args: list[str], result: int) -> None:
        self.mknod(self.path(None, args[0]), int_at(args, 1))

    def on_mknodat(self, c: Syscall, args: list[str], result: int) -> None:
        self.mknod(self.path(args[0], args[1]), int_at(args, 2))

    def chmod(self, path: str | None, mode: int) -> None:
        node = self.node(path) if path else None
        if node is not None:
            self.emit(SetMode(self.call, node.inode, mode & 0o7777))

    def on_chmod(self, c: Syscall, args: list[str], result: int) -> None:
        self.chmod(self.path(None, args[0], follow=True), int_at(args, 1))

    def on_fchmod(self, c: Syscall, args: list[str], result: int) -> None:
        desc = self.desc(args[0])
        if desc is not None and desc.inode is not None:
            self.emit(SetMode(self.call, desc.inode, int_at(args, 1) & 0o7777))

    def on_fchmodat(self, c: Syscall, args: list[str], result: int) -> None:
        follow = not (int_at(args, 3) & AT_SYMLINK_NOFOLLOW) if len(args) > 3 else True
        self.chmod(self.path(args[0], args[1], follow), int_at(args, 2))

    # An ACL set through an xattr (``cp -a``, ``sed -i`` copy the source's) changes the
    # mode bits, but ``-s 0`` hides the xattr's name and value: the mode is read when the
    # trace is parsed, from the file's last name, and given to a SetMode at the call.

    def xattr(self, inode: int | None) -> None:
        if inode is not None:
            self.later_modes.append((len(self.ops), inode))
            self.emit(SetMode(self.call, inode, 0))

    def on_setxattr(self, c: Syscall, args: list[str], result: int) -> None:
        path = self.path(None, args[0], follow=not c.name.startswith("l"))
        node = self.node(path) if path else None
        self.xattr(node.inode if node else None)

    on_lsetxattr = on_removexattr = on_lremovexattr = on_setxattr

    def on_fsetxattr(self, c: Syscall, args: list[str], result: int) -> None:
        desc = self.desc(args[0])
        self.xattr(desc.inode if desc else None)

    on_fremovexattr = on_fsetxattr

    def finish(self) -> None:
        """Fill in the modes that xattr calls left to be read now."""
        if not self.later_modes:
            return
        last_name = {node.inode: path for path, node in self.names.items()}
        drop = set()
        for at, inode in self.later_modes:
            try:
                mode = stat.S_IMODE(os.stat(last_name[inode]).st_mode)
            except (KeyError, OSError):
                drop.add(at)  # no name left: its mode no longer matters
                continue
            self.ops[at] = SetMode(self.ops[at].call, inode, mode)
        self.ops = [op for i, op in enumerate(self.ops) if i not in drop]
        self.later_modes = []
