"""Extended attributes and mount points: what the POSIX backend reads and sets of them.

Linux only in practice: Python has :func:`os.listxattr` and friends on Linux
alone, so elsewhere a file has no attributes to carry (an empty answer, not an
error). Every call is relative to an open directory or on an open file: the
replaced file is read through ``/proc/self/fd/DIR/NAME`` without following a
symlink at its last component, so the directory is the one held open, never
the path resolved again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from collections.abc import Callable
from typing import Final

from crashsafe._platform._status import Status

assert sys.platform != "win32", "crashsafe._platform._xattr is not for Windows"

__all__ = ["ACL_ACCESS", "NOT_CARRIED", "copy_attributes", "is_mount_point"]

# Not carried, on purpose: the kernel removes file capabilities on any write
# to the file (it must: they are a privilege tied to the exact content), so a
# copy set before the data would be dropped by the first write anyway, and one
# set after would grant the privilege to content nobody vetted.
NOT_CARRIED: Final = frozenset({"security.capability"})
ACL_ACCESS: Final = "system.posix_acl_access"
# A directory's default ACL cannot be on a file; listed for clarity.
_SKIPPED: Final = frozenset({"system.posix_acl_default"})
# Errors by which setting or reading one attribute says "not here, not by you";
# anything else (EIO, ENOSPC) fails the write.
_NOT_KEPT: Final = frozenset(
    {errno.EPERM, errno.EACCES, errno.EOPNOTSUPP, errno.ENOTSUP, errno.E2BIG, errno.ERANGE,
     errno.EINVAL}
)  # fmt: skip
_PROC: Final = os.path.isdir("/proc/self/fd")


def _describe(name: str, error: OSError) -> str:
    code = errno.errorcode.get(error.errno or 0, str(error.errno))
    return f"{name} ({code}: {os.strerror(error.errno or 0)})"


def copy_attributes(dir_fd: int, name: str, fd: int) -> tuple[list[str], bool]:
    """Give the open file *fd* exactly the extended attributes of the file *name* in
    the directory *dir_fd* (a symlink there is not followed).

    Every attribute the process can list is copied (``user.*``,
    ``security.*`` such as the SELinux label, ``system.posix_acl_access``,
    ``trusted.*`` when privileged), except :data:`NOT_CARRIED`; an access ACL
    of *fd* that *name* lacks (inherited from the directory's default ACL) is
    removed. Returns the attributes that could not be kept, each with its
    reason (capabilities among them), and whether the access ACL of *fd* was
    set or removed (which changes its mode's group bits: the caller sets the
    mode again). Raises :class:`FileNotFoundError` for a *name* removed since
    the caller looked at it (or hidden for a moment by a rename on FUSE: the
    caller tries again), and the :class:`OSError` of any other failure.
    """
    if sys.platform != "linux" or not _PROC:  # pragma: no cover - no xattr calls in Python
        return [], False
    path = f"/proc/self/fd/{dir_fd}/{name}"
    names = _names(lambda: os.listxattr(path, follow_symlinks=False))
    present = _names(lambda: os.listxattr(fd))
    lost: list[str] = []
    acl_changed = False
    for attribute in names:
        if attribute in NOT_CARRIED:
            lost.append(f"{attribute} (never carried: the kernel drops it on a write)")
            continue
        present.discard(attribute)
        try:
            os.setxattr(fd, attribute, os.getxattr(path, attribute, follow_symlinks=False))
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.ENOENT):
                continue  # removed from the old file, or the file itself, since the listing
            if e.errno not in _NOT_KEPT:
                raise
            lost.append(_describe(attribute, e))
            continue
        acl_changed = acl_changed or attribute == ACL_ACCESS
    if ACL_ACCESS in present:
        # The new file inherited the directory's default ACL; the replaced file
        # had none, and "all" means what the replaced file had.
        with contextlib.suppress(OSError):
            os.removexattr(fd, ACL_ACCESS)
            acl_changed = True
    return lost, acl_changed


def _names(listing: Callable[[], list[str]]) -> set[str]:
    """The attribute names *listing* returns; none on a filesystem without them."""
    try:
        return set(listing()) - _SKIPPED
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        return set()


def is_mount_point(dir_fd: int, name: str, status: Status) -> bool:
    """Whether the entry *name* in the directory *dir_fd*, of *status*, is the root of
    a mount (a bind-mounted file), which no rename can replace.

    From *status* when it knows (statx's ``STATX_ATTR_MOUNT_ROOT``); else
    whether the entry's path (the directory's, as ``/proc/self/fd`` names it,
    joined with *name*) is a mount point in ``/proc/self/mountinfo``, which
    lists every mount of this process's namespace, same device or not. No
    descriptor is opened for it (a signal handler that raises cannot leak one).
    Where ``/proc`` cannot be read, False: the rename then fails with ``EBUSY``
    by itself, publishing nothing.
    """
    if status.mount_root is not None:
        return status.mount_root
    try:
        where = os.readlink(f"/proc/self/fd/{dir_fd}")
        with open("/proc/self/mountinfo", "rb") as table:
            mounts = table.read()
    except OSError:
        return False
    path = os.fsencode(os.path.join(where, name))
    for line in mounts.splitlines():
        # ID PARENT MAJOR:MINOR ROOT MOUNT-POINT ...; the mount point escapes
        # space, tab, newline and backslash as octal.
        fields = line.split(b" ", 5)
        if len(fields) > 4 and _OCTAL.sub(_unescape, fields[4]) == path:
            return True
    return False


_OCTAL: Final = re.compile(rb"\\([0-7]{3})")


def _unescape(match: re.Match[bytes]) -> bytes:
    return bytes([int(match[1], 8)])
