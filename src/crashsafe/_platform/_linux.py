"""Linux-only calls of the POSIX backend: anonymous ``O_TMPFILE`` files, named
later through ``/proc``, ``renameat2``, and what ``/proc`` tells of a process
and of this boot.

Each says when it does not apply (None, or an errno), so the POSIX steps that
use it fall back to what every POSIX system has.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import Final

# As in _posix: type checkers skip the rest for Windows instead of reporting
# every POSIX call in it.
assert sys.platform != "win32", "crashsafe._platform._linux is not for Windows"

_O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_O_TMPFILE: Final = getattr(os, "O_TMPFILE", 0)
# Errors by which a filesystem says "no O_TMPFILE here" (ext2 without it,
# FUSE servers without tmpfile, NFS, older kernels); a named file follows.
_NO_TMPFILE: Final = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT})
_RENAME_NOREPLACE: Final = 1
_RENAME_EXCHANGE: Final = 2

# O_TMPFILE needs linkat() through /proc to give the file a name (AT_EMPTY_PATH
# would need CAP_DAC_READ_SEARCH).
TMPFILE_USABLE: Final = bool(_O_TMPFILE) and os.path.isdir("/proc/self/fd")


def open_tmpfile(dir_fd: int, mode: int) -> int | None:
    """An anonymous file with *mode* (less the umask) in the directory *dir_fd*,
    open for reading and writing; None where the filesystem has none.

    Only :func:`link_tmpfile` can give it a name; if the process dies first,
    the kernel frees it and nothing is left.
    """
    try:
        return os.open(".", _O_TMPFILE | os.O_RDWR | _O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in _NO_TMPFILE:
            raise
        return None


def link_tmpfile(fd: int, dir_fd: int, name: str) -> None:
    """Give the anonymous file open as *fd* the new *name* in the directory *dir_fd*.

    ``linkat(AT_SYMLINK_FOLLOW)`` of ``/proc/self/fd/N`` names the file the
    descriptor holds; Python calls linkat only with a directory descriptor
    (else link(2), which would link the /proc symlink itself).
    """
    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)


def proc_path(fd: int) -> str | None:
    """``/proc/self/fd/N``, when opening it reaches the regular file open as *fd*;
    None otherwise (not Linux, no /proc, or an anonymous or unlinked file, whose
    link points to ``/dir/#123 (deleted)``, which a program that resolves
    symlinks in the path cannot open)."""
    if not sys.platform.startswith("linux"):
        return None  # pragma: no cover - /proc/self/fd is Linux's
    proc = f"/proc/self/fd/{fd}"
    try:
        st = os.fstat(fd)
        named = os.stat(os.readlink(proc))
        if not stat.S_ISREG(st.st_mode) or (named.st_dev, named.st_ino) != (
            st.st_dev,
            st.st_ino,
        ):
            return None
        os.close(os.open(proc, os.O_RDONLY | _O_CLOEXEC))
    except OSError:
        return None
    return proc


def renameat2_noreplace(dir_fd: int, src: str, dst: str) -> None:
    """renameat2(RENAME_NOREPLACE) within *dir_fd*: for filesystems without hard
    links. ``ENOSYS`` where the C library has no renameat2."""
    _renameat2(dir_fd, src, dst, _RENAME_NOREPLACE, "no atomic create-only rename")


def renameat2_exchange(dir_fd: int, a: str, b: str) -> None:
    """renameat2(RENAME_EXCHANGE) within *dir_fd*: swap the entries *a* and *b*
    atomically. ``EINVAL`` or ``EOPNOTSUPP`` where the filesystem cannot,
    ``ENOSYS`` where the C library has no renameat2."""
    _renameat2(dir_fd, a, b, _RENAME_EXCHANGE, "no atomic exchange of two names")


def _renameat2(dir_fd: int, src: str, dst: str, flags: int, missing: str) -> None:
    import ctypes  # only here: rare path, and ctypes costs import time

    libc = ctypes.CDLL(None, use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is None:
        raise OSError(errno.ENOSYS, f"{missing} on this system", dst)
    rc = func(dir_fd, os.fsencode(src), dir_fd, os.fsencode(dst), flags)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), dst)


def process_start(pid: int) -> int | None:
    """Start time of process *pid* in clock ticks since boot.

    None if there is no such process, or it cannot write any more (a zombie:
    killed but not yet reaped by its parent), or /proc cannot tell (not Linux).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; the
    # fields after the last ')' are fixed: state is field 3, starttime is 22.
    fields = data[data.rfind(b")") + 2 :].split()
    if fields[:1] in ([b"Z"], [b"X"]):
        return None
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def boot_tag() -> int | None:
    """A 32-bit tag of this boot and pid namespace (pids compare only within
    one); None where /proc cannot tell."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            boot = int(f.read(8), 16)  # random per boot
        namespace = int(os.readlink("/proc/self/ns/pid").strip("pid:[]"))
    except (OSError, ValueError):
        return None
    # Not a secret, only a fingerprint: mixing the namespace inode into the
    # boot's random bits is enough to tell boots and namespaces apart.
    return (boot ^ namespace * 0x9E3779B1) & 0xFFFFFFFF


# statfs(2) f_type of the filesystems on which a reader can find a file missing
# while a writer renames another file over it: FUSE (passthroughs, sshfs,
# ntfs-3g, exfat-fuse; fuseblk has the same magic) and NFS. The kernel looks
# the name up, then asks the server for that entry, which the rename has just
# dropped: ENOENT, or ESTALE where the server's handle went stale (sshfs, NFS).
FUSE_SUPER_MAGIC: Final = 0x65735546
NFS_SUPER_MAGIC: Final = 0x6969
RENAMES_HIDE_FILES: Final = frozenset({FUSE_SUPER_MAGIC, NFS_SUPER_MAGIC})


def filesystem_magic(where: str | int) -> int | None:
    """The statfs(2) ``f_type`` of the filesystem holding the path or open file
    *where*; None where it cannot be read (no such path, no C library).

    ctypes is loaded only here, and only readers that already failed call it.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - a C library is always there on Linux
        return None
    # struct statfs starts with f_type, a long (__fsword_t) on every Linux ABI
    # this runs on; the buffer is larger than the whole struct anywhere.
    buffer = (ctypes.c_long * 64)()
    if isinstance(where, int):
        done = libc.fstatfs(where, buffer)
    else:
        done = libc.statfs(os.fsencode(where), buffer)
    if done != 0:
        return None
    return int(buffer[0]) & 0xFFFFFFFF
