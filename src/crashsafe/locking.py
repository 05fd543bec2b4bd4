"""An exclusive lock for a path, held on a sidecar file, that excludes threads and processes.

``FileLock("state.json")`` locks the file ``.state.json.lock`` in the same
directory, never ``state.json`` itself: every crashsafe write renames a new
inode over the target, so a lock taken on the target's old inode would
exclude no one who opens the new one.

What it promises, and what it does not:

* Excludes every other thread of this process and every other process that
  locks the same path through crashsafe (or takes ``flock`` on the same lock
  file), on a local filesystem. NFS and SMB are not promised: whether
  ``flock`` there excludes other hosts depends on the server and the mount.
* A holder killed by any signal, ``SIGKILL`` included, or by a power cut,
  holds nothing: the kernel drops the lock when the last descriptor of the
  open lock file goes away. A stale lock file is harmless and is reused.
* The lock is advisory: it excludes only those who take it.
* The lock file is never removed, by design: a waiter may have opened it
  already, and removing it would let a third process create a new file of the
  same name and hold a lock on it while the waiter holds a lock on the old one.
  Do not remove lock files (or sweep them with a cron job) while anyone may
  still use them; an empty leftover costs one directory entry.
  :func:`crashsafe.sweep` never touches them: it removes only names that
  carry crashsafe's temporary-file marker.

Why not the ``filelock`` package (tox-dev; version 4.2.11 evaluated).
It is correct where it matters here: two ``FileLock`` objects on one path in two
threads exclude each other (each thread opens its own descriptor), a shared
object excludes too (its state is per thread by default), it never unlinks the
lock file on POSIX, and a killed holder's ``flock`` is released by the kernel.
It falls short in three ways that matter for this module, measured:

1. It polls: waiting without a timeout still sleeps ``poll_interval`` (50 ms)
   between non-blocking attempts, so a waiter learns of a release up to 50 ms
   late. The issue's workload (8 processes x 4 threads x 50 durable
   increments of one counter) took 12.8 s with it against 9.4 s with a
   blocking ``flock`` that the kernel wakes at once (one run each, on a
   shared VM).
2. Nesting: a thread that holds ``FileLock(p)`` and calls ``update(p, ...)``
   (a second object on the same path) gets ``RuntimeError("Deadlock")``
   unless every object is created with ``is_singleton=True``, and singletons
   created with different arguments (another ``timeout``) raise
   ``ValueError``. Reentrancy per thread and path, as here, needs neither.
3. Weight: about 10,800 lines (soft locks, leases, read-write locks, asyncio)
   and 30 to 60 ms of import time here, for what takes about 150 lines of
   code below; and its defaults need overriding here: its Windows backend
   removes the lock file after release unless ``preserve_lock_file=True``,
   and where ``flock`` is missing it falls back to a lock file whose mere
   existence is the lock unless ``fallback_to_soft=False``.

So this module uses ``flock`` through :func:`crashsafe._platform.lock`, which
the transactions use too. On Windows that is ``msvcrt.locking`` on the first
byte of the lock file, not verified on this project's CI.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Final

from crashsafe import _platform
from crashsafe._checks import check_flag, check_timeout
from crashsafe.errors import LockTimeoutError
from crashsafe.objectstore._url import is_url

__all__ = ["FileLock", "LockTimeoutError"]

_SUFFIX: Final = ".lock"
_NAME_MAX: Final = 255
POLL_FIRST, POLL_MAX = 0.001, 0.05  # seconds between attempts when a timeout is set


def lock_file_for(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> str:
    """The lock file that guards *path*: ``.NAME.lock`` next to the file it names.

    The directory part is resolved (``os.path.realpath``), so every spelling
    of one directory shares one lock. With *follow_symlinks*, a symlink at the
    last component is resolved too, so the lock guards the file that
    :func:`crashsafe.atomic_write` would replace through the link. A name too
    long for a lock name is cut and completed with a hash of the whole name.

    Raises :class:`ValueError` for a *path* that names no file: empty, or
    ending in a separator, ``.`` or ``..``; :class:`TypeError` for a
    *follow_symlinks* that is not a bool.
    """
    check_flag("follow_symlinks", follow_symlinks)
    path = os.fsdecode(os.fspath(path))
    # Judged as given: realpath("") and realpath(".") are the current directory,
    # whose own name would then be locked in its parent.
    if os.path.split(path)[1] in ("", ".", ".."):
        raise ValueError(f"cannot lock {path!r}: it names no file")
    if follow_symlinks:
        head, name = os.path.split(os.path.realpath(path))
    else:
        head, name = os.path.split(os.path.abspath(path))
        head = os.path.realpath(head)
    if not name:
        raise ValueError(f"cannot lock {path!r}: it names no file")
    lock_name = f".{name}{_SUFFIX}"
    raw = os.fsencode(name)
    if len(os.fsencode(lock_name)) > _NAME_MAX:
        import hashlib

        digest = hashlib.sha256(raw).hexdigest()[:16]
        room = _NAME_MAX - len(f"..{digest}{_SUFFIX}")
        stem = os.fsdecode(raw[:room].decode("utf-8", "ignore").encode())
        lock_name = f".{stem}.{digest}{_SUFFIX}"
    return os.path.join(head, lock_name)


# ------------------------------------------------------------------ per-process state

# One slot per lock file that some thread of this process holds or waits for.
# The owner thread and its recursion count live here, not in FileLock objects,
# so that every FileLock of one path, in any thread, sees the same owner.


class _Slot:
    __slots__ = ("count", "fd", "owner", "waiting", "wakeup")

    def __init__(self, guard: threading.Lock) -> None:
        self.owner: int | None = None  # threading.get_ident() of the holder
        self.count = 0  # acquires not yet matched by a release; 0 while locking
        self.fd: int | None = None  # the open lock file while owned
        self.waiting = 0  # threads waiting for the owner to release
        self.wakeup = threading.Condition(guard)


_guard = threading.Lock()
_slots: dict[str, _Slot] = {}


def _reset_after_fork() -> None:
    # A forked child holds none of its parent's locks. It must not unlock the
    # inherited descriptors (flock belongs to the open file, shared with the
    # parent, which would lose its lock), only close its copies of them.
    global _guard, _slots
    inherited = _slots
    _guard, _slots = threading.Lock(), {}
    for slot in inherited.values():
        if slot.fd is not None:
            with contextlib.suppress(OSError):
                os.close(slot.fd)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _disown(key: str, slot: _Slot) -> None:
    """Unlock and close the slot's lock file and wake the waiters. Call with _guard held."""
    fd, slot.fd, slot.owner, slot.count = slot.fd, None, None, 0
    if slot.waiting:
        # Every waiter, not one: a waiter woken alone could time out at the
        # same moment and leave the others asleep with the lock free.
        slot.wakeup.notify_all()
    elif _slots.get(key) is slot:
        del _slots[key]
    if fd is not None:
        try:
            # Explicitly, before the close: a forked child may share this open
            # file, and closing our descriptor alone would not release it.
            _platform.unlock(fd)
        finally:
            os.close(fd)


class Default:
    """Internal door (with :data:`DEFAULT`) for crashsafe.aio: "the lock's own timeout"."""

    def __repr__(self) -> str:
        return "<the lock's own timeout>"


DEFAULT: Final = Default()


class FileLock:
    """An exclusive lock on *path*, held on the sidecar file ``.NAME.lock`` beside it.

    Use it in a ``with`` statement, or call :meth:`acquire` and
    :meth:`release`. It excludes other processes (``flock`` on the lock file)
    and other threads of this process, whether they use their own
    ``FileLock`` of the same path or share this one.

    The lock belongs to a thread and a lock file, not to an object: a thread
    that holds it may acquire it again, through this object or any other
    ``FileLock`` of the same path (so ``crashsafe.update(path, ...)`` works
    inside ``with FileLock(path)``), and it is released when every acquire of
    that thread has been matched by a :meth:`release`, like
    :class:`threading.RLock`.

    *timeout*: ``None`` waits as long as it takes (blocked in the kernel,
    woken as soon as the lock is free); a number of seconds waits at most that
    long (polling, every 1 ms growing to 50 ms) and then raises
    :class:`LockTimeoutError`; ``0`` tries once. *follow_symlinks*: lock the
    file a symlink at *path* points to, which is the file
    :func:`crashsafe.atomic_write` replaces by default; False locks the link's
    own name. The lock file's path is fixed when the object is made
    (:attr:`lock_file`): a relative *path* is taken against the current
    directory then.

    The lock file is created when missing, with the mode ``open()`` would give
    it (0o666 less the umask), opened read-only, never through a symlink, and
    never removed (see the module documentation for why). Anyone who can read
    it can hold the lock and so make writers wait: keep files whose writers
    must not be held up by other users in directories those users cannot
    enter.

    A child created by ``fork()`` holds none of its parent's locks. A thread
    that ends while holding the lock keeps it held for its process. The
    coroutines of one thread are one holder: the lock does not exclude them
    from each other, so never hold it across an ``await``.

    Raises :class:`ValueError` for a bad *timeout* or a *path* that names no
    file (empty, or ending in a separator, ``.`` or ``..``), :class:`TypeError`
    for a *follow_symlinks* that is not a bool; :meth:`acquire`
    raises :class:`LockTimeoutError` and the :class:`OSError` of opening or
    locking the lock file, its errno intact, with ``filename`` the *path* as
    given and ``filename2`` the lock file: for example
    :class:`PermissionError` when the lock file is missing and the directory
    is not writable, :class:`FileNotFoundError` when the directory is missing,
    ``ELOOP``/``EINVAL`` when a symlink or a non-regular file sits at its name.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        follow_symlinks: bool = True,
    ) -> None:
        if is_url(path):
            raise ValueError(
                f"{path!r}: a FileLock locks a local file; objects have no lock across "
                "machines: update() and update_json() take an s3:// URL and compare-and-swap"
            )
        self.timeout = check_timeout(timeout)
        #: The path to lock, as given.
        self.path = os.fsdecode(os.fspath(path))
        #: The sidecar file whose ``flock`` is the lock.
        self.lock_file = lock_file_for(self.path, follow_symlinks=follow_symlinks)

    def acquire(self, timeout: float | Default | None = DEFAULT) -> FileLock:
        """Take the lock, waiting at most *timeout* seconds (default: the lock's own).

        Returns the lock itself. Raises :class:`LockTimeoutError` when the
        time is up, and the :class:`OSError` of opening the lock file.
        """
        wait = self.timeout if isinstance(timeout, Default) else check_timeout(timeout)
        deadline = None if wait is None else time.monotonic() + wait
        me = threading.get_ident()
        key = self.lock_file
        with _guard:
            slot = _slots.get(key)
            if slot is None:
                slot = _slots[key] = _Slot(_guard)
            if slot.owner == me:
                slot.count += 1
                return self
            slot.waiting += 1
            try:
                while slot.owner is not None:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise LockTimeoutError(self.path, key, wait or 0.0)
                    slot.wakeup.wait(left)
                slot.owner = me
            finally:
                slot.waiting -= 1
                if slot.owner is None and not slot.waiting and _slots.get(key) is slot:
                    del _slots[key]
        # This thread now speaks for the process; the flock excludes the others.
        try:
            self._lock(slot, deadline, wait)
            slot.count = 1
        except BaseException as e:
            with _guard:
                _disown(key, slot)
            if isinstance(e, OSError) and not isinstance(e, LockTimeoutError):
                # The caller knows the path, not the lock file beside it (which
                # may be in another directory, through a symlink): both are named,
                # as LockTimeoutError names them.
                e.filename, e.filename2 = self.path, self.lock_file
            raise
        return self

    def _lock(self, slot: _Slot, deadline: float | None, wait: float | None) -> None:
        delay = POLL_FIRST
        while True:
            with _platform.signals_deferred():
                slot.fd = _platform.open_lock_file(self.lock_file)
            if deadline is None:
                _platform.lock(slot.fd)
            else:
                while not _platform.lock(slot.fd, blocking=False):
                    left = POLL_MAX if deadline is None else deadline - time.monotonic()
                    if left <= 0:
                        raise LockTimeoutError(self.path, self.lock_file, wait or 0.0)
                    time.sleep(min(delay, left))
                    delay = min(delay * 2, POLL_MAX)
            if _platform.lock_file_linked(self.lock_file, slot.fd):
                return
            # Someone removed or replaced the lock file while we waited on it:
            # a lock on that inode excludes no one who opens the name now.
            with _platform.signals_deferred():
                fd, slot.fd = slot.fd, None
                try:
                    _platform.unlock(fd)
                finally:
                    os.close(fd)

    def release(self) -> None:
        """Undo one :meth:`acquire` of the calling thread; the last one unlocks.

        Raises :class:`RuntimeError` if the calling thread does not hold the
        lock.
        """
        key = self.lock_file
        with _guard:
            slot = _slots.get(key)
            if slot is None or slot.owner != threading.get_ident() or not slot.count:
                raise RuntimeError(f"cannot release the lock on {self.path!r}: not held here")
            slot.count -= 1
            if not slot.count:
                _disown(key, slot)

    @property
    def is_locked(self) -> bool:
        """Whether the calling thread holds the lock on this path."""
        slot = _slots.get(self.lock_file)
        return slot is not None and slot.owner == threading.get_ident() and slot.count > 0

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "locked" if self.is_locked else "unlocked"
        return f"<crashsafe.FileLock {self.path!r} {state} via {self.lock_file!r}>"
