"""A persistent record of files' SHA-256 digests, safe across processes and crashes.

The store is a JSON Lines file, readable by people and by ``jq`` (``jq -s .``
reads it as an array)::

    {"format": "crashsafe-checksums", "version": 2, "generation": "6f1c...", ...}
    {"sha256": {"/usr/local/bin/hook": "9f86d081884c7d65...b0f00a08"}}
    {"sha256": {"/usr/local/bin/hook": null}}

After the header, each line is one commit: its ``sha256`` object sets the
digests of the paths it names, and ``null`` forgets one; later lines win.
:meth:`ChecksumStore.record`, :meth:`~ChecksumStore.record_many` and
:meth:`~ChecksumStore.forget` append one line under the store's
:class:`~crashsafe.locking.FileLock` and fsync it, so processes that record at
the same time never lose each other's entries and a commit is durable on
return. When the appended lines outgrow the live entries (or a crash left a
torn last line) the writer compacts: it writes the live entries, one a line
and sorted by path, with :func:`crashsafe.atomic_write`. A ``kill -9`` or a
power cut at any instant leaves a store that reads as the records committed
before it, each one whole, never a damaged one (:mod:`crashsafe._checksum_log`
says why a torn line is always recognised). Reads take no lock, and a process
reads only what was appended since its last read.

Stores written by crashsafe before this format (one JSON document,
``"version": 1``) are read as before and rewritten as version 2 by their next
change. A crashsafe that reads only version 1 refuses a version 2 store with
:class:`~crashsafe.JSONDocumentError` ("trailing data after the document")
and never overwrites it.

Files are keyed by ``os.path.abspath``: absolute, taken against the current
directory at the call, normalised lexically (``a/./b``, ``a//b`` and
``a/c/../b`` are one key), symlinks *not* resolved. A key names the path a
program opens, and verifying it checks whatever that path leads to now: a
symlink turned to another file fails verification. (``..`` is collapsed
lexically, as ``abspath`` does; the file is then read at the collapsed path, so
key and content always agree.)
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from typing import Final

from crashsafe import _checksum_log as _log
from crashsafe import _platform
from crashsafe._checks import Durability, check_options, check_timeout
from crashsafe.atomic import atomic_write
from crashsafe.errors import NotRecordedError
from crashsafe.locking import FileLock, lock_file_for

__all__ = ["ChecksumStore", "NotRecordedError", "sha256_file"]

_CHUNK: Final = 1 << 20
# Appended bytes allowed beyond the snapshot's size before a compaction (and at
# least this many): a geometric growth, so compaction costs O(1) a commit.
_MIN_LOG: Final = 64 << 10


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of the regular file *path*, as 64 hex digits.

    Reads 1 MiB at a time into one reused buffer: memory stays flat whatever
    the file's size. Raises the :class:`OSError` of opening or reading it,
    :class:`IsADirectoryError` for a directory, and ``OSError(EINVAL)`` for
    any other file that is not a regular one (a FIFO planted at a recorded
    path would otherwise make the reader wait forever); each names *path*.
    """
    name = os.fsdecode(os.fspath(path))
    digest, mode = _sha256_regular(name)
    if digest is None:
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", name)
        raise OSError(errno.EINVAL, "Not a regular file", name)
    return digest


def _sha256_regular(path: str) -> tuple[str | None, int]:
    """(hex digest, st_mode) of *path*; the digest is None if it is not a regular file."""
    import hashlib

    fd = _platform.open_reading(path)  # a FIFO is opened without waiting for a writer
    try:
        mode = os.fstat(fd).st_mode
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        os.close(fd)
        return None, mode
    with open(fd, "rb", buffering=0) as f:
        digest = hashlib.sha256()
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest(), mode


def _key(file: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fsdecode(os.fspath(file)))


def _name(error: OSError, key: str, file: str | os.PathLike[str]) -> None:
    # The file is read at its key (see the module documentation); the caller
    # knows it by the name it gave.
    if error.filename == key:
        error.filename = os.fsdecode(os.fspath(file))


class ChecksumStore:
    """SHA-256 digests of files, kept in the store file *path* (JSON Lines).

    :meth:`record`, :meth:`record_many` and :meth:`forget` change the store
    under its lock (the lock file is ``.NAME.lock`` beside it), waiting at most
    *timeout* seconds for it (None: as long as it takes), then raising
    :class:`~crashsafe.LockTimeoutError`. A change is one line appended and,
    unless *durability* is ``"none"``, fsynced before the call returns; a
    compaction (and the creation of the store) is a
    :func:`crashsafe.atomic_write` with *perm* and *durability*. A missing
    store is an empty one; it is created by the first change. A bad *perm*,
    *durability* or *timeout* raises :class:`ValueError` here, at
    construction, not at the first write.

    The reading methods raise :class:`~crashsafe.JSONDocumentError` if the
    store file is damaged or is not a checksum store; a damaged store is never
    rewritten. (A change appends after checking the header and the last byte
    only, so that it costs the same at any size; damage elsewhere is found by
    the next read or compaction.) The methods are safe to call from several
    threads and processes at once.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        perm: int | None = None,
        durability: Durability = "durable",
        timeout: float | None = None,
    ) -> None:
        # Checked now, not at the first record() that would write with them.
        check_options("wb", perm, durability)
        self.path = _key(path)
        self.perm = perm
        self.durability: Durability = durability
        self.timeout = check_timeout(timeout)

    def record(self, file: str | os.PathLike[str]) -> str:
        """Compute the SHA-256 of *file* and store it; return it as 64 hex digits.

        The file is read as :func:`sha256_file` reads it, before the store is
        locked (a large file does not hold other writers up); the digest is
        that of the content read then. Raises the :class:`OSError` of reading
        *file* (``FileNotFoundError``, :class:`IsADirectoryError`,
        ``OSError(EINVAL)`` for another file that is not a regular one...),
        naming *file* as given, with the store untouched.
        """
        key = _key(file)
        digest = _digest(key, file)
        self._commit({key: digest})
        return digest

    def record_many(self, paths: Iterable[str | os.PathLike[str]]) -> dict[str, str]:
        """Record every file of *paths* in one commit (one line, one fsync); return
        ``{key: hex digest}`` in the order recorded.

        A path that is a directory (a symlink to one included) is walked
        whole: every regular file under it is recorded, in sorted order;
        symlinks and special files met in the walk are skipped, and
        subdirectories reached through a symlink are not entered; the store
        and its lock file are left out of a walk. Any other
        path is read as :meth:`record` reads it. All or nothing: every file is
        read before the store is locked, and any error (the :class:`OSError`
        of reading a file, as :meth:`record` raises it, or of walking a
        directory) raises with the store untouched. An empty *paths* writes
        nothing.
        """
        digests: dict[str, str] = {}
        # A walk of the store's own directory leaves out the store and its lock file,
        # which change with every commit.
        own = _identities(self.path, lock_file_for(self.path))
        for path in paths:
            key = _key(path)
            if os.path.isdir(key):
                for name in _walk(key, own):
                    digests[name] = _digest(name, name)
            else:
                digests[key] = _digest(key, path)
        if digests:
            self._commit(digests)
        return digests

    def verify(self, file: str | os.PathLike[str]) -> bool:
        """Whether *file* still has the recorded SHA-256.

        False if its content differs, or if it is gone or is no longer a
        regular file (it is then not the file that was recorded). Raises
        :class:`NotRecordedError` (a :class:`KeyError`) if *file* was never
        recorded (or was forgotten): "unknown" is neither "intact" nor
        "changed", and a caller that checks a list of files should decide what
        an unknown one means. Other :class:`OSError` of reading it
        (``PermissionError``) propagate, naming *file* as given. The store is
        read only as far as it grew since this process last read it.
        """
        key = _key(file)
        with _log.current(self.path) as state:
            expected = None if state is None else state.files.get(key)
        if expected is None:
            raise NotRecordedError(key, os.fsdecode(os.fspath(file)), self.path)
        try:
            digest, _ = _sha256_regular(key)
        except FileNotFoundError:
            return False
        except OSError as e:
            _name(e, key, file)
            raise
        return digest == expected

    def forget(self, file: str | os.PathLike[str]) -> None:
        """Remove *file*'s entry; nothing happens (and nothing is written) if there is none."""
        key = _key(file)
        self._commit({key: None}, unless_missing=key)

    def items(self) -> list[tuple[str, str]]:
        """A snapshot of the store: (path, hex digest) pairs sorted by path."""
        with _log.current(self.path) as state:
            return [] if state is None else sorted(state.files.items())

    def _commit(self, changes: _log.Changes, *, unless_missing: str | None = None) -> None:
        """Append *changes* as one line (or compact with them), under the lock;
        with *unless_missing*, only if that key is in the store."""
        line = _log.dump_line(changes)  # a path UTF-8 cannot hold raises before the lock
        with FileLock(self.path, timeout=self.timeout):
            try:
                fd = _platform.open_appending(self.path)
            except FileNotFoundError:
                if unless_missing is None:
                    self._compact(None, changes)
                return
            try:
                if unless_missing is not None:
                    with _log.current(self.path, fd) as state:
                        if state is None or unless_missing not in state.files:
                            return
                if not self._append(fd, line):
                    self._compact(fd, changes)
            finally:
                os.close(fd)

    def _append(self, fd: int, line: bytes) -> bool:
        """Append *line* and sync it; False (nothing written) where the store must
        be compacted instead: version 1, a torn last line, or a log grown past
        its bound."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "Not a regular file", self.path)
        found = _log.header_of(self.path, _log.read_at(fd, 0, _log.HEAD_READ))
        if found is None:
            return False  # version 1: upgraded by the compaction, which checks it whole
        header, snapshot = found
        grown = st.st_size - len(header) - snapshot
        if not 0 <= grown <= max(snapshot, _MIN_LOG) - len(line):
            return False
        if _log.read_at(fd, st.st_size - 1, 1) != b"\n":
            return False  # a torn line at the end: never append after it
        view = memoryview(line)
        while view:  # a short write (a full disk) leaves a torn line, skipped by readers
            view = view[os.write(fd, view) :]
        if self.durability != "none":
            _platform.fsync_file(fd)
        return True

    def _compact(self, fd: int | None, changes: _log.Changes) -> None:
        """Rewrite the store as its live entries with *changes* applied, atomically."""
        with _log.current(self.path, fd) as state:
            files = {} if state is None else dict(state.files)
        for name, digest in changes.items():
            if digest is None:
                files.pop(name, None)
            else:
                files[name] = digest
        content, header, snapshot = _log.dump_store(files)
        _log.forget_cached(self.path)  # if the write fails half-way, read whole next time
        atomic_write(self.path, content, perm=self.perm, durability=self.durability)
        st = os.stat(self.path)
        identity = (st.st_dev, st.st_ino)
        lines = 1 + len(files)
        state = _log.State(identity, header, snapshot, len(content), lines, files, _log.VERSION)
        _log.remember(self.path, state)

    def __repr__(self) -> str:
        return f"<crashsafe.ChecksumStore {self.path!r}>"


def _digest(key: str, file: str | os.PathLike[str]) -> str:
    try:
        return sha256_file(key)
    except OSError as e:
        _name(e, key, file)
        raise


def _identities(*paths: str) -> set[tuple[int, int]]:
    """(device, inode) of those of *paths* that exist."""
    found = set()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        found.add((st.st_dev, st.st_ino))
    return found


def _walk(top: str, leave_out: set[tuple[int, int]]) -> list[str]:
    """The regular files under the directory *top*, sorted, but those in *leave_out*
    (by device and inode); errors raise."""

    def fail(error: OSError) -> None:
        raise error

    found = []
    for root, dirs, files in os.walk(top, onerror=fail):
        dirs.sort()
        for name in files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in leave_out:
                found.append(path)
    return sorted(found)
