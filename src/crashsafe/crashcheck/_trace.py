"""Recording a program under strace, and turning the trace into crashcheck's operations.

:func:`record` runs the program under ``strace -f`` (its threads and children too) and
:func:`parse` reads the trace (see :mod:`._strace` for the lines, :mod:`._replay` for how
calls become :mod:`._ops` operations).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, NoReturn

from ._errors import CrashcheckError
from ._ops import Operation, Output, Snapshot
from ._replay import Model
from ._strace import calls

__all__ = ["TRACED", "Recording", "parse", "record", "record_call"]

# The calls that change files, names or durability, and those the model needs to follow
# fds, offsets, working directories and processes. Reads move offsets (pread/preadv do
# not, so they are left out); stat-like calls change nothing and are left out too.
_CALLS = (
    "open,openat,openat2,creat,close,close_range,dup,dup2,dup3,fcntl,"
    "read,readv,lseek,write,writev,pwrite64,pwritev,pwritev2,"
    "truncate,ftruncate,fallocate,fsync,fdatasync,sync,syncfs,sync_file_range,"
    "rename,renameat,renameat2,link,linkat,symlink,symlinkat,unlink,unlinkat,"
    "mkdir,mkdirat,rmdir,mknod,mknodat,chmod,fchmod,fchmodat,"
    "setxattr,lsetxattr,fsetxattr,removexattr,lremovexattr,fremovexattr,"
    "copy_file_range,sendfile,splice,ioctl,mmap,mprotect,munmap,"
    "clone,clone3,fork,vfork,execve,execveat,chdir,fchdir,umask"
)
# "?name": no error where the architecture lacks the call (arm64 has no open, rename, ...)
TRACED = "?" + _CALLS.replace(",", ",?")


@dataclass
class Recording:
    """What a traced run did.

    *operations* in the order the kernel completed their calls; *calls* how many system
    calls the trace had (crash points are 1..calls, and each operation's ``call.index``
    is among them); *status* the program's exit status (minus the signal that killed
    it); *stdout* all it printed; *refused* why the trace cannot be trusted (a writable
    shared memory map of a file in the directories), empty if it can.
    """

    operations: list[Operation]
    calls: int
    status: int
    stdout: bytes
    refused: list[str] = field(default_factory=list)


def parse(
    lines: Iterable[str],
    snapshot: Snapshot,
    *,
    cwd: str | None = None,
    umask: int = 0o022,
    stdout_id: str | None = None,
    ignore_mmap: Sequence[str] = (),
) -> Recording:
    """The operations of a trace of a program that started in *cwd* (default: the current
    directory) with *umask*, over the directories of *snapshot*.

    The trace is what ``strace -f -y -X raw -q -s 0 -e write=all -o FILE`` writes (see
    :data:`TRACED` for the calls :func:`record` asks for). *stdout_id* is what ``-y``
    shows for the program's standard output (``pipe:[123]``): a write to fd 1 becomes an
    :class:`~._ops.Output` while fd 1 is that (when None: while fd 1 is no file under the
    roots). A writable shared memory map of a file under the roots makes an entry in
    ``refused`` unless one of the :func:`fnmatch.fnmatch` patterns *ignore_mmap* matches
    the file's basename or its path relative to its root (``*-shm``, ``db/*.map``).
    Content the trace does not show (a copy from a file outside the roots) is read from
    that file as it is now.
    """
    model = Model(snapshot, os.path.realpath(cwd or os.getcwd()), umask, stdout_id)
    model.ignore_mmap = list(ignore_mmap)
    for event in calls(lines):
        model.event(event)
    model.finish()
    stdout = b"".join(op.data for op in model.ops if isinstance(op, Output))
    return Recording(model.ops, model.count, model.status, stdout, model.refused)


def record(
    argv: Sequence[str],
    snapshot: Snapshot,
    *,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    stdout: int | IO[bytes] | None = None,
    ignore_mmap: Sequence[str] = (),
    trace_file: str | None = None,
) -> Recording:
    """Run *argv* under strace in *cwd* with *env* and return what it did to the
    directories of *snapshot* (taken just before).

    The program's standard output goes through a pipe to *stdout* (an fd or a binary
    file; None: this process's fd 1) and is kept in ``Recording.stdout``; its standard
    error goes through a pipe too (where strace's own messages are looked for) to this
    process's fd 2; its standard input is this process's. The trace is written to
    *trace_file* (kept), or to a temporary file (removed). *ignore_mmap*: as for
    :func:`parse` (patterns matched against a mapped file's basename and its path
    relative to its root).

    Raises :class:`CrashcheckError` when strace is not installed, when the kernel does
    not let it trace (ptrace not permitted), or when it could not start *argv*.
    """
    if not argv:
        raise ValueError("no program to record")
    strace = _strace(argv[0])
    umask = _umask()
    with tempfile.TemporaryDirectory(prefix="crashcheck-trace-") as tmp:
        path = os.path.abspath(trace_file) if trace_file else os.path.join(tmp, "trace")
        command = [*_strace_command(strace, path), "--", *argv]
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        stdout_id = f"pipe:[{os.fstat(out_w).st_ino}]"
        try:
            child = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=out_w, stderr=err_w, close_fds=True
            )
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        printed: list[bytes] = []
        said: list[bytes] = []
        to = stdout if stdout is not None else 1
        pumps = [
            threading.Thread(target=_pump, args=(out_r, to, printed), daemon=True),
            threading.Thread(target=_pump, args=(err_r, 2, said), daemon=True),
        ]
        for p in pumps:
            p.start()
        returncode = child.wait()
        for p in pumps:
            p.join()
        os.close(out_r)
        os.close(err_r)
        _check_started(argv, b"".join(said), path, returncode)
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            recording = parse(
                f,
                snapshot,
                cwd=cwd,
                umask=umask,
                stdout_id=stdout_id,
                ignore_mmap=ignore_mmap,
            )
    recording.stdout = b"".join(printed)
    return recording


def record_call(
    fn: Callable[[], object],
    snapshot: Snapshot,
    *,
    stdout: int | IO[bytes] | None = None,
    ignore_mmap: Sequence[str] = (),
    trace_file: str | None = None,
) -> Recording:
    """Call *fn* in a forked child of this process, traced, and return what it did to
    the directories of *snapshot* (taken just before).

    The child starts as a copy of this process (its working directory, environment and
    open files), is traced by ``strace -p`` from before its first step, calls *fn* and
    exits: status 0 when *fn* returned, 1 when it raised (the traceback goes to standard
    error). What it prints (``print()`` and anything written to fd 1) goes through a pipe
    to *stdout* and into ``Recording.stdout``. Raises :class:`CrashcheckError` as
    :func:`record` does.
    """
    name = getattr(fn, "__qualname__", repr(fn))
    if sys.platform == "win32":
        raise CrashcheckError(f"cannot record {name}: crashcheck needs Linux and strace")
    strace = _strace(name)
    umask = _umask()
    out_r, out_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        _child(fn, out_r, out_w, go_r, go_w)
    os.close(out_w)
    os.close(go_r)
    stdout_id = f"pipe:[{os.fstat(out_r).st_ino}]"
    printed: list[bytes] = []
    pump = threading.Thread(
        target=_pump, args=(out_r, stdout if stdout is not None else 1, printed), daemon=True
    )
    pump.start()
    try:
        with tempfile.TemporaryDirectory(prefix="crashcheck-trace-") as tmp:
            path = os.path.abspath(trace_file) if trace_file else os.path.join(tmp, "trace")
            said = os.path.join(tmp, "strace-said")
            with open(said, "wb") as err:
                tracer = subprocess.Popen(
                    [*_strace_command(strace, path), "-p", str(pid)], stderr=err, close_fds=True
                )
            try:
                _wait_traced(pid, tracer, name, said)
            finally:
                os.write(go_w, b"g")  # start fn, or (untraced) let the child exit
                os.close(go_w)
                _, status = os.waitpid(pid, 0)
                tracer.wait()
                pump.join()
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                recording = parse(
                    f, snapshot, cwd=os.getcwd(), umask=umask, stdout_id=stdout_id,
                    ignore_mmap=ignore_mmap,
                )  # fmt: skip
    finally:
        os.close(out_r)
    recording.status = os.waitstatus_to_exitcode(status)
    recording.stdout = b"".join(printed)
    return recording


def _child(fn: Callable[[], object], out_r: int, out_w: int, go_r: int, go_w: int) -> NoReturn:
    """The forked child of :func:`record_call`: wait to be traced, call *fn*, exit."""
    code = 1
    try:
        os.close(out_r)
        os.close(go_w)
        os.dup2(out_w, 1)
        os.close(out_w)
        # A fresh stdout on fd 1, whatever this process had (pytest's capture): what fn
        # prints must be a write to fd 1 for the trace to see it.
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
        if os.read(go_r, 1):
            fn()
            code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
        os._exit(code)


def _wait_traced(pid: int, tracer: subprocess.Popen[bytes], name: str, log: str) -> None:
    """Wait until strace has attached to *pid*; raise if it cannot (*log* holds what
    strace said)."""
    while not _tracer_of(pid):
        if tracer.poll() is not None:
            with open(log, encoding="utf-8", errors="replace") as f:
                said = f.read().strip()
            if "Operation not permitted" in said:
                raise CrashcheckError(
                    f"cannot record {name}: ptrace is not permitted here ({said}); run as "
                    "root, outside a tracer, or allow it (sysctl kernel.yama.ptrace_scope=0, "
                    "or the SYS_PTRACE capability in a container)"
                )
            raise CrashcheckError(f"cannot record {name}: strace could not attach ({said})")
        time.sleep(0.001)  # a condition polled, not a timing guessed


def _tracer_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return 0


def _strace(name: str) -> str:
    strace = shutil.which("strace")
    if strace is None:
        raise CrashcheckError(
            f"cannot record {name}: strace is not installed (install strace: "
            "apt-get install strace)"
        )
    return strace


def _strace_command(strace: str, path: str) -> list[str]:
    return [strace, "--seccomp-bpf", "-f", "-y", "-X", "raw", "-q", "-s", "0",
            "-e", "write=all", "-e", f"trace={TRACED}", "-o", path]  # fmt: skip


def _umask() -> int:
    # Read by setting and restoring: crashcheck records one program at a time, and the
    # mode of each file the program creates depends on it.
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _pump(fd: int, to: int | IO[bytes], kept: list[bytes]) -> None:
    """Copy what comes out of *fd* to *to*, keeping it."""
    while chunk := os.read(fd, 65536):
        kept.append(chunk)
        try:
            if isinstance(to, int):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(to, view) :]
            else:
                to.write(chunk)
                to.flush()
        except (OSError, ValueError):
            pass  # the reader went away (or was closed): keep draining, never block


def _check_started(argv: Sequence[str], said: bytes, path: str, returncode: int) -> None:
    """Raise if strace could not trace *argv* at all."""
    messages = [
        line
        for line in said.decode(errors="replace").splitlines()
        if line.split(": ", 1)[0].rsplit("/", 1)[-1] == "strace"  # "strace: ", "/usr/bin/strace: "
    ]
    empty = not os.path.exists(path) or os.path.getsize(path) == 0
    if not messages or not (empty or (returncode != 0 and _no_exec(path))):
        return
    text = "; ".join(messages)
    if "Operation not permitted" in text:
        raise CrashcheckError(
            f"cannot record {argv[0]}: ptrace is not permitted here ({text}); run as "
            "root, outside a tracer, or allow it (sysctl kernel.yama.ptrace_scope=0, "
            "or the SYS_PTRACE capability in a container)"
        )
    raise CrashcheckError(f"cannot record {argv[0]}: strace could not run it ({text})")


def _no_exec(path: str) -> bool:
    """Whether the trace shows no successful execve (the program never started)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return not any("execve(" in line and ") = 0" in line for line in f)
