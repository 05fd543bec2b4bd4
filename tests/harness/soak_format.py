"""What the soak test's processes share: the tree, the payloads, the workers' logs.

Imported by the test (:mod:`tests.harness.soak`) and by its child programs
(``tests/writers/soak_worker.py``, ``soak_reader.py``): stdlib only.

A *version* is ``(key, incarnation, seq)``: the worker thread that made it
(``p<slot>t<thread>``), which start of its process (1, 2, ... : a killed
process is started again with the next number) and its operation number in
that start. A payload names its file, its version, its length and its SHA-256,
so a reader tells one complete version from anything else without knowing
what was written; the body is a pattern fixed by file and version, so the
checker can also rebuild any version's payload (the checksum store's digests).

Each worker thread appends one line to its own log right after an operation
returned (``kind incarnation seq detail``, one ``write()`` on an ``O_APPEND``
descriptor: a ``kill -9`` cannot undo a returned ``write()``, so the log is
durable against the kills the soak makes). What a log holds was acknowledged;
a killed start may have had exactly one more operation in flight per thread,
``seq`` one past its last line.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# The tree's directories, relative to its root, and the shared names in each.
FILES = "files"  # atomic_write and atomic_open
COPIES = "copies"  # atomic_copy destinations
SOURCES = "sources"  # each worker's copy source (written with atomic_write)
JSON = "json"  # update_json's counters.json
TX = "tx"  # transaction commits
BATCH = "batch"  # write_many
CHECKED = "checked"  # each worker's file recorded in the checksum store
DIRECTORIES = (FILES, COPIES, SOURCES, JSON, TX, BATCH, CHECKED)

SHARED_FILES = [f"f{i}.bin" for i in range(6)]
SHARED_COPIES = [f"c{i}.bin" for i in range(4)]
BATCH_FILES = [f"b{i}.bin" for i in range(6)]
BATCH_SIZE = 3
TX_FILES = ["a.bin", "b.bin", "c.bin"]
TX_EXTRA = "extra.bin"  # written by commits of even seq, removed by odd ones
COUNTERS = "counters.json"
TOTAL = "total"  # the counters' sum, kept in the same document
STORE = "checksums.jsonl"

KINDS = ("write", "open", "copy", "count", "tx", "batch", "checksum")
# Names a reader may find missing: the transaction's removable file, and every
# name before its first write.
VANISHING = {f"{TX}/{TX_EXTRA}"}

Version = tuple[str, int, int]

_HEAD = re.compile(rb"\ASOAK (\S+) (p\d+t\d+) i(\d+) s(\d+) len=(\d+) sha256=([0-9a-f]{64})\n")
MIN_SIZE, SPREAD = 1 << 10, 63 << 10  # bodies of 1 KiB to 64 KiB


def version_text(v: Version) -> str:
    return f"{v[0]}.i{v[1]}.s{v[2]}"


def payload(name: str, v: Version) -> bytes:
    """The content of file *name* (``dir/file`` in the tree) at version *v*."""
    seed = hashlib.sha256(f"{name} {version_text(v)}".encode()).digest()
    size = MIN_SIZE + int.from_bytes(seed[:4], "big") % SPREAD
    body = (seed * (size // len(seed) + 1))[:size]
    digest = hashlib.sha256(body).hexdigest()
    key, inc, seq = v
    head = f"SOAK {name} {key} i{inc} s{seq} len={size} sha256={digest}\n"
    return head.encode() + body


def check(name: str, data: bytes | None) -> Version | str:  # noqa: PLR0911 - one per verdict
    """The version *data* completely holds as file *name*, else what is wrong with
    it: "missing", "empty", "zeros", "partial" (a prefix of a payload),
    "foreign" (a complete payload of another file) or "torn"."""
    if data is None:
        return "missing"
    if not data:
        return "empty"
    if data.count(0) == len(data):
        return "zeros"
    m = _HEAD.match(data)
    if m is None:
        cut = b"\n" not in data and (data.startswith(b"SOAK ") or b"SOAK ".startswith(data))
        return "partial" if cut else "torn"
    body = memoryview(data)[m.end() :]
    size = int(m[5])
    if len(body) < size:
        return "partial"
    if len(body) > size or hashlib.sha256(body).hexdigest() != m[6].decode():
        return "torn"
    if m[1].decode() != name:
        return "foreign"
    return m[2].decode(), int(m[3]), int(m[4])


def read_or_none(path: str | os.PathLike[str]) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------- logs


@dataclass
class Log:
    """One worker thread's log, read back: what it acknowledged, per start."""

    key: str
    lines: list[tuple[str, int, int, str]] = field(default_factory=list)  # kind, inc, seq, detail
    last_seq: dict[int, int] = field(default_factory=dict)  # incarnation: its last logged seq

    def acked(self, kind: str) -> list[tuple[int, int, str]]:
        return [(i, s, d) for k, i, s, d in self.lines if k == kind]

    def ops(self) -> dict[str, int]:
        counts = dict.fromkeys(KINDS, 0)
        for kind, *_ in self.lines:
            counts[kind] += 1
        return counts


def log_path(logs: Path, key: str) -> Path:
    return logs / f"{key}.log"


def read_log(path: Path, key: str, *, repair: bool = False) -> Log:
    """Parse a worker's log. A last line without its newline (the log's own
    ``write()`` cut by a kill) is not acknowledged; with *repair*, it is cut
    off the file, so that the next start appends after whole lines."""
    log = Log(key)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return log
    whole = data[: data.rfind(b"\n") + 1]
    if repair and len(whole) != len(data):
        os.truncate(path, len(whole))
    for line in whole.decode().splitlines():
        kind, inc, seq, detail = line.split(" ", 3)
        log.lines.append((kind, int(inc), int(seq), detail))
        log.last_seq[int(inc)] = int(seq)
    return log


def append_line(fd: int, kind: str, v: Version, detail: str) -> None:
    """One whole line in one ``write()`` on an ``O_APPEND`` descriptor."""
    line = f"{kind} {v[1]} {v[2]} {detail}\n".encode()
    assert os.write(fd, line) == len(line)


def tree_files(root: Path) -> Iterator[str]:
    """Every checked file of the tree, as ``dir/name`` (sources and the JSON excluded)."""
    for d in (FILES, COPIES, TX, BATCH, CHECKED):
        for name in sorted(os.listdir(root / d)):
            if not name.startswith("."):
                yield f"{d}/{name}"
