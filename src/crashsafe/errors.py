"""Every error type crashsafe adds to the builtin ones, in one place.

Every failure *before* the target is replaced is raised as the original
:class:`OSError` (``errno``, ``filename`` and ``strerror`` intact), so
``except FileNotFoundError`` and friends keep working. The types here name
outcomes that have no builtin name, each built on the builtin a caller would
already catch for it: :class:`NotDurableError` (:class:`OSError`),
:class:`VerificationError`, :class:`JSONDocumentError` and
:class:`ForeignJournalError` (:class:`ValueError`),
:class:`LockTimeoutError` (:class:`TimeoutError`), :class:`NotRecordedError`
(:class:`KeyError`) and :class:`SnapshotDeadlockError`
(:class:`RuntimeError`); for object stores, :class:`ObjectStoreError`
(:class:`OSError`) with :class:`StoreCapabilityError` and
:class:`AmbiguousWriteError`, and :class:`UpdateConflictError`
(:class:`TimeoutError`); for targets a rename cannot replace as asked,
:class:`HardLinkedTargetError` and :class:`MountedTargetError`
(:class:`OSError`); for what a filesystem cannot do,
:class:`UnsupportedByFilesystemError` (:class:`OSError`); and the
warning :class:`MetadataNotPreservedWarning` (:class:`UserWarning`). Each
is exported from :mod:`crashsafe`, keeps its attributes through
:mod:`pickle` (so it crosses process boundaries), and is listed in the
README's table of errors.
"""

from __future__ import annotations

import errno as _errno
from typing import Any

__all__ = [
    "AmbiguousWriteError",
    "ForeignJournalError",
    "HardLinkedTargetError",
    "JSONDocumentError",
    "LockTimeoutError",
    "MetadataNotPreservedWarning",
    "MountedTargetError",
    "NotDurableError",
    "NotRecordedError",
    "ObjectStoreError",
    "SnapshotDeadlockError",
    "StoreCapabilityError",
    "UnsupportedByFilesystemError",
    "UpdateConflictError",
    "VerificationError",
]


class NotDurableError(OSError):
    """The target was replaced, but its durability could not be confirmed.

    Raised when the directory fsync that follows the rename fails. The new
    content is visible to every reader *now*; after a power cut the directory
    may still show the old content (or no file, for a new one). Retrying the
    directory fsync proves nothing (a failed fsync may have dropped the dirty
    state), so the honest remedy is to write the file again once the cause
    (a failing disk, a full journal) is fixed.

    ``errno`` and ``strerror`` come from the failed fsync; ``filename`` is the
    target path. The original error is chained as ``__cause__``.
    """

    def __str__(self) -> str:
        return (
            f"[Errno {self.errno}] {self.strerror}: {self.filename!r} was replaced, "
            "but the directory fsync failed, so the new content may not survive a power cut"
        )


class VerificationError(ValueError):
    """A staged file was rejected before it was published.

    Raised when a size check or a validator finds the content incomplete or
    invalid (a zstd stream cut short, a database whose pages do not fill the
    file, a copy whose byte count differs from its source). The target is
    untouched and the staged file removed. ``filename`` names the file that was
    checked, where there is one; the message says what was wrong.
    """

    def __init__(self, message: str, filename: str | None = None) -> None:
        super().__init__(message, filename)
        self.message = message
        self.filename = filename

    def __str__(self) -> str:
        return f"{self.filename}: {self.message}" if self.filename else self.message


class JSONDocumentError(ValueError):
    """A file meant to hold a JSON document does not hold a whole, valid one.

    Raised by :func:`read_json` and :func:`update_json` instead of returning
    anything parsed from a damaged file. Attributes: ``filename``; ``cause``,
    the likely reason in words (empty file, truncated, trailing data, invalid
    UTF-8, ...); ``detail``, what the parser said; ``lineno`` and ``colno``
    (from 1) and ``pos`` (characters from the start) of the fault, None when
    the fault has no position. The parser's own exception is chained as
    ``__cause__``.

    It is not a :class:`~crashsafe.VerificationError`: that one means new
    content was rejected before it was published, and the target is intact;
    this one means the file as it stands is damaged. An ``except`` meant for
    one should not catch the other.
    """

    def __init__(
        self,
        filename: str,
        cause: str,
        *,
        detail: str | None = None,
        lineno: int | None = None,
        colno: int | None = None,
        pos: int | None = None,
    ) -> None:
        super().__init__(filename, cause)
        self.filename = filename
        self.cause = cause
        self.detail = detail
        self.lineno = lineno
        self.colno = colno
        self.pos = pos

    def __str__(self) -> str:
        where = ""
        if self.lineno is not None:
            where = f" at line {self.lineno}, column {self.colno} (char {self.pos})"
        said = f" [{self.detail}]" if self.detail else ""
        return f"{self.filename}: not a valid JSON document{where}: {self.cause}{said}"


class LockTimeoutError(TimeoutError):
    """The lock on a path could not be taken within the timeout.

    ``filename`` is the path that was to be locked; ``filename2`` and
    ``lock_file`` name the lock file that someone else holds; ``timeout`` is
    the time waited, in seconds. Picklable, so it crosses process boundaries.
    """

    def __init__(self, path: str, lock_file: str, timeout: float) -> None:
        # One argument: OSError would read several as errno, strerror, filename.
        super().__init__(f"could not lock {path!r} within {timeout:g} s")
        self.filename = path
        self.filename2 = lock_file
        self.lock_file = lock_file
        self.timeout = timeout

    def __reduce__(self) -> tuple[type[LockTimeoutError], tuple[str, str, float]]:
        return type(self), (self.filename, self.lock_file, self.timeout)

    def __str__(self) -> str:
        return (
            f"could not lock {self.filename!r} within {self.timeout:g} s: its lock file "
            f"{self.lock_file!r} is held by another thread or process"
        )


class NotRecordedError(KeyError):
    """:meth:`ChecksumStore.verify` of a file the store holds no digest for.

    A :class:`KeyError` (``args`` is the store's key for the file, its
    absolute path), so ``except KeyError`` catches it too. ``filename`` is the
    path as the caller gave it, ``store`` the store's path. Picklable.
    """

    def __init__(self, key: str, filename: str, store: str) -> None:
        super().__init__(key)
        self.key = key
        self.filename = filename
        self.store = store

    def __reduce__(self) -> tuple[type[NotRecordedError], tuple[str, str, str]]:
        return type(self), (self.key, self.filename, self.store)

    def __str__(self) -> str:
        return (
            f"{self.filename!r} has no recorded checksum in {self.store!r} "
            "(never recorded, or forgotten)"
        )


class ForeignJournalError(ValueError):
    """A file at a transaction journal's name that crashsafe did not write.

    Raised by recovery (:func:`~crashsafe.recover`, and on entering
    :func:`~crashsafe.transaction` or :func:`~crashsafe.snapshot`, and before
    a commit) instead of acting on it: written atomically, a real journal is
    whole or absent, so anything else was made by someone else, and guessing
    could destroy data. Nothing was recovered and no file was touched.
    ``filename`` is the journal's path; ``reason`` says what was wrong with it.
    The parse error, if any, is chained as ``__cause__``.
    """

    def __init__(self, filename: str, reason: str) -> None:
        super().__init__(filename, reason)
        self.filename = filename
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"{self.filename}: not a crashsafe transaction journal ({self.reason}); "
            "nothing was recovered, and the directory's files were left as they are"
        )


class SnapshotDeadlockError(RuntimeError):
    """A commit or recovery in a directory inside a :func:`~crashsafe.snapshot`
    of it, in the same thread.

    The commit would wait for the snapshot's shared lock, which this thread
    holds until the commit returns: for ever. Raised instead, before anything
    is changed. ``directory`` is the directory's path.
    """

    def __init__(self, directory: str) -> None:
        super().__init__(directory)
        self.directory = directory

    def __str__(self) -> str:
        return (
            f"cannot commit or recover in {self.directory!r} inside a snapshot() of it "
            "in the same thread: the commit would wait for the snapshot forever"
        )


class ObjectStoreError(OSError):
    """An object store failed in a way that has no builtin name.

    Raised for an answer such as ``500 InternalError`` or ``503 SlowDown`` to a
    request that was not retried, or an endpoint that could not be reached.
    A missing object or bucket is :class:`FileNotFoundError` and a refused
    signature or policy :class:`PermissionError` instead, as locally.
    ``filename`` is the ``s3://`` URL, ``errno`` is ``EIO`` (the subclasses say
    otherwise), ``status`` the HTTP status when the server answered, else None.
    The client's exception is chained as ``__cause__``. Picklable.
    """

    default_errno = _errno.EIO

    def __init__(self, message: str, filename: str, *, status: int | None = None) -> None:
        super().__init__(self.default_errno, message, filename)
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.strerror, self.filename), {"status": self.status}

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class StoreCapabilityError(ObjectStoreError):
    """The endpoint cannot give the guarantee the operation needs; nothing was written.

    crashsafe probes each endpoint once (per process and bucket) for the
    conditional requests it relies on: ``If-None-Match: *`` for create-only
    writes, ``If-Match`` for compare-and-swap updates, and the same on the
    completion of a multipart upload. An operation that needs a condition
    the endpoint ignores raises this before writing, rather than falling back
    to a write that could lose data. ``errno`` is ``ENOTSUP``; the message
    names the endpoint and what it ignored.
    """

    default_errno = _errno.ENOTSUP


class AmbiguousWriteError(ObjectStoreError):
    """A write was sent, its answer was lost, and whether it landed cannot be told.

    crashsafe reads the object back after a lost answer and recognises its own
    write by a token in the object's metadata; this is raised only when that
    evidence is gone too (the object was replaced by a writer that is not
    crashsafe, or by more writers than its history keeps). The object holds a
    complete version, either this write or another; never a partial one.
    """


class UpdateConflictError(TimeoutError):
    """An update of an object lost the race to other writers too many times.

    Every attempt read the object, applied the function and tried to replace
    exactly the version read; each time another writer had replaced it first.
    Nothing this call computed was written. ``filename`` is the object's URL,
    ``attempts`` how many were made. Picklable.
    """

    def __init__(self, url: str, attempts: int) -> None:
        # One argument: OSError would read several as errno, strerror, filename.
        super().__init__(f"could not update {url!r} in {attempts} attempts")
        self.filename = url
        self.attempts = attempts

    def __reduce__(self) -> tuple[type[UpdateConflictError], tuple[str, int]]:
        return type(self), (self.filename, self.attempts)

    def __str__(self) -> str:
        return (
            f"could not update {self.filename!r}: other writers replaced it first in each of "
            f"{self.attempts} attempts; nothing was written"
        )


class HardLinkedTargetError(OSError):
    """The file to replace has more than one name (hard links); nothing was written.

    A replacement by rename gives *one* name a new file: every other name
    would keep the old content, silently splitting what the links shared. So
    every call that replaces a file refuses, before anything is staged, with
    ``errno`` ``EMLINK`` ("too many links": for this operation, there are).
    ``filename`` is the path, ``links`` the link count. To replace it anyway
    and let the other names keep the old file, pass ``hardlinks="break"``; to
    change the content every name sees, write the file in place yourself
    (``open(path, "r+b")``), which no crash-safe protocol can make atomic.
    Picklable.
    """

    def __init__(self, path: str, links: int) -> None:
        super().__init__(_errno.EMLINK, "has more than one hard link", path)
        self.links = links

    def __reduce__(self) -> tuple[type[HardLinkedTargetError], tuple[str, int]]:
        return type(self), (self.filename, self.links)

    def __str__(self) -> str:
        return (
            f"[Errno {self.errno}] {self.filename!r} has {self.links} hard links: replacing it "
            "by a rename would split them (the other names would keep the old content); "
            'pass hardlinks="break" to do that anyway, or write it in place yourself; '
            "nothing was written"
        )


class MountedTargetError(OSError):
    """The file to replace is a mount point (a bind-mounted file); nothing was written.

    A container's ``/etc/hosts``, ``/etc/resolv.conf`` and ``/etc/hostname``
    are files bind-mounted over the image's: ``rename`` onto a mount point
    fails with ``EBUSY``, so no atomic replacement is possible there. Raised
    with ``errno`` ``EBUSY`` before anything is staged; ``filename`` is the
    path. What to do: change the file where it is mounted from (on the host,
    where an atomic write works), or write it in place (``open(path, "r+b")``,
    not crash-safe). Picklable.
    """

    def __init__(self, path: str) -> None:
        super().__init__(_errno.EBUSY, "is a mount point", path)

    def __reduce__(self) -> tuple[type[MountedTargetError], tuple[str]]:
        return type(self), (self.filename,)

    def __str__(self) -> str:
        return (
            f"[Errno {self.errno}] {self.filename!r} is a mount point (a bind-mounted file): "
            "a rename cannot replace it; write it where it is mounted from, or in place; "
            "nothing was written"
        )


class UnsupportedByFilesystemError(OSError):
    """The filesystem cannot do what the call asks; nothing was written.

    Raised with ``errno`` ``EOPNOTSUPP`` before the target is touched, and
    nothing is left behind:

    - create-only (``mode="x"``, ``overwrite=False``) on a filesystem that
      has neither ``link()`` nor ``renameat2(RENAME_NOREPLACE)`` (exFAT):
      an existing file cannot be refused atomically there;
    - an explicit ``perm=`` that the filesystem did not keep (ntfs-3g with
      its default options and exFAT accept chmod and keep every file 0o777;
      sshfs refuses a non-root writer's chmod): the file would be published
      with other permissions than asked.

    ``filename`` is the target path, ``strerror`` what the filesystem
    cannot do. Picklable.
    """

    def __init__(self, path: str, what: str) -> None:
        super().__init__(_errno.EOPNOTSUPP, what, path)

    def __reduce__(self) -> tuple[type[UnsupportedByFilesystemError], tuple[str, str]]:
        return type(self), (str(self.filename), str(self.strerror))

    def __str__(self) -> str:
        return f"[Errno {self.errno}] {self.filename!r}: {self.strerror}; nothing was written"


class MetadataNotPreservedWarning(UserWarning):
    """A file was (or is being) written without some of the old file's metadata.

    The mode and owner carried from the replaced file (or the mode of a new
    file) are read back from the staged file: a filesystem that accepted
    chmod or chown and kept nothing (ntfs-3g, exFAT), or refused a chmod
    (sshfs, non-root), is named here. With ``preserve="all"``, every
    extended attribute of the replaced file is
    set on the staged file before any data is written. One the process may
    not set (``security.selinux`` without the right to relabel, ``trusted.*``
    unprivileged, an attribute the filesystem refuses) and file capabilities
    (``security.capability``, never carried: the kernel drops them on any
    write, on purpose) are named here instead of being dropped silently.
    Warned before any data is written: with ``warnings.simplefilter("error",
    MetadataNotPreservedWarning)`` the call raises it and nothing is
    published. ``filename`` is the target path, ``attributes`` the names
    not kept (each with its reason in the message).
    """

    def __init__(self, filename: str, lost: list[str]) -> None:
        super().__init__(filename, lost)
        self.filename = filename
        self.lost = list(lost)
        self.attributes = [entry.split(" ", 1)[0] for entry in lost]

    def __str__(self) -> str:
        return (
            f"{self.filename!r}: the replacement does not keep this metadata "
            f"of the old file: {'; '.join(self.lost)}"
        )
