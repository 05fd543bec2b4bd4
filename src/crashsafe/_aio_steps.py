"""How :mod:`crashsafe.aio` runs a blocking step in a thread and honours cancellation.

A step is a call of synchronous code in the event loop's default executor,
with a copy of the task's context (as :func:`asyncio.to_thread`), in which
:data:`crashsafe.atomic.commit_gate` is the call's :meth:`_Call.gate`. A task
cancelled while it awaits a step marks its :class:`_Call` cancelled, waits for
the step to end (a step not yet started does not run), undoes what the step
made if it must, and lets the :class:`~asyncio.CancelledError` propagate,
with a note if the commit had begun. See :mod:`crashsafe.aio` for the promise.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from crashsafe import atomic
from crashsafe.errors import NotDurableError

_T = TypeVar("_T")

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
