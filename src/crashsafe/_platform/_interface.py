"""What a platform backend provides: the one statement of the seam's interface.

:class:`Backend` is what :mod:`crashsafe._platform` takes from the backend
module it chooses (``_posix`` or ``_windows``), and :class:`Directory` the open
directory every step works in. Type checkers check both backends against
these protocols (see the end of :mod:`crashsafe._platform`), and
``tests/test_platform.py`` checks on any OS that each backend exports exactly
these names with these signatures, so that the backends cannot drift apart.

Errors are the :class:`OSError` of the failing call, its errno intact, named
with the caller's path (the directory, or the directory joined with the
name) rather than a private or relative one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol, TypeVar

from crashsafe._platform._status import Status


class Directory(Protocol):
    """An open directory; every step names files relative to it.

    Where the platform can hold a directory open (POSIX), a rename of a
    parent during the write cannot make the temporary file and the target end
    up in different places, and :meth:`sync` syncs the directory that was
    actually written. Constructed from its path (``Directory(path)``); the
    path must name an existing directory, else the error of opening it.
    """

    @property
    def path(self) -> str:
        """The path it was opened by (``"."`` for an empty one)."""

    def close(self) -> None:
        """Let the directory go; no step may follow."""

    # ---------------------------------------------------------------- reading

    def lstat(self, name: str) -> Status | None:
        """The type, mode and owner of the entry *name* itself (a symlink is not
        followed), or None if absent."""

    def mtime(self, name: str) -> float | None:
        """When the regular file *name* was last modified (seconds since the epoch),
        not following a symlink; None if absent or not a regular file."""

    def readlink(self, name: str) -> str:
        """The target of the symlink *name*."""

    def is_mount_point(self, name: str, status: Status) -> bool:
        """Whether the entry *name*, of *status* (just read by :meth:`lstat`), is the
        root of a mount, such as a bind-mounted file, which no rename can replace."""

    def link_count(self, name: str) -> int:
        """The link count of the entry *name*, not following a symlink, read from
        the filesystem itself, not from an attribute cache that may be stale
        (FUSE): asked to confirm a count above 1 that :meth:`lstat` gave."""

    def copy_attributes(self, name: str, fd: int) -> tuple[list[str], bool]:
        """Give the open file *fd* exactly the extended attributes of the regular
        file *name* here (ACLs, SELinux label, ``user.*``; file capabilities
        never). Returns what could not be kept, each with its reason, and
        whether *fd*'s access ACL changed (then its mode must be set again).
        Nothing where the platform has no extended attributes."""

    def open_read(self, name: str) -> int:
        """Open the existing file *name* for reading, refusing a symlink; through
        the moments a rename over it makes it look missing (see
        :meth:`Backend.through_renames`)."""

    def read(self, name: str) -> bytes:
        """The whole content of the regular file *name* (a symlink is refused)."""

    def names(self) -> list[str]:
        """The names in the directory."""

    # ---------------------------------------------------------------- staging and publishing

    def create_temp(
        self,
        name: str,
        mode: int | None,
        owner: tuple[int, int] | None = None,
        *,
        named_suffix: str | None = None,
    ) -> tuple[int, str | None, int, tuple[str, ...]]:
        """Create an empty temporary file for target *name*, open for reading and
        writing, with its *owner* (where permitted) and exact *mode* already set.

        Returns ``(fd, temp, mode, lost)``: *temp* is the temporary name, or None
        for an anonymous file (nothing to clean up after a crash); *mode* is
        the mode the file has, read back (with *mode* None, the one ``open()``
        would give a new file here); *lost* names what of *mode* and *owner*
        the filesystem did not keep (ignored or refused), each with why;
        empty where everything held. With *named_suffix* (a str, maybe empty) the file
        always has a name, and the name ends with it (``atomic_path``'s staged
        path). On failure nothing is left; errors name the directory.
        """

    def publish(
        self, fd: int, temp: str | None, name: str, *, replace: bool, private: bool = False
    ) -> None:
        """Atomically make the staged file visible as *name*, then close *fd*.

        With *replace* False an existing *name* raises :class:`FileExistsError`,
        atomically; where the filesystem cannot refuse atomically (exFAT),
        :class:`~crashsafe.errors.UnsupportedByFilesystemError`, unless
        *private* (a name only the caller, under its lock, writes): then a
        plain rename. On any failure nothing visible has changed, *fd* is closed
        and no temporary name is left. Errors name the target.
        """

    def discard(self, fd: int, temp: str | None) -> None:
        """Close *fd* and remove the temporary name, if there is one."""

    def sync(self) -> None:
        """Make the renames and links in the directory durable.

        Returns quietly where the filesystem cannot sync directories at all
        (EINVAL or ENOTSUP from a directory fsync): this write can do no more.
        """

    def create_anonymous(self) -> int | None:
        """An anonymous file in the directory, private to its creator (mode 0o600),
        open for reading and writing, that :meth:`link_anonymous` can name later;
        None where the platform or the filesystem has no such files."""

    def link_anonymous(self, fd: int, name: str) -> None:
        """Give the file of :meth:`create_anonymous` (open as *fd*) the new *name*."""

    # ---------------------------------------------------------------- transactions and sweep

    def replace(self, src: str, dst: str) -> bool:
        """Rename *src* over *dst*; False if *src* does not exist."""

    def remove(self, name: str) -> bool:
        """Unlink *name*; False if it does not exist."""

    def open_lock(self, name: str) -> int:
        """Open (creating it if needed) the lock file *name*, never through a
        symlink; read-only where the caller may not create or write it."""

    # ---------------------------------------------------------------- whole directories

    def make_temp_directory(self, name: str, suffix: str) -> tuple[str, Directory]:
        """Create a private (0o700) directory under a fresh temporary name for
        target *name*, ending with *suffix*; return the name and the new
        directory, open (the caller closes it). Errors name this directory."""

    def new_directory_mode(self, name: str) -> int:
        """The mode ``mkdir`` gives a new directory here (0o777 less the umask, or
        as a default ACL says), learned from a probe, never from the umask."""

    def sync_tree(self) -> None:
        """fsync every regular file below this directory, then every directory,
        deepest first, this one last; symlinks are never followed. A directory
        fsync the filesystem does not support is not an error."""

    def set_own_metadata(self, mode: int, owner: tuple[int, int] | None) -> None:
        """Give this directory itself the *owner* (where permitted), then *mode*."""

    def exchange(self, a: str, b: str) -> None:
        """Swap the entries *a* and *b* atomically (``RENAME_EXCHANGE``). ``EINVAL``,
        ``EOPNOTSUPP`` or ``ENOSYS`` where the filesystem or the system cannot."""

    def rename_noreplace(self, src: str, dst: str) -> None:
        """Rename *src* (a directory too) to *dst*, atomically refusing an existing
        *dst* (:class:`FileExistsError`). ``EINVAL``, ``EOPNOTSUPP`` or ``ENOSYS``
        where the filesystem or the system cannot."""

    def symlink(self, target: str, name: str) -> None:
        """Create the symlink *name* pointing to *target*; an existing *name*
        raises :class:`FileExistsError`."""

    def remove_tree(self, name: str) -> None:
        """Remove the directory *name* and everything in it, following no symlink;
        errors are ignored (what is left is for :func:`crashsafe.sweep`)."""


_T = TypeVar("_T")

# The protocol by another name, for Backend, whose own Directory is a property.
_OpenDirectory = Directory


class Backend(Protocol):
    """The module-level steps, and the types, of a backend."""

    @property
    def Directory(self) -> Callable[[str], Directory]:
        """The backend's :class:`Directory`, constructed from a path."""

    @property
    def Status(self) -> type[Status]:
        """What :meth:`Directory.lstat` returns: type and mode bits, owner."""

    @property
    def signals_deferred(self) -> Callable[[], AbstractContextManager[None]]:
        """A context in which ``KeyboardInterrupt`` (or what a signal handler
        raises) cannot land between a syscall and the bookkeeping of what it
        did; signals that arrive meanwhile are handled right after it."""

    def copy_data(
        self,
        src_fd: int,
        dst_fd: int,
        size: int,
        progress: Callable[[int], object] | None = None,
    ) -> tuple[int, str]:
        """Copy *src_fd* from offset 0 to its end into the empty *dst_fd*, the
        fastest way the two files allow; return ``(bytes copied, method)``.
        *size* is what the caller expects (reserved ahead where possible);
        *progress(done)* is called as the copy goes."""

    def copy_into(self, src_fd: int, dst_fd: int) -> None:
        """Copy all of *src_fd* into the empty *dst_fd*; later writes to *dst_fd*
        land after the copy (append mode)."""

    def append_only(self, fd: int) -> None:
        """Make every later write to *fd* land at its end, as a file opened with
        ``O_APPEND`` (append mode of a file with no old content)."""

    def fsync_file(self, fd: int) -> None:
        """Flush the open file *fd* to stable storage, the strongest way the
        platform has."""

    def directory_sync_unsupported(self, error: OSError) -> bool:
        """Whether *error*, from syncing a directory, means the filesystem cannot
        sync directories at all (some FUSE, CIFS and shared folders) rather than a
        failure of this write."""

    def set_metadata(self, fd: int, mode: int, owner: tuple[int, int] | None) -> None:
        """Give the open file *fd* the *owner* (uid, gid), where permitted, then
        exactly *mode*."""

    def make_directories(self, path: str, *, sync: bool) -> _OpenDirectory:
        """Create the missing directories of *path* (mode 0o777 less the umask),
        never following a symlink in the part it creates; with *sync*, each of
        them and the existing directory that holds the first are made durable
        before it returns. Returns *path*'s directory, open (the one made, not
        the path resolved again), for the caller to close. A non-directory in
        the way raises :class:`NotADirectoryError` naming it; directories made
        before an error stay, as :func:`os.makedirs` leaves them."""

    def lock(self, fd: int, *, shared: bool = False, blocking: bool = True) -> bool:
        """Lock the open file *fd*, shared or exclusive; return whether it is held.

        The lock excludes other processes and other opens in this process, and
        dies with its holder. With *blocking*, wait and return True; without,
        return False at once if someone else holds it.
        """

    def unlock(self, fd: int) -> None:
        """Release the lock on *fd*."""

    def open_lock_file(self, path: str) -> int:
        """Open the lock file *path* read-only, creating it (mode 0o666 less the
        umask) where it is missing, never through a symlink and never blocking
        on a FIFO. A non-regular file there raises ``EINVAL``."""

    def lock_file_linked(self, path: str, fd: int) -> bool:
        """Whether *path* still names the file open as *fd* (it was not removed or
        replaced since it was opened)."""

    def open_appending(self, path: str) -> int:
        """Open the existing file *path* for reading and appending (following
        symlinks), never waiting on a FIFO, not inherited by child processes."""

    def open_reading(self, path: str) -> int:
        """Open *path* read-only (following symlinks), never waiting on a FIFO,
        not inherited by child processes; through the moments a rename over it
        makes it look missing (see :meth:`through_renames`)."""

    def renames_hide_files(self, where: str | int) -> bool:
        """Whether, on the filesystem of *where* (a path, or an open file or
        directory), a reader can find a file missing (ENOENT, ESTALE) for a
        moment while another file is renamed over it (FUSE and NFS on Linux)."""

    def through_renames(self, attempt: Callable[[], _T], where: str | int) -> _T:
        """*attempt()*, an open for reading of a file at *where* (its path, or its
        directory's descriptor), tried again where :meth:`renames_hide_files`
        while it fails with ENOENT or ESTALE: 10 tries at most, 0.213 s of
        waiting in all; then its last error. Other errors at once."""

    def create_private(self, path: str) -> int:
        """Create the new file *path* (an existing one raises ``FileExistsError``),
        mode 0o600, open for reading and writing."""

    def reopen_path(self, fd: int) -> str | None:
        """A path by which another program can open the regular file open as *fd*
        (``/proc/self/fd/N`` on Linux), or None where there is none."""

    def process_start(self, pid: int) -> int | None:
        """When process *pid* started (clock ticks since boot), or None if it does
        not exist, can no longer write (a zombie), or the platform cannot tell.
        A (pid, start) pair names one process for the life of a boot."""

    def boot_tag(self) -> int | None:
        """A 32-bit tag of this boot and pid namespace, within which (pid, start)
        pairs compare; None where the platform cannot tell."""
