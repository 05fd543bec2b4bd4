"""write_many: every file all or nothing and durable, fsyncs overlapped, each directory synced once.

Proven here on real filesystems: the content and the permission rules are those of
atomic_write; bad input fails before anything is written; a failing file leaves itself
untouched and no temporary file; strace shows one directory fsync per directory instead
of one per file; kill -9 at random points never leaves a torn file.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from pathlib import Path

import pytest

from crashsafe.batch import write_many
from tests.harness import crash
from tests.harness.checks import entries, leftovers
from tests.harness.inject import run_traced
from tests.harness.require import require_tools


def test_writes_every_file(workdir: Path, staging: str) -> None:
    (workdir / "sub").mkdir()
    items: dict[str | os.PathLike[str], bytes | str] = {
        workdir / f"f{i}": os.urandom(100 + i) for i in range(300)
    }
    items[workdir / "sub" / "text"] = "héllo"
    (workdir / "f7").write_bytes(b"old")
    write_many(items)
    for path, data in items.items():
        expected = data.encode() if isinstance(data, str) else data
        assert Path(path).read_bytes() == expected
    assert leftovers(workdir / "sub") == []


@pytest.mark.parametrize("durability", ["durable", "consistent", "none"])
def test_each_durability_level(workdir: Path, durability: str) -> None:
    write_many({workdir / "a": b"1", workdir / "b": b"2"}, durability=durability)  # type: ignore[arg-type]
    assert [(workdir / n).read_bytes() for n in "ab"] == [b"1", b"2"]


def test_permission_rules_are_atomic_writes(workdir: Path) -> None:
    kept = workdir / "kept"
    kept.write_bytes(b"old")
    kept.chmod(0o640)
    fresh = workdir / "fresh"
    old_umask = os.umask(0o027)
    try:
        write_many({kept: b"new", fresh: b"new"})
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640  # 0o666 less the umask 0o027
    write_many({kept: b"x", fresh: b"y"}, perm=0o600)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


def test_symlinks_are_followed(workdir: Path) -> None:
    (workdir / "real").write_bytes(b"old")
    (workdir / "link").symlink_to("real")
    write_many({workdir / "link": b"new"})
    assert (workdir / "link").is_symlink()
    assert (workdir / "real").read_bytes() == b"new"


@pytest.mark.parametrize(
    ("items", "error"),
    [
        ({"a": 5}, TypeError),
        ({"a": b"ok", "b": None}, TypeError),
    ],
)
def test_bad_data_fails_before_anything_is_written(
    workdir: Path, items: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error, match="bytes or str"):
        write_many({workdir / k: v for k, v in items.items()})  # type: ignore[misc]
    assert entries(workdir) == []


def test_bad_options_fail_before_anything_is_written(workdir: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        write_many({workdir / "a": b"x"}, durability="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="perm"):
        write_many({workdir / "a": b"x"}, perm=0o10000)
    with pytest.raises(TypeError, match="items must be a mapping of paths to data, not list"):
        write_many([(workdir / "a", b"x")])  # type: ignore[arg-type]
    assert entries(workdir) == []


def test_a_key_that_is_no_path_fails_before_anything_is_written(workdir: Path) -> None:
    # Checked with the rest, not when its batch of 128 is reached.
    items: dict[object, bytes] = {workdir / f"f{i}": b"x" for i in range(200)}
    items[None] = b"x"
    with pytest.raises(TypeError):
        write_many(items)  # type: ignore[arg-type]
    assert entries(workdir) == []


# The second spelling of workdir/d.txt (or of where a link there leads); d.txt exists
# unless marked, and the cwd is workdir.
SPELLINGS = {
    "./d.txt": "./d.txt",
    "absolute": "{workdir}/d.txt",
    "through a parent": "sub/../d.txt",
    "a Path": Path("d.txt"),
    "bytes": b"d.txt",
    "a symlink to it": "link-to-d",
    "a symlinked directory": "dirlink/d.txt",
    "a chain of links": "link-to-link",
    "missing, and a dangling link to it": "link-to-new",
}


@pytest.mark.parametrize("late", [False, True], ids=["adjacent", "200 files apart"])
@pytest.mark.parametrize("spelling", SPELLINGS.values(), ids=SPELLINGS.keys())
def test_two_spellings_of_one_file_are_refused_before_anything_is_written(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, spelling: object, late: bool
) -> None:
    # Both would be staged and renamed over one name: which content won was chance.
    monkeypatch.chdir(workdir)
    (workdir / "sub").mkdir()
    (workdir / "d.txt").write_bytes(b"old")
    (workdir / "link-to-d").symlink_to("d.txt")
    (workdir / "link-to-link").symlink_to("link-to-d")
    (workdir / "link-to-new").symlink_to("new.txt")
    os.symlink(".", workdir / "dirlink")
    first = "new.txt" if spelling == "link-to-new" else "d.txt"
    if isinstance(spelling, str):
        spelling = spelling.format(workdir=workdir)
    others = {f"other{i}": b"other" for i in range(200 if late else 0)}
    items = {first: b"one", **others, spelling: b"two"}
    before = entries(workdir)
    with pytest.raises(ValueError, match="name the same file") as caught:
        write_many(items)  # type: ignore[arg-type]
    text = os.fsdecode(os.fspath(spelling))  # type: ignore[arg-type]
    assert str(caught.value) == (
        f"write_many: {first!r} and {text!r} name the same file; "
        "give each file once (nothing was written)"
    )
    assert entries(workdir) == before
    assert (workdir / "d.txt").read_bytes() == b"old"


def test_distinct_files_with_alike_names_are_written(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hard links are two names: each is replaced on its own, as atomic_write would.
    monkeypatch.chdir(workdir)
    (workdir / "sub").mkdir()
    (workdir / "a").write_bytes(b"old")
    os.link(workdir / "a", workdir / "hard")
    write_many({"a": b"1", "hard": b"2", "sub/a": b"3", "A": b"4"}, hardlinks="break")
    assert [(workdir / n).read_bytes() for n in ("a", "hard", "sub/a", "A")] == [
        b"1",
        b"2",
        b"3",
        b"4",
    ]


def test_a_failing_file_is_untouched_and_leaves_nothing(workdir: Path) -> None:
    (workdir / "a").write_bytes(b"old a")
    (workdir / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        write_many({workdir / "a": b"new a", workdir / "dir": b"x", workdir / "c": b"c"})
    # Staged in one batch: the failure comes while staging, so nothing was published.
    assert (workdir / "a").read_bytes() == b"old a"
    assert not (workdir / "c").exists()
    assert leftovers(workdir) == []


def test_one_directory_fsync_per_directory(workdir: Path) -> None:
    require_tools("strace")
    for d in ("d1", "d2"):
        (workdir / d).mkdir()
    code = (
        "from crashsafe.batch import write_many\n"
        "d = sys.argv[1]\n"
        "write_many({f'{d}/d{1 + i % 2}/f{i}': b'x' * 100 for i in range(200)})\n"
    )
    child = run_traced(code, str(workdir), trace=["fsync"])
    assert child.returncode == 0, child.stderr
    fsyncs = [line for line in child.log if "fsync(" in line and "resumed" not in line]
    on_dirs = [
        line for line in fsyncs if line.split("<", 1)[1].split(">", 1)[0].endswith(("/d1", "/d2"))
    ]
    print(f"\n200 files in 2 directories: {len(fsyncs)} fsyncs, {len(on_dirs)} of directories")
    assert len(on_dirs) == 2
    assert len(fsyncs) - len(on_dirs) == 200  # one per file, none repeated


def test_kill9_never_leaves_a_torn_file(tmp_path: Path) -> None:
    """60 kills of a process that replaces 8 files in one write_many after another,
    each right after a syscall of the batch's main thread in turn (its worker
    threads are wherever they are then): every file complete after every kill,
    never older than before, and every file of a batch that returned in place."""
    names = [tmp_path / f"f{i}" for i in range(8)]
    for path in names:
        crash.durable_put(path, crash.payload(1, 64 << 10))
    versions_seen: set[int] = set()

    def write(version: int) -> None:
        write_many({p: crash.payload(version, 64 << 10) for p in names})

    def check() -> int | str:
        kinds = [crash.classify(crash.read_or_none(path)) for path in names]
        versions = [k for k in kinds if isinstance(k, int)]
        if len(versions) < len(kinds):
            return f"torn: {sorted(map(str, kinds))}"
        versions_seen.update(versions)
        return min(versions)  # each file only gets newer: so does the oldest

    result = crash.kill9_loop(
        tmp_path, kills=60, write=write, check=check, staging="tmpfile", min_age=0
    )
    print(
        f"\nwrite_many kill -9: {result.kills} kills at {result.plan()}: "
        f"{dict(result.outcomes)}, {len(versions_seen)} versions seen"
    )
    assert result.outcomes == Counter(complete=60), result.outcomes
    assert result.returned_then_lost() == []
    # The kills landed while files were being replaced (by construction: some
    # kills land in the second batch, after the first returned).
    assert len(versions_seen) > 10
    assert leftovers(tmp_path) == []
