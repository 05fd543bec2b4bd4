"""A filesystem that forgets, for tests: power cuts on any directory, and real fsync errors.

``with forgetful(backing) as fs:`` mounts a FUSE filesystem on ``fs.mnt`` that passes every
operation through to the directory *backing* (on btrfs, overlayfs, tmpfs, ext4, ...) and
keeps account of what is durable by the conservative model of CONTRACT.md: a file's data
only after an fsync of the file, a directory entry only after an fsync of its directory
(both directories for a rename). After a writer was killed, :meth:`Forgetful.crash_states`
lists the states a power cut at that moment may leave (unsynced operations lost or kept in
any combination, writes torn), and :meth:`Forgetful.restore` makes the mount hold one of
them, as after a reboot. :meth:`Forgetful.fail` makes the next fsync, directory fsync or
write answer an error, with Linux's semantics for a failed fsync.

``sync(2)`` and ``syncfs(2)`` make nothing durable here (the filesystem gets no request
for them: the durable view was unchanged after both): :meth:`Forgetful.sync_all` is the
test's ``sync``. An error inside the filesystem itself (a bug, not an answer) reaches its caller
as ``EIO`` and fails the ``with`` block on its way out.

The filesystem runs as a child process (tests/harness/forgetful_fs.py), started and
stopped by its pid, controlled over a unix socket pair, unmounted with ``fusermount3 -u``;
nothing is left behind. The kernel's caches are off (``direct_io``, timeouts 0), so a
restored state is what the next reader sees without a remount. Needs root, ``/dev/fuse``,
``fusermount3`` (Debian's fuse3) and mfusepy (the test extra).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from tests import children
from tests.harness.forgetful_model import CrashState, StaleStateError
from tests.harness.forgetful_wire import recv, send
from tests.harness.require import require, require_root, require_tools

__all__ = ["ALWAYS", "CrashState", "Forgetful", "StaleStateError", "forgetful"]

ALWAYS = -1
"""``fail(..., times=ALWAYS)``: every such operation from now on fails."""

_PROGRAM = "import sys\nfrom tests.harness.forgetful_fs import main\nsys.exit(main(sys.argv[1:]))"
_START_TIMEOUT = 60.0  # seconds for the child to mount (a bound, not a timing)


class Forgetful:
    """A mounted filesystem that forgets (see the module's docstring). Made by
    :func:`forgetful`; ``mnt`` is its mount point, ``backing`` the directory it passes
    through to (do not change it behind the mount's back)."""

    def __init__(self, mnt: Path, backing: Path, sock: socket.socket, pid: int) -> None:
        self.mnt = mnt
        self.backing = backing
        self.pid = pid
        self._sock = sock
        self._lock = threading.Lock()

    def _ask(self, name: str, *args: Any) -> Any:
        with self._lock:  # one request and its answer at a time, whichever thread asks
            send(self._sock, (name, args))
            answer = recv(self._sock)
        if answer is None:
            raise RuntimeError(f"the forgetful filesystem (pid {self.pid}) went away")
        status, value = answer
        if status == "error":
            raise value
        return value

    def sync_all(self) -> None:
        """Everything now in the mount is durable, as after ``sync(2)``: a new epoch
        starts, whose crash states :meth:`crash_states` lists from now on."""
        self._ask("sync_all")

    def crash_states(
        self, *, limit: int = 64, torn: bool = True, seed: int = 0
    ) -> list[CrashState]:
        """The distinct states a crash *now* may leave (call it after the writer was
        killed, or returned).

        Always the pessimistic state first (only what was synced), then the optimistic
        one (everything), then, in this order: each prefix of the unsynced operations,
        each with one left out, each alone, each unsynced write torn (a proper prefix of
        its 4096-byte pieces, one piece alone; zeros or garbage in place of its data if
        it grew the file), then every subset of the unsynced operations with at most one
        write torn when there are at most 10 of them (in an order shuffled by *seed*),
        otherwise samples drawn by *seed* (until 256 in a row found nothing new).
        Identical states are listed once; at most *limit* (at least 2). *torn* False
        leaves torn writes out.
        """
        states: list[CrashState] = self._ask("crash_states", limit, torn, seed)
        return states

    def reset(self) -> None:
        """Start afresh, as a newly mounted empty filesystem: the mount empty (its mode
        as when it was mounted) and durable, files open on it gone, no fault pending,
        :meth:`calls` at zero, no listed crash state to restore. Lets one mount serve
        many tests."""
        self._ask("reset")

    def restore(self, state: CrashState) -> None:
        """Make the mount hold exactly *state*, as after a reboot into it: what it holds
        is now all durable (a new epoch), and files open before are gone (``ESTALE``).

        Every state of the latest :meth:`crash_states` listing can be restored, one after
        the other, whatever was done on the mount in between (a check that writes, a
        recovery); a state of an earlier listing raises :class:`StaleStateError`."""
        self._ask("restore", state)

    def fail(
        self,
        op: Literal["fsync", "fsyncdir", "write"],
        err: int,
        *,
        name: str | None = None,
        times: int = 1,
    ) -> None:
        """The next *times* such operations (:data:`ALWAYS`: every one from now on) on
        an entry whose basename matches the glob *name* (any when None) fail with errno
        *err*, and do nothing else.

        ``fsync`` with ``EIO`` has Linux's semantics: the file's data written since its
        last good sync is dropped from every crash state and marked clean, so a retried
        fsync succeeds and the data is gone (readers still see it until a restore); a
        truncate or mode change stays unsynced (the inode's, not a page's).
        ``fsyncdir`` is an fsync of a directory (its basename; "" for the mount's root);
        a failed one makes nothing durable. A failed ``write`` writes nothing.
        """
        self._ask("fail", op, err, name, times)

    def clear_faults(self) -> None:
        """Forget every fault asked for that has not happened yet."""
        self._ask("clear_faults")

    def calls(self, op: Literal["fsync", "fsyncdir", "write"], *, name: str | None = None) -> int:
        """How many *op* requests the filesystem has seen since it was mounted, failed
        ones included, on entries whose basename matches the glob *name*."""
        count: int = self._ask("calls", op, name)
        return count

    def durable_view(self) -> dict[str, bytes | None]:
        """The pessimistic state (only what was synced), by path relative to the mount:
        a regular file's content; None for a directory or a symlink."""
        view: dict[str, bytes | None] = self._ask("durable_view")
        return view


def require_forgetful() -> None:
    """Skip (fail under CI) unless a FUSE filesystem can be mounted here."""
    require_root()
    require_tools("fusermount3")
    require(os.path.exists("/dev/fuse"), "needs /dev/fuse")
    require(importlib.util.find_spec("mfusepy") is not None, "needs mfusepy (the test extra)")
    require(ctypes.util.find_library("fuse3") is not None, "needs libfuse3 (Debian's fuse3)")


@contextlib.contextmanager
def forgetful(backing: Path) -> Iterator[Forgetful]:
    """Mount a filesystem that forgets over the directory *backing* (whose current
    content is taken as durable); yield it; unmount it and stop its process, removing
    everything it made (*backing* keeps what the mount holds at the end)."""
    require_forgetful()
    scratch = Path(tempfile.mkdtemp(prefix="crashsafe-forgetful-"))
    mnt, state, log = scratch / "mnt", scratch / "state", scratch / "log"
    scratch.chmod(0o755)  # the mount point inside it, for writers run as other users
    mnt.mkdir()
    state.mkdir(mode=0o700)
    ours, theirs = socket.socketpair()
    # Built where every child of the suite is (tests/children.py); started here, for
    # the socket it inherits.
    command = children.python_command(
        _PROGRAM, str(backing), str(mnt), str(state), str(theirs.fileno()),
        env={"FUSE_LIBRARY_NAME": "fuse3", "PYTHONPATH": children.ROOT},
    )  # fmt: skip
    # No coverage tracer in the filesystem: it would slow every operation of the tests
    # on it, and the library code it runs (crashcheck's model) is measured elsewhere.
    command.env.pop("COVERAGE_PROCESS_CONFIG", None)
    try:
        with open(log, "wb") as errors:
            proc = subprocess.Popen(
                command.argv,
                pass_fds=[theirs.fileno()],
                env=command.env,
                stdin=subprocess.DEVNULL,
                stdout=errors,
                stderr=errors,
            )
        theirs.close()
        try:
            fs = Forgetful(mnt, backing, ours, proc.pid)
            ours.settimeout(_START_TIMEOUT)
            ready = recv(ours)
            ours.settimeout(None)
            if ready != ("ok", "ready"):
                raise RuntimeError(f"the forgetful filesystem did not start: {log.read_text()}")
            yield fs
            failed = fs._ask("internal_errors")
            if failed:
                raise RuntimeError(
                    "the forgetful filesystem failed (its callers got EIO):\n" + "\n".join(failed)
                )
        finally:
            _stop(mnt, proc, ours)
    finally:
        ours.close()
        theirs.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _stop(mnt: Path, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
    """Unmount *mnt* and wait for *proc*, its filesystem, to exit; lazily and by force
    only when a process still holds the mount busy."""
    busy = False
    if _mounted(mnt):
        done = subprocess.run(["fusermount3", "-u", str(mnt)], check=False, capture_output=True)
        if done.returncode != 0:
            busy = True
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True)
    sock.close()
    if busy:
        # Detached, but a file still open there keeps the filesystem serving it: stop it
        # (by its pid: the child this harness started); libfuse exits on SIGTERM.
        proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _mounted(mnt: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(mnt) for line in f)
