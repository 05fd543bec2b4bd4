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
from tests.children import run_on_terminal
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
    source = workdir / "big"
    source.write_bytes(os.urandom(1 << 20) * 40)
    status, _, seen = run_on_terminal([*CLI, "copy", str(source), str(workdir / "dst")], 60)
    assert status == 0
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
    assert crashsafe("check").returncode == 2  # a FILE is required
    assert crashsafe("check", str(good), "--as", "xz").returncode == 2
    assert cut.read_bytes() == good.read_bytes()[:-3]  # check never writes


# -- version, empty input, checks on write ------------------------------------------


def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    result = crashsafe("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == f"crashsafe {version('crashsafe')}\n"


def test_write_refuses_empty_input_unless_allowed(workdir: Path) -> None:
    # `sort missing | crashsafe write conf` must not publish an empty config.
    conf = workdir / "conf"
    conf.write_bytes(b"key = 1\n")
    result = crashsafe("write", str(conf), stdin=b"")
    assert result.returncode == 1
    assert b"standard input is empty" in result.stderr
    assert b"--allow-empty" in result.stderr
    assert f"{conf}: ".encode() in result.stderr
    assert conf.read_bytes() == b"key = 1\n"
    for how in ([], ["--append"], ["--create-only"]):
        fresh = workdir / f"fresh{len(how)}{''.join(how)}"
        assert crashsafe("write", *how, str(fresh), stdin=b"").returncode == 1
        assert not fresh.exists()
    assert crashsafe("write", "--append", str(conf), stdin=b"").returncode == 1
    allowed = crashsafe("write", "--allow-empty", str(conf), stdin=b"")
    assert allowed.returncode == 0, allowed.stderr
    assert conf.read_bytes() == b""


@pytest.mark.parametrize(
    ("args", "data", "why"),
    [
        (["--validate", "json"], b'{"a": 1', b"not valid JSON"),
        (["--sha256", "0" * 64], b"content", b"SHA-256 mismatch"),
        (["--min-size", "100"], b"short", b"5 bytes, fewer than --min-size 100"),
        (["--validate", "json", "--min-size", "1"], b"[1] trailing", b"not valid JSON"),
    ],
)
def test_write_checks_reject_and_keep_the_old_file(
    workdir: Path, args: list[str], data: bytes, why: bytes
) -> None:
    target = workdir / "doc.json"
    target.write_bytes(b'{"old": true}')
    result = crashsafe("write", *args, str(target), stdin=data)
    assert result.returncode == 1
    assert why in result.stderr, result.stderr
    assert b"rejected" in result.stderr
    assert target.read_bytes() == b'{"old": true}'


def test_write_checks_pass_and_publish(workdir: Path) -> None:
    import hashlib

    target = workdir / "doc.json"
    data = b'{"new": [1, 2, 3]}\n'
    digest = hashlib.sha256(data).hexdigest().upper()  # either case
    args = ["--validate", "json", "--sha256", digest, "--min-size", str(len(data))]
    result = crashsafe("write", *args, str(target), stdin=data)
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == data
    # With --append the checks see what is published: the old content and the input.
    log = workdir / "log"
    log.write_bytes(b"0123456789")
    assert crashsafe("write", "--append", "--min-size", "12", str(log), stdin=b"ab").returncode == 0
    assert log.read_bytes() == b"0123456789ab"


# -- one Ctrl-D ends a terminal's input ------------------------------------------------


def _run_on_terminal(args: list[str], typed: list[bytes]) -> tuple[int, bytes]:
    """Run the command with a terminal as standard input and type *typed* into it; return
    its exit status and standard error. Fails if it is still waiting for input."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen([*CLI, *args], stdin=follower, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    os.close(follower)
    try:
        # A terminal hands over one line per read, and a Ctrl-D at the start of a line
        # as a 0-byte read, however early it was typed.
        for chunk in typed:
            os.write(leader, chunk)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("still waiting for input after one Ctrl-D") from None
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"reading standard input" in err, err
    assert b"Ctrl-D" in err
    return proc.returncode, err


def test_write_from_a_terminal_says_it_waits_and_one_ctrl_d_ends_input(workdir: Path) -> None:
    target = workdir / "typed.txt"
    status, err = _run_on_terminal(["write", str(target)], [b"first line\n", b"second\n", b"\x04"])
    assert status == 0, err
    assert target.read_bytes() == b"first line\nsecond\n"


def test_copy_from_a_terminal_ends_at_one_ctrl_d(workdir: Path) -> None:
    target = workdir / "typed.txt"
    status, err = _run_on_terminal(["copy", "-q", "-", str(target)], [b"typed\n", b"\x04"])
    assert status == 0, err
    assert target.read_bytes() == b"typed\n"


# -- copy from standard input, --json --------------------------------------------------


def test_copy_dash_copies_standard_input(workdir: Path) -> None:
    import gzip

    data = gzip.compress(os.urandom(50_000))
    target = workdir / "x.gz"
    result = crashsafe("copy", "--validate", "gzip", "-", str(target), stdin=data)
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == data
    assert result.stdout.startswith(b"copied standard input to ")
    cut = crashsafe("copy", "--validate", "gzip", "-", str(target), stdin=data[:-5])
    assert cut.returncode == 1
    assert target.read_bytes() == data
    # A file redirected to standard input is copied whole.
    source = workdir / "source"
    source.write_bytes(b"from a file\n")
    with open(source, "rb") as f:
        done = subprocess.run(
            [*CLI, "copy", "-q", "-", str(workdir / "copy")],
            stdin=f,
            capture_output=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert (workdir / "copy").read_bytes() == b"from a file\n"


def test_copy_json_reports_the_result_and_errors(workdir: Path) -> None:
    import json

    source = workdir / "src"
    source.write_bytes(b"x" * 1000)
    result = crashsafe("copy", "--json", str(source), str(workdir / "dst"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["bytes"] == 1000
    assert report["src"] == str(source)
    assert report["dst"] == str(workdir / "dst")
    assert report["method"] in ("reflink", "copy_file_range", "sendfile", "read/write")
    assert report["seconds"] >= 0
    failed = crashsafe("copy", "--json", str(workdir / "nope"), str(workdir / "dst2"))
    assert failed.returncode == 1
    error = json.loads(failed.stdout)
    assert error["ok"] is False
    assert error["exit_status"] == 1
    assert "No such file or directory" in error["error"]
    assert not (workdir / "dst2").exists()


# -- sweep --dry-run, --json ------------------------------------------------------------


def test_sweep_dry_run_lists_and_removes_nothing(workdir: Path) -> None:
    import json

    from tests.test_sweep import dead_name

    orphan = workdir / dead_name("data")
    orphan.write_bytes(b"left by a killed writer")
    keep = workdir / "data"
    keep.write_bytes(b"mine")
    dry = crashsafe("sweep", "--dry-run", str(workdir))
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.decode().splitlines() == [str(orphan)]
    assert orphan.exists()
    dry_json = json.loads(crashsafe("sweep", "--dry-run", "--json", str(workdir)).stdout)
    assert dry_json == {
        "ok": True,
        "directory": str(workdir),
        "dry_run": True,
        "orphans": [str(orphan)],
    }
    assert orphan.exists()
    done = json.loads(crashsafe("sweep", "--json", str(workdir)).stdout)
    assert done["orphans"] == [str(orphan)]
    assert done["dry_run"] is False
    assert not orphan.exists()
    assert keep.read_bytes() == b"mine"


# -- check: several files, format from the magic, --json --------------------------------


def test_check_several_files_tells_formats_from_their_first_bytes(workdir: Path) -> None:
    import gzip
    import json
    import sqlite3

    good = {
        "a.zst": _zstd(b"payload" * 1000),
        "b.gz": gzip.compress(b"payload"),
        "c.json": b'\xef\xbb\xbf \n {"a": [1, 2]}\n',
        "d.list": b"[1, 2, 3]",
        "f.c1z": b"C1ZF\0",  # filled in below
        "g.skip.zst": b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"meta" + _zstd(b"x"),
    }
    db = workdir / "e.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (x)")
        con.execute("INSERT INTO t VALUES (1)")
    con.close()
    good["f.c1z"] += _zstd(db.read_bytes())
    for name, data in good.items():
        (workdir / name).write_bytes(data)
    names = [str(workdir / n) for n in [*good, "e.sqlite"]]
    ok = crashsafe("check", *names)
    assert ok.returncode == 0, ok.stderr
    formats = {"zst": "zstd", "gz": "gzip", "json": "json", "list": "json", "sqlite": "sqlite",
               "c1z": "c1z"}  # fmt: skip
    for name in names:
        assert f"{name}: complete {formats[name.rsplit('.', 1)[1]]} file".encode() in ok.stdout

    cut = workdir / "cut.zst"
    cut.write_bytes(good["a.zst"][:-3])
    text = workdir / "notes.txt"
    text.write_bytes(b"just words\n")
    empty = workdir / "empty"
    empty.write_bytes(b"")
    mixed = crashsafe("check", names[0], str(cut), str(text), str(empty))
    assert mixed.returncode == 1
    assert f"{cut}: not a complete zstd file".encode() in mixed.stderr
    assert f"{text}: cannot tell its format".encode() in mixed.stderr
    assert b"give --as FORMAT" in mixed.stderr
    assert f"{empty}: cannot tell its format".encode() in mixed.stderr
    assert f"{names[0]}: complete zstd file".encode() in mixed.stdout

    report = json.loads(crashsafe("check", "--json", names[0], str(cut), str(text)).stdout)
    assert report["ok"] is False
    assert [(f["file"], f["format"], f["complete"]) for f in report["files"]] == [
        (names[0], "zstd", True),
        (str(cut), "zstd", False),
        (str(text), None, False),
    ]
    assert "truncated" in report["files"][1]["error"]
    # --as still decides, for every file.
    forced = crashsafe("check", "--as", "json", str(text), names[2])
    assert forced.returncode == 1
    assert f"{text}: not a complete json file".encode() in forced.stderr


# -- messages name the user's words ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["copy", "a", "b", "--sha256", "zz"], "argument --sha256: 'zz' is not a SHA-256 digest"),
        (["write", "--sha256", "abc", "f"], "argument --sha256: 'abc' is not a SHA-256 digest"),
        (["sweep", ".", "--min-age", "-5"], "argument --min-age: '-5' is not a number of seconds"),
        (["sweep", ".", "--min-age", "soon"], "argument --min-age: 'soon' is not a number"),
        (["sweep", ".", "--min-age", "nan"], "argument --min-age: 'nan' is not a number"),
        (["write", "--min-size", "1k", "f"], "argument --min-size: '1k' is not a number of bytes"),
        (["copy", "a", "b", "--min-size", "-1"], "argument --min-size: '-1' is not a number"),
        (["write", "--perm", "9", "f"], "argument --perm: '9' is not an octal mode"),
        (["write", "--durability", "fast", "f"], "argument --durability: invalid choice: 'fast'"),
        (["copy", "a", "b", "--validate", "xz"], "argument --validate: invalid choice: 'xz'"),
        (["check", "f", "--as", "xz"], "argument --as: invalid choice: 'xz'"),
    ],
)
def test_usage_messages_name_the_users_words(args: list[str], said: str) -> None:
    result = crashsafe(*args)
    assert result.returncode == 2
    err = result.stderr.decode()
    assert said in err, err
    # Never Python's own names: a function, a keyword, a type.
    for python in ("sha256()", "min_age", "float", "int(", "_seconds", "_byte_count", "value:"):
        assert python not in err, err
