"""Real filesystems for tests: loop-mounted xfs, ext2/3/4, btrfs, ntfs-3g and exFAT, sized
tmpfs, overlayfs.

Each context manager unmounts exactly what it mounted and detaches exactly the
loop device it attached, even when the test fails.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.harness.require import require_root, require_tools


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="crashsafe-fs-"))
    try:
        yield base
    finally:
        with contextlib.suppress(OSError):
            (base / "img").unlink(missing_ok=True)
            (base / "mnt").rmdir()
            base.rmdir()


def unmount(mnt: Path) -> None:
    """Unmount *mnt* (a mount this harness made)."""
    # A test that failed mid-way may leave a process with a file open for a
    # moment; retry briefly, then detach lazily rather than leak the mount.
    for _ in range(20):
        if subprocess.run(["umount", str(mnt)], check=False, capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


# mkfs command (the device is appended) and mount command (device and mount point are
# appended) per filesystem type. ntfs-3g and exfat-fuse are FUSE daemons that mount a
# block device; the kernel's own drivers (ntfs3, exfat) are not built here.
MKFS = {
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "ext3": ["mkfs.ext3", "-q", "-F"],
    "ext2": ["mkfs.ext2", "-q", "-F"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
    "ntfs-3g": ["mkntfs", "-Q", "-F", "-q"],
    "exfat": ["mkfs.exfat"],
}
MOUNT = {
    "ntfs-3g": ["ntfs-3g"],
    "exfat": ["mount.exfat-fuse"],
}


@contextlib.contextmanager
def loop_mount(
    fstype: str, *, size_mb: int = 320, options: str = "", mkfs_options: tuple[str, ...] = ()
) -> Iterator[Path]:
    """Mount a fresh *fstype* filesystem (a key of :data:`MKFS`: "xfs", "ext4", "ext3",
    "ext2", "btrfs", "ntfs-3g", "exfat") from a sparse image on a loop device.

    *options* go to ``mount -o`` (for example ``noauto_da_alloc`` for ext4, so
    that ext4 shows the empty-file-after-rename bug that its default hides);
    *mkfs_options* go to mkfs before the device (for example ``("-m", "reflink=0")``
    for xfs). Yields the mount point.
    """
    require_root()
    mkfs = [*MKFS[fstype], *mkfs_options]
    mount = MOUNT.get(fstype, ["mount"])
    require_tools(mkfs[0], mount[0], "losetup")
    with _scratch() as base:
        img, mnt = base / "img", base / "mnt"
        mnt.mkdir()
        with open(img, "wb") as f:
            f.truncate(size_mb << 20)
        dev = run("losetup", "--find", "--show", str(img)).strip()
        try:
            run(*mkfs, dev)
            run(*mount, *(["-o", options] if options else []), dev, str(mnt))
            try:
                yield mnt
            finally:
                unmount(mnt)
        finally:
            # Still busy (a FUSE daemon closing it), the kernel detaches it when
            # released (autoclear); a retry could detach another test's device.
            subprocess.run(["losetup", "-d", dev], check=False, capture_output=True)


def remount(mnt: Path, options: str) -> None:
    """``mount -o remount,OPTIONS``, for example ``ro`` to get real EROFS."""
    run("mount", "-o", f"remount,{options}", str(mnt))


def cycle(mnt: Path) -> None:
    """Unmount and mount again: after a shutdown ioctl this replays the journal.

    After a shutdown ext4 lists ``shutdown`` among its options in
    /proc/self/mounts, which mount refuses ("bad option"); it is left out.
    """
    dev, _, _, options = next(
        fields[:4]
        for fields in map(str.split, Path("/proc/self/mounts").read_text().splitlines())
        if fields[1] == str(mnt)
    )
    options = ",".join(o for o in options.split(",") if o != "shutdown")
    unmount(mnt)
    run("mount", "-o", options, dev, str(mnt))


@contextlib.contextmanager
def tmpfs(*, size_kb: int) -> Iterator[Path]:
    """Mount a tmpfs of *size_kb* KiB, to fill it for real ENOSPC."""
    require_root()
    with _scratch() as base:
        mnt = base / "mnt"
        mnt.mkdir()
        run("mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt))
        try:
            yield mnt
        finally:
            unmount(mnt)


@contextlib.contextmanager
def overlay(upper: Path, *, fill_lower: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Mount an overlayfs whose lower, upper and work directories are made under
    *upper* (a mounted filesystem: a tmpfs or a loop filesystem). The lower layer is
    empty, or what *fill_lower* puts into it before the mount (files there are
    copied up to the upper layer when first written). Yields the merged mount point;
    removes what it made."""
    require_root()
    lower, up, work = upper / "lower", upper / "upper", upper / "work"
    for d in (lower, up, work):
        d.mkdir()
    if fill_lower is not None:
        fill_lower(lower)
    with _scratch() as base:
        mnt = base / "mnt"
        mnt.mkdir()
        options = f"lowerdir={lower},upperdir={up},workdir={work}"
        run("mount", "-t", "overlay", "-o", options, "overlay", str(mnt))
        try:
            yield mnt
        finally:
            unmount(mnt)
