"""update, read_json, write_json, update_json: locked read-modify-write and whole JSON documents.

Grouped by promise: no lost update (8 processes x 4 threads x 50 increments,
with a lockless control that loses some), readers never see a partial
document, nothing changes when fn or serialisation fails, a writer killed
while holding the lock blocks no one, a damaged file is named and never
returned or overwritten, and the written bytes are exactly what is promised.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from crashsafe.documents import JSONDocumentError, read_json, update, update_json, write_json
from crashsafe.locking import FileLock, LockTimeoutError
from crashsafe.staging import sweep
from tests.children import Child, root_owned_directory, run_as_nobody, spawned
from tests.harness.checks import entries, leftovers

# --------------------------------------------------------------------------- update (bytes)


def test_update_creates_from_the_default_and_returns_the_new_content(workdir: Path) -> None:
    path = workdir / "log"
    assert update(path, lambda old: old + b"a") == b"a"
    assert update(path, lambda old: old + b"b", default=b"unused") == b"ab"
    assert update(workdir / "other", lambda old: old + b"!", default=b"start") == b"start!"
    assert path.read_bytes() == b"ab"
    assert update(path, lambda old: bytearray(old) + b"c") == b"abc"
    assert update(path, lambda old: memoryview(old + b"d")) == b"abcd"


def test_update_passes_the_write_keywords_on(workdir: Path) -> None:
    path = workdir / "key"
    update(path, lambda old: b"secret", perm=0o600, durability="consistent")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        update(path, lambda old: b"again", overwrite=False)
    assert path.read_bytes() == b"secret"


def test_update_through_a_symlink_locks_and_writes_the_file_it_points_to(workdir: Path) -> None:
    (workdir / "real").write_bytes(b"1")
    (workdir / "link").symlink_to("real")
    update(workdir / "link", lambda old: old + b"2")
    assert (workdir / "link").is_symlink() and (workdir / "real").read_bytes() == b"12"
    assert ".real.lock" in entries(workdir)
    update(workdir / "link", lambda old: old + b"3", follow_symlinks=False)
    assert not (workdir / "link").is_symlink()
    assert (workdir / "link").read_bytes() == b"123" and (workdir / "real").read_bytes() == b"12"
    assert ".link.lock" in entries(workdir)


def test_an_exception_in_fn_leaves_the_file_untouched(workdir: Path) -> None:
    path = workdir / "data"
    path.write_bytes(b"old")

    def boom(old: bytes) -> bytes:
        raise KeyError("no")

    with pytest.raises(KeyError):
        update(path, boom)
    assert path.read_bytes() == b"old"
    with pytest.raises(KeyError):
        update(workdir / "new", boom)
    assert not (workdir / "new").exists()
    assert not FileLock(path).is_locked and not FileLock(workdir / "new").is_locked


@pytest.mark.parametrize("result", ["text", None, 42, [b"a"]])
def test_fn_returning_anything_but_bytes_raises_type_error(workdir: Path, result: object) -> None:
    path = workdir / "data"
    path.write_bytes(b"old")
    with pytest.raises(TypeError, match="fn must return bytes"):
        update(path, lambda old: result)  # type: ignore[arg-type, return-value]
    assert path.read_bytes() == b"old"


def test_update_waits_for_the_lock_before_reading(workdir: Path) -> None:
    path = workdir / "data"
    calls: list[bytes] = []
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with FileLock(path):
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert held.wait(30)
        with pytest.raises(LockTimeoutError):
            update(path, lambda old: calls.append(old) or b"x", timeout=0.1)  # type: ignore[func-returns-value]
        assert calls == [] and not path.exists()
    finally:
        release.set()
        t.join()


def test_update_inside_the_callers_own_lock_does_not_deadlock(workdir: Path) -> None:
    path = workdir / "data"
    with FileLock(path, timeout=1):
        old = update(path, lambda old: old + b"1")
        assert update(path, lambda o: o + b"2") == old + b"2"
        assert update_json(workdir / "doc.json", lambda d: d + 1, default=0) == 1


# --------------------------------------------------------------------------- read_json


def test_read_json_of_a_missing_file_raises_or_returns_the_default(workdir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_json(workdir / "missing.json")
    assert read_json(workdir / "missing.json", None) is None
    assert read_json(workdir / "missing.json", default={"a": 1}) == {"a": 1}
    (workdir / "dangling").symlink_to("nowhere")
    assert read_json(workdir / "dangling", []) == []


def test_read_json_returns_the_document(workdir: Path) -> None:
    path = workdir / "doc.json"
    path.write_bytes('{"name": "nœud", "n": [1, 2.5, null, true]}'.encode())
    assert read_json(path) == {"name": "nœud", "n": [1, 2.5, None, True]}
    path.write_bytes(b'\xef\xbb\xbf{"bom": 1}')  # a byte order mark some editors write
    assert read_json(path, default=None) == {"bom": 1}
    path.write_bytes(b"[NaN]")
    assert str(read_json(path)) == "[nan]"


# content, the cause in the message, (line, column) or None
DAMAGED = [
    (b"", "the file is empty (a writer without crashsafe was interrupted?)", None),
    (b" \n\t", "the file holds only whitespace", None),
    (b"\0" * 4096, "the file holds only zero bytes", None),
    (b'{"a": 1,\n "b": [1, 2', "the document ends early (truncated)", (2, 12)),
    (b'{"a": "unterminated', "the document ends early (truncated)", (1, 7)),
    (b'{"a": tr', "the document ends early (truncated)", (1, 7)),
    (b'{"a": "\xc3', "the document ends early (truncated)", (1, 8)),
    (b'{"a": 1}\n{"a": 2}\n', "trailing data after the document", (2, 1)),
    (b'{"a": 1}\n' + b"\0" * 100, "zero bytes after the document", (2, 1)),
    (b"\0\0\0\0{}", "the file starts with zero bytes", (1, 1)),
    (b'{"a": "\xff\xfe"}', "invalid UTF-8", (1, 8)),
    (b'{"a": 1,,\n}', "the text is not valid JSON", (1, 9)),
    (b"{'a': 1}", "the text is not valid JSON", (1, 2)),
    (b'{"a": 1' + b"1" * 5000 + b"}", "a value too large to convert", None),
    (b"[" * 100_000 + b"]" * 100_000, "arrays or objects nested too deeply", None),
]


@pytest.mark.parametrize(("content", "cause", "where"), DAMAGED)
def test_a_damaged_file_raises_naming_file_position_and_cause(
    workdir: Path, content: bytes, cause: str, where: tuple[int, int] | None
) -> None:
    path = workdir / "doc.json"
    path.write_bytes(content)
    with pytest.raises(JSONDocumentError) as caught:
        read_json(path, default="never for an existing file")
    e = caught.value
    assert isinstance(e, ValueError)
    assert e.filename == str(path)
    assert e.cause.startswith(cause)
    message = str(e)
    assert message.startswith(f"{path}: not a valid JSON document")
    assert cause in message
    if where is None:
        assert e.lineno is None
    else:
        assert (e.lineno, e.colno) == where
        assert f"at line {where[0]}, column {where[1]} (char {e.pos})" in message
    copy = pickle.loads(pickle.dumps(e))  # noqa: S301 - our own error, round-tripped
    assert str(copy) == message and copy.cause == e.cause


SAMPLE = {
    "name": 'nœud "\u03b1" \\ é 😀',
    "n": -12.5e3,
    "flags": [True, False, None],
    "nested": {"list": [1, 2.0, "x\u1234y", {"deep": [[]]}], "esc": "\u0001\n"},
}


@pytest.mark.parametrize("indent", [2, None])
def test_every_cut_of_a_document_is_refused_as_truncated(workdir: Path, indent: int | None) -> None:
    """Whatever byte a write stopped at, read_json never returns part of a document."""
    data = json.dumps(SAMPLE, indent=indent, ensure_ascii=indent is None).encode()
    path = workdir / "doc.json"
    for cut in range(1, len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(JSONDocumentError) as caught:
            read_json(path)
        assert caught.value.cause == "the document ends early (truncated)", (cut, data[:cut])
    path.write_bytes(data)
    assert read_json(path) == SAMPLE


# --------------------------------------------------------------------------- write_json


def test_write_json_writes_utf8_indented_text_ending_with_a_newline(workdir: Path) -> None:
    path = workdir / "doc.json"
    write_json(path, {"name": "nœud", "list": [1, 2]})
    assert (
        path.read_bytes() == '{\n  "name": "nœud",\n  "list": [\n    1,\n    2\n  ]\n}\n'.encode()
    )
    write_json(path, {"a": [1, 2]}, indent=None)
    assert path.read_bytes() == b'{"a": [1, 2]}\n'
    write_json(path, SAMPLE)
    assert read_json(path) == SAMPLE


def test_write_json_follows_the_permission_rules(workdir: Path) -> None:
    path = workdir / "identity.json"
    write_json(path, {"key": "private"}, perm=0o600, durability="consistent")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o640)
    write_json(path, {"key": "rotated"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # an existing file keeps its mode


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        ({"when": object()}, TypeError),
        ({"x": float("nan")}, ValueError),
        ([float("inf")], ValueError),
        ({"s": "\ud800"}, UnicodeEncodeError),
    ],
)
def test_an_unwritable_object_raises_before_anything_is_created(
    workdir: Path, obj: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        write_json(workdir / "doc.json", obj)
    assert entries(workdir) == []  # no document, no temporary file, not even a lock file
    (workdir / "doc.json").write_bytes(b'{"old": 1}')
    with pytest.raises(error):
        update_json(workdir / "doc.json", lambda d: obj)
    assert read_json(workdir / "doc.json") == {"old": 1}


def test_a_circular_object_raises_value_error(workdir: Path) -> None:
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        write_json(workdir / "doc.json", loop)
    assert not (workdir / "doc.json").exists()


# --------------------------------------------------------------------------- errors name the path

WRITES = {
    "write_json": "write_json(PATH, {'a': 1})",
    "update_json": "update_json(PATH, lambda d: {**d, 'a': 1}, default={})",
    "update": "update(PATH, lambda b: b + b'x')",
}


@pytest.mark.parametrize("call", WRITES)
def test_a_write_into_a_missing_directory_names_the_path_given(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    # Not the lock file beside it, which is where the error arises.
    monkeypatch.chdir(workdir)
    with pytest.raises(FileNotFoundError) as caught:
        eval(WRITES[call], {**globals(), "PATH": "missing/doc.json"})  # noqa: S307
    assert caught.value.errno == errno.ENOENT
    assert caught.value.filename == "missing/doc.json"
    assert str(caught.value).startswith("[Errno 2] No such file or directory: 'missing/doc.json'")
    assert entries(workdir) == []


@pytest.mark.parametrize("call", WRITES)
def test_a_write_into_a_readonly_directory_raises_permission_error(call: str) -> None:
    # The lock file cannot be created: EACCES, not the ENOENT of a retry.
    code = f"""
    from crashsafe.documents import update, update_json, write_json
    PATH = sys.argv[1]
    report(**attempt(lambda: {WRITES[call]}))
    """
    with root_owned_directory() as readonly:
        result = run_as_nobody(code, str(readonly / "doc.json"))
        assert result["raised"] == "PermissionError", result
        assert result["errno"] == errno.EACCES
        assert result["filename"] == str(readonly / "doc.json")
        assert entries(readonly) == []


@pytest.mark.parametrize("call", WRITES)
@pytest.mark.parametrize(("keyword", "value"), [("perm", 0o10000), ("durability", "fast")])
def test_bad_write_options_are_refused_before_the_lock_file_is_made(
    workdir: Path, call: str, keyword: str, value: object
) -> None:
    with pytest.raises(ValueError, match=keyword):
        eval(  # noqa: S307
            WRITES[call][:-1] + f", {keyword}={value!r})",
            {**globals(), "PATH": workdir / "doc.json"},
        )
    assert entries(workdir) == []


# --------------------------------------------------------------------------- update_json


def test_update_json_reads_changes_and_writes_the_document(workdir: Path) -> None:
    path = workdir / "state.json"
    assert update_json(path, lambda d: {**d, "n": 1}, default={}) == {"n": 1}

    def in_place(d: dict[str, Any]) -> dict[str, Any]:
        d["n"] += 1
        return d

    assert update_json(path, in_place, perm=0o600) == {"n": 2}
    assert read_json(path) == {"n": 2}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().endswith(b"}\n")


def test_update_json_never_changes_the_callers_default(workdir: Path) -> None:
    default: dict[str, list[int]] = {"seen": []}

    def add(d: dict[str, list[int]]) -> dict[str, list[int]]:
        d["seen"].append(1)
        return d

    assert update_json(workdir / "a.json", add, default=default) == {"seen": [1]}
    assert update_json(workdir / "b.json", add, default=default) == {"seen": [1]}
    assert default == {"seen": []}


@pytest.mark.parametrize("existing", [True, False])
def test_update_json_fn_returning_none_raises_and_writes_nothing(
    workdir: Path, existing: bool
) -> None:
    # dict.update() returns None: the document must not become null.
    path = workdir / "state.json"
    if existing:
        write_json(path, {"a": 1})
    with pytest.raises(TypeError, match=r"fn returned None.*nothing was written"):
        update_json(path, lambda d: d.update(b=2), default={})
    if existing:
        assert read_json(path) == {"a": 1}
    assert entries(workdir) == (
        [".state.json.lock", "state.json"] if existing else [".state.json.lock"]
    )


def test_update_json_may_write_null_through_write_json(workdir: Path) -> None:
    write_json(workdir / "n.json", None)
    assert (workdir / "n.json").read_bytes() == b"null\n"


def test_update_json_without_a_default_needs_the_file(workdir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        update_json(workdir / "missing.json", lambda d: d)
    assert not (workdir / "missing.json").exists()


def test_update_json_never_overwrites_a_damaged_document(workdir: Path) -> None:
    path = workdir / "state.json"
    path.write_bytes(b'{"n": 4')
    with pytest.raises(JSONDocumentError, match="truncated"):
        update_json(path, lambda d: {"n": 0}, default={})
    assert path.read_bytes() == b'{"n": 4'


def test_an_exception_in_fn_leaves_the_document_untouched(workdir: Path) -> None:
    path = workdir / "state.json"
    write_json(path, {"n": 1})
    before = path.read_bytes()

    def boom(d: object) -> object:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        update_json(path, boom)
    assert path.read_bytes() == before


# --------------------------------------------------------------------------- the proof

COUNTER = """
import sys, threading
from crashsafe.documents import update_json
path, threads, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def bump(doc):
    doc["count"] += 1
    return doc

def work():
    for _ in range(rounds):
        update_json(path, bump)

print("ready", flush=True)
sys.stdin.readline()
pool = [threading.Thread(target=work) for _ in range(threads)]
for t in pool:
    t.start()
for t in pool:
    t.join()
print("done", flush=True)
"""

# The control: read_json then atomic_write, no lock. The threads of a process
# meet at a barrier between their read and their write, which forces the
# interleaving a lock prevents, however the machine schedules them: in every
# round both threads of a process read before either writes.
UNLOCKED_COUNTER = (
    COUNTER.replace(
        "        update_json(path, bump)",
        "        doc = read_json(path)\n"
        "        gate.wait()\n"
        "        atomic_write(path, json.dumps(bump(doc)), durability='none')",
    )
    .replace(
        "from crashsafe.documents import update_json",
        "import json\n"
        "from crashsafe import atomic_write\n"
        "from crashsafe.documents import read_json",
    )
    .replace('print("ready"', 'gate = threading.Barrier(threads, timeout=60)\nprint("ready"')
)

READER = """
import json, os, sys
from crashsafe.documents import JSONDocumentError, read_json
path, stop = sys.argv[1], sys.argv[2]
seen = {"reads": 0, "invalid": 0, "missing": 0, "backwards": 0, "last": 0}
print("ready", flush=True)
while True:  # at least one read, however late the reader runs
    try:
        count = read_json(path)["count"]
    except JSONDocumentError:
        seen["invalid"] += 1
        continue
    except FileNotFoundError:
        seen["missing"] += 1
        continue
    seen["reads"] += 1
    seen["backwards"] += count < seen["last"]
    seen["last"] = count
    if os.path.exists(stop):
        break
print(json.dumps(seen), flush=True)
"""


def count_concurrently(
    directory: Path, code: str, processes: int, threads: int, rounds: int
) -> tuple[int, dict[str, int], float]:
    """Run the counter in *processes* x *threads*, with a reader alongside.

    Returns the final count, the reader's tally and the seconds the writers took.
    """
    path = directory / "counter.json"
    stop = directory / "stop"
    write_json(path, {"count": 0})
    with spawned() as children:
        reader = Child(READER, str(path), str(stop))
        children.append(reader)
        writers = [Child(code, str(path), str(threads), str(rounds)) for _ in range(processes)]
        children.extend(writers)
        for child in [reader, *writers]:
            assert child.readline() == "ready"
        started = time.monotonic()
        for child in writers:
            child.send("go")
        for child in writers:
            assert child.readline(timeout=120) == "done"
        seconds = time.monotonic() - started
        stop.touch()
        seen = json.loads(reader.readline())
    stop.unlink()
    return read_json(path)["count"], seen, seconds


def test_8_processes_x_4_threads_x_50_increments_lose_nothing(workdir: Path) -> None:
    """The issue's proof, with durable writes: exactly 1600, and the reader in a
    fourth... ninth process never sees invalid JSON, a missing file or a count
    going backwards."""
    count, seen, seconds = count_concurrently(workdir, COUNTER, 8, 4, 50)
    print(f"8x4x50 through update_json: count {count} in {seconds:.1f} s; reader {seen}")
    assert count == 8 * 4 * 50
    assert seen["invalid"] == seen["missing"] == seen["backwards"] == 0
    assert seen["reads"] > 0
    assert leftovers(workdir) == []


def test_control_the_same_increments_without_the_lock_lose_updates(workdir: Path) -> None:
    """The check above can fail: read_json then atomic_write, with no lock, loses updates."""
    count, seen, _ = count_concurrently(workdir, UNLOCKED_COUNTER, 4, 2, 50)
    print(f"control without lock: count {count} of 400; reader {seen}")
    # Each final count is one chain of writes, each of which read the one
    # before; the two writes of a process's round both read before either
    # wrote, so no chain holds both: at most one of each pair counts.
    assert 0 < count <= 4 * 50
    assert seen["invalid"] == 0  # still atomic: lost, but never torn


HOLD_IN_FN = """
import sys, time
from crashsafe.documents import update_json

def slow(doc):
    print("in fn", flush=True)
    time.sleep(3600)
    return {"count": -1}

update_json(sys.argv[1], slow)
"""


def test_a_writer_killed_while_holding_the_lock_blocks_no_one(workdir: Path) -> None:
    path = workdir / "counter.json"
    write_json(path, {"count": 7})
    with spawned() as children:
        writer = Child(HOLD_IN_FN, str(path))
        children.append(writer)
        assert writer.readline() == "in fn"
        with pytest.raises(LockTimeoutError):
            update_json(path, lambda d: d, timeout=0.2)  # it holds the lock
        writer.kill9()
    assert read_json(path) == {"count": 7}
    # Reaped, so its descriptors are closed: the lock is free at once.
    assert update_json(path, lambda d: {"count": d["count"] + 1}, timeout=0) == {"count": 8}
    assert sweep(workdir) == [] and leftovers(workdir) == []
