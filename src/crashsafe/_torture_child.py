"""How ``crashsafe torture`` runs one writer: a Python child, traced and killed by strace or
killed at a time.

The child starts up, prepares the new content, says ``ready`` and waits for a
go byte on its stdin; only then is strace attached (``-f -p``), so that its
counts, and every ``when=K``, begin after Python's start-up. The child marks
the start and the end of the write with ``access()`` calls on names that exist
nowhere, which the trace shows. Each child runs in a session of its own, so
that a Ctrl-C at the terminal reaches only the parent, which then kills and
reaps exactly the processes it started.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["END_MARK", "PIECE", "START_MARK", "TARGET", "Call", "Lab", "NoTracer", "content"]

PIECE: Final = 64 * 1024
TARGET: Final = "file.bin"
START_MARK: Final = "/.crashsafe-torture-start"
END_MARK: Final = "/.crashsafe-torture-end"
TIMEOUT: Final = 60.0  # one child, start to end: only turns a hang into an error

# argv: the directory holding the crashsafe package, the mode, the target, the
# size, the writer's setup and write code. "traced": poll stdin, so that
# strace's attach shows in its log at once; "timed": block, and say when the
# write starts, the moment the kill's delay counts from.
_CHILD: Final = f"""\
import os, select, sys, time
sys.path.insert(0, sys.argv[1])
from crashsafe._torture_child import PIECE, content
mode, path, size = sys.argv[2], sys.argv[3], int(sys.argv[4])
new = content(size, new=True)
pieces = [new[i : i + PIECE] for i in range(0, size, PIECE)]
exec(sys.argv[5])
write = compile(sys.argv[6], "<writer>", "exec")
os.write(1, b"ready\\n")
if mode == "traced":
    while not select.select([0], [], [], 0.001)[0]:
        pass
os.read(0, 1)
if mode == "timed":
    os.write(1, b"w\\n")
os.access({START_MARK!r}, os.F_OK)
started = time.monotonic()
exec(write)
took = time.monotonic() - started
os.access({END_MARK!r}, os.F_OK)
os.write(1, b"done %r\\n" % took)
"""


def content(size: int, *, new: bool) -> bytes:
    """The old or the new content: piece i is one byte value, never zero, odd
    in the old content and even in the new one."""
    pieces = []
    for i, start in enumerate(range(0, size, PIECE)):
        value = 2 * (i % 127) + (2 if new else 1)
        pieces.append(bytes([value]) * min(PIECE, size - start))
    return b"".join(pieces)


class NoTracer(RuntimeError):
    """strace is on PATH but cannot trace the child (no ptrace permission, say).
    Before the dry run, a reason to kill at random times instead; after it
    (strace refusing an ``inject=`` it cannot do), a failure of the run."""


@dataclass(frozen=True)
class Call:
    """One call of the child, as strace showed it."""

    name: str
    nth: int  # this thread's calls of *name* since strace attached: what when= counts
    between: bool  # after the start marker and before the end marker

    def __str__(self) -> str:
        return f"{self.name} #{self.nth}"


# "1234  name(args) = result"; -f puts the thread id first.
_LINE = re.compile(r"^(?:(\d+)\s+)?(\w+)\((.*)$")


def parse(text: str) -> list[Call]:
    """The calls in an strace log, each numbered as ``when=`` counts it."""
    counts: Counter[tuple[str | None, str]] = Counter()
    calls = []
    inside = False
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue  # "<... resumed>", "+++ killed by SIGKILL +++", signals
        tid, name, rest = m[1], m[2], m[3]
        counts[tid, name] += 1
        if name == "access" and END_MARK in rest:
            inside = False
        calls.append(Call(name, counts[tid, name], inside))
        if name == "access" and START_MARK in rest:
            inside = True
    return calls


class Lab:
    """One writer's scratch *directory* (created here), its target there, and its
    runs: :meth:`traced` and :meth:`timed`. *setup* and *write* are the writer's
    code (see :class:`crashsafe._torture.Writer`)."""

    def __init__(self, name: str, setup: str, write: str, directory: Path, size: int) -> None:
        self.name, self.setup, self.write = name, setup, write
        self.directory, self.size = directory, size
        self.old = content(size, new=False)
        self.log = directory.parent / f"{name}.trace"
        self.errors = directory.parent / f"{name}.stderr"
        self.running: list[subprocess.Popen[bytes]] = []
        directory.mkdir()

    @property
    def target(self) -> Path:
        return self.directory / TARGET

    def reset(self) -> int:
        """The old content at the target again; returns how many other files the
        last run left (and removes them)."""
        left = 0
        for entry in os.scandir(self.directory):
            if entry.name != TARGET:
                left += 1
                os.unlink(entry.path)
        self.target.write_bytes(self.old)
        return left

    def _start(self, mode: str) -> subprocess.Popen[bytes]:
        package = str(Path(__file__).resolve().parent.parent)
        args = [mode, str(self.target), str(self.size), self.setup, self.write]
        with open(self.errors, "wb") as errors, _interrupt_held():
            # -I -S: no site hooks, user paths or environment variables whose
            # work could differ between the dry run and the kills.
            child = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", "-c", _CHILD, package, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                start_new_session=True,
            )
            self.running.append(child)
        try:
            if _read_line(child, time.monotonic() + TIMEOUT) != b"ready\n":
                raise RuntimeError(f"the {self.name} writer failed: {self._stderr()}")
        except BaseException:
            self.end()
            raise
        return child

    def _stderr(self) -> str:
        return self.errors.read_text(errors="replace").strip()[-2000:] or "no message"

    def traced(self, inject: str | None) -> tuple[int, list[Call]]:
        """Run the writer under strace (with ``-e inject=``*inject*), to its end
        or its death; returns its exit status (-9: killed) and its calls.
        Raises :class:`NoTracer` if strace cannot attach."""
        child = self._start("traced")
        cmd = ["strace", "-f", "-qq", "-o", str(self.log)]
        if inject is not None:
            cmd += ["-e", f"inject={inject}"]
        self.log.unlink(missing_ok=True)
        with _interrupt_held():
            tracer = subprocess.Popen(
                [*cmd, "-p", str(child.pid)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            self.running.append(tracer)
        deadline = time.monotonic() + TIMEOUT
        try:
            # A complete line in the log: strace stops the child at every call now.
            while "\n" not in _text(self.log):
                if tracer.poll() is not None:
                    assert tracer.stderr is not None
                    why = tracer.stderr.read().decode(errors="replace").strip()
                    raise NoTracer(why.splitlines()[-1] if why else "strace exited at once")
                _check(deadline)
                time.sleep(0.002)
            _go(child)
            _wait(child, deadline)
            _wait(tracer, deadline)
        finally:
            self.end()
        if inject is None and child.returncode != 0:
            raise RuntimeError(f"the {self.name} writer failed: {self._stderr()}")
        return child.returncode, parse(_text(self.log))

    def timed(self, delay: float | None) -> tuple[int, float]:
        """Run the writer, killed *delay* seconds after it said it starts writing
        (None: not killed); returns its exit status and the time its write took
        (nan if it did not finish)."""
        child = self._start("timed")
        deadline = time.monotonic() + TIMEOUT
        try:
            _go(child)
            line = _read_line(child, deadline)
            if delay is not None and line == b"w\n":
                time.sleep(delay)
                child.kill()  # nothing if it already exited
            line = _read_line(child, deadline)
            _wait(child, deadline)
        finally:
            self.end()
        if child.returncode == 0 and line.startswith(b"done "):
            return 0, float(line.split()[1])
        if delay is None:
            raise RuntimeError(f"the {self.name} writer failed: {self._stderr()}")
        return child.returncode, float("nan")

    def end(self) -> None:
        """Kill the processes this lab started that still run, reap them, close
        their pipes. Called again after an interrupt inside it, it finishes."""
        while self.running:
            proc = self.running[-1]
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            self.running.pop()


@contextlib.contextmanager
def _interrupt_held() -> Iterator[None]:
    """Ctrl-C held back while a child is started and recorded, so that it cannot
    leave one running unrecorded (Popen waits for the exec in between); it is
    handled right after. The child inherits the block: it runs in a session of
    its own and is ended with SIGKILL, so it needs no SIGINT."""
    if sys.platform == "win32":
        yield
        return
    was_blocked: bool | None = None
    try:
        was_blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        yield
    finally:
        # None: a SIGINT that came just before was handled inside the call above,
        # after it blocked, and raised: unblock all the same.
        if not was_blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _check(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise RuntimeError(f"a writer child did not finish in {TIMEOUT:.0f} s")


def _go(child: subprocess.Popen[bytes]) -> None:
    assert child.stdin is not None
    child.stdin.write(b"g")
    child.stdin.close()


def _read_line(child: subprocess.Popen[bytes], deadline: float) -> bytes:
    """One line from the child, byte by byte (no buffer that could hold the next)."""
    assert child.stdout is not None
    fd = child.stdout.fileno()
    line = b""
    while not line.endswith(b"\n"):
        if not select.select([fd], [], [], max(deadline - time.monotonic(), 0))[0]:
            _check(deadline)
            continue
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return line


def _wait(proc: subprocess.Popen[bytes], deadline: float) -> None:
    try:
        proc.wait(max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        _check(deadline)
        raise
