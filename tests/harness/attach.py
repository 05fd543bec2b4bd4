"""A writer program from ``tests/writers/`` with strace attached once it is ready.

:class:`Attached` starts the writer, waits for its "ready" (it waits in
``start()`` of :mod:`tests.writers.markers`), attaches ``strace -f -p`` (with an
``inject=`` of the caller's, to freeze it at a chosen call), and lets it go once
strace traces it. Why attaching late matters is in :mod:`tests.harness.power_cut`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests import children
from tests.harness.traces import STOPPED


class Attached:
    """A writer program started first, and strace attached to it (``-f -p``) once
    it waits in ``start()``; the handshake done. Both run in process groups of
    their own; :meth:`kill` ends and reaps exactly these two."""

    def __init__(self, work: Path, writer: Path, args: Sequence[str], inject: str | None):
        self.out = work / "trace.txt"
        self.out.unlink(missing_ok=True)
        self.log = work / "stderr.txt"
        self.strace: subprocess.Popen[bytes] | None = None
        with open(self.log, "wb") as log:
            self.writer = children.start(writer, *args, isolated=True, stderr=log)
        try:
            self._attach(work, inject)
        except BaseException:
            self.kill()
            raise

    def _attach(self, work: Path, inject: str | None) -> None:
        assert self.writer.stdout is not None and self.writer.stdin is not None
        if self.writer.stdout.readline() != b"ready\n":
            raise AssertionError("the writer failed before it was ready:\n" + self._stderr())
        cmd = ["strace", "-f", "-qq", "-y", "-o", str(self.out)]
        if inject is not None:
            cmd += ["-e", f"inject={inject}"]
        with open(work / "strace.txt", "wb") as log:
            self.strace = subprocess.Popen(
                [*cmd, "-p", str(self.writer.pid)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        # A complete line from the writer: strace stops it at every syscall now.
        deadline = time.monotonic() + 120  # a hang guard, as wait_until()
        while "\n" not in self.text():
            if time.monotonic() > deadline or self.strace.poll() is not None:
                why = (work / "strace.txt").read_text(errors="replace")[-2000:]
                raise AssertionError("strace did not attach to the writer:\n" + why)
            time.sleep(0.002)
        self.writer.stdin.write(b"g")
        self.writer.stdin.close()

    def _stderr(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def text(self) -> str:
        try:
            return self.out.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _all_stopped(self) -> bool:
        for stat in glob.glob(f"/proc/{self.writer.pid}/task/*/stat"):
            try:
                state = Path(stat).read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue  # a thread that just exited
            if state not in ("t", "T", "Z", "X"):  # stopped, or exited and not reaped yet
                return False
        return True

    def wait_frozen_or_done(self, timeout: float = 30.0) -> bool:
        """True once every thread is stopped, False if the writer returned first.

        A thread that was inside a syscall when the SIGSTOP came (an fsync of
        another worker) finishes that syscall, then stops: what it did is part
        of the state the cut finds, as with any power cut at that instant.
        The deadline only turns a hang into a failure.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.writer.poll() is not None:
                if self.writer.returncode != 0:
                    raise AssertionError(
                        f"the writer failed ({self.writer.returncode}):\n" + self._stderr()
                    )
                return False
            if STOPPED in self.text() and self._all_stopped():
                return True
            if time.monotonic() > deadline:
                raise AssertionError("the writer neither froze nor returned in time")
            time.sleep(0.002)

    def finish(self, timeout: float = 60.0) -> str:
        rc = self.writer.wait(timeout)
        if rc != 0:
            raise AssertionError(f"the writer failed ({rc}):\n" + self._stderr())
        assert self.strace is not None
        self.strace.wait(timeout)  # it exits once its tracee is gone
        return self.text()

    def kill(self) -> None:
        """SIGKILL the writer (strace then exits), then strace's group if it did not."""
        if self.writer.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.writer.pid, signal.SIGKILL)
        # Reaped here, so its descriptors are closed before any unmount.
        self.writer.wait()
        for pipe in (self.writer.stdin, self.writer.stdout):
            if pipe is not None:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()
        if self.strace is not None:
            children.reap_group(self.strace, 10)
