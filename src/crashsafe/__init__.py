"""crashsafe: file writes that are all-or-nothing and durable.

A reader of a file written through crashsafe sees the complete old content or
the complete new content, after a ``kill -9`` of the writer or a power cut at
any instant; never an empty file, a prefix or a mix. See the README for what
each durability level survives and what is not promised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crashsafe.atomic import AtomicFile, atomic_open, atomic_write, write_file_atomic
from crashsafe.errors import (
    AmbiguousWriteError,
    ForeignJournalError,
    HardLinkedTargetError,
    JSONDocumentError,
    LockTimeoutError,
    MetadataNotPreservedWarning,
    MountedTargetError,
    NotDurableError,
    NotRecordedError,
    ObjectStoreError,
    SnapshotDeadlockError,
    StoreCapabilityError,
    UnsupportedByFilesystemError,
    UpdateConflictError,
    VerificationError,
)
from crashsafe.staging import sweep

if TYPE_CHECKING:
    from crashsafe import validators
    from crashsafe.batch import write_many
    from crashsafe.checksums import ChecksumStore
    from crashsafe.copying import CopyResult, atomic_copy
    from crashsafe.directories import atomic_directory
    from crashsafe.documents import read_json, update, update_json, write_json
    from crashsafe.locking import FileLock
    from crashsafe.objectstore import S3Store
    from crashsafe.staged_path import atomic_path
    from crashsafe.transactions import recover, snapshot, transaction

__all__ = [
    "AmbiguousWriteError",
    "AtomicFile",
    "ChecksumStore",
    "CopyResult",
    "FileLock",
    "ForeignJournalError",
    "HardLinkedTargetError",
    "JSONDocumentError",
    "LockTimeoutError",
    "MetadataNotPreservedWarning",
    "MountedTargetError",
    "NotDurableError",
    "NotRecordedError",
    "ObjectStoreError",
    "S3Store",
    "SnapshotDeadlockError",
    "StoreCapabilityError",
    "UnsupportedByFilesystemError",
    "UpdateConflictError",
    "VerificationError",
    "atomic_copy",
    "atomic_directory",
    "atomic_open",
    "atomic_path",
    "atomic_write",
    "read_json",
    "recover",
    "snapshot",
    "sweep",
    "transaction",
    "update",
    "update_json",
    "validators",
    "write_file_atomic",
    "write_json",
    "write_many",
]
__version__ = "0.1.0"

# Imported on first use, so that a program that only writes small files does
# not pay for them at start-up. No module of the package may share a name with
# anything exported here: importing a submodule binds its name on the package,
# over whatever the name held (tests/test_api.py checks every import order).
_LAZY = {
    "CopyResult": "crashsafe.copying",
    "atomic_copy": "crashsafe.copying",
    "atomic_directory": "crashsafe.directories",
    "write_many": "crashsafe.batch",
    "ChecksumStore": "crashsafe.checksums",
    "read_json": "crashsafe.documents",
    "update": "crashsafe.documents",
    "update_json": "crashsafe.documents",
    "write_json": "crashsafe.documents",
    "FileLock": "crashsafe.locking",
    "S3Store": "crashsafe.objectstore",
    "atomic_path": "crashsafe.staged_path",
    "recover": "crashsafe.transactions",
    "snapshot": "crashsafe.transactions",
    "transaction": "crashsafe.transactions",
}


def __getattr__(name: str) -> object:
    import importlib

    if name == "validators":
        return importlib.import_module("crashsafe.validators")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'crashsafe' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazily imported names too, so that completion offers them before first use.
    return sorted(set(globals()) | set(__all__))
