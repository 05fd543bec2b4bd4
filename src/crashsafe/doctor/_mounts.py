"""What the kernel says about the mount that holds a directory, and its disk.

From ``/proc/self/mountinfo`` (type, source, options: the mount's own and the
superblock's), and from ``/sys`` (the disk's write cache and FUA, a loop
device's backing file). Read, never guessed from a path's name.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

# As in crashsafe._platform._posix: type checkers skip the rest for Windows.
assert sys.platform != "win32", "crashsafe.doctor is for Linux"

MOUNTINFO = "/proc/self/mountinfo"
NETWORK_TYPES = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs", "lustre", "gpfs"}
)
MEMORY_TYPES = frozenset({"tmpfs", "ramfs"})


@dataclass(frozen=True)
class Mount:
    """One line of ``/proc/self/mountinfo``: the mount that holds a path."""

    mount_point: str
    fstype: str
    source: str
    device: str  # "major:minor" as mountinfo gives it
    options: tuple[str, ...]  # the mount's own (rw, relatime, ...) and the superblock's

    def option(self, name: str) -> str | None:
        """The value of ``name=value`` among the options; ``""`` for a bare flag, else None."""
        for o in self.options:
            key, eq, value = o.partition("=")
            if key == name:
                return value if eq else ""
        return None

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


@dataclass(frozen=True)
class Disk:
    """The block device under a mount, as ``/sys/block`` describes it."""

    name: str  # "vda", "loop3", "nvme0n1"
    write_cache: str | None  # "write back", "write through", or None where /sys has none
    fua: bool | None
    evidence: str
    backing_file: str | None = None  # a loop device's
    backing_mount: Mount | None = field(default=None, compare=False)


def _unescape(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo (octal).
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1 : i + 4].isdigit():
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _parse(line: str) -> Mount:
    head, _, tail = line.partition(" - ")
    fields = head.split()
    fstype, source, super_options = [*tail.split(), "", "", ""][:3]
    options = fields[5].split(",") + [o for o in super_options.split(",") if o]
    unique = tuple(dict.fromkeys(options))
    return Mount(_unescape(fields[4]), fstype, _unescape(source), fields[2], unique)


def mounts() -> list[Mount]:
    """Every mount this process sees, in the order the kernel lists them."""
    with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
        return [_parse(line) for line in f if line.strip()]


def mount_of(path: str) -> Mount:
    """The mount that holds *path* (an existing file or directory).

    The deepest mount point above the path's real location, preferring one
    whose device number is the path's own (mountinfo lists stacked mounts in
    order; the last of equal depth is the one on top). Raises the ``OSError``
    of resolving *path*.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"

    def above(m: Mount) -> bool:
        mp = m.mount_point.rstrip("/") + "/"
        return real == m.mount_point or (real + "/").startswith(mp)

    candidates = [m for m in mounts() if above(m)]
    if not candidates:  # pragma: no cover - / is always mounted
        raise FileNotFoundError(2, "no mount holds this path", path)
    depth = max(len(m.mount_point) for m in candidates)
    deepest = [m for m in candidates if len(m.mount_point) == depth]
    same_dev = [m for m in deepest if m.device == dev]
    return (same_dev or deepest)[-1]


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def _block_device(mount: Mount) -> tuple[int, int] | None:
    """The major and minor of the block device behind *mount*, if it has one.

    mountinfo's own number is the device's for ext4 and xfs, but an anonymous
    one (major 0) for btrfs; then the source (``/dev/loop0``) is asked.
    """
    major, _, minor = mount.device.partition(":")
    if major != "0":
        return int(major), int(minor)
    if mount.source.startswith("/dev/"):
        try:
            rdev = os.stat(mount.source).st_rdev
        except OSError:
            return None
        if rdev:
            return os.major(rdev), os.minor(rdev)
    return None


def disk_of(mount: Mount) -> Disk | None:
    """The disk under *mount* with its write cache and FUA, or None if it has none
    (tmpfs, overlay, FUSE, network filesystems)."""
    numbers = _block_device(mount)
    if numbers is None:
        return None
    sys_dev = os.path.realpath(f"/sys/dev/block/{numbers[0]}:{numbers[1]}")
    if not os.path.isdir(sys_dev):
        return None
    # A partition's queue is its disk's: the directory above it.
    disk_dir = os.path.dirname(sys_dev) if os.path.exists(f"{sys_dev}/partition") else sys_dev
    name = os.path.basename(disk_dir)
    cache = _read(f"{disk_dir}/queue/write_cache")
    fua = _read(f"{disk_dir}/queue/fua")
    evidence = (
        f"/sys/block/{name}/queue/write_cache={cache!r}, fua={fua!r}"
        f" (device {numbers[0]}:{numbers[1]})"
    )
    backing = _read(f"{disk_dir}/loop/backing_file")
    backing_mount = None
    if backing is not None:
        try:
            backing_mount = mount_of(backing.removesuffix(" (deleted)"))
        except OSError:
            backing_mount = None
    return Disk(name, cache, None if fua is None else fua == "1", evidence, backing, backing_mount)


def overlay_upper(mount: Mount) -> Mount | None:
    """The mount that holds an overlay's upper layer (where its writes go), if readable."""
    upper = mount.option("upperdir")
    if not upper:
        return None
    try:
        return mount_of(upper)
    except OSError:
        return None
