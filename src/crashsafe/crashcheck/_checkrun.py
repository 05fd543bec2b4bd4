"""Running the user's check on one materialised crash state."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ._ops import Snapshot

__all__ = [
    "OUTPUT_LIMIT",
    "STDOUT_ENV_LIMIT",
    "Check",
    "CheckContext",
    "Running",
    "memory_dir",
    "remove_tree",
    "run_check",
]

OUTPUT_LIMIT = 4096
"""How much of a check's output a report keeps (the start, then a note of what was cut)."""

STDOUT_ENV_LIMIT = 64 * 1024
"""``CRASHCHECK_STDOUT`` holds at most the last this many bytes (Linux refuses one
environment string over 128 KiB); ``CRASHCHECK_STDOUT_FILE`` always holds all of it."""


@dataclass(frozen=True)
class CheckContext:
    """What a Python check is given: *dirs*, the state's copies of the directories in
    order (``dirs[0]`` is the first); *stdout*, the bytes the program had written to
    standard output before the crash point."""

    dirs: list[Path]
    stdout: bytes

    @property
    def dir(self) -> Path:
        """The copy of the first directory."""
        return self.dirs[0]


Check = str | Callable[[CheckContext], object]
"""A shell command (run by ``/bin/sh -c``; a non-zero exit status means broken) or a
callable taking a :class:`CheckContext` (returning False, or raising, means broken)."""


def _clip(text: str) -> str:
    if len(text) <= OUTPUT_LIMIT:
        return text
    return text[:OUTPUT_LIMIT] + f"\n[... {len(text) - OUTPUT_LIMIT} more characters]"


class Running:
    """The process groups of the command checks running now, to kill them all when an
    exploration stops early (an error, an interrupt): a check in its own session does
    not get the terminal's Ctrl-C."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: set[int] = set()
        self._stopped = False

    def add(self, pid: int) -> bool:
        """Note the group *pid*; False (and nothing noted) once :meth:`stop` was called."""
        with self._lock:
            if not self._stopped:
                self._groups.add(pid)
            return not self._stopped

    def discard(self, pid: int) -> None:
        with self._lock:
            self._groups.discard(pid)

    def stop(self) -> None:
        """Kill every group noted, and every one started from now on."""
        with self._lock:
            self._stopped = True
            for pid in self._groups:
                _kill_group(pid)


def _kill_group(pid: int) -> None:
    if sys.platform == "win32":  # crashcheck traces Linux programs; typed anyway
        os.kill(pid, signal.SIGTERM)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def run_check(
    check: Check,
    dirs: list[str],
    stdout: bytes,
    stdout_file: str,
    *,
    timeout: float | None = None,
    running: Running | None = None,
) -> tuple[bool, str]:
    """Run *check* on the state in *dirs*; return (broken, its output clipped).

    A command runs with its working directory ``dirs[0]``, ``CRASHCHECK_DIRS`` the dirs
    joined by ``:``, ``CRASHCHECK_STDOUT`` the standard output so far as text (bytes that
    are not UTF-8 pass through Python's ``surrogateescape``, so the command sees the very
    bytes; NUL bytes, which no environment string can hold, are dropped; only the last
    :data:`STDOUT_ENV_LIMIT` bytes), ``CRASHCHECK_STDOUT_FILE`` a file holding all of it.
    Its stdout and stderr together are its output. Past *timeout* seconds its process
    group is killed and the state counts as broken. It is noted in *running* while it
    runs (killed at once if *running* was stopped).

    A callable returning False, or raising any exception (``AssertionError`` is the usual
    one), marks the state broken; the exception's text is the output. It runs in a worker
    thread, its working directory left alone.
    """
    if not isinstance(check, str):
        try:
            result = check(CheckContext([Path(d) for d in dirs], stdout))
        except AssertionError as e:
            return True, _clip(str(e) or "AssertionError")
        except Exception as e:  # a check that cannot read a state finds it broken
            return True, _clip(f"{type(e).__name__}: {e}")
        return result is False, "" if result is not False else "the check returned False"
    text = stdout[-STDOUT_ENV_LIMIT:].replace(b"\0", b"").decode("utf-8", "surrogateescape")
    env = dict(os.environ)
    env.update(
        CRASHCHECK_DIRS=":".join(dirs), CRASHCHECK_STDOUT=text, CRASHCHECK_STDOUT_FILE=stdout_file
    )
    with subprocess.Popen(
        ["/bin/sh", "-c", check],
        cwd=dirs[0],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, to kill whole on a timeout
    ) as proc:
        if running is not None and not running.add(proc.pid):
            _kill_group(proc.pid)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            out, _ = proc.communicate()
            return True, _clip(out.decode("utf-8", "replace") + f"[timed out after {timeout} s]")
        finally:
            if running is not None:
                running.discard(proc.pid)
    return proc.returncode != 0, _clip(out.decode("utf-8", "replace"))


def remove_tree(path: str) -> None:
    """Remove *path* and everything under it, even directories the state or a check
    left without write or search permission (which stop a non-root user)."""
    try:
        shutil.rmtree(path)
    except PermissionError:
        os.chmod(path, stat.S_IRWXU)
        for dirpath, dirnames, _ in os.walk(path):
            for name in dirnames:
                sub = os.path.join(dirpath, name)
                if not os.path.islink(sub):
                    os.chmod(sub, stat.S_IRWXU)
        shutil.rmtree(path)


def memory_dir(snapshot: Snapshot, jobs: int) -> str | None:
    """``/dev/shm`` if it is a memory filesystem with room for the states, else None."""
    shm = "/dev/shm"
    if any("/dev/shm/".startswith(root + "/") for root in snapshot.roots):
        return None  # a directory being checked holds it: states would nest in it
    try:
        with open("/proc/self/mounts", encoding="utf-8") as mounts:
            kinds = {line.split()[1]: line.split()[2] for line in mounts if line.count(" ") >= 3}
        if kinds.get(shm) != "tmpfs" or not os.access(shm, os.W_OK | os.X_OK):
            return None
        size = sum(
            os.lstat(snapshot.source(path)).st_size
            for path, entry in snapshot.entries.items()
            if entry.kind == "file"
        )
        free = shutil.disk_usage(shm).free
    except OSError:
        return None
    return shm if free > 2 * jobs * size + (64 << 20) else None
