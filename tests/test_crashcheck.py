"""crashcheck's public doors: ``crashsafe.crashcheck.explore`` (a program or a Python
callable), ``crashsafe crashcheck`` (text, JSON, exit statuses, errors) and the pytest
fixture. Real programs under real strace; the explorer and the tracer have their own
tests, the paper's table is tests/test_crashcheck_workloads.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import crashsafe
from crashsafe.crashcheck import CheckContext, CrashcheckError, explore
from tests.children import run_on_terminal
from tests.harness.require import require_tools

OLD = b"old " * 2000
NEW = b"NEW!" * 2000

# A shell check: data is the old or the new content, whole; the new one once "saved".
CHECK = (
    f"{sys.executable} -c \"import os, sys; d = open('data', 'rb').read(); "
    f"said = 'saved' in os.environ['CRASHCHECK_STDOUT']; "
    f"sys.exit(0 if d == {NEW!r} or (d == {OLD!r} and not said) else 'data: %d bytes' % len(d))\""
)

IN_PLACE = f"""\
import os
fd = os.open("data", os.O_WRONLY | os.O_TRUNC)
os.write(fd, {NEW!r})
os.fsync(fd)
os.close(fd)
print("saved", flush=True)
"""


@pytest.fixture(autouse=True)
def _strace() -> None:
    require_tools("strace")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    (tmp_path / "data").write_bytes(OLD)
    return tmp_path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crashsafe", "crashcheck", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


# ------------------------------------------------------------------------------ the API


def test_explore_finds_the_in_place_writer_torn(data: Path) -> None:
    report = explore([sys.executable, "-c", IN_PLACE], CHECK, dirs=[data], cwd=data, stdout=2)
    assert report.vulnerabilities
    assert {v.kind for v in report.vulnerabilities} == {"atomicity"}
    assert report.states_checked <= report.states_enumerated
    assert report.operations >= 3  # the truncation, the write, the fsync
    assert report.syscalls > report.operations
    first = report.vulnerabilities[0]
    assert first.crash_point.syscall > 0
    assert "data" in " ".join(first.lost + first.persisted)
    assert (data / "data").read_bytes() == NEW  # the program ran on the real directory


def test_explore_passes_atomic_write_given_as_a_callable(data: Path) -> None:
    def save() -> None:
        crashsafe.atomic_write(data / "data", NEW)
        print("saved")

    seen: list[bytes] = []

    def check(state: CheckContext) -> bool:
        content = (state.dir / "data").read_bytes()
        seen.append(state.stdout)
        return content == NEW or (content == OLD and b"saved" not in state.stdout)

    report = explore(save, check, dirs=[data], jobs=1)
    assert report.vulnerabilities == []
    assert report.states_checked >= 3
    assert b"saved\n" in seen  # the check was told what the callable printed
    assert report.program.endswith("save")


def test_explore_finds_a_callable_that_writes_in_place(data: Path) -> None:
    def save() -> None:
        with open(data / "data", "wb") as f:
            f.write(NEW)
            f.flush()
            os.fsync(f.fileno())
        print("saved")

    def check(state: CheckContext) -> None:
        content = (state.dir / "data").read_bytes()
        assert content == NEW or (content == OLD and b"saved" not in state.stdout), (
            f"{len(content)} bytes"
        )

    report = explore(save, check, dirs=[data])
    assert {v.kind for v in report.vulnerabilities} == {"atomicity"}
    assert any("bytes" in v.check_output for v in report.vulnerabilities)


def test_a_failing_program_is_refused(data: Path) -> None:
    with pytest.raises(CrashcheckError, match="exited with status 3"):
        explore([sys.executable, "-c", "raise SystemExit(3)"], CHECK, dirs=[data], cwd=data)


def test_a_check_that_fails_before_the_run_is_refused(data: Path) -> None:
    with pytest.raises(CrashcheckError, match="before"):
        explore([sys.executable, "-c", "pass"], "exit 1", dirs=[data], cwd=data)


def test_bad_dirs_and_workloads_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match="missing"):
        explore(["true"], "true", dirs=[missing])
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="file"):
        explore(["true"], "true", dirs=[tmp_path / "file"])
    with pytest.raises(TypeError, match="as a list"):
        explore("true", "true", dirs=[tmp_path])
    with pytest.raises(ValueError, match="at least one directory"):
        explore(["true"], "true", dirs=[])
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="inside"):
        explore(["true"], "true", dirs=[tmp_path, tmp_path / "sub"])


# ------------------------------------------------------------------------------ the command


def test_the_command_reports_and_exits_1(data: Path) -> None:
    done = cli("--check", CHECK, "--", sys.executable, "-c", IN_PLACE, cwd=data)
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("saved\n")  # the program's own output comes first
    assert "atomicity: a crash after system call" in done.stdout
    assert "distinct ones checked" in done.stdout


def test_the_command_json_is_alone_on_standard_output(data: Path) -> None:
    done = cli("--json", "--check", CHECK, "--", sys.executable, "-c", IN_PLACE, cwd=data)
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)  # nothing else on standard output
    assert "saved" in done.stderr  # the program's output went to standard error
    assert result["ok"] is False
    assert result["exit_status"] == 1
    assert result["states_checked"] >= 1
    kinds = {v["kind"] for v in result["vulnerabilities"]}
    assert kinds == {"atomicity"}
    first = result["vulnerabilities"][0]
    assert set(first) >= {"kind", "crash_point", "persisted", "lost", "check_output"}
    assert set(first["crash_point"]) == {"syscall", "call"}


def test_the_command_exits_0_for_a_safe_writer(data: Path) -> None:
    safe = f"import crashsafe; crashsafe.atomic_write('data', {NEW!r}); print('saved')"
    done = cli("--json", "--check", CHECK, "--", sys.executable, "-c", safe, cwd=data)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] is True
    assert result["vulnerabilities"] == []


def test_the_command_with_several_dirs(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "data").write_bytes(OLD)
    # Both copies are given, in order; the second is written in place.
    check = (
        "IFS=: read -r one two <<EOF\n$CRASHCHECK_DIRS\nEOF\n"
        f'test "$PWD" = "$one" && cmp -s "$one/data" "$two/data" || '
        f'{{ test "$(wc -c < "$two/data")" -eq {len(NEW)}; }}'
    )
    program = f"open('two/data', 'wb').write({NEW!r})"
    done = cli(
        "--dir", "one", "--dir", "two", "--json", "--check", check,
        "--", sys.executable, "-c", program, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["vulnerabilities"]
    assert all(
        "two/data" in " ".join(v["persisted"] + v["lost"]) for v in result["vulnerabilities"]
    )


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--check", "true"], "no PROGRAM"),
        (["--check", "true", "--"], "no PROGRAM"),
        (["--dir", "nowhere", "--check", "true", "--", "true"], "nowhere"),
        (["--check", "exit 1", "--", "true"], "before"),
        (["--check", "true", "--", "/nonexistent/program"], "/nonexistent/program"),
    ],
)
def test_the_command_refuses_with_exit_2(data: Path, args: list[str], said: str) -> None:
    done = cli(*args, cwd=data)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert said in done.stderr


def test_the_command_refuses_a_shared_memory_map_unless_told(data: Path) -> None:
    program = (
        "import mmap; f = open('data', 'r+b'); m = mmap.mmap(f.fileno(), 0); "
        "m[0:4] = b'NEW!'; m.flush()"
    )
    done = cli("--check", "true", "--", sys.executable, "-c", program, cwd=data)
    assert done.returncode == 2
    assert "data" in done.stderr and "map" in done.stderr
    done = cli(
        "--ignore-mmap", "data", "--check", "true", "--", sys.executable, "-c", program, cwd=data
    )
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------ the fixture

PLUGIN_TEST = f"""
import os, crashsafe

OLD, NEW = {OLD!r}, {NEW!r}


def check(state):
    content = (state.dir / "data").read_bytes()
    assert content == NEW or (content == OLD and b"saved" not in state.stdout)


def test_atomic_write(crashcheck, tmp_path):
    (tmp_path / "data").write_bytes(OLD)

    def save():
        crashsafe.atomic_write(tmp_path / "data", NEW)
        print("saved")

    report = crashcheck.assert_safe(save, check)
    assert report.states_checked > 0


def test_in_place(crashcheck, tmp_path):
    (tmp_path / "data").write_bytes(OLD)

    def save():
        with open(tmp_path / "data", "wb") as f:
            f.write(NEW)
        print("saved")

    crashcheck.assert_safe(save, check)
"""


def test_the_pytest_fixture_passes_a_safe_save_and_fails_an_unsafe_one(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(PLUGIN_TEST)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-cov",
         "-W", "ignore", "test_user.py"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout
    assert "1 failed, 1 passed" in done.stdout
    assert "test_in_place" in done.stdout and "atomicity" in done.stdout


def test_a_fifo_in_the_directory_is_refused_by_name(data: Path) -> None:
    os.mkfifo(data / "pipe")
    with pytest.raises(CrashcheckError, match="pipe: not a regular file"):
        explore(["true"], "true", dirs=[data])


def test_a_terminated_command_leaves_no_scratch_behind(data: Path, tmp_path: Path) -> None:
    # The check terminates crashcheck itself (its parent's parent) the first time it runs
    # on a crash state, then waits; SIGTERM must stop it and remove every scratch copy.
    marker = tmp_path / "started"
    check = f'test -e {marker} || {{ touch {marker}; kill -TERM "$CRASHCHECK_PARENT"; sleep 60; }}'
    scratch = tmp_path.parent / f"{tmp_path.name}-tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    before = set(Path("/dev/shm").glob("crashcheck-*"))
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys; os.environ['CRASHCHECK_PARENT'] = str(os.getpid()); "
         "from crashsafe.cli import main; sys.exit(main(sys.argv[1:]))",
         "crashcheck", "--jobs", "1", "--check", check, "--",
         sys.executable, "-c", IN_PLACE],
        cwd=data, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert marker.exists()
    assert list(scratch.iterdir()) == []
    scratch.rmdir()
    assert set(Path("/dev/shm").glob("crashcheck-*")) <= before
    # The check it was waiting for was stopped too.
    assert subprocess.run(["pgrep", "-f", f"touch {marker}"], check=False).returncode == 1


def test_a_temporary_directory_inside_a_checked_one_is_refused(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(data / "tmp"))
    (data / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    with pytest.raises(CrashcheckError, match="set TMPDIR"):
        explore(["true"], "true", dirs=[data])
    assert list((data / "tmp").iterdir()) == []


def test_the_command_draws_a_progress_bar_on_a_terminal(data: Path) -> None:
    argv = [sys.executable, "-m", "crashsafe", "crashcheck", "--check", CHECK,
            "--", sys.executable, "-c", IN_PLACE]  # fmt: skip
    status, out, seen = run_on_terminal(argv, 120, cwd=data)
    assert status == 1
    assert re.search(rb"\rchecking (\d+)/\1 \[#{30}\]", seen), seen
    assert seen.endswith(b"\r\x1b[K")  # cleared before the report
    assert b"atomicity" in out
