"""crashsafe.atomic_directory: a whole tree published at once, or not at all.

Grouped by promise: what is staged and published (new, replace, modes), what an
error leaves (nothing), what readers see (never a mixed tree), what a crash
leaves (old or new after a power cut at every syscall on xfs and ext4
noauto_da_alloc, and after kill -9 at every syscall) and what sweep() removes;
the symlink scheme on a filesystem without the exchange (bindfs, FUSE).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import crashsafe
from crashsafe import directories
from crashsafe.crashcheck import CheckContext, explore
from crashsafe.staging import is_temp_name, temp_name
from tests import children
from tests.harness import power_cut
from tests.harness.checks import leftovers, umask
from tests.harness.inject import run_traced
from tests.harness.power_cut import WRITERS
from tests.harness.require import require_root, require_tools
from tests.harness.summary import module_summary
from tests.harness.traces import commit_index, dir_sync_index
from tests.writers.dir_tree import FILES, classify_tree, content, write_tree

_note, _print_summary = module_summary("atomic_directory crash summary")


def _only(directory: Path, *names: str) -> None:
    assert sorted(os.listdir(directory)) == sorted(names)


def _tree(root: Path, version: int) -> Path:
    root.mkdir()
    write_tree(root, version)
    return root


@pytest.fixture
def exchange_off() -> Iterator[None]:
    """The symlink scheme, on a filesystem that has the exchange."""
    directories.use_exchange = False
    try:
        yield
    finally:
        directories.use_exchange = True


# --------------------------------------------------------------------------- publishing


def test_a_new_tree_appears_whole_with_the_mode_mkdir_would_give(workdir: Path) -> None:
    for mask in (0o022, 0o077):
        target = workdir / f"new-{mask:o}"
        with umask(mask):
            with crashsafe.atomic_directory(target) as staged:
                assert isinstance(staged, Path) and staged.parent == workdir
                assert is_temp_name(staged.name) and staged.name.endswith("-dir")
                assert stat.S_IMODE(staged.stat().st_mode) == 0o700  # private while staged
                assert not target.exists()
                write_tree(staged, 1)
            os.mkdir(workdir / "baseline", 0o777)
        assert classify_tree(target) == 1
        assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~mask
        assert target.stat().st_mode == (workdir / "baseline").stat().st_mode
        (workdir / "baseline").rmdir()
    _only(workdir, "new-22", "new-77")


def test_a_str_path_gives_a_str_and_a_relative_one_an_absolute_staged_path(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    with crashsafe.atomic_directory("rel") as staged:
        assert isinstance(staged, str) and os.path.isabs(staged)
        assert os.path.dirname(staged) == str(workdir)
    assert os.listdir(workdir / "rel") == []


def test_a_replaced_tree_keeps_the_directorys_mode_and_leaves_no_old_tree(
    workdir: Path,
) -> None:
    target = _tree(workdir / "site", 1)
    target.chmod(0o2750)
    inode = target.stat().st_ino
    with crashsafe.atomic_directory(target) as staged:
        assert classify_tree(target) == 1  # untouched until the block ends
        write_tree(staged, 2)
    assert classify_tree(target) == 2
    assert stat.S_IMODE(target.stat().st_mode) == 0o2750
    assert target.stat().st_ino != inode and not target.is_symlink()
    _only(workdir, "site")


def test_an_exception_publishes_nothing_and_removes_the_staged_tree(workdir: Path) -> None:
    target = _tree(workdir / "t", 1)
    for exc in (KeyError, KeyboardInterrupt):
        with pytest.raises(exc), crashsafe.atomic_directory(target) as staged:
            write_tree(staged, 2)
            raise exc
        assert classify_tree(target) == 1
    with pytest.raises(KeyError), crashsafe.atomic_directory(workdir / "new") as staged:
        raise KeyError
    assert not staged.exists()
    _only(workdir, "t")


def test_a_context_manager_never_entered_stages_nothing(workdir: Path) -> None:
    crashsafe.atomic_directory(workdir / "t")
    _only(workdir)


@pytest.mark.parametrize("kind", ["file", "dangling symlink", "symlink to a file", "fifo"])
def test_a_non_directory_at_the_path_raises_before_anything_is_staged(
    workdir: Path, kind: str
) -> None:
    target = workdir / "t"
    if kind == "file":
        target.write_bytes(b"x")
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        if kind == "symlink to a file":
            (workdir / "f").write_bytes(b"x")
        target.symlink_to("f")
    before = sorted(os.listdir(workdir))
    with pytest.raises(NotADirectoryError) as caught, crashsafe.atomic_directory(target):
        pytest.fail("the block ran")
    assert caught.value.filename == str(target)
    assert sorted(os.listdir(workdir)) == before


def test_bad_arguments_are_refused_naming_what_was_given(workdir: Path) -> None:
    with pytest.raises(ValueError, match=r"'\.'"), crashsafe.atomic_directory("."):
        pass
    with pytest.raises(ValueError, match="durability"):
        crashsafe.atomic_directory(workdir / "t", durability="always")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="parents"):
        crashsafe.atomic_directory(workdir / "t", parents=1)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="s3://b/k"):
        crashsafe.atomic_directory("s3://b/k")
    with pytest.raises(FileNotFoundError), crashsafe.atomic_directory(workdir / "no" / "t"):
        pass
    _only(workdir)


def test_parents_creates_the_missing_directories(workdir: Path) -> None:
    target = workdir / "a" / "b" / "t"
    with crashsafe.atomic_directory(target, parents=True) as staged:
        write_tree(staged, 1)
    assert classify_tree(target) == 1


def test_a_symlink_to_a_directory_is_followed_and_the_directory_replaced(workdir: Path) -> None:
    real = _tree(workdir / "releases", 1)
    (workdir / "current").symlink_to("releases")
    with crashsafe.atomic_directory(workdir / "current") as staged:
        assert staged.parent == workdir
        write_tree(staged, 2)
    assert os.readlink(workdir / "current") == "releases"
    assert classify_tree(real) == 2
    _only(workdir, "current", "releases")


def test_a_directory_made_meanwhile_at_a_new_path_is_never_overwritten(workdir: Path) -> None:
    target = workdir / "t"
    with pytest.raises(FileExistsError), crashsafe.atomic_directory(target) as staged:
        write_tree(staged, 2)
        target.mkdir()  # a concurrent creator, first
    assert os.listdir(target) == []
    _only(workdir, "t")


@pytest.mark.parametrize("durability", ["durable", "consistent", "none"])
def test_durability_decides_the_fsyncs(workdir: Path, durability: str) -> None:
    target = _tree(workdir / "t", 1)
    code = f"""
from tests.writers.dir_tree import write_tree
def go():
    with crashsafe.atomic_directory(sys.argv[1], durability={durability!r}) as staged:
        write_tree(staged, 2)
report(**attempt(go))
"""
    child = run_traced(
        code,
        str(target),
        trace=["fsync", "fdatasync", "renameat2"],
        env={"PYTHONPATH": children.ROOT},
    )
    assert child.result["raised"] is None, child.result
    assert child.count("fdatasync") == 0
    # What each fsync and the exchange were, in the order they came.
    seen = []
    for line in sorted(child.calls("fsync") + child.calls("renameat2"), key=child.log.index):
        where = line.split("<", 1)[1].split(">", 1)[0]
        if "RENAME_EXCHANGE" in line:
            seen.append("exchange")
        elif where == str(workdir):
            seen.append("parent")
        else:  # in the staged tree: "." for its root
            seen.append(
                os.path.relpath(where, where.split(".crashsafe-tmp-dir")[0] + ".crashsafe-tmp-dir")
            )
    tree = {"a.bin", "sub/b.bin", "sub/c.bin", "sub", "."}
    if durability == "none":
        assert seen == ["exchange"], child.log
    else:
        # Each file before its directory, a directory before its parent, all
        # before the exchange; then the parent's, for "durable" only.
        assert sorted(seen[:5]) == sorted(tree), child.log
        assert seen.index("sub") > max(seen.index("sub/b.bin"), seen.index("sub/c.bin"))
        assert seen[4] == "."
        tail = ["exchange", "parent"] if durability == "durable" else ["exchange"]
        assert seen[5:] == tail, child.log
    assert classify_tree(target) == 2
    _only(workdir, "t")


_EIO_CHILD = """
from tests.writers.dir_tree import write_tree
def go():
    with crashsafe.atomic_directory(sys.argv[1]) as staged:
        write_tree(staged, 2)
report(**attempt(go))
"""


@pytest.mark.parametrize(("when", "raised"), [(1, "OSError"), (6, "NotDurableError")])
def test_eio_from_an_fsync_is_never_retried_and_says_whether_the_tree_is_in_place(
    workdir: Path, when: int, raised: str
) -> None:
    """EIO on the first file's fsync: nothing published, the staged tree removed.
    On the parent's (the 6th): the new tree is in place, and NotDurableError says so."""
    target = _tree(workdir / "t", 1)
    child = run_traced(
        _EIO_CHILD,
        str(target),
        trace=["fsync"],
        inject=[f"fsync:error=EIO:when={when}"],
        env={"PYTHONPATH": children.ROOT},
    )
    result = child.result
    assert (result["raised"], result["errno"]) == (raised, errno.EIO), (result, child.stderr)
    if when == 1:  # the file whose fsync failed, in the staged tree (removed since)
        assert result["filename"].startswith(str(workdir / ".t."))
        assert result["filename"].split(".crashsafe-tmp-dir/")[1] in FILES
    else:
        assert result["filename"] == str(target)
    assert child.count("fsync") == when  # nothing after the failed one: never retried
    assert classify_tree(target) == (1 if when == 1 else 2)
    _only(workdir, "t")


def test_a_symlink_to_a_missing_version_raises_before_anything_is_staged(
    workdir: Path,
) -> None:
    (workdir / "t").symlink_to(temp_name("t", "-ver"))
    with (
        pytest.raises(NotADirectoryError, match="version"),
        crashsafe.atomic_directory(workdir / "t"),
    ):
        pytest.fail("the block ran")
    _only(workdir, "t")


# --------------------------------------------------------------------------- sweep


def _dead_writers_names(target: str) -> dict[str, str]:
    """Names of each kind as a writer that is now dead would have made them."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only names and exits
        os.close(r)
        kinds = ("dir", "old", "ver", "link", "probe")
        os.write(w, "\n".join(temp_name(target, f"-{k}") for k in kinds).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        names = f.read().split("\n")
    os.waitpid(pid, 0)
    return dict(zip(("dir", "old", "ver", "link", "probe"), names, strict=True))


def test_sweep_removes_a_dead_writers_trees_but_not_a_version_in_use(tmp_path: Path) -> None:
    workdir = tmp_path
    dead = _dead_writers_names("t")
    for kind in ("dir", "old", "ver", "probe"):
        _tree(workdir / dead[kind], 1)
    live = dead["ver"].replace(".crashsafe-tmp-ver", "")  # not ours: never swept
    (workdir / dead["link"]).symlink_to(dead["ver"])  # a swap's symlink: names the version...
    in_use = _dead_writers_names("u")["ver"]
    _tree(workdir / in_use, 1)
    (workdir / "u").symlink_to(in_use)  # ...but only a link at a real name keeps it
    (workdir / live).mkdir()
    before = sorted(os.listdir(workdir))
    would = crashsafe.sweep(workdir, dry_run=True)
    assert sorted(os.listdir(workdir)) == before  # a dry run removes nothing...
    removed = crashsafe.sweep(workdir)
    assert sorted(would) == sorted(removed)  # ...and names what the real one removes
    assert sorted(p.name for p in removed) == sorted(dead.values())
    _only(workdir, "u", in_use, live)
    assert classify_tree(workdir / "u") == 1


def test_sweep_leaves_a_live_writers_staged_tree(workdir: Path) -> None:
    with crashsafe.atomic_directory(workdir / "t") as staged:
        write_tree(staged, 1)
        assert crashsafe.sweep(workdir, min_age=0) == []
        assert staged.exists()
    assert classify_tree(workdir / "t") == 1


def test_sweep_removes_the_staged_tree_of_a_writer_killed_in_the_block(workdir: Path) -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child is killed
        try:
            with crashsafe.atomic_directory(workdir / "t") as staged:
                write_tree(staged, 2)
                os.kill(os.getpid(), 9)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    left = leftovers(workdir)
    assert len(left) == 1 and left[0].endswith("-dir")
    assert [p.name for p in crashsafe.sweep(workdir)] == left
    _only(workdir)


# --------------------------------------------------------------------------- the symlink scheme


@pytest.mark.usefixtures("exchange_off")
def test_without_the_exchange_the_path_is_a_symlink_to_one_version(tmp_path: Path) -> None:
    workdir = tmp_path
    target = workdir / "t"
    for version in (1, 2, 3):
        with crashsafe.atomic_directory(target) as staged:
            write_tree(staged, version)
        assert classify_tree(target) == version
        link = os.readlink(target)
        assert "/" not in link and is_temp_name(link) and link.endswith("-ver")
        _only(workdir, "t", link)
    assert crashsafe.sweep(workdir) == []  # the version in use is kept


@pytest.mark.usefixtures("exchange_off")
def test_without_the_exchange_a_real_directory_is_refused_saying_what_to_do(
    workdir: Path,
) -> None:
    target = _tree(workdir / "t", 1)
    with (
        pytest.raises(OSError, match="cannot exchange") as caught,
        crashsafe.atomic_directory(target) as staged,
    ):
        write_tree(staged, 2)
    assert caught.value.errno == errno.EOPNOTSUPP and caught.value.filename == str(target)
    assert "Move the directory aside" in str(caught.value)
    assert classify_tree(target) == 1
    _only(workdir, "t")


@contextlib.contextmanager
def _bindfs(tmp_path: Path) -> Iterator[Path]:
    """A bindfs (FUSE, libfuse 2) view of a fresh directory: no renameat2 flags."""
    require_root()
    require_tools("bindfs")
    under, mnt = tmp_path / "under", tmp_path / "mnt"
    under.mkdir()
    mnt.mkdir()
    subprocess.run(["bindfs", str(under), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_on_bindfs_without_the_exchange_the_symlink_scheme_serves(tmp_path: Path) -> None:
    with _bindfs(tmp_path) as mnt:
        probe = _tree(mnt / "probe", 1)
        with pytest.raises(OSError) as no_exchange, crashsafe.atomic_directory(probe) as s:
            write_tree(s, 2)
        assert no_exchange.value.errno == errno.EOPNOTSUPP
        assert isinstance(no_exchange.value.__cause__, OSError)
        assert no_exchange.value.__cause__.errno == errno.EINVAL  # what FUSE said
        target = mnt / "t"
        for version in (1, 2):
            with crashsafe.atomic_directory(target) as staged:
                write_tree(staged, version)
            assert classify_tree(target) == version and target.is_symlink()
        _only(mnt, "probe", "t", os.readlink(target))


def test_on_exfat_without_renameat2_flags_or_symlinks_nothing_is_published(
    tmp_path: Path,
) -> None:
    """exFAT through exfat-fuse: renameat2's flags refused (EINVAL), symlink()
    ENOSYS. A clear error, nothing published, nothing left."""
    require_root()
    require_tools("mkfs.exfat", "mount.exfat-fuse", "losetup")
    img, mnt = tmp_path / "img", tmp_path / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(32 << 20)
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(img)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        subprocess.run(["mkfs.exfat", dev], check=True, capture_output=True)
        subprocess.run(["mount.exfat-fuse", dev, str(mnt)], check=True, capture_output=True)
        try:
            with (
                pytest.raises(OSError, match="neither a create-only rename") as e,
                crashsafe.atomic_directory(mnt / "t") as staged,
            ):
                write_tree(staged, 1)
            assert e.value.errno == errno.EOPNOTSUPP and e.value.filename == str(mnt / "t")
            assert isinstance(e.value.__cause__, OSError)
            assert e.value.__cause__.errno == errno.ENOSYS  # what exFAT said to symlink()
            assert os.listdir(mnt) == []
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)


# --------------------------------------------------------------------------- readers

_READER = """
import json, os, sys
from pathlib import Path
from tests.writers.dir_tree import FILES, content
target, how = sys.argv[1], sys.argv[2]
counts = {"complete": 0, "vanished": 0, "mixed": 0}
def snapshot():
    versions = set()
    if how == "fd":
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in FILES:
                parent, base = os.path.split(name)
                at = os.open(parent, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd) if parent else fd
                try:
                    f = os.open(base, os.O_RDONLY, dir_fd=at)
                finally:
                    if at != fd:
                        os.close(at)
                with os.fdopen(f, "rb") as r:
                    versions.add(r.read())
                if how == "fd" and name == FILES[0]:
                    step()
        finally:
            os.close(fd)
    else:
        for name in FILES:
            versions.add(Path(target, name).read_bytes())
            if name == FILES[0]:
                step()
    return {int(v.split(b" v")[1][:12]) for v in versions}
def step():
    pass
lockstep = len(sys.argv) > 3
if lockstep:
    def step():
        sys.stdout.write("read\\n"); sys.stdout.flush()
        sys.stdin.readline()  # the writer has replaced the tree meanwhile
while True:
    done = lockstep or os.path.exists(target + ".done")  # then one last snapshot
    try:
        got = snapshot()
    except FileNotFoundError:
        counts["vanished"] += 1
        got = None
    if got is not None:
        counts["complete" if len(got) == 1 else "mixed"] += 1
    if done:
        break
print(json.dumps({"counts": counts, "last": sorted(got) if got else None}), flush=True)
"""


def _reader(target: Path, how: str, *lockstep: str) -> subprocess.Popen[str]:
    env = {"PYTHONPATH": children.ROOT}
    return children.start(_READER, str(target), how, *lockstep, text=True, prelude="", env=env)


@pytest.mark.parametrize("how", ["fd", "path"])
def test_a_swap_between_two_reads_mixes_only_a_reader_that_resolves_paths_anew(
    workdir: Path, how: str
) -> None:
    """Deterministic, in lock step: the reader reads the first file, the writer
    replaces the tree, the reader reads the rest. Through one descriptor the rest
    is the old tree's or gone; by full paths, the new tree's (the broken reader
    the docs warn of, which this must catch)."""
    target = _tree(workdir / "t", 1)
    reader = _reader(target, how, "lockstep")
    assert reader.stdout is not None and reader.stdin is not None
    assert reader.stdout.readline() == "read\n"
    with crashsafe.atomic_directory(target) as staged:
        write_tree(staged, 2)
    reader.stdin.write("go\n")
    reader.stdin.close()
    counts = json.loads(reader.stdout.read())["counts"]
    reader.stdout.close()
    assert reader.wait() == 0
    if how == "fd":  # the old tree's next file gone under it: start over
        assert counts == {"complete": 0, "vanished": 1, "mixed": 0}
    else:
        assert counts == {"complete": 0, "vanished": 0, "mixed": 1}


def test_a_reader_through_one_descriptor_never_sees_a_mixed_tree(workdir: Path) -> None:
    """Free running: a writer replaces the tree 150 times while a reader takes
    snapshots; each is the complete tree of one version or vanished under it;
    the last, after the writer finished, is complete and the last version."""
    target = _tree(workdir / "t", 0)
    reader = _reader(target, "fd")
    for version in range(1, 151):
        with crashsafe.atomic_directory(target, durability="none") as staged:
            write_tree(staged, version)
    (workdir / "t.done").touch()
    assert reader.stdout is not None
    result = json.loads(reader.stdout.read())
    reader.stdout.close()
    if reader.stdin is not None:
        reader.stdin.close()
    assert reader.wait() == 0
    counts = result["counts"]
    _note(f"reader    150 replacements, snapshots through one fd: {counts}")
    assert counts["mixed"] == 0 and counts["complete"] >= 1
    assert result["last"] == [150]
    (workdir / "t.done").unlink()
    _only(workdir, "t")


# --------------------------------------------------------------------------- crashes

DIR_ATOMIC = WRITERS / "dir_atomic.py"
DIR_BROKEN = WRITERS / "dir_broken.py"  # the exchange with no fsync at all


def _old_tree(directory: Path, scheme: str) -> None:
    """The old tree (version 1) at directory/t, durably, as *scheme* keeps it."""
    for name in os.listdir(directory):
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            subprocess.run(["rm", "-rf", str(path)], check=True)
        else:
            path.unlink()
    # A version named by a writer that is dead, as a real one's would be by now.
    real = directory / (_dead_writers_names("t")["ver"] if scheme == "link" else "t")
    real.mkdir()
    write_tree(real, 1)
    if scheme == "link":
        (directory / "t").symlink_to(real.name)
    subprocess.run(["sync", "-f", str(directory)], check=True)


def _outcome(target: Path) -> str:
    found = classify_tree(target)
    return {1: "old", 2: "new"}.get(found, str(found)) if isinstance(found, int) else found


def _live_version(target: Path) -> list[str]:
    """The version directory the target's symlink names ([] for a real directory):
    crashsafe's name, in use, which sweep() must keep."""
    return [os.readlink(target)] if target.is_symlink() else []


def _cut_tree(
    mnt: Path, writer: Path, extra: list[str], scheme: str
) -> tuple[power_cut.PowerCutRun, list[list[str]]]:
    """A power cut after every syscall of *writer* replacing mnt/d/t; the run, and
    for each trial the live version directory found after the remount."""
    directory = mnt / "d"
    directory.mkdir()
    target = directory / "t"
    live: list[list[str]] = []

    def inspect() -> str:
        live.append(_live_version(target))
        return _outcome(target)

    run = power_cut.power_cut_every_syscall(
        mnt,
        writer,
        [str(target), "2", *extra],
        prepare=lambda: _old_tree(directory, scheme),
        inspect=inspect,
        sweep_dir=directory,
    )
    return run, live


def _swept_all_but_the_live_version(run: power_cut.PowerCutRun, live: list[list[str]]) -> int:
    """Check that sweep() left exactly the live version (if any) after every trial;
    return how many staged, old or stale trees the crashes had left."""
    assert len(live) == len(run.trials)
    for trial, version in zip(run.trials, live, strict=True):
        assert trial.left_after_sweep == version, (trial.point, trial.left_after_sweep)
    return sum(len(t.leftovers) - len(v) for t, v in zip(run.trials, live, strict=True))


# The symlink scheme is cut on xfs only, for time: its steps are plain renames and
# a symlink, which ext4 orders as xfs does (the exchange runs on both), and
# crashcheck on bindfs checks every ordering of them.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("cut_fs", "scheme"),
    [("xfs", "exchange"), ("ext4", "exchange"), ("xfs", "link")],
    indirect=["cut_fs"],
)
def test_power_cut_at_every_syscall_of_a_tree_replacement(
    cut_fs: tuple[str, Path], scheme: str
) -> None:
    fs, mnt = cut_fs
    run, live = _cut_tree(mnt, DIR_ATOMIC, ["durable", scheme], scheme)
    directory = mnt / "d"
    commit = commit_index(run.trace, "t")
    assert commit is not None
    dir_sync = dir_sync_index(run.trace, str(directory), commit)
    assert dir_sync is not None
    debris = _swept_all_but_the_live_version(run, live)
    _note(
        power_cut.describe(fs, f"atomic_directory {scheme}", run, f"commit #{commit}")
        + f"; trees left by cuts {debris}, all swept"
    )
    # Old or new, whole, at every point; old before the exchange (or the
    # symlink's rename), new once the parent's fsync after it returned.
    assert power_cut.violations(run, commit, dir_sync) == []
    assert {t.outcome for t in run.trials} == {"old", "new"}
    assert debris > 0  # cuts left staged, old or stale version trees, all swept


@pytest.mark.slow
def test_power_cut_harness_catches_an_exchange_without_fsync(cut_fs: tuple[str, Path]) -> None:
    fs, mnt = cut_fs
    run, _ = _cut_tree(mnt, DIR_BROKEN, [], "exchange")
    commit = commit_index(run.trace, "t")
    assert commit is not None
    bad = power_cut.violations(run, commit, None)
    seen = Counter(t.outcome for t in run.trials if t.outcome not in ("old", "new"))
    _note(power_cut.describe(fs, "BROKEN tree, no fsync", run, f"commit #{commit}") + f"; {seen}")
    assert bad, "the harness missed the exchange without fsync: it proves nothing"


@pytest.mark.slow
def test_kill_at_every_syscall_of_a_tree_replacement(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    target = directory / "t"
    run = power_cut.kill_every_syscall(
        DIR_ATOMIC,
        [str(target), "2", "durable", "exchange"],
        prepare=lambda: _old_tree(directory, "exchange"),
        inspect=lambda: _outcome(target),
        sweep_dir=directory,
    )
    commit = commit_index(run.trace, "t")
    assert commit is not None
    found = sum(len(t.leftovers) for t in run.trials)
    _note(
        f"kill      atomic_directory  {len(run.trials)} kills, one after each syscall: "
        f"{dict(Counter(t.outcome for t in run.trials))}; trees left {found} -> left after "
        f"sweep {sum(len(t.left_after_sweep) for t in run.trials)}; {run.seconds:.1f} s"
    )
    assert power_cut.violations(run, commit, run.end) == []
    assert {t.outcome for t in run.trials} == {"old", "new"}
    assert found > 0
    assert [t.left_after_sweep for t in run.trials if t.left_after_sweep] == []


def _tree_check(state: CheckContext) -> None:
    found = classify_tree(state.dir / "t")
    if b"saved" in state.stdout:
        assert found == 2, f"saved, then {found}"
    else:
        assert found in (1, 2), found


def _save_v2(target: Path) -> None:
    with crashsafe.atomic_directory(target) as staged:
        write_tree(staged, 2)
    print("saved")


@pytest.mark.slow
def test_crashcheck_finds_nothing_in_the_symlink_scheme_on_bindfs(tmp_path: Path) -> None:
    """No power cut on FUSE: every crash state the conservative model allows
    instead, from the trace of a replacement on bindfs."""
    require_tools("strace")
    with _bindfs(tmp_path) as mnt:
        target = mnt / "t"
        with crashsafe.atomic_directory(target) as staged:
            write_tree(staged, 1)
        report = explore(lambda: _save_v2(target), _tree_check, dirs=[mnt], jobs=1)
        _note(
            f"crashcheck bindfs symlink scheme: {report.states_checked} states, "
            f"{len(report.vulnerabilities)} vulnerabilities"
        )
        assert report.vulnerabilities == [], report
        assert report.states_checked >= 5
        crashsafe.sweep(mnt)
        _only(mnt, "t", os.readlink(target))


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["durable", "consistent"])
def test_crashcheck_finds_nothing_in_the_exchange(tmp_path: Path, durability: str) -> None:
    """Every state the conservative model allows: old or new, new once "saved" was
    printed (with "consistent", a lost exchange after it is only a durability finding)."""
    require_tools("strace")
    _tree(tmp_path / "t", 1)

    def save() -> None:
        with crashsafe.atomic_directory(tmp_path / "t", durability=durability) as staged:  # type: ignore[call-overload]
            write_tree(staged, 2)
        print("saved")

    report = explore(save, _tree_check, dirs=[tmp_path], jobs=1)
    _note(
        f"crashcheck exchange {durability}: {report.states_checked} states, "
        f"{[v.kind for v in report.vulnerabilities]}"
    )
    if durability == "durable":
        assert report.vulnerabilities == [], report
    else:
        assert {v.kind for v in report.vulnerabilities} <= {"durability"}, report
    assert report.states_checked >= 5
    crashsafe.sweep(tmp_path)
    _only(tmp_path, "t")


@pytest.mark.slow
def test_crashcheck_finds_the_exchange_without_fsync(tmp_path: Path) -> None:
    require_tools("strace")
    _tree(tmp_path / "t", 1)

    def naive() -> None:
        staged = tmp_path / temp_name("t", "-dir")
        staged.mkdir()
        write_tree(staged, 2)
        fd = os.open(tmp_path, os.O_RDONLY)
        from crashsafe._platform import _linux

        _linux.renameat2_exchange(fd, staged.name, "t")
        os.close(fd)
        print("saved")

    report = explore(naive, _tree_check, dirs=[tmp_path], jobs=1)
    assert report.vulnerabilities, "crashcheck missed the exchange without fsync"


@pytest.mark.slow
def test_kill_at_every_syscall_of_the_symlink_scheme_on_bindfs(tmp_path: Path) -> None:
    with _bindfs(tmp_path) as mnt:
        directory = mnt / "d"
        directory.mkdir()
        target = directory / "t"
        live: list[list[str]] = []

        def inspect() -> str:
            live.append(_live_version(target))
            return _outcome(target)

        run = power_cut.kill_every_syscall(
            DIR_ATOMIC,
            [str(target), "2", "durable", "exchange"],  # bindfs itself refuses the exchange
            prepare=lambda: _old_tree(directory, "link"),
            inspect=inspect,
            sweep_dir=directory,
        )
        commit = commit_index(run.trace, "t")
        assert commit is not None
        debris = _swept_all_but_the_live_version(run, live)
        _note(
            f"kill      bindfs symlink scheme {len(run.trials)} kills, one after each syscall: "
            f"{dict(Counter(t.outcome for t in run.trials))}; trees left {debris}, all swept; "
            f"{run.seconds:.1f} s"
        )
        assert power_cut.violations(run, commit, run.end) == []
        assert {t.outcome for t in run.trials} == {"old", "new"}
        assert debris > 0


def test_the_tree_helpers_tell_a_mixed_tree(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", 1)
    assert classify_tree(root) == 1
    (root / FILES[1]).write_bytes(content(FILES[1], 2))
    assert classify_tree(root) == "mixed versions"
    (root / FILES[2]).write_bytes(b"")
    assert classify_tree(root) == f"{FILES[2]}: empty"
    assert sys.platform.startswith("linux")
