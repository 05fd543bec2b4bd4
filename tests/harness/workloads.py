"""The workloads crashcheck is held to: the table of issue 16, in code.

Each :class:`Workload` prepares a directory (its state before the run), names the program
to trace and the shell check that tells a good state from a broken one. The check runs in
a copy of the directory and is told what the program had printed (``CRASHCHECK_STDOUT``):
a program that printed ``committed`` / ``saved`` promised its new state.

The same workloads feed ``tests/test_crashcheck_workloads.py`` (what must be found) and
``benchmarks/crashcheck.py`` (how long it takes, how many states).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crashsafe.crashcheck import Report, explore

GIT_ENV = {
    "GIT_AUTHOR_NAME": "crashcheck",
    "GIT_AUTHOR_EMAIL": "crashcheck@example.org",
    "GIT_COMMITTER_NAME": "crashcheck",
    "GIT_COMMITTER_EMAIL": "crashcheck@example.org",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


@dataclass(frozen=True)
class Workload:
    """A program run on a directory, and the check of a crash state of that directory."""

    name: str
    setup: Callable[[Path], None]
    argv: list[str]
    check: str
    ignore_mmap: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    def prepare(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.setup(directory)

    def environ(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def explore(self, directory: Path, **options: Any) -> Report:
        """Run and explore this workload in *directory*, prepared before (the program's
        output goes to standard error); *options* are :func:`explore`'s."""
        return explore(
            self.argv,
            self.check,
            dirs=[directory],
            cwd=directory,
            env=self.environ(),
            ignore_mmap=self.ignore_mmap,
            stdout=2,
            **options,
        )


def _sh(directory: Path, script: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(
        ["sh", "-ec", script], cwd=directory, check=True, env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


# ------------------------------------------------------------------------------ SQLite

SQLITE_CHECK = """\
query="PRAGMA integrity_check; SELECT count(*), (SELECT v FROM t WHERE k=1) FROM t;"
out=$(sqlite3 db "$query" 2>&1) || { echo "$out"; exit 1; }
case "$out" in
'ok
2|one')
    case "$CRASHCHECK_STDOUT" in
    *committed*) echo "committed, but the old rows: $out"; exit 1;;
    esac;;
'ok
3|onex') ;;
*) echo "neither the old rows nor the new: $out"; exit 1;;
esac
"""


def _sqlite_setup(journal: str) -> Callable[[Path], None]:
    def setup(directory: Path) -> None:
        _sh(
            directory,
            f"sqlite3 db 'PRAGMA journal_mode={journal}; "  # noqa: S608 (a fixed word of ours)
            "CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT); "
            'INSERT INTO t(v) VALUES ("one"), ("two");\'',
        )

    return setup


def _sqlite(name: str, journal: str, synchronous: str) -> Workload:
    # One transaction touching three pages (an insert of 3 KB, an update of row 1), then
    # the report of success the check holds the database to.
    sql = (
        f"PRAGMA synchronous={synchronous}; BEGIN; "  # noqa: S608
        "INSERT INTO t(v) VALUES (hex(zeroblob(1500))); "
        "UPDATE t SET v = v || 'x' WHERE k = 1; COMMIT;"
    )
    return Workload(
        name,
        _sqlite_setup(journal),
        ["sh", "-c", f'sqlite3 db "{sql}" && echo committed'],
        SQLITE_CHECK,
        # The WAL index is a shared memory map that SQLite rebuilds after a crash.
        ignore_mmap=("*-shm",) if journal == "WAL" else (),
    )


SQLITE_FULL = _sqlite("sqlite-rollback-full", "DELETE", "FULL")
SQLITE_EXTRA = _sqlite("sqlite-rollback-extra", "DELETE", "EXTRA")
SQLITE_WAL = _sqlite("sqlite-wal-full", "WAL", "FULL")
SQLITE_OFF = _sqlite("sqlite-rollback-off", "DELETE", "OFF")


# ------------------------------------------------------------------------------ Git

GIT_CHECK = """\
set -e
exec 2>&1
git fsck --no-progress --no-dangling
git log --oneline >/dev/null
git status --porcelain >/dev/null
case "$CRASHCHECK_STDOUT" in
*committed*)
    test "$(git log -1 --format=%s)" = two || { echo "committed, but HEAD is old"; exit 1; }
    test "$(git show HEAD:a | wc -c)" -eq 20480 || { echo "committed, a not whole"; exit 1; }
    test "$(git show HEAD:b | wc -c)" -eq 20480 || { echo "committed, b not whole"; exit 1; }
    ;;
esac
echo further > c
git add c
git commit -q -m further
git fsck --no-progress --no-dangling
"""


def _git_setup(fsync: str | None) -> Callable[[Path], None]:
    def setup(directory: Path) -> None:
        config = f"git config core.fsync {fsync}\n" if fsync else ""
        _sh(
            directory,
            "git init -q -b main .\n"
            + config
            + "echo one > first\ngit add first\ngit commit -q -m one\n",
            GIT_ENV,
        )
        (directory / "a").write_bytes(bytes(range(256)) * 80)
        (directory / "b").write_bytes(bytes(reversed(range(256))) * 80)

    return setup


def _git(name: str, fsync: str | None) -> Workload:
    return Workload(
        name,
        _git_setup(fsync),
        ["sh", "-c", "git add a b && git commit -q -m two && echo committed"],
        GIT_CHECK,
        env=GIT_ENV,
    )


GIT_DEFAULT = _git("git-commit", None)
GIT_FSYNC_ALL = _git("git-commit-fsync-all", "all")


# ------------------------------------------------------------------------------ writers

OLD = b"old " * 3000  # 12 KB: three blocks, so a write of it can tear
NEW = b"NEW!" * 3000

WRITER_CHECK = f"""\
{sys.executable} - <<'EOF'
import os, sys
said = "saved" in os.environ["CRASHCHECK_STDOUT"]
try:
    data = open("data", "rb").read()
except FileNotFoundError:
    sys.exit("data is missing")
if data == {NEW!r}:
    sys.exit(0)
if data == {OLD!r}:
    sys.exit("saved, but data is the old content" if said else 0)
sys.exit(f"data is neither old nor new: {{len(data)}} bytes, starting {{data[:8]!r}}")
EOF
"""


def _writer_setup(directory: Path) -> None:
    (directory / "data").write_bytes(OLD)


def _stale_temp_setup(directory: Path) -> None:
    # A temporary file an earlier, killed run left behind, longer than the new content.
    (directory / "data").write_bytes(OLD)
    (directory / "data.tmp").write_bytes(b"STALE" * 4000)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


_IN_PLACE = """\
import os
fd = os.open("data", os.O_WRONLY | os.O_TRUNC)
os.write(fd, NEW)
os.fsync(fd)
os.close(fd)
print("saved", flush=True)
"""

_RENAME_NO_FSYNC = """\
import os
fd = os.open("data.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
os.write(fd, NEW)
os.close(fd)
os.rename("data.tmp", "data")
print("saved", flush=True)
"""

_NO_DIR_FSYNC = """\
import os
fd = os.open("data.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
os.write(fd, NEW)
os.fsync(fd)
os.close(fd)
os.rename("data.tmp", "data")
print("saved", flush=True)
"""

_FIXED_TEMP = """\
import os
fd = os.open("data.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.write(fd, NEW)
os.close(fd)
os.rename("data.tmp", "data")
dfd = os.open(".", os.O_RDONLY)
os.fsync(dfd)
print("saved", flush=True)
"""

_CORRECT = """\
import os
fd = os.open("data.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
os.write(fd, NEW)
os.fsync(fd)
os.close(fd)
os.rename("data.tmp", "data")
dfd = os.open(".", os.O_RDONLY)
os.fsync(dfd)
print("saved", flush=True)
"""


def _writer(name: str, code: str, setup: Callable[[Path], None] = _writer_setup) -> Workload:
    return Workload(name, setup, _python(f"NEW = {NEW!r}\n{code}"), WRITER_CHECK)


NAIVE_IN_PLACE = _writer("naive-in-place", _IN_PLACE)
NAIVE_RENAME_NO_FSYNC = _writer("naive-rename-without-fsync", _RENAME_NO_FSYNC)
NAIVE_NO_DIR_FSYNC = _writer("naive-no-directory-fsync", _NO_DIR_FSYNC)
NAIVE_FIXED_TEMP = _writer("naive-fixed-temporary-name", _FIXED_TEMP, _stale_temp_setup)
HAND_WRITTEN_CORRECT = _writer("hand-written-protocol", _CORRECT)

NAIVE = [NAIVE_IN_PLACE, NAIVE_RENAME_NO_FSYNC, NAIVE_NO_DIR_FSYNC, NAIVE_FIXED_TEMP]


# ------------------------------------------------------------------------------ crashsafe

_CRASHSAFE = {
    "atomic_write": 'crashsafe.atomic_write("data", NEW)',
    "atomic_copy": 'crashsafe.atomic_copy("new", "data")',
    "write_many": 'crashsafe.write_many({"data": NEW, "other": NEW})',
    "transaction": (
        'with crashsafe.transaction(".") as tx:\n'
        '    tx.write("data", NEW)\n'
        '    tx.write("other", NEW)'
    ),
}


def _copy_setup(directory: Path) -> None:
    (directory / "data").write_bytes(OLD)
    (directory / "new").write_bytes(NEW)


def _crashsafe(call: str, code: str) -> Workload:
    setup = _copy_setup if call == "atomic_copy" else _writer_setup
    code = f"import crashsafe\n{code}\nprint('saved', flush=True)"
    return _writer(f"crashsafe-{call}", code, setup)


CRASHSAFE = [_crashsafe(call, code) for call, code in _CRASHSAFE.items()]

UPDATE_JSON_CHECK = f"""\
{sys.executable} - <<'EOF'
import json, os, sys
said = "saved" in os.environ["CRASHCHECK_STDOUT"]
try:
    doc = json.load(open("state.json"))
except (OSError, ValueError) as e:
    sys.exit(f"state.json unreadable: {{e}}")
if doc == {{"n": 2, "pad": "x" * 9000}}:
    sys.exit(0)
if doc == {{"n": 1, "pad": "x" * 9000}}:
    sys.exit("saved, but the old document" if said else 0)
sys.exit(f"neither: {{str(doc)[:80]}}")
EOF
"""


def _json_setup(directory: Path) -> None:
    (directory / "state.json").write_text('{"n": 1, "pad": "' + "x" * 9000 + '"}')


CRASHSAFE_UPDATE_JSON = Workload(
    "crashsafe-update_json",
    _json_setup,
    _python(
        "import crashsafe\n"
        'def bump(doc): doc["n"] += 1; return doc\n'
        'crashsafe.update_json("state.json", bump)\n'
        "print('saved', flush=True)"
    ),
    UPDATE_JSON_CHECK,
)
CRASHSAFE.append(CRASHSAFE_UPDATE_JSON)
