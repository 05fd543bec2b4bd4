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

import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests import children
from tests.children import REPORT as PRELUDE
from tests.children import Ran as Child
from tests.harness.require import require_tools

__all__ = ["PRELUDE", "Child", "fault", "run_python", "run_traced"]


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
    """Run PRELUDE + *code* in a fresh interpreter, behind *wrapper* (e.g. setpriv):
    :func:`tests.children.run`. *args* become ``sys.argv[1:]``; *python*, if
    given, must be ``sys.executable`` or the interpreter of
    :func:`tests.children.nobody_python` (with *wrapper* ``NOBODY``)."""
    as_nobody = list(wrapper[-len(children.NOBODY) :]) == children.NOBODY
    if as_nobody:
        wrapper = wrapper[: -len(children.NOBODY)]
    assert python in (None, sys.executable) or as_nobody, python
    options: children.Options = {"staging": staging, "env": env, "wrapper": wrapper}
    options["as_nobody"] = as_nobody
    return children.run(code, *args, stdin=stdin, timeout=timeout, **options)


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
        options: children.Options = {"staging": staging, "env": env, "wrapper": [*wrapper, "--"]}
        child = children.run(code, *args, stdin=stdin, timeout=timeout, **options)
        child.log = log.read_text(errors="replace").splitlines() if log.exists() else []
    return child
