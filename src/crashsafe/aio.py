"""crashsafe for asyncio: the same writes, copies, JSON updates and lock, awaited.

``from crashsafe import aio``, then ``await aio.atomic_write(...)``,
``async with aio.atomic_open(...) as f: await f.write(...)``,
``await aio.atomic_copy(...)``, ``await aio.update_json(...)`` and
``async with aio.FileLock(path):``. Signatures, keywords, guarantees and
errors are those of the synchronous calls of the same names.

Where the work runs. Every step that can block (opening, writing, fsync,
rename, the directory fsync, each attempt at the lock) runs in the event
loop's default executor, as :func:`asyncio.to_thread` does (the task's
context variables go along): the application sizes that pool
(:meth:`~asyncio.loop.set_default_executor`) and :func:`asyncio.run` waits
for it at the end, and no second pool outlives the loop. The steps are the
synchronous calls' own, run in a thread, so everything the crash tests prove
for them (``kill -9`` and power cuts at every syscall) holds here unchanged;
this module adds no step of its own to the protocol. On the event loop's
thread run only: *fn* of :func:`update_json` and the JSON serialisation;
resolving a lock file's path when a :class:`FileLock` is made (``lstat`` of
its components, as the synchronous lock does); and releasing a lock
(``flock`` unlock and ``close``, which never wait).

Cancellation, what the caller can rely on:

* A task cancelled before the commit (the rename) began publishes nothing
  and leaves nothing. A step still queued for a thread does not run; one
  that runs cannot be interrupted, so the task waits for it to end (a copy
  stops at its next progress point, a commit at the gate before its rename,
  after the file's fsync), the staged file is removed, and then
  :class:`asyncio.CancelledError` propagates. No thread of the call is still
  working once the task is done. Further cancellations while it waits are
  absorbed into that one.
* A cancellation that arrives once the commit began does not stop it: the
  rename and the directory fsync run to their end, the target holds the new
  content (durably with ``"durable"``), and then
  :class:`~asyncio.CancelledError` propagates, with a note
  (:pep:`678`) saying the target was replaced. The cancellation is never
  swallowed, so :func:`asyncio.timeout` and task groups work as usual.
* So after :class:`~asyncio.CancelledError` the target holds its old content
  or the complete new one, never anything else, and no temporary file is
  left. To know which, :class:`AtomicFile` has :attr:`~AtomicFile.committed`;
  a bare :func:`atomic_write` says it in the note only.
* For an ``s3://`` URL the whole upload is the commit: a cancellation before
  it started publishes nothing, one during it waits for its end.

Whether the commit began is decided under a lock shared by the task and its
thread: the thread checks for a cancellation right before the rename (a gate
in :meth:`crashsafe.AtomicFile.publish`), and the task, when cancelled, marks
the call cancelled and learns whether the gate was already passed.

The lock. :class:`FileLock` belongs to a task (reentrant per task, as the
synchronous one is per thread), and its wait never blocks a thread: tasks of
one loop queue on an :class:`asyncio.Lock`, woken at once when the holder
releases; the first in line tries a non-blocking ``flock`` in a thread, and
between tries sleeps on the loop (1 ms, doubling to 50 ms). A blocking
``flock`` in a thread could not be interrupted when its task is cancelled;
a try can, by waiting for it: if it took the lock, the lock is released again
before :class:`~asyncio.CancelledError` propagates.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from types import TracebackType
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    BinaryIO,
    Generic,
    Self,
    TextIO,
    TypeVar,
    Unpack,
    overload,
)

from crashsafe import atomic, documents
from crashsafe._aio_lock import FileLock
from crashsafe._aio_steps import _Abandoned, _Call, _cleanup, _step
from crashsafe._checks import (
    DEFAULT_ENCODING,
    BinaryMode,
    BytesLike,
    Durability,
    OpenOptions,
    TextMode,
    Validate,
    check_flag,
    check_options,
)
from crashsafe._metadata import Hardlinks, Preserve, check_keywords
from crashsafe.copying import CopyResult, Progress
from crashsafe.objectstore._url import is_url

if TYPE_CHECKING:
    from crashsafe.objectstore import S3Store

__all__ = ["AtomicFile", "FileLock", "atomic_copy", "atomic_open", "atomic_write", "update_json"]

_T = TypeVar("_T")
_F_co = TypeVar("_F_co", bound=IO[Any], covariant=True)


# --------------------------------------------------------------------------- one-call writes


async def atomic_write(
    path: str | os.PathLike[str],
    data: BytesLike | str,
    *,
    perm: int | None = None,
    durability: Durability = "durable",
    overwrite: bool = True,
    follow_symlinks: bool = True,
    parents: bool = False,
    preserve: Preserve = "all",
    hardlinks: Hardlinks = "refuse",
    validate: Validate = None,
    encoding: str = DEFAULT_ENCODING,
    store: S3Store | None = None,
) -> None:
    """Replace *path* with *data*, all or nothing: :func:`crashsafe.atomic_write`, awaited.

    Keywords, guarantees and errors are those of the synchronous call; it
    runs in the loop's executor. *data* must not change until the call
    returns (a bytearray is written from where it lies). *validate* runs in
    the worker thread. Cancelled, it publishes nothing unless the commit had
    begun (see :mod:`crashsafe.aio`).
    """
    whole = store is not None or is_url(path)
    await _step(
        _Call(),
        lambda: atomic.atomic_write(
            path,
            data,
            perm=perm,
            durability=durability,
            overwrite=overwrite,
            follow_symlinks=follow_symlinks,
            parents=parents,
            preserve=preserve,
            hardlinks=hardlinks,
            validate=validate,
            encoding=encoding,
            store=store,
        ),
        label=os.fsdecode(os.fspath(path)),
        commits=whole,
    )


async def atomic_copy(
    src: str | os.PathLike[str] | IO[bytes],
    dst: str | os.PathLike[str],
    *,
    perm: int | None = None,
    durability: Durability = "durable",
    follow_symlinks: bool = True,
    validate: Validate = None,
    digest: str | None = None,
    progress: Progress | None = None,
    parents: bool = False,
    preserve: Preserve = "all",
    hardlinks: Hardlinks = "refuse",
    store: S3Store | None = None,
) -> CopyResult:
    """Copy *src* to *dst* all or nothing: :func:`crashsafe.atomic_copy`, awaited.

    Keywords, checks, result and errors are those of the synchronous call; it
    runs in the loop's executor, and *progress* and *validate* are called in
    that thread (reach the loop with :meth:`~asyncio.loop.call_soon_threadsafe`).
    A cancellation stops a local copy at its next progress point (at most every
    16 MiB) and removes the staged copy; one that arrives once the commit
    began lets it finish (see :mod:`crashsafe.aio`). A *src* file object
    must not be used by anyone else until the call returns.
    """
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, not {type(progress).__name__}")
    call = _Call()
    whole = store is not None or is_url(src) or is_url(dst)
    report = progress
    if not whole:

        def report(done: int, total: int | None) -> None:
            if call.cancelled:
                raise _Abandoned  # a read of a bool: the gate decides under the lock
            if progress is not None:
                progress(done, total)

    from crashsafe.copying import atomic_copy as copy_sync

    return await _step(
        call,
        lambda: copy_sync(
            src,
            dst,
            perm=perm,
            durability=durability,
            follow_symlinks=follow_symlinks,
            validate=validate,
            digest=digest,
            progress=report,
            parents=parents,
            preserve=preserve,
            hardlinks=hardlinks,
            store=store,
        ),
        label=os.fsdecode(os.fspath(dst)),
        commits=whole,
    )


# --------------------------------------------------------------------------- JSON


def _read_old(path: str | os.PathLike[str], missing_ok: bool) -> Any:
    try:
        return documents.read_json(path)
    except FileNotFoundError:
        if not missing_ok:
            raise
        return documents.MISSING


async def update_json(
    path: str | os.PathLike[str],
    fn: Callable[[Any], Any],
    *,
    default: Any = documents.MISSING,
    perm: int | None = None,
    durability: Durability = "durable",
    indent: int | str | None = 2,
    timeout: float | None = None,
    parents: bool = False,
    preserve: Preserve = "all",
    hardlinks: Hardlinks = "refuse",
    store: S3Store | None = None,
) -> Any:
    """Replace the document in *path* with ``fn(old document)`` under its lock:
    :func:`crashsafe.update_json`, awaited.

    Keywords, result and errors are those of the synchronous call. The lock is
    this module's :class:`FileLock` (waiting never blocks a thread; a task that
    holds it may call this), the read and the write run in the loop's executor,
    and *fn* is called on the event loop's thread (it may touch the loop's
    objects; keep it quick). Cancelled, it publishes nothing unless the commit
    had begun, and releases the lock either way. For an ``s3://`` URL the whole
    compare-and-swap loop runs in one thread, and *fn* with it.
    """
    label = os.fsdecode(os.fspath(path))
    call = _Call()
    if is_url(path):
        return await _step(
            call,
            lambda: documents.update_json(
                path,
                fn,
                default=default,
                perm=perm,
                durability=durability,
                indent=indent,
                timeout=timeout,
                parents=parents,
                preserve=preserve,
                hardlinks=hardlinks,
                store=store,
            ),
            label=label,
            commits=True,
        )
    documents.local_only(store, path)
    check_options("wb", perm, durability)
    check_flag("parents", parents)
    check_keywords(preserve, hardlinks)
    if parents:
        await _step(call, documents.make_parents, path, parents, durability, label=label)
    async with FileLock(path, timeout=timeout):
        missing_ok = not isinstance(default, documents.Missing)
        old = await _step(call, _read_old, path, missing_ok, label=label)
        if isinstance(old, documents.Missing):
            old = copy.deepcopy(default)  # fn may change it in place; the caller's must not
        new = fn(old)
        if new is None:
            raise TypeError(
                f"update_json: fn returned None for {label!r}; return the new document "
                "(the old one changed in place is fine); nothing was written"
            )
        data = documents.dump_document(new, indent)
        await _step(
            call,
            lambda: atomic.atomic_write(
                path, data, perm=perm, durability=durability, preserve=preserve, hardlinks=hardlinks
            ),
            label=label,
        )
    return new


# --------------------------------------------------------------------------- staged files


def _write(staged: atomic.AtomicFile[Any], data: Any) -> int:
    return int(staged.file.write(data))


def _flush(staged: atomic.AtomicFile[Any]) -> None:
    staged.file.flush()


class AtomicFile(Generic[_F_co]):
    """A staged file for ``async with``: :class:`crashsafe.AtomicFile`, awaited.

    Made by :func:`atomic_open` (or directly, with the same arguments). Entering
    the block stages the file (in the loop's executor); ``await f.write(data)``
    writes to it (``str`` for a text mode, bytes for a binary one); leaving the
    block normally commits, leaving it by any exception (a cancellation
    included) discards. :meth:`commit` and :meth:`discard` may also be awaited
    inside the block. Modes, keywords, guarantees and errors are those of
    :class:`crashsafe.AtomicFile`; construction does no I/O and raises
    nothing of its own, the block's entry raises what the synchronous
    constructor raises.

    One operation at a time: starting one while another is still awaited
    (two writes gathered) raises :class:`RuntimeError`. A cancellation
    leaves the object cancelled: a later :meth:`commit` raises
    :class:`~asyncio.CancelledError` and publishes nothing.
    """

    @overload
    def __init__(
        self: AtomicFile[BinaryIO],
        path: str | os.PathLike[str],
        mode: BinaryMode = "wb",
        **options: Unpack[OpenOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: AtomicFile[TextIO],
        path: str | os.PathLike[str],
        mode: TextMode,
        **options: Unpack[OpenOptions],
    ) -> None: ...
    def __init__(
        self, path: str | os.PathLike[str], mode: str = "wb", **options: Unpack[OpenOptions]
    ) -> None:
        if is_url(path):
            raise ValueError(
                f"{path!r}: crashsafe.aio.atomic_open writes local files; for an object, "
                "await crashsafe.aio.atomic_write or atomic_copy"
            )
        #: The target path, as given (a str).
        self.path = os.fsdecode(os.fspath(path))
        self._args = (path, mode, options)
        self._call = _Call()
        self._staged: atomic.AtomicFile[Any] | None = None
        self._busy = False

    def _stage(self) -> atomic.AtomicFile[Any]:
        path, mode, options = self._args
        # The mode was checked by the overloads of __init__ (or is refused right here).
        staged: atomic.AtomicFile[Any] = atomic.AtomicFile(path, mode, **options)  # type: ignore[call-overload]
        return staged

    async def __aenter__(self) -> Self:
        if self._staged is not None:
            raise RuntimeError(f"the staged file for {self.path!r} was already entered")
        self._staged = await self._run(self._stage, undo=_discard)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        staged = self._staged
        if staged is None or staged._state != "open":
            return  # the block committed or discarded already
        if exc_type is None:
            await self.commit()
            return
        # The synchronous exit names an unnamed OSError after the target and discards.
        await _cleanup(staged.__exit__, exc_type, exc, tb)

    async def _run(
        self,
        fn: Callable[..., _T],
        *args: Any,
        undo: Callable[[_T], object] | None = None,
    ) -> _T:
        if self._busy:
            raise RuntimeError(f"another operation on the staged file for {self.path!r} is running")
        self._busy = True
        try:
            return await _step(self._call, fn, *args, label=self.path, undo=undo)
        finally:
            self._busy = False

    def _open(self) -> atomic.AtomicFile[Any]:
        if self._staged is None:
            raise ValueError(f"the staged file for {self.path!r} is used outside its async with")
        return self._staged

    @overload
    async def write(self: AtomicFile[TextIO], data: str) -> int: ...
    @overload
    async def write(self: AtomicFile[BinaryIO], data: BytesLike) -> int: ...
    async def write(self, data: Any) -> int:
        """Write *data* to the staged file; return what the file object's write returns."""
        return await self._run(_write, self._open(), data)

    async def flush(self) -> None:
        """Pass what the file object buffers to the kernel (the commit does it anyway)."""
        await self._run(_flush, self._open())

    async def commit(self) -> None:
        """Publish what was written: :meth:`crashsafe.AtomicFile.commit`, awaited.

        Errors are the synchronous commit's; a cancellation before the rename
        publishes nothing and removes the staged file, one after it lets the
        commit end and then propagates (:attr:`committed` is then True).
        """
        staged = self._open()
        try:
            await self._run(staged.commit)
        except BaseException:
            if not staged.committed:
                await _cleanup(staged.discard)
            raise

    async def discard(self) -> None:
        """Throw the staged content away; nothing to do after a commit or a discard."""
        await _cleanup(self._open().discard)

    @property
    def committed(self) -> bool:
        """Whether the new content was published at the target (True from the rename on)."""
        return self._staged is not None and self._staged.committed

    def __repr__(self) -> str:
        state = "new" if self._staged is None else self._staged._state
        return f"<crashsafe.aio.AtomicFile {self.path!r} {state}>"


def _discard(staged: atomic.AtomicFile[Any]) -> None:
    staged.discard()


@overload
def atomic_open(
    path: str | os.PathLike[str], mode: TextMode, **options: Unpack[OpenOptions]
) -> AtomicFile[TextIO]: ...
@overload
def atomic_open(
    path: str | os.PathLike[str], mode: BinaryMode = "wb", **options: Unpack[OpenOptions]
) -> AtomicFile[BinaryIO]: ...
def atomic_open(
    path: str | os.PathLike[str], mode: Any = "wb", **options: Unpack[OpenOptions]
) -> AtomicFile[Any]:
    """Open *path* for an all-or-nothing write; use it in an ``async with`` statement.

    ``async with aio.atomic_open("state.json", "w") as f: await f.write(text)``.
    Leaving the block normally publishes what was written (atomically and, by
    default, durably); leaving it by any exception leaves *path* as it was
    and no temporary file. Modes, keywords and errors are those of
    :func:`crashsafe.atomic_open` for a local path (``s3://`` URLs are not
    taken here). Returns an :class:`AtomicFile`, whose ``write`` is awaited.
    """
    return AtomicFile(path, mode, **options)
