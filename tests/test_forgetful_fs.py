"""The filesystem that forgets (tests/harness/forgetful.py) is right: it loses exactly
what the conservative model lets a crash lose, and nothing it must keep.

It proves nothing about crashsafe if it is wrong, so each rule of the model is checked
here on its own: unsynced data lost or kept; fsync keeps it; an entry change without a
directory fsync lost or kept, both outcomes listed; a rename needs both directories;
torn writes; restore and the caches; and the two writers that bracket every proof, a
naive ``open("w")`` that it must catch and crashsafe's ``atomic_write``, which shows only
old or new.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import crashsafe
from tests import children
from tests.harness.checks import leftovers
from tests.harness.forgetful import CrashState, Forgetful, StaleStateError, forgetful
from tests.harness.inject import fault, run_traced
from tests.harness.mounts import loop_mount, overlay, tmpfs
from tests.harness.require import require_tools

PAGE = 4096


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forgetful]:
    with forgetful(tmp_path_factory.mktemp("backing")) as mounted:
        yield mounted


@pytest.fixture
def fs(mounted: Forgetful) -> Forgetful:
    """The module's filesystem, empty and reset (a mount costs about half a second)."""
    mounted.reset()
    return mounted


def contents(fs: Forgetful, rel: str, states: list[CrashState]) -> list[bytes | None]:
    """What each state (restored in turn) holds at *rel* (None: no such file), read
    through the mount as a reader after the reboot would."""
    out: list[bytes | None] = []
    for state in states:
        fs.restore(state)
        try:
            out.append((fs.mnt / rel).read_bytes())
        except FileNotFoundError:
            out.append(None)
    return out


def write_file(path: Path, data: bytes, *, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- file data ----------------------------------------------------------------------------


def test_an_unsynced_write_is_lost_or_kept(fs: Forgetful) -> None:
    (fs.mnt / "f").write_bytes(b"old!")
    fs.sync_all()
    with open(fs.mnt / "f", "r+b") as f:
        f.write(b"new!")
    assert (fs.mnt / "f").read_bytes() == b"new!"  # readers see it at once
    assert fs.durable_view() == {"f": b"old!"}
    states = fs.crash_states()
    assert states[0].family.startswith("pessimistic")
    assert states[1].family.startswith("optimistic")
    assert set(contents(fs, "f", states)) == {b"old!", b"new!"}


def test_fsync_makes_the_data_durable(fs: Forgetful) -> None:
    (fs.mnt / "f").write_bytes(b"old!")
    fs.sync_all()
    with open(fs.mnt / "f", "r+b") as f:
        f.write(b"new!")
        f.flush()
        os.fsync(f.fileno())
    assert fs.durable_view() == {"f": b"new!"}
    states = fs.crash_states()
    assert len(states) == 1  # nothing is left to lose: pessimistic and optimistic are one
    assert contents(fs, "f", states) == [b"new!"]


def test_fdatasync_keeps_the_data_not_a_mode_change(fs: Forgetful) -> None:
    (fs.mnt / "f").write_bytes(b"old!")
    os.chmod(fs.mnt / "f", 0o644)
    fs.sync_all()
    with open(fs.mnt / "f", "r+b") as f:
        f.write(b"new!")
        os.fchmod(f.fileno(), 0o600)
        f.flush()
        os.fdatasync(f.fileno())
    modes = set()
    for state in fs.crash_states():
        fs.restore(state)
        assert (fs.mnt / "f").read_bytes() == b"new!"
        modes.add((fs.mnt / "f").stat().st_mode & 0o777)
    assert modes == {0o644, 0o600}


def test_a_failed_fsync_drops_the_data_and_a_retry_succeeds(fs: Forgetful) -> None:
    # Linux's semantics (PostgreSQL, 2018): the dirty pages are dropped and marked clean.
    (fs.mnt / "f").write_bytes(b"old")
    fs.sync_all()
    fs.fail("fsync", errno.EIO)
    with open(fs.mnt / "f", "wb") as f:  # truncate, then write
        f.write(b"new")
        f.flush()
        with pytest.raises(OSError) as raised:
            os.fsync(f.fileno())
        assert raised.value.errno == errno.EIO
        assert (fs.mnt / "f").read_bytes() == b"new"  # still in the page cache
        found = set(contents(fs, "f", fs.crash_states()))
        assert found == {b"old", b""}  # the truncate may persist, the write never
    fs.reset()
    (fs.mnt / "f").write_bytes(b"old")
    fs.sync_all()
    fs.fail("fsync", errno.EIO)
    with open(fs.mnt / "f", "wb") as f:
        f.write(b"new")
        f.flush()
        with pytest.raises(OSError):
            os.fsync(f.fileno())
        os.fsync(f.fileno())  # the retry succeeds...
    assert fs.durable_view() == {"f": b""}  # ...and the data is gone
    assert fs.calls("fsync") == 2


def test_torn_writes_land_by_pages_or_leave_zeros_or_garbage(fs: Forgetful) -> None:
    (fs.mnt / "f").write_bytes(b"")
    fs.sync_all()
    data = b"a" * PAGE + b"b" * PAGE + b"c" * PAGE
    with open(fs.mnt / "f", "r+b") as f:
        f.write(data)
    torn, whole = fs.crash_states(), fs.crash_states(torn=False)  # both of this crash
    found = set(contents(fs, "f", torn))
    assert {b"", data} <= found
    assert b"a" * PAGE in found  # the first page alone
    assert bytes(PAGE) + b"b" * PAGE in found  # the second page alone: a hole before it
    assert bytes(3 * PAGE) in found  # the new size, no data: zeros
    assert b"\xa5" * (3 * PAGE) in found  # or garbage
    assert set(contents(fs, "f", whole)) == {b"", data}


def test_appends_are_recorded_where_they_land(fs: Forgetful) -> None:
    (fs.mnt / "log").write_bytes(b"one\n")
    fs.sync_all()
    with open(fs.mnt / "log", "ab") as f:  # O_APPEND from the open
        f.write(b"two\n")
    fd = os.open(fs.mnt / "log", os.O_WRONLY)  # O_APPEND added later, as crashsafe's copies do
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        os.write(fd, b"three\n")
    finally:
        os.close(fd)
    found = set(contents(fs, "log", fs.crash_states(torn=False)))
    # Each append lost or kept; a later one kept without an earlier leaves a hole.
    assert found == {b"one\n", b"one\ntwo\n", b"one\ntwo\nthree\n", b"one\n\0\0\0\0three\n"}


# -- directory entries --------------------------------------------------------------------


def test_a_create_without_a_directory_fsync_can_be_lost(fs: Forgetful) -> None:
    write_file(fs.mnt / "new", b"data", sync=True)  # the file synced, not its directory
    assert fs.durable_view() == {}
    assert set(contents(fs, "new", fs.crash_states())) == {None, b"data"}
    write_file(fs.mnt / "new2", b"data", sync=True)
    sync_dir(fs.mnt)
    assert fs.durable_view() == {"new": b"data", "new2": b"data"}
    assert contents(fs, "new2", fs.crash_states()) == [b"data"]


def test_a_rename_after_the_files_fsync_is_old_or_new_until_the_directory_is_synced(
    fs: Forgetful,
) -> None:
    (fs.mnt / "target").write_bytes(b"old")
    fs.sync_all()
    write_file(fs.mnt / "tmp", b"new", sync=True)
    os.rename(fs.mnt / "tmp", fs.mnt / "target")
    states = fs.crash_states()
    assert set(contents(fs, "target", states)) == {b"old", b"new"}  # both listed
    write_file(fs.mnt / "tmp", b"newer", sync=True)
    os.rename(fs.mnt / "tmp", fs.mnt / "target")
    sync_dir(fs.mnt)
    assert set(contents(fs, "target", fs.crash_states())) == {b"newer"}


@pytest.mark.parametrize("synced", [(), ("a",), ("b",), ("a", "b")])
def test_a_rename_between_directories_needs_both_synced(
    fs: Forgetful, synced: tuple[str, ...]
) -> None:
    for d in ("a", "b"):
        (fs.mnt / d).mkdir()
    (fs.mnt / "a" / "f").write_bytes(b"x")
    fs.sync_all()
    os.rename(fs.mnt / "a" / "f", fs.mnt / "b" / "f")
    for d in synced:  # the source's directory, the destination's, or both
        sync_dir(fs.mnt / d)
    where = set()
    for state in fs.crash_states():
        fs.restore(state)
        where.add(tuple(sorted(p.name for p in (fs.mnt / "a", fs.mnt / "b") if (p / "f").exists())))
    assert where == ({("b",)} if len(synced) == 2 else {("a",), ("b",)})


def test_unlink_mkdir_symlink_and_link_wait_for_their_directory(fs: Forgetful) -> None:
    (fs.mnt / "gone").write_bytes(b"g")
    (fs.mnt / "f").write_bytes(b"f")
    fs.sync_all()
    os.unlink(fs.mnt / "gone")
    (fs.mnt / "d").mkdir()
    os.symlink("f", fs.mnt / "s")
    os.link(fs.mnt / "f", fs.mnt / "h")
    names = set()
    states = fs.crash_states(limit=100)
    for state in states:
        fs.restore(state)
        names.add(frozenset(os.listdir(fs.mnt)))
    # Four independent changes, each lost or kept: all 16 combinations.
    assert len(names) == 16
    assert frozenset({"gone", "f"}) in names
    assert frozenset({"f", "d", "s", "h"}) in names
    fs.restore(states[0])  # back to "gone" and "f": the same again, then the directory fsync
    os.unlink(fs.mnt / "gone")
    (fs.mnt / "d").mkdir()
    os.symlink("f", fs.mnt / "s")
    os.link(fs.mnt / "f", fs.mnt / "h")
    sync_dir(fs.mnt)
    assert fs.durable_view() == {"d": None, "f": b"f", "h": b"f", "s": None}
    assert len(fs.crash_states()) == 1


def test_states_are_distinct_and_bounded_by_the_limit(fs: Forgetful) -> None:
    for i in range(12):  # 12 unsynced creates: 4,096 combinations, sampled
        (fs.mnt / f"f{i}").write_bytes(b"")
    states = fs.crash_states(limit=20, seed=1)
    again = fs.crash_states(limit=20, seed=1)
    assert [s.kept for s in again] == [s.kept for s in states]  # seeded: the same sample
    assert len(states) == 20
    listings = set()
    for state in states:
        fs.restore(state)
        listings.add(frozenset(os.listdir(fs.mnt)))
    assert len(listings) == 20
    assert frozenset() in listings and len(max(listings, key=len)) == 12
    assert "lost [" in states[0].describe()


def tree(top: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under *top*: kind, mode and content (or link target), and which
    names share a file (by their first name), read from the backing directory."""
    out: dict[str, tuple[object, ...]] = {}
    first: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            rel = str(p.relative_to(top))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777)
            else:
                same = first.setdefault(st.st_ino, rel)
                out[rel] = ("file", st.st_mode & 0o7777, p.read_bytes(), same)
    return out


def random_workload(mnt: Path, rng: random.Random, steps: int, *, syncs: bool) -> None:
    """*steps* random operations through the mount (fsyncs among them with *syncs*),
    each of which may fail as it would on any filesystem (a missing name, a directory
    not empty)."""
    names = ["a", "b", "c", "d/e", "d/f", "g/h"]
    ops = ["write", "write", "append", "trunc", "rename", "link", "unlink", "mkdir", "rmdir"]
    ops += ["symlink", "chmod"] + (["fsync", "dirsync"] if syncs else [])
    for _ in range(steps):
        op = rng.choice(ops)
        p, q = mnt / rng.choice(names), mnt / rng.choice(names)
        with contextlib.suppress(OSError):
            if op in ("write", "append", "trunc", "fsync"):
                flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if op == "append" else 0)
                fd = os.open(p, flags, 0o644)
                try:
                    data = rng.randbytes(rng.randrange(1, 2 * PAGE))
                    if op == "trunc":
                        os.ftruncate(fd, rng.randrange(3 * PAGE))
                    elif op == "fsync":
                        os.fsync(fd)
                    elif op == "write":
                        os.pwrite(fd, data, rng.randrange(2 * PAGE))
                    else:
                        os.write(fd, data)
                finally:
                    os.close(fd)
            elif op == "rename":
                os.rename(p, q)
            elif op == "link":
                os.link(p, q)
            elif op == "unlink":
                os.unlink(p)
            elif op == "mkdir":
                p.mkdir()
            elif op == "rmdir":
                p.rmdir()
            elif op == "symlink":
                os.symlink(rng.choice(names), p)
            elif op == "chmod" and not p.is_symlink():
                os.chmod(p, rng.choice([0o600, 0o640, 0o755]))
            elif op == "dirsync":
                sync_dir(p.parent)


@pytest.mark.parametrize("seed", range(6))
def test_the_ledger_agrees_with_the_disk_on_random_workloads(fs: Forgetful, seed: int) -> None:
    # Whatever the mount did, its optimistic state (everything kept) is exactly what the
    # backing directory holds; with no fsync since the last sync, its pessimistic state
    # is exactly what was there then. A recorder that put a write, an append, a rename
    # or a link in the wrong place fails here.
    rng = random.Random(seed)
    syncs = seed % 2 == 0
    for d in ("d", "g"):
        (fs.mnt / d).mkdir()
    random_workload(fs.mnt, rng, 30, syncs=True)
    fs.sync_all()
    synced = tree(fs.backing)
    random_workload(fs.mnt, rng, 60, syncs=syncs)
    live = tree(fs.backing)
    assert live != synced  # the workload changed something
    states = fs.crash_states()
    optimistic = [s for s in states if s.family.startswith("optimistic")]
    fs.restore(optimistic[0] if optimistic else states[0])  # one state: all was synced
    assert tree(fs.backing) == live
    fs.restore(states[0])
    if not syncs:
        assert tree(fs.backing) == synced


# -- restore and the caches ---------------------------------------------------------------


def test_a_restored_state_is_what_readers_see_without_a_remount(fs: Forgetful) -> None:
    (fs.mnt / "f").write_bytes(b"short")
    fs.sync_all()
    with open(fs.mnt / "f", "wb") as f:
        f.write(b"a much longer content")
    # Readers fill every cache the kernel has: attributes, the entry, the pages.
    assert (fs.mnt / "f").stat().st_size == 21
    assert (fs.mnt / "f").read_bytes() == b"a much longer content"
    (fs.mnt / "extra").mkdir()
    pessimistic = fs.crash_states()[0]
    fs.restore(pessimistic)
    assert (fs.mnt / "f").stat().st_size == 5
    assert (fs.mnt / "f").read_bytes() == b"short"
    assert not (fs.mnt / "extra").exists()
    assert os.listdir(fs.mnt) == ["f"]
    # And through the backing directory: the mount holds exactly that state.
    assert (fs.backing / "f").read_bytes() == b"short"


def test_a_file_open_across_the_restore_is_gone(fs: Forgetful) -> None:
    fd = os.open(fs.mnt / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fs.restore(fs.crash_states()[0])
        with pytest.raises(OSError) as raised:
            os.write(fd, b"x")
        assert raised.value.errno == errno.ESTALE
    finally:
        os.close(fd)
    assert os.listdir(fs.mnt) == []


def test_every_state_of_a_listing_can_be_restored_but_not_an_older_one(fs: Forgetful) -> None:
    (fs.mnt / "f").write_bytes(b"x")
    first = fs.crash_states()
    fs.restore(first[1])
    (fs.mnt / "g").write_bytes(b"written after the reboot")
    fs.restore(first[0])  # the same listing: fine, whatever happened in between
    assert os.listdir(fs.mnt) == []
    (fs.mnt / "h").write_bytes(b"y")
    fs.crash_states()
    with pytest.raises(StaleStateError, match="last listed"):
        fs.restore(first[1])


def test_create_only_renames_keep_their_flag(fs: Forgetful) -> None:
    # mfusepy drops rename's flags unless told otherwise: RENAME_NOREPLACE would replace.
    (fs.mnt / "x").write_bytes(b"first")
    with pytest.raises(FileExistsError):
        crashsafe.atomic_write(fs.mnt / "x", b"second", overwrite=False)
    assert (fs.mnt / "x").read_bytes() == b"first"
    assert leftovers(fs.mnt) == []


def test_new_entries_belong_to_their_writer(fs: Forgetful) -> None:
    # The filesystem runs as root; a file made through it is the writer's, as on a
    # kernel filesystem, and takes a setgid directory's group.
    require_tools("setpriv", "touch")
    shared = fs.mnt / "shared"
    shared.mkdir()
    os.chown(shared, 0, 100)
    os.chmod(shared, 0o2777)  # noqa: S103 - open to the writer run as nobody
    os.chmod(fs.mnt, 0o777)  # noqa: S103 - the same; reset() restores it
    subprocess.run(
        [*children.NOBODY, "touch", str(fs.mnt / "mine"), str(shared / "theirs")], check=True
    )
    nobody = pwd.getpwnam("nobody")
    assert (fs.mnt / "mine").stat()[4:6] == (nobody.pw_uid, nobody.pw_gid)
    assert (shared / "theirs").stat()[4:6] == (nobody.pw_uid, 100)


def test_nothing_is_left_behind(tmp_path: Path) -> None:
    backing = tmp_path / "backing"
    backing.mkdir()
    with forgetful(backing) as mounted:
        (mounted.mnt / "kept").write_bytes(b"k")
        mnt, pid = mounted.mnt, mounted.pid
        held = os.open(mnt / "kept", os.O_RDONLY)  # a busy mount is detached all the same
    os.close(held)
    assert str(mnt) not in Path("/proc/self/mountinfo").read_text()
    assert not mnt.parent.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert os.listdir(backing) == ["kept"]  # the backing directory keeps the live view


# -- the writers that bracket every proof -------------------------------------------------


@contextlib.contextmanager
def backing_on(kind: str, tmp_path: Path) -> Iterator[Path]:
    """A backing directory on *kind*: the root filesystem, a tmpfs, btrfs, or an
    overlayfs whose upper layer is on a tmpfs."""
    if kind == "root":
        (tmp_path / "b").mkdir()
        yield tmp_path / "b"
    elif kind == "tmpfs":
        with tmpfs(size_kb=16384) as mnt:
            yield mnt
    elif kind == "btrfs":
        with loop_mount("btrfs", size_mb=128) as mnt:
            yield mnt
    else:
        with tmpfs(size_kb=16384) as upper, overlay(upper) as mnt:
            yield mnt


@pytest.mark.parametrize("kind", ["root", "tmpfs", "btrfs", "overlay"])
def test_a_naive_write_tears_and_atomic_write_does_not(kind: str, tmp_path: Path) -> None:
    old, new = b"o" * (2 * PAGE), b"n" * (3 * PAGE)
    with backing_on(kind, tmp_path) as backing, forgetful(backing) as fs:
        target = fs.mnt / "target"
        target.write_bytes(old)
        fs.sync_all()
        with open(target, "wb") as f:  # the broken writer: truncate and write in place
            f.write(new)
        start = time.perf_counter()
        naive = contents(fs, "target", fs.crash_states(limit=200))
        per_state = (time.perf_counter() - start) / len(naive)
        assert b"" in naive  # emptied and not rewritten
        torn = [c for c in naive if c not in (old, new, b"")]
        assert torn
        fs.sync_all()
        crashsafe.atomic_write(target, new)
        durable = contents(fs, "target", fs.crash_states(limit=200))
        assert set(durable) == {new}  # a durable write returned: only new
        crashsafe.atomic_write(target, old, durability="consistent")
        consistent = contents(fs, "target", fs.crash_states(limit=200))
        assert set(consistent) == {new, old}  # no directory fsync: old or new, never torn
    print(
        f"\nforgetful over {kind}: open('w') + 12 KiB over 8 KiB: {len(naive)} crash states, "
        f"{naive.count(b'')} empty, {len(torn)} torn; atomic_write durable: {len(durable)} "
        f"({durable.count(new)} new), consistent: {len(consistent)} ({consistent.count(old)} "
        f"new, {consistent.count(new)} old); listed and restored in {per_state * 1000:.1f} "
        "ms a state"
    )


def test_temp_and_rename_without_fsync_can_publish_an_empty_file(fs: Forgetful) -> None:
    # The classic broken writer: the rename may reach the disk before the data.
    (fs.mnt / "target").write_bytes(b"old")
    fs.sync_all()
    write_file(fs.mnt / "target.tmp", b"new", sync=False)
    os.rename(fs.mnt / "target.tmp", fs.mnt / "target")
    sync_dir(fs.mnt)  # even with the directory synced
    assert set(contents(fs, "target", fs.crash_states())) >= {b"", b"new"}


def test_atomic_directory_swaps_whole_trees(fs: Forgetful) -> None:
    # RENAME_EXCHANGE passes through and is modelled: old tree or new, new once returned.
    (fs.mnt / "tree").mkdir()
    (fs.mnt / "tree" / "a").write_bytes(b"old")
    fs.sync_all()
    with crashsafe.atomic_directory(fs.mnt / "tree") as staged:
        (staged / "a").write_bytes(b"new")
        (staged / "b").write_bytes(b"new")
    states = fs.crash_states()
    trees = set()
    for state in states:
        fs.restore(state)
        tree = fs.mnt / "tree"
        trees.add(tuple(sorted((p.name, p.read_bytes()) for p in tree.iterdir())))
    assert trees == {(("a", b"new"), ("b", b"new"))}
    # Killed on entering the parent's fsync, right after the exchange (the 4th fsync: a,
    # b, the staged directory, then the parent): the old tree or the new, never a mix.
    fs.reset()
    (fs.mnt / "tree").mkdir()
    (fs.mnt / "tree" / "a").write_bytes(b"old")
    fs.sync_all()
    code = """
        with crashsafe.atomic_directory(sys.argv[1]) as staged:
            for name in ("a", "b"):
                with open(os.path.join(staged, name), "wb") as f:
                    f.write(b"new")
    """
    killed = run_traced(
        code, str(fs.mnt / "tree"), trace=["fsync"], inject=[fault("fsync", signal="KILL", when=4)]
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    trees = set()
    for state in fs.crash_states():
        fs.restore(state)
        tree = fs.mnt / "tree"
        trees.add(tuple(sorted((p.name, p.read_bytes()) for p in tree.iterdir())))
    assert trees == {(("a", b"old"),), (("a", b"new"), ("b", b"new"))}


# -- writers killed part-way --------------------------------------------------------------


def test_a_killed_writers_unsynced_writes_may_be_lost(fs: Forgetful) -> None:
    child = children.Child(
        """
        import os, sys
        fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"written, never synced")
        print("wrote", flush=True)
        sys.stdin.readline()
        """,
        str(fs.mnt / "f"),
    )
    try:
        assert child.readline() == "wrote"
        child.kill9()  # killed with the file open: the filesystem outlives it
    finally:
        child.close()
    found = set(contents(fs, "f", fs.crash_states()))
    assert {None, b"", b"written, never synced"} <= found  # and torn: zeros, garbage


@pytest.mark.parametrize(
    ("when", "live", "after"), [(1, b"old", {b"old"}), (2, b"new", {b"old", b"new"})]
)
def test_atomic_write_killed_at_an_fsync_leaves_old_or_new_and_debris_sweep_removes(
    fs: Forgetful, when: int, live: bytes, after: set[bytes]
) -> None:
    # Killed on entering its first fsync (the staged file's: nothing published yet) or
    # its second (the directory's: published, not yet durable).
    (fs.mnt / "target").write_bytes(b"old")
    fs.sync_all()
    killed = run_traced(
        "atomic_write(sys.argv[1], b'new')",
        str(fs.mnt / "target"),
        trace=["fsync"],
        inject=[fault("fsync", signal="KILL", when=when)],
        staging="named",
    )
    assert killed.returncode == -signal.SIGKILL
    assert (fs.mnt / "target").read_bytes() == live
    seen, debris = set(), 0
    for state in fs.crash_states():
        fs.restore(state)
        seen.add((fs.mnt / "target").read_bytes())
        debris += len(leftovers(fs.mnt))
        crashsafe.sweep(fs.mnt)  # its writer is gone: removed
        assert leftovers(fs.mnt) == []
    assert seen == after
    assert debris > 0  # some states keep the staged file's name: sweep's job
