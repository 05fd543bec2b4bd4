"""Many small files written at once: each all-or-nothing, the fsyncs overlapped.

A durable write costs two flushes: the file's data, then its directory.
Written one by one, 1,000 files cost 2,000 flushes in a row. Here every file
is staged and written first; then the per-file steps 5 and 6 of the protocol
(fsync, rename) run on a pool of threads, so the filesystem commits many
flushes together; then each directory is synced once (step 7). The order
that makes one file safe is unchanged: its data is on disk before its name
points to it, and its rename is on disk before :func:`write_many` returns.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import BinaryIO, Final

from crashsafe import _platform
from crashsafe.atomic import (
    _MAX_SYMLINKS,
    AtomicFile,
    BytesLike,
    Durability,
    _as_bytes,
    _check_options,
)
from crashsafe.errors import NotDurableError

__all__ = ["write_many"]

# Files staged at a time: each holds two descriptors until it is published.
_BATCH: Final = 128
_THREADS: Final = 16


def write_many(
    items: Mapping[str | os.PathLike[str], BytesLike | str],
    *,
    durability: Durability = "durable",
    perm: int | None = None,
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
    :class:`~crashsafe.AtomicFile`.

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
    _check_options("wb", perm, durability)
    if not isinstance(items, Mapping):
        raise TypeError(f"items must be a mapping of paths to data, not {type(items).__name__}")
    batch = [(path, _as_data(data)) for path, data in items.items()]
    _check_distinct([path for path, _ in batch])
    directories: dict[str, _platform.Directory] = {}
    try:
        for start in range(0, len(batch), _BATCH):
            _write_batch(batch[start : start + _BATCH], durability, perm, directories)
    finally:
        _sync_and_close(directories, durability)


def _check_distinct(paths: list[str | os.PathLike[str]]) -> None:
    """Raise ValueError if two of *paths* lead to one file, naming both as given."""
    seen: dict[tuple[object, ...], int] = {}
    directories: dict[str, tuple[int, int]] = {}
    texts = [path if isinstance(path, str) else os.fsdecode(os.fspath(path)) for path in paths]
    for index, text in enumerate(texts):
        for key in _identities(text, directories):
            other = seen.setdefault(key, index)
            if other != index:
                raise ValueError(
                    f"write_many: {texts[other]!r} and {text!r} name the same file; "
                    "give each file once (nothing was written)"
                )


def _identities(path: str, directories: dict[str, tuple[int, int]]) -> list[tuple[object, ...]]:
    """What the write of *path* would replace, as keys equal for every spelling of it.

    The directory (device, inode) and the name in it, after following symlinks
    at the last component as :class:`~crashsafe.AtomicFile` does; and for an
    existing file with one link only, its own (device, inode), which catches
    spellings that differ only by case on a case-insensitive directory. (A
    file with several hard links is not keyed by inode: writing each of its
    names is well defined.) No key where the write itself will fail (a missing
    directory, a link loop): it raises its own error when its turn comes.
    """
    head, name = os.path.split(path)
    try:
        for _ in range(_MAX_SYMLINKS + 1):
            if name in ("", ".", ".."):
                break
            directory = directories.get(head)
            if directory is None:
                st = os.stat(head or ".")
                directory = directories[head] = (st.st_dev, st.st_ino)
            entry = os.path.join(head, name)
            try:
                st = os.lstat(entry)
            except FileNotFoundError:
                return [(*directory, name)]
            if not stat.S_ISLNK(st.st_mode):
                keys: list[tuple[object, ...]] = [(*directory, name)]
                if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                    keys.append(("inode", st.st_dev, st.st_ino))
                return keys
            head, name = os.path.split(os.path.join(head, os.readlink(entry)))
    except OSError:
        pass
    return []


def _as_data(data: object) -> memoryview:
    if isinstance(data, str):
        return memoryview(data.encode())
    return _as_bytes(data, "bytes or str")


def _write_batch(
    batch: list[tuple[str | os.PathLike[str], memoryview]],
    durability: Durability,
    perm: int | None,
    directories: dict[str, _platform.Directory],
) -> None:
    staged: list[AtomicFile[BinaryIO]] = []
    try:
        for path, data in batch:
            pending = AtomicFile(path, "wb", perm=perm, durability=durability)
            staged.append(pending)
            pending._write(data)
        _publish_all(staged, durability)
    finally:
        for pending in staged:
            if pending.committed:
                # One open descriptor per directory is enough to sync it.
                directory = pending._dir
                if directory.path in directories:
                    directory.close()
                else:
                    directories[directory.path] = directory
            else:
                pending.discard()


def _publish_all(staged: list[AtomicFile[BinaryIO]], durability: Durability) -> None:
    def publish(pending: AtomicFile[BinaryIO]) -> None:
        pending._publish(pending._name, replace=True, sync=False, keep_dir=True)

    if durability == "none" or len(staged) == 1:
        for pending in staged:
            publish(pending)
        return
    # fsync releases the GIL: the threads' flushes reach the filesystem together.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(_THREADS, len(staged))) as pool:
        futures = [pool.submit(publish, pending) for pending in staged]
    for future in futures:
        future.result()  # the first failure, in the caller's order


def _sync_and_close(directories: dict[str, _platform.Directory], durability: Durability) -> None:
    error: NotDurableError | None = None
    for path, directory in directories.items():
        try:
            if durability == "durable":
                directory.sync()
        except OSError as e:
            if error is None:
                error = NotDurableError(e.errno, e.strerror, path)
                error.__cause__ = e
        finally:
            directory.close()
    if error is not None:
        raise error
