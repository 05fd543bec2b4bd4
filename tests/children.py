"""The one place that starts a child Python: every test and harness child comes from here.

A child is ``sys.executable`` (or the interpreter user nobody can run) with a
program: Python source (``-c``, optionally after a prelude) or a program file
under ``tests/writers/``. The options combine:

* ``prelude``: :data:`REPORT` (``describe()``, ``attempt()``, ``report()``:
  the child says what it saw as one JSON line), or nothing.
* ``as_nobody``: run as user nobody with no capabilities (``setpriv``), to meet
  real permission errors as root cannot.
* ``wrapper``: a command put before the interpreter, e.g. ``strace -e
  inject=...`` (see :mod:`tests.harness.inject`).
* ``isolated``: ``-S -B``, a fixed minimal environment, ``/`` as working
  directory, a process group of its own: what the crash harnesses run (see
  :mod:`tests.harness.power_cut`), so that no site hook or bytecode write adds
  calls to the traces they enumerate.

:func:`run` waits for the child and returns a :class:`Ran`; :func:`start`
returns the running :class:`subprocess.Popen`; :class:`Child` talks to a
running child in lines, with timeouts, and is reaped by :func:`spawned`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import IO, Any, TypedDict, Unpack

import crashsafe
from tests.harness.require import require, require_root, require_tools

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
# The directory that holds the crashsafe package (src/), and the checkout's root
# (so that a program file can import tests.writers.*).
SRC = str(Path(crashsafe.__file__).resolve().parent.parent)
ROOT = str(Path(__file__).resolve().parent.parent)

# Prepended to a REPORT child's code: the staging path chosen by the parent,
# and helpers that turn an outcome into JSON.
REPORT = textwrap.dedent(
    """
    import json, os, sys
    import crashsafe
    import crashsafe._platform._posix as _posix
    from crashsafe import AtomicFile, atomic_open, atomic_write, write_file_atomic

    _posix.use_tmpfile = os.environ.get("CRASHSAFE_STAGING", "tmpfile") == "tmpfile"

    def describe(e):
        name = getattr(e, "filename", None)
        cause = e.__cause__
        return {
            "raised": type(e).__name__,
            "errno": getattr(e, "errno", None),
            "filename": None if name is None else os.fsdecode(name),
            "oserror": isinstance(e, OSError),
            "message": str(e),
            "cause_errno": getattr(cause, "errno", None),
        }

    def attempt(fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except BaseException as e:
            return describe(e)
        return {"raised": None}

    def report(**result):
        sys.stdout.write(json.dumps(result) + "\\n")
        sys.stdout.flush()
    """
)

_CALL = re.compile(r"^\s*(?:\[pid\s+)?\d*\]?\s*(\w+)\(")


@cache
def unprivileged_python() -> tuple[str, str] | None:
    """(interpreter, PYTHONPATH) that user nobody can run with crashsafe importable."""
    for python in (sys.executable, "/usr/bin/python3"):
        done = subprocess.run(
            [*NOBODY, python, "-c", "import crashsafe"],
            capture_output=True,
            env={**os.environ, "PYTHONPATH": SRC},
            check=False,
        )
        if done.returncode == 0:
            return python, SRC
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


class Options(TypedDict, total=False):
    """How a child runs (see the module's docstring)."""

    prelude: str  # prepended to source text; default "" (run(): REPORT)
    as_nobody: bool
    wrapper: Sequence[str]
    isolated: bool
    staging: str | None  # CRASHSAFE_STAGING for REPORT; run(): "tmpfile"
    env: Mapping[str, str] | None  # added to the environment


def python_command(program: str | Path, *args: str, **options: Unpack[Options]) -> Command:
    """The argv and environment of a child running *program* with *args* as
    ``sys.argv[1:]``: source text (dedented, after the prelude) or a program file."""
    python = sys.executable
    wrapper = list(options.get("wrapper", ()))
    isolated = options.get("isolated", False)
    extra = dict(options.get("env") or {})
    if options.get("as_nobody", False):
        python, src = nobody_python()
        wrapper += NOBODY
        extra.setdefault("PYTHONPATH", src)
    flags = ["-S", "-B"] if isolated else []
    if isinstance(program, Path):
        assert not options.get("prelude"), "a program file brings its own imports"
        argv = [*wrapper, python, *flags, str(program), *args]
    else:
        code = options.get("prelude", "") + textwrap.dedent(program)
        argv = [*wrapper, python, *flags, "-c", code, *args]
    if isolated:
        # The same few variables in every run: PYTHONPATH finds crashsafe and
        # tests.writers, the hash seed and locale fix what could vary.
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        base |= {"PYTHONPATH": f"{SRC}{os.pathsep}{ROOT}", "PYTHONHASHSEED": "0"}
        base |= {"LC_ALL": "C.UTF-8"}
    else:
        base = dict(os.environ)
        base["PYTHONDONTWRITEBYTECODE"] = "1"
        base.pop("PYTHONWARNINGS", None)
        if isinstance(program, Path):
            # A program file imports tests.writers and tests.harness.
            base["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, base.get("PYTHONPATH")]))
    staging = options.get("staging")
    if staging is not None:
        base["CRASHSAFE_STAGING"] = staging
    return Command(argv, base | extra, "/" if isolated else None, isolated)


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    new_session: bool  # a process group of its own


def start(
    program: str | Path,
    *args: str,
    stdin: int | IO[Any] | None = subprocess.PIPE,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = None,
    text: bool = False,
    **options: Unpack[Options],
) -> subprocess.Popen[Any]:
    """Start a child (see :func:`python_command`) and return it running.

    An isolated child runs in ``/`` in a process group of its own."""
    command = python_command(program, *args, **options)
    return subprocess.Popen(
        command.argv,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=command.env,
        text=text,
        bufsize=-1 if text else 0,
        cwd=command.cwd,
        start_new_session=command.new_session,
    )


@dataclass
class Ran:
    """What a child that ran to its end did: exit status, output, and the strace
    log lines if it ran under :func:`tests.harness.inject.run_traced`."""

    returncode: int
    stdout: str
    stderr: str
    log: list[str] = field(default_factory=list)

    @property
    def result(self) -> dict[str, Any]:
        """The JSON object of the child's last stdout line."""
        lines = self.stdout.strip().splitlines()
        assert lines, f"child printed nothing (exit {self.returncode}); stderr:\n{self.stderr}"
        value = json.loads(lines[-1])
        assert isinstance(value, dict)
        return value

    def calls(self, syscall: str) -> list[str]:
        """Log lines of calls of *syscall* (the call itself, not "resumed" halves)."""
        return [line for line in self.log if (m := _CALL.match(line)) and m[1] == syscall]

    def count(self, syscall: str) -> int:
        return len(self.calls(syscall))

    def injected(self) -> list[str]:
        return [line for line in self.log if "(INJECTED)" in line]


def run(
    program: str | Path,
    *args: str,
    stdin: bytes | None = None,
    timeout: float = 60,
    **options: Unpack[Options],
) -> Ran:
    """Run a child to its end (see :func:`python_command`; by default after
    :data:`REPORT`, with anonymous staging) and return what it did."""
    options.setdefault("prelude", "" if isinstance(program, Path) else REPORT)
    options.setdefault("staging", "tmpfile")
    command = python_command(program, *args, **options)
    done = subprocess.run(
        command.argv,
        input=stdin,
        capture_output=True,
        env=command.env,
        cwd=command.cwd,
        timeout=timeout,
        check=False,
    )
    return Ran(
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
    )


def run_as_nobody(code: str, *args: str, staging: str = "tmpfile") -> dict[str, Any]:
    """Run :data:`REPORT` + *code* as user nobody (no capabilities); return the
    JSON object it reported with ``report(...)``.

    Needs root and setpriv: skips without them (fails under CI).
    """
    child = run(code, *args, staging=staging, as_nobody=True)
    assert child.returncode == 0, child.stderr
    return child.result


def read_line(stream: IO[bytes], buffer: bytearray, timeout: float, who: str) -> str | None:
    """The next line of *stream* (its unread bytes kept in *buffer*), or None if
    none arrives within *timeout* seconds; fails if the stream ends first."""
    deadline = time.monotonic() + timeout
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([stream], [], [], max(left, 0))
        if not ready:
            return None
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            raise AssertionError(f"{who} closed its output")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


class Child:
    """One child process, read line by line with a timeout so that a stuck child fails."""

    def __init__(self, code: str, *args: str, prelude: str = "") -> None:
        self.proc = start(code, *args, prelude=prelude)
        self.pid = self.proc.pid
        self._buffer = bytearray()

    def readline(self, timeout: float = 30.0) -> str:
        line = self.poll_line(timeout)
        if line is None:
            raise AssertionError(f"child {self.pid} said nothing for {timeout} s")
        return line

    def poll_line(self, timeout: float) -> str | None:
        """The next line, or None if none arrives within *timeout* seconds."""
        assert self.proc.stdout is not None
        try:
            return read_line(self.proc.stdout, self._buffer, timeout, f"child {self.pid}")
        except AssertionError:
            raise AssertionError(f"child {self.pid} exited: {self.proc.wait()}") from None

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


def reap_group(proc: subprocess.Popen[Any], timeout: float) -> None:
    """Wait up to *timeout* seconds for *proc* (started in a process group of its
    own) to exit, then SIGKILL that group; *proc* is reaped either way."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


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


def run_on_terminal(
    argv: Sequence[str], timeout: float, cwd: Path | None = None
) -> tuple[int, bytes, bytes]:
    """Run *argv* (in *cwd*) with its standard error on a pseudo-terminal (so that it
    draws its progress bar); return its exit status, its standard output, and what it
    drew."""
    import pty

    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            stderr=follower,
            stdout=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    return done.returncode, done.stdout, seen
