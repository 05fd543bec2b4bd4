"""The side of the filesystem that forgets that is not FUSE: what the test asks for
(over tests/harness/forgetful_wire.py), the epochs and their ledgers, restores, the
faults to answer, and the registry of open files that a restore closes.

:class:`Control` is a base of :class:`tests.harness.forgetful_fs.Forgetful`; both run in
the filesystem's process, under one lock (:attr:`Control.mutex`).
"""

from __future__ import annotations

import errno
import fnmatch
import itertools
import os
import shutil
import socket
import stat
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

from tests.harness.forgetful_model import CrashState, Ledger, StaleStateError
from tests.harness.forgetful_wire import recv, send

__all__ = ["Control", "Fault", "Handle"]

FAILABLE = ("fsync", "fsyncdir", "write")


@dataclass
class Fault:
    """The next *times* (-1: every) *op* on a basename matching *name* fail with *err*."""

    op: str
    err: int
    name: str | None
    times: int


@dataclass
class Handle:
    """A file open on the mount."""

    fd: int  # the backing file's
    inode: int  # the ledger's
    name: str  # the path it was opened by, for faults that match names
    synced: bool  # opened O_SYNC or O_DSYNC: every write durable at once
    append: bool  # opened O_APPEND: a write lands at the end, whatever its offset says


class Control:
    """The filesystem's state besides its operations, and the test's requests."""

    def __init__(self, backing: str, scratch: str, sock: socket.socket) -> None:
        self.mutex = threading.Lock()  # not "lock": that name is a FUSE operation
        self.scratch = scratch
        self.backing = backing
        self.sock = sock
        self.root_mode = stat.S_IMODE(os.stat(backing).st_mode)  # reset() gives it back
        self.epochs = 0
        self.ledger = self._next_ledger()
        # The epoch crash states were last listed from: each of them can be restored,
        # one after the other, until states of a later epoch are listed.
        self.listed: Ledger | None = None
        # Open files and directories by handle number, never reused: a release that
        # arrives after a restore closed its file must not close a newer one.
        self.handles: dict[int, Handle] = {}
        self.dirs: dict[int, tuple[int, str]] = {}  # handle -> (fd, the path it was opened by)
        self._numbers = itertools.count(1)
        self.faults: list[Fault] = []
        self.internal: list[str] = []  # the filesystem's own failures
        self.counts: Counter[tuple[str, str]] = Counter()
        self.restores = 0

    # -- open files ---------------------------------------------------------------------

    def open_file(self, handle: Handle) -> int:
        number = next(self._numbers)
        self.handles[number] = handle
        return number

    def open_dir(self, fd: int, path: str) -> int:
        number = next(self._numbers)
        self.dirs[number] = (fd, path)
        return number

    def handle(self, fh: int) -> Handle:
        handle = self.handles.get(fh)
        if handle is None:  # opened before a restore: as after a reboot, it is gone
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
        return handle

    def opened_dir(self, fh: int) -> tuple[int, str]:
        opened = self.dirs.get(fh)
        if opened is None:
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
        return opened

    # -- faults -------------------------------------------------------------------------

    def fault(self, op: str, name: str) -> None:
        """Count *op* on *name*, and raise the fault the test asked for, if one matches."""
        base = os.path.basename(name)
        self.counts[(op, base)] += 1
        for fault in self.faults:
            if fault.op == op and (fault.name is None or fnmatch.fnmatchcase(base, fault.name)):
                if fault.times > 0:
                    fault.times -= 1
                    if fault.times == 0:
                        self.faults.remove(fault)
                raise OSError(fault.err, os.strerror(fault.err))

    # -- requests ------------------------------------------------------------------------

    def serve(self) -> None:
        """Answer the test's requests until it closes the socket."""
        send(self.sock, ("ok", "ready"))
        while True:
            request = recv(self.sock)
            if request is None:
                return
            name, args = request
            try:
                with self.mutex:
                    answer: tuple[str, Any] = ("ok", getattr(self, "do_" + name)(*args))
            except Exception as e:  # every failure goes back to the test
                answer = ("error", e)
            send(self.sock, answer)

    def _next_ledger(self) -> Ledger:
        self.epochs += 1
        return Ledger(self.backing, os.path.join(self.scratch, f"epoch-{self.epochs}"), self.epochs)

    def _new_epoch(self) -> None:
        """Everything in the backing directory is durable from now on."""
        if self.ledger is not self.listed:
            self.ledger.close()
        self.ledger = self._next_ledger()

    def do_sync_all(self) -> None:
        self._new_epoch()

    def do_crash_states(self, limit: int, torn: bool, seed: int) -> list[CrashState]:
        states = self.ledger.crash_states(limit=limit, torn=torn, seed=seed)
        if self.listed is not None and self.listed is not self.ledger:
            self.listed.close()
        self.listed = self.ledger
        return states

    def do_durable_view(self) -> dict[str, bytes | None]:
        return self.ledger.pessimistic_view()

    def do_restore(self, state: CrashState) -> None:
        source = self.listed if self.listed is not None else self.ledger
        if state.epoch != source.epoch:
            raise StaleStateError(
                f"a crash state of epoch {state.epoch}, but crash states were last listed "
                f"in epoch {source.epoch}: list them again after the crash to restore"
            )
        self.restores += 1
        dest = os.path.join(self.scratch, f"restore-{self.restores}")
        source.write_out(state, dest)
        self._wipe()
        root = self.ledger.root
        for name in os.listdir(dest):
            shutil.move(os.path.join(dest, name), os.path.join(root, name))
        os.chmod(root, stat.S_IMODE(os.stat(dest).st_mode))
        os.rmdir(dest)
        self._new_epoch()

    def _wipe(self) -> None:
        """Close every file open on the mount (as a reboot does: they are gone) and
        empty the backing directory."""
        for fd in [h.fd for h in self.handles.values()] + [d[0] for d in self.dirs.values()]:
            os.close(fd)
        self.handles.clear()
        self.dirs.clear()
        root = self.ledger.root
        for name in os.listdir(root):
            p = os.path.join(root, name)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)

    def do_reset(self) -> None:
        self._wipe()
        os.chmod(self.ledger.root, self.root_mode)
        self.faults.clear()
        self.counts.clear()
        if self.listed is not None and self.listed is not self.ledger:
            self.listed.close()
        self.listed = None
        self._new_epoch()

    def do_fail(self, op: str, err: int, name: str | None, times: int) -> None:
        if op not in FAILABLE:
            raise ValueError(f"cannot fail {op!r}: only fsync, fsyncdir and write")
        if times == 0 or times < -1:
            raise ValueError("times must be positive, or -1 for every time")
        self.faults.append(Fault(op, err, name, times))

    def do_internal_errors(self) -> list[str]:
        return list(self.internal)

    def do_clear_faults(self) -> None:
        self.faults.clear()

    def do_calls(self, op: str, name: str | None) -> int:
        return sum(
            n
            for (o, base), n in self.counts.items()
            if o == op and (name is None or fnmatch.fnmatchcase(base, name))
        )
