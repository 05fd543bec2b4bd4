"""The markers every writer program calls around the operation under test.

``start()`` says "ready" on stdout and waits for one byte on stdin: the
harness attaches strace meanwhile (see :mod:`tests.harness.power_cut`), so
the trace, and every count of ``when=``, begins in this wait. Then ``start()``
and ``end()`` each make an access() call on a name that exists nowhere,
recognised in the trace (:data:`tests.harness.traces.START_MARK`).
"""

from __future__ import annotations

import os
import select

from crashsafe._platform import _native, _posix

START_MARK = "/.crashsafe-harness-start"
END_MARK = "/.crashsafe-harness-end"

# The ctypes pieces now, not at the writer's third status read (no warm-up): loading them
# imports ctypes, dozens of syscalls on the root filesystem, where a cut of the
# test mount changes nothing.
os.environ.setdefault("CRASHSAFE_NATIVE", "statx,_signal,libc_sigmask")
_native.probe()


def start() -> None:
    os.write(1, b"ready\n")
    while not select.select([0], [], [], 0.001)[0]:
        pass
    os.read(0, 1)
    os.access(START_MARK, os.F_OK)


def end() -> None:
    os.access(END_MARK, os.F_OK)


def use_staging(staging: str) -> None:
    """Stage with anonymous O_TMPFILE files (``"tmpfile"``) or named ones (``"named"``)."""
    _posix.use_tmpfile = staging == "tmpfile"
