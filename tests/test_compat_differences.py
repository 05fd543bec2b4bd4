"""crashsafe.compat.atomicwrites where it differs from atomicwrites on purpose, and the
parts of atomicwrites' API its own suite does not test (subclasses, modes, the two
move functions), grouped by promise."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

import pytest

import crashsafe
import crashsafe.compat.atomicwrites as aw
from crashsafe.compat.atomicwrites import AtomicWriter, atomic_write, move_atomic, replace_atomic
from tests.harness.require import require_tools


def _umask() -> int:
    # Read from /proc: os.umask() set-and-restore is not thread-safe.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask line in /proc/self/status")


# ---------------------------------------------------------------- permissions


def test_replaced_file_keeps_its_mode(workdir: Path, staging: str) -> None:
    target = workdir / "config"
    target.write_text("old")
    target.chmod(0o640)
    with atomic_write(target, overwrite=True) as f:
        f.write("new")
    # atomicwrites published 0600 here (mkstemp's mode).
    assert (target.stat().st_mode & 0o7777, target.read_text()) == (0o640, "new")


def test_new_file_gets_the_mode_open_gives(workdir: Path, staging: str) -> None:
    with atomic_write(workdir / "new") as f:
        f.write("x")
    assert (workdir / "new").stat().st_mode & 0o7777 == 0o666 & ~_umask()


def test_perm_sets_the_exact_mode(workdir: Path) -> None:
    with atomic_write(workdir / "key", perm=0o600) as f:
        f.write("secret")
    assert (workdir / "key").stat().st_mode & 0o7777 == 0o600


# ---------------------------------------------------------------- symlinks


def test_symlink_is_followed_and_kept(workdir: Path, staging: str) -> None:
    (workdir / "real").write_text("old")
    (workdir / "link").symlink_to("real")
    with atomic_write(workdir / "link", overwrite=True) as f:
        f.write("new")
    assert os.readlink(workdir / "link") == "real"
    assert (workdir / "real").read_text() == "new"


# ---------------------------------------------------------------- hard links


def test_hard_linked_target_is_refused_before_the_block(workdir: Path) -> None:
    target, other = workdir / "a", workdir / "b"
    target.write_text("old")
    os.link(target, other)
    ran = []
    with (
        pytest.raises(crashsafe.HardLinkedTargetError) as caught,
        atomic_write(target, overwrite=True) as f,
    ):
        ran.append(f)
    assert (ran, caught.value.filename, caught.value.links) == ([], str(target), 2)
    assert (target.read_text(), other.read_text()) == ("old", "old")
    assert sorted(p.name for p in workdir.iterdir()) == ["a", "b"]


def test_hardlinks_break_splits_the_links_as_atomicwrites_did(workdir: Path) -> None:
    target, other = workdir / "a", workdir / "b"
    target.write_text("old")
    os.link(target, other)
    with atomic_write(target, overwrite=True, hardlinks="break") as f:
        f.write("new")
    assert (target.read_text(), other.read_text()) == ("new", "old")


# ---------------------------------------------------------------- all or nothing


def test_error_in_the_block_leaves_target_and_directory_as_they_were(
    workdir: Path, staging: str
) -> None:
    (workdir / "t").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_write(workdir / "t", overwrite=True) as f:
        f.write("new")
        raise KeyboardInterrupt
    assert os.listdir(workdir) == ["t"]
    assert (workdir / "t").read_text() == "old"


def test_overwrite_false_refuses_an_existing_target_before_the_block(workdir: Path) -> None:
    (workdir / "t").write_text("old")
    ran = False
    with pytest.raises(FileExistsError) as caught, atomic_write(workdir / "t") as f:
        ran = True
        f.write("new")
    assert (caught.value.errno, caught.value.filename) == (errno.EEXIST, str(workdir / "t"))
    assert not ran
    assert (workdir / "t").read_text() == "old"


# ---------------------------------------------------------------- modes and keywords


def test_binary_mode_writes_bytes(workdir: Path) -> None:
    with atomic_write(str(workdir / "b").encode(), mode="wb") as f:
        f.write(b"\x00\xff")
    assert (workdir / "b").read_bytes() == b"\x00\xff"


def test_text_is_utf8_whatever_the_locale(workdir: Path) -> None:
    with atomic_write(workdir / "t", newline="\r\n", errors="strict", buffering=1) as f:
        f.write("é\n")
    assert (workdir / "t").read_bytes() == "é\r\n".encode()


def test_plus_mode_reads_back_what_it_wrote(workdir: Path) -> None:
    with atomic_write(workdir / "t", mode="w+") as f:
        f.write("abc")
        f.seek(0)
        assert f.read() == "abc"
    assert (workdir / "t").read_text() == "abc"


def test_file_name_is_the_target_path(workdir: Path) -> None:
    with atomic_write(workdir / "t") as f:
        assert f.name == str(workdir / "t")
        assert not (workdir / "t").exists()


@pytest.mark.parametrize(
    ("mode", "word"), [("a", "appending"), ("w+a", "appending"), ("x", "overwrite"), ("r", "'w'")]
)
def test_modes_atomicwrites_refuses_are_refused(workdir: Path, mode: str, word: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"mode {mode!r}")) as caught:
        AtomicWriter(workdir / "t", mode=mode)
    assert word in str(caught.value)


def test_unknown_open_keyword_is_named(workdir: Path) -> None:
    with pytest.raises(TypeError, match="'closefd'"), atomic_write(workdir / "t", closefd=True):
        pass
    assert os.listdir(workdir) == []


def test_durability_none_still_publishes(workdir: Path) -> None:
    with atomic_write(workdir / "t", durability="none") as f:
        f.write("x")
    assert (workdir / "t").read_text() == "x"


def test_version_and_public_names() -> None:
    assert aw.__version__ == "1.4.1"
    assert sorted(aw.__all__) == ["AtomicWriter", "atomic_write", "move_atomic", "replace_atomic"]


# ---------------------------------------------------------------- subclasses


class _Recording(AtomicWriter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def sync(self, f: IO[Any]) -> None:
        self.calls.append("sync")
        super().sync(f)

    def commit(self, f: IO[Any]) -> None:
        self.calls.append("commit")
        super().commit(f)

    def rollback(self, f: IO[Any] | None) -> None:
        self.calls.append("rollback")
        super().rollback(f)


def test_subclass_steps_run_in_atomicwrites_order(workdir: Path) -> None:
    writer = _Recording(workdir / "t", overwrite=True)
    with writer.open() as f:
        f.write("x")
    assert writer.calls == ["sync", "commit"]
    failing = _Recording(workdir / "t", overwrite=True)
    with pytest.raises(ZeroDivisionError), failing.open() as f:
        f.write("y")
        _ = 1 / 0
    assert failing.calls == ["rollback"]
    assert os.listdir(workdir) == ["t"]
    assert (workdir / "t").read_text() == "x"


def test_writer_cls_is_used(workdir: Path) -> None:
    with atomic_write(workdir / "t", writer_cls=_Recording, mode="wb") as f:
        f.write(b"x")
    assert (workdir / "t").read_bytes() == b"x"


def test_failing_rollback_does_not_hide_the_error(workdir: Path) -> None:
    class Broken(AtomicWriter):
        def rollback(self, f: IO[Any] | None) -> None:
            super().rollback(f)
            raise OSError("rollback failed")

    with pytest.raises(ZeroDivisionError), Broken(workdir / "t").open():
        _ = 1 / 0
    assert os.listdir(workdir) == []


class _ElsewhereStaged(AtomicWriter):
    """A subclass that stages in another directory, as atomicwrites allowed."""

    staging_dir = ""

    def get_fileobject(
        self, suffix: str = "", prefix: str = "aw-", dir: str | None = None, **kwargs: Any
    ) -> IO[Any]:
        return super().get_fileobject(suffix, prefix, dir or self.staging_dir, **kwargs)


def test_staging_in_another_directory_moves_by_name(tmp_path: Path) -> None:
    (tmp_path / "stage").mkdir()
    (tmp_path / "out").mkdir()
    _ElsewhereStaged.staging_dir = str(tmp_path / "stage")
    with atomic_write(tmp_path / "out" / "t", writer_cls=_ElsewhereStaged) as f:
        assert os.path.dirname(f.name) == str(tmp_path / "stage")
        f.write("x")
    assert (tmp_path / "out" / "t").read_text() == "x"
    assert os.listdir(tmp_path / "stage") == []
    with (
        pytest.raises(FileExistsError),
        atomic_write(tmp_path / "out" / "t", writer_cls=_ElsewhereStaged) as f,
    ):
        f.write("y")
    with (
        pytest.raises(RuntimeError),
        atomic_write(tmp_path / "out" / "t", writer_cls=_ElsewhereStaged, overwrite=True) as f,
    ):
        raise RuntimeError
    assert os.listdir(tmp_path / "stage") == []
    assert (tmp_path / "out" / "t").read_text() == "x"
    with atomic_write(tmp_path / "out" / "t", writer_cls=_ElsewhereStaged, overwrite=True) as f:
        f.write("z")
    assert (tmp_path / "out" / "t").read_text() == "z"
    # Staged by mkstemp, as atomicwrites stages everything: 0600.
    assert (tmp_path / "out" / "t").stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path / "stage") == []


def test_dir_of_the_target_itself_is_crashsafe_staging(workdir: Path) -> None:
    _ElsewhereStaged.staging_dir = str(workdir)
    with atomic_write(workdir / "t", writer_cls=_ElsewhereStaged) as f:
        assert f.name == str(workdir / "t")
        f.write("x")
    assert os.listdir(workdir) == ["t"]


# ---------------------------------------------------------------- replace_atomic, move_atomic


def test_replace_atomic_replaces_and_move_atomic_refuses(tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with pytest.raises(FileExistsError):
        move_atomic(tmp_path / "a", tmp_path / "b")
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]
    replace_atomic(tmp_path / "a", tmp_path / "b")
    assert os.listdir(tmp_path) == ["b"]
    assert (tmp_path / "b").read_text() == "a"
    (tmp_path / "sub").mkdir()
    move_atomic(tmp_path / "b", tmp_path / "sub" / "c")
    assert (tmp_path / "sub" / "c").read_text() == "a"
    assert not (tmp_path / "b").exists()


def test_replace_atomic_moves_a_symlink_as_a_link(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to("elsewhere")
    replace_atomic(tmp_path / "link", tmp_path / "moved")
    assert os.readlink(tmp_path / "moved") == "elsewhere"


def test_replace_atomic_of_a_missing_source_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        replace_atomic(tmp_path / "missing", tmp_path / "t")


_TRACED = """
import sys
from crashsafe.compat.atomicwrites import move_atomic, replace_atomic
d = sys.argv[1]
open(d + "/src/a", "w").write("a")
replace_atomic(d + "/src/a", d + "/dst/a")
open(d + "/src/b", "w").write("b")
move_atomic(d + "/src/b", d + "/dst/b")
"""


def test_data_is_fsynced_before_the_move_and_both_directories_after(tmp_path: Path) -> None:
    # Read from real syscalls: atomicwrites synced no data in replace_atomic and
    # move_atomic, and only the destination's directory in replace_atomic.
    require_tools("strace")
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    trace = subprocess.run(
        # No coverage tracer in the traced child: it would add syscalls of its own.
        ["env", "-u", "COVERAGE_PROCESS_CONFIG", "strace", "-f", "-qq", "-y",
         "-e", "trace=fsync,rename,renameat,renameat2,link,linkat",
         sys.executable, "-c", _TRACED, str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stderr  # fmt: skip
    steps = []
    for line in trace.splitlines():
        call = re.match(r"(?:\[pid +\d+\] )?(\w+)\((.*)\) += 0", line)
        if call is None:
            continue
        name, args = call.groups()
        if name == "fsync":
            steps.append("fsync " + re.sub(r"^\d+<(.*)>$", r"\1", args).replace(str(tmp_path), ""))
        else:
            steps.append("link" if name.startswith("link") else "rename")
    assert steps == [
        "fsync /src/a", "rename", "fsync /dst", "fsync /src",
        "fsync /src/b", "link", "fsync /dst", "fsync /src",
    ], trace  # fmt: skip


_INJECTED = """
import json, os, sys
from crashsafe.compat.atomicwrites import replace_atomic
d = sys.argv[1]
open(d + "/a", "w").write("new")
try:
    replace_atomic(d + "/a", d + "/t")
except OSError as e:
    print(json.dumps([type(e).__name__, e.errno, e.filename]))
"""


@pytest.mark.parametrize(
    ("when", "error", "left"),
    [
        # The data's fsync fails: nothing moves, the error names the source.
        (1, "OSError", ["a", "t"]),
        # The directory's fsync fails after the rename: the target is replaced,
        # and the error says so.
        (2, "NotDurableError", ["t"]),
    ],
)
def test_fsync_errors(tmp_path: Path, when: int, error: str, left: list[str]) -> None:
    require_tools("strace")
    (tmp_path / "t").write_text("old")
    child = subprocess.run(
        ["env", "-u", "COVERAGE_PROCESS_CONFIG", "strace", "-f", "-qq", "-o", "/dev/null",
         "-e", "trace=fsync", "-e", f"inject=fsync:error=EIO:when={when}",
         sys.executable, "-c", _INJECTED, str(tmp_path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    name = str(tmp_path / ("a" if when == 1 else "t"))
    assert child.stdout.strip() == f'["{error}", {errno.EIO}, "{name}"]'
    assert sorted(os.listdir(tmp_path)) == left
    assert (tmp_path / "t").read_text() == ("old" if when == 1 else "new")


def test_a_bad_encoding_leaves_nothing(workdir: Path) -> None:
    (workdir / "stage").mkdir()
    _ElsewhereStaged.staging_dir = str(workdir / "stage")
    for writer in (AtomicWriter, _ElsewhereStaged):
        with (
            pytest.raises(LookupError),
            atomic_write(workdir / "t", writer_cls=writer, encoding="no-such-codec"),
        ):
            pass
    assert sorted(os.listdir(workdir)) == ["stage"]
    assert os.listdir(workdir / "stage") == []


def test_a_missing_staging_directory_is_named(tmp_path: Path) -> None:
    _ElsewhereStaged.staging_dir = str(tmp_path / "missing")
    with (
        pytest.raises(FileNotFoundError) as caught,
        atomic_write(tmp_path / "t", writer_cls=_ElsewhereStaged),
    ):
        pass
    assert str(tmp_path / "missing") in str(caught.value)


_KILLED = """
import sys
from crashsafe.compat.atomicwrites import atomic_write
with atomic_write(sys.argv[1], mode="wb", overwrite=True) as f:
    for _ in range(16):
        f.write(b"n" * 65536)
        f.flush()
"""


@pytest.mark.parametrize("kill_at", ["write:when=5", "fsync:when=1"])
def test_a_writer_killed_mid_write_leaves_no_debris(tmp_path: Path, kill_at: str) -> None:
    # atomicwrites, killed at the same points, leaves its tmpXXXXXXXX file behind.
    require_tools("strace")
    target = tmp_path / "t"
    target.write_bytes(b"old")
    syscall = kill_at.split(":", maxsplit=1)[0]
    child = subprocess.run(
        ["env", "-u", "COVERAGE_PROCESS_CONFIG", "strace", "-f", "-qq", "-o", "/dev/null",
         "-e", f"trace={syscall}", "-e", f"inject={kill_at.replace(':', ':signal=KILL:')}",
         sys.executable, "-c", _KILLED, str(target)],
        capture_output=True, check=False, timeout=60,
    )  # fmt: skip
    assert child.returncode == -9, child.stderr  # strace dies of its tracee's SIGKILL
    assert os.listdir(tmp_path) == ["t"]
    assert target.read_bytes() == b"old"
