"""Run crashsafe in a child Python process, optionally under strace fault injection.

The child runs unmodified library code; real errno values come from the kernel
or from strace's ``-e inject=SYSCALL:error=ERRNO`` (the syscall is not executed
and fails with that errno, exactly as if the kernel had said so). The child
reports what it saw as one JSON line on stdout; the strace log (``-o FILE``)
tells which calls were made, with which file descriptors (``-y``), and which
of them were failed on purpose (``(INJECTED)``).

Notes measured with strace 6.1 on this machine:

* ``-e trace=none`` switches injection off: the injected syscall must be traced.
* ``-P PATH`` limits injection, like tracing, to calls that name PATH (as a
  path or as a dirfd); ``when=K`` then counts only those calls. It cannot
  select a call on a temporary file's descriptor (that path is not PATH).
* ``python3`` may be a pyenv shim (a shell script that forks); the child is
  always ``sys.executable`` so that counts and ``when=K`` see only Python.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.require import require_tools

__all__ = ["PRELUDE", "Child", "fault", "run_python", "run_traced"]

# Every child starts with this: the staging path chosen by the parent, and
# helpers that turn an outcome into JSON.
PRELUDE = textwrap.dedent(
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


@dataclass
class Child:
    """What a child process did: exit status, output and the strace log lines."""

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


def fault(
    syscalls: str | Sequence[str],
    *,
    error: str | None = None,
    signal: str | None = None,
    when: int | str | None = None,
) -> str:
    """An ``-e inject=`` expression, e.g. ``fault("fsync", error="EIO", when=1)``."""
    names = syscalls if isinstance(syscalls, str) else ",".join(syscalls)
    parts = [names]
    if error is not None:
        parts.append(f"error={error}")
    if signal is not None:
        parts.append(f"signal={signal}")
    if when is not None:
        parts.append(f"when={when}")
    return ":".join(parts)


def _env(staging: str, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["CRASHSAFE_STAGING"] = staging
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONWARNINGS", None)
    if extra:
        env.update(extra)
    return env


def run_python(
    code: str,
    *args: str,
    staging: str = "tmpfile",
    wrapper: Sequence[str] = (),
    python: str | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = 60,
) -> Child:
    """Run PRELUDE + *code* in a fresh interpreter, behind *wrapper* (e.g. setpriv).

    *args* become ``sys.argv[1:]``.
    """
    argv = [*wrapper, python or sys.executable, "-c", PRELUDE + textwrap.dedent(code), *args]
    done = subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        env=_env(staging, env),
        timeout=timeout,
        check=False,
    )
    return Child(
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
    )


def run_traced(
    code: str,
    *args: str,
    trace: Sequence[str],
    inject: Sequence[str] = (),
    paths: Sequence[str | os.PathLike[str]] = (),
    staging: str = "tmpfile",
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float = 60,
) -> Child:
    """Run PRELUDE + *code* under ``strace -f``, tracing *trace*, applying *inject*.

    *paths* become ``-P`` options: only calls naming one of them are traced
    and injected (and counted by ``when=``). The log is kept in
    :attr:`Child.log`, one line per call, file descriptors shown with paths.
    """
    require_tools("strace")
    with tempfile.TemporaryDirectory(prefix="crashsafe-strace-") as scratch:
        log = Path(scratch) / "log"
        # No coverage tracer in a traced child: it would add syscalls to what is counted.
        wrapper = ["env", "-u", "COVERAGE_PROCESS_CONFIG", "strace", "-f", "-qq", "-y"]
        wrapper += ["-e", "signal=none", "-o", str(log)]
        wrapper += ["-e", "trace=" + ",".join(trace)]
        for spec in inject:
            wrapper += ["-e", f"inject={spec}"]
        for p in paths:
            wrapper += ["-P", os.fspath(p)]
        child = run_python(
            code,
            *args,
            staging=staging,
            wrapper=[*wrapper, "--"],
            env=env,
            stdin=stdin,
            timeout=timeout,
        )
        child.log = log.read_text(errors="replace").splitlines() if log.exists() else []
    return child
