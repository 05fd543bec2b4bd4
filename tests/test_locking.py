"""FileLock: a sidecar lock that excludes threads and processes, and never outlives its holder.

Grouped by promise: where the lock lives (a sidecar, never the target, never
swept, never through a planted name); exclusion between threads (own objects,
one shared object) with a lockless control that loses updates; reentrancy per
thread; exclusion between processes; a holder killed with SIGKILL, a waiter
interrupted, a forked child, a lock file removed under a waiter; errors.
"""

from __future__ import annotations

import errno
import os
import pickle
import signal
import stat
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from crashsafe.locking import FileLock, LockTimeoutError, lock_file_for
from crashsafe.staging import is_temp_name, sweep
from tests.children import (
    Child,
    blocked_in_flock,
    root_owned_directory,
    run_as_nobody,
    spawned,
    wait_until,
)
from tests.harness.checks import entries

HOLD = """
import sys
from crashsafe.locking import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
sys.stdin.readline()
"""


def umask() -> int:
    # Read, not set-and-restore: os.umask() would race with other threads.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))


def held_elsewhere(path: Path) -> bool:
    """Whether another thread or process holds the lock on *path* (tried from a new thread)."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            with FileLock(path, timeout=0):
                result.append(False)
        except LockTimeoutError:
            result.append(True)

    t = threading.Thread(target=attempt)
    t.start()
    t.join()
    return result[0]


# --------------------------------------------------------------------------- where the lock lives


def test_lock_is_a_hidden_sidecar_that_outlives_every_release(workdir: Path) -> None:
    target = workdir / "state.json"
    lock = FileLock(target)
    assert lock.lock_file == str(workdir / ".state.json.lock")
    with lock:
        assert lock.is_locked
        assert entries(workdir) == [".state.json.lock"]  # the target itself is not touched
    assert not lock.is_locked
    info = os.lstat(lock.lock_file)
    assert stat.S_ISREG(info.st_mode) and info.st_size == 0
    assert stat.S_IMODE(info.st_mode) == 0o666 & ~umask()  # what open() would give
    inode = info.st_ino
    for _ in range(3):
        with FileLock(target):
            pass
    assert os.lstat(lock.lock_file).st_ino == inode  # reused, never removed and recreated


def test_sweep_never_takes_a_lock_file_for_a_temporary_file(workdir: Path) -> None:
    target = workdir / "report.json"
    with FileLock(target) as lock:
        assert sweep(workdir, min_age=0) == []
    assert sweep(workdir, min_age=0) == []
    assert not is_temp_name(os.path.basename(lock.lock_file))
    assert os.path.exists(lock.lock_file)


def test_a_symlinked_target_is_locked_where_atomic_write_writes(workdir: Path) -> None:
    real = workdir / "real"
    real.mkdir()
    (workdir / "link").symlink_to("real/data")  # dangling: atomic_write would create real/data
    (workdir / "dirlink").symlink_to("real")
    assert FileLock(workdir / "link").lock_file == str(real / ".data.lock")
    assert FileLock(workdir / "dirlink" / "data").lock_file == str(real / ".data.lock")
    assert FileLock(workdir / "link", follow_symlinks=False).lock_file == str(
        workdir / ".link.lock"
    )
    # Every spelling of one file is one lock.
    with FileLock(workdir / "link"):
        assert held_elsewhere(real / "data")
        assert held_elsewhere(workdir / "dirlink" / "data")
        assert not held_elsewhere(workdir / "other")


def test_relative_paths_are_fixed_when_the_lock_is_made(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    lock = FileLock("state")
    (workdir / "sub").mkdir()
    monkeypatch.chdir(workdir / "sub")
    with lock:
        pass
    assert lock.lock_file == str(workdir / ".state.lock")
    assert os.path.exists(workdir / ".state.lock")


def test_a_name_too_long_for_a_lock_name_gets_a_hashed_one(workdir: Path) -> None:
    a, b = "a" * 250 + "1", "a" * 250 + "2"
    lock_a, lock_b = FileLock(workdir / a), FileLock(workdir / b)
    assert lock_a.lock_file != lock_b.lock_file
    for lock in (lock_a, lock_b):
        name = os.path.basename(lock.lock_file)
        assert len(name.encode()) <= 255 and name.startswith(".aaaa") and name.endswith(".lock")
    assert FileLock(workdir / a).lock_file == lock_a.lock_file  # deterministic
    with lock_a, lock_b:
        assert held_elsewhere(workdir / a) and held_elsewhere(workdir / b)
    assert lock_file_for(workdir / ("é" * 127)).endswith(".lock")  # cut on a character


def test_a_planted_symlink_at_the_lock_name_is_refused_not_followed(workdir: Path) -> None:
    victim = workdir / "victim"
    (workdir / ".state.lock").symlink_to(victim)
    with pytest.raises(OSError) as caught:
        FileLock(workdir / "state").acquire()
    assert caught.value.errno == errno.ELOOP
    assert caught.value.filename == str(workdir / "state")
    assert caught.value.filename2 == str(workdir / ".state.lock")
    assert not victim.exists()
    assert not held_elsewhere(workdir / "other")  # nothing stays held in this process


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_non_regular_file_at_the_lock_name_fails_at_once(workdir: Path, kind: str) -> None:
    planted = workdir / ".state.lock"
    if kind == "fifo":
        os.mkfifo(planted)
    else:
        planted.mkdir()
    # A FIFO must not wait for a writer: tried in a thread, so that an open that
    # blocks fails here (the join's bound only turns a hang into a failure).
    caught: list[BaseException] = []

    def attempt() -> None:
        try:
            FileLock(workdir / "state").acquire()
        except BaseException as e:
            caught.append(e)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(120)
    if t.is_alive() and kind == "fifo":
        with open(planted, "wb"):  # a writer at last: the blocked open returns
            pass
        t.join()
        pytest.fail("the lock waited for a writer of the FIFO")
    assert len(caught) == 1 and isinstance(caught[0], OSError), caught
    assert caught[0].errno in (errno.EINVAL, errno.EISDIR)


def test_a_missing_directory_raises_file_not_found_naming_the_path_given(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    with pytest.raises(FileNotFoundError) as caught:
        FileLock("missing/state").acquire()
    assert caught.value.errno == errno.ENOENT
    assert caught.value.filename == "missing/state"
    assert caught.value.filename2 == str(workdir / "missing" / ".state.lock")
    assert str(caught.value) == (
        f"[Errno 2] No such file or directory: 'missing/state' -> "
        f"{str(workdir / 'missing' / '.state.lock')!r}"
    )


LOCK_AS_NOBODY = """
from crashsafe.locking import FileLock
report(**attempt(lambda: FileLock(sys.argv[1]).acquire()))
"""


def test_a_lock_file_that_cannot_be_created_raises_permission_error() -> None:
    # Not FileNotFoundError: the retry without O_CREAT (for another user's lock
    # file in a sticky directory) must not replace the directory's refusal.
    with root_owned_directory() as readonly:
        result = run_as_nobody(LOCK_AS_NOBODY, str(readonly / "state"))
        assert result["raised"] == "PermissionError", result
        assert result["errno"] == errno.EACCES
        assert result["filename"] == str(readonly / "state")
        assert result["message"] == (
            f"[Errno 13] Permission denied: {str(readonly / 'state')!r} -> "
            f"{str(readonly / '.state.lock')!r}"
        )
        assert entries(readonly) == []


def test_another_users_lock_file_in_a_readonly_directory_is_locked() -> None:
    # O_CREAT is allowed on an existing file without write access to the
    # directory: a lock file made by its owner serves every reader.
    with root_owned_directory() as readonly:
        (readonly / ".state.lock").touch(mode=0o644)
        (readonly / ".state.lock").chmod(0o644)
        result = run_as_nobody(LOCK_AS_NOBODY, str(readonly / "state"))
        assert result == {"raised": None}


# --------------------------------------------------------------------------- threads


def test_a_thread_with_its_own_lock_object_waits_for_the_holder(workdir: Path) -> None:
    target = workdir / "state"
    held, release, got = threading.Event(), threading.Event(), threading.Event()

    def holder() -> None:
        with FileLock(target):
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(30)
        started = time.monotonic()
        with pytest.raises(LockTimeoutError):
            FileLock(target).acquire(timeout=0.2)
        assert time.monotonic() - started >= 0.2

        def waiter() -> None:
            with FileLock(target):  # no timeout: blocks until the holder lets go
                got.set()

        w = threading.Thread(target=waiter)
        w.start()
        assert not got.wait(0.2)
    finally:
        release.set()
        t.join()
    assert got.wait(30)
    w.join()


def _count_under(
    lock_for: Callable[[int], AbstractContextManager[object]],
    threads: int,
    rounds: int,
    between: Callable[[], object] = lambda: time.sleep(0),
) -> tuple[int, int]:
    """Threads increment a shared counter, calling *between()* between read and write
    (by default a yield that lets another thread run).

    Returns the final count and how many times two threads were inside at once.
    """
    state = {"count": 0, "inside": 0, "overlaps": 0}

    def work(i: int) -> None:
        for _ in range(rounds):
            lock = lock_for(i)
            with lock:
                state["inside"] += 1
                state["overlaps"] += state["inside"] > 1
                value = state["count"]
                between()
                state["count"] = value + 1
                state["inside"] -= 1

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return state["count"], state["overlaps"]


def test_threads_each_with_their_own_lock_object_never_overlap(workdir: Path) -> None:
    count, overlaps = _count_under(lambda i: FileLock(workdir / "counter"), 8, 150)
    assert (count, overlaps) == (1200, 0)


def test_one_lock_object_shared_by_threads_still_excludes(workdir: Path) -> None:
    shared = FileLock(workdir / "counter")
    count, overlaps = _count_under(lambda i: shared, 8, 150)
    assert (count, overlaps) == (1200, 0)


def test_control_without_a_lock_the_same_threads_lose_updates() -> None:
    """The check above can fail: the same workload with a lock that excludes nothing."""

    class NoLock:
        def __enter__(self) -> None:
            pass

        def __exit__(self, *exc: object) -> None:
            pass

    # A barrier between the read and the write forces the interleaving that a
    # lock must prevent, however the threads are scheduled: in every round all
    # 8 threads read the same count before any writes it back.
    barrier = threading.Barrier(8, timeout=60)
    count, overlaps = _count_under(lambda i: NoLock(), 8, 150, barrier.wait)
    assert count == 150 and overlaps > 0


# --------------------------------------------------------------------------- reentrancy


def test_the_lock_is_reentrant_per_thread_across_objects(workdir: Path) -> None:
    target = workdir / "state"
    first, second = FileLock(target), FileLock(target)
    with first:
        with first, second:  # the same object again, and another object of the path
            assert first.is_locked and second.is_locked
        assert first.is_locked and second.is_locked  # two releases of three
        assert held_elsewhere(target)
    assert not first.is_locked
    assert not held_elsewhere(target)


def test_release_by_a_thread_that_does_not_hold_it_raises(workdir: Path) -> None:
    lock = FileLock(workdir / "state")
    with pytest.raises(RuntimeError, match="not held"):
        lock.release()
    errors: list[BaseException] = []
    with lock:

        def other() -> None:
            try:
                lock.release()
            except RuntimeError as e:
                errors.append(e)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert lock.is_locked and held_elsewhere(workdir / "state")
    assert len(errors) == 1
    with pytest.raises(RuntimeError):
        lock.release()  # one release too many


# --------------------------------------------------------------------------- processes


def test_another_process_is_excluded_until_the_holder_releases(workdir: Path) -> None:
    target = workdir / "state"
    with spawned() as children:
        holder = Child(HOLD, str(target))
        children.append(holder)
        assert holder.readline() == "locked"
        with pytest.raises(LockTimeoutError):
            FileLock(target).acquire(timeout=0.2)
        holder.send("release")
        assert holder.readline() == "released"
        with FileLock(target, timeout=5):
            pass
        holder.send("exit")


def test_a_waiting_process_is_woken_as_soon_as_the_lock_is_free(workdir: Path) -> None:
    target = workdir / "state"
    waiter_code = """
        import sys, time
        from crashsafe.locking import FileLock
        print("waiting", flush=True)
        with FileLock(sys.argv[1]):
            print("got", time.monotonic(), flush=True)
    """
    with spawned() as children, FileLock(target) as lock:
        waiter = Child(waiter_code, str(target))
        children.append(waiter)
        assert waiter.readline() == "waiting"
        wait_until(lambda: blocked_in_flock(waiter.pid))  # blocked in the kernel, not polling
        assert waiter.poll_line(0.3) is None
        released = time.monotonic()
        lock.release()
        line = waiter.readline()
        lock.acquire()  # for the with block's release
    assert line.startswith("got")
    # Woken by the kernel (it was queued in flock, not polling): how soon is
    # printed, not asserted, as it depends on the machine's load.
    latency = float(line.split()[1]) - released
    print(f"woken {latency * 1000:.1f} ms after the release")


def test_a_holder_killed_with_sigkill_does_not_block_the_next_one(workdir: Path) -> None:
    target = workdir / "state"
    with spawned() as children:
        holder = Child(HOLD, str(target))
        children.append(holder)
        assert holder.readline() == "locked"
        with pytest.raises(LockTimeoutError):
            FileLock(target).acquire(timeout=0.2)  # it really holds the lock
        holder.kill9()
    # Reaped, so its descriptors are closed: the lock is free at once.
    with FileLock(target, timeout=0):
        pass
    assert os.path.exists(workdir / ".state.lock")  # the stale lock file is simply reused


def test_a_waiter_interrupted_by_ctrl_c_holds_nothing_and_can_wait_again(workdir: Path) -> None:
    target = workdir / "state"
    code = """
        import sys
        from crashsafe.locking import FileLock, LockTimeoutError
        lock = FileLock(sys.argv[1])
        print("waiting", flush=True)
        try:
            lock.acquire()
        except KeyboardInterrupt:
            print("interrupted", lock.is_locked, flush=True)
        try:
            lock.acquire(timeout=0)
        except LockTimeoutError:
            print("still excluded", flush=True)
        sys.stdin.readline()
        with FileLock(sys.argv[1], timeout=10):
            print("got", flush=True)
    """
    with spawned() as children, FileLock(target) as lock:
        waiter = Child(code, str(target))
        children.append(waiter)
        assert waiter.readline() == "waiting"
        wait_until(lambda: blocked_in_flock(waiter.pid))
        os.kill(waiter.pid, signal.SIGINT)
        assert waiter.readline() == "interrupted False"
        assert waiter.readline() == "still excluded"
        lock.release()
        waiter.send("go")
        assert waiter.readline() == "got"
        lock.acquire()


def test_a_forked_child_does_not_inherit_the_lock_nor_release_it(workdir: Path) -> None:
    target = workdir / "state"
    with FileLock(target) as lock:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 1
            try:
                child_lock = FileLock(target)
                if not lock.is_locked and not child_lock.is_locked:
                    try:
                        child_lock.acquire(timeout=0.1)
                        code = 2  # the parent still holds it: this must not succeed
                    except LockTimeoutError:
                        code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The child's exit closed its copy of the lock file: the parent still holds it.
        assert lock.is_locked
        with spawned() as children:
            probe = Child(
                """
                import sys
                from crashsafe.locking import FileLock, LockTimeoutError
                try:
                    FileLock(sys.argv[1]).acquire(timeout=0.1)
                    print("acquired", flush=True)
                except LockTimeoutError:
                    print("excluded", flush=True)
                """,
                str(target),
            )
            children.append(probe)
            assert probe.readline() == "excluded"


def test_a_lock_file_removed_under_a_waiter_is_recreated_and_locked(workdir: Path) -> None:
    """Someone deletes the lock file while a process waits on it: the waiter notices
    that its lock guards a name no one can open any more, and locks the new file."""
    target = workdir / "state"
    with spawned() as children:
        holder = FileLock(target)
        holder.acquire()
        waiter = Child(HOLD, str(target))
        children.append(waiter)
        wait_until(lambda: blocked_in_flock(waiter.pid))
        os.unlink(holder.lock_file)
        holder.release()
        assert waiter.readline() == "locked"
        assert os.path.exists(holder.lock_file)
        # The waiter holds the file that now has the name: others are excluded.
        with pytest.raises(LockTimeoutError):
            FileLock(target).acquire(timeout=0.2)
        waiter.send("release")
        assert waiter.readline() == "released"
        with FileLock(target, timeout=5):
            pass
        waiter.send("exit")


# --------------------------------------------------------------------------- errors


def test_timeout_error_names_the_path_and_the_lock_file_and_pickles(workdir: Path) -> None:
    target = workdir / "state"
    with spawned() as children:
        holder = Child(HOLD, str(target))
        children.append(holder)
        assert holder.readline() == "locked"
        with pytest.raises(LockTimeoutError) as caught:
            FileLock(target, timeout=0.05).acquire()
    e = caught.value
    assert isinstance(e, TimeoutError) and isinstance(e, OSError)
    assert e.filename == str(target)
    assert e.lock_file == e.filename2 == str(workdir / ".state.lock")
    assert e.timeout == 0.05
    assert str(e) == (
        f"could not lock {str(target)!r} within 0.05 s: its lock file "
        f"{str(workdir / '.state.lock')!r} is held by another thread or process"
    )
    copy = pickle.loads(pickle.dumps(e))  # noqa: S301 - our own error, round-tripped
    assert type(copy) is LockTimeoutError and str(copy) == str(e)
    assert (copy.filename, copy.lock_file, copy.timeout) == (e.filename, e.lock_file, e.timeout)


def test_an_infinite_timeout_means_no_timeout(workdir: Path) -> None:
    with FileLock(workdir / "state", timeout=float("inf")) as lock:
        assert lock.timeout is None and lock.is_locked


@pytest.mark.parametrize("timeout", [-1, float("nan"), "1", True])
def test_a_bad_timeout_is_refused(workdir: Path, timeout: object) -> None:
    with pytest.raises(ValueError, match="timeout"):
        FileLock(workdir / "state", timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        FileLock(workdir / "state").acquire(timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["", ".", "..", "/", "dir/", "dir/.", "dir/..", b"", b"."])
def test_a_path_that_names_no_file_is_refused(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, path: str | bytes
) -> None:
    # realpath("") is the current directory: "" locked its name in the parent.
    (workdir / "dir").mkdir()
    monkeypatch.chdir(workdir / "dir")
    with pytest.raises(ValueError, match="names no file"):
        FileLock(path)
    with pytest.raises(ValueError, match="names no file"):
        lock_file_for(path)
    assert entries(workdir) == ["dir"]
    assert entries(workdir / "dir") == []


def test_repr_says_what_is_locked_and_where(workdir: Path) -> None:
    lock = FileLock(workdir / "state")
    assert "unlocked" in repr(lock)
    with lock:
        assert repr(lock) == (
            f"<crashsafe.FileLock {str(workdir / 'state')!r} locked via "
            f"{str(workdir / '.state.lock')!r}>"
        )
