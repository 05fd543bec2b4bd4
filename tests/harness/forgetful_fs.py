"""The filesystem that forgets: a FUSE passthrough that records what is durable.

Run as a child process by tests/harness/forgetful.py (:func:`main` with ``BACKING
MOUNTPOINT SCRATCH FD``, in a child built by tests/children.py): it mounts a passthrough of
the directory BACKING on MOUNTPOINT, with the kernel's caches off (entry, attribute and
negative timeouts 0, ``direct_io``, so every read and write reaches it and a restored
state is what the next reader sees), and answers requests on the unix socket FD. Every
change passes through to BACKING at once and is recorded in a
:class:`~tests.harness.forgetful_model.Ledger`, which knows what a crash now may lose.

Requests are ``(name, args)`` (tests/harness/forgetful_wire.py); each answer is
``("ok", value)`` or ``("error", exception)``. The child is started with
``FUSE_LIBRARY_NAME=fuse3``: mfusepy would otherwise load Debian's libfuse 2 where both
are installed (bindfs and exfat-fuse need it), which knows no rename flags
(``RENAME_NOREPLACE`` answers ``EINVAL``) and no ``fuse_config`` (the caches stay on).
The filesystem runs single-threaded; the socket is served by a second thread; one lock
orders both, so the ledger sees operations in the order the backing directory did.

Not modelled: extended attributes (answered ``ENOTSUP``, as a filesystem without them),
``O_TMPFILE`` (refused by FUSE, so writers use a named file), owners and timestamps
(passed through, never lost), ``fallocate`` and ``copy_file_range`` (refused, so
copies are reads and writes), special files. Backing files are never fsynced: the
ledger, not the disk, is what a crash keeps.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import mfusepy

from crashsafe.crashcheck._ops import (
    Create,
    Link,
    Mkdir,
    Rename,
    Rmdir,
    SetMode,
    Symlink,
    Sync,
    Truncate,
    Unlink,
    Write,
)
from tests.harness.forgetful_control import Control, Handle

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_SYNCED = os.O_SYNC | os.O_DSYNC

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]

F = TypeVar("F", bound=Callable[..., Any])


class _Fuse(mfusepy.FUSE):  # type: ignore[misc]  # mfusepy has no types
    """mfusepy's FUSE, passing what it drops: rename's flags (``RENAME_NOREPLACE``
    must not become a plain rename) and the open file of chmod, chown and truncate
    (a file open after its name was removed has no path)."""

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        ops: Forgetful = self.operations
        return ops.rename2(os.fsdecode(old), os.fsdecode(new), flags)

    def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
        ops: Forgetful = self.operations
        return ops.chmod2(_decode(path), mode, fip.contents.fh if fip else None)

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        ops: Forgetful = self.operations
        return ops.truncate(_decode(path), length, fip.contents.fh if fip else None)


def _decode(path: bytes | None) -> str | None:
    return None if path is None else os.fsdecode(path)


def _locked(method: F) -> F:
    """One operation, under the lock. An error that is no ``OSError`` is a fault of
    this filesystem, not an answer: it is kept for the test (:meth:`do_internal_errors`)
    and the caller gets ``EIO``."""

    def run(self: Forgetful, *args: Any) -> Any:
        with self.mutex:
            try:
                return method(self, *args)
            except OSError:
                raise
            except Exception:
                self.internal.append(f"{method.__name__}{args!r}: {traceback.format_exc()}")
                raise mfusepy.FuseOSError(errno.EIO) from None

    run.__name__ = method.__name__
    return run  # type: ignore[return-value]


class Forgetful(Control, mfusepy.Operations):  # type: ignore[misc]
    """The operations: pass through to the backing directory, record in the ledger
    (the test's requests, the open files and the faults are :class:`Control`'s)."""

    use_ns = True

    # -- helpers ------------------------------------------------------------------------

    def _p(self, path: str) -> str:
        return self.ledger.path(path)

    def _call(self, text: str) -> Any:
        return self.ledger.call(mfusepy.fuse_get_context()[2], text)

    def _dir_barrier(self, path: str) -> tuple[str, int]:
        st = os.stat(os.path.dirname(self._p(path)))
        return ("dir", self.ledger.inode(st.st_ino))

    def _own(self, path: str) -> None:
        """Give a new entry to the caller, as a kernel filesystem would (this process
        runs as root): its uid, and its gid unless the directory is setgid (then the
        directory's group, which the backing filesystem gave it already)."""
        uid, gid, _ = mfusepy.fuse_get_context()
        if os.stat(os.path.dirname(path)).st_mode & stat.S_ISGID:
            gid = -1
        if uid != 0 or gid not in (0, -1):
            os.chown(path, uid, gid, follow_symlinks=False)

    # -- setup --------------------------------------------------------------------------

    def init_with_config(self, conn_info: Any, config_3: Any) -> None:
        if config_3 is not None:
            config_3.entry_timeout = 0
            config_3.attr_timeout = 0
            config_3.negative_timeout = 0
            config_3.direct_io = 1
            config_3.kernel_cache = 0
            config_3.auto_cache = 0
            # Unlinked while open: really removed, not renamed to .fuse_hidden*.
            config_3.hard_remove = 1
            config_3.nullpath_ok = 1
        threading.Thread(target=self.serve, daemon=True).start()

    # -- reading ------------------------------------------------------------------------

    @_locked
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        st = os.fstat(self.handle(fh).fd) if fh is not None else os.lstat(self._p(path or "/"))
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks", "st_ino")
        out: dict[str, Any] = {k: getattr(st, k) for k in keys}
        out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return out

    @_locked
    def opendir(self, path: str) -> int:
        fd = os.open(self._p(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self.open_dir(fd, path)

    @_locked
    def readdir(self, path: str | None, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self.opened_dir(fh)[0])]

    @_locked
    def releasedir(self, path: str | None, fh: int) -> int:
        opened = self.dirs.pop(fh, None)
        if opened is not None:
            os.close(opened[0])
        return 0

    @_locked
    def readlink(self, path: str) -> str:
        return os.readlink(self._p(path))

    @_locked
    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._p(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                "f_flag", "f_frsize", "f_namemax")  # fmt: skip
        return {k: getattr(sv, k) for k in keys}

    @_locked
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return os.pread(self.handle(fh).fd, size, offset)

    # -- files --------------------------------------------------------------------------

    def _open(self, path: str, fd: int, flags: int, created: bool, mode: int) -> int:
        st = os.fstat(fd)
        if created:
            inode = self.ledger.fresh(st.st_ino)
            call = self._call(f"create({path})")
            self.ledger.record(
                Create(call, self._p(path), inode, stat.S_IMODE(mode)), {self._dir_barrier(path)}
            )
        else:
            inode = self.ledger.inode(st.st_ino)
            if flags & os.O_TRUNC:
                call = self._call(f"truncate({path}, 0)")
                self.ledger.record(Truncate(call, inode, 0), {("data", inode)})
        return self.open_file(
            Handle(fd, inode, path, bool(flags & _SYNCED), bool(flags & os.O_APPEND))
        )

    @_locked
    def open(self, path: str, flags: int) -> int:
        fd = os.open(self._p(path), (flags & ~os.O_CREAT) | os.O_CLOEXEC)
        return self._open(path, fd, flags, False, 0)

    @_locked
    def create(self, path: str, mode: int, flags: int) -> int:
        real = self._p(path)
        try:
            fd = os.open(real, flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            fd = os.open(real, (flags & ~os.O_CREAT) | os.O_CLOEXEC)
            return self._open(path, fd, flags, False, 0)
        self._own(real)
        return self._open(path, fd, flags, True, mode)

    @_locked
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        handle = self.handle(fh)
        self.fault("write", path or handle.name)
        size = os.fstat(handle.fd).st_size
        written = os.pwrite(handle.fd, data, offset)
        if handle.append:  # pwrite on an O_APPEND descriptor appends (Linux)
            offset = size
        end = offset + written
        call = self._call(f"write({path or handle.name}, {offset}..{end})")
        barriers = set() if handle.synced else {("data", handle.inode)}
        op = Write(
            call, handle.inode, offset, data[:written], synced=handle.synced, appended=end > size
        )
        self.ledger.record(op, barriers, grows=end > size)
        return written

    @_locked
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        if fh is not None:
            fd = self.handle(fh).fd
            os.ftruncate(fd, length)
        else:
            assert path is not None
            os.truncate(self._p(path), length)
            fd = None
        st = os.fstat(fd) if fd is not None else os.stat(self._p(path or "/"))
        inode = self.ledger.inode(st.st_ino)
        call = self._call(f"truncate({path}, {length})")
        self.ledger.record(Truncate(call, inode, length), {("data", inode)})
        return 0

    @_locked
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        handle = self.handle(fh)
        kind: Literal["fsync", "fdatasync"] = "fdatasync" if datasync else "fsync"
        call = self._call(f"{kind}({path or handle.name})")
        try:
            self.fault("fsync", path or handle.name)
        except OSError as e:
            if e.errno == errno.EIO:  # Linux: the unsynced pages are dropped, marked clean
                self.ledger.sync(Sync(call, handle.inode, kind), failed=True)
            raise
        self.ledger.sync(Sync(call, handle.inode, kind))
        return 0

    @_locked
    def release(self, path: str | None, fh: int) -> int:
        handle = self.handles.pop(fh, None)
        if handle is not None:
            os.close(handle.fd)
        return 0

    def chmod(self, path: str | None, mode: int) -> int:
        return self.chmod2(path, mode, None)  # libfuse calls _Fuse.chmod_fuse_3 instead

    @_locked
    def chmod2(self, path: str | None, mode: int, fh: int | None) -> int:
        if fh is not None:
            st = os.fstat(self.handle(fh).fd)
            os.fchmod(self.handle(fh).fd, stat.S_IMODE(mode))
        else:
            assert path is not None
            st = os.lstat(self._p(path))
            os.chmod(self._p(path), stat.S_IMODE(mode), follow_symlinks=False)
        inode = self.ledger.inode(st.st_ino)
        call = self._call(f"chmod({path}, {stat.S_IMODE(mode):o})")
        self.ledger.record(SetMode(call, inode, stat.S_IMODE(mode)), {("mode", inode)})
        return 0

    @_locked
    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._p(path), uid, gid, follow_symlinks=False)  # not modelled: never lost
        return 0

    @_locked
    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:  # not modelled: never lost
            os.utime(self._p(path), follow_symlinks=False)
        else:
            os.utime(self._p(path), ns=times, follow_symlinks=False)
        return 0

    # -- directories --------------------------------------------------------------------

    @_locked
    def mkdir(self, path: str, mode: int) -> int:
        real = self._p(path)
        os.mkdir(real, mode)
        self._own(real)
        inode = self.ledger.fresh(os.lstat(real).st_ino)
        call = self._call(f"mkdir({path})")
        self.ledger.record(Mkdir(call, real, inode, stat.S_IMODE(mode)), {self._dir_barrier(path)})
        return 0

    @_locked
    def rmdir(self, path: str) -> int:
        barrier = self._dir_barrier(path)
        os.rmdir(self._p(path))
        self.ledger.record(Rmdir(self._call(f"rmdir({path})"), self._p(path)), {barrier})
        return 0

    @_locked
    def unlink(self, path: str) -> int:
        barrier = self._dir_barrier(path)
        os.unlink(self._p(path))
        self.ledger.record(Unlink(self._call(f"unlink({path})"), self._p(path)), {barrier})
        return 0

    @_locked
    def symlink(self, target: str, source: str) -> int:
        # mfusepy's names: *target* is the new link's path, *source* what it points to.
        real = self._p(target)
        os.symlink(source, real)
        self._own(real)
        call = self._call(f"symlink({target} -> {source})")
        self.ledger.record(Symlink(call, real, source), {self._dir_barrier(target)})
        return 0

    @_locked
    def link(self, target: str, source: str) -> int:
        # *target* is the new name, *source* the existing file.
        os.link(self._p(source), self._p(target), follow_symlinks=False)
        inode = self.ledger.inode(os.lstat(self._p(source)).st_ino)
        call = self._call(f"link({source} -> {target})")
        self.ledger.record(Link(call, self._p(target), inode), {self._dir_barrier(target)})
        return 0

    def rename(self, old: str, new: str) -> int:
        return self.rename2(old, new, 0)  # libfuse calls _Fuse.rename_fuse_3 instead

    @_locked
    def rename2(self, old: str, new: str, flags: int) -> int:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise mfusepy.FuseOSError(errno.EINVAL)
        barriers = {self._dir_barrier(old), self._dir_barrier(new)}
        src, dst = os.fsencode(self._p(old)), os.fsencode(self._p(new))
        if _renameat2(-100, src, -100, dst, flags) != 0:  # AT_FDCWD
            raise mfusepy.FuseOSError(ctypes.get_errno())
        arrow = "<->" if flags & RENAME_EXCHANGE else "->"
        call = self._call(f"rename({old} {arrow} {new})")
        op = Rename(call, self._p(old), self._p(new), exchange=bool(flags & RENAME_EXCHANGE))
        self.ledger.record(op, barriers)
        return 0

    @_locked
    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        fd, where = self.opened_dir(fh)
        call = self._call(f"fsync({where.rstrip('/')}/)")
        self.fault("fsyncdir", where)
        inode = self.ledger.inode(os.fstat(fd).st_ino)
        self.ledger.sync(Sync(call, inode, "fsync"))
        return 0


def main(argv: list[str]) -> int:
    backing, mountpoint, scratch, fd = argv
    if mfusepy.fuse_version_major != 3:  # libfuse 2 has no rename flags and no fuse_config
        raise SystemExit(f"needs libfuse 3, mfusepy loaded {mfusepy.fuse_version_major}")
    os.umask(0)  # the caller's umask is applied by the kernel already
    control = socket.socket(fileno=int(fd))
    fs = Forgetful(backing, scratch, control)
    _Fuse(
        fs,
        mountpoint,
        foreground=True,
        nothreads=True,
        allow_other=True,
        default_permissions=True,
        fsname="forgetful",
        subtype="forgetful",
        debug=bool(os.environ.get("FORGETFUL_DEBUG")),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
