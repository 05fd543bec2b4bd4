"""Update in place, atomically: modes r+, a+ and w+ (and their b and t forms).

Promises shown here, on real files and filesystems:

* **open()'s meaning.** Each mode on an existing and a missing file reads,
  seeks and writes as ``open()`` does (the same operations on both, the same
  reads and the same bytes at the end), binary and text; ``r+`` of a missing
  file is ``FileNotFoundError`` naming the path, before anything is created.
* **All or nothing, nothing lost on error, no debris, mode and owner kept**, as
  for every write: the target is untouched until the commit, an exception
  publishes nothing; no room for the copy (a full tmpfs) is ``ENOSPC`` naming
  the target, at once, with nothing left.
* **zipfile** appends a member to an archive through ``r+b``.
* **The copy is a reflink** on xfs and btrfs: FIEMAP shows the staged file's
  extents shared with the target's, and the published file on the target's
  old blocks but for the patched one.
* **A concurrent writer**: one that writes the target in place during the copy
  makes the open fail (strace freezes the copy half-way); read-modify-write
  under a ``FileLock`` loses no update.
* **Power cut after every syscall** (loop xfs and ext4 ``noauto_da_alloc``) of
  a durable ``r+b`` patch of a 1 MiB file: old before the rename, new from the
  directory fsync on, never anything else. The broken variants are caught:
  the same patches written in place (pwrite + fsync each) leave a mix, and
  the staged copy committed without fsync (``durability="none"``) leaves an
  empty file on ext4 and the old content after return on xfs. A ``kill -9``
  after every syscall of the same patch: old or new, staged files all swept.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import stat
import struct
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import pytest

import crashsafe
from crashsafe.atomic import TextMode
from crashsafe.errors import VerificationError
from tests import children
from tests.harness import power_cut, traces
from tests.harness.checks import entries, leftovers
from tests.harness.mounts import loop_mount, tmpfs
from tests.harness.one_file import check_durable, commit_of, durable_marks
from tests.harness.payloads import durable_put, read_or_none
from tests.harness.power_cut import WRITERS
from tests.harness.require import require_root, require_tools
from tests.harness.summary import module_summary
from tests.writers.patches import old_content, patched

UPDATE_MODES = ["r+", "r+t", "r+b", "a+", "a+t", "a+b", "w+", "w+t", "w+b"]

_note, _print_summary = module_summary("in-place update summary")


def _data(mode: str, text: str) -> str | bytes:
    return text.encode() if "b" in mode else text


# ---------------------------------------------------------------- open()'s meaning

# Operations run on our file object and on open()'s, side by side.
Op = Callable[[IO[Any], str], object]
SCRIPT: list[Op] = [
    lambda f, m: f.tell(),
    lambda f, m: f.read(4),
    lambda f, m: f.write(_data(m, "AB")),
    lambda f, m: f.seek(0),
    lambda f, m: f.read(),
    lambda f, m: f.seek(0),
    lambda f, m: f.write(_data(m, "xy")),  # a+: lands at the end all the same
    lambda f, m: f.seek(0, os.SEEK_END),
    lambda f, m: f.tell(),
    lambda f, m: f.write(_data(m, "end")),
    lambda f, m: f.seek(0),
    lambda f, m: f.read(),
]


@pytest.mark.parametrize("existing", [True, False], ids=["existing", "missing"])
@pytest.mark.parametrize("mode", UPDATE_MODES)
def test_update_modes_read_seek_and_write_as_open_does(
    workdir: Path, staging: str, mode: str, existing: bool
) -> None:
    ours, theirs = workdir / "ours", workdir / "theirs"
    if existing:
        for path in (ours, theirs):
            path.write_bytes(b"old content\n")
    if mode.startswith("r") and not existing:
        with pytest.raises(FileNotFoundError):
            open(theirs, mode)  # noqa: SIM115 - the baseline refuses too
        with pytest.raises(FileNotFoundError) as info:
            crashsafe.AtomicFile(ours, mode)  # type: ignore[call-overload]
        assert info.value.filename == str(ours)
        assert info.value.errno == errno.ENOENT
        assert entries(workdir) == []
        return
    seen: list[list[object]] = []
    with open(theirs, mode) as f:
        seen.append([op(f, mode) for op in SCRIPT])
    with crashsafe.atomic_open(ours, mode) as g:  # type: ignore[call-overload]
        seen.append([op(g, mode) for op in SCRIPT])
        assert read_or_none(ours) == (b"old content\n" if existing else None)
    assert seen[0] == seen[1]
    assert ours.read_bytes() == theirs.read_bytes()
    assert entries(workdir) == ["ours", "theirs"]


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "utf-16"])
@pytest.mark.parametrize("mode", ["r+", "a+", "w+"])
def test_text_update_modes_encode_as_open_does(
    workdir: Path, staging: str, mode: str, encoding: str
) -> None:
    # utf-16: a+ must add no second BOM; r+ rewrites the one at offset 0.
    ours, theirs = workdir / "ours", workdir / "theirs"
    for path in (ours, theirs):
        path.write_text("première\nligne\n", encoding=encoding)

    def edit(f: IO[str]) -> tuple[str, str]:
        first = f.read()
        f.write("encore\r\n")
        f.seek(0)
        return first, f.read()

    with open(theirs, mode, encoding=encoding, newline="") as f:
        expected = edit(f)
    text_mode = cast("TextMode", mode)
    with crashsafe.atomic_open(ours, text_mode, encoding=encoding, newline="") as g:
        assert edit(g) == expected
    assert ours.read_bytes() == theirs.read_bytes()


def test_r_plus_patches_a_header_and_publishes_at_commit(workdir: Path, staging: str) -> None:
    target = workdir / "big.bin"
    old = os.urandom(3 << 20)  # more than one copy step of the fallback paths
    target.write_bytes(old)
    target.chmod(0o640)
    inode = target.stat().st_ino
    with crashsafe.atomic_open(target, "r+b") as f:
        assert f.read(16) == old[:16]
        f.seek(0)
        f.write(b"NEW HEADER 16 B!")
        f.flush()
        assert target.read_bytes() == old  # the target untouched until the commit
        assert target.stat().st_ino == inode
    assert target.read_bytes() == b"NEW HEADER 16 B!" + old[16:]
    assert target.stat().st_ino != inode
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


@pytest.mark.parametrize("mode", ["r+b", "a+b", "w+b", "r+"])
@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_exception_publishes_nothing_and_leaves_no_debris(
    workdir: Path, staging: str, mode: str, error: type[BaseException]
) -> None:
    target = workdir / "f"
    target.write_bytes(b"old")
    target.chmod(0o604)
    with pytest.raises(error), crashsafe.atomic_open(target, mode) as f:  # type: ignore[call-overload]
        f.seek(0)
        f.write(_data(mode, "dropped" * 1000))
        f.flush()
        raise error
    assert target.read_bytes() == b"old"
    assert stat.S_IMODE(target.stat().st_mode) == 0o604
    assert entries(workdir) == ["f"]


@pytest.mark.parametrize("mode", ["r+b", "a+b", "w+b"])
def test_mode_and_owner_are_kept(workdir: Path, staging: str, mode: str) -> None:
    require_root()
    target = workdir / "f"
    target.write_bytes(b"old")
    os.chown(target, 65534, 65534)
    target.chmod(0o2750)  # setgid survives the writes to the staged file too
    with crashsafe.atomic_open(target, mode) as f:  # type: ignore[call-overload]
        f.write(b"new")
    st = target.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o2750)


def test_r_plus_of_a_missing_file_creates_nothing_not_even_parents(workdir: Path) -> None:
    target = workdir / "no" / "such" / "f"
    with pytest.raises(FileNotFoundError):
        crashsafe.AtomicFile(target, "r+b", parents=True)
    assert entries(workdir) == []
    (workdir / "dangling").symlink_to("nowhere")
    with pytest.raises(FileNotFoundError) as info:
        crashsafe.AtomicFile(workdir / "dangling", "r+b")
    assert info.value.filename == str(workdir / "dangling")
    assert entries(workdir) == ["dangling"]


def test_r_plus_follows_a_symlink_or_refuses_it(workdir: Path, staging: str) -> None:
    real, link = workdir / "real", workdir / "link"
    real.write_bytes(b"old!")
    link.symlink_to("real")
    with crashsafe.atomic_open(link, "r+b") as f:
        f.write(b"NEW")
    assert link.is_symlink()
    assert real.read_bytes() == b"NEW!"
    # Without following, there is no regular file to update: open(O_NOFOLLOW)'s ELOOP.
    with pytest.raises(OSError, match="symbolic link") as info:
        crashsafe.AtomicFile(link, "r+b", follow_symlinks=False)
    assert (info.value.errno, info.value.filename) == (errno.ELOOP, str(link))
    assert link.is_symlink()
    assert entries(workdir) == ["link", "real"]


@pytest.mark.parametrize("mode", ["r+b", "a+b"])
def test_validators_see_the_whole_updated_file(workdir: Path, staging: str, mode: str) -> None:
    target = workdir / "doc.json"
    target.write_bytes(b'{"a": 1}')
    with (
        pytest.raises(VerificationError),
        crashsafe.atomic_open(target, mode, validate=crashsafe.validators.json) as f,  # type: ignore[call-overload]
    ):
        f.write(b"trailing junk")
    assert target.read_bytes() == b'{"a": 1}'
    with crashsafe.atomic_open(target, "r+b", validate=crashsafe.validators.json) as f:
        f.seek(6)
        f.write(b"2}")
    assert target.read_bytes() == b'{"a": 2}'


@pytest.mark.parametrize("mode", ["r+b", "a+"])
def test_no_room_for_the_copy_is_enospc_naming_the_target(mode: str) -> None:
    # A tmpfs has no reflink: the copy needs room for every byte, reserved first.
    with tmpfs(size_kb=1024) as mnt:
        target = mnt / "f"
        old = os.urandom(700 << 10)
        target.write_bytes(old)
        with pytest.raises(OSError) as info:
            crashsafe.AtomicFile(target, mode)  # type: ignore[call-overload]
        assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(target))
        assert target.read_bytes() == old
        assert entries(mnt) == ["f"]


def test_zipfile_appends_a_member_through_r_plus_b(workdir: Path, staging: str) -> None:
    target = workdir / "archive.zip"
    big = os.urandom(300_000)
    with zipfile.ZipFile(target, "w") as z:
        z.writestr("old.txt", "first member")
        z.writestr("big.bin", big)
    before = target.read_bytes()
    with crashsafe.atomic_open(target, "r+b") as f, zipfile.ZipFile(f, "a") as z:
        z.writestr("new.txt", "added through atomic_open")
        z.close()
        assert target.read_bytes() == before  # nothing visible before the commit
    with zipfile.ZipFile(target) as z:
        assert z.testzip() is None
        assert z.namelist() == ["old.txt", "big.bin", "new.txt"]
        assert z.read("old.txt") == b"first member"
        assert z.read("big.bin") == big
        assert z.read("new.txt") == b"added through atomic_open"


# ---------------------------------------------------------------- the copy is a reflink

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_SHARED = 0x2000
_EXTENT = struct.Struct("=QQQ16xI12x")  # fe_logical, fe_physical, fe_length, fe_flags
_HEAD = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, mapped, count, reserved


def extents(fd: int, count: int = 64) -> list[tuple[int, int, int, bool]]:
    """The file's extents from the kernel (FIEMAP, synced first):
    (logical, physical, length, shared) each."""
    buf = bytearray(_HEAD.pack(0, 2**64 - 1, FIEMAP_FLAG_SYNC, 0, count, 0))
    buf += bytes(_EXTENT.size * count)
    fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
    mapped = _HEAD.unpack_from(buf)[3]
    found = []
    for i in range(mapped):
        logical, physical, length, flags = _EXTENT.unpack_from(buf, _HEAD.size + i * _EXTENT.size)
        found.append((logical, physical, length, bool(flags & FIEMAP_EXTENT_SHARED)))
    return found


def blocks(fd: int) -> dict[int, tuple[int, bool]]:
    """Physical block and shared flag of each 4 KiB block of the file, by offset."""
    return {
        logical + k: (physical + k, shared)
        for logical, physical, length, shared in extents(fd)
        for k in range(0, length, 4096)
    }


@pytest.mark.parametrize("fstype", ["xfs", "btrfs"])
def test_the_staged_copy_shares_the_targets_blocks(fstype: str) -> None:
    require_tools(f"mkfs.{fstype}")
    with loop_mount(fstype) as mnt:
        target = mnt / "big.bin"
        durable_put(target, os.urandom(8 << 20))
        with open(target, "rb") as old:
            old_blocks = blocks(old.fileno())
            assert not any(shared for _, shared in old_blocks.values())
            with crashsafe.atomic_open(target, "r+b") as f:
                staged = blocks(f.fileno())
                # Every block of the copy is one of the target's, shared.
                assert staged == {off: (phys, True) for off, (phys, _) in old_blocks.items()}
                f.write(b"16 bytes patched")
                f.flush()
                patched_blocks = blocks(f.fileno())
            after = blocks(old.fileno())  # the old inode, still open, unlinked now
        with open(target, "rb") as new:
            published = blocks(new.fileno())
    # Copy-on-write moved the first block only; the rest is on the old blocks.
    assert patched_blocks[0][0] != old_blocks[0][0]
    assert {o: p for o, (p, _) in published.items() if o} == {
        o: p for o, (p, _) in old_blocks.items() if o
    }
    assert published[0][0] == patched_blocks[0][0]
    assert sum(shared for _, shared in patched_blocks.values()) == len(old_blocks) - 1
    if fstype == "xfs":
        # xfs tracks sharing per block; btrfs per extent, and the old file's
        # one extent is still referenced by the new file's other blocks.
        assert after[0] == (old_blocks[0][0], False)
    _note(
        f"reflink {fstype}: 8 MiB r+b patch: {len(old_blocks)} blocks shared with the "
        f"target while staged, 1 moved by the patch; published on "
        f"{len(old_blocks) - 1} of the old blocks"
    )


# ---------------------------------------------------------------- concurrent writers

FREEZE_IN_COPY = """
import sys
path = sys.argv[1]
report(**attempt(lambda: atomic_open(path, "r+b").__enter__()))
"""


def test_a_target_written_during_the_copy_is_refused(tmp_path: Path) -> None:
    """strace freezes the opener at its second copy_file_range (a 40 MiB file
    moves in 16 MiB steps: half of it is copied); the test then writes the
    target in place and lets the opener go: it raises VerificationError naming
    the target, and nothing is staged. On ext4, which has no reflink."""
    require_tools("strace", "mkfs.ext4")
    log = tmp_path / "strace.log"
    with loop_mount("ext4") as mnt:
        target = mnt / "f"
        target.write_bytes(os.urandom(40 << 20))
        inject = "copy_file_range:signal=STOP:when=2"
        strace = ["strace", "-f", "-qq", "-e", "trace=copy_file_range", "-e", f"inject={inject}"]
        child = children.start(
            FREEZE_IN_COPY,
            str(target),
            prelude=children.REPORT,
            wrapper=[*strace, "-o", str(log)],
            env={"CRASHSAFE_STAGING": "tmpfile"},
        )
        try:

            def frozen() -> bool:
                assert child.poll() is None, "the opener ended without being frozen"
                return log.exists() and traces.STOPPED in log.read_text()

            children.wait_until(frozen)
            python = int(log.read_text().split()[0])  # strace's first column: the pid
            with open(target, "r+b") as f:  # someone else, writing in place
                f.seek(30 << 20)
                f.write(b"theirs")
            os.kill(python, signal.SIGCONT)
            out, _ = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert entries(mnt) == ["f", "lost+found"]
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["raised"] == "VerificationError"
    assert result["filename"] == str(target)
    assert "changed while its content was copied" in result["message"]


COUNTER = """
import sys
path, rounds = sys.argv[1], int(sys.argv[2])
for _ in range(rounds):
    with crashsafe.FileLock(path), atomic_open(path, "r+b", durability="none") as f:
        n = int(f.read())
        f.seek(0)
        f.write(b"%08d" % (n + 1))
report(done=rounds)
"""


def test_read_modify_write_under_a_file_lock_loses_no_update(workdir: Path) -> None:
    target = workdir / "counter"
    target.write_bytes(b"%08d" % 0)
    procs = [children.start(COUNTER, str(target), "25", prelude=children.REPORT) for _ in range(4)]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and b'"done": 25' in out
    assert int(target.read_bytes()) == 100
    assert entries(workdir) == [".counter.lock", "counter"]


# ---------------------------------------------------------------- power cut at every syscall

PATCH = WRITERS / "inplace_patch.py"
BROKEN = WRITERS / "inplace_broken.py"
OLD, NEW = old_content(), patched(old_content())
FIRST_ONLY, SECOND_ONLY = patched(OLD, (0,)), patched(OLD, (1,))


def judge(data: bytes | None) -> str:
    """What the target holds: "old", "new", or what went wrong."""
    named = {OLD: "old", NEW: "new", FIRST_ONLY: "mix", SECOND_ONLY: "mix"}
    if data is None:
        return "missing"
    if data in named:
        return named[data]
    if not data:
        return "empty"
    if data.count(0) == len(data):
        return "zeros"
    return "partial" if OLD.startswith(data) or NEW.startswith(data) else "torn"


def _cut(
    mnt: Path,
    writer: Path,
    args: list[str],
    *,
    temps: bool,
    modes: tuple[str, ...] = power_cut.MODES,
) -> tuple[power_cut.PowerCutRun, Path]:
    directory = mnt / "d"
    directory.mkdir()
    target = directory / "target"

    def prepare() -> None:
        for name in os.listdir(directory):
            if name != "target":
                os.unlink(directory / name)
        durable_put(target, OLD, 0o640)

    def inspect() -> str:
        found = judge(read_or_none(target))
        if found in ("old", "new") and stat.S_IMODE(target.stat().st_mode) != 0o640:
            return f"{found} with mode {stat.S_IMODE(target.stat().st_mode):o}"
        return found

    run = power_cut.power_cut_every_syscall(
        mnt,
        writer,
        [str(target), *args],
        prepare=prepare,
        inspect=inspect,
        sweep_dir=directory if temps else (),
        modes=modes,
    )
    return run, directory


@pytest.mark.slow
@pytest.mark.parametrize("staging", ["tmpfile", "named"])
def test_power_cut_at_every_syscall_of_an_r_plus_patch(
    cut_fs: tuple[str, Path], staging: str
) -> None:
    fs, mnt = cut_fs
    run, directory = _cut(mnt, PATCH, [staging], temps=True)
    method = traces.copy_method(run.trace)
    commit, dir_sync = durable_marks(run, directory)
    marks = f"commit #{commit}, dir fsync #{dir_sync}"
    _note(power_cut.describe(fs, f"r+b patch {staging} {method}", run, marks))
    assert method == ("reflink" if fs == "xfs" else "copy_file_range")
    check_durable(run, directory, commit, dir_sync)


@pytest.mark.slow
def test_power_cut_harness_catches_patches_written_in_place(cut_fs: tuple[str, Path]) -> None:
    fs, mnt = cut_fs
    run, _ = _cut(mnt, BROKEN, [], temps=False)
    outcomes = [t.outcome for t in run.trials]
    _note(power_cut.describe(fs, "BROKEN in place pwrite+fsync", run, "no commit point"))
    assert "mix" in outcomes, "the harness missed a half-patched file: it proves nothing"


@pytest.mark.slow
def test_power_cut_harness_catches_the_copy_committed_without_fsync(
    cut_fs: tuple[str, Path],
) -> None:
    fs, mnt = cut_fs
    # Only with the journal committed before the cut, as any other process may
    # do: that is what puts the rename on disk without the data.
    run, _ = _cut(mnt, PATCH, ["tmpfile", "none"], temps=False, modes=("commit",))
    commit = commit_of(run)
    bad = power_cut.violations(run, commit, None)
    _note(power_cut.describe(fs, "BROKEN r+b without fsync", run, f"commit #{commit}"))
    if fs.startswith("ext4"):
        # copy_file_range through the page cache: a rename that reached the
        # journal without the data.
        assert [why for why, _, _ in bad if why == "empty target"]
    # On xfs the clone and the rename are logged, the patched block is not:
    # the call returned, and the cut took the patch.
    assert power_cut.violations(run, commit, run.end) != [], "the harness missed it"


@pytest.mark.slow
@pytest.mark.parametrize("staging", ["named"])
def test_kill_after_every_syscall_of_an_r_plus_patch(tmp_path: Path, staging: str) -> None:
    """kill -9 right after each syscall of the same patch: old or new, and sweep
    removes whatever staged file a kill left (named staging, the one that can
    leave one at most points; O_TMPFILE's single window is in the power-cut runs)."""
    directory = tmp_path / "d"
    directory.mkdir()
    target = directory / "target"

    def prepare() -> None:
        for name in os.listdir(directory):
            os.unlink(directory / name)
        durable_put(target, OLD, 0o640)

    run = power_cut.kill_every_syscall(
        PATCH,
        [str(target), staging],
        prepare=prepare,
        inspect=lambda: judge(read_or_none(target)),
        sweep_dir=directory,
    )
    commit = commit_of(run)
    outcomes = [t.outcome for t in run.trials]
    found = sum(len(t.leftovers) for t in run.trials)
    _note(
        f"kill -9 {staging}: {len(run.trials)} kills, one after each syscall of the r+b "
        f"patch: {dict(Counter(outcomes))}; staged files left {found}, all swept; "
        f"{run.seconds:.0f} s"
    )
    assert power_cut.violations(run, commit, run.end) == []
    assert set(outcomes) == {"old", "new"}
    assert [t.left_after_sweep for t in run.trials if t.left_after_sweep] == []
    assert leftovers(directory) == []
    assert found > 0  # the harness saw the staged files it must see swept
