"""Child Python processes for the locking, document and checksum tests.

Each child runs a snippet with ``sys.executable -c`` (stdlib and crashsafe
only), talks in lines over stdin and stdout, and is killed and reaped when the
block that started it ends, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import crashsafe
from tests.harness.inject import run_python
from tests.harness.require import require, require_root, require_tools

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


class Child:
    """One child process, read line by line with a timeout so that a stuck child fails."""

    def __init__(self, code: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self.pid = self.proc.pid
        self._buffer = b""

    def readline(self, timeout: float = 30.0) -> str:
        line = self.poll_line(timeout)
        if line is None:
            raise AssertionError(f"child {self.pid} said nothing for {timeout} s")
        return line

    def poll_line(self, timeout: float) -> str | None:
        """The next line, or None if none arrives within *timeout* seconds."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"child {self.pid} exited: {self.proc.wait()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def kill9(self) -> None:
        """SIGKILL the child and reap it; assert that SIGKILL is what ended it."""
        os.kill(self.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def spawned() -> Iterator[list[Child]]:
    """Children appended to the yielded list are killed (if alive) and reaped at the end."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in started:
            child.close()


def blocked_in_flock(pid: int) -> bool:
    """Whether process *pid* is waiting for a flock, as /proc/locks shows waiters ("->")."""
    with open("/proc/locks") as f:
        for line in f:
            # "1: -> FLOCK  ADVISORY  WRITE 5715 fe:00:2146337 0 EOF"
            fields = line.split()
            if "->" in fields:
                kind, _, _, waiter = fields[fields.index("->") + 1 :][:4]
                if kind == "FLOCK" and int(waiter) == pid:
                    return True
    return False


def wait_until(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    """Poll *condition* until it holds. The bound only turns a hang into a failure:
    it is far above what a busy machine needs, and no verdict depends on it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {condition}")
        time.sleep(0.005)


@cache
def unprivileged_python() -> tuple[str, str] | None:
    """(interpreter, PYTHONPATH) that user nobody can run with crashsafe importable."""
    src = str(Path(crashsafe.__file__).resolve().parent.parent)
    for python in (sys.executable, "/usr/bin/python3"):
        done = subprocess.run(
            [*NOBODY, python, "-c", "import crashsafe"],
            capture_output=True,
            env={**os.environ, "PYTHONPATH": src},
            check=False,
        )
        if done.returncode == 0:
            return python, src
    return None


def nobody_python() -> tuple[str, str]:
    """(interpreter, PYTHONPATH) for a child run as user nobody with crashsafe importable.

    Needs root and setpriv: skips without them (fails under CI).
    """
    require_root()
    require_tools("setpriv")
    found = unprivileged_python()
    require(found is not None, "no Python that user nobody can run with crashsafe")
    assert found is not None
    return found


def run_as_nobody(code: str, *args: str, staging: str = "tmpfile") -> dict[str, Any]:
    """Run ``tests.harness.inject.PRELUDE`` + *code* as user nobody (no capabilities);
    return the JSON object it reported with ``report(...)``.

    Needs root and setpriv: skips without them (fails under CI).
    """
    python, src = nobody_python()
    child = run_python(
        code, *args, staging=staging, wrapper=NOBODY, python=python, env={"PYTHONPATH": src}
    )
    assert child.returncode == 0, child.stderr
    return child.result


@contextlib.contextmanager
def root_owned_directory() -> Iterator[Path]:
    """A directory that user nobody may enter and read but not write (0o755, owned
    by root, outside pytest's private base), removed at the end."""
    base = Path(tempfile.mkdtemp(prefix="crashsafe-readonly-"))
    try:
        base.chmod(0o755)
        yield base
    finally:
        shutil.rmtree(base)
