"""``crashsafe checksums record|verify|forget``: the store from the command line.

Real processes of the installed command: record many paths in one commit (a
directory walked, the store and its lock left out), verify prints one line a
file with the exit status saying whether all were OK, forget, an unreadable
file records nothing, a damaged store is named and left as it is.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "crashsafe"]


def crashsafe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "checksums", *args], capture_output=True, text=True, timeout=60, check=False
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_record_many_paths_in_one_commit_then_verify_and_forget(workdir: Path) -> None:
    tree = workdir / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a").write_bytes(b"a")
    (tree / "sub" / "b").write_bytes(b"b")
    store = workdir / "sums.jsonl"
    ran = crashsafe("record", str(store), str(tree), str(workdir))  # the store's own directory
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        f"{sha256(b'a')}  {tree / 'a'}",
        f"{sha256(b'b')}  {tree / 'sub' / 'b'}",
    ]  # the store and its lock file are left out of the walk
    assert store.read_text().count("\n") == 3  # a new store: a header, an entry a line
    ran = crashsafe("verify", str(store))
    assert (ran.returncode, ran.stdout.splitlines()) == (
        0,
        [f"{tree / 'a'}: OK", f"{tree / 'sub' / 'b'}: OK"],
    )
    (tree / "a").write_bytes(b"changed")
    ran = crashsafe("verify", str(store), str(tree / "a"), str(workdir / "never"))
    assert ran.returncode == 1
    assert ran.stdout.splitlines() == [
        f"{tree / 'a'}: FAILED",
        f"{workdir / 'never'}: NOT RECORDED",
    ]
    assert "2 of 2 files did not verify" in ran.stderr
    assert crashsafe("forget", str(store), str(tree / "a")).returncode == 0
    ran = crashsafe("verify", str(store))
    assert (ran.returncode, ran.stdout.splitlines()) == (0, [f"{tree / 'sub' / 'b'}: OK"])


def test_an_unreadable_file_records_nothing_and_a_damaged_store_is_left_alone(
    workdir: Path,
) -> None:
    (workdir / "a").write_bytes(b"a")
    store = workdir / "sums.jsonl"
    ran = crashsafe("record", str(store), str(workdir / "a"), str(workdir / "missing"))
    assert ran.returncode == 1
    assert f"{workdir / 'missing'}: No such file or directory; nothing was changed" in ran.stderr
    assert not store.exists()
    store.write_bytes(b"{}\n{}\n")
    for args in (["verify", str(store)], ["record", str(store), str(workdir / "a")]):
        ran = crashsafe(*args)
        assert ran.returncode == 1
        assert f"{store}: not a valid JSON document" in ran.stderr
        assert "the store was left as it is" in ran.stderr
    assert store.read_bytes() == b"{}\n{}\n"
    assert crashsafe("record", str(store)).returncode == 2  # no PATH: usage
