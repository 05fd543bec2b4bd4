"""Real filesystems for tests: loop-mounted xfs, ext4 and btrfs, sized tmpfs, overlayfs.

Each context manager unmounts exactly what it mounted and detaches exactly the
loop device it attached, even when the test fails.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Iterator
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


def _umount(mnt: Path) -> None:
    # A test that failed mid-way may leave a process with a file open for a
    # moment; retry briefly, then detach lazily rather than leak the mount.
    for _ in range(20):
        if subprocess.run(["umount", str(mnt)], check=False, capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


@contextlib.contextmanager
def loop_mount(fstype: str, *, size_mb: int = 320, options: str = "") -> Iterator[Path]:
    """Mount a fresh *fstype* ("xfs", "ext4" or "btrfs") filesystem from a sparse image.

    *options* go to ``mount -o`` (for example ``noauto_da_alloc`` for ext4, so
    that ext4 shows the empty-file-after-rename bug that its default hides).
    Yields the mount point.
    """
    require_root()
    mkfs = {
        "xfs": ["mkfs.xfs", "-q", "-f"],
        "ext4": ["mkfs.ext4", "-q", "-F"],
        "btrfs": ["mkfs.btrfs", "-q", "-f"],
    }[fstype]
    require_tools(mkfs[0], "losetup")
    with _scratch() as base:
        img, mnt = base / "img", base / "mnt"
        mnt.mkdir()
        with open(img, "wb") as f:
            f.truncate(size_mb << 20)
        dev = run("losetup", "--find", "--show", str(img)).strip()
        try:
            run(*mkfs, dev)
            run("mount", *(["-o", options] if options else []), dev, str(mnt))
            try:
                yield mnt
            finally:
                _umount(mnt)
        finally:
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
    _umount(mnt)
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
            _umount(mnt)


@contextlib.contextmanager
def overlay(upper: Path) -> Iterator[Path]:
    """Mount an overlayfs whose lower layer is an empty directory and whose upper
    and work directories are made under *upper* (a mounted filesystem: a tmpfs or
    a loop filesystem). Yields the merged mount point; removes what it made."""
    require_root()
    lower, up, work = upper / "lower", upper / "upper", upper / "work"
    for d in (lower, up, work):
        d.mkdir()
    with _scratch() as base:
        mnt = base / "mnt"
        mnt.mkdir()
        options = f"lowerdir={lower},upperdir={up},workdir={work}"
        run("mount", "-t", "overlay", "-o", options, "overlay", str(mnt))
        try:
            yield mnt
        finally:
            _umount(mnt)
