"""Reading an strace log of a writer: its calls per thread, its markers, its commit.

The log is ``strace -f -qq -y -o FILE -p PID`` of a writer from
``tests/writers/`` (see :mod:`tests.harness.power_cut`): one line per call,
``PID NAME(ARGS) = RESULT``, descriptors shown with their paths, a call
interrupted by another thread's line split into ``<unfinished ...>`` and
``<... NAME resumed>``. The writer calls ``start()`` right before the operation
under test and ``end()`` right after it returned: access() calls on the names
below, which exist nowhere.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

START_MARK = "/.crashsafe-harness-start"
END_MARK = "/.crashsafe-harness-end"
STOPPED = "--- stopped by SIGSTOP ---"

# strace pads the pid column ("873   openat(..."): \s+, not one space.
_CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)$")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$")
_INJECTED = re.compile(r"^(\d+)\s+--- SIGSTOP \{")
_RESULT = re.compile(r"^(.*)\)\s+=\s+(.*)$", re.DOTALL)
_UNFINISHED = " <unfinished ...>"
_STRINGS = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Syscall:
    """One call of the writer, as strace showed it."""

    index: int  # position in the trace: 0 is the start marker (negative before it)
    tid: int
    name: str
    nth: int  # calls of *name* by this thread since strace attached: when=nth
    args: str
    result: str

    def strings(self) -> list[str]:
        return _STRINGS.findall(self.args)

    def __str__(self) -> str:
        args = self.args if len(self.args) < 90 else self.args[:87] + "..."
        return f"#{self.index} {self.name}({args}) = {self.result}"


@dataclass
class Trace:
    """A (possibly multi-threaded) trace: calls in the order they entered."""

    calls: list[Syscall]
    start: int | None  # position in calls of the start marker
    end: int | None  # of the end marker
    stop: int | None  # calls entered before the injected SIGSTOP (None: never stopped)
    stopped_tid: int | None  # the thread the SIGSTOP was injected in

    def between_markers(self, tid: int | None = None) -> list[Syscall]:
        """The calls from the start marker to the end marker, both included (of
        thread *tid* only, if given), indexed from 0."""
        assert self.start is not None and self.end is not None, "no start() and end() seen"
        chosen = [c for c in self.calls[self.start : self.end + 1] if tid in (None, c.tid)]
        return [_reindexed(c, i) for i, c in enumerate(chosen)]

    def last_before_stop(self) -> Syscall | None:
        """The call of the stopped thread right before the injected SIGSTOP."""
        if self.stop is None:
            return None
        before = (c for c in reversed(self.calls[: self.stop]) if c.tid == self.stopped_tid)
        return next(before, None)


def _reindexed(call: Syscall, index: int) -> Syscall:
    return Syscall(index, call.tid, call.name, call.nth, call.args, call.result)


def _split(text: str) -> tuple[str, str]:
    m = _RESULT.match(text)
    return (m[1], m[2]) if m else (text, "?")


def parse(text: str) -> Trace:
    """The calls of an ``strace -f -o`` log, each thread's calls of a name counted."""
    raw: list[list[Any]] = []  # [tid, name, nth, text]
    counts: Counter[tuple[int, str]] = Counter()
    open_calls: dict[tuple[int, str], list[Any]] = {}
    start = end = stop = stopped_tid = None
    for line in text.splitlines():
        if m := _CALL.match(line):
            tid, name, rest = int(m[1]), m[2], m[3]
            counts[tid, name] += 1
            call: list[Any] = [tid, name, counts[tid, name], rest.removesuffix(_UNFINISHED)]
            if rest.endswith(_UNFINISHED):
                open_calls[tid, name] = call
            if START_MARK in rest and start is None:
                start = len(raw)
            if END_MARK in rest and end is None:
                end = len(raw)
            raw.append(call)
        elif m := _RESUMED.match(line):
            pending = open_calls.pop((int(m[1]), m[2]), None)
            if pending is not None:
                pending[3] += m[3]
        elif (m := _INJECTED.match(line)) and stop is None:
            stop, stopped_tid = len(raw), int(m[1])
    base = start or 0
    calls = [Syscall(i - base, t, n, k, *_split(rest)) for i, (t, n, k, rest) in enumerate(raw)]
    return Trace(calls, start, end, stop, stopped_tid)


def commit_index(trace: Sequence[Syscall], target_name: str) -> int | None:
    """The first rename or link that makes *target_name* the new file."""
    for s in trace:
        if s.name in ("rename", "renameat", "renameat2", "link", "linkat") and s.result == "0":
            strings = s.strings()
            if strings and os.path.basename(strings[-1]) == target_name:
                return s.index
    return None


def dir_sync_index(trace: Sequence[Syscall], directory: str, after: int) -> int | None:
    """The first fsync of *directory* (by its descriptor) at or after index *after*."""
    pattern = re.compile(rf"^\d+<{re.escape(directory)}>$")
    for s in trace[after:]:
        if s.name in ("fsync", "fdatasync") and pattern.match(s.args) and s.result == "0":
            return s.index
    return None


def copy_method(trace: Sequence[Syscall]) -> str:
    """How a traced copy moved its data: "reflink" (a FICLONE ioctl that returned
    0), else the first data-moving syscall that copied bytes, else "none"."""
    for s in trace:
        if s.name == "ioctl" and "FICLONE" in s.args and s.result == "0":
            return "reflink"
    for s in trace:
        moved = s.result != "0" and not s.result.startswith("-1")
        if s.name in ("copy_file_range", "sendfile", "splice") and moved:
            return s.name
    for s in trace:
        if s.name in ("write", "pwrite64") and not s.result.startswith("-1"):
            return "read/write"
    return "none"
