"""``--crash-probe``: the persistence probes of the ALICE study, run for real.

A scratch filesystem of the diagnosed directory's type, with the mount options
that change what survives a crash, is made in a sparse image on a loop device.
Each probe writes in a fresh subdirectory, cuts the filesystem's power with the
shutdown ioctl (``FS_IOC_SHUTDOWN``, the number of ``XFS_IOC_GOINGDOWN`` and
``EXT4_IOC_SHUTDOWN``, with ``NOLOGFLUSH``: all I/O stops, the page cache and the
uncommitted journal are lost), unmounts and mounts again (replaying the
journal) and reads what is there. Root only. Exactly the loop device attached
here is detached, and the image removed, also on error.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

assert sys.platform != "win32", "crashsafe.doctor is for Linux"

from crashsafe.doctor._mounts import MEMORY_TYPES, Mount  # noqa: E402
from crashsafe.doctor._report import CrashReport, Finding  # noqa: E402

_SHUTDOWN: Final = 0x8004587D  # _IOR('X', 125, __u32)
_NOLOGFLUSH: Final = 2
REPEATS: Final = 5
_IMAGE_MB: Final = 320  # above mkfs.xfs's and mkfs.btrfs's minimum sizes
_MKFS: Final = {
    "ext4": ("mkfs.ext4", "-q", "-F"),
    "xfs": ("mkfs.xfs", "-q", "-f"),
    "btrfs": ("mkfs.btrfs", "-q", "-f"),
}
# The mount options, per type, that change what a crash leaves.
_KEPT: Final = {
    "ext4": ("data", "noauto_da_alloc", "auto_da_alloc", "nodelalloc", "barrier", "nobarrier"),
    "xfs": ("wsync",),
    "btrfs": ("flushoncommit", "noflushoncommit", "nodatacow"),
}
_OLD: Final = b"OLD-" * 16384  # 64 KiB
_NEW: Final = b"new+" * 16384
_UNRELATED: Final = "unrelated"


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def _kept_options(fstype: str, mount: Mount) -> str:
    keep = _KEPT.get(fstype, ())
    return ",".join(o for o in mount.options if o.partition("=")[0] in keep)


def _umount(mnt: str) -> None:
    # Briefly busy after a shutdown on a loaded machine: retry, then detach
    # lazily rather than leave the mount behind.
    for _ in range(50):
        if subprocess.run(["umount", mnt], check=False, capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", mnt], check=False, capture_output=True)


@dataclass
class _Loop:
    """The scratch filesystem: its image, the loop device attached to it (None
    once detached), its mount point and options."""

    base: str
    img: str
    dev: str | None
    mnt: str
    options: str
    mounted: bool = False

    def mount(self) -> None:
        assert self.dev is not None
        _run("mount", *(["-o", self.options] if self.options else []), self.dev, self.mnt)
        self.mounted = True

    def unmount(self) -> None:
        _umount(self.mnt)
        self.mounted = False

    def detach(self) -> None:
        if self.dev is not None:
            subprocess.run(["losetup", "-d", self.dev], check=False, capture_output=True)
            self.dev = None

    def cut_by_shutdown(self) -> None:
        """The shutdown ioctl: no more I/O, the page cache and the unwritten log lost."""
        fd = os.open(self.mnt, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, _SHUTDOWN, struct.pack("I", _NOLOGFLUSH))
        finally:
            os.close(fd)
        self.unmount()
        self.mount()

    def cut_by_copy(self, n: int) -> None:
        """A copy of the image now: every write the filesystem has issued to the
        loop device (it writes through the image's page cache, read here), none
        after; the copy is then mounted in the original's place."""
        copy = os.path.join(self.base, f"img-{n}")
        _run("cp", "--sparse=always", self.img, copy)
        self.unmount()
        self.detach()
        os.unlink(self.img)
        self.img = copy
        self.dev = _run("losetup", "--find", "--show", copy).strip()
        self.mount()


@contextlib.contextmanager
def _scratch_filesystem(fstype: str, options: str) -> Iterator[_Loop]:
    """A fresh *fstype* on a loop device, mounted with *options*; unmounted,
    detached and removed afterwards, whatever happened."""
    base = tempfile.mkdtemp(prefix="crashsafe-doctor-crash-")
    loop = _Loop(base, os.path.join(base, "img"), None, os.path.join(base, "mnt"), options)
    try:
        os.mkdir(loop.mnt)
        with open(loop.img, "wb") as f:
            f.truncate(_IMAGE_MB << 20)
        loop.dev = _run("losetup", "--find", "--show", loop.img).strip()
        _run(*_MKFS[fstype], loop.dev)
        loop.mount()
        yield loop
    finally:
        if loop.mounted:
            loop.unmount()
        loop.detach()
        shutil.rmtree(base, ignore_errors=True)


def _write(path: str, data: bytes, flags: int = os.O_TRUNC, *, sync: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | flags, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _outcome(path: str, old: bytes, new: bytes) -> str:
    """What the file at *path* holds after the crash, in one word."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return "missing"
    tail = data[len(old) :] if data.startswith(old) else None
    # Later keys win where they coincide (old is b"" for a new file).
    named = {old + new: "old+new", old: "old", b"": "empty", new: "new"}
    if data in named:
        return named[data]
    if not data.strip(b"\0"):
        return "zeros"
    return "old+zeros" if tail is not None and not tail.strip(b"\0") else "torn"


@dataclass(frozen=True)
class _Probe:
    name: str
    question: str
    steps: str
    act: Callable[[str], None]  # in the trial's directory, after its set-up
    commit: bool  # fsync an unrelated file before the cut, as any other process might
    observe: Callable[[str], str]  # after the remount: what the trial's directory holds


def _target(old: bytes, new: bytes) -> Callable[[str], str]:
    return lambda d: _outcome(f"{d}/target", old, new)


def _rename_without_fsync(d: str) -> None:
    _write(f"{d}/target.tmp", _NEW)
    os.rename(f"{d}/target.tmp", f"{d}/target")


def _fsynced_new_file(d: str) -> None:
    os.unlink(f"{d}/target")  # a new file, not one already named
    _sync_dir(d)
    _write(f"{d}/target", _NEW, sync=True)


def _truncate_then_write(d: str) -> None:
    _write(f"{d}/target", _NEW, os.O_TRUNC)


def _append_without_fsync(d: str) -> None:
    _write(f"{d}/target", _NEW, os.O_APPEND)


def _create_then_fsynced_rename(d: str) -> None:
    _write(f"{d}/first", b"created first")
    _write(f"{d}/target.tmp", _NEW, sync=True)
    os.rename(f"{d}/target.tmp", f"{d}/target")
    _write(f"{d}/target", b"", os.O_APPEND, sync=True)  # fsync the renamed file


def _order(d: str) -> str:
    created = os.path.exists(f"{d}/first")
    renamed = _outcome(f"{d}/target", _OLD, _NEW) == "new"
    if created == renamed:
        return "both" if created else "neither"
    return "rename, not the create" if renamed else "create, not the rename"


PROBES: Final = (
    _Probe(
        "rename_without_fsync",
        "rename over a file, no fsync, journal committed",
        "write target.tmp, rename over target, no fsync; another file fsynced; cut",
        _rename_without_fsync,
        True,
        _target(_OLD, _NEW),
    ),
    _Probe(
        "rename_uncommitted",
        "rename over a file, no fsync, nothing committed",
        "write target.tmp, rename over target, no fsync; cut at once",
        _rename_without_fsync,
        False,
        _target(_OLD, _NEW),
    ),
    _Probe(
        "fsynced_new_file",
        "new file fsynced, its directory not",
        "create target, write, fsync it, no directory fsync; cut",
        _fsynced_new_file,
        False,
        _target(b"", _NEW),
    ),
    _Probe(
        "truncate_then_write",
        "truncate + write, no fsync, journal committed",
        "open target O_TRUNC, write, close, no fsync; another file fsynced; cut",
        _truncate_then_write,
        True,
        _target(_OLD, _NEW),
    ),
    _Probe(
        "append_without_fsync",
        "append, no fsync, journal committed",
        "open target O_APPEND, write, close, no fsync; another file fsynced; cut",
        _append_without_fsync,
        True,
        _target(_OLD, _OLD + _NEW),
    ),
    _Probe(
        "create_then_rename",
        "create, then rename + fsync: create kept too?",
        "create first (no fsync), write and fsync target.tmp, rename over target, "
        "fsync target, no directory fsync; cut",
        _create_then_fsynced_rename,
        False,
        _order,
    ),
)


def _trial(probe: _Probe, loop: _Loop, n: int, *, by_copy: bool) -> str:
    d = f"{loop.mnt}/{probe.name}-{n}"
    os.mkdir(d)
    _write(f"{d}/target", _OLD, sync=True)
    _sync_dir(d)
    _sync_dir(loop.mnt)
    probe.act(d)
    if probe.commit:
        _write(f"{loop.mnt}/{_UNRELATED}", os.urandom(4096), sync=True)
    if by_copy:
        loop.cut_by_copy(n)
    else:
        loop.cut_by_shutdown()
    return probe.observe(d)


def run(kind: Mount, *, repeats: int = REPEATS, by_copy: bool = False) -> CrashReport:
    """Run every probe *repeats* times on a scratch filesystem like *kind*
    (its type, and its options that matter); report what each left.

    Each cut is the shutdown ioctl where the filesystem has one, else (or with
    *by_copy*, to compare the two) a copy of its loop image at that moment.
    """
    fstype = kind.fstype
    if fstype in MEMORY_TYPES:
        note = f"{fstype} lives in memory: a power cut loses everything; no probe needed"
        return CrashReport(fstype, "", note, ())
    if fstype not in _MKFS:
        note = f"cannot probe {fstype}: only ext4, xfs and btrfs are made on a loop device here"
        return CrashReport(fstype, "", note, ())
    if shutil.which(_MKFS[fstype][0]) is None or shutil.which("losetup") is None:
        note = f"cannot probe {fstype}: {_MKFS[fstype][0]} or losetup is not installed"
        return CrashReport(fstype, "", note, ())
    options = _kept_options(fstype, kind)
    findings: list[Finding] = []
    method = "shutdown ioctl NOLOGFLUSH"
    try:
        with _scratch_filesystem(fstype, options) as loop:
            why = _cannot_shut_down(loop.mnt)
            if why is None and by_copy:
                why = "asked for"
            if why is not None:
                # The cut as a disk would see it: the image copied at that moment.
                method = f"a copy of the loop image at the cut ({why})"
            serial = iter(range(1 << 30))
            for probe in PROBES:
                seen = Counter(
                    _trial(probe, loop, next(serial), by_copy=why is not None)
                    for _ in range(repeats)
                )
                findings.append(Finding(probe.name, probe.question, probe.steps, dict(seen)))
    except subprocess.CalledProcessError as e:
        # A tool that failed (losetup with no free device, mkfs, a remount
        # refused) ends the probes; what ran before it is still reported.
        said = (e.stderr or "").strip().splitlines()[-1:] or [f"exit status {e.returncode}"]
        note = f"stopped: {' '.join(map(str, e.cmd))}: {said[0]}"
        return CrashReport(fstype, options, note, tuple(findings), method)
    return CrashReport(fstype, options, "", tuple(findings), method)


def _cannot_shut_down(mnt: str) -> str | None:
    """Why the shutdown ioctl cannot crash the filesystem at *mnt* (btrfs on
    Linux 6.18 has none: ENOTTY), or None if it can.

    Asked with a flag no filesystem defines: one that has the ioctl refuses
    it with EINVAL and shuts nothing down.
    """
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _SHUTDOWN, struct.pack("I", 0x7FFFFFFF))
    except OSError as e:
        if e.errno == errno.EINVAL:
            return None
        return f"no shutdown ioctl: {e.strerror}"
    finally:
        os.close(fd)
    return "its shutdown ioctl took an undefined flag"
