"""The lock of :mod:`crashsafe.aio`: :class:`FileLock`, held by a task, waited for on the loop.

See :mod:`crashsafe.aio` for how it waits and what a cancelled waiter leaves;
:mod:`crashsafe.locking` for the lock file itself.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from typing import Any

from crashsafe import _platform
from crashsafe._aio_steps import _Call, _step
from crashsafe._checks import check_timeout
from crashsafe.errors import LockTimeoutError
from crashsafe.locking import DEFAULT, POLL_FIRST, POLL_MAX, Default, lock_file_for
from crashsafe.objectstore._url import is_url

__all__ = ["FileLock"]


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


class FileLock:
    """An exclusive lock on *path* for tasks: :class:`crashsafe.FileLock`, awaited.

    ``async with aio.FileLock(path):``, or ``await lock.acquire()`` and
    ``lock.release()``. The same sidecar file ``.NAME.lock`` and ``flock`` as
    the synchronous lock, so it excludes other processes and threads using
    either lock, and the tasks of this loop. It belongs to a task: a task
    that holds it may acquire it again (through any :class:`FileLock` of the
    same path, and :func:`update_json` of that path) and it is released when
    every acquire was matched by a :meth:`release`.

    Waiting never blocks a thread (see :mod:`crashsafe.aio`): *timeout*
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

    async def acquire(self, timeout: float | Default | None = DEFAULT) -> FileLock:
        """Take the lock, waiting at most *timeout* seconds (default: the lock's own).

        Returns the lock itself. Raises :class:`~crashsafe.LockTimeoutError`
        when the time is up, and the :class:`OSError` of the lock file.
        """
        wait = self.timeout if isinstance(timeout, Default) else check_timeout(timeout)
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
        delay = POLL_FIRST
        while True:
            fd = await _step(_Call(), _try_lock, self.lock_file, label=self.path, undo=_unlock)
            if fd is not None:
                return fd
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise LockTimeoutError(self.path, self.lock_file, wait or 0.0)
            await asyncio.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 2, POLL_MAX)

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
