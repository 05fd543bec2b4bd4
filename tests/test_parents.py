"""parents=True: missing directories made first, durably, never through a planted link.

Crash exploration (crashcheck) of a write into a 3-deep missing chain and of the
broken variant (``os.makedirs`` then ``atomic_write``, no directory fsync) that it
must catch; a real power cut after every syscall on loop xfs and ext4 is in
``test_parents_crash.py``. The functional tests run real processes and real
permission checks as user nobody.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import crashsafe
from crashsafe.crashcheck import CheckContext, Report, explore
from tests.children import REPORT, Child, root_owned_directory, run_as_nobody, spawned
from tests.harness.require import require_tools

DATA = b"the whole content\n" * 300  # more than one 4096-byte piece: a torn write shows


def _saved_means_whole(state: CheckContext) -> bool:
    target = state.dir / "a" / "b" / "c" / "f"
    if target.exists():
        return target.read_bytes() == DATA  # absent or whole, never torn
    return b"saved" not in state.stdout  # once "saved" was printed it must be there


def _explore(tmp_path: Path, write: Callable[[], object]) -> Report:
    require_tools("strace")

    def workload() -> None:
        write()
        print("saved", flush=True)

    return explore(workload, _saved_means_whole, dirs=[tmp_path], jobs=2)


def test_crashcheck_finds_nothing_in_a_write_with_parents(tmp_path: Path) -> None:
    def write() -> None:
        crashsafe.atomic_write(tmp_path / "a" / "b" / "c" / "f", DATA, parents=True)

    report = _explore(tmp_path, write)
    assert (tmp_path / "a" / "b" / "c" / "f").read_bytes() == DATA
    assert report.states_checked > 0
    assert report.vulnerabilities == [], report.text()


def test_crashcheck_catches_makedirs_then_atomic_write(tmp_path: Path) -> None:
    def write() -> None:
        os.makedirs(tmp_path / "a" / "b" / "c")
        crashsafe.atomic_write(tmp_path / "a" / "b" / "c" / "f", DATA)

    report = _explore(tmp_path, write)
    kinds = {v.kind for v in report.vulnerabilities}
    assert kinds == {"durability"}, report.text()
    # What was lost is one of the new directories' entries.
    assert any("mkdir" in op for v in report.vulnerabilities for op in v.lost), report.text()


def test_crashcheck_consistent_parents_may_lose_the_chain_never_tear(tmp_path: Path) -> None:
    # "consistent" syncs no directory: after the call a crash may take the new
    # directories (and the file with them), which only a durability finding shows.
    def write() -> None:
        target = tmp_path / "a" / "b" / "c" / "f"
        crashsafe.atomic_write(target, DATA, parents=True, durability="consistent")

    report = _explore(tmp_path, write)
    kinds = {v.kind for v in report.vulnerabilities}
    assert kinds == {"durability"}, report.text()


# --------------------------------------------------------------------------- functional


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_nested_creation_respects_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        crashsafe.atomic_write(tmp_path / "a" / "b" / "c" / "f", b"new", parents=True)
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "b" / "c" / "f").read_bytes() == b"new"
    for directory in ("a", "a/b", "a/b/c"):
        assert _mode(tmp_path / directory) == 0o777 & ~umask, directory
    assert _mode(tmp_path / "a" / "b" / "c" / "f") == 0o666 & ~umask


def test_existing_chain_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_bytes(b"old")
    crashsafe.atomic_write(tmp_path / "a" / "b" / "f", b"new", parents=True)
    assert (tmp_path / "a" / "b" / "f").read_bytes() == b"new"
    monkeypatch.chdir(tmp_path)
    crashsafe.atomic_write("x/y/f", b"rel", parents=True)
    crashsafe.atomic_write("top", b"here", parents=True)  # no directory part at all
    crashsafe.atomic_write("a//b/../c/./g", b"odd", parents=True)  # as os.makedirs makes them
    assert Path("x/y/f").read_bytes() == b"rel"
    assert Path("top").read_bytes() == b"here"
    assert Path("a/c/g").read_bytes() == b"odd"


def test_without_parents_a_missing_directory_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        crashsafe.atomic_write(tmp_path / "a" / "b" / "f", b"new")
    assert caught.value.filename == str(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []


def test_parents_must_be_a_bool(tmp_path: Path) -> None:
    for call in (
        lambda: crashsafe.atomic_write(tmp_path / "a" / "f", b"x", parents="yes"),  # type: ignore[arg-type]
        lambda: crashsafe.AtomicFile(tmp_path / "a" / "f", parents=1),  # type: ignore[call-overload]
        lambda: crashsafe.write_json(tmp_path / "a" / "f", 1, parents=None),  # type: ignore[arg-type]
        lambda: crashsafe.write_many({tmp_path / "a" / "f": b"x"}, parents="no"),  # type: ignore[arg-type]
        lambda: crashsafe.atomic_copy(__file__, tmp_path / "a" / "f", parents=0),  # type: ignore[arg-type]
    ):
        with pytest.raises(TypeError, match="parents must be True or False"):
            call()
    assert list(tmp_path.iterdir()) == []


def _every_call(tmp_path: Path) -> dict[str, tuple[Callable[[Path], object], bytes]]:
    source = tmp_path / "source"
    source.write_bytes(b"copied")

    def with_atomic_file(p: Path) -> None:
        with crashsafe.AtomicFile(p, "w", parents=True) as staged:
            staged.file.write("staged")

    def with_atomic_open(p: Path) -> None:
        with crashsafe.atomic_open(p, "wb", parents=True) as f:
            f.write(b"opened")

    return {
        "atomic_write": (lambda p: crashsafe.atomic_write(p, b"written", parents=True), b"written"),
        "create-only": (
            lambda p: crashsafe.atomic_write(p, b"new", overwrite=False, parents=True),
            b"new",
        ),
        "AtomicFile": (with_atomic_file, b"staged"),
        "atomic_open": (with_atomic_open, b"opened"),
        "atomic_copy": (lambda p: crashsafe.atomic_copy(source, p, parents=True), b"copied"),
        "write_json": (lambda p: crashsafe.write_json(p, [1], indent=None, parents=True), b"[1]\n"),
        "update_json": (
            lambda p: crashsafe.update_json(p, lambda d: [*d, 2], default=[], parents=True),
            b"[\n  2\n]\n",
        ),
        "update": (lambda p: crashsafe.update(p, lambda b: b + b"+", parents=True), b"+"),
        "write_many": (lambda p: crashsafe.write_many({p: b"many"}, parents=True), b"many"),
    }


@pytest.mark.parametrize(
    "call",
    ["atomic_write", "create-only", "AtomicFile", "atomic_open", "atomic_copy",
     "write_json", "update_json", "update", "write_many"],
)  # fmt: skip
def test_every_local_write_call_makes_parents(tmp_path: Path, call: str) -> None:
    write, expected = _every_call(tmp_path)[call]
    target = tmp_path / "p" / "q" / "r" / "target"
    write(target)
    assert target.read_bytes() == expected


def test_write_many_makes_parents_for_each_file(tmp_path: Path) -> None:
    files: dict[str | os.PathLike[str], bytes] = {
        tmp_path / "a" / "b" / "one": b"1",
        tmp_path / "a" / "c" / "two": b"2",
        tmp_path / "a" / "b" / "three": b"3",
    }
    crashsafe.write_many(files, parents=True)
    assert {p: Path(p).read_bytes() for p in files} == files


def test_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a file")
    with pytest.raises(NotADirectoryError) as caught:
        crashsafe.atomic_write(tmp_path / "a" / "b" / "f", b"new", parents=True)
    assert caught.value.filename == str(tmp_path / "a")
    assert (tmp_path / "a").read_bytes() == b"a file"
    # Deeper down: the directories above the file are there; the error names the file.
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "g").write_bytes(b"")
    with pytest.raises(NotADirectoryError) as caught:
        crashsafe.atomic_write(tmp_path / "d" / "e" / "g" / "h" / "f", b"new", parents=True)
    assert caught.value.filename == str(tmp_path / "d" / "e" / "g")


def test_a_symlink_planted_in_the_new_part_is_not_followed(tmp_path: Path) -> None:
    # A dangling link where a directory is to be made: os.makedirs-like code that
    # checks, then mkdirs by path, could create the link's target elsewhere.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").symlink_to(elsewhere / "planted")
    with pytest.raises(NotADirectoryError, match="symlink, not followed") as caught:
        crashsafe.atomic_write(tmp_path / "d" / "a" / "b" / "f", b"new", parents=True)
    assert caught.value.filename == str(tmp_path / "d" / "a")
    assert list(elsewhere.iterdir()) == []
    assert (tmp_path / "d" / "a").is_symlink()


def test_a_symlink_in_the_existing_part_is_followed(tmp_path: Path) -> None:
    # The existing part of the path resolves as the kernel resolves it, as
    # without parents: a link to a directory that exists is the user's own.
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    crashsafe.atomic_write(tmp_path / "link" / "new" / "f", b"new", parents=True)
    assert (tmp_path / "real" / "new" / "f").read_bytes() == b"new"


def test_directories_stay_after_a_failed_write_and_the_target_is_untouched(
    tmp_path: Path,
) -> None:
    def reject(f: object) -> None:
        raise crashsafe.VerificationError("rejected")

    target = tmp_path / "a" / "b" / "f"
    with pytest.raises(crashsafe.VerificationError):
        crashsafe.atomic_write(target, b"new", parents=True, validate=reject)
    assert (tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []


RACE = """
import sys
from pathlib import Path
base, me, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
failures = []
for r in range(rounds):
    try:
        atomic_write(base / str(r) / "a" / "b" / "c" / "d" / "e" / me, me.encode(), parents=True)
    except OSError as e:
        failures.append(describe(e))
report(failures=failures)
"""


def test_racing_processes_make_the_same_parents(tmp_path: Path) -> None:
    rounds, writers = 30, 4
    with spawned() as children:
        for i in range(writers):
            children.append(Child(RACE, str(tmp_path), f"w{i}", str(rounds), prelude=REPORT))
        for child in children:
            assert child.readline() == "ready"
        for child in children:
            child.send("go")  # all at once: each round's chain is made by whoever is first
        results = [json.loads(child.readline(timeout=60)) for child in children]
    assert results == [{"failures": []}] * writers
    for r in range(rounds):
        leaf = tmp_path / str(r) / "a" / "b" / "c" / "d" / "e"
        assert sorted(p.name for p in leaf.iterdir()) == [f"w{i}" for i in range(writers)]


READ_ONLY = """
import sys
target = sys.argv[1]
report(**attempt(atomic_write, target, b"nobody's", parents=True))
"""


def test_a_read_only_ancestor_is_permission_error_naming_the_directory() -> None:
    with root_owned_directory() as readonly:
        (readonly / "open").mkdir(mode=0o777)
        (readonly / "open").chmod(0o777)
        result = run_as_nobody(READ_ONLY, str(readonly / "a" / "b" / "f"))
        assert result["raised"] == "PermissionError", result
        assert result["errno"] == 13
        assert result["filename"] == str(readonly / "a")
        assert sorted(p.name for p in readonly.iterdir()) == ["open"]
        # Where nobody may write, it makes the chain, owned by nobody.
        result = run_as_nobody(READ_ONLY, str(readonly / "open" / "x" / "y" / "f"))
        assert result == {"raised": None}
        assert (readonly / "open" / "x" / "y" / "f").read_bytes() == b"nobody's"
        assert (readonly / "open" / "x").stat().st_uid != 0


def test_the_windows_backend_makes_parents_as_makedirs(tmp_path: Path) -> None:
    # Pure os calls, so it runs here: the chain made, a file in the way named.
    from crashsafe._platform import _windows

    _windows.make_directories(str(tmp_path / "a" / "b"), sync=True).close()
    made = _windows.make_directories(str(tmp_path / "a" / "b"), sync=False)  # there: fine
    assert made.path == str(tmp_path / "a" / "b")
    made.close()
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError) as caught:
        _windows.make_directories(str(tmp_path / "file"), sync=True)
    assert caught.value.filename == str(tmp_path / "file")


def test_a_directory_that_cannot_be_made_names_itself(tmp_path: Path) -> None:
    # ENAMETOOLONG from mkdirat, named by the path the caller gave.
    long_name = "n" * 300
    with pytest.raises(OSError) as caught:
        crashsafe.atomic_write(tmp_path / long_name / "f", b"x", parents=True)
    assert caught.value.filename == str(tmp_path / long_name)
    assert list(tmp_path.iterdir()) == []


def test_parents_on_an_s3_url_is_accepted_and_does_nothing(
    moto_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key needs no directory: parents=True is accepted there, so one call serves
    # local paths and URLs; a download to a local file makes the file's directories.
    from tests.harness.s3servers import empty_bucket, make_bucket

    endpoint = moto_server.endpoint
    bucket = make_bucket(endpoint)
    for key, value in endpoint.env().items():
        monkeypatch.setenv(key, value)
    try:
        url = f"s3://{bucket}/a/b/c/f"
        crashsafe.atomic_write(url, b"written", parents=True)
        with crashsafe.atomic_open(f"s3://{bucket}/a/o", "wb", parents=True) as f:
            f.write(b"opened")
        crashsafe.write_json(f"s3://{bucket}/a/doc.json", [1], parents=True)
        crashsafe.update_json(f"s3://{bucket}/a/doc.json", lambda d: [*d, 2], parents=True)
        local = tmp_path / "x" / "y" / "f"
        crashsafe.atomic_copy(url, local, parents=True)
        assert local.read_bytes() == b"written"
        crashsafe.atomic_copy(url, tmp_path / "z" / "o", parents=True)
        client = endpoint.client()
        got = {
            key: client.get_object(Bucket=bucket, Key=key)["Body"].read()
            for key in ("a/b/c/f", "a/o")
        }
        assert got == {"a/b/c/f": b"written", "a/o": b"opened"}
        assert crashsafe.read_json(f"s3://{bucket}/a/doc.json") == [1, 2]
    finally:
        empty_bucket(endpoint, bucket)


def test_a_removed_working_directory_is_named_by_the_directory_not_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "." still opens, but the kernel refuses new entries in a removed directory:
    # mkdirat's ENOENT names the directory it would have made.
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(FileNotFoundError) as caught:
        crashsafe.atomic_write("a/b/f", b"x", parents=True)
    assert caught.value.filename == "a"


def test_the_directory_made_is_the_one_written_not_the_path_again(tmp_path: Path) -> None:
    # Between making the chain and publishing, the new directory is renamed away
    # and a symlink to elsewhere is put at its name: the file still goes into the
    # directory that was made (and synced), never through the link.
    from crashsafe import _platform

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    directory = _platform.make_directories(str(tmp_path / "a" / "b"), sync=True)
    try:
        (tmp_path / "a" / "b").rename(tmp_path / "a" / "moved")
        (tmp_path / "a" / "b").symlink_to(elsewhere)
        fd, temp, _, _ = directory.create_temp("f", None)
        os.write(fd, b"made")
        directory.publish(fd, temp, "f", replace=True)
    finally:
        directory.close()
    assert (tmp_path / "a" / "moved" / "f").read_bytes() == b"made"
    assert list(elsewhere.iterdir()) == []


def test_a_transaction_makes_its_directory_and_parents(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b" / "tx"
    with crashsafe.transaction(directory, parents=True) as tx:
        tx.write("one", b"1")
        tx.write("two", b"2")
    assert sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")) == [
        "one",
        "two",
    ]
    assert (directory / "two").read_bytes() == b"2"
    with pytest.raises(FileNotFoundError), crashsafe.transaction(tmp_path / "missing") as tx:
        tx.write("one", b"1")
    flag: Any = "yes"
    with pytest.raises(TypeError, match="parents must be True or False"):
        crashsafe.transaction(tmp_path / "x", parents=flag).__enter__()
    assert not (tmp_path / "x").exists()


def test_crashcheck_finds_nothing_in_a_transaction_with_parents(tmp_path: Path) -> None:
    require_tools("strace")
    directory = tmp_path / "a" / "b" / "tx"

    def workload() -> None:
        with crashsafe.transaction(directory, parents=True) as tx:
            tx.write("one", DATA)
            tx.write("two", DATA)
        print("saved", flush=True)

    def check(state: CheckContext) -> bool:
        where = state.dir / "a" / "b" / "tx"
        if where.is_dir():
            crashsafe.recover(where)  # what the next transaction or snapshot does first
        files = [where / "one", where / "two"]
        if all(f.exists() for f in files):
            return all(f.read_bytes() == DATA for f in files)
        return not any(f.exists() for f in files) and b"saved" not in state.stdout

    report = explore(workload, check, dirs=[tmp_path], jobs=2)
    assert report.states_checked > 0
    assert report.vulnerabilities == [], report.text()
