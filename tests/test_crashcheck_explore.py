"""crashcheck's explorer: the crash states a run allows, checked by real processes on
real directories, and the vulnerabilities classified as ALICE does.

The operations are written by hand here (the tracer has its own tests), over a real
snapshot of a temporary directory.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from crashsafe.crashcheck._checkrun import CheckContext, memory_dir
from crashsafe.crashcheck._errors import CrashcheckError
from crashsafe.crashcheck._explore import explore_operations
from crashsafe.crashcheck._model import GARBAGE, Base, pieces
from crashsafe.crashcheck._ops import (
    Call,
    Create,
    Link,
    Mkdir,
    Operation,
    Output,
    Rename,
    Rmdir,
    SetMode,
    Snapshot,
    Symlink,
    Sync,
    SyncAll,
    Truncate,
    Unlink,
    Write,
    take_snapshot,
)
from crashsafe.crashcheck._report import Report
from tests.children import NOBODY, nobody_python

OLD = b"old content\n"
NEW = b"new content, longer than the old\n"

# The target holds the old or the new content, whole; a file that is missing is fine.
OLD_OR_NEW = (
    f'c="$(cat a)"; test "$c" = "{OLD.decode().strip()}" || '
    f'test "$c" = "{NEW.decode().strip()}" || {{ echo "a holds: $c"; exit 1; }}'
)
# Once the program said "saved", the target must hold the new content.
SAVED_MEANS_NEW = (
    'case "$CRASHCHECK_STDOUT" in *saved*) '
    f'test "$(cat a)" = "{NEW.decode().strip()}" || '
    '{ echo "saved, yet a holds: $(cat a)"; exit 1; };; '
    f"*) {OLD_OR_NEW};; esac"
)


class Trace:
    """Operations over the directory *root* (holding ``a`` with OLD), with calls
    numbered in order as a tracer would."""

    def __init__(self, tmp: Path, files: dict[str, bytes] | None = None) -> None:
        self.root = tmp / "data"
        self.root.mkdir()
        for name, data in (files if files is not None else {"a": OLD}).items():
            (self.root / name).write_bytes(data)
        self.snapshot: Snapshot = take_snapshot([str(self.root)], str(tmp / "snap"))
        self.ops: list[Operation] = []
        self._next_inode = -1

    def call(self, text: str) -> Call:
        return Call(len(self.ops) * 2 + 1, 100, text)  # the tracer's numbers need not be dense

    def path(self, name: str) -> str:
        return str(self.root / name) if name else str(self.root)

    def inode(self, name: str = "") -> int:
        return os.stat(self.path(name)).st_ino

    def new_inode(self) -> int:
        self._next_inode -= 1
        return self._next_inode + 1

    def add(self, op: Operation) -> Operation:
        self.ops.append(op)
        return op

    def create(self, name: str, named: bool = True) -> int:
        inode = self.new_inode()
        self.add(Create(self.call(f"openat({name})"), self.path(name), inode, 0o644, named))
        return inode

    def write(self, inode: int, offset: int, data: bytes, appended: bool = False) -> None:
        self.add(Write(self.call("write"), inode, offset, data, appended=appended))

    def fsync(self, inode: int) -> None:
        self.add(Sync(self.call("fsync"), inode))

    def rename(self, src: str, dst: str, exchange: bool = False) -> None:
        self.add(Rename(self.call("rename"), self.path(src), self.path(dst), exchange))

    def output(self, text: str) -> None:
        self.add(Output(self.call("write(1)"), text.encode()))

    def explore(self, check: object, **kwargs: object) -> Report:
        return explore_operations(self.snapshot, self.ops, check, **kwargs)  # type: ignore[arg-type]


def kinds(report: Report) -> list[str]:
    return sorted(v.kind for v in report.vulnerabilities)


# -- the naive writers, each flagged with its kind ------------------------------------


def test_in_place_writer_is_atomicity(tmp_path: Path) -> None:
    t = Trace(tmp_path)
    a = t.inode("a")
    t.add(Truncate(t.call("ftruncate(3, 0)"), a, 0))
    t.write(a, 0, NEW)
    t.fsync(a)
    report = t.explore(OLD_OR_NEW)
    assert "atomicity" in kinds(report)
    first = report.vulnerabilities[0]
    assert first.kind == "atomicity"
    assert first.crash_point.syscall == 1 and first.crash_point.call == "ftruncate(3, 0)"
    assert first.persisted == ("truncate(a, 0)",)
    assert first.lost == (f"write(a, 0..{len(NEW)})",)
    assert "a holds: " in first.check_output


def test_rename_without_fsync_is_ordering(tmp_path: Path) -> None:
    t = Trace(tmp_path)
    tmp = t.create("a.tmp")
    t.write(tmp, 0, NEW)
    t.rename("a.tmp", "a")
    report = t.explore(OLD_OR_NEW)
    assert kinds(report) == ["ordering"]
    (v,) = report.vulnerabilities
    assert v.crash_point.syscall == t.ops[2].call.index
    assert v.lost == (f"write(a.tmp, 0..{len(NEW)})",)
    assert "rename(a.tmp -> a)" in v.persisted
    assert v.check_output.strip() == "a holds:"  # the rename landed, the data did not
    assert v.family == "one-left-out"


def protocol(t: Trace, dir_fsync: bool) -> None:
    tmp = t.create("a.tmp")
    t.write(tmp, 0, NEW)
    t.fsync(tmp)
    t.rename("a.tmp", "a")
    if dir_fsync:
        t.fsync(t.inode())
    t.output("saved\n")


def test_crashsafe_protocol_has_no_vulnerability(tmp_path: Path) -> None:
    t = Trace(tmp_path)
    protocol(t, dir_fsync=True)
    report = t.explore(SAVED_MEANS_NEW)
    assert report.vulnerabilities == []
    assert report.to_dict()["vulnerabilities"] == []
    assert report.states_checked >= 4


def test_missing_directory_fsync_is_durability(tmp_path: Path) -> None:
    t = Trace(tmp_path)
    protocol(t, dir_fsync=False)
    report = t.explore(SAVED_MEANS_NEW)
    assert set(kinds(report)) == {"durability"}
    lost = {v.lost for v in report.vulnerabilities}
    assert ("rename(a.tmp -> a)",) in lost
    v = next(v for v in report.vulnerabilities if v.lost == ("rename(a.tmp -> a)",))
    assert v.crash_point.call == "write(1)"
    assert "saved, yet a holds: old content" in v.check_output
    # The same check without the report of success: nothing was promised, so a lost
    # rename is fine; the check must then find nothing.
    t.ops = [op for op in t.ops if not isinstance(op, Output)]
    assert t.explore(SAVED_MEANS_NEW).vulnerabilities == []


def test_json_report_shape(tmp_path: Path) -> None:
    t = Trace(tmp_path)
    protocol(t, dir_fsync=False)
    import json

    data = json.loads(t.explore(SAVED_MEANS_NEW).to_json())
    assert data["states_checked"] > 0
    v = data["vulnerabilities"][0]
    assert set(v) >= {"kind", "crash_point", "persisted", "lost", "check_output"}
    assert set(v["crash_point"]) == {"syscall", "call"}
    assert isinstance(v["crash_point"]["syscall"], int)


# -- torn writes --------------------------------------------------------------------------


def test_pieces_split_at_file_offset_blocks() -> None:
    assert pieces(2048, 8192) == [(2048, 4096), (4096, 8192), (8192, 10240)]
    assert pieces(0, 4096) == [(0, 4096)]
    assert pieces(4095, 2) == [(4095, 4096), (4096, 4097)]
    assert pieces(10, 0) == []


def test_torn_write_is_atomicity_with_block_pieces(tmp_path: Path) -> None:
    old, new = b"o" * 10240, b"n" * 8192
    t = Trace(tmp_path, {"a": old})
    a = t.inode("a")
    t.write(a, 2048, new)  # mid-block: pieces 2048..4096, 4096..8192, 8192..10240
    check = (
        f"{sys.executable} -c \"import sys; d = open('a', 'rb').read(); "
        f'sys.exit(d not in ({old!r}, {old[:2048] + new!r}))"'
    )
    report = t.explore(check)
    assert kinds(report) == ["atomicity"]
    (v,) = report.vulnerabilities
    assert v.family == "torn"
    assert v.persisted == ("write(a, 2048..10240) in part: 2048..4096",)
    assert v.lost == ("the rest of write(a, 2048..10240)",)


def test_appending_write_leaves_zeros_or_garbage(tmp_path: Path) -> None:
    t = Trace(tmp_path, {"log": b"line1\n"})
    log = t.inode("log")
    t.write(log, 6, b"line2\n", appended=True)
    # Zeros are tolerated (a reader skips them), garbage is not.
    garbage = f"b'\\\\x{GARBAGE:02x}'"
    check = f"{sys.executable} -c \"import sys; sys.exit({garbage} in open('log', 'rb').read())\""
    report = t.explore(check)
    (v,) = report.vulnerabilities
    assert v.kind == "atomicity"
    assert v.persisted == (
        "write(log, 6..12) in part: none of its data, its new size with garbage",
    )
    # The two fills, in the model itself:
    base = Base(t.snapshot)
    for fill, expect in (("zeros", b"\0" * 6), ("garbage", bytes([GARBAGE]) * 6), (None, b"")):
        state = base.state()
        op = t.ops[0]
        assert isinstance(op, Write)
        state.write(op, [], fill)
        out = tmp_path / f"out-{fill}"
        state.materialise([str(out)])
        assert (out / "log").read_bytes() == b"line1\n" + expect


def test_torn_variants_capped(tmp_path: Path) -> None:
    t = Trace(tmp_path, {"a": b""})
    a = t.inode("a")
    t.write(a, 0, b"x" * (4096 * 40))
    report = t.explore("true", max_torn=6)
    # prefix 0 and 1 (one state each), and at most 6 + 2 torn states.
    assert report.states_enumerated <= 2 + 2 + 6 + 2
    assert report.states_checked >= 6


# -- O_TMPFILE, exchange, directories ---------------------------------------------------


def test_tmpfile_linked_after_fsync_is_safe_and_before_is_ordering(tmp_path: Path) -> None:
    check = f'test ! -e b || test "$(cat b)" = "{NEW.decode().strip()}"'
    for synced in (True, False):
        (tmp_path / str(synced)).mkdir()
        t = Trace(tmp_path / str(synced))
        anon = t.create("", named=False)
        t.write(anon, 0, NEW)
        if synced:
            t.fsync(anon)
        t.add(Link(t.call("linkat"), t.path("b"), anon))
        t.fsync(t.inode())
        report = t.explore(check)
        if synced:
            assert report.vulnerabilities == []
        else:
            assert kinds(report) == ["ordering"]
            assert report.vulnerabilities[0].lost == (f"write(<unnamed file in .>, 0..{len(NEW)})",)
            assert report.vulnerabilities[0].persisted == ("link(<unnamed file in .> -> b)",)


def test_exchange_rename_swaps(tmp_path: Path) -> None:
    t = Trace(tmp_path, {"a": OLD, "b": NEW})
    old_a = t.inode("a")
    t.rename("a", "b", exchange=True)
    t.add(Symlink(t.call("symlink"), t.path("l"), "a"))
    t.add(SetMode(t.call("chmod"), old_a, 0o600))
    state = Base(t.snapshot).state()
    for op in t.ops:
        state.apply(op)
    out = tmp_path / "out"
    state.materialise([str(out)])
    assert (out / "a").read_bytes() == NEW
    assert (out / "b").read_bytes() == OLD
    assert os.readlink(out / "l") == "a"
    assert (out / "b").stat().st_mode & 0o777 == 0o600  # the inode moved with its name
    # Then the old content is dropped: if the swap is lost and the unlink persists, the
    # new content is gone from both names.
    t.add(Unlink(t.call("unlink(b)"), t.path("b")))
    report = t.explore('grep -qs "new content" a b')
    assert kinds(report) == ["ordering"]
    assert report.vulnerabilities[0].lost == ("rename(a <-> b)",)
    assert report.vulnerabilities[0].persisted[-1] == "unlink(b)"


def test_mkdir_without_parent_fsync_is_durability(tmp_path: Path) -> None:
    t = Trace(tmp_path)
    d = t.new_inode()
    t.add(Mkdir(t.call("mkdir(d)"), t.path("d"), d, 0o755))
    f = t.create("d/f")
    t.write(f, 0, NEW)
    t.fsync(f)
    t.fsync(d)  # f's entry is durable in d, but d's own entry in data is not
    t.output("saved\n")
    check = (
        f'case "$CRASHCHECK_STDOUT" in *saved*) test "$(cat d/f)" = "{NEW.decode().strip()}";; esac'
    )
    report = t.explore(check)
    assert kinds(report) == ["durability"]
    assert report.vulnerabilities[0].lost == ("mkdir(d)",)
    # With the parent synced too, nothing is found.
    t.ops.insert(len(t.ops) - 1, Sync(t.call("fsync(data)"), t.inode()))
    assert t.explore(check).vulnerabilities == []


def test_identical_states_checked_once(tmp_path: Path) -> None:
    t = Trace(tmp_path)
    a = t.inode("a")
    for _ in range(5):
        t.fsync(a)
    t.add(Unlink(t.call("unlink(a)"), t.path("a")))
    t.add(SyncAll(t.call("sync")))
    report = t.explore("true")
    assert report.states_enumerated > report.states_checked
    assert report.states_checked == 2  # a there, a gone


# -- exhaustive, sanity, checks ------------------------------------------------------


def test_exhaustive_finds_the_same_and_respects_its_cap(tmp_path: Path) -> None:
    t = Trace(tmp_path)
    tmp = t.create("a.tmp")
    t.write(tmp, 0, NEW)
    t.rename("a.tmp", "a")
    report = t.explore(OLD_OR_NEW, exhaustive=True)
    assert kinds(report) == ["ordering"]
    assert report.vulnerabilities[0].family == "exhaustive"
    assert not report.stopped_early
    for _ in range(8):
        t.write(tmp, 0, NEW)
    capped = t.explore("true", exhaustive=True, max_states=25)
    assert capped.stopped_early
    assert capped.states_enumerated == 25


def test_check_failing_before_the_run_is_an_error(tmp_path: Path) -> None:
    t = Trace(tmp_path)
    t.add(Unlink(t.call("unlink(a)"), t.path("a")))
    with pytest.raises(CrashcheckError, match="before the run") as e:
        t.explore("echo not yet; exit 3")
    assert "not yet" in str(e.value)
    with pytest.raises(CrashcheckError, match="after the whole run") as e:
        t.explore("test -e a || { echo a is gone; exit 1; }")
    assert "a is gone" in str(e.value)


def test_callable_check_and_context(tmp_path: Path) -> None:
    t = Trace(tmp_path)
    tmp = t.create("a.tmp")
    t.write(tmp, 0, NEW)
    t.rename("a.tmp", "a")
    t.output("done\n")
    seen: list[bytes] = []

    def check(ctx: CheckContext) -> bool:
        seen.append(ctx.stdout)
        assert ctx.dir == ctx.dirs[0]
        data = (ctx.dir / "a").read_bytes()
        assert data in (OLD, NEW), f"a holds {data!r}"
        return True

    report = t.explore(check, jobs=1)
    assert kinds(report) == ["ordering"]
    assert report.vulnerabilities[0].check_output.startswith("a holds b''")
    assert b"done\n" in seen and b"" in seen

    # Any exception marks a state broken, with its type and text as the output.
    def reads(ctx: CheckContext) -> None:
        (ctx.dir / "a").read_bytes().decode("ascii").encode()[0]

    report = t.explore(reads)
    assert {v.check_output for v in report.vulnerabilities} == {"IndexError: index out of range"}


def test_check_environment_with_two_directories(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (two / "x").write_bytes(b"x")
    snapshot = take_snapshot([str(one), str(two)], str(tmp_path / "snap"))
    ops: list[Operation] = [
        Output(Call(1, 1, "write(1)"), b"caf\xe9\n"),
        Rename(Call(2, 1, "rename"), str(two / "x"), str(one / "x")),
    ]
    script = tmp_path / "check.py"
    script.write_text(
        "import os, sys\n"
        "d1, d2 = os.environ['CRASHCHECK_DIRS'].split(':')\n"
        "assert os.getcwd() == d1 and os.path.isdir(d2), (os.getcwd(), d1, d2)\n"
        "told = os.fsencode(os.environ['CRASHCHECK_STDOUT'])\n"
        "assert told == open(os.environ['CRASHCHECK_STDOUT_FILE'], 'rb').read(), told\n"
        "assert told in (b'', b'caf\\xe9\\n'), told\n"
        "sys.exit(os.path.exists('x') == os.path.exists(os.path.join(d2, 'x')))\n"
    )
    report = explore_operations(snapshot, ops, f"{sys.executable} {script}")
    assert report.vulnerabilities == []
    assert report.states_checked == 3  # before, told, renamed
    with pytest.raises(CrashcheckError, match="'test -e x' fails on the directories as"):
        explore_operations(snapshot, ops, "test -e x")


def test_parallel_jobs_give_the_same_report(tmp_path: Path) -> None:
    t = Trace(tmp_path)
    protocol(t, dir_fsync=False)
    one = t.explore(SAVED_MEANS_NEW, jobs=1)
    four = t.explore(SAVED_MEANS_NEW, jobs=4)
    assert one.to_dict() == four.to_dict()
    assert len(one.vulnerabilities) >= 2


def test_progress_and_scratch_cleaned(tmp_path: Path) -> None:
    t = Trace(tmp_path)
    protocol(t, dir_fsync=True)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    calls: list[tuple[int, int]] = []
    report = t.explore("true", scratch=str(scratch), progress=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (report.states_checked, report.states_checked)
    assert list(scratch.iterdir()) == []


def test_check_timeout_counts_as_broken(tmp_path: Path) -> None:
    t = Trace(tmp_path)
    t.add(Unlink(t.call("unlink(a)"), t.path("a")))
    t.add(Create(t.call("creat(a)"), t.path("a"), -1, 0o644))
    t.write(-1, 0, OLD)
    t.fsync(-1)
    t.fsync(t.inode())
    # Hangs only when a is missing: the state between unlink and create.
    report = t.explore("test -e a || sleep 60", timeout=1)
    (v,) = report.vulnerabilities
    assert v.kind == "atomicity" and "timed out after 1 s" in v.check_output


# -- the model itself ------------------------------------------------------------------


def test_model_directories_links_and_no_ops(tmp_path: Path) -> None:
    t = Trace(tmp_path, {"x": b"x" * 100})
    (t.root / "sub").mkdir()
    os.rename(t.root / "x", t.root / "sub" / "x")
    os.link(t.root / "sub" / "x", t.root / "h")
    os.symlink("sub/x", t.root / "s")
    t.snapshot = take_snapshot([str(t.root)], str(tmp_path / "snap2"))
    x = t.inode("sub/x")
    e, f = t.new_inode(), t.new_inode()
    ops: list[Operation] = [
        Rename(t.call("rename"), t.path("sub"), t.path("moved")),
        Rename(t.call("rename"), t.path("moved"), t.path("moved/inner")),  # into itself
        Rename(t.call("rename"), t.path("missing"), t.path("y")),
        Link(t.call("link"), t.path("z"), 12345678),  # an inode the model does not know
        Write(t.call("write"), 12345678, 0, b"lost"),
        Create(t.call("creat"), t.path("nodir/f"), -9, 0o644),  # its directory is missing
        Truncate(t.call("ftruncate"), x, 3000),
        Write(t.call("pwrite"), x, 5000, b"tail"),
        Mkdir(t.call("mkdir"), t.path("e"), e, 0o755),
        Create(t.call("creat"), t.path("e/f"), f, 0o640),
        SetMode(t.call("chmod"), e, 0o500),
        Unlink(t.call("unlink"), t.path("moved")),  # a directory: unlink leaves it
    ]
    base = Base(t.snapshot)
    one, two = base.state(), base.state()
    for op in ops:
        one.apply(op)
        two.apply(op)
    assert one.fingerprint() == two.fingerprint()
    assert one.fingerprint() != base.state().fingerprint()
    out = tmp_path / "out"
    one.materialise([str(out)])
    data = (out / "moved" / "x").read_bytes()
    assert data == b"x" * 100 + bytes(2900) + bytes(2000) + b"tail"
    assert (out / "moved" / "x").stat().st_ino == (out / "h").stat().st_ino
    assert os.readlink(out / "s") == "sub/x"
    assert (out / "e").stat().st_mode & 0o777 == 0o500
    assert (out / "e" / "f").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in out.iterdir()) == ["e", "h", "moved", "s"]
    # The snapshot's own copy is untouched by the replay.
    assert (tmp_path / "snap2" / "0" / "sub" / "x").read_bytes() == b"x" * 100
    # An exchange with a missing side, and a write of nothing, change nothing.
    three = base.state()
    three.apply(Rename(t.call("rename"), t.path("h"), t.path("none"), exchange=True))
    three.apply(Write(t.call("write"), x, 10**6, b""))
    three.apply(Rename(t.call("rename"), t.path("h"), t.path("sub/x")))  # one file: no-op
    assert three.fingerprint() == base.state().fingerprint()


def test_fingerprint_sees_content_mode_and_links(tmp_path: Path) -> None:
    t = Trace(tmp_path, {"a": b"1", "b": b"1"})
    base = Base(t.snapshot)
    a, b = t.inode("a"), t.inode("b")

    def after(*ops: Operation) -> bytes:
        state = base.state()
        for op in ops:
            state.apply(op)
        return state.fingerprint()

    plain = after()
    assert after(Write(t.call("w"), a, 0, b"2")) != plain
    assert after(Write(t.call("w"), a, 0, b"2")) == after(Write(t.call("w"), a, 0, b"2"))
    assert after(SetMode(t.call("chmod"), a, 0o600)) != plain
    # b replaced by a second name of a: same bytes, but one inode now.
    assert after(Link(t.call("link"), t.path("b"), a)) != plain
    assert after(Unlink(t.call("unlink"), t.path("b"))) != after(
        Unlink(t.call("unlink"), t.path("a"))
    )
    del b


def test_long_lists_are_shortened(tmp_path: Path) -> None:
    t = Trace(tmp_path)
    for n in range(30):
        t.create(f"f{n}")
    t.add(Unlink(t.call("unlink(a)"), t.path("a")))
    t.add(Create(t.call("creat(a)"), t.path("a"), -99, 0o644))
    report = t.explore("test -e a")
    (v,) = report.vulnerabilities
    assert v.kind == "atomicity" and v.crash_point.call == "unlink(a)"
    assert len(v.persisted) == 20
    assert v.persisted[0] == "(12 earlier operations)"
    assert v.persisted[-1] == "unlink(a)"
    assert v.lost == ("create(a)",)


def test_synced_write_big_file_rmdir_and_clipped_output(tmp_path: Path) -> None:
    big = bytes(range(256)) * 6144  # 1.5 MiB: copied from the snapshot, not kept in memory
    t = Trace(tmp_path, {"a": OLD, "big": big})
    (t.root / "d").mkdir()
    t.snapshot = take_snapshot([str(t.root)], str(tmp_path / "snap2"))
    t.add(Write(t.call("write"), t.inode("a"), 0, NEW, synced=True))
    t.add(Rmdir(t.call("rmdir(d)"), t.path("d")))
    t.add(Mkdir(t.call("mkdir(d)"), t.path("d"), -1, 0o700))
    t.fsync(t.inode())
    check = (
        f"test $(wc -c < big) = {len(big)} || exit 2; "
        'test -d d || { head -c 10000 /dev/zero | tr "\\0" x; exit 1; }'
    )
    report = t.explore(check)
    (v,) = report.vulnerabilities
    assert v.kind == "atomicity" and v.crash_point.call == "rmdir(d)"
    assert v.persisted == ("rmdir(d)",)  # the O_SYNC write was durable at once
    assert v.check_output == "x" * 4096 + "\n[... 5904 more characters]"


def test_exhaustive_tears_writes_every_way(tmp_path: Path) -> None:
    t = Trace(tmp_path, {"a": b""})
    t.write(t.inode("a"), 0, b"y" * 3 * 4096)
    report = t.explore("true", exhaustive=True)
    # 2 sanity states; k=0; k=1: whole, 6 proper subsets of 3 pieces, 2 fills, lost.
    assert report.states_enumerated == 2 + 1 + 9 + 1
    assert report.states_checked == 1 + 9


def test_a_run_that_did_nothing(tmp_path: Path) -> None:
    t = Trace(tmp_path)
    report = t.explore('test "$(cat a)" = "old content"')
    assert (report.states_enumerated, report.states_checked) == (3, 1)
    assert report.vulnerabilities == [] and not report.stopped_early


def test_scratch_removed_even_when_a_state_locks_its_directories() -> None:
    python, src = nobody_python()
    # Under /tmp itself: nobody cannot reach into pytest's own root-only directory.
    place = Path(tempfile.mkdtemp(prefix="crashcheck-test-"))
    try:
        place.chmod(0o777)  # nobody may remove the top directory it was given
        top = place / "scratch"
        (top / "d" / "e").mkdir(parents=True)
        (top / "d" / "e" / "f").write_bytes(b"f")
        for p in (top, top / "d", top / "d" / "e", top / "d" / "e" / "f"):
            os.chown(p, 65534, 65534)
        (top / "d" / "e").chmod(0o000)
        (top / "d").chmod(0o500)
        code = "import sys; from crashsafe.crashcheck._checkrun import remove_tree; "
        done = subprocess.run(
            [*NOBODY, python, "-c", code + "remove_tree(sys.argv[1])", str(top)],
            env={**os.environ, "PYTHONPATH": src},
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert not top.exists()
    finally:
        shutil.rmtree(place)


def test_an_interrupted_exploration_kills_its_running_checks(tmp_path: Path) -> None:
    t = Trace(tmp_path)
    protocol(t, dir_fsync=True)
    pids = tmp_path / "pids"
    # Hangs on every state that shows the temporary file (none before or after the run).
    check = f"if [ -e a.tmp ]; then echo $$ >> {pids}; exec sleep 600; fi"

    class Stop(Exception):
        pass

    def progress(done: int, total: int) -> None:
        del done, total
        while not pids.exists():  # until one check hangs, then the user presses Ctrl-C
            os.sched_yield()
        raise Stop

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(Stop):
        t.explore(check, scratch=str(scratch), progress=progress, jobs=2)
    hung = [int(p) for p in pids.read_text().split()]
    assert hung
    for pid in hung:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert list(scratch.iterdir()) == []


def test_a_write_in_two_calls_is_one_finding_per_point(tmp_path: Path) -> None:
    t = Trace(tmp_path, {"a": b""})
    a = t.inode("a")
    t.write(a, 0, b"x" * 6000)
    t.write(a, 6000, b"y" * 6000)
    t.fsync(a)
    check = "test ! -s a || test $(wc -c < a) = 12000"
    report = t.explore(check)
    # Stopping after the first write breaks it, whole or torn: one finding for that
    # point; the second write torn is one more; nothing lost is reported on its own.
    assert [(v.kind, v.family, v.crash_point.syscall) for v in report.vulnerabilities] == [
        ("atomicity", "prefix", 1),
        ("atomicity", "torn", 3),
    ]


def test_states_made_in_memory_when_there_is_room(tmp_path: Path) -> None:
    t = Trace(tmp_path)
    t.add(Unlink(t.call("unlink(a)"), t.path("a")))
    t.add(Create(t.call("creat(a)"), t.path("a"), -1, 0o644))
    (v,) = t.explore('test -e a || { echo "$PWD"; exit 1; }').vulnerabilities
    shm = Path("/dev/shm")
    in_memory = memory_dir(t.snapshot, 2) is not None
    assert in_memory == (shm.is_dir() and os.access(shm, os.W_OK))
    if in_memory:
        assert v.check_output.startswith("/dev/shm/crashcheck-")
        assert not Path(v.check_output.strip()).parent.parent.exists()  # removed whole
    # No room for so many copies: the system's temporary directory instead.
    assert memory_dir(t.snapshot, 10**12) is None


def _exchange(a: Path, b: Path) -> None:
    """``renameat2(a, b, RENAME_EXCHANGE)``."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


def _tree(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under *root*: kind, mode, content or target, and which names share a
    file (by the first name of each inode, in sorted order)."""
    out: dict[str, tuple[object, ...]] = {}
    first: dict[int, str] = {}
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                out[rel] = ("l", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("d", st.st_mode & 0o7777)
            else:
                same = first.setdefault(st.st_ino, rel)
                out[rel] = ("f", st.st_mode & 0o7777, Path(path).read_bytes(), same)
    return out


@pytest.mark.parametrize("seed", range(100))
def test_model_agrees_with_the_kernel(tmp_path: Path, seed: int) -> None:
    """Random operations done for real and replayed in the model end the same."""
    import random

    rng = random.Random(seed)
    t = Trace(tmp_path, {"a": b"A" * 5000, "b": b"B"})
    (t.root / "d").mkdir()
    os.link(t.root / "a", t.root / "d" / "a2")
    t.snapshot = take_snapshot([str(t.root)], str(tmp_path / "snap2"))
    ids = {rel: t.inode(rel) for rel in ("a", "b", "d/a2")}
    dirs = {"d": t.inode("d")}
    names = ["a", "b", "c", "d/a2", "d/x", "e/y", "e"]
    for _ in range(60):
        kind = rng.choice(
            [
                *("create", "write", "truncate", "rename", "link"),
                *("unlink", "mkdir", "rmdir", "symlink", "chmod", "exchange"),
            ]
        )
        p, q = rng.choice(names), rng.choice(names)
        real_p, real_q = t.root / p, t.root / q
        if any(os.path.islink(x.parent) for x in (real_p, real_q)):
            continue  # a tracer names paths with their directories' symlinks resolved
        try:
            if kind == "create":
                flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW
                os.close(os.open(real_p, flags, 0o644))
                ids[p] = t.new_inode()
                t.add(Create(t.call(kind), str(real_p), ids[p], 0o644))
            elif kind in ("write", "truncate", "chmod") and p in ids and not real_p.is_symlink():
                inode = ids[p]
                if kind == "write":
                    offset, data = (
                        rng.randrange(0, 9000),
                        bytes([rng.randrange(256)]) * rng.randrange(1, 6000),
                    )
                    with open(real_p, "r+b") as f:
                        f.seek(offset)
                        f.write(data)
                    t.add(Write(t.call(kind), inode, offset, data))
                elif kind == "truncate":
                    size = rng.randrange(0, 9000)
                    os.truncate(real_p, size)
                    t.add(Truncate(t.call(kind), inode, size))
                else:
                    mode = rng.choice([0o600, 0o640, 0o755])
                    os.chmod(real_p, mode)
                    t.add(SetMode(t.call(kind), inode, mode))
            elif kind == "rename":
                same = (
                    os.path.lexists(real_p)
                    and os.path.lexists(real_q)
                    and os.lstat(real_p).st_ino == os.lstat(real_q).st_ino
                )
                os.rename(real_p, real_q)
                t.rename(p, q)
                for table in () if same else (ids, dirs):  # one file's two names: no-op
                    moved = {k: v for k, v in table.items() if k == p or k.startswith(p + "/")}
                    for k in list(table):
                        if k == q or k.startswith(q + "/"):
                            del table[k]
                    for k, v in moved.items():
                        del table[k]
                        table[q + k[len(p) :]] = v
            elif kind == "exchange":
                _exchange(real_p, real_q)
                t.rename(p, q, exchange=True)
                for table in (ids, dirs) if p != q else ():
                    under_p = {k: v for k, v in table.items() if k == p or k.startswith(p + "/")}
                    under_q = {k: v for k, v in table.items() if k == q or k.startswith(q + "/")}
                    for k in [*under_p, *under_q]:
                        del table[k]
                    table.update({q + k[len(p) :]: v for k, v in under_p.items()})
                    table.update({p + k[len(q) :]: v for k, v in under_q.items()})
            elif kind == "link" and p in ids and not real_p.is_symlink():
                os.link(real_p, real_q, follow_symlinks=False)
                ids[q] = ids[p]
                t.add(Link(t.call(kind), str(real_q), ids[q]))
            elif kind == "unlink":
                os.unlink(real_p)
                ids.pop(p, None)
                t.add(Unlink(t.call(kind), str(real_p)))
            elif kind == "mkdir":
                os.mkdir(real_p, 0o755)
                dirs[p] = t.new_inode()
                t.add(Mkdir(t.call(kind), str(real_p), dirs[p], 0o755))
            elif kind == "rmdir":
                os.rmdir(real_p)
                dirs.pop(p, None)
                t.add(Rmdir(t.call(kind), str(real_p)))
            elif kind == "symlink":
                os.symlink(q, real_p)
                t.add(Symlink(t.call(kind), str(real_p), q))
        except OSError:
            pass  # the kernel refused it: nothing to record
    state = Base(t.snapshot).state()
    for op in t.ops:
        state.apply(op)
    out = tmp_path / "out"
    state.materialise([str(out)])
    assert _tree(out) == _tree(t.root)
