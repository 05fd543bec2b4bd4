"""Every filesystem this kernel and Debian's packages give, mounted fresh for tests.

:data:`FILESYSTEMS` maps a name usable on the command line (``--fs btrfs,exfat``)
to a :class:`Filesystem`; ``mount(name)`` is a context manager that yields a
:class:`Mounted`: a fresh, mounted, writable directory, with everything it made
(mounts, loop devices, daemons, temporary directories) removed on exit, by the
ids it recorded.

What a filesystem can do is probed on the mounted directory
(:mod:`tests.harness.capabilities`), not looked up here by name. The only facts
kept here are the ones no probe can see, each with where it comes from:
whether a directory fsync that returns 0 makes entries durable.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.children import wait_until
from tests.harness.mounts import loop_mount, overlay, run, tmpfs, unmount
from tests.harness.require import require_root, require_tools
from tests.harness.sshfs import sshfs_mount

# Loop images are sparse: the size costs nothing until written. 512 MiB leaves room
# for the largest file a matrix test writes, and xfs needs at least 300 MiB.
IMAGE_MB = 512
# Empty directories made in overlayfs's lower layer: each test's directory is one
# of them, so its first write copies the directory up (more than one session's tests).
LOWER_DIRS = 4000
# Files in overlayfs's lower layer, under LOWER_FILES in the merged view: writing
# over one forces a copy-up of the file.
LOWER_FILES = "from-lower"
LOWER_CONTENT = {"doc.json": b'{"version": 1}\n', "log.txt": b"one\n", "blob": b"x" * 65536}


@dataclass(frozen=True)
class Filesystem:
    """One row of the matrix.

    ``dir_fsync_durable`` says whether a directory fsync that returns 0 makes the
    directory's entries durable; ``None`` where the filesystem does not survive a
    power cut at all (memory only). ``source`` says how that was established.
    """

    name: str
    summary: str
    mount: Callable[[], contextlib.AbstractContextManager[Path]]
    fuse: bool
    dir_fsync_durable: bool | None
    source: str
    tools: tuple[str, ...] = ()

    @property
    def readers_may_miss(self) -> bool:
        """Whether a reader racing a rename over a file may find no file at all: on
        FUSE the kernel looks the name up again in the daemon, which can answer
        ENOENT (ESTALE on sshfs) in the middle of the rename. Measured in issue 18
        with plain os.rename and no crashsafe (190 of 1,524 reads on a passthrough);
        never a torn read."""
        return self.fuse


@dataclass
class Mounted:
    """A mounted filesystem of the matrix: ``root`` is its writable top directory."""

    fs: Filesystem
    root: Path
    # overlayfs: empty directories from the lower layer, handed out by fresh().
    lower_dirs: list[Path] = field(default_factory=list)
    _made: Iterator[int] = field(default_factory=itertools.count)

    @property
    def name(self) -> str:
        return self.fs.name

    @property
    def lower_files(self) -> Path | None:
        """overlayfs: a directory whose files (:data:`LOWER_CONTENT`) live in the
        lower layer until written; ``None`` on every other filesystem."""
        path = self.root / LOWER_FILES
        return path if self.fs.name == "overlayfs" else None

    def fresh(self) -> Path:
        """A new empty directory on this filesystem (on overlayfs, one from the
        lower layer), for one test."""
        if self.lower_dirs:
            return self.lower_dirs.pop()
        path = self.root / f"t{next(self._made)}"
        path.mkdir()
        return path


def _loop(
    fstype: str, options: str = "", mkfs: tuple[str, ...] = ()
) -> Callable[[], contextlib.AbstractContextManager[Path]]:
    return lambda: loop_mount(fstype, size_mb=IMAGE_MB, options=options, mkfs_options=mkfs)


@contextlib.contextmanager
def _tmpfs() -> Iterator[Path]:
    with tmpfs(size_kb=IMAGE_MB << 10) as mnt:
        yield mnt


@contextlib.contextmanager
def _ramfs() -> Iterator[Path]:
    require_root()
    base = Path(tempfile.mkdtemp(prefix="crashsafe-ramfs-"))
    mnt = base / "mnt"
    mnt.mkdir()
    try:
        run("mount", "-t", "ramfs", "ramfs", str(mnt))
        try:
            yield mnt
        finally:
            unmount(mnt)
    finally:
        mnt.rmdir()
        base.rmdir()


def _fill_lower(lower: Path) -> None:
    for i in range(LOWER_DIRS):
        (lower / f"d{i}").mkdir()
    (lower / LOWER_FILES).mkdir()
    for name, data in LOWER_CONTENT.items():
        (lower / LOWER_FILES / name).write_bytes(data)


@contextlib.contextmanager
def _overlayfs() -> Iterator[Path]:
    # The upper layer on a loop ext4 (the container case: a real disk filesystem).
    with (
        loop_mount("ext4", size_mb=IMAGE_MB) as upper,
        overlay(upper, fill_lower=_fill_lower) as mnt,
    ):
        yield mnt


@contextlib.contextmanager
def _bindfs() -> Iterator[Path]:
    require_root()
    require_tools("bindfs")
    base = Path(tempfile.mkdtemp(prefix="crashsafe-bindfs-"))
    under, mnt = base / "under", base / "mnt"
    under.mkdir()
    mnt.mkdir()
    # In the foreground (-f), as a process we track; no multithreading (-s is
    # bindfs's default too), as most passthroughs run.
    proc = subprocess.Popen(
        ["bindfs", "-f", str(under), str(mnt)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_until(lambda: os.path.ismount(mnt) or proc.poll() is not None, timeout=60)
        if proc.poll() is not None:
            assert proc.stderr is not None
            raise AssertionError(f"bindfs exited {proc.returncode}: {proc.stderr.read()!r}")
        yield mnt
    finally:
        if os.path.ismount(mnt):
            unmount(mnt)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(base, ignore_errors=True)


_DISK = "an on-disk filesystem: fsync of a directory writes it (journal, or ext2's own sync)"
_MEMORY = "memory only: nothing survives a power cut, durable or not"
_STRACED = "strace of the daemon: a file fsync reaches the disk; a directory fsync "


def _fs(
    name: str,
    summary: str,
    mount: Callable[[], contextlib.AbstractContextManager[Path]],
    *,
    fuse: bool = False,
    durable: bool | None = True,
    source: str = _DISK,
    tools: tuple[str, ...] = (),
) -> Filesystem:
    return Filesystem(name, summary, mount, fuse, durable, source, tools)


FILESYSTEMS: dict[str, Filesystem] = {
    fs.name: fs
    for fs in (
        _fs("ext4", "ext4, default options", _loop("ext4")),
        _fs(
            "ext4-noauto_da_alloc",
            "ext4 -o noauto_da_alloc (shows the empty file after rename that its default hides)",
            _loop("ext4", "noauto_da_alloc"),
        ),
        _fs("ext4-journal", "ext4 -o data=journal", _loop("ext4", "data=journal")),
        _fs("ext2", "ext2 (no journal)", _loop("ext2")),
        _fs("ext3", "ext3", _loop("ext3")),
        _fs("xfs", "xfs, reflink=1", _loop("xfs", mkfs=("-m", "reflink=1"))),
        _fs("xfs-noreflink", "xfs, reflink=0", _loop("xfs", mkfs=("-m", "reflink=0"))),
        _fs("btrfs", "btrfs", _loop("btrfs")),
        _fs("tmpfs", "tmpfs", _tmpfs, durable=None, source=_MEMORY),
        _fs("ramfs", "ramfs", _ramfs, durable=None, source=_MEMORY),
        _fs(
            "overlayfs",
            "overlayfs, upper on a loop ext4, a lower layer of files (copy-up)",
            _overlayfs,
            source="overlayfs passes a directory fsync to the upper layer (ovl_dir_fsync)",
        ),
        _fs(
            "bindfs",
            "bindfs (FUSE passthrough, libfuse 2) over a directory of the root filesystem",
            _bindfs,
            fuse=True,
            durable=False,
            source=_STRACED + "answers 0 and calls nothing",
            tools=("bindfs",),
        ),
        _fs(
            "sshfs",
            "sshfs (SFTP, posix-rename) to a private sshd on 127.0.0.1",
            sshfs_mount,
            fuse=True,
            durable=False,
            source=_STRACED + "answers 0 and never reaches the server (sftp-server)",
            tools=("sshfs",),
        ),
        _fs(
            "ntfs3g",
            "NTFS through ntfs-3g (FUSE, default options) on a loop device",
            _loop("ntfs-3g"),
            fuse=True,
            durable=False,
            source=_STRACED + "answers 0 and flushes nothing",
            tools=("mkntfs", "ntfs-3g"),
        ),
        _fs(
            "exfat",
            "exFAT through exfat-fuse on a loop device",
            _loop("exfat"),
            fuse=True,
            source=_STRACED + "flushes the device too (fsync)",
            tools=("mkfs.exfat", "mount.exfat-fuse"),
        ),
    )
}
NAMES = tuple(FILESYSTEMS)


@contextlib.contextmanager
def mount(name: str) -> Iterator[Mounted]:
    """Mount a fresh filesystem *name* (a key of :data:`FILESYSTEMS`); yields it as
    :class:`Mounted`. Needs root (skips without it; fails under CI=true)."""
    fs = FILESYSTEMS[name]
    require_root()
    require_tools(*fs.tools)
    with fs.mount() as root:
        lower = sorted((d for d in root.iterdir() if d.name.startswith("d")), reverse=True)
        yield Mounted(fs, root, lower_dirs=lower if name == "overlayfs" else [])
