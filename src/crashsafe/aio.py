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

import asyncio
import contextvars
import copy
import os
import threading
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    BinaryIO,
    Final,
    Generic,
    Self,
    TextIO,
    TypeVar,
    Unpack,
    cast,
    overload,
)

from crashsafe import _platform, atomic, documents
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
    check_timeout,
)
from crashsafe.copying import CopyResult, Progress
from crashsafe.errors import LockTimeoutError, NotDurableError
from crashsafe.locking import _POLL_FIRST, _POLL_MAX, lock_file_for
from crashsafe.objectstore._url import is_url

if TYPE_CHECKING:
    from crashsafe.objectstore import S3Store

__all__ = ["AtomicFile", "FileLock", "atomic_copy", "atomic_open", "atomic_write", "update_json"]

_T = TypeVar("_T")
_F_co = TypeVar("_F_co", bound=IO[Any], covariant=True)

# Tests only: called in the committing thread right before and right after the gate.
_test_hook: Callable[[str], None] | None = None


class _Abandoned(BaseException):
    """Raised in a worker thread whose task was cancelled before its commit.

    A BaseException, so that no ``except Exception`` on the way treats it as
    an error of the write; the staged file is discarded as for any other."""


class _Call:
    """What one async call and its worker threads agree on: cancelled, committing."""

    __slots__ = ("_lock", "cancelled", "committing")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.cancelled = False
        self.committing = False

    def start(self, commits: bool) -> None:
        """In the thread, before a step: a step of a cancelled call does not run."""
        with self._lock:
            if self.cancelled:
                raise _Abandoned
            if commits:
                self.committing = True

    def gate(self) -> None:
        """In the thread, right before the rename (atomic.commit_gate)."""
        if _test_hook is not None:
            _test_hook("before the gate")
        with self._lock:
            if self.cancelled:
                raise _Abandoned
            self.committing = True
        if _test_hook is not None:
            _test_hook("after the gate")

    def cancel(self) -> bool:
        """On the loop, when the task is cancelled: whether the commit began."""
        with self._lock:
            self.cancelled = True
            return self.committing


def _in_thread(call: _Call, commits: bool, fn: Callable[..., _T], args: tuple[Any, ...]) -> _T:
    call.start(commits)
    atomic.commit_gate.set(call.gate)  # in the step's own copy of the task's context
    return fn(*args)


async def _wait_out(fut: asyncio.Future[Any]) -> bool:
    """Wait until *fut* is done, whatever cancels us meanwhile; whether something did."""
    absorbed = False
    while not fut.done():
        try:
            await asyncio.wait((fut,))
        except asyncio.CancelledError:
            absorbed = True
    if not fut.cancelled():
        fut.exception()  # retrieved: the caller decides what it means
    return absorbed


def _submit(fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    return cast("asyncio.Future[_T]", loop.run_in_executor(None, context.run, fn, *args))


async def _step(
    call: _Call,
    fn: Callable[..., _T],
    *args: Any,
    label: str,
    commits: bool = False,
    undo: Callable[[_T], object] | None = None,
) -> _T:
    """Run ``fn(*args)`` in the loop's executor; on cancellation, as the module says.

    *commits*: the whole step is the commit (an upload). *undo*: what to do
    with the step's result if the task was cancelled while it ran."""
    fut: asyncio.Future[_T] = _submit(_in_thread, call, commits, fn, args)
    try:
        result = await asyncio.shield(fut)
    except asyncio.CancelledError as cancelled:
        began = call.cancel()
        await _wait_out(fut)
        error = None if fut.cancelled() else fut.exception()
        if began and (error is None or isinstance(error, NotDurableError)):
            cancelled.add_note(
                f"crashsafe.aio: the cancellation arrived during the commit, which ran to its "
                f"end: {label!r} was replaced"
            )
        elif error is None and undo is not None:
            await _cleanup(undo, fut.result())
        raise
    except _Abandoned:
        # A call cancelled earlier (its task caught the CancelledError) stays cancelled.
        raise asyncio.CancelledError(f"crashsafe.aio: {label!r} was cancelled earlier") from None
    return result


async def _cleanup(fn: Callable[..., object], *args: Any) -> None:
    """Run ``fn(*args)`` in the executor to its end; a cancellation meanwhile
    propagates after it, an error of *fn* otherwise."""
    fut = _submit(fn, *args)
    if await _wait_out(fut):
        raise asyncio.CancelledError
    fut.result()


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
    validate: Validate = None,
    encoding: str = DEFAULT_ENCODING,
    store: S3Store | None = None,
) -> None:
    """Replace *path* with *data*, all or nothing: :func:`crashsafe.atomic_write`, awaited.

    Keywords, guarantees and errors are those of the synchronous call; it
    runs in the loop's executor. *data* must not change until the call
    returns (a bytearray is written from where it lies). *validate* runs in
    the worker thread. Cancelled, it publishes nothing unless the commit had
    begun (see the module documentation).
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
    store: S3Store | None = None,
) -> CopyResult:
    """Copy *src* to *dst* all or nothing: :func:`crashsafe.atomic_copy`, awaited.

    Keywords, checks, result and errors are those of the synchronous call; it
    runs in the loop's executor, and *progress* and *validate* are called in
    that thread (reach the loop with :meth:`~asyncio.loop.call_soon_threadsafe`).
    A cancellation stops a local copy at its next progress point (at most every
    16 MiB) and removes the staged copy; one that arrives once the commit
    began lets it finish (see the module documentation). A *src* file object
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
        return documents._MISSING


async def update_json(
    path: str | os.PathLike[str],
    fn: Callable[[Any], Any],
    *,
    default: Any = documents._MISSING,
    perm: int | None = None,
    durability: Durability = "durable",
    indent: int | str | None = 2,
    timeout: float | None = None,
    parents: bool = False,
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
                store=store,
            ),
            label=label,
            commits=True,
        )
    documents._local_only(store, path)
    check_options("wb", perm, durability)
    check_flag("parents", parents)
    if parents:
        await _step(call, documents._make_parents, path, parents, durability, label=label)
    async with FileLock(path, timeout=timeout):
        missing_ok = not isinstance(default, documents._Missing)
        old = await _step(call, _read_old, path, missing_ok, label=label)
        if isinstance(old, documents._Missing):
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
            lambda: atomic.atomic_write(path, data, perm=perm, durability=durability),
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


# --------------------------------------------------------------------------- the lock


class _Slot:
    """A lock file as the tasks of one loop share it: holder, depth, waiters."""

    __slots__ = ("count", "fd", "mutex", "owner", "users")

    def __init__(self) -> None:
        self.owner: asyncio.Task[Any] | None = None
        self.count = 0
        self.fd: int | None = None
        self.mutex = asyncio.Lock()  # the tasks of this loop queue here
        self.users = 0  # tasks between the start of acquire and its end


_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Slot]] = (
    weakref.WeakKeyDictionary()
)


def _try_lock(lock_file: str) -> int | None:
    """One attempt, in a thread: the open lock file, locked, or None."""
    fd = _platform.open_lock_file(lock_file)
    try:
        if _platform.lock(fd, blocking=False):
            if _platform.lock_file_linked(lock_file, fd):
                return fd
            _platform.unlock(fd)  # replaced meanwhile: a lock on it excludes no one
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _unlock(fd: int | None) -> None:
    if fd is None:
        return
    try:
        _platform.unlock(fd)
    finally:
        os.close(fd)


class _Default:
    def __repr__(self) -> str:
        return "<the lock's own timeout>"


_DEFAULT: Final = _Default()


class FileLock:
    """An exclusive lock on *path* for tasks: :class:`crashsafe.FileLock`, awaited.

    ``async with aio.FileLock(path):``, or ``await lock.acquire()`` and
    ``lock.release()``. The same sidecar file ``.NAME.lock`` and ``flock`` as
    the synchronous lock, so it excludes other processes and threads using
    either lock, and the tasks of this loop. It belongs to a task: a task
    that holds it may acquire it again (through any :class:`FileLock` of the
    same path, and :func:`update_json` of that path) and it is released when
    every acquire was matched by a :meth:`release`.

    Waiting never blocks a thread (see the module documentation): *timeout*
    None waits as long as it takes, a number of seconds at most that long,
    then :class:`~crashsafe.LockTimeoutError`; 0 tries once. A task cancelled
    while it waits holds nothing and releases nothing it did not take. Do not
    mix it with a synchronous :class:`crashsafe.FileLock` held by the loop's
    own thread: the two exclude each other, and the task would wait for a
    release that cannot come while it waits.

    Errors are those of :class:`crashsafe.FileLock` (a bad *timeout* or
    *path*: :class:`ValueError`; the lock file's :class:`OSError`, with
    ``filename`` the path and ``filename2`` the lock file). The lock file's
    path is resolved when the object is made (a few ``lstat`` calls, on the
    loop's thread, as the synchronous lock does).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        follow_symlinks: bool = True,
    ) -> None:
        if is_url(path):
            raise ValueError(f"{path!r}: a FileLock locks a local file, not an object")
        self.timeout = check_timeout(timeout)
        #: The path to lock, as given.
        self.path = os.fsdecode(os.fspath(path))
        #: The sidecar file whose ``flock`` is the lock.
        self.lock_file = lock_file_for(self.path, follow_symlinks=follow_symlinks)

    @staticmethod
    def _task() -> asyncio.Task[Any]:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("crashsafe.aio.FileLock is used from a task")
        return task

    async def acquire(self, timeout: float | _Default | None = _DEFAULT) -> FileLock:
        """Take the lock, waiting at most *timeout* seconds (default: the lock's own).

        Returns the lock itself. Raises :class:`~crashsafe.LockTimeoutError`
        when the time is up, and the :class:`OSError` of the lock file.
        """
        wait = self.timeout if isinstance(timeout, _Default) else check_timeout(timeout)
        task = self._task()
        loop = asyncio.get_running_loop()
        deadline = None if wait is None else loop.time() + wait
        slots = _slots.setdefault(loop, {})
        slot = slots.get(self.lock_file)
        if slot is None:
            slot = slots[self.lock_file] = _Slot()
        if slot.owner is task:
            slot.count += 1
            return self
        slot.users += 1
        try:
            if deadline is None or not slot.mutex.locked():
                await slot.mutex.acquire()
            else:
                try:
                    await asyncio.wait_for(slot.mutex.acquire(), deadline - loop.time())
                except TimeoutError:
                    raise LockTimeoutError(self.path, self.lock_file, wait or 0.0) from None
            try:
                slot.fd = await self._flock(deadline, wait)
            except BaseException as e:
                slot.mutex.release()
                if isinstance(e, OSError) and not isinstance(e, LockTimeoutError):
                    e.filename, e.filename2 = self.path, self.lock_file
                raise
            slot.owner, slot.count = task, 1
        finally:
            slot.users -= 1
            if slot.owner is None and not slot.users and slots.get(self.lock_file) is slot:
                del slots[self.lock_file]
        return self

    async def _flock(self, deadline: float | None, wait: float | None) -> int:
        loop = asyncio.get_running_loop()
        delay = _POLL_FIRST
        while True:
            fd = await _step(_Call(), _try_lock, self.lock_file, label=self.path, undo=_unlock)
            if fd is not None:
                return fd
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise LockTimeoutError(self.path, self.lock_file, wait or 0.0)
            await asyncio.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, _POLL_MAX)

    def release(self) -> None:
        """Undo one :meth:`acquire` of the calling task; the last one unlocks.

        Raises :class:`RuntimeError` if the calling task does not hold the lock.
        """
        slots = _slots.get(asyncio.get_running_loop(), {})
        slot = slots.get(self.lock_file)
        if slot is None or slot.owner is not self._task() or not slot.count:
            raise RuntimeError(f"cannot release the lock on {self.path!r}: not held by this task")
        slot.count -= 1
        if slot.count:
            return
        fd, slot.fd, slot.owner = slot.fd, None, None
        try:
            _unlock(fd)
        finally:
            slot.mutex.release()
            if not slot.users:
                del slots[self.lock_file]

    @property
    def is_locked(self) -> bool:
        """Whether the calling task holds the lock on this path."""
        slots = _slots.get(asyncio.get_running_loop(), {})
        slot = slots.get(self.lock_file)
        return slot is not None and slot.owner is asyncio.current_task() and slot.count > 0

    async def __aenter__(self) -> FileLock:
        return await self.acquire()

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<crashsafe.aio.FileLock {self.path!r} via {self.lock_file!r}>"
