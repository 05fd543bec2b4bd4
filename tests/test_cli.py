"""The command line: publishes standard input atomically, exit codes a shell can act on."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crashsafe.staging import MARKER
from tests.harness.checks import leftovers

CLI = [sys.executable, "-m", "crashsafe"]


def crashsafe(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, timeout=60, check=False)


def test_write_publishes_stdin(workdir: Path) -> None:
    target = workdir / "out.txt"
    result = crashsafe("write", str(target), stdin=b"hello\n")
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == b"hello\n"
    assert result.stdout == b""


def test_write_streams_large_input(workdir: Path) -> None:
    payload = os.urandom(1 << 20) * 24  # 24 MiB, larger than the 1 MiB read chunk
    target = workdir / "big"
    assert crashsafe("write", str(target), stdin=payload).returncode == 0
    assert target.read_bytes() == payload


def test_write_perm_is_exact_whatever_the_umask(workdir: Path) -> None:
    target = workdir / "key"
    for text, bits in (("600", 0o600), ("0640", 0o640), ("0o755", 0o755), ("4755", 0o4755)):
        assert crashsafe("write", "--perm", text, str(target), stdin=b"k").returncode == 0
        assert stat.S_IMODE(target.stat().st_mode) == bits


def test_write_keeps_existing_mode_without_perm(workdir: Path) -> None:
    target = workdir / "script"
    target.write_bytes(b"old")
    target.chmod(0o750)
    assert crashsafe("write", str(target), stdin=b"new").returncode == 0
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o750


@pytest.mark.parametrize("level", ["durable", "consistent", "none"])
def test_write_each_durability_level(workdir: Path, level: str) -> None:
    target = workdir / "f"
    assert crashsafe("write", "--durability", level, str(target), stdin=b"x").returncode == 0
    assert target.read_bytes() == b"x"


def test_sponge_case_reads_and_replaces_the_same_file(workdir: Path) -> None:
    target = workdir / "list.txt"
    target.write_bytes(b"b\na\nc\n")
    with open(target, "rb") as source:
        result = subprocess.run(
            [*CLI, "write", str(target)], stdin=source, capture_output=True, check=False
        )
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == b"b\na\nc\n"


def test_create_only_over_existing_exits_4_and_keeps_file(workdir: Path) -> None:
    target = workdir / "lock"
    target.write_bytes(b"first")
    result = crashsafe("write", "--create-only", str(target), stdin=b"second")
    assert result.returncode == 4
    assert b"already exists" in result.stderr
    assert target.read_bytes() == b"first"
    fresh = workdir / "fresh"
    assert crashsafe("write", "--create-only", str(fresh), stdin=b"new").returncode == 0
    assert fresh.read_bytes() == b"new"


def test_append_publishes_old_then_new(workdir: Path) -> None:
    target = workdir / "log"
    target.write_bytes(b"one\n")
    assert crashsafe("write", "--append", str(target), stdin=b"two\n").returncode == 0
    assert target.read_bytes() == b"one\ntwo\n"


def test_symlink_followed_by_default_replaced_with_no_follow(workdir: Path) -> None:
    real = workdir / "real"
    real.write_bytes(b"old")
    link = workdir / "link"
    link.symlink_to("real")
    assert crashsafe("write", str(link), stdin=b"through").returncode == 0
    assert link.is_symlink()
    assert real.read_bytes() == b"through"
    assert crashsafe("write", "--no-follow", str(link), stdin=b"replaced").returncode == 0
    assert not link.is_symlink()
    assert link.read_bytes() == b"replaced"
    assert real.read_bytes() == b"through"


def test_missing_directory_exits_1_naming_the_path(workdir: Path) -> None:
    target = workdir / "no" / "such" / "file"
    result = crashsafe("write", str(target), stdin=b"x")
    assert result.returncode == 1
    assert str(target.parent).encode() in result.stderr
    assert b"No such file or directory" in result.stderr
    assert not (workdir / "no").exists()


def test_directory_target_exits_1(workdir: Path) -> None:
    result = crashsafe("write", str(workdir), stdin=b"x")
    assert result.returncode == 1
    assert b"Is a directory" in result.stderr


@pytest.mark.parametrize("perm", ["999", "rw-r--r--", "77777", "-1"])
def test_bad_perm_is_a_usage_error(workdir: Path, perm: str) -> None:
    result = crashsafe("write", "--perm", perm, str(workdir / "f"), stdin=b"x")
    assert result.returncode == 2
    assert b"--perm" in result.stderr
    assert not (workdir / "f").exists()


def test_usage_errors_exit_2() -> None:
    assert crashsafe().returncode == 2
    assert crashsafe("write").returncode == 2
    assert crashsafe("write", "--create-only", "--append", "x").returncode == 2
    assert crashsafe("write", "--durability", "fast", "x").returncode == 2


def test_help_explains_commands_and_exit_status() -> None:
    top = crashsafe("--help")
    assert top.returncode == 0
    assert b"write" in top.stdout
    assert b"sweep" in top.stdout
    write = crashsafe("write", "--help")
    assert write.returncode == 0
    for needed in (b"--perm", b"--durability", b"--create-only", b"exit status", b"sponge"):
        assert needed in write.stdout


def test_console_script_is_installed() -> None:
    # Installed into the environment that runs the tests: its script directory is
    # beside the interpreter (a venv's bin/), whether or not it is on PATH.
    script = Path(sys.executable).parent / "crashsafe"
    result = subprocess.run([script, "--help"], capture_output=True, check=False)
    assert result.returncode == 0
    assert b"crash" in result.stdout.lower()


def test_interrupt_while_reading_leaves_target_unchanged(workdir: Path) -> None:
    target = workdir / "data"
    target.write_bytes(b"original")
    proc = subprocess.Popen(
        [*CLI, "write", str(target)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"partial input that must never be published")
        proc.stdin.flush()
        # Wait until the staging file exists, so the interrupt lands mid-write
        # (never at an instant chosen by a clock: the bound only turns a hang
        # into a failure).
        deadline = time.monotonic() + 120
        while not _writing(proc.pid, workdir):
            assert time.monotonic() < deadline, "the CLI never opened a staging file"
            assert proc.poll() is None, "the CLI ended before the interrupt"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert b"unchanged" in err
    assert target.read_bytes() == b"original"
    assert leftovers(workdir) == []


def _writing(pid: int, directory: Path) -> bool:
    """Whether process *pid* holds a staging file in *directory* open.

    An anonymous O_TMPFILE shows as ``DIR/#INODE (deleted)``, a named one by
    its temporary name.
    """
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            where = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if where.startswith(f"{directory}/") and ("(deleted)" in where or MARKER in where):
            return True
    return False


# -- copy and check -------------------------------------------------------------------


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def test_copy_publishes_and_prints_one_line_summary(workdir: Path) -> None:
    source = workdir / "src.zst"
    source.write_bytes(_zstd(os.urandom(1 << 16)))
    target = workdir / "dst.zst"
    target.write_bytes(b"old")
    result = crashsafe("copy", str(source), str(target), "--validate", "zstd")
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == source.read_bytes()
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 1
    size = source.stat().st_size
    assert f"{size} bytes" in lines[0]
    assert "by copy_file_range" in lines[0]  # the method, on this ext4 VM disk
    assert "/s" in lines[0]  # the rate
    assert result.stderr == b""  # no progress bar: stderr is not a terminal
    assert crashsafe("copy", "-q", str(source), str(target)).stdout == b""


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--validate", "zstd"], b"truncated"),
        (["--validate", "gzip"], b"gzip"),
        (["--sha256", "0" * 64], b"SHA-256 mismatch"),
    ],
)
def test_copy_rejected_exits_1_and_keeps_old(workdir: Path, args: list[str], why: bytes) -> None:
    source = workdir / "cut.zst"
    source.write_bytes(_zstd(os.urandom(1 << 16))[:-7])
    target = workdir / "dst.zst"
    target.write_bytes(b"old and good")
    result = crashsafe("copy", str(source), str(target), *args)
    assert result.returncode == 1
    assert why in result.stderr
    assert b"rejected" in result.stderr
    assert b"nothing was changed" in result.stderr
    assert target.read_bytes() == b"old and good"
    assert result.stdout == b""


def test_copy_perm_and_new_file_takes_source_bits(workdir: Path) -> None:
    source = workdir / "tool"
    source.write_bytes(b"#!/bin/sh\n")
    source.chmod(0o750)
    assert crashsafe("copy", str(source), str(workdir / "a")).returncode == 0
    assert stat.S_IMODE((workdir / "a").stat().st_mode) == 0o750
    assert crashsafe("copy", "--perm", "600", str(source), str(workdir / "b")).returncode == 0
    assert stat.S_IMODE((workdir / "b").stat().st_mode) == 0o600


def test_copy_missing_source_exits_1(workdir: Path) -> None:
    result = crashsafe("copy", str(workdir / "nope"), str(workdir / "dst"))
    assert result.returncode == 1
    assert b"No such file or directory" in result.stderr
    assert not (workdir / "dst").exists()


def test_copy_usage_errors_exit_2(workdir: Path) -> None:
    assert crashsafe("copy", "only-one").returncode == 2
    assert crashsafe("copy", "a", "b", "--validate", "xz").returncode == 2
    assert crashsafe("copy", "a", "b", "--sha256", "abc").returncode == 2


def test_copy_shows_progress_bar_on_a_terminal(workdir: Path) -> None:
    import pty

    source = workdir / "big"
    source.write_bytes(os.urandom(1 << 20) * 40)
    leader, follower = pty.openpty()
    try:
        result = subprocess.run(
            [*CLI, "copy", str(source), str(workdir / "dst")],
            stderr=follower,
            stdout=subprocess.PIPE,
            timeout=60,
            check=False,
        )
        os.close(follower)
        follower = -1
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert result.returncode == 0
    assert b"100% [##############################]" in seen
    assert b"40.0 MiB / 40.0 MiB" in seen
    assert seen.endswith(b"\r\x1b[K")  # the bar is cleared before the summary


def test_check_complete_and_incomplete(workdir: Path) -> None:
    good = workdir / "good.zst"
    good.write_bytes(_zstd(b"payload" * 1000))
    ok = crashsafe("check", str(good), "--as", "zstd")
    assert ok.returncode == 0
    assert b"complete zstd file" in ok.stdout
    cut = workdir / "cut.zst"
    cut.write_bytes(good.read_bytes()[:-3])
    bad = crashsafe("check", str(cut), "--as", "zstd")
    assert bad.returncode == 1
    assert b"not a complete zstd file" in bad.stderr
    assert b"truncated" in bad.stderr
    empty = workdir / "empty.json"
    empty.write_bytes(b"")
    assert crashsafe("check", str(empty), "--as", "json").returncode == 1
    missing = crashsafe("check", str(workdir / "nope"), "--as", "json")
    assert missing.returncode == 1
    assert b"cannot check" in missing.stderr
    assert crashsafe("check", str(good)).returncode == 2  # --as is required
    assert crashsafe("check", str(good), "--as", "xz").returncode == 2
    assert cut.read_bytes() == good.read_bytes()[:-3]  # check never writes
