"""What the filesystem holding a directory can do, probed there; and "does not apply".

Tests state what they require of the filesystem, not which one they expect:
``needs(workdir, "symlinks")`` skips the test with the reason the probe saw
("does not apply on exfat: no symlinks (symlink() gives EPERM)") where the
filesystem lacks it.

Two kinds of skip, kept apart on purpose:

* :func:`tests.harness.require.require`: something the *machine* lacks (root, a
  tool). CI can provide it, so under ``CI=true`` it fails the run.
* :func:`does_not_apply` / :func:`needs`: the *filesystem* cannot do what the test
  is about (a symlink test on exFAT). Nothing can provide it; it stays a skip under
  CI, and its reason starts with "does not apply on NAME:" so the summary lists
  each one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn

import pytest

from tests.harness.filesystems import FILESYSTEMS

Capability = Literal[
    "o_tmpfile",
    "rename_noreplace",
    "rename_exchange",
    "hardlinks",
    "symlinks",
    "absolute_symlinks",
    "chmod",
    "chown",
    "xattrs",
    "reflink",
    "case_sensitive",
    "dir_fsync",
    "fifos",
    "create_only",
    "streamed_copy",
]
CAPABILITIES: tuple[Capability, ...] = Capability.__args__  # type: ignore[attr-defined]

FICLONE = 0x40049409
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100
# The prefix of every probe's scratch directory, so that a leftover is recognisable.
PROBE_PREFIX = ".fsprobe-"

_libc = ctypes.CDLL(None, use_errno=True)
# Filesystems the matrix mounted, by device number: their matrix name ("ext4-journal")
# says more than the type in /proc/self/mounts ("ext4").
_labels: dict[tuple[int, str], str] = {}
_cache: dict[tuple[int, str], Capabilities] = {}


@dataclass(frozen=True)
class Capabilities:
    """What one filesystem did when probed. ``why[c]`` says what the probe saw
    for each capability ``c`` that is missing, in words a skip reason can use."""

    label: str
    fstype: str
    present: frozenset[Capability]
    why: dict[Capability, str]
    # The mode every file shows where chmod is not kept (0o777 on exFAT), else None.
    fixed_mode: int | None = None

    def __getitem__(self, capability: Capability) -> bool:
        return capability in self.present

    def mode_shown(self, mode: int) -> int:
        """The mode a file given *mode* shows here: *mode*, or the one every file
        shows on a filesystem that keeps no modes."""
        return mode if self.fixed_mode is None else self.fixed_mode

    @property
    def readers_may_miss(self) -> bool:
        """Whether a reader racing a rename may find no file (documented per
        filesystem of the matrix: FUSE; see Filesystem.readers_may_miss)."""
        fs = FILESYSTEMS.get(self.label)
        return fs is not None and fs.readers_may_miss

    @property
    def dir_fsync_durable(self) -> bool | None:
        """Whether a directory fsync that returns 0 makes entries durable: no probe
        can see it, so it is the registry's documented fact for a filesystem of
        the matrix (``None``: memory only, or not one of the matrix)."""
        fs = FILESYSTEMS.get(self.label)
        return fs.dir_fsync_durable if fs is not None else None


def _mount_of(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(mount point, type) from /proc/self/mounts for the mount holding *path*."""
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            mnt = fields[1].replace("\\040", " ")
            inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best):
                best, kind = mnt, fields[2]
    return best, kind


def _key(path: str | os.PathLike[str]) -> tuple[int, str]:
    # Device numbers are reused as soon as a loop device or an anonymous one is
    # freed; the mount point (a fresh temporary directory each time) tells mounts apart.
    return os.stat(path).st_dev, _mount_of(path)[0]


def label_mount(path: Path, label: str) -> None:
    """Name the filesystem holding *path* *label* in skip reasons (the matrix's name)."""
    key = _key(path)
    _labels[key] = label
    _cache.pop(key, None)


def fstype(path: str | os.PathLike[str]) -> str:
    """The type /proc/self/mounts gives for the mount holding *path*."""
    return _mount_of(path)[1]


def capabilities(path: str | os.PathLike[str]) -> Capabilities:
    """Probe (once per mount) what the filesystem holding directory *path* can
    do, in a scratch directory there that is removed after."""
    key = _key(path)
    if key not in _cache:
        _cache[key] = _probe(Path(path), _labels.get(key) or fstype(path))
    return _cache[key]


def does_not_apply(label: str, reason: str) -> NoReturn:
    """Skip the calling test: it cannot apply on filesystem *label* for *reason*.
    Not a missing requirement: it stays a skip under CI (see the module's doc)."""
    pytest.skip(f"does not apply on {label}: {reason}")


def needs(path: str | os.PathLike[str], *required: Capability) -> Capabilities:
    """Skip the calling test (:func:`does_not_apply`) unless the filesystem holding
    *path* has every capability in *required*; returns its capabilities."""
    caps = capabilities(path)
    missing = [c for c in required if not caps[c]]
    if missing:
        does_not_apply(caps.label, "; ".join(caps.why[c] for c in missing))
    return caps


def _renameat2(src: str, dst: str, flags: int) -> int:
    """renameat2() through libc; 0 or the errno."""
    if _libc.renameat2(AT_FDCWD, src.encode(), AT_FDCWD, dst.encode(), flags) == 0:
        return 0
    return ctypes.get_errno()


def _err(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def _probe(path: Path, label: str) -> Capabilities:
    present: set[Capability] = set()
    why: dict[Capability, str] = {}

    def check(name: Capability, missing: str, attempt: object) -> None:
        assert callable(attempt)
        try:
            result = attempt()
        except OSError as e:
            why[name] = f"{missing} ({_err(e)})"
            return
        if result is None or result is True:
            present.add(name)
        else:
            why[name] = f"{missing} ({result})"

    scratch = Path(tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=path))
    try:
        s = str(scratch)
        a, b, c = (os.path.join(s, n) for n in "abc")
        for name in (a, b):
            with open(name, "wb") as f:
                f.write(b"probe")

        def tmpfile() -> None:
            os.close(os.open(s, os.O_TMPFILE | os.O_WRONLY, 0o600))

        check("o_tmpfile", "no O_TMPFILE: open(O_TMPFILE) refused", tmpfile)

        def noreplace() -> str | bool:
            # Onto a free name: over an existing one the kernel answers EEXIST
            # itself, before the filesystem is asked whether it has the flag.
            e = _renameat2(a, c, RENAME_NOREPLACE)
            if e == 0:
                os.rename(c, a)
                return True
            return f"renameat2 gives {errno.errorcode.get(e, e)}"

        check("rename_noreplace", "no create-only rename: RENAME_NOREPLACE refused", noreplace)

        def exchange() -> str | bool:
            e = _renameat2(a, b, RENAME_EXCHANGE)
            if e == 0:
                _renameat2(a, b, RENAME_EXCHANGE)  # back, though the files are alike
                return True
            return f"renameat2 gives {errno.errorcode.get(e, e)}"

        check("rename_exchange", "no RENAME_EXCHANGE", exchange)
        check("hardlinks", "no hard links: link() refused", lambda: os.link(a, c))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(c)
        check("symlinks", "no symlinks: symlink() refused", lambda: os.symlink("a", c))

        def absolute() -> None:
            os.symlink("/", os.path.join(s, "abs"))
            os.readlink(os.path.join(s, "abs"))

        check("absolute_symlinks", "absolute symlinks unreadable: readlink() refused", absolute)

        fixed: list[int] = []

        def chmod() -> str | bool:
            for mode in (0o600, 0o640):
                os.chmod(a, mode)
                got = stat.S_IMODE(os.stat(a).st_mode)
                if got != mode:
                    fixed.append(got)
                    return f"chmod {mode:o} ignored: the mode stays {got:o}"
            return True

        check("chmod", "modes not kept", chmod)

        def chown() -> str | bool:
            if os.geteuid() != 0:
                return "not probed: not root"
            os.chown(a, 65534, 65534)
            st = os.stat(a)
            if (st.st_uid, st.st_gid) != (65534, 65534):
                return f"chown ignored: the owner stays {st.st_uid}:{st.st_gid}"
            os.chown(a, 0, 0)
            return True

        check("chown", "owners not kept", chown)

        def xattrs() -> str | bool:
            os.setxattr(a, "user.crashsafe-probe", b"1")
            return os.getxattr(a, "user.crashsafe-probe") == b"1" or "reads back different"

        check("xattrs", "no user xattrs: setxattr() refused", xattrs)

        def reflink() -> None:
            with open(a, "rb") as src, open(b, "r+b") as dst:
                fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())

        check("reflink", "no reflink: ioctl(FICLONE) refused", reflink)

        def case_sensitive() -> str | bool:
            return not os.path.exists(os.path.join(s, "A")) or "a and A are one name"

        check("case_sensitive", "case-insensitive names", case_sensitive)

        def dir_fsync() -> None:
            fd = os.open(s, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        check("dir_fsync", "directory fsync refused: fsync() of a directory fails", dir_fsync)
        check("fifos", "no FIFOs: mkfifo() refused", lambda: os.mkfifo(os.path.join(s, "fifo")))
        # Where files clone, atomic_copy reflinks: no chunk is ever copied.
        if "reflink" in present:
            why["streamed_copy"] = "atomic_copy reflinks here (FICLONE works): no chunked copy"
        else:
            present.add("streamed_copy")
        if "rename_noreplace" in present or "hardlinks" in present:
            present.add("create_only")
        else:
            refused: tuple[Capability, ...] = ("rename_noreplace", "hardlinks")
            seen = [why[c].rpartition("(")[2].rstrip(")") for c in refused]
            why["create_only"] = (
                f"create-only is not possible: RENAME_NOREPLACE refused ({seen[0]}), "
                f"link() refused ({seen[1]})"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Capabilities(label, fstype(path), frozenset(present), why, fixed[0] if fixed else None)
