"""``crashsafe torture``: a naive writer and ``atomic_write``, each killed N times mid-write.

Each writer is a small Python child that replaces a file of known content (the
*old* content) with the *new* content, and is killed for real (``SIGKILL``)
while it does so; then the file is read and classified:

* intact: the complete old or the complete new content;
* empty: zero bytes;
* torn: anything else (a prefix of the new content, a mix of old and new,
  zeros, a wrong size);
* missing: no file at all.

Old and new are the same size and made of 64 KiB pieces, each piece one byte
value, odd in the old content and even in the new one, never zero: every kind
of damage tells itself apart.

Where the kills land, deterministic for a seed: with ``strace`` on PATH,
before chosen syscalls of the writer. A traced dry run lists the calls the
writer makes between its start and end markers; each kill aims at one of them
with ``-e inject=NAME:signal=KILL:when=K`` (K counts that name's calls from
strace's attach, after Python's start-up: see
:mod:`crashsafe._torture_child`). A ``SIGKILL`` injected at a call's entry
kills the writer before the call runs. The calls are taken in a seeded random
order, each once before any twice: with N at least the writer's call count,
every call is a kill point. Without strace, or where it cannot attach (no
ptrace permission), the kills come at random times within the write's duration
instead, and the results vary from run to run.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from crashsafe._torture_child import Call, Lab, NoTracer, content

__all__ = [
    "CRASHSAFE",
    "NAIVE",
    "OUTCOMES",
    "WRITERS",
    "Kill",
    "TortureResult",
    "Writer",
    "WriterResult",
    "classify",
    "report",
    "torture",
]

Outcome = Literal["old", "new", "empty", "torn", "missing"]
Method = Literal["strace", "timed"]
OUTCOMES: Final[tuple[Outcome, ...]] = ("old", "new", "empty", "torn", "missing")
ATTEMPTS: Final = 3  # a kill that lands on another call than aimed is tried again


_REPORT_IT: Final = (
    "Please report it as a crashsafe issue, with this output, the output of the same "
    "command with --json (what each kill left), `crashsafe --version`, the operating "
    "system and the filesystem."
)


@dataclass(frozen=True)
class Writer:
    """A way to replace a file, run in a child. *setup* runs before the go byte
    (imports); *write* replaces ``path`` with ``new`` (bytes, also in ``pieces``
    of 64 KiB). *checked*: damage is a bug (crashsafe), not the demonstration."""

    name: str
    label: str
    setup: str
    write: str
    checked: bool


NAIVE: Final = Writer(
    "naive",
    "naive (open 'wb', write, close)",
    "",
    "with open(path, 'wb') as f:\n    for piece in pieces:\n        f.write(piece)\n",
    checked=False,
)
CRASHSAFE: Final = Writer(
    "crashsafe",
    "crashsafe.atomic_write",
    "from crashsafe import atomic_write\n",
    "atomic_write(path, new)\n",
    checked=True,
)
WRITERS: tuple[Writer, ...] = (NAIVE, CRASHSAFE)


def classify(path: Path, size: int) -> tuple[Outcome, str, int]:
    """What a killed writer left at *path* (old content: ``content(size,
    new=False)``): the outcome, what is wrong with torn content, and the byte
    count (-1 if missing)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing", "no file", -1
    if not data:
        return "empty", "0 bytes", 0
    new = content(size, new=True)
    if data == new:
        return "new", "", size
    if data == content(size, new=False):
        return "old", "", size
    if b"\0" in data:
        detail = "zeros"
    elif new.startswith(data):
        detail = "a prefix of the new content"
    elif {b & 1 for b in set(data)} == {0, 1}:  # odd bytes are old, even new
        detail = "old and new mixed"
    else:
        detail = "the wrong size"
    return "torn", detail, len(data)


@dataclass(frozen=True)
class Kill:
    """One kill: where it landed (*at*, ``"write #3"``: before the writer's third
    write call) or when it was sent (*delay*, seconds after the write began), and
    what it left. *killed* is False when the writer finished before the kill came."""

    at: str | None
    delay: float | None
    killed: bool
    outcome: Outcome
    detail: str
    size: int

    def to_json(self) -> dict[str, object]:
        return {
            "at": self.at,
            "delay": self.delay,
            "killed": self.killed,
            "outcome": self.outcome,
            "detail": self.detail,
            "bytes": self.size,
        }


@dataclass(frozen=True)
class WriterResult:
    """The kills of one writer. *syscalls*: its calls in the dry run (strace
    only); *leftovers*: files other than the target its kills left, in all."""

    writer: Writer
    syscalls: int | None
    kills: tuple[Kill, ...]
    leftovers: int

    def count(self, outcome: Outcome) -> int:
        return sum(k.outcome == outcome for k in self.kills)

    @property
    def intact(self) -> int:
        return self.count("old") + self.count("new")

    @property
    def damaged(self) -> int:
        return len(self.kills) - self.intact

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.writer.name,
            "label": self.writer.label,
            "checked": self.writer.checked,
            "syscalls": self.syscalls,
            "intact": self.intact,
            **{outcome: self.count(outcome) for outcome in OUTCOMES},
            "leftovers": self.leftovers,
            "kills": [k.to_json() for k in self.kills],
        }


@dataclass(frozen=True)
class TortureResult:
    """What :func:`torture` saw. *ok*: no checked writer (crashsafe) left anything
    but a complete old or new file. *note* says why the kills were timed."""

    directory: str
    filesystem: str | None
    n: int
    seed: int
    size: int
    method: Method
    note: str | None
    writers: tuple[WriterResult, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(w.damaged == 0 for w in self.writers if w.writer.checked)

    def bug(self) -> str | None:
        """None if :attr:`ok`, else what went wrong and how to report it."""
        damaged = [w for w in self.writers if w.writer.checked and w.damaged]
        if not damaged:
            return None
        what = ", ".join(f"{w.writer.label} left {w.damaged} of {self.n}" for w in damaged)
        return f"{what} files damaged: that is a bug in crashsafe. {_REPORT_IT}"

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "directory": self.directory,
            "filesystem": self.filesystem,
            "n": self.n,
            "seed": self.seed,
            "size": self.size,
            "method": self.method,
            "note": self.note,
            "seconds": round(self.seconds, 3),
            "writers": [w.to_json() for w in self.writers],
        }


def _kill_points(calls: Sequence[Call], n: int, rng: random.Random) -> list[Call]:
    """*n* calls in a seeded random order, each once before any twice."""
    points: list[Call] = []
    while len(points) < n:
        batch = list(calls)
        rng.shuffle(batch)
        points += batch
    return points[:n]


def _dry_run(lab: Lab) -> list[Call]:
    """The calls the writer makes between its markers, not killed."""
    lab.reset()
    _, seen = lab.traced(None)
    calls = [c for c in seen if c.between]
    if not calls:
        raise RuntimeError(f"the {lab.name} writer made no call between its markers")
    return calls


def _rng(seed: int, writer: Writer) -> random.Random:
    """The kill points' generator: one per writer, so that each writer's kills
    depend on the seed alone, not on the other writers."""
    return random.Random(f"{seed}/{writer.name}")  # noqa: S311 - kill points, not secrets


def _strace_kills(
    lab: Lab, writer: Writer, calls: Sequence[Call], n: int, *, seed: int, tick: Callable[[], None]
) -> WriterResult:
    kills, leftovers = [], 0
    for aim in _kill_points(calls, n, _rng(seed, writer)):
        for _ in range(ATTEMPTS):
            leftovers += lab.reset()
            status, seen = lab.traced(f"{aim.name}:signal=KILL:when={aim.nth}")
            # Killed at another call than aimed (a memory call more or fewer than
            # in the dry run, say): again, up to ATTEMPTS times.
            if status != -9 or (seen and str(seen[-1]) == str(aim)):
                break
        outcome, detail, size = classify(lab.target, lab.size)
        at = str(seen[-1]) if status == -9 and seen else str(aim)  # where it landed
        kills.append(Kill(at, None, status == -9, outcome, detail, size))
        tick()
    leftovers += lab.reset()
    return WriterResult(writer, len(calls), tuple(kills), leftovers)


def _timed_kills(
    lab: Lab, writer: Writer, n: int, *, seed: int, tick: Callable[[], None]
) -> WriterResult:
    rng = _rng(seed, writer)
    lab.reset()
    _, took = lab.timed(None)
    kills, leftovers = [], 0
    for _ in range(n):
        leftovers += lab.reset()
        delay = rng.uniform(0, took)
        status, _ = lab.timed(delay)
        outcome, detail, size = classify(lab.target, lab.size)
        kills.append(Kill(None, round(delay, 6), status != 0, outcome, detail, size))
        tick()
    leftovers += lab.reset()
    return WriterResult(writer, None, tuple(kills), leftovers)


def _choose_method(labs: Sequence[Lab]) -> tuple[Method, str | None, dict[str, list[Call]]]:
    """strace, with each writer's dry run, if strace is there and can trace;
    else timed kills, and why."""
    if shutil.which("strace") is None:
        return "timed", "strace is not on PATH", {}
    try:
        return "strace", None, {lab.name: _dry_run(lab) for lab in labs}
    except NoTracer as e:
        return "timed", f"strace cannot trace the writer: {e}", {}


def _filesystem(path: Path) -> str | None:
    """The type of the filesystem holding *path*, from /proc/self/mountinfo (Linux)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    best, kind = "", None
    where = str(path.resolve())
    for line in lines:
        mount_fields, _, fs_fields = line.partition(" - ")
        mount = mount_fields.split()[4].replace("\\040", " ")
        inside = where == mount or where.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best) and fs_fields:
            best, kind = mount, fs_fields.split()[0]
    return kind


def torture(
    directory: str | os.PathLike[str] | None = None,
    n: int = 50,
    seed: int = 0,
    size: int = 1 << 20,
    *,
    progress: Callable[[int, int], None] | None = None,
    writers: Sequence[Writer] | None = None,
) -> TortureResult:
    """Kill each writer (default :data:`WRITERS`) *n* times while it replaces a
    *size*-byte file in a scratch subdirectory of *directory* (default: the
    system's temporary directory), which is removed afterwards.
    *progress(done, total)* is called after each kill.

    Raises ``ValueError`` if *n* or *size* is below 1, ``FileNotFoundError`` or
    ``NotADirectoryError`` naming *directory* if it is not a directory, and
    ``RuntimeError`` if a writer fails or hangs, or on a system that is not
    POSIX. Its children are killed and reaped and the scratch directory
    removed in every case.
    """
    if os.name != "posix":  # pragma: no cover - the suite runs on Linux
        raise RuntimeError("torture needs a POSIX system: it talks to its writers over pipes")
    if n < 1:
        raise ValueError(f"n={n}: the number of kills must be at least 1")
    if size < 1:
        raise ValueError(f"size={size}: the file must have at least 1 byte")
    if directory is not None and not os.path.isdir(directory):
        code = errno.ENOTDIR if os.path.exists(directory) else errno.ENOENT
        error = NotADirectoryError if code == errno.ENOTDIR else FileNotFoundError
        raise error(code, os.strerror(code), directory)
    chosen = tuple(WRITERS if writers is None else writers)
    began = time.monotonic()
    total, done = n * len(chosen), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    scratch = Path(tempfile.mkdtemp(prefix="crashsafe-torture-", dir=directory))
    labs: list[Lab] = []
    try:
        labs += [Lab(w.name, w.setup, w.write, scratch / w.name, size) for w in chosen]
        method, note, dry = _choose_method(labs)
        results = []
        for lab, writer in zip(labs, chosen, strict=True):
            if method == "strace":
                results.append(_strace_kills(lab, writer, dry[lab.name], n, seed=seed, tick=tick))
            else:
                results.append(_timed_kills(lab, writer, n, seed=seed, tick=tick))
        filesystem = _filesystem(scratch)
    finally:
        for lab in labs:
            lab.end()  # the children of an interrupted run
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.monotonic() - began
    return TortureResult(
        str(scratch), filesystem, n, seed, size, method, note, tuple(results), seconds
    )


def _size(n: int) -> str:
    if n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} bytes"


def report(result: TortureResult) -> str:
    """The result as text: what was done, a table per writer, and the verdict."""
    where = f"{result.filesystem}, " if result.filesystem else ""
    lines = [
        f"crashsafe torture: {result.n} kills of each writer while it replaces a "
        f"{_size(result.size)} file,",
        f"in {result.directory} ({where}removed afterwards), {result.seconds:.1f} s.",
    ]
    if result.method == "strace":
        calls = ", ".join(f"{w.writer.name} {w.syscalls}" for w in result.writers)
        lines += [
            "Each kill comes right before one of the syscalls of the write (strace), chosen",
            f"by seed {result.seed} (--seed {result.seed} repeats them); syscalls: {calls}.",
        ]
    else:
        lines += [
            f"Each kill comes at a random time during the write, as {result.note}:",
            "the results vary from run to run (with strace, each kill comes right before",
            "a syscall of the write chosen by the seed, the same on every run).",
        ]
    label_width = max(len("writer"), *(len(w.writer.label) for w in result.writers))
    header = f"{'writer':<{label_width}}  {'intact (old/new)':>16}  {'empty':>5}  {'torn':>5}"
    lines += ["", f"{header}  {'missing':>7}"]
    for w in result.writers:
        intact = f"{w.intact} ({w.count('old')}/{w.count('new')})"
        lines.append(
            f"{w.writer.label:<{label_width}}  {intact:>16}  {w.count('empty'):>5}  "
            f"{w.count('torn'):>5}  {w.count('missing'):>7}"
        )
    lines.append("")
    for w in result.writers:
        lines += _verdict(w, result.n)
    return "\n".join(lines)


def _verdict(w: WriterResult, n: int) -> list[str]:
    name = w.writer.label
    if w.writer.checked and w.damaged:
        return [
            f"{name} left {w.damaged} of {n} files damaged: that is a bug in crashsafe.",
            _REPORT_IT,
        ]
    if w.writer.checked:
        lines = [f"{name}: every kill left the complete old or new file."]
        if w.leftovers:
            files = "file" if w.leftovers == 1 else "files"
            lines.append(
                f"(Its kills also left {w.leftovers} temporary {files}, which "
                "`crashsafe sweep DIR` removes.)"
            )
        return lines
    if w.damaged:
        kinds = " or ".join(o for o in ("empty", "torn", "missing") if w.count(o))
        return [f"The {w.writer.name} writer left {w.damaged} of {n} files damaged ({kinds})."]
    return [f"The {w.writer.name} writer came through intact every time: no kill caught it."]
