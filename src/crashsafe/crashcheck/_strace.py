"""Reading the lines strace writes into whole system calls.

What :func:`calls` expects is the output of ``strace -f -y -X raw -q -s 0 -e write=all -o
FILE``: one call per line, prefixed by its pid; a call that another thread interrupted
split into ``NAME(ARGS <unfinished ...>`` and ``<... NAME resumed>ARGS) = RESULT``; the
data of writes as hex dumps on the lines after the call; ``--- SIGNAL ---`` lines;
``+++ exited with N +++`` / ``+++ killed by SIGNAL +++`` lines. Anything else (strace's
own messages) is skipped. A call whose ``resumed`` half never came (the process died
inside it) is dropped: it never returned.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

__all__ = ["AT_FDCWD", "Exit", "Fd", "Started", "Syscall", "calls", "fd_arg", "int_arg", "str_arg"]

AT_FDCWD = -100

_PID = re.compile(r"^(?:\[pid\s+(\d+)\]|(\d+))\s+")
_RESUMED = re.compile(r"^<\.\.\. ([\w]+) resumed>\s?")
_EXITED = re.compile(r"^\+\+\+ exited with (\d+) \+\+\+")
_KILLED = re.compile(r"^\+\+\+ killed by (SIG\w+)")
_NAME = re.compile(r"^(\w+)\(")
_NUMBER = re.compile(r"^(-?(?:0x[0-9a-fA-F]+|\d+))")
_ERRNO = re.compile(r"^\s*(E[A-Z0-9]+)")
_UNFINISHED = " <unfinished ...>"


@dataclass
class Syscall:
    """One completed system call.

    *args* are the argument texts as strace printed them (``3</a/b>``, ``"name"``,
    ``0x80241``); *result* the return value (None when strace printed ``?``), *error*
    the errno name of a failed call; *ret_path* the ``-y`` path of a returned fd;
    *data* the bytes the hex dumps after the call showed (writes only).
    """

    pid: int
    name: str
    args: list[str]
    result: int | None
    error: str = ""
    ret_path: str | None = None
    data: bytes = b""
    dumped: list[bytes] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result >= 0 and not self.error

    def text(self) -> str:
        """The call without data, an fd with the path it had (a pipe, a socket as strace
        names it), e.g. ``write(3</srv/a.tmp>, ..., 4096)`` or ``renameat2(AT_FDCWD,
        "a.tmp", AT_FDCWD, "a", 0)``."""
        shown = []
        for arg in self.args:
            fd = fd_arg(arg)
            a = arg
            if fd is not None and fd.path is not None:
                a = "AT_FDCWD" if fd.fd == AT_FDCWD else f"{fd.fd}<{fd.path}>"
            elif arg == '""...':  # data, which -s 0 leaves out
                a = "..."
            shown.append(a if len(a) <= 120 else a[:117] + "...")
        return f"{self.name}({', '.join(shown)})"


@dataclass
class Exit:
    """A process ended: *status* its exit status, or minus the signal that killed it."""

    pid: int
    status: int


@dataclass
class Started:
    """A call that began and has not returned yet (its ``<unfinished ...>`` half): for a
    clone, the child may act before its parent's call returns."""

    pid: int
    name: str
    args: str


@dataclass
class Fd:
    """An fd argument: its number, the path ``-y`` showed (None if strace showed none),
    and whether that path was marked ``(deleted)``."""

    fd: int
    path: str | None
    deleted: bool


def calls(lines: Iterable[str]) -> Iterator[Syscall | Exit | Started]:
    """The completed calls, the calls left unfinished, and the process exits of a trace,
    in the order strace printed them (a call comes where it completed)."""
    pending: dict[int, str] = {}  # pid -> the first half of its unfinished call
    last: Syscall | None = None  # the hex dumps that follow a call are its data
    for raw in lines:
        line = raw.rstrip("\n")
        if line.startswith((" | ", " * ")):  # " * N bytes in buffer K" precedes dumps
            if last is not None and line.startswith(" | "):
                last.dumped.append(_dump_bytes(line))
            continue
        if last is not None:
            yield _done(last)
            last = None
        event = _event(line, pending)
        if isinstance(event, Syscall):
            last = event
        elif event is not None:
            yield event
    if last is not None:
        yield _done(last)


def _done(call: Syscall) -> Syscall:
    call.data = b"".join(call.dumped)
    call.dumped = []
    return call


def _event(line: str, pending: dict[int, str]) -> Syscall | Exit | Started | None:
    m = _PID.match(line)
    if m is not None:
        pid, body = int(m.group(1) or m.group(2)), line[m.end() :]
    elif _NAME.match(line) or line.startswith(("<...", "+++", "---")):
        pid, body = 0, line  # a trace of one process (no -f): no pid column
    else:
        return None  # strace's own messages, blank lines
    if body.startswith("+++"):
        return _exit(pid, body)
    if body.startswith("---"):
        return None
    r = _RESUMED.match(body)
    if r is not None:
        head = pending.pop(pid, None)
        if head is None:
            return None  # its first half came before the trace did
        body = head + body[r.end() :]
    if body.endswith(_UNFINISHED):
        pending[pid] = body[: -len(_UNFINISHED)]
        n = _NAME.match(body)
        return Started(pid, n.group(1), body[n.end() : -len(_UNFINISHED)]) if n else None
    return _syscall(pid, body)


def _exit(pid: int, body: str) -> Exit | None:
    if e := _EXITED.match(body):
        return Exit(pid, int(e.group(1)))
    if k := _KILLED.match(body):
        sig = getattr(signal.Signals, k.group(1), None)
        return Exit(pid, -int(sig) if sig is not None else -1)
    return None


def _syscall(pid: int, body: str) -> Syscall | None:
    m = _NAME.match(body)
    if m is None:
        return None
    args, end = _split_args(body, m.end())
    rest = body[end:].lstrip()
    if not rest.startswith("="):
        return None
    rest = rest[1:].strip()
    n = _NUMBER.match(rest)
    if n is None:
        return Syscall(pid, m.group(1), args, None)
    result = int_arg(n.group(1))
    after = rest[n.end() :]
    error = ""
    ret_path = None
    if after.startswith("<"):
        ret_path = _annotation(after)[0]
    elif result is not None and result < 0 and (e := _ERRNO.match(after)):
        error = e.group(1)
    return Syscall(pid, m.group(1), args, result, error, ret_path)


def _split_args(body: str, start: int) -> tuple[list[str], int]:
    """The top-level arguments from *start* up to the closing parenthesis, and the
    position after it."""
    args: list[str] = []
    depth = 0
    i = start
    token_start = start
    n = len(body)
    while i < n:
        c = body[i]
        if c == '"':
            i += 1
            while i < n and body[i] != '"':
                i += 2 if body[i] == "\\" else 1
        elif c == "<" and i > 0 and body[i - 1].isdigit():
            i = _annotation_end(body, i)
            continue
        elif c in "([{":
            depth += 1
        elif c in "}]" or (c == ")" and depth > 0):
            depth -= 1
        elif c == ")":
            tail = body[token_start:i].strip()
            if tail or args:
                args.append(tail)
            return args, i + 1
        elif c == "," and depth == 0:
            args.append(body[token_start:i].strip())
            token_start = i + 1
        i += 1
    tail = body[token_start:].strip()
    if tail:
        args.append(tail)
    return args, n


def _annotation_end(text: str, i: int) -> int:
    """The position after the ``<...>`` that starts at *i* (and its ``(deleted)``).
    strace escapes ``<`` and ``>`` inside it (``\\76``): the first ``>`` closes it."""
    j = text.find(">", i + 1)
    j = len(text) if j < 0 else j + 1
    if text.startswith("(deleted)", j):
        j += len("(deleted)")
    return j


def _annotation(text: str) -> tuple[str, bool]:
    """The decoded path of the ``<...>`` that *text* starts with, and its deletion mark."""
    end = _annotation_end(text, 0)
    deleted = text[:end].endswith("(deleted)")
    inner = text[1 : end - (len(">(deleted)") if deleted else 1)]
    return os.fsdecode(_unescape(inner)), deleted


def fd_arg(arg: str) -> Fd | None:
    """The fd an argument like ``3</a/b>`` or ``-100</cwd>`` or ``7`` names, else None."""
    n = _NUMBER.match(arg)
    if n is None or n.group(1).startswith(("0x", "-0x")):
        return None
    rest = arg[n.end() :]
    if rest == "":
        return Fd(int(n.group(1)), None, False)
    if not rest.startswith("<"):
        return None
    path, deleted = _annotation(rest)
    return Fd(int(n.group(1)), path, deleted)


def int_arg(arg: str) -> int | None:
    """An integer as ``-X raw`` prints one: decimal, ``0x`` hex, ``0`` octal, ``A|B``
    (ored), ``[N]`` or ``[N] => [M]`` (a pointer to it: its value on entry); None for
    ``NULL`` and anything else."""
    arg = arg.strip()
    if arg.startswith("["):
        close = arg.find("]")
        return int_arg(arg[1:close]) if close > 0 else None
    if "|" in arg:
        total = 0
        for part in arg.split("|"):
            v = int_arg(part)
            if v is None:
                return None
            total |= v
        return total
    n = _NUMBER.match(arg)
    if n is None or n.end() != len(arg):
        return None
    text = n.group(1)
    neg = text.startswith("-")
    digits = text.lstrip("-")
    if digits.startswith("0x"):
        value = int(digits, 16)
    elif len(digits) > 1 and digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    return -value if neg else value


def str_arg(arg: str) -> str | None:
    """The path a quoted argument like ``"a\\nb"`` holds, decoded as the OS would;
    None if the argument is not a complete string."""
    if not arg.startswith('"'):
        return None
    i = 1
    while i < len(arg) and arg[i] != '"':
        i += 2 if arg[i] == "\\" else 1
    if i >= len(arg) or arg[i + 1 :].startswith("..."):
        return None
    return os.fsdecode(_unescape(arg[1:i]))


_SIMPLE = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, "a": 7, "b": 8, "e": 27}


def _unescape(text: str) -> bytes:
    """The bytes a string strace escaped (``\\n``, ``\\"``, ``\\123``, ``\\x41``) holds."""
    raw = os.fsencode(text)
    if b"\\" not in raw:
        return raw
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        c = raw[i]
        if c != 0x5C or i + 1 >= n:
            out.append(c)
            i += 1
            continue
        e = chr(raw[i + 1])
        if e == "x":
            j = i + 2
            while j < n and j < i + 4 and chr(raw[j]) in "0123456789abcdefABCDEF":
                j += 1
            out.append(int(raw[i + 2 : j], 16))
            i = j
        elif e in "01234567":
            j = i + 1
            while j < n and j < i + 4 and chr(raw[j]) in "01234567":
                j += 1
            out.append(int(raw[i + 1 : j], 8) & 0xFF)
            i = j
        else:
            out.append(_SIMPLE.get(e, raw[i + 1]))
            i += 2
    return bytes(out)


def _dump_bytes(line: str) -> bytes:
    """The bytes of one ``-e write=`` hex dump line: 16 at most, in the 49 columns after
    the offset (the ASCII column after them is not read)."""
    start = line.find("  ", 3) + 2  # after " | OFFSET  " (the offset grows past 5 digits)
    return bytes.fromhex(line[start : start + 49])
