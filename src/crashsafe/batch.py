"""Many small files written at once: each all-or-nothing, the fsyncs overlapped.

A durable write costs two flushes: the file's data, then its directory.
Written one by one, 1,000 files cost 2,000 flushes in a row. Here every file
is staged and written first; then the per-file steps 5 and 6 of the protocol
(fsync, rename) run on a pool of threads, so the filesystem commits many
flushes together; then each directory is synced once (step 7). The order
that makes one file safe is unchanged: its data is on disk before its name
points to it, and its rename is on disk before :func:`write_many` returns.

Every path is resolved once, first, by the resolution a single write uses
(:func:`crashsafe._target.locate`): that catches two spellings of one file
before anything is written, and each directory is opened once and serves
all its files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import BinaryIO, Final

from crashsafe import _platform
from crashsafe._checks import BytesLike, Durability, as_data, check_flag, check_options
from crashsafe._metadata import Hardlinks, Preserve, check_keywords, check_target
from crashsafe._target import Target, locate
from crashsafe.atomic import AtomicFile
from crashsafe.errors import NotDurableError

__all__ = ["write_many"]

# Files staged at a time: each holds a descriptor until it is published (and
# each directory one, shared by its files, until the end).
_BATCH: Final = 128
_THREADS: Final = 16


def write_many(
    items: Mapping[str | os.PathLike[str], BytesLike | str],
    *,
    durability: Durability = "durable",
    perm: int | None = None,
    parents: bool = False,
    preserve: Preserve = "all",
    hardlinks: Hardlinks = "refuse",
) -> None:
    """Write every ``path: data`` of *items*, each file all or nothing, as
    :func:`~crashsafe.atomic_write` would, but with the fsyncs overlapped and
    each directory synced once.

    On return every file holds its new content and (with ``"durable"``)
    survives a power cut. Each file is atomic on its own, not the set: a
    crash part-way leaves some files new and the rest old, never one torn.
    (Several files as one unit is :func:`~crashsafe.transaction`'s job.)

    *data* is bytes (or any buffer) or str, encoded as UTF-8; symlinks are
    followed; *perm* and the permission rules are those of
    :class:`~crashsafe.AtomicFile`. *parents*: each file's missing
    directories are made as :class:`~crashsafe.AtomicFile` makes them
    (durably with ``"durable"``), while the paths are resolved, before any
    file is written; they stay if the call then fails. *preserve* and
    *hardlinks*: as for :class:`~crashsafe.AtomicFile` (a hard-linked or
    mounted target is refused before any file is written).

    Raises :class:`TypeError` for *items* that is not a mapping, a path or
    data of another type, and :class:`ValueError`
    for a bad *durability* or *perm*, or for two keys that name one file
    (``"d.txt"`` and ``"./d.txt"``, a relative and an absolute spelling, a
    symlink and the file it points to: which content won would be chance),
    before anything is written. On a failed
    file, raises its :class:`OSError`: that file is as it was, files already
    published stay published (their directories synced), and the files not
    yet reached are left untouched. :class:`NotDurableError` names a directory
    whose fsync failed: its files were replaced but may not survive a power cut.
    """
    check_options("wb", perm, durability)
    check_keywords(preserve, hardlinks)
    check_flag("parents", parents)
    if not isinstance(items, Mapping):
        raise TypeError(f"items must be a mapping of paths to data, not {type(items).__name__}")
    batch = [(_text(path), as_data(data)) for path, data in items.items()]
    # One open directory per path that leads to it, for the whole call: it
    # serves every file staged there and is synced once at the end.
    directories: dict[str, _platform.Directory] = {}
    published: set[_platform.Directory] = set()
    try:
        targets = _locate_distinct(
            [path for path, _ in batch], directories, parents, durability == "durable"
        )
        # Every target a rename cannot replace is refused before the first write.
        for (path, _), target in zip(batch, targets, strict=True):
            st = target.status if isinstance(target, Target) else None
            if st is not None and stat.S_ISREG(st.st_mode):
                assert isinstance(target, Target)
                check_target(target.directory, target.name, st, path, hardlinks)
        for start in range(0, len(batch), _BATCH):
            end = start + _BATCH
            _write_batch(
                batch[start:end],
                targets[start:end],
                durability,
                perm,
                published,
                metadata=(preserve, hardlinks),
            )
    finally:
        _sync_and_close(directories, published if durability == "durable" else set())


def _text(path: str | os.PathLike[str]) -> str:
    return path if isinstance(path, str) else os.fsdecode(os.fspath(path))


def _locate_distinct(
    paths: list[str],
    directories: dict[str, _platform.Directory],
    parents: bool = False,
    sync_parents: bool = True,
) -> list[Target | OSError]:
    """Where each of *paths* lands, resolved once, as the write will use it;
    raise ValueError if two lead to one file, naming both as given.

    A path that cannot be resolved (a missing directory, a link loop) gets
    its error, raised when its turn comes, as :func:`~crashsafe.atomic_write`
    would raise it.

    Two paths are one file when they land on one name in one directory
    (device, inode), after following symlinks at the last component; or when
    both land on one existing file with a single link, which catches
    spellings that differ only by case on a case-insensitive directory. (A
    file with several hard links is not keyed by inode: writing each of its
    names is well defined.)
    """
    seen: dict[tuple[object, ...], int] = {}
    identities: dict[str, tuple[int, int]] = {}
    targets: list[Target | OSError] = []
    for index, path in enumerate(paths):
        try:
            target = locate(path, True, directories, parents=parents, sync_parents=sync_parents)
            keys = _identities(target, identities)
        except OSError as e:
            targets.append(e)
            continue
        targets.append(target)
        for key in keys:
            other = seen.setdefault(key, index)
            if other != index:
                raise ValueError(
                    f"write_many: {paths[other]!r} and {path!r} name the same file; "
                    "give each file once (nothing was written)"
                )
    return targets


def _identities(target: Target, identities: dict[str, tuple[int, int]]) -> list[tuple[object, ...]]:
    directory, name, status = target
    identity = identities.get(directory.path)
    if identity is None:
        st = os.stat(directory.path)
        identity = identities[directory.path] = (st.st_dev, st.st_ino)
    keys: list[tuple[object, ...]] = [(*identity, name)]
    if status is not None and stat.S_ISREG(status.st_mode):
        st = os.lstat(os.path.join(directory.path, name))
        if st.st_nlink == 1:
            keys.append(("inode", st.st_dev, st.st_ino))
    return keys


def _write_batch(
    batch: list[tuple[str, memoryview]],
    targets: list[Target | OSError],
    durability: Durability,
    perm: int | None,
    published: set[_platform.Directory],
    *,
    metadata: tuple[Preserve, Hardlinks],
) -> None:
    preserve, hardlinks = metadata
    staged: list[tuple[AtomicFile[BinaryIO], Target]] = []
    try:
        for (path, data), target in zip(batch, targets, strict=True):
            if isinstance(target, OSError):
                raise target
            pending = AtomicFile.stage(
                path,
                target=target,
                perm=perm,
                durability=durability,
                preserve=preserve,
                hardlinks=hardlinks,
            )
            staged.append((pending, target))
            pending.write_all(data)
        _publish_all([pending for pending, _ in staged], durability)
    finally:
        for pending, target in staged:
            if pending.committed:
                published.add(target.directory)
            else:
                pending.discard()


def _publish_all(staged: list[AtomicFile[BinaryIO]], durability: Durability) -> None:
    # Each staged file's directory is write_many's: publish syncs none of them.
    if durability == "none" or len(staged) == 1:
        for pending in staged:
            pending.publish()
        return
    # fsync releases the GIL: the threads' flushes reach the filesystem together.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(_THREADS, len(staged))) as pool:
        futures = [pool.submit(pending.publish) for pending in staged]
    for future in futures:
        future.result()  # the first failure, in the caller's order


def _sync_and_close(
    directories: dict[str, _platform.Directory], to_sync: set[_platform.Directory]
) -> None:
    # Step 7, once per directory that a published file is in.
    error: NotDurableError | None = None
    for directory in directories.values():
        try:
            if directory in to_sync:
                directory.sync()
        except OSError as e:
            if error is None:
                error = NotDurableError(e.errno, e.strerror, directory.path)
                error.__cause__ = e
        finally:
            directory.close()
    if error is not None:
        raise error
