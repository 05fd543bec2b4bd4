"""A persistent record of files' SHA-256 digests, safe across processes and crashes.

The store is one JSON document, readable by people and by ``jq``::

    {
      "format": "crashsafe-checksums",
      "version": 1,
      "sha256": {
        "/usr/local/bin/hook": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
      }
    }

Every change is a locked read-modify-write of that document
(:class:`~crashsafe.locking.FileLock` on the store, then
:func:`crashsafe.atomic_write`), so processes that record at the same time
never lose each other's entries, and a writer killed at any instant leaves the
old store or the new one, never a damaged one. Reads take no lock.

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
from collections.abc import Callable
from typing import Any, Final

from crashsafe import _platform
from crashsafe._checks import Durability, check_options, check_timeout
from crashsafe.documents import read_json, write_json
from crashsafe.errors import JSONDocumentError, NotRecordedError
from crashsafe.locking import FileLock

__all__ = ["ChecksumStore", "NotRecordedError", "sha256_file"]

_CHUNK: Final = 1 << 20
_FORMAT: Final = "crashsafe-checksums"
_VERSION: Final = 1


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
    """SHA-256 digests of files, kept in the JSON document *path*.

    :meth:`record` and :meth:`forget` change the store under its lock and
    write it atomically with *perm* and *durability* (as for
    :func:`crashsafe.atomic_write`; the store's lock file is
    ``.NAME.lock`` beside it). They wait at most *timeout* seconds for the
    lock (None: as long as it takes), then raise
    :class:`~crashsafe.LockTimeoutError`. A missing store is an
    empty one; it is created by the first :meth:`record`. A bad *perm* or
    *durability* raises :class:`ValueError` here, at construction.

    Every method raises :class:`~crashsafe.JSONDocumentError` if the
    store file is damaged or is not a checksum store; a damaged store is never
    overwritten. A bad *perm*, *durability* or *timeout* raises
    :class:`ValueError` here, not at the first write.
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
        try:
            digest = sha256_file(key)
        except OSError as e:
            _name(e, key, file)
            raise

        def put(files: dict[str, str]) -> bool:
            files[key] = digest
            return True

        self._change(put)
        return digest

    def verify(self, file: str | os.PathLike[str]) -> bool:
        """Whether *file* still has the recorded SHA-256.

        False if its content differs, or if it is gone or is no longer a
        regular file (it is then not the file that was recorded). Raises
        :class:`NotRecordedError` (a :class:`KeyError`) if *file* was never
        recorded (or was forgotten): "unknown" is neither "intact" nor
        "changed", and a caller that checks a list of files should decide what
        an unknown one means. Other :class:`OSError` of reading it
        (``PermissionError``) propagate, naming *file* as given.
        """
        key = _key(file)
        expected = self._files().get(key)
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

        def drop(files: dict[str, str]) -> bool:
            return files.pop(key, None) is not None

        self._change(drop)

    def items(self) -> list[tuple[str, str]]:
        """A snapshot of the store: (path, hex digest) pairs sorted by path."""
        return sorted(self._files().items())

    def _files(self) -> dict[str, str]:
        document = read_json(self.path, None)
        return {} if document is None else self._check(document)

    def _check(self, document: Any) -> dict[str, str]:
        def bad(why: str) -> JSONDocumentError:
            return JSONDocumentError(self.path, f"not a crashsafe checksum store: {why}")

        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise bad(f'expected an object with "format": "{_FORMAT}"')
        if document.get("version") != _VERSION:
            raise bad(f"version {document.get('version')!r}; this crashsafe reads {_VERSION}")
        files = document.get("sha256")
        if not isinstance(files, dict):
            raise bad('"sha256" is not an object')
        for name, digest in files.items():
            if not (isinstance(digest, str) and len(digest) == 64 and _is_hex(digest)):
                raise bad(f"the digest of {name!r} is not 64 hex digits")
        return files

    def _change(self, change: Callable[[dict[str, str]], bool]) -> None:
        with FileLock(self.path, timeout=self.timeout):
            files = self._files()
            if change(files):
                document = {
                    "format": _FORMAT,
                    "version": _VERSION,
                    "sha256": dict(sorted(files.items())),
                }
                write_json(self.path, document, perm=self.perm, durability=self.durability)

    def __repr__(self) -> str:
        return f"<crashsafe.ChecksumStore {self.path!r}>"


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
