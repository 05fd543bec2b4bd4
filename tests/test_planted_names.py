"""Planted and stale names: the classic fixed-temporary-name bugs, as regression tests.

Promise 4 (no debris blocks or confuses later writes) and promise 5 (a temporary
file is never opened through a planted symlink, never more permissive than the
final file, never at a guessable name). A naive library writes through
``.NAME.tmp``, ``NAME.part`` or ``.tmp-NAME``: a file planted there keeps its old
mode, a symlink there redirects the write, a directory there blocks it.
"""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

import crashsafe
import crashsafe._platform._posix as posix
from crashsafe.staging import MARKER, TEMP_RE, is_temp_name, sweep, temp_name
from tests.children import start as start_child
from tests.harness.checks import entries, leftovers, snapshot
from tests.harness.require import require

NAME = "id_ed25519"
DATA = b"-----BEGIN OPENSSH PRIVATE KEY-----\nnot really\n-----END OPENSSH PRIVATE KEY-----\n"
VICTIM = b"the victim's own content\n"
NAIVE = [".{}.tmp", "{}.tmp", "{}.part", ".tmp-{}", "{}~"]
KINDS = ["file", "directory", "symlink", "dangling-symlink"]


def umask() -> int:
    """The process umask, read without the thread-unsafe os.umask() set-and-restore."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask line in /proc/self/status")


def planted_names(name: str) -> list[str]:
    """Every name a naive library might use, and names shaped exactly like crashsafe's."""
    names = [form.format(name) for form in NAIVE]
    names += [temp_name(name) for _ in range(3)]  # this process's own shape
    own = TEMP_RE.match(temp_name(name))
    assert own is not None
    owner = f"{own['pid']}-{own['start']}-{own['host']}"
    names += [
        f".{name}.{'0' * 16}.{owner}{MARKER}",
        f".{name}.{'f' * 16}.{owner}{MARKER}",
        f".{name}.{os.urandom(8).hex()}.1-1-00000000{MARKER}",
        f".{name}.{os.urandom(8).hex()}.{os.getpid() + 1}-0-ffffffff{MARKER}",
    ]
    assert all(is_temp_name(n) for n in names[len(NAIVE) :])
    return names


def plant(directory: Path, names: list[str], kind: str, victim: Path) -> None:
    for name in names:
        where = directory / name
        if kind == "file":
            where.write_bytes(b"junk planted at " + name.encode())
            os.chmod(where, 0o644)
        elif kind == "directory":
            where.mkdir()
            (where / "inside").write_bytes(b"planted inside")
        elif kind == "symlink":
            where.symlink_to(victim)
        else:
            where.symlink_to(victim.parent / "nothing-here")


def write_atomic_write(directory: Path, name: str, data: bytes) -> None:
    crashsafe.atomic_write(directory / name, data, perm=0o600)


def write_atomic_open(directory: Path, name: str, data: bytes) -> None:
    with crashsafe.atomic_open(directory / name, "wb", perm=0o600) as f:
        f.write(data[:7])
        f.write(data[7:])


def write_write_file_atomic(directory: Path, name: str, data: bytes) -> None:
    crashsafe.write_file_atomic(directory, name, data, 0o600)


APIS: dict[str, Callable[[Path, str, bytes], None]] = {
    "atomic_write": write_atomic_write,
    "atomic_open": write_atomic_open,
    "write_file_atomic": write_write_file_atomic,
}


@pytest.mark.parametrize("existing", [False, True], ids=["new", "replace"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("api", list(APIS))
def test_planted_names_neither_redirect_block_nor_leak_mode_into_a_write(
    tmp_path: Path, staging: str, api: str, kind: str, existing: bool
) -> None:
    directory, elsewhere = tmp_path / "d", tmp_path / "elsewhere"
    directory.mkdir()
    elsewhere.mkdir()
    victim = elsewhere / "victim"
    victim.write_bytes(VICTIM)
    os.chmod(victim, 0o644)
    names = planted_names(NAME)
    plant(directory, names, kind, victim)
    if existing:
        (directory / NAME).write_bytes(b"the old content, longer than the new one " * 10)
        os.chmod(directory / NAME, 0o644)
    before = {n: snapshot(directory / n) for n in names}
    victim_before = snapshot(victim)

    APIS[api](directory, NAME, DATA)

    target = directory / NAME
    st = os.lstat(target)
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert target.read_bytes() == DATA
    assert snapshot(victim) == victim_before
    assert entries(elsewhere) == ["victim"]  # the dangling links created nothing
    assert {n: snapshot(directory / n) for n in names} == before
    assert entries(directory) == sorted([*names, NAME])  # and no temporary file left


@pytest.mark.parametrize("kind", KINDS)
def test_planted_names_do_not_affect_create_only_writes(
    tmp_path: Path, staging: str, kind: str
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    directory = tmp_path / "d"
    directory.mkdir()
    names = planted_names(NAME)
    plant(directory, names, kind, victim)
    before = {n: snapshot(directory / n) for n in names}

    crashsafe.atomic_write(directory / NAME, DATA, perm=0o600, overwrite=False)
    with pytest.raises(FileExistsError):
        crashsafe.atomic_write(directory / NAME, b"second", perm=0o644, overwrite=False)

    assert (directory / NAME).read_bytes() == DATA
    assert stat.S_IMODE(os.lstat(directory / NAME).st_mode) == 0o600
    assert victim.read_bytes() == VICTIM
    assert {n: snapshot(directory / n) for n in names} == before
    assert entries(directory) == sorted([*names, NAME])


KILLED_WRITER = """\
import sys, time
import crashsafe._platform._posix as p
p.use_tmpfile = {tmpfile}
from crashsafe import AtomicFile
staged = AtomicFile(sys.argv[1], "wb", perm=0o644)
staged.file.write(b"junk from the killed writer " * 4096)
staged.file.flush()
print("ready", flush=True)
time.sleep(120)
"""


def kill_writer_while_staging(path: Path, *, tmpfile: bool) -> None:
    """Start a writer that stages *path* (perm 0o644, junk), then SIGKILL it mid-write."""
    proc = start_child(KILLED_WRITER.format(tmpfile=tmpfile), str(path), stdin=None, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("existing", [False, True], ids=["new", "replace"])
def test_leftover_of_killed_writer_neither_blocks_nor_leaks_into_later_write(
    tmp_path: Path, staging: str, existing: bool
) -> None:
    """A writer SIGKILLed while staging (named, mode 0o644, junk) leaves a temp file;
    the next write still succeeds with its own content and mode, leftover untouched."""
    target = tmp_path / NAME
    if existing:
        target.write_bytes(b"old key")
        os.chmod(target, 0o600)
    kill_writer_while_staging(target, tmpfile=False)

    # The kill changed nothing visible: the target is whole (or absent).
    left = leftovers(tmp_path)
    assert len(left) == 1 and left[0].startswith(f".{NAME}.")
    assert stat.S_IMODE(os.lstat(tmp_path / left[0]).st_mode) == 0o644
    if existing:
        assert target.read_bytes() == b"old key"
    else:
        assert not target.exists()
    leftover_before = snapshot(tmp_path / left[0])

    # Replacing keeps the old file's 0o600; a new file gets what open() would give.
    crashsafe.atomic_write(target, DATA)
    assert target.read_bytes() == DATA
    expected = 0o600 if existing else 0o666 & ~umask()
    assert stat.S_IMODE(os.lstat(target).st_mode) == expected
    crashsafe.atomic_write(target, DATA + b"again", perm=0o600)
    assert target.read_bytes() == DATA + b"again"
    assert stat.S_IMODE(os.lstat(target).st_mode) == 0o600
    assert snapshot(tmp_path / left[0]) == leftover_before
    assert entries(tmp_path) == sorted([NAME, left[0]])

    assert sweep(tmp_path, min_age=3600) == [tmp_path / left[0]]
    assert entries(tmp_path) == [NAME]
    assert target.read_bytes() == DATA + b"again"


def test_killed_writer_with_anonymous_staging_leaves_nothing_behind(workdir: Path) -> None:
    """O_TMPFILE staging: a SIGKILLed writer leaves no entry at all, and the target as it was."""
    require(posix.use_tmpfile, "needs O_TMPFILE staging (Linux, /proc)")
    target = workdir / NAME
    target.write_bytes(b"old key")
    kill_writer_while_staging(target, tmpfile=True)
    assert entries(workdir) == [NAME]
    assert target.read_bytes() == b"old key"


def test_staged_temp_file_is_hidden_shaped_and_no_more_permissive_than_final(
    workdir: Path,
) -> None:
    saved, posix.use_tmpfile = posix.use_tmpfile, False
    try:
        for perm in (0o600, 0o640, 0o400):
            staged = crashsafe.AtomicFile(workdir / NAME, "wb", perm=perm)
            try:
                (temp,) = leftovers(workdir)
                assert temp.startswith(f".{NAME}.") and is_temp_name(temp)
                mode = stat.S_IMODE(os.lstat(workdir / temp).st_mode)
                assert mode & ~perm == 0, f"temp file {oct(mode)} for final {oct(perm)}"
                staged.file.write(DATA)
            except BaseException:
                staged.discard()
                raise
            staged.commit()
            assert stat.S_IMODE(os.lstat(workdir / NAME).st_mode) == perm
            os.chmod(workdir / NAME, 0o600)
    finally:
        posix.use_tmpfile = saved
    assert (workdir / NAME).read_bytes() == DATA


# --------------------------------------------------------------------------- unguessable names


def test_temp_names_are_distinct_hidden_and_name_their_target() -> None:
    names = [temp_name("report.json") for _ in range(10_000)]
    assert len(set(names)) == len(names)
    for name in names:
        assert name.startswith(".report.json.")
        assert name.endswith(MARKER)
        assert is_temp_name(name)
        assert len(name.encode()) <= 255
    # 64 random bits, not a counter or the clock: every hex digit of the token
    # takes all 16 values over 10,000 names.
    tokens = [name.split(".")[3] for name in names]
    assert all(len(t) == 16 for t in tokens)
    for position in range(16):
        assert len({t[position] for t in tokens}) == 16


LONG_NAMES = {
    "ascii": "a" * 255,
    "two-byte": "é" * 127 + "a",  # 255 bytes in UTF-8
    "four-byte": "\U0001f600" * 63 + "abc",  # 255 bytes in UTF-8
    "dots": "." + "x." * 127,  # 255 bytes, dots where the parser splits fields
}


@pytest.mark.parametrize("label", list(LONG_NAMES))
def test_temp_name_of_a_255_byte_name_fits_in_255_bytes(label: str) -> None:
    target = LONG_NAMES[label]
    assert len(target.encode()) == 255
    for _ in range(100):
        name = temp_name(target)
        raw = name.encode()  # strict: a cut must not split a character
        assert len(raw) <= 255
        assert name.startswith(".")
        assert is_temp_name(name)
        match = TEMP_RE.match(name)
        assert match is not None
        assert match["stem"] and target.startswith(match["stem"])


@pytest.mark.parametrize("label", list(LONG_NAMES))
def test_write_to_a_255_byte_name_succeeds(workdir: Path, staging: str, label: str) -> None:
    target = workdir / LONG_NAMES[label]
    crashsafe.atomic_write(target, b"first")
    crashsafe.atomic_write(target, b"second")  # replacing takes a temporary name too
    with crashsafe.atomic_open(target, "ab") as f:
        f.write(b" and more")
    assert target.read_bytes() == b"second and more"
    crashsafe.write_file_atomic(workdir, LONG_NAMES[label], b"third", 0o600)
    assert target.read_bytes() == b"third"
    assert stat.S_IMODE(os.lstat(target).st_mode) == 0o600
    assert entries(workdir) == [LONG_NAMES[label]]


def test_a_forked_child_does_not_draw_its_parents_random_parts() -> None:
    """A forked child draws random parts of its own for its temporary names, so
    neither process can tell the other's next names from its own."""
    temp_name(NAME)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            parts = [_random_part_of(temp_name(NAME)) for _ in range(8)]
            os.write(write_end, " ".join(parts).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read().decode().split()
    os.waitpid(pid, 0)
    parent = [_random_part_of(temp_name(NAME)) for _ in range(8)]
    assert len(child) == 8
    assert not set(child) & set(parent), (child, parent)


def _random_part_of(name: str) -> str:
    match = TEMP_RE.match(name)
    assert match is not None
    return name[len(match["stem"]) + 2 :].split(".", maxsplit=1)[0]
