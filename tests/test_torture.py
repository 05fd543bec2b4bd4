"""``crashsafe torture``: real kills of real writers on real files, and what each left.

The naive writer is the broken twin the demonstration must catch: killed before
each of its syscalls in turn, it is left empty and torn, while ``atomic_write``
is left intact at every one of its syscalls.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from crashsafe import _torture, _torture_child, cli
from crashsafe._torture import CRASHSAFE, NAIVE, WriterResult, classify, torture
from crashsafe._torture_child import PIECE, TARGET, content
from tests import children
from tests.harness.mounts import loop_mount
from tests.harness.require import require, require_root, require_tools

CLI = [sys.executable, "-m", "crashsafe", "torture"]
SIZE = 1 << 20
PIECES = SIZE // PIECE  # the naive writer's write calls
# Kills per writer: more than either writer's syscalls (a process's first atomic_write
# makes 47, its mount-point check reading /proc/self/mountinfo), so each is a kill point.
KILLS = 56


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def _without_strace(tmp_path: Path) -> str:
    """A PATH with no strace on it (an empty directory)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    return str(empty)


def _by_aim(result: WriterResult) -> dict[str, set[tuple[str, int]]]:
    """Each kill point, and the (outcome, size) of every kill aimed at it."""
    seen: dict[str, set[tuple[str, int]]] = {}
    for k in result.kills:
        assert k.at is not None
        seen.setdefault(k.at, set()).add((k.outcome, k.size))
    return seen


# -- with strace: kills before chosen syscalls ------------------------------------------


def test_naive_is_left_empty_and_torn_and_atomic_write_always_intact(tmp_path: Path) -> None:
    require_tools("strace")
    result = torture(tmp_path, n=KILLS, seed=7, size=SIZE)
    assert result.method == "strace" and result.note is None
    naive, safe = result.writers
    assert (naive.writer, safe.writer) == (NAIVE, CRASHSAFE)
    # KILLS kills reach every call of either writer: each call is a kill point once
    # before any is one twice.
    assert naive.syscalls is not None and naive.syscalls <= KILLS
    assert safe.syscalls is not None and safe.syscalls <= KILLS
    points = _by_aim(naive)
    assert len(points) == naive.syscalls
    assert all(k.killed for k in naive.kills + safe.kills)

    # The naive writer: killed before its k-th write, the file holds the k-1
    # pieces written so far (the truncation came first): empty, then a prefix.
    assert points["write #1"] == {("empty", 0)}
    for k in range(2, PIECES + 1):
        assert points[f"write #{k}"] == {("torn", (k - 1) * PIECE)}
    assert points["openat #1"] == {("old", SIZE)}  # before the truncating open
    assert naive.count("empty") >= 1 and naive.count("torn") >= PIECES - 1
    assert naive.damaged >= PIECES and naive.intact < KILLS
    assert all(
        k.detail == "a prefix of the new content" for k in naive.kills if k.outcome == "torn"
    )

    # atomic_write: old before its rename, new from the rename on, at every call.
    assert len(_by_aim(safe)) == safe.syscalls
    assert safe.intact == KILLS and safe.damaged == 0
    # Killed between the link of its anonymous file and the rename: a named
    # temporary file, what sweep() is for. The naive writer makes none.
    assert safe.leftovers >= 1 and naive.leftovers == 0
    assert safe.count("old") >= 1 and safe.count("new") >= 1
    renames = [k for k in safe.kills if k.at is not None and k.at.startswith("rename")]
    assert renames and all(k.outcome == "old" for k in renames)
    assert result.ok
    assert list(tmp_path.iterdir()) == []  # the scratch directory is removed


def test_the_same_seed_chooses_the_same_kill_points(tmp_path: Path) -> None:
    require_tools("strace")
    first, again, other = (
        torture(tmp_path, n=6, seed=seed, writers=[NAIVE]).writers[0] for seed in (3, 3, 4)
    )
    assert [k.at for k in first.kills] == [k.at for k in again.kills]
    assert [(k.outcome, k.size) for k in first.kills] == [(k.outcome, k.size) for k in again.kills]
    assert [k.at for k in first.kills] != [k.at for k in other.kills]


def test_a_damaged_crashsafe_result_exits_1_and_says_how_to_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A writer that is held to crashsafe's promise but writes in place: what the
    # command must call a bug.
    require_tools("strace")
    broken = dataclasses.replace(NAIVE, name="broken", label="in place", checked=True)
    monkeypatch.setattr(_torture, "WRITERS", (broken,))
    # 20 kills at 20 different calls: the few calls where an in-place write is
    # intact (before its open, after its last write) cannot take them all.
    status = cli.main(["torture", str(tmp_path), "-n", "20", "--seed", "1"])
    out, _ = capsys.readouterr()
    assert status == 1
    assert "in place left " in out and "files damaged: that is a bug in crashsafe" in out
    assert "report it" in out and "--json" in out and "crashsafe --version" in out

    status = cli.main(["torture", str(tmp_path), "-n", "5", "--seed", "1", "--json"])
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert status == 1
    assert report["ok"] is False and report["exit_status"] == 1
    assert report["error"].startswith("in place left ")
    assert "that is a bug in crashsafe. Please report it" in report["error"]
    assert err == f"crashsafe: {report['error']}\n"
    assert report["writers"][0]["checked"] is True
    assert report["writers"][0]["empty"] + report["writers"][0]["torn"] >= 1
    assert list(tmp_path.iterdir()) == []


def test_json_shape(tmp_path: Path) -> None:
    require_tools("strace")
    result = _run(str(tmp_path), "-n", "3", "--seed", "5", "--size", "200000", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar on a pipe
    report = json.loads(result.stdout)
    assert set(report) == {
        "ok", "directory", "filesystem", "n", "seed", "size", "method", "note", "seconds",
        "writers",
    }  # fmt: skip
    assert report["ok"] is True and report["method"] == "strace" and report["note"] is None
    assert (report["n"], report["seed"], report["size"]) == (3, 5, 200000)
    assert Path(report["directory"]).parent == tmp_path
    assert not Path(report["directory"]).exists()
    assert [w["name"] for w in report["writers"]] == ["naive", "crashsafe"]
    for w in report["writers"]:
        assert set(w) == {
            "name", "label", "checked", "syscalls", "intact", "old", "new", "empty", "torn",
            "missing", "leftovers", "kills",
        }  # fmt: skip
        assert w["intact"] == w["old"] + w["new"]
        assert w["intact"] + w["empty"] + w["torn"] + w["missing"] == 3
        assert len(w["kills"]) == 3
        for k in w["kills"]:
            assert set(k) == {"at", "delay", "killed", "outcome", "detail", "bytes"}
            assert k["outcome"] in ("old", "new", "empty", "torn", "missing")
            assert k["at"] and k["delay"] is None
    assert report["writers"][1]["intact"] == 3


def test_text_report_on_a_pipe_and_the_bar_on_a_terminal(tmp_path: Path) -> None:
    require_tools("strace")
    piped = _run(str(tmp_path), "-n", "2", "--seed", "9")
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""
    assert "2 kills of each writer" in piped.stdout and "(--seed 9 repeats them)" in piped.stdout
    assert "crashsafe.atomic_write  " in piped.stdout and "intact (old/new)" in piped.stdout
    assert "crashsafe.atomic_write: every kill left the complete old or new file" in piped.stdout

    status, out, seen = children.run_on_terminal(
        [*CLI, str(tmp_path), "-n", "2", "--seed", "9"], 120
    )
    assert status == 0
    assert b"\rkilling 1/4 [#######" in seen and b"\rkilling 4/4 [" + b"#" * 30 + b"]" in seen
    assert seen.endswith(b"\r\x1b[K")  # cleared before the table
    # The same seed, the same kills: the same table (line 1 names the scratch directory).
    assert out.decode().splitlines()[2:] == piped.stdout.splitlines()[2:]


# -- without strace: kills at random times ----------------------------------------------


def test_without_strace_kills_at_random_times_and_crashsafe_is_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", _without_strace(tmp_path))
    result = torture(tmp_path, n=12, seed=2, size=SIZE)
    assert result.method == "timed" and result.note == "strace is not on PATH"
    naive, safe = result.writers
    assert naive.syscalls is None and safe.syscalls is None
    assert all(k.at is None and k.delay is not None for k in naive.kills + safe.kills)
    assert len(naive.kills) == 12 and naive.count("missing") == 0
    assert safe.intact == 12 and result.ok
    assert [p.name for p in tmp_path.iterdir()] == ["bin"]


def test_without_strace_the_command_says_so_and_that_results_vary(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": _without_strace(tmp_path)}
    result = _run(str(tmp_path), "-n", "2", env=env)
    assert result.returncode == 0, result.stderr
    assert "strace is not on PATH" in result.stdout and "vary from run to run" in result.stdout


# Run as user nobody, whose strace the kernel refuses a writer that made itself
# non-dumpable (PR_SET_DUMPABLE 0): what a container without CAP_SYS_PTRACE, or
# Yama's ptrace_scope, does to every writer.
NOT_TRACEABLE = """
import dataclasses, json, sys
from crashsafe._torture import CRASHSAFE, torture
setup = "import ctypes\\nctypes.CDLL(None).prctl(4, 0, 0, 0, 0)\\n" + CRASHSAFE.setup
writer = dataclasses.replace(CRASHSAFE, setup=setup)
r = torture(sys.argv[1], n=2, seed=1, writers=[writer])
print(json.dumps({"method": r.method, "note": r.note, "intact": r.writers[0].intact}))
"""


def _python_nobody_can_start_again() -> str:
    """An interpreter that user nobody can run and that can start itself again as
    ``sys.executable`` (a virtual environment's python may link into a directory
    closed to nobody, which the link's own start passes but a second start does not)."""
    require_root()
    require_tools("setpriv")
    again = "import subprocess, sys; subprocess.run([sys.executable, '-c', ''], check=True)"
    for python in (sys.executable, "/usr/bin/python3"):
        env = {**os.environ, "PYTHONPATH": children.SRC}
        probe = [*children.NOBODY, python, "-c", f"import crashsafe; {again}"]
        if subprocess.run(probe, env=env, capture_output=True, check=False).returncode == 0:
            return python
    require(False, "no Python that user nobody can run twice with crashsafe")
    raise AssertionError("unreachable")


def test_strace_refused_by_the_kernel_falls_back_to_timed_kills() -> None:
    require_tools("strace")
    python = _python_nobody_can_start_again()
    with children.root_owned_directory() as shared:
        shared.chmod(0o777)
        ran = subprocess.run(
            [*children.NOBODY, python, "-c", NOT_TRACEABLE, str(shared)],
            env={**os.environ, "PYTHONPATH": children.SRC},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert ran.returncode == 0, ran.stderr
        assert list(shared.iterdir()) == []
    report = json.loads(ran.stdout)
    assert report["method"] == "timed"
    assert report["note"].startswith("strace cannot trace the writer: ")
    assert report["note"].endswith("Operation not permitted")
    assert report["intact"] == 2


# -- what a killed writer left ----------------------------------------------------------


def test_every_kind_of_damage_is_told_apart(tmp_path: Path) -> None:
    size = 3 * PIECE + 5
    old, new = content(size, new=False), content(size, new=True)
    assert len(old) == len(new) == size and b"\0" not in old + new
    assert all(a != b for a, b in zip(old, new, strict=True))
    target = tmp_path / TARGET
    assert classify(target, size) == ("missing", "no file", -1)
    cases = {
        b"": ("empty", "0 bytes", 0),
        old: ("old", "", size),
        new: ("new", "", size),
        new[:PIECE]: ("torn", "a prefix of the new content", PIECE),
        new[:PIECE] + old[PIECE:]: ("torn", "old and new mixed", size),
        new[:PIECE] + bytes(size - PIECE): ("torn", "zeros", size),
        old[:10]: ("torn", "the wrong size", 10),
    }
    for data, expected in cases.items():
        target.write_bytes(data)
        assert classify(target, size) == expected


# -- bad usage and failures -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-n", "0"], "argument -n: '0' is not a number of kills >= 1"),
        (["-n", "-3"], "argument -n: '-3' is not a number of kills >= 1"),
        (["-n", "many"], "argument -n: 'many' is not a number of kills >= 1"),
        (["--size", "0"], "argument --size: '0' is not a number of bytes >= 1"),
        (["--seed", "-1"], "argument --seed: '-1' is not a seed"),
        (["--seed", "\u00b2"], "argument --seed: '\u00b2' is not a seed"),  # a digit, not ASCII
        (["a", "b"], "unrecognized arguments: b"),
    ],
)
def test_bad_usage_exits_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["torture", *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_or_file_dir_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-dir"
    assert cli.main(["torture", str(missing)]) == 2
    assert (
        capsys.readouterr().err == f"crashsafe torture: error: DIR {missing}: no such directory\n"
    )
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"")
    assert cli.main(["torture", str(a_file), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"crashsafe torture: error: DIR {a_file}: not a directory\n"
    assert captured.out == ""


def test_library_refuses_bad_arguments_naming_them(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^n=0: the number of kills must be at least 1$"):
        torture(tmp_path, n=0)
    with pytest.raises(ValueError, match=r"^size=0: the file must have at least 1 byte$"):
        torture(tmp_path, size=0)
    with pytest.raises(FileNotFoundError) as missing:
        torture(tmp_path / "nowhere")
    assert missing.value.filename == tmp_path / "nowhere"
    assert missing.value.strerror == "No such file or directory"
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError) as not_dir:
        torture(tmp_path / "f")
    assert not_dir.value.filename == tmp_path / "f"
    assert not_dir.value.strerror == "Not a directory"


@pytest.mark.parametrize("strace", [True, False])
def test_a_writer_that_fails_is_an_error_not_a_result(
    strace: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if strace:
        require_tools("strace")
    else:
        monkeypatch.setenv("PATH", _without_strace(tmp_path))
    failing = dataclasses.replace(
        CRASHSAFE, name="failing", write="raise OSError('disk on fire')\n"
    )
    with pytest.raises(
        RuntimeError, match=r"(?s)^the failing writer failed: .*OSError: disk on fire$"
    ):
        torture(tmp_path, n=1, writers=[failing])
    monkeypatch.setattr(_torture, "WRITERS", (failing,))
    assert cli.main(["torture", str(tmp_path), "-n", "1", "--json"]) == 1
    captured = capsys.readouterr()
    assert "crashsafe: torture could not run: the failing writer failed" in captured.err
    assert json.loads(captured.out)["ok"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if strace else ["bin"])


def test_a_writer_that_fails_before_it_is_ready_is_an_error(tmp_path: Path) -> None:
    unready = dataclasses.replace(CRASHSAFE, name="unready", setup="raise SystemExit('no go')\n")
    with pytest.raises(RuntimeError, match=r"^the unready writer failed: no go$"):
        torture(tmp_path, n=1, writers=[unready])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("strace", [True, False])
def test_a_writer_that_hangs_is_killed_and_an_error(
    strace: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if strace:
        require_tools("strace")
    else:
        monkeypatch.setenv("PATH", _without_strace(tmp_path))
    # It waits for ever, whatever the time allowed: the guard only has to be shorter.
    monkeypatch.setattr(_torture_child, "TIMEOUT", 1.0)
    hangs = dataclasses.replace(CRASHSAFE, name="hangs", write="select.select([], [], [])\n")
    with pytest.raises(RuntimeError, match=r"^a writer child did not finish in 1 s$"):
        torture(tmp_path, n=1, writers=[hangs])
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if strace else ["bin"])


def test_interrupted_exits_130_and_removes_its_scratch_directory(tmp_path: Path) -> None:
    require_tools("strace")
    proc = subprocess.Popen(
        [*CLI, str(tmp_path), "-n", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        # Interrupted once its kills run: a writer's directory holds its target.
        children.wait_until(
            lambda: (
                bool(list(tmp_path.glob(f"crashsafe-torture-*/*/{TARGET}")))
                or proc.poll() is not None
            )
        )
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err == b"crashsafe: interrupted; the scratch directory is removed\n"
    assert out == b""
    assert list(tmp_path.iterdir()) == []
    assert _processes_naming(tmp_path) == []  # no writer, no strace left running


def _processes_naming(path: Path) -> list[str]:
    """The command lines of running processes that name *path* (a writer names
    its target, strace its log)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace")
        except OSError:  # it exited meanwhile
            continue
        if str(path) in args:
            found.append(args.replace("\0", " "))
    return found


def test_without_dir_it_works_in_the_temporary_directory_and_removes_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what TMPDIR would say
    result = torture(n=1, seed=1, writers=[CRASHSAFE])
    assert Path(result.directory).parent == tmp_path
    assert result.writers[0].intact == 1
    assert list(tmp_path.iterdir()) == []


# -- on a real xfs, with either way of staging --------------------------------------------

NAMED = dataclasses.replace(
    CRASHSAFE,
    name="named",
    label="atomic_write, named staging",
    setup=CRASHSAFE.setup + "import crashsafe._platform._posix as p\np.use_tmpfile = False\n",
)


def test_on_xfs_atomic_write_is_intact_at_every_syscall_with_either_staging() -> None:
    require_tools("strace")
    with loop_mount("xfs") as mnt:
        result = torture(mnt, n=KILLS, seed=11, writers=[CRASHSAFE, NAMED])
        assert list(mnt.iterdir()) == []
    assert result.filesystem == "xfs" and result.method == "strace"
    for w in result.writers:
        assert w.syscalls is not None and w.syscalls <= KILLS
        assert len(_by_aim(w)) == w.syscalls  # every call a kill point
        assert w.intact == KILLS and w.count("old") >= 1 and w.count("new") >= 1
        assert w.leftovers >= 1  # a named temporary file before the rename: sweep's
    anonymous, named = result.writers
    # Named staging leaves its temporary file from its creation to the rename,
    # anonymous staging only between the link and the rename.
    assert named.leftovers > anonymous.leftovers
