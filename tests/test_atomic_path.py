"""atomic_path: a staged path for libraries and programs that only take a path.

Grouped by promise: real libraries and programs write the staged path and the
result is published (sqlite3's backup and ``VACUUM INTO``, a shell's ``gzip``,
the ``sqlite3`` program, a library that renames its own temporary file onto
the path, an array's ``tofile``); nothing is published on an error and nothing
is left (an exception, a directory, a symlink or nothing at the staged path,
a validator, a database still open); modes are exact; crashcheck finds no
crash state that breaks a database written through it, and finds the naive
write's; kill -9 and a power cut after every syscall leave old or new, and
sweep removes what a crash left. The crash writers are
``tests/writers/path_atomic.py`` and its broken twin ``path_broken.py``.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import sqlite3
import stat
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

import crashsafe
from crashsafe import VerificationError, validators
from crashsafe.crashcheck import CheckContext, explore
from crashsafe.staging import is_temp_name
from tests.harness import power_cut
from tests.harness.checks import leftovers
from tests.harness.inject import fault, run_traced
from tests.harness.kill9 import kill9_loop
from tests.harness.one_file import (
    NEW,
    OLD,
    check_durable,
    commit_of,
    cut_one_file,
    damage,
    durable_marks,
)
from tests.harness.payloads import classify, durable_put, payload, read_or_none
from tests.harness.power_cut import WRITERS
from tests.harness.require import require_root, require_tools
from tests.harness.summary import module_summary

_note, _print_summary = module_summary("atomic_path crash summary")
ROWS_OLD = [(1, "old")]
ROWS_NEW = [(1, "new"), (2, "new")]


def _source_db(rows: list[tuple[int, str]]) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    db.executemany("INSERT INTO t VALUES (?, ?)", rows)
    db.commit()
    return db


def _rows(path: str | os.PathLike[str], *, recover: bool = False) -> list[tuple[int, str]]:
    """The rows of a database, after SQLite's own integrity check; opened read-only
    (nothing made beside it), or with *recover* as the next program would open
    it after a crash (rolling back a hot journal)."""
    uri = Path(path).resolve().as_uri() + ("" if recover else "?mode=ro")
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return db.execute("SELECT k, v FROM t ORDER BY k").fetchall()


def _write_db(path: str | os.PathLike[str], rows: list[tuple[int, str]]) -> None:
    with (
        contextlib.closing(_source_db(rows)) as src,
        contextlib.closing(sqlite3.connect(path)) as d,
    ):
        src.backup(d)


@pytest.fixture
def old_db(workdir: Path) -> Path:
    target = workdir / "app.sqlite"
    _write_db(target, ROWS_OLD)
    target.chmod(0o640)
    return target


def _only(directory: Path, *names: str) -> None:
    assert sorted(os.listdir(directory)) == sorted(names)


# --------------------------------------------------------------------------- the staged path


def test_the_staged_path_is_private_new_and_ends_with_the_targets_suffixes(workdir: Path) -> None:
    seen = []
    for name in ("db.sqlite", "a.tar.gz", ".bashrc", "plain"):
        with crashsafe.atomic_path(str(workdir / name), perm=0o600) as staged:
            assert isinstance(staged, str)
            assert os.path.isabs(staged) and os.path.dirname(staged) == str(workdir)
            base = os.path.basename(staged)
            assert is_temp_name(base) and base.startswith(f".{name}.")
            st = os.lstat(staged)
            assert stat.S_ISREG(st.st_mode) and st.st_size == 0
            assert stat.S_IMODE(st.st_mode) == 0o600
            Path(staged).write_bytes(name.encode())
            seen.append(base)
        assert (workdir / name).read_bytes() == name.encode()
    assert seen[0].endswith(".crashsafe-tmp-path.sqlite")
    assert seen[1].endswith(".crashsafe-tmp-path.tar.gz")
    assert seen[2].endswith(".crashsafe-tmp-path") and seen[3].endswith(".crashsafe-tmp-path")
    _only(workdir, "db.sqlite", "a.tar.gz", ".bashrc", "plain")


def test_a_path_argument_gives_a_path(workdir: Path) -> None:
    with crashsafe.atomic_path(workdir / "f.bin") as staged:
        assert isinstance(staged, Path)
        staged.write_bytes(b"x")
    assert (workdir / "f.bin").read_bytes() == b"x"


def test_a_relative_path_gives_an_absolute_staged_path(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    with crashsafe.atomic_path("rel.txt") as staged:
        monkeypatch.chdir("/")  # a program started elsewhere still finds it
        Path(staged).write_text("r")
    assert (workdir / "rel.txt").read_text() == "r"


# --------------------------------------------------------------------------- real writers


def test_sqlite_backup_into_the_staged_path_replaces_the_database(old_db: Path) -> None:
    with crashsafe.atomic_path(old_db) as staged:
        _write_db(staged, ROWS_NEW)
        assert _rows(old_db) == ROWS_OLD  # not visible before the block ends
    assert _rows(old_db) == ROWS_NEW
    assert stat.S_IMODE(old_db.stat().st_mode) == 0o640  # the existing mode kept
    _only(old_db.parent, old_db.name)


def test_sqlite_vacuum_into_the_staged_path(old_db: Path) -> None:
    with (
        contextlib.closing(_source_db(ROWS_NEW)) as src,
        crashsafe.atomic_path(old_db, validate=validators.sqlite) as staged,
    ):
        # VACUUM INTO accepts an existing file only if it is empty: the staged one is.
        src.execute("VACUUM INTO ?", (str(staged),))
    assert _rows(old_db) == ROWS_NEW
    _only(old_db.parent, old_db.name)


def test_a_shell_pipeline_writes_the_staged_path(workdir: Path) -> None:
    require_tools("gzip")
    target = workdir / "log.gz"
    with crashsafe.atomic_path(target, validate=validators.gzip) as staged:
        subprocess.run(["sh", "-c", 'printf "hello\\n" | gzip -c > "$1"', "sh", staged], check=True)
    out = subprocess.run(["gzip", "-dc", str(target)], capture_output=True, check=True)
    assert out.stdout == b"hello\n"
    _only(workdir, "log.gz")


def test_the_sqlite3_program_writes_the_staged_path(old_db: Path) -> None:
    require_tools("sqlite3")
    sql = (
        "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT); "
        "INSERT INTO t VALUES (1, 'new'), (2, 'new');"
    )
    with crashsafe.atomic_path(old_db) as staged:
        subprocess.run(["sqlite3", staged, sql], check=True)
    assert _rows(old_db) == ROWS_NEW
    # The program made and removed its -journal beside the staged path: nothing left.
    _only(old_db.parent, old_db.name)


def test_a_library_that_renames_its_own_file_onto_the_staged_path(workdir: Path) -> None:
    target = workdir / "model.bin"
    target.write_bytes(b"old")
    target.chmod(0o604)
    with crashsafe.atomic_path(target) as staged:
        # What such a library does: its own temporary file, then a rename onto the path.
        own = workdir / "libtmp-123"
        own.write_bytes(b"new")
        own.chmod(0o600)
        before = os.stat(staged).st_ino
        os.replace(own, staged)
        assert os.stat(staged).st_ino != before
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o604  # the target's mode, not the library's
    _only(workdir, "model.bin")


def test_numpy_save_writes_the_staged_path(workdir: Path) -> None:
    import numpy as np  # a test dependency (the test extra), not the library's

    target = workdir / "a.npy"
    with crashsafe.atomic_path(target) as staged:
        np.save(staged, np.arange(5))
    assert list(np.load(target)) == [0, 1, 2, 3, 4]


def test_an_array_tofile_writes_the_staged_path(workdir: Path) -> None:
    # What numpy.save(path) does, with the standard library: open by name, write, close.
    target = workdir / "a.f64"
    values = array.array("d", [0.5, 1.5, 2.5])
    with crashsafe.atomic_path(target) as staged, open(staged, "wb") as f:
        values.tofile(f)
    back = array.array("d")
    back.frombytes(target.read_bytes())
    assert back == values


# --------------------------------------------------------------------------- errors


def test_an_exception_publishes_nothing_and_leaves_no_staged_file(old_db: Path) -> None:
    before = old_db.read_bytes()
    with pytest.raises(KeyError), crashsafe.atomic_path(old_db) as staged:
        _write_db(staged, ROWS_NEW)
        raise KeyError("boom")
    assert old_db.read_bytes() == before
    _only(old_db.parent, old_db.name)


def test_an_exception_removes_the_side_files_too(old_db: Path) -> None:
    before = old_db.read_bytes()
    with pytest.raises(RuntimeError), crashsafe.atomic_path(old_db) as staged:
        db = sqlite3.connect(staged)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (k)")
        db.commit()
        assert os.path.exists(f"{staged}-wal") and os.path.exists(f"{staged}-shm")
        try:
            raise RuntimeError("the program failed with its connection open")
        finally:
            db.close()
    assert old_db.read_bytes() == before
    _only(old_db.parent, old_db.name)


def _nothing(staged: str) -> None:
    os.unlink(staged)


def _a_directory(staged: str) -> None:
    os.unlink(staged)
    os.mkdir(staged)
    Path(staged, "inside").write_bytes(b"x")


def _a_symlink(staged: str) -> None:
    os.unlink(staged)
    os.symlink("/etc/hostname", staged)


def _a_fifo(staged: str) -> None:
    os.unlink(staged)
    os.mkfifo(staged)


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (_nothing, errno.ENOENT),
        (_a_directory, errno.EISDIR),
        (_a_symlink, errno.EINVAL),
        (_a_fifo, errno.EINVAL),
    ],
    ids=["nothing", "directory", "symlink", "fifo"],
)
def test_anything_but_a_regular_file_raises_names_both_and_is_removed(
    workdir: Path, make: Callable[[str], None], code: int
) -> None:
    target = workdir / "t.bin"
    target.write_bytes(b"old")
    with pytest.raises(OSError) as info, crashsafe.atomic_path(str(target)) as staged:
        make(staged)
    e = info.value
    assert e.errno == code
    assert (e.filename, e.filename2) == (staged, str(target))
    assert "nothing was published" in str(e) and staged in str(e) and str(target) in str(e)
    assert target.read_bytes() == b"old"
    _only(workdir, "t.bin")


def test_a_database_still_open_in_wal_mode_is_refused(old_db: Path) -> None:
    before = old_db.read_bytes()
    db = None
    try:
        with pytest.raises(OSError) as info, crashsafe.atomic_path(old_db) as staged:
            db = sqlite3.connect(staged)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE t (k)")
            db.execute("INSERT INTO t VALUES (1)")
            db.commit()  # in the -wal, not yet in the database file
    finally:
        if db is not None:
            db.close()
    assert info.value.errno == errno.EBUSY
    assert "-wal" in str(info.value) and "close it" in str(info.value)
    assert old_db.read_bytes() == before
    _only(old_db.parent, old_db.name)


def test_an_unfinished_rollback_journal_is_refused(old_db: Path) -> None:
    before = old_db.read_bytes()
    db = None
    try:
        with pytest.raises(OSError) as info, crashsafe.atomic_path(old_db) as staged:
            _write_db(staged, ROWS_NEW)
            db = sqlite3.connect(staged, isolation_level=None)
            db.execute("BEGIN")
            db.execute("DELETE FROM t")  # the journal is live until COMMIT
            db.execute("PRAGMA cache_spill=1")
            db.execute("INSERT INTO t SELECT k + 10, v FROM t")
            assert os.path.getsize(f"{staged}-journal") > 0
    finally:
        if db is not None:
            db.close()
    assert info.value.errno == errno.EBUSY and "-journal" in str(info.value)
    assert old_db.read_bytes() == before
    _only(old_db.parent, old_db.name)


def test_a_wal_database_closed_in_the_block_is_published(old_db: Path) -> None:
    with crashsafe.atomic_path(old_db) as staged:
        with contextlib.closing(sqlite3.connect(staged)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
            db.executemany("INSERT INTO t VALUES (?, ?)", ROWS_NEW)
            db.commit()
        with contextlib.closing(sqlite3.connect(staged)) as db:
            db.execute("PRAGMA journal_mode=DELETE")  # published files name no -wal
    assert _rows(old_db) == ROWS_NEW
    _only(old_db.parent, old_db.name)


def test_a_persistent_journal_with_a_zeroed_header_is_removed_and_the_database_published(
    old_db: Path,
) -> None:
    with crashsafe.atomic_path(old_db) as staged:
        with contextlib.closing(sqlite3.connect(staged)) as db:
            db.execute("PRAGMA journal_mode=PERSIST")
            db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
            db.executemany("INSERT INTO t VALUES (?, ?)", ROWS_NEW)
            db.commit()
        journal = Path(f"{staged}-journal")
        assert journal.stat().st_size > 0  # kept by PERSIST, its header zeroed
    assert not journal.exists()
    assert _rows(old_db) == ROWS_NEW
    _only(old_db.parent, old_db.name)


def test_a_validator_rejects_and_nothing_is_published(old_db: Path) -> None:
    before = old_db.read_bytes()
    with (
        pytest.raises(VerificationError) as info,
        crashsafe.atomic_path(old_db, validate=validators.sqlite) as staged,
    ):
        Path(staged).write_bytes(b"SQLite format 3\x00 but cut short")
    assert info.value.filename == str(old_db)
    assert old_db.read_bytes() == before
    _only(old_db.parent, old_db.name)


@pytest.mark.parametrize("perm", [0o600, 0o644, 0o4750, 0o400])
def test_perm_is_exact_whatever_the_umask_and_the_library(workdir: Path, perm: int) -> None:
    target = workdir / "p.bin"
    target.write_bytes(b"old")
    target.chmod(0o666)
    old_umask = os.umask(0o077)
    try:
        with crashsafe.atomic_path(target, perm=perm) as staged:
            assert stat.S_IMODE(os.stat(staged).st_mode) == perm  # from its creation on
            own = workdir / "own"
            own.write_bytes(b"new")
            os.replace(own, staged)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(target.stat().st_mode) == perm
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("how", ["write", "rename"])
def test_an_existing_targets_owner_and_setgid_mode_are_kept(workdir: Path, how: str) -> None:
    require_root()
    target = workdir / "owned.bin"
    target.write_bytes(b"old")
    os.chown(target, 65534, 65534)
    target.chmod(0o2750)
    with crashsafe.atomic_path(target) as staged:
        st = os.stat(staged)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o2750)
        if how == "write":
            Path(staged).write_bytes(b"new")
        else:  # root's own file, renamed onto the staged path
            own = workdir / "own"
            own.write_bytes(b"new")
            os.replace(own, staged)
    st = target.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o2750)
    assert target.read_bytes() == b"new"


def test_a_new_file_gets_the_mode_open_would_give(workdir: Path) -> None:
    old_umask = os.umask(0o027)
    try:
        with crashsafe.atomic_path(workdir / "n.bin") as staged:
            Path(staged).write_bytes(b"n")
        with open(workdir / "baseline", "wb"):
            pass
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((workdir / "n.bin").stat().st_mode) == 0o640
    assert stat.S_IMODE((workdir / "baseline").stat().st_mode) == 0o640


def test_a_symlink_at_the_target_is_followed_or_replaced(workdir: Path) -> None:
    real = workdir / "real.txt"
    real.write_text("old")
    link = workdir / "link.txt"
    link.symlink_to("real.txt")
    with crashsafe.atomic_path(link) as staged:
        assert os.path.dirname(staged) == str(workdir)
        staged.write_text("through")
    assert link.is_symlink() and real.read_text() == "through"
    with crashsafe.atomic_path(link, follow_symlinks=False) as staged:
        staged.write_text("replaced")
    assert not link.is_symlink() and link.read_text() == "replaced"
    assert real.read_text() == "through"


def test_bad_arguments_raise_before_anything_is_created(workdir: Path) -> None:
    with pytest.raises(ValueError, match=r"s3://b/k.*atomic_copy"):
        crashsafe.atomic_path("s3://b/k")
    with pytest.raises(ValueError, match="durability"):
        crashsafe.atomic_path(workdir / "x", durability="sometimes")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="perm"):
        crashsafe.atomic_path(workdir / "x", perm=644)
    with pytest.raises(TypeError):
        crashsafe.atomic_path(workdir / "x", follow_symlinks=1)  # type: ignore[call-overload]
    never_entered = crashsafe.atomic_path(workdir / "x")
    _only(workdir)  # nothing is made until the block is entered
    del never_entered
    with pytest.raises(IsADirectoryError), crashsafe.atomic_path(workdir):
        pytest.fail("entered")
    with pytest.raises(FileNotFoundError), crashsafe.atomic_path(workdir / "missing" / "x"):
        pytest.fail("entered")
    os.mkfifo(workdir / "fifo")
    with pytest.raises(OSError, match="regular") as info, crashsafe.atomic_path(workdir / "fifo"):
        pytest.fail("entered")
    assert info.value.errno == errno.EINVAL
    os.unlink(workdir / "fifo")
    _only(workdir)


def test_sweep_removes_a_dead_writers_staged_path_and_side_files(workdir: Path) -> None:
    target = workdir / "db.sqlite"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child is killed
        try:
            with crashsafe.atomic_path(target) as staged:
                db = sqlite3.connect(staged)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("CREATE TABLE t (k)")
                db.commit()
                os.kill(os.getpid(), 9)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    left = leftovers(workdir)
    assert len(left) == 3 and {n.rsplit("sqlite", 1)[1] for n in left} == {"", "-wal", "-shm"}
    removed = crashsafe.sweep(workdir)
    assert sorted(p.name for p in removed) == left
    _only(workdir)


# --------------------------------------------------------------------------- crashcheck


def _db_check(state: CheckContext) -> None:
    """Every crash state: the database passes SQLite's integrity check and holds the
    old rows or the new ones; the new ones once "saved" was printed."""
    rows = _rows(state.dir / "app.sqlite", recover=True)
    if b"saved" in state.stdout:
        assert rows == ROWS_NEW, f"saved, then {rows}"
    else:
        assert rows in (ROWS_OLD, ROWS_NEW), f"rows {rows}"


def test_crashcheck_finds_nothing_in_a_backup_through_atomic_path(old_db: Path) -> None:
    require_tools("strace")

    def save() -> None:
        with (
            contextlib.closing(_source_db(ROWS_NEW)) as src,
            crashsafe.atomic_path(old_db) as staged,
            contextlib.closing(sqlite3.connect(staged)) as db,
        ):
            src.backup(db)
        print("saved")

    report = explore(save, _db_check, dirs=[old_db.parent], jobs=1)
    assert report.vulnerabilities == [], report
    assert report.states_checked >= 5
    crashsafe.sweep(old_db.parent)  # what the run left is the run's business: it left nothing
    _only(old_db.parent, old_db.name)
    assert _rows(old_db) == ROWS_NEW


def test_crashcheck_finds_nothing_when_a_library_renames_onto_the_staged_path(
    workdir: Path,
) -> None:
    """The library's rename onto the staged path is synced before the publishing
    rename: under the conservative model, losing it while the publishing rename
    persisted would publish the empty file atomic_path made."""
    require_tools("strace")
    target = workdir / "model.bin"
    target.write_bytes(b"old " * 2048)

    def save() -> None:
        with crashsafe.atomic_path(target) as staged:
            own = workdir / "lib-own.tmp"
            own.write_bytes(b"new " * 2048)
            os.replace(own, staged)
        print("saved")

    def check(state: CheckContext) -> None:
        content = (state.dir / "model.bin").read_bytes()
        if b"saved" in state.stdout:
            assert content == b"new " * 2048, f"saved, then {content[:8]!r}, {len(content)} bytes"
        else:
            assert content in (b"old " * 2048, b"new " * 2048), f"{len(content)} bytes"

    report = explore(save, check, dirs=[workdir], jobs=1)
    assert report.vulnerabilities == [], report
    crashsafe.sweep(workdir)
    _only(workdir, "model.bin")


def test_crashcheck_finds_the_naive_backup_straight_to_the_target(old_db: Path) -> None:
    require_tools("strace")

    def save() -> None:
        with (
            contextlib.closing(_source_db(ROWS_NEW)) as src,
            contextlib.closing(sqlite3.connect(old_db)) as db,
        ):
            src.backup(db)
        print("saved")

    report = explore(save, _db_check, dirs=[old_db.parent], jobs=1)
    assert report.vulnerabilities, "crashcheck missed the naive write: it proves nothing"
    assert any("saved" in v.check_output for v in report.vulnerabilities), report


# --------------------------------------------------------------------------- crashes

PATH_ATOMIC = WRITERS / "path_atomic.py"
# Deliberately broken: the staged path renamed over the target with no fsync.
PATH_BROKEN = WRITERS / "path_broken.py"
KILLS = 100


def _source(tmp_path: Path) -> Path:
    source = tmp_path / "new.bin"
    source.write_bytes(payload(NEW))
    return source


@pytest.mark.slow
@pytest.mark.parametrize("how", ["write", "rename"])
def test_power_cut_at_every_syscall_through_atomic_path(
    cut_fs: tuple[str, Path], tmp_path: Path, how: str
) -> None:
    fs, mnt = cut_fs
    run, directory = cut_one_file(
        mnt, PATH_ATOMIC, _source(tmp_path), ["durable", how], crashsafe_temps=True
    )
    commit, dir_sync = durable_marks(run, directory)
    _note(
        power_cut.describe(
            fs, f"atomic_path {how}", run, f"commit #{commit}, dir fsync #{dir_sync}"
        )
    )
    # Old or new, whole, at every point; old before the rename, new once the
    # directory fsync returned and after return; the staged files a cut left
    # (some did) all removed by sweep().
    check_durable(run, directory, commit, dir_sync)


@pytest.mark.slow
def test_power_cut_harness_catches_a_commit_without_fsync(
    cut_fs: tuple[str, Path], tmp_path: Path
) -> None:
    fs, mnt = cut_fs
    run, _ = cut_one_file(mnt, PATH_BROKEN, _source(tmp_path), [], crashsafe_temps=False)
    commit = commit_of(run)
    caught, caught_text = damage(run)
    _note(power_cut.describe(fs, "BROKEN path, no fsync", run, f"commit #{commit}") + caught_text)
    assert caught, "the harness missed the commit without fsync: it proves nothing"
    assert power_cut.violations(run, commit, None) != []


@pytest.mark.slow
@pytest.mark.parametrize("how", ["write", "rename"])
def test_kill_at_every_syscall_through_atomic_path(tmp_path: Path, how: str) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    target = directory / "target"
    source = _source(tmp_path)

    def prepare() -> None:
        for name in os.listdir(directory):
            os.unlink(directory / name)
        durable_put(target, payload(OLD))

    def inspect() -> str:
        found = classify(read_or_none(target))
        return "old" if found == OLD else "new" if found == NEW else str(found)

    run = power_cut.kill_every_syscall(
        PATH_ATOMIC,
        [str(target), str(source), "durable", how],
        prepare=prepare,
        inspect=inspect,
        sweep_dir=directory,
    )
    commit = commit_of(run)
    found = sum(len(t.leftovers) for t in run.trials)
    _note(
        f"kill      atomic_path {how:<7} {len(run.trials)} kills, one after each syscall: "
        f"{dict(Counter(t.outcome for t in run.trials))}; staged files left {found} -> "
        f"left after sweep {sum(len(t.left_after_sweep) for t in run.trials)}; {run.seconds:.1f} s"
    )
    assert power_cut.violations(run, commit, run.end) == []
    assert {t.outcome for t in run.trials} == {"old", "new"}
    assert found > 0  # kills landed while the staged path existed...
    assert [t.left_after_sweep for t in run.trials if t.left_after_sweep] == []  # ...all swept


def _version_db(n: int) -> sqlite3.Connection:
    """Version *n* of a database: its number, and enough rows to span many pages."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    db.executemany("INSERT INTO t VALUES (?, ?)", ((i, f"v{n:06}-{i:06}" * 8) for i in range(2000)))
    db.execute("CREATE TABLE version (n)")
    db.execute("INSERT INTO version VALUES (?)", (n,))
    db.commit()
    return db


def _db_version(target: Path) -> Callable[[], int | str]:
    def check() -> int | str:
        if not target.exists():
            return "missing"
        try:
            uri = target.resolve().as_uri() + "?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
                if db.execute("PRAGMA integrity_check").fetchall() != [("ok",)]:
                    return "integrity check failed"
                (n,) = db.execute("SELECT n FROM version").fetchone()
                rows = db.execute("SELECT count(*) FROM t WHERE v LIKE ?", (f"v{n:06}-%",))
                return int(n) if rows.fetchone() == (2000,) else "mixed versions"
        except sqlite3.DatabaseError as e:
            return f"unreadable: {type(e).__name__}"

    return check


@pytest.mark.slow
def test_kill9_torture_of_sqlite_backups_through_atomic_path(workdir: Path) -> None:
    target = workdir / "app.sqlite"
    with (
        contextlib.closing(_version_db(0)) as src,
        contextlib.closing(sqlite3.connect(target)) as d,
    ):
        src.backup(d)

    def write(n: int) -> None:
        with (
            contextlib.closing(_version_db(n)) as src,
            crashsafe.atomic_path(target) as staged,
            contextlib.closing(sqlite3.connect(staged)) as db,
        ):
            src.backup(db)

    result = kill9_loop(
        workdir, kills=KILLS, write=write, check=_db_version(target), staging="named"
    )
    _note(
        f"kill -9   atomic_path sqlite backup: {result.kills} kills: {dict(result.outcomes)}, "
        f"changed after {result.changed}; staged files {result.orphans_before_sweep} -> swept "
        f"{result.swept} -> left {len(result.left_after_sweep)}; at {result.plan()}, "
        f"{result.seconds:.1f} s"
    )
    assert result.outcomes == Counter(complete=KILLS), result.outcomes
    assert result.returned_then_lost() == []
    assert 0 < result.changed < KILLS
    assert result.orphans_before_sweep > 0
    assert result.left_after_sweep == []
    _only(workdir, "app.sqlite")


@pytest.mark.slow
def test_kill9_harness_catches_a_database_written_in_place(workdir: Path) -> None:
    target = workdir / "app.sqlite"
    with contextlib.closing(_version_db(0)) as src:
        target.write_bytes(src.serialize())

    def write(n: int) -> None:
        # Broken: the database's bytes written over the target, page by page.
        with contextlib.closing(_version_db(n)) as src:
            data = src.serialize()
        with open(target, "wb") as f:
            for i in range(0, len(data), 1 << 16):
                f.write(data[i : i + (1 << 16)])
                f.flush()

    result = kill9_loop(
        workdir, kills=KILLS, write=write, check=_db_version(target), staging="named"
    )
    _note(
        f"kill -9   BROKEN in place sqlite: {result.kills} kills: caught {result.torn} "
        f"{dict(result.outcomes)}; {result.seconds:.1f} s"
    )
    assert result.torn > 0, "the kill -9 loop missed the database written in place"


# --------------------------------------------------------------------------- real errors

_CHILD = """
target = sys.argv[1]
def go():
    with crashsafe.atomic_path(target) as staged:
        with open(staged, "wb") as f:
            f.write(b"new")
report(**attempt(go))
"""


def test_eio_on_the_staged_files_fsync_publishes_nothing_and_is_never_retried(
    workdir: Path,
) -> None:
    target = workdir / "t.bin"
    target.write_bytes(b"old")
    child = run_traced(
        _CHILD, str(target), trace=["fsync"], inject=[fault("fsync", error="EIO", when=1)]
    )
    assert child.result["raised"] == "OSError" and child.result["errno"] == errno.EIO
    assert child.count("fsync") == 1, child.log  # never retried, nothing renamed
    assert target.read_bytes() == b"old"
    _only(workdir, "t.bin")


def test_eio_on_the_directory_fsync_raises_not_durable_with_the_new_content(
    workdir: Path,
) -> None:
    target = workdir / "t.bin"
    target.write_bytes(b"old")
    child = run_traced(
        _CHILD, str(target), trace=["fsync"], inject=[fault("fsync", error="EIO", when=2)]
    )
    result = child.result
    assert result["raised"] == "NotDurableError", (result, child.stderr)
    assert (result["errno"], result["filename"]) == (errno.EIO, str(target))
    assert f"{workdir}>" in child.injected()[0], "the failed fsync was not the directory's"
    assert target.read_bytes() == b"new"
    _only(workdir, "t.bin")


@pytest.mark.parametrize(
    ("durability", "how", "fsyncs"),
    [
        ("durable", "write", ["file", "dir"]),
        ("durable", "rename", ["file", "dir", "dir"]),  # the library's rename synced first
        ("consistent", "write", ["file"]),
        # Old or new after a power cut needs the library's rename before the publishing one.
        ("consistent", "rename", ["file", "dir"]),
        ("none", "write", []),
    ],
)
def test_durability_decides_the_fsyncs(
    workdir: Path, durability: str, how: str, fsyncs: list[str]
) -> None:
    target = workdir / "t.bin"
    target.write_bytes(b"old")
    code = f"""
target = sys.argv[1]
def go():
    with crashsafe.atomic_path(target, durability={durability!r}) as staged:
        name = staged if {how!r} == "write" else target + ".own"
        with open(name, "wb") as f:
            f.write(b"new")
        if name != staged:
            os.replace(name, staged)
report(**attempt(go))
"""
    child = run_traced(code, str(target), trace=["fsync", "fdatasync"])
    assert child.result["raised"] is None, child.result
    seen = [
        "dir" if line.split("<", 1)[1].startswith(f"{workdir}>") else "file"
        for line in child.calls("fsync")
    ]
    assert seen == fsyncs, child.log
    assert child.count("fdatasync") == 0
    assert target.read_bytes() == b"new"
    _only(workdir, "t.bin")
