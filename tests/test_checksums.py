"""ChecksumStore: SHA-256 digests kept in a JSON store, safe across processes and kill -9.

Grouped by promise: correct digests, read streaming (flat memory for a 512 MiB
file, with a whole-file read as the control); what verify says for changed,
missing, unknown files; how paths are keyed; the store's format and
permissions; concurrent recorders lose nothing; a damaged store is named and
never overwritten; a recorder killed at random points (120 kills) always
leaves a store that parses and equals one of its states.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import stat
from collections import Counter
from pathlib import Path

import pytest

from crashsafe.checksums import ChecksumStore, NotRecordedError, sha256_file
from crashsafe.documents import JSONDocumentError
from tests.children import Child, spawned
from tests.harness import crash
from tests.harness.checks import entries, leftovers


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- digests


def test_record_returns_and_stores_the_sha256(workdir: Path) -> None:
    data = random.Random(1).randbytes((5 << 20) // 2 + 17)  # crosses 1 MiB chunk boundaries
    (workdir / "bin").write_bytes(data)
    (workdir / "empty").write_bytes(b"")
    store = ChecksumStore(workdir / "sums.json")
    assert store.record(workdir / "bin") == sha256(data)
    assert store.record(workdir / "empty") == sha256(b"")
    assert store.items() == [
        (str(workdir / "bin"), sha256(data)),
        (str(workdir / "empty"), sha256(b"")),
    ]
    assert sha256_file(workdir / "bin") == sha256(data)


def test_the_store_is_readable_json_lines(workdir: Path) -> None:
    store = ChecksumStore(workdir / "sums.json")
    (workdir / "b").write_bytes(b"b")
    (workdir / "a").write_bytes(b"a")
    store.record(workdir / "b")
    store.record(workdir / "a")
    lines = [json.loads(line) for line in (workdir / "sums.json").read_text().splitlines()]
    assert lines[0]["format"] == "crashsafe-checksums"
    assert lines[0]["version"] == 2
    assert lines[1:] == [
        {"sha256": {str(workdir / "b"): sha256(b"b")}},  # the store made with it
        {"sha256": {str(workdir / "a"): sha256(b"a")}},  # appended
    ]
    assert entries(workdir) == [".sums.json.lock", "a", "b", "sums.json"]


def test_the_store_follows_the_permission_rules(workdir: Path) -> None:
    (workdir / "f").write_bytes(b"x")
    ChecksumStore(workdir / "sums.json", perm=0o600, durability="consistent").record(workdir / "f")
    assert stat.S_IMODE((workdir / "sums.json").stat().st_mode) == 0o600


def test_recording_a_large_file_keeps_memory_flat(workdir: Path) -> None:
    """512 MiB (sparse, so quick to read) in a child: its peak RSS grows by well under
    64 MiB; the control, a whole-file read of 128 MiB, grows by more than 64."""
    code = """
        import hashlib, sys
        from crashsafe.checksums import ChecksumStore
        big, small, store = sys.argv[1:]
        for name, size in ((big, 512 << 20), (small, 128 << 20)):
            with open(name, "wb") as f:
                f.truncate(size)
        def status(field):
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))
        def growth(work):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets the peak (VmHWM) to the current RSS
            before = status("VmRSS")
            result = work()
            return result, status("VmHWM") - before
        ChecksumStore(store).items()  # imports and first allocations out of the way
        digest, streamed = growth(lambda: ChecksumStore(store).record(big))
        with open(small, "rb") as f:
            _, whole = growth(lambda: hashlib.sha256(f.read()).hexdigest())
        print(digest, streamed, whole, flush=True)
    """
    big, small = workdir / "big", workdir / "small"
    with spawned() as children:
        child = Child(code, str(big), str(small), str(workdir / "sums.json"))
        children.append(child)
        digest, streamed, whole = child.readline(timeout=120).split()
    print(
        f"peak RSS growth: {int(streamed) / 2**20:.1f} MiB streaming 512 MiB, "
        f"{int(whole) / 2**20:.1f} MiB reading 128 MiB whole"
    )
    # SHA-256 of 512 MiB of zeros, computed independently with hashlib.
    assert digest == "9acca8e8c22201155389f65abbf6bc9723edc7384ead80503839f49dcc56d767"
    assert int(streamed) < 64 << 20
    assert int(whole) > 64 << 20  # the measurement sees a whole-file read
    big.unlink()
    small.unlink()


# --------------------------------------------------------------------------- verify, forget


def test_verify_says_whether_the_file_is_unchanged(workdir: Path) -> None:
    store = ChecksumStore(workdir / "sums.json")
    hook = workdir / "hook"
    hook.write_bytes(b"#!/bin/sh\necho hi\n")
    store.record(hook)
    assert store.verify(hook) is True
    hook.write_bytes(b"#!/bin/sh\necho pwned\n")
    assert store.verify(hook) is False
    hook.write_bytes(b"#!/bin/sh\necho hi\n")
    assert store.verify(hook) is True  # content, not mtime, is what counts


@pytest.mark.parametrize("now", ["missing", "directory", "fifo"])
def test_a_recorded_file_that_is_gone_or_not_a_file_fails_verification(
    workdir: Path, now: str
) -> None:
    store = ChecksumStore(workdir / "sums.json")
    hook = workdir / "hook"
    hook.write_bytes(b"x")
    store.record(hook)
    hook.unlink()
    if now == "directory":
        hook.mkdir()
    elif now == "fifo":
        os.mkfifo(hook)  # must not wait for a writer
    assert store.verify(hook) is False


def test_a_file_never_recorded_raises_not_recorded_error_naming_it(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    store = ChecksumStore("sums.json")
    (workdir / "f").write_bytes(b"x")
    with pytest.raises(NotRecordedError) as caught:
        store.verify("f")
    e = caught.value
    assert isinstance(e, KeyError)  # "except KeyError" still catches it
    assert e.args == (str(workdir / "f"),)
    assert (e.filename, e.key, e.store) == ("f", str(workdir / "f"), str(workdir / "sums.json"))
    assert str(e) == (
        f"'f' has no recorded checksum in {str(workdir / 'sums.json')!r} "
        "(never recorded, or forgotten)"
    )
    copy = pickle.loads(pickle.dumps(e))  # noqa: S301 - our own error, round-tripped
    assert type(copy) is NotRecordedError and str(copy) == str(e)
    assert not (workdir / "sums.json").exists()  # reading created nothing


def test_forget_removes_the_entry_and_is_quiet_when_there_is_none(workdir: Path) -> None:
    store = ChecksumStore(workdir / "sums.json")
    (workdir / "f").write_bytes(b"x")
    (workdir / "g").write_bytes(b"y")
    store.record(workdir / "f")
    store.record(workdir / "g")
    store.forget(workdir / "f")
    assert store.items() == [(str(workdir / "g"), sha256(b"y"))]
    with pytest.raises(KeyError):
        store.verify(workdir / "f")
    inode = (workdir / "sums.json").stat().st_ino
    store.forget(workdir / "f")
    store.forget(workdir / "never")
    assert (workdir / "sums.json").stat().st_ino == inode  # nothing was rewritten


@pytest.mark.parametrize("kind", ["directory", "fifo", "missing"])
def test_recording_what_is_no_regular_file_raises_a_builtin_error_naming_it(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # Never a private class: a caller's "except OSError" subclasses are the builtins.
    monkeypatch.chdir(workdir)
    if kind == "directory":
        os.mkdir("it")
    elif kind == "fifo":
        os.mkfifo("it")
    expected, code, strerror = {
        "directory": (IsADirectoryError, errno.EISDIR, "Is a directory"),
        "fifo": (OSError, errno.EINVAL, "Not a regular file"),
        "missing": (FileNotFoundError, errno.ENOENT, "No such file or directory"),
    }[kind]
    store = ChecksumStore("sums.json")
    for call in (store.record, sha256_file):
        with pytest.raises(OSError) as caught:
            call("it")
        assert type(caught.value) is expected
        assert caught.value.errno == code
        assert caught.value.filename == "it"
        assert str(caught.value) == f"[Errno {code}] {strerror}: 'it'"
    assert not (workdir / "sums.json").exists()


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("perm", 0o10000), ("durability", "fast"), ("timeout", -1), ("timeout", "1")],
)
def test_bad_store_options_are_refused_when_the_store_is_made(
    workdir: Path, keyword: str, value: object
) -> None:
    with pytest.raises(ValueError, match=keyword):
        ChecksumStore(workdir / "sums.json", **{keyword: value})  # type: ignore[arg-type]


def test_recording_a_file_that_cannot_be_read_changes_nothing(workdir: Path) -> None:
    store = ChecksumStore(workdir / "sums.json")
    with pytest.raises(FileNotFoundError):
        store.record(workdir / "missing")
    os.mkfifo(workdir / "fifo")
    # A FIFO must not wait for a writer: an open that did would hang here until
    # pytest's timeout fails the test.
    with pytest.raises(OSError, match="Not a regular file"):
        store.record(workdir / "fifo")
    assert not (workdir / "sums.json").exists()


# --------------------------------------------------------------------------- keys


def test_paths_are_keyed_absolute_and_normalised_without_resolving_symlinks(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "sub").mkdir()
    (workdir / "sub" / "f").write_bytes(b"1")
    (workdir / "g").write_bytes(b"2")
    (workdir / "link").symlink_to("g")
    monkeypatch.chdir(workdir / "sub")
    store = ChecksumStore("../sums.json")
    assert store.path == str(workdir / "sums.json")
    store.record("f")
    store.record("./../sub//f")  # the same key
    store.record("../link")
    assert store.items() == [
        (str(workdir / "link"), sha256(b"2")),  # the link's own path, not g
        (str(workdir / "sub" / "f"), sha256(b"1")),
    ]
    assert store.verify(workdir / "sub" / "f")
    (workdir / "h").write_bytes(b"3")
    (workdir / "link").unlink()
    (workdir / "link").symlink_to("h")
    assert store.verify(workdir / "link") is False  # the link now leads elsewhere


# --------------------------------------------------------------------------- damaged stores


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b'{"format": "crashsafe-checksums", "version": 1, "sha256": {', "truncated"),
        (b"", "empty"),
        (b"[]", "not a crashsafe checksum store"),
        (b'{"format": "crashsafe-checksums", "version": 3, "sha256": {}}', "version 3"),
        (b'{"format": "crashsafe-checksums", "version": 3}\n{"sha256": {}}\n', "version 3"),
        (b'{"format": "crashsafe-checksums", "version": 1, "sha256": []}', "not an object"),
        (b'{"format": "crashsafe-checksums", "version": 1, "sha256": {"/f": "abc"}}', "64 hex"),
    ],
)
def test_a_damaged_store_is_named_and_never_overwritten(
    workdir: Path, content: bytes, says: str
) -> None:
    path = workdir / "sums.json"
    path.write_bytes(content)
    (workdir / "f").write_bytes(b"x")
    store = ChecksumStore(path)
    for call in (store.items, lambda: store.record(workdir / "f"), lambda: store.verify("/f")):
        with pytest.raises(JSONDocumentError, match=says) as caught:
            call()
        assert caught.value.filename == str(path)
    assert path.read_bytes() == content


# --------------------------------------------------------------------------- concurrency, kills

RECORDER = """
import os, sys
from crashsafe.checksums import ChecksumStore
store, directory, writer = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
for i in range(25):
    ChecksumStore(store).record(os.path.join(directory, f"w{writer}-{i}"))
print("done", flush=True)
"""


def test_concurrent_recorders_lose_no_entry(workdir: Path) -> None:
    files = workdir / "files"
    files.mkdir()
    for w in range(4):
        for i in range(25):
            (files / f"w{w}-{i}").write_bytes(b"%d %d" % (w, i))
    store_path = workdir / "sums.json"
    with spawned() as children:
        children.extend(Child(RECORDER, str(store_path), str(files), str(w)) for w in range(4))
        for child in children:
            assert child.readline() == "ready"
        for child in children:
            child.send("go")
        for child in children:
            assert child.readline(timeout=60) == "done"
    items = dict(ChecksumStore(store_path).items())
    assert len(items) == 100
    for w in range(4):
        for i in range(25):
            assert items[str(files / f"w{w}-{i}")] == sha256(b"%d %d" % (w, i))


def test_a_recorder_killed_at_every_step_leaves_the_old_or_the_new_store(
    workdir: Path,
) -> None:
    """120 kills of a process recording ever newer generations of 8 files.

    Each recorder is killed right after a syscall of two records that touches
    the directory, in turn (:func:`tests.harness.crash.kill9_loop`). The store
    must then parse and equal the state after some generation n (every file at
    its last generation <= n), never an older one than before, and at least the
    generation whose record returned before the kill; the next recorder must
    not be blocked by the killed one's lock.
    """
    kills = 120
    files = workdir / "files"
    files.mkdir()
    store_path = workdir / "sums.json"
    digests = {sha256(b"generation %d\n" % g): g for g in range(8 + 8 * kills)}

    def write(generation: int) -> None:
        name = files / f"f{generation % 8}"
        name.write_bytes(b"generation %d\n" % generation)  # setup, not under test
        ChecksumStore(store_path).record(name)

    def check() -> int | str:
        recorded = dict(ChecksumStore(store_path).items())  # parses, is a store
        if any(digest not in digests for digest in recorded.values()):
            return "a digest of no generation"
        generations = {name: digests[digest] for name, digest in recorded.items()}
        n = max(generations.values())
        expected = {str(files / f"f{g % 8}"): g for g in range(max(0, n - 7), n + 1)}
        return n if generations == expected else "not the state after one generation"

    for generation in range(8):
        write(generation)
    result = crash.kill9_loop(
        workdir, kills=kills, write=write, check=check, staging="tmpfile", min_age=0
    )
    print(
        f"{result.kills} kills at {result.plan()} in {result.seconds:.1f} s: "
        f"{dict(result.outcomes)}, advanced after {result.changed}; last generation "
        f"{check()}; sweep removed {result.swept} staged files"
    )
    assert result.outcomes == Counter(complete=kills), result.outcomes
    assert result.returned_then_lost() == []
    # Kills landed inside records and between them (by construction).
    assert 0 < result.changed < kills
    assert result.left_after_sweep == []
    assert leftovers(workdir) == []
    assert leftovers(files) == []
    ChecksumStore(store_path, timeout=0).record(files / "f0")  # no one holds the lock
