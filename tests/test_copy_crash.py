"""Crashes during atomic_copy: kill -9 and a power cut right after every syscall in turn.

What is proven, for :func:`crashsafe.atomic_copy` on real loop filesystems (xfs,
where the data moves by reflink, and ext4, where it moves by copy_file_range),
in both staging modes (anonymous ``O_TMPFILE`` and named temporary files):

* **kill -9 (promises 1 and 4).** A forked writer copies real c1z files (the
  magic ``C1ZF\\0`` and one zstd frame holding a SQLite database, a few MiB
  each, three distinct versions that say their number in a table) over one
  target, round after round, with ``validate=crashsafe.validators.c1z``. It is
  SIGKILLed 100 times, each right after one syscall of two recorded copies
  that touches the directory, cycling through all of them
  (:func:`tests.harness.kill9_loop`: no timing decides where a kill
  lands, so every count below is the same on every run). After every kill the target passes
  ``validators.c1z`` and equals, byte for byte, one of the complete versions.
  Afterwards ``sweep(dir, min_age=0)`` removes every temporary file the kills
  left, and nothing else is left in the directory.

* **The story's bug is caught (the harness proves something).** The same loop
  with the broken protocol the c1z story shipped (truncate the published file
  and copy over it in place) finds targets that start with the valid magic
  but hold a zstd stream cut short, and ``validators.c1z`` rejects every one
  of them.

* **Power cut at every syscall (promises 1 and 2).** A durable atomic_copy of a
  1 MiB file (the source on the same filesystem, fsynced before, so it
  survives) over an old target is frozen right after each of its syscalls in
  turn; the filesystem is shut down (with and without a journal commit by
  another process first), remounted, and the target must be the old content
  or the new one at every point, the old one before the rename, and the new
  one from the directory fsync on. xfs and ext4 mounted ``noauto_da_alloc``
  (its default hides missing fsyncs). A broken copier (``shutil.copyfile`` to a
  temporary file and rename, no fsync) run through the same harness leaves an
  empty or partial target, so the harness sees what it must. The broken copier
  moves its data through the page cache (sendfile) on purpose: measured here,
  the same copier with ``copy_file_range`` is not caught on xfs, where the
  kernel turns it into a clone, a logged metadata operation that the journal
  orders before the rename. So on xfs these trials prove the reflink path's
  ordering; a missing fsync of copied data shows on ext4 (copy_file_range
  through the page cache).

Sizes and counts, chosen for CI (the whole file takes about 2 minutes on the
2-core VM: 125 s of test time, measured with other jobs running beside it):

* kill -9: ~3 MiB c1z files (~6 MiB databases), 100 kills for each of xfs and
  ext4 times both staging modes (44-48 crash points; 4 runs of 10-30 s, the
  longer ones with ``stress-ng --cpu 4`` beside them), and 100 kills of the
  broken protocol on each filesystem (46 points, 3-7 s each);
* power cut: a 1 MiB copy (the syscalls do not depend on the size: the data
  moves in one FICLONE or one copy_file_range), every syscall between the
  markers in both modes (about 45 crash points x 2 = 90 trials, 11-18 s a
  run) for both staging modes on both filesystems, plus the broken copier
  on both (20 points, 4 s each). No validator in the power-cut writer: a
  validator only reads the staged file before its fsync, and its scratch
  file lives outside the cut filesystem, so it adds no distinct crash state;
  the kill -9 runs cover it.

Also shown: a kill -9 while ``validators.c1z`` runs leaves no decoded
database in ``tempfile.gettempdir()`` but in one private directory, and
touches nothing else there. The scratch file is anonymous while it is
decoded; it has a name, in a private ``crashsafe-validation-*`` directory,
only from the directory's creation to its removal around the instant SQLite
opens it. The kills land right after each call of the validation that touches
the temporary directory, so some land in that window, and exactly those leave
the directory; the next validation neither needs nor touches it.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import sqlite3
import stat
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import crashsafe
from crashsafe import validators
from crashsafe.errors import VerificationError
from tests.harness import power_cut, traces
from tests.harness.checks import leftovers
from tests.harness.kill9 import KillPoint, kill9_loop
from tests.harness.mounts import loop_mount
from tests.harness.one_file import (
    NEW,
    check_durable,
    commit_of,
    cut_one_file,
    damage,
    durable_marks,
)
from tests.harness.payloads import durable_put, payload, read_or_none
from tests.harness.power_cut import WRITERS
from tests.harness.summary import module_summary

# Kills per run: each of the 44-48 crash points of two copies is hit twice (in
# different states: another version, more orphans), enough as every kill lands
# at a chosen point; each kill attaches strace to a fresh writer, whose
# validation makes thousands of traced calls.
KILLS = 100
VERSIONS = 3  # pre-built c1z files the writer cycles through
MAGIC = b"C1ZF\x00"
# validators.c1z's private directory for its scratch file in tempfile.gettempdir()
SCRATCH_PREFIX = "crashsafe-validation-"
# By filesystem type; cut_fs labels ext4 "ext4-noauto_da_alloc", hence the partition below.
# mkfs.xfs makes reflink-capable filesystems by default (xfsprogs >= 5.1).
METHOD = {"xfs": "reflink", "ext4": "copy_file_range"}


_note, _print_summary = module_summary("atomic_copy crash summary")


# --------------------------------------------------------------------------- c1z files


@functools.cache
def c1z_version(version: int, db_mib: int = 6) -> bytes:
    """A real c1z file: the magic, then one zstd frame holding a SQLite database.

    The database has ``meta(version)`` and a table of blobs, each a random
    16 KiB run repeated twice (so zstd has real work: ~6 MiB of database in
    ~3 MiB of c1z), all drawn from a generator seeded by *version*.
    """
    import zstandard

    rng = random.Random(f"c1z {version}")
    with tempfile.TemporaryDirectory(prefix="crashsafe-c1z-build-") as work:
        path = os.path.join(work, "db.sqlite")
        con = sqlite3.connect(path)
        try:
            con.execute("CREATE TABLE meta(key TEXT PRIMARY KEY, value)")
            con.execute("INSERT INTO meta VALUES ('version', ?)", (version,))
            con.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB)")
            for _ in range((db_mib << 20) // (32 << 10)):
                con.execute("INSERT INTO blobs(data) VALUES (?)", (rng.randbytes(16 << 10) * 2,))
            con.commit()
        finally:
            con.close()
        db = Path(path).read_bytes()
    return MAGIC + zstandard.ZstdCompressor(level=3).compress(db)


class Judge:
    """Names what the target holds after a kill: the index of the complete version
    it equals (and validators.c1z accepts), or a category of what is wrong.
    Keeps the validator's message for the first target of every category.

    With *scratch* (the private tempfile.gettempdir() of the run), it also
    counts and removes what validators.c1z left there: its own run removes its
    file, so whatever is there was left by the killed writer.
    """

    def __init__(self, target: Path, versions: list[bytes], scratch: Path | None = None) -> None:
        self.target = target
        self.versions = versions
        self.scratch = scratch
        self.scratch_files = 0
        self.scratch_bytes = 0
        self.examples: dict[str, str] = {}

    def _collect_scratch(self) -> None:
        if self.scratch is None:
            return
        for path in self.scratch.iterdir():
            if path.name.startswith(SCRATCH_PREFIX):
                self.scratch_files += 1
                self.scratch_bytes += sum(p.stat().st_size for p in path.iterdir())
                shutil.rmtree(path)

    def _validate(self) -> str | None:
        try:
            with open(self.target, "rb") as f:
                validators.c1z(f)
        except VerificationError as exc:
            return exc.message
        return None

    def __call__(self) -> int | str:
        self._collect_scratch()
        data = read_or_none(self.target)
        if data is None:
            return "missing"
        rejected = self._validate()
        index = next((i for i, v in enumerate(self.versions) if data == v), None)
        if index is not None and rejected is None:
            return index
        if index is not None:
            kind = "a complete version REJECTED by c1z"
        elif rejected is None:
            kind = "ACCEPTED by c1z but no version"
        elif not data:
            kind = "empty"
        elif data.count(0) == len(data):
            kind = "zeros"
        elif any(v.startswith(data) for v in self.versions):
            if len(data) < len(MAGIC):
                kind = "cut inside the magic"
            elif len(data) == len(MAGIC):
                kind = "magic only"
            else:
                kind = "valid magic, zstd stream cut short"
        else:
            kind = "torn"
        self.examples.setdefault(kind, f"{len(data)} bytes: {rejected}")
        return kind


def _sources(mnt: Path) -> list[Path]:
    """The versions as files on the same filesystem as the target (a reflink needs that)."""
    src = mnt / "src"
    src.mkdir()
    paths = []
    for i in range(VERSIONS):
        path = src / f"v{i}.c1z"
        durable_put(path, c1z_version(i))
        paths.append(path)
    return paths


def _c1z_setup(mnt: Path) -> tuple[list[Path], list[bytes], Path, Path]:
    """The sources on *mnt*, the versions, and ``mnt/d/target`` holding version 0."""
    sources = _sources(mnt)
    versions = [c1z_version(i) for i in range(VERSIONS)]
    directory = mnt / "d"
    directory.mkdir()
    target = directory / "target"
    durable_put(target, versions[0])
    return sources, versions, directory, target


def _in_place_copy(source: Path, target: Path) -> None:
    """The story's broken protocol: truncate the published file, copy over it."""
    with open(source, "rb") as src, open(target, "r+b") as dst:
        dst.truncate(0)
        shutil.copyfileobj(src, dst, 256 << 10)


@pytest.fixture
def validator_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private tempfile.gettempdir(), inherited by forked writers, to count what
    validators.c1z leaves there."""
    scratch = tmp_path / "validator-tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


@pytest.fixture(params=["ext4", "xfs"])
def kill_fs(request: pytest.FixtureRequest) -> Iterator[tuple[str, Path]]:
    # Named orphans of ~3 MiB each pile up until the sweep (on ext4 they are
    # real copies): room for all of them. The image is sparse.
    with loop_mount(request.param, size_mb=2048) as mnt:
        yield request.param, mnt


# --------------------------------------------------------------------------- kill -9


@pytest.mark.slow
@pytest.mark.parametrize("staging", ["tmpfile", "named"])
def test_kill9_copy_of_c1z_never_tears_and_sweep_cleans(
    kill_fs: tuple[str, Path], staging: str, validator_tmp: Path
) -> None:
    fs, mnt = kill_fs
    sources, versions, directory, target = _c1z_setup(mnt)
    judge = Judge(target, versions, validator_tmp)

    def write(n: int) -> crashsafe.CopyResult:
        return crashsafe.atomic_copy(sources[n % VERSIONS], target, validate=validators.c1z)

    result = kill9_loop(
        directory, kills=KILLS, write=write, check=judge, staging=staging, ordered=False
    )
    method = result.returned.method
    _note(
        f"kill -9   atomic_copy c1z  {fs:<4} {staging:<7} method {method}: {result.kills} kills, "
        f"{result.torn} bad {dict(result.outcomes)}, target changed after {result.changed}; "
        f"orphans {result.orphans_before_sweep} -> swept {result.swept} -> left "
        f"{len(result.left_after_sweep)}; c1z scratch files left in TMPDIR "
        f"{judge.scratch_files} ({judge.scratch_bytes / (1 << 20):.0f} MiB); "
        f"{len(versions[0]) / (1 << 20):.1f} MiB c1z; at {result.plan()}, {result.seconds:.1f} s"
    )
    assert method == METHOD[fs]
    assert result.kills == KILLS
    # After every kill: accepted by validators.c1z AND one complete version.
    assert result.outcomes == Counter(complete=KILLS), (result.outcomes, judge.examples)
    # The kills landed in every phase (by construction: right after each call of
    # two copies that touches the directory, in turn): some before a commit,
    # some after one.
    assert 0 < result.changed < KILLS
    if staging == "named":
        assert result.orphans_before_sweep > 0  # ...and some while a temp file existed
    assert result.swept == result.orphans_before_sweep
    assert result.left_after_sweep == []
    assert leftovers(directory) == []
    assert os.listdir(directory) == ["target"]
    assert isinstance(judge(), int)
    assert list(validator_tmp.iterdir()) == []


@pytest.mark.slow
def test_kill9_harness_catches_in_place_copy(kill_fs: tuple[str, Path]) -> None:
    fs, mnt = kill_fs
    sources, versions, directory, target = _c1z_setup(mnt)
    judge = Judge(target, versions)

    def write(n: int) -> None:
        _in_place_copy(sources[n % VERSIONS], target)

    result = kill9_loop(
        directory, kills=KILLS, write=write, check=judge, staging="named", ordered=False
    )
    cut = result.outcomes["valid magic, zstd stream cut short"]
    _note(
        f"kill -9   BROKEN in place  {fs:<4}         {result.kills} kills: caught {result.torn} "
        f"{dict(result.outcomes)}; at {result.plan()}, {result.seconds:.1f} s; e.g. "
        + "; ".join(f"{k}: {v}" for k, v in judge.examples.items())
    )
    # The story's bug: the magic is there, the zstd stream is cut short, and
    # validators.c1z rejects it. No broken target is ever accepted.
    # Both by construction: kills land right after the truncate (an empty
    # target) and right after each write of the copy (a cut one).
    assert cut > 0, "the kill -9 loop missed the truncate-and-copy-in-place bug"
    assert result.outcomes["empty"] > 0, result.outcomes
    assert "ACCEPTED by c1z but no version" not in result.outcomes
    assert "a complete version REJECTED by c1z" not in result.outcomes


def test_kill9_during_c1z_validation_leaves_at_most_its_private_directory(
    tmp_path: Path, validator_tmp: Path
) -> None:
    """The scratch database is anonymous while it is decoded and named, in a
    private directory, only around the instant SQLite opens it: a writer killed
    right after each syscall of the validation that touches the temporary
    directory, in turn, leaves that directory exactly when the kill lands in
    its window, and never anything else; a stranger's file there is never
    touched."""
    source = tmp_path / "big.c1z"
    data = c1z_version(100)
    source.write_bytes(data)
    directory = tmp_path / "d"
    directory.mkdir()
    target = directory / "target"
    durable_put(target, data)
    # Someone else's file, shaped like what sweep() removes: never touched.
    stranger = validator_tmp / ".big.0123456789abcdef.4242-1-00000000.crashsafe-tmp"
    stranger.write_bytes(b"not the validator's")
    os.utime(stranger, (time.time() - 7200,) * 2)
    before = stranger.stat()
    left: list[list[str]] = []  # after each kill: what it left in the temporary directory

    def write(n: int) -> None:
        crashsafe.atomic_copy(source, target, validate=validators.c1z)

    def check() -> int | str:
        names = sorted(p.name for p in validator_tmp.iterdir() if p != stranger)
        left.append(names)
        for name in names:
            private = validator_tmp / name
            if not name.startswith(SCRATCH_PREFIX) or not private.is_dir():
                return f"not the validator's private directory: {name}"
            if stat.S_IMODE(private.stat().st_mode) != 0o700:
                return "the private directory is not 0700"
            inside = sorted(p.name for p in private.iterdir())
            if inside not in ([], ["database.sqlite"]):
                return f"unexpected files in the private directory: {inside}"
            # The next validation neither needs nor touches it...
            with open(source, "rb") as f:
                validators.c1z(f)
            if sorted(p.name for p in private.iterdir()) != inside:
                return "the next validation touched the private directory"
            shutil.rmtree(private)  # ...which is the system's to clean
        after = stranger.stat()
        if (after.st_ino, after.st_mtime_ns) != (before.st_ino, before.st_mtime_ns):
            return "a stranger's file was touched"
        return 0 if read_or_none(target) == data else "target is not the source"

    result = kill9_loop(
        directory,
        kills=24,
        write=write,
        check=check,
        staging="tmpfile",
        ordered=False,
        min_age=0,
        watch=validator_tmp,
    )
    left = left[-result.kills :]  # kill9_loop checks three times before the kills
    # The window of every recorded write: from the creation of the private
    # directory (included) to its removal (excluded).
    window: set[KillPoint] = set()
    for w in {p.write for p in result.points}:
        calls = [p for p in result.points if p.write == w]
        made = next(i for i, p in enumerate(calls) if p.name in ("mkdir", "mkdirat"))
        removed = next(
            i
            for i, p in enumerate(calls)
            if i > made
            and (p.name == "rmdir" or (p.name == "unlinkat" and "AT_REMOVEDIR" in p.call))
        )
        window |= set(calls[made:removed])
    named = [p for p, names in zip(result.aimed, left, strict=True) if names]
    _note(
        f"kill -9   during validators.c1z, right after each call touching the scratch "
        f"directory: {result.kills} kills at {result.plan()}; {len(named)} left its private "
        f"directory (all aimed inside that window), nothing else; {result.seconds:.1f} s"
    )
    assert result.outcomes == Counter(complete=result.kills), result.outcomes
    assert all(len(names) <= 1 for names in left), left
    # A name is left exactly by the kills that landed while the file had one,
    # and some did (by construction: the link is a crash point).
    assert set(named) == {p for p in result.aimed if p in window}
    assert named


# --------------------------------------------------------------------------- power cut

COPY_ATOMIC = WRITERS / "copy_atomic.py"
# Deliberately broken: shutil.copyfile (sendfile on Linux) to a temporary name, rename, no fsync.
COPY_BROKEN = WRITERS / "copy_broken.py"


def _run(
    mnt: Path, writer: Path, extra: list[str], *, crashsafe_temps: bool
) -> tuple[power_cut.PowerCutRun, Path]:
    """The source on the same filesystem (a reflink needs that), fsynced before."""
    (mnt / "src").mkdir()
    source = mnt / "src" / "new.bin"
    durable_put(source, payload(NEW))
    return cut_one_file(mnt, writer, source, extra, crashsafe_temps=crashsafe_temps)


@pytest.mark.slow
@pytest.mark.parametrize("staging", ["tmpfile", "named"])
def test_power_cut_at_every_syscall_of_a_durable_copy(
    cut_fs: tuple[str, Path], staging: str
) -> None:
    fs, mnt = cut_fs
    run, directory = _run(mnt, COPY_ATOMIC, [staging], crashsafe_temps=True)
    method = traces.copy_method(run.trace)
    commit, dir_sync = durable_marks(run, directory)
    _note(
        power_cut.describe(
            fs,
            f"atomic_copy {staging} {method}",
            run,
            f"commit #{commit}, dir fsync #{dir_sync}",
        )
    )

    assert method == METHOD[fs.partition("-")[0]]
    # Old or new at every point, old before the rename, new once the directory
    # fsync returned; the source intact (inspect() says "source damaged" if not).
    check_durable(run, directory, commit, dir_sync)


@pytest.mark.slow
def test_power_cut_harness_catches_copy_without_fsync(cut_fs: tuple[str, Path]) -> None:
    fs, mnt = cut_fs
    run, _ = _run(mnt, COPY_BROKEN, [], crashsafe_temps=False)
    commit = commit_of(run)
    method = traces.copy_method(run.trace)
    caught, caught_text = damage(run)
    _note(
        power_cut.describe(fs, f"BROKEN copyfile {method}", run, f"commit #{commit}") + caught_text
    )
    # A rename that reached the journal without the data: an empty (or
    # partial) target, the bug the durable protocol exists to prevent.
    assert caught, "the harness missed the copy without fsync: it proves nothing"
    assert power_cut.violations(run, commit, None) != []
