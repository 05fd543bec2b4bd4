"""What a traced program did to its directories, as crashcheck models it.

The tracer (:mod:`._trace`) turns a syscall trace into a list of these operations; the
explorer (:mod:`._explore`) replays chosen subsets of them over a :class:`Snapshot` of the
directories as they were before the run. Between the two, nothing but this module.

Files are named by absolute paths with every symlink in the directories resolved, as the
kernel names them in the trace. A file's content belongs to its *inode*, an int: for a
file that existed before the run, the ``st_ino`` the snapshot read; for one the run
created, a negative number the tracer handed out in order (-1, -2, ...), so the two never
meet. Directory changes name paths; data changes name inodes; a sync names an inode too
(a directory's inode when a directory was synced).
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "BaseEntry",
    "Call",
    "Create",
    "Link",
    "Mkdir",
    "Operation",
    "Output",
    "Rename",
    "Rmdir",
    "SetMode",
    "Snapshot",
    "Symlink",
    "Sync",
    "SyncAll",
    "Truncate",
    "Unlink",
    "Write",
    "take_snapshot",
]


@dataclass(frozen=True)
class Call:
    """The system call an operation came from, for the report.

    *index* is the call's 1-based ordinal among the calls of the trace (the crash point
    "after syscall N"), *pid* the thread that made it, *text* the call as strace showed
    it, shortened (no data).
    """

    index: int
    pid: int
    text: str


@dataclass(frozen=True)
class Create:
    """A new, empty regular file *inode* named *path* (``open`` with ``O_CREAT`` of a
    missing name, ``mknod``, ``O_TMPFILE`` then ``linkat`` is a Create then a Link)."""

    call: Call
    path: str
    inode: int
    mode: int
    named: bool = True  # False for O_TMPFILE: the inode exists, no name yet


@dataclass(frozen=True)
class Mkdir:
    call: Call
    path: str
    inode: int
    mode: int


@dataclass(frozen=True)
class Symlink:
    call: Call
    path: str
    target: str


@dataclass(frozen=True)
class Link:
    """A further name *path* for the existing file *inode*."""

    call: Call
    path: str
    inode: int


@dataclass(frozen=True)
class Unlink:
    """The name *path* removed (a file's or a symlink's)."""

    call: Call
    path: str


@dataclass(frozen=True)
class Rmdir:
    call: Call
    path: str


@dataclass(frozen=True)
class Rename:
    """*src* renamed over *dst* (``rename``, ``renameat2`` with ``RENAME_NOREPLACE``), or
    the two swapped (*exchange*, ``RENAME_EXCHANGE``). Atomic: it persists whole or not."""

    call: Call
    src: str
    dst: str
    exchange: bool = False


@dataclass(frozen=True)
class Write:
    """*data* written at *offset* of *inode*; the file grows if it ends past the end.

    Appends carry the offset they landed at. ``copy_file_range``, ``sendfile`` and
    reflinks are writes of the bytes they copied.
    """

    call: Call
    inode: int
    offset: int
    data: bytes
    synced: bool = False  # through an O_SYNC or O_DSYNC descriptor: durable on return
    appended: bool = False  # O_APPEND, or a write that started at or past the end


@dataclass(frozen=True)
class Truncate:
    """*inode* cut or extended with zeros to *size* (``ftruncate``, ``truncate``,
    ``O_TRUNC``, ``fallocate`` that grows the file)."""

    call: Call
    inode: int
    size: int


@dataclass(frozen=True)
class SetMode:
    call: Call
    inode: int
    mode: int


@dataclass(frozen=True)
class Sync:
    """``fsync``/``fdatasync`` of *inode*, a file or a directory: every earlier data change
    of a file, or every earlier entry change in a directory, is durable from here on."""

    call: Call
    inode: int
    kind: Literal["fsync", "fdatasync"] = "fsync"


@dataclass(frozen=True)
class SyncAll:
    """``sync()`` or ``syncfs()``: everything earlier is durable from here on."""

    call: Call


@dataclass(frozen=True)
class Output:
    """Bytes the program wrote to its standard output (what it said it had done)."""

    call: Call
    data: bytes


Operation = (
    Create | Mkdir | Symlink | Link | Unlink | Rmdir | Rename | Write | Truncate | SetMode
    | Sync | SyncAll | Output
)  # fmt: skip


@dataclass(frozen=True)
class BaseEntry:
    """One path of the directories before the run."""

    kind: Literal["file", "dir", "symlink"]
    inode: int
    mode: int  # permission bits only
    target: str = ""  # a symlink's


@dataclass
class Snapshot:
    """The directories before the run: *roots* (absolute, resolved), *entries* by absolute
    path (the roots included), and *copy*, a directory holding a copy of each root under
    its index (``copy/0``, ``copy/1``, ...) from which file contents are read."""

    roots: list[str]
    copy: str
    entries: dict[str, BaseEntry] = field(default_factory=dict)

    def source(self, path: str) -> str:
        """Where the content *path* had before the run is kept."""
        for i, root in enumerate(self.roots):
            if path == root or path.startswith(root + "/"):
                return os.path.join(self.copy, str(i), os.path.relpath(path, root))
        raise ValueError(f"{path!r} is under none of {self.roots}")

    def inside(self, path: str) -> bool:
        """Whether *path* is one of the roots or under one."""
        return any(path == r or path.startswith(r + "/") for r in self.roots)


def take_snapshot(roots: list[str], copy: str) -> Snapshot:
    """Read and copy the directories *roots* into *copy* (which must not exist).

    Raises ``ValueError`` if one root is inside another, and
    :class:`~._errors.CrashcheckError` for an entry that is not a regular file, a
    directory or a symlink (a FIFO, a socket, a device: crashcheck cannot copy or model
    it), naming it.
    """
    from ._errors import CrashcheckError

    resolved = [os.path.realpath(r) for r in roots]
    for a in resolved:
        for b in resolved:
            if a != b and (b + "/").startswith(a + "/"):
                raise ValueError(f"{b!r} is inside {a!r}: give each directory once")
    snapshot = Snapshot(resolved, copy)
    # Read first, copy after: copying a FIFO would block on opening it.
    for root in resolved:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [".", *dirnames, *filenames]:
                path = os.path.normpath(os.path.join(dirpath, name))
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    entry = BaseEntry("symlink", st.st_ino, 0o777, os.readlink(path))
                elif stat.S_ISDIR(st.st_mode):
                    entry = BaseEntry("dir", st.st_ino, stat.S_IMODE(st.st_mode))
                elif stat.S_ISREG(st.st_mode):
                    entry = BaseEntry("file", st.st_ino, stat.S_IMODE(st.st_mode))
                else:
                    raise CrashcheckError(
                        f"cannot check {path}: not a regular file, a directory or a symlink "
                        "(a FIFO, a socket or a device); move it out of the directory"
                    )
                snapshot.entries[path] = entry
    os.makedirs(copy)
    for i, root in enumerate(resolved):
        shutil.copytree(root, os.path.join(copy, str(i)), symlinks=True)
    return snapshot
