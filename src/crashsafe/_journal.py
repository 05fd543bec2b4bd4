"""The directory side of the transaction protocol: its names, lock, journal and recovery.

:mod:`crashsafe.transactions` describes the protocol and runs commits; this
module holds what a commit and a recovery both do to the directory, each step
through an open :class:`~crashsafe._platform.Directory`: the lock
(:func:`locked`), the journal's format (:func:`read_journal`), redoing it
(:func:`apply`), undoing a commit that never reached its commit point
(:func:`unstage`, and the listing in :func:`recover_locked`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from crashsafe import _platform
from crashsafe._checks import Durability, single_name
from crashsafe.errors import ForeignJournalError, SnapshotDeadlockError

__all__ = [
    "FORMAT",
    "JOURNAL",
    "LOCK",
    "STAGED",
    "apply",
    "check_name",
    "is_staged",
    "locked",
    "read_journal",
    "recover_locked",
    "sync",
    "unstage",
]

JOURNAL: Final = ".crashsafe-journal"
LOCK: Final = ".crashsafe-tx.lock"
STAGED: Final = ".crashsafe-tx."
FORMAT: Final = 1


def check_name(name: object) -> str:
    """*name* as one file name that is none of the protocol's own;
    :class:`ValueError` (or :class:`TypeError`) otherwise."""
    # Journal entries and the ops of a transaction are keyed by this str.
    name = single_name(name)
    if name in (JOURNAL, LOCK) or name.startswith(STAGED):
        raise ValueError(f"{name!r} is reserved for crashsafe's transaction protocol")
    return name


def sync(directory: _platform.Directory, durability: Durability) -> None:
    """Fsync *directory* unless *durability* is ``"none"``."""
    if durability != "none":
        directory.sync()


# The lock files this thread holds a snapshot's shared lock on, by (st_dev,
# st_ino): an exclusive lock on a new open of the same file would wait for
# that shared lock, which is this thread's own, forever.
_snapshots = threading.local()


def _held() -> set[tuple[int, int]]:
    held: set[tuple[int, int]] | None = getattr(_snapshots, "held", None)
    if held is None:
        held = _snapshots.held = set()
    return held


@contextmanager
def locked(
    path: str, *, shared: bool, pinned: _platform.Directory | None = None
) -> Iterator[_platform.Directory]:
    """Hold the transaction lock of the directory at *path* (exclusive, or
    *shared* for a snapshot) and yield the open directory.

    *pinned*: a transaction's own open directory, used instead of opening
    *path* again and left open (the transaction closes it). Raises
    :class:`~crashsafe.errors.SnapshotDeadlockError` for an exclusive lock
    this thread's own snapshot would block for ever.
    """
    directory = _platform.Directory(path) if pinned is None else pinned
    try:
        fd = directory.open_lock(LOCK)
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            if not shared and key in _held():
                raise SnapshotDeadlockError(path)
            _platform.lock(fd, shared=shared)
            if shared:
                _held().add(key)
            try:
                yield directory
            finally:
                if shared:
                    _held().discard(key)
        finally:
            os.close(fd)  # closing the last descriptor releases the lock
    finally:
        if pinned is None:
            directory.close()


def recover_locked(directory: _platform.Directory, durability: Durability = "durable") -> bool:
    """Finish or undo an interrupted commit; the caller holds the exclusive lock."""
    recovered = False
    if directory.lstat(JOURNAL) is not None:
        apply(directory, read_journal(directory), durability)
        recovered = True
    # A listing, not a probe of .crashsafe-tx.0: after a power cut, directory
    # changes that were not synced survive in any combination, gaps included.
    leftovers = [name for name in directory.names() if is_staged(name)]
    for name in leftovers:
        directory.remove(name)
    if leftovers:
        sync(directory, durability)
        recovered = True
    return recovered


def is_staged(name: str) -> bool:
    number = name[len(STAGED) :]
    return name.startswith(STAGED) and number.isdigit() and number.isascii()


def read_journal(directory: _platform.Directory) -> list[tuple[str, str, str | None]]:
    import json

    try:
        doc = json.loads(directory.read(JOURNAL))
        if doc["format"] != FORMAT:
            raise ValueError(f"format {doc['format']!r}, this crashsafe reads {FORMAT}")
        ops = [(str(op), check_name(name), staged) for op, name, staged in doc["ops"]]
        for op, _, staged in ops:
            if op not in ("write", "remove") or (op == "write") != isinstance(staged, str):
                raise ValueError(f"bad operation {op!r}")
            if isinstance(staged, str) and not is_staged(staged):
                # Recovery renames the staged name over the target: anything but
                # a name this protocol makes could move another file in.
                raise ValueError(f"{staged!r} is not a staged file's name")
    except (ValueError, KeyError, TypeError) as e:
        # Written atomically, the journal is whole or absent; anything else was
        # made by someone else, and guessing could destroy data.
        raise ForeignJournalError(os.path.join(directory.path, JOURNAL), str(e)) from e
    return ops


def apply(
    directory: _platform.Directory,
    ops: list[tuple[str, str, str | None]],
    durability: Durability,
) -> None:
    # Idempotent, so recovery can redo it after a crash at any point.
    for op, name, staged in ops:
        if op == "write":
            assert staged is not None
            directory.replace(staged, name)
        else:
            directory.remove(name)
    sync(directory, durability)
    directory.remove(JOURNAL)
    sync(directory, durability)


def unstage(directory: _platform.Directory, ops: list[tuple[str, str, str | None]]) -> None:
    # Before the commit point: undo, highest number first (see recovery).
    for op, _, staging in reversed(ops):
        if op == "write" and staging is not None:
            directory.remove(staging)
