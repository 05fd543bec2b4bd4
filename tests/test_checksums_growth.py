"""ChecksumStore at scale: the JSON-lines store, its compaction, record_many, torn lines.

Grouped by promise: a change appends one line and rewrites nothing; the log is
compacted before it outgrows the live entries; a process reads only what was
appended since its last read (and a replaced file whole); stores of version 1
are read and upgraded; record_many records a tree in one commit, all or
nothing; a line torn by a crash is skipped and compacted away, a line damaged
by hand is named and never rewritten; jq reads the file; processes recording at
once (with compactions among them) lose nothing. The power cuts are in
tests/test_checksums_crash.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from crashsafe import _checksum_log
from crashsafe.checksums import _MIN_LOG, ChecksumStore
from crashsafe.documents import JSONDocumentError
from tests import children
from tests.children import Child, spawned
from tests.harness.require import require_tools


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lines(path: Path) -> list[object]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def fresh_items(path: Path) -> list[list[str]]:
    """The store as a new process reads it (no cache)."""
    code = "report(items=ChecksumStore(sys.argv[1]).items())"
    ran = children.run("from crashsafe.checksums import ChecksumStore\n" + code, str(path))
    assert ran.returncode == 0, ran.stderr
    items: list[list[str]] = ran.result["items"]
    return items


def big_store(workdir: Path, n: int) -> tuple[ChecksumStore, Path]:
    """A store of *n* entries (names of files that need not exist), built with one commit."""
    path = workdir / "sums.jsonl"
    store = ChecksumStore(path)
    store._commit({f"/srv/f{i:06d}": sha256(b"%d" % i) for i in range(n)})
    return store, path


# --------------------------------------------------------------------------- appends


def test_a_change_appends_one_line_and_rewrites_nothing(workdir: Path) -> None:
    store, path = big_store(workdir, 20_000)
    (workdir / "f").write_bytes(b"new")
    before = path.stat()
    store.record(workdir / "f")
    after = path.stat()
    line = json.dumps({"sha256": {str(workdir / "f"): sha256(b"new")}}) + "\n"
    assert after.st_ino == before.st_ino
    assert after.st_size == before.st_size + len(line)
    assert path.read_bytes().endswith(line.encode())
    store.forget(workdir / "f")
    assert lines(path)[-1] == {"sha256": {str(workdir / "f"): None}}
    assert path.stat().st_ino == before.st_ino
    assert len(store.items()) == 20_000
    with pytest.raises(KeyError):
        store.verify(workdir / "f")


def test_the_log_is_compacted_before_it_outgrows_the_entries(workdir: Path) -> None:
    path = workdir / "sums.jsonl"
    store = ChecksumStore(path)
    for i in range(5):
        (workdir / f"f{i}").write_bytes(b"%d" % i)
    inodes = set()
    largest = 0
    for n in range(1500):  # ~170 KB of lines for 5 live entries
        (workdir / f"f{n % 5}").write_bytes(b"generation %d" % n)
        store.record(workdir / f"f{n % 5}")
        inodes.add(path.stat().st_ino)
        largest = max(largest, path.stat().st_size)
    assert len(inodes) >= 2  # compacted (a new file) at least once
    assert largest <= 2 * _MIN_LOG + 1000  # the bound: max(snapshot, 64 KiB) of log
    assert sorted(dict(store.items())) == [str(workdir / f"f{i}") for i in range(5)]
    assert all(store.verify(workdir / f"f{i}") for i in range(5))
    header = lines(path)[0]
    assert isinstance(header, dict) and header["version"] == 2
    assert fresh_items(path) == [list(item) for item in store.items()]


# --------------------------------------------------------------------------- reading


def test_a_process_reads_only_what_was_appended_since_its_last_read(workdir: Path) -> None:
    """Proof by damage: a byte of the snapshot changed in place after this process
    read it is not read again here (verify still answers), while a new process,
    which reads the file whole, names the damage. Lines appended by another
    process are seen."""
    store, path = big_store(workdir, 1000)
    (workdir / "f").write_bytes(b"x")
    store.record(workdir / "f")
    assert store.verify(workdir / "f")
    data = bytearray(path.read_bytes())
    at = data.index(b'"/srv/f000500"')
    with open(path, "r+b") as f:  # same inode, same size: only the content differs
        f.seek(at + 2)
        f.write(b"\x01")
    (workdir / "g").write_bytes(b"y")
    code = "ChecksumStore(sys.argv[1]).record(sys.argv[2]); report()"
    ran = children.run(
        "from crashsafe.checksums import ChecksumStore\n" + code, str(path), str(workdir / "g")
    )
    assert ran.returncode == 0, ran.stderr  # a change reads neither (header and last byte)
    assert store.verify(workdir / "g")  # the appended line was read
    assert store.verify(workdir / "f")
    code = "report(error=attempt(ChecksumStore(sys.argv[1]).items))"
    ran = children.run("from crashsafe.checksums import ChecksumStore\n" + code, str(path))
    assert ran.result["error"]["raised"] == "JSONDocumentError"
    assert "line 502 is not valid JSON" in ran.result["error"]["message"]


def test_a_store_replaced_in_place_is_read_whole(workdir: Path) -> None:
    """Same inode, grown, another generation in the header (an inode number reused
    after a compaction looks like this): read whole, not from the old offset."""
    store, path = big_store(workdir, 3)
    assert len(store.items()) == 3
    other = workdir / "other.jsonl"
    ChecksumStore(other)._commit({f"/elsewhere/{i}": sha256(b"%d" % i) for i in range(9)})
    with open(path, "r+b") as f:
        f.write(other.read_bytes())
    assert [name for name, _ in store.items()] == [f"/elsewhere/{i}" for i in range(9)]


def test_a_version_1_store_is_read_and_upgraded_by_its_next_change(workdir: Path) -> None:
    path = workdir / "sums.json"
    (workdir / "a").write_bytes(b"a")
    (workdir / "b").write_bytes(b"b")
    old = {
        "format": "crashsafe-checksums",
        "version": 1,
        "sha256": {str(workdir / "a"): sha256(b"a"), "/gone": sha256(b"gone")},
    }
    path.write_text(json.dumps(old, indent=2) + "\n")  # as crashsafe wrote it before
    store = ChecksumStore(path)
    assert store.items() == sorted(old["sha256"].items())  # type: ignore[attr-defined]
    assert store.verify(workdir / "a")
    store.forget("/never")
    assert json.loads(path.read_text()) == old  # nothing to change: not rewritten
    store.record(workdir / "b")
    assert lines(path)[1:] == [
        {"sha256": {"/gone": sha256(b"gone")}},  # the snapshot, sorted by path
        {"sha256": {str(workdir / "a"): sha256(b"a")}},
        {"sha256": {str(workdir / "b"): sha256(b"b")}},
    ]
    assert lines(path)[0]["version"] == 2  # type: ignore[index]
    assert fresh_items(path) == [list(item) for item in store.items()]


def test_jq_reads_the_store_and_a_person_sees_path_and_digest(workdir: Path) -> None:
    require_tools("jq")
    store = ChecksumStore(workdir / "sums.jsonl")
    for name in ("a", "b", "c"):
        (workdir / name).write_bytes(name.encode())
    store.record_many([workdir / "a", workdir / "b"])
    store.record(workdir / "c")
    store.forget(workdir / "a")
    text = (workdir / "sums.jsonl").read_text()
    for line in text.splitlines()[1:]:
        assert "/" in line and ('"sha256"' in line)
    assert f'"{workdir / "c"}": "{sha256(b"c")}"' in text  # path and digest, side by side
    program = "[.[1:][].sha256] | add | with_entries(select(.value != null))"
    out = subprocess.run(
        ["jq", "-s", "-c", program, str(workdir / "sums.jsonl")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert json.loads(out) == dict(store.items())


# --------------------------------------------------------------------------- record_many


def test_record_many_records_a_tree_in_one_commit(workdir: Path) -> None:
    tree = workdir / "site"
    (tree / "css").mkdir(parents=True)
    (tree / "index.html").write_bytes(b"<html>")
    (tree / "css" / "a.css").write_bytes(b"a{}")
    (tree / "link.html").symlink_to("index.html")  # skipped in a walk
    (tree / "outside").symlink_to(workdir)  # a directory through a symlink: not entered
    os.mkfifo(tree / "fifo")  # skipped in a walk
    (workdir / "loose").write_bytes(b"loose")
    path = workdir / "sums.jsonl"
    store = ChecksumStore(path)
    store.record(workdir / "loose")
    size = path.stat().st_size
    got = store.record_many([tree, str(workdir / "loose")])
    expected = {
        str(tree / "css" / "a.css"): sha256(b"a{}"),
        str(tree / "index.html"): sha256(b"<html>"),
        str(workdir / "loose"): sha256(b"loose"),
    }
    assert got == expected
    assert list(got) == list(expected)  # walked in sorted order, then the next argument
    assert lines(path)[-1] == {"sha256": expected}  # one line: one commit
    assert path.read_bytes()[size:].count(b"\n") == 1
    assert store.record_many([]) == {}
    assert path.read_bytes()[size:].count(b"\n") == 1  # nothing written


def test_record_many_is_all_or_nothing(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    (workdir / "a").write_bytes(b"a")
    path = workdir / "sums.jsonl"
    store = ChecksumStore(path)
    store.record("a")
    before = path.read_bytes()
    with pytest.raises(FileNotFoundError) as caught:
        store.record_many(["a", "missing"])
    assert caught.value.filename == "missing"  # as given
    os.mkdir("locked")
    (workdir / "locked" / "f").write_bytes(b"f")
    with pytest.raises(OSError, match="Not a regular file"):
        os.mkfifo("fifo")
        store.record_many(["a", "fifo"])  # named explicitly: refused as record refuses it
    assert path.read_bytes() == before


# --------------------------------------------------------------------------- torn, damaged


def test_a_torn_last_line_is_ignored_and_compacted_away_by_the_next_change(
    workdir: Path,
) -> None:
    store, path = big_store(workdir, 10)
    good = path.read_bytes()
    torn = b'{"sha256": {"/srv/new": "abc'  # a kill -9 in the middle of an append
    with open(path, "ab") as f:
        f.write(torn)
    assert len(store.items()) == 10
    assert len(fresh_items(path)) == 10
    inode = path.stat().st_ino
    (workdir / "f").write_bytes(b"f")
    store.record(workdir / "f")
    assert path.stat().st_ino != inode  # compacted, never appended after a torn line
    assert torn not in path.read_bytes()
    assert good.split(b"\n", 1)[1] in path.read_bytes()  # the snapshot lines: unchanged
    assert len(fresh_items(path)) == 11


def test_lines_a_power_cut_zeroed_are_skipped(workdir: Path) -> None:
    """After a power cut, blocks of appends not yet fsynced may read as zeros, and a
    later append may be there whole: the zeroed line is skipped, the whole one kept."""
    store, path = big_store(workdir, 4)
    zeroed = b'{"sha256": {"/srv/x": "' + b"\0" * 64 + b'"}}\n'
    whole = json.dumps({"sha256": {"/srv/y": sha256(b"y")}}).encode() + b"\n"
    with open(path, "ab") as f:
        f.write(zeroed + whole + b"\0" * 100)
    assert [name for name, _ in fresh_items(path)] == [
        *(f"/srv/f{i:06d}" for i in range(4)),
        "/srv/y",
    ]
    store.forget("/srv/f000000")  # a change after zeros at the end: compacted
    assert b"\0" not in path.read_bytes()
    assert len(fresh_items(path)) == 4


def test_a_line_damaged_by_hand_is_named_and_never_rewritten(workdir: Path) -> None:
    _, path = big_store(workdir, 3)
    with open(path, "ab") as f:
        f.write(b'{"sha256": {"/srv/x": "not hex"}}\n')
    damaged = path.read_bytes()
    fresh = ChecksumStore(path)
    _checksum_log.forget_cached(str(path))
    for call in (fresh.items, lambda: fresh.forget("/srv/f000000"), lambda: fresh.verify("/x")):
        with pytest.raises(JSONDocumentError, match="line 5: the digest of '/srv/x'") as caught:
            call()
        assert caught.value.filename == str(path)
    assert path.read_bytes() == damaged


# --------------------------------------------------------------------------- concurrency

RECORDER = """
import os, sys
import crashsafe.checksums
from crashsafe.checksums import ChecksumStore
crashsafe.checksums._MIN_LOG = 512  # compact often: every few records
store, directory, writer = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
for i in range(20):
    ChecksumStore(store).record(os.path.join(directory, f"w{writer}-{i}"))
many = [os.path.join(directory, f"w{writer}-{i}") for i in range(20, 25)]
ChecksumStore(store).record_many(many)
print("done", flush=True)
"""


def test_processes_recording_and_compacting_at_once_lose_nothing(workdir: Path) -> None:
    files = workdir / "files"
    files.mkdir()
    for w in range(4):
        for i in range(25):
            (files / f"w{w}-{i}").write_bytes(b"%d %d" % (w, i))
    store_path = workdir / "sums.jsonl"
    ChecksumStore(store_path).record(files / "w0-0")
    first = lines(store_path)[0]
    with spawned() as running:
        running.extend(Child(RECORDER, str(store_path), str(files), str(w)) for w in range(4))
        for child in running:
            assert child.readline() == "ready"
        for child in running:
            child.send("go")
        for child in running:
            assert child.readline(timeout=60) == "done"
    assert lines(store_path)[0] != first  # compacted while they recorded
    items = dict(ChecksumStore(store_path).items())
    assert len(items) == 100
    for w in range(4):
        for i in range(25):
            assert items[str(files / f"w{w}-{i}")] == sha256(b"%d %d" % (w, i))
    assert dict(fresh_items(store_path)) == items


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b'{"format": "crashsafe-checksums", "version": 2}\n', '"generation" and "snapshot_bytes"'),
        (
            b'{"format": "crashsafe-checksums", "version": 2, "generation": "g", '
            b'"snapshot_bytes": 0}\n[]\n',
            'line 2 is not {"sha256": {...}}',
        ),
        (
            b'{"format": "crashsafe-checksums", "version": 2, "generation": "g", '
            b'"snapshot_bytes": 0}\n{"sha256": {"/a": 1}}\n',
            "the digest of '/a'",
        ),
        (b'{"format": "crashsafe-checksums", "version": 1, "sha256": {"/a": "x"}}\n', "64 hex"),
        (b'{"format": "other"}\n{"sha256": {}}\n', "trailing data"),
    ],
)
def test_a_damaged_header_or_line_is_named(workdir: Path, content: bytes, says: str) -> None:
    path = workdir / "sums.jsonl"
    path.write_bytes(content)
    with pytest.raises(JSONDocumentError) as caught:
        ChecksumStore(path).items()
    assert says in str(caught.value)
    assert caught.value.filename == str(path)
    assert path.read_bytes() == content


def test_a_version_1_document_on_one_line_is_read(workdir: Path) -> None:
    path = workdir / "sums.json"
    digest = sha256(b"a")
    path.write_text(
        json.dumps({"format": "crashsafe-checksums", "version": 1, "sha256": {"/a": digest}}) + "\n"
    )
    assert ChecksumStore(path).items() == [("/a", digest)]


def test_a_fifo_at_the_store_path_is_refused_without_waiting(workdir: Path) -> None:
    path = workdir / "sums.jsonl"
    os.mkfifo(path)
    (workdir / "f").write_bytes(b"f")
    store = ChecksumStore(path)
    assert repr(store) == f"<crashsafe.ChecksumStore {str(path)!r}>"
    for call in (store.items, lambda: store.record(workdir / "f"), lambda: store.forget("/f")):
        with pytest.raises(OSError, match="Not a regular file") as caught:
            call()
        assert caught.value.filename == str(path)
