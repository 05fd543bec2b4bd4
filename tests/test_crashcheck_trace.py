"""crashcheck's tracer: real programs under real strace, turned into operations.

Each test runs a small Python program (``python -I -S -c``, whose startup makes
thousands of calls outside the directory, all of which must be skipped) or a real tool
(git, sqlite3) under :func:`record`, and checks the operations it gave. Every recording
is also replayed over its snapshot: all of its operations, in order, must rebuild the
directory exactly as the run left it (names, contents, modes, symlink targets).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from crashsafe.crashcheck._errors import CrashcheckError
from crashsafe.crashcheck._ops import (
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
from crashsafe.crashcheck._strace import Fd, fd_arg, int_arg, str_arg
from crashsafe.crashcheck._trace import Recording, parse, record
from tests.harness.replay import actual, replay
from tests.harness.require import require_tools

PY = [sys.executable, "-I", "-S", "-c"]
LIBC = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"


def run(
    tmp_path: Path,
    code: str,
    files: dict[str, bytes] | None = None,
    *,
    argv: list[str] | None = None,
    exact: bool = True,
    **kw: object,
) -> tuple[Recording, Path, Snapshot]:
    """Record *code* (or *argv*) in a fresh directory ``d`` holding *files*; check that
    the recording replays to what the run left (when *exact*)."""
    require_tools("strace")
    d = tmp_path / "d"
    d.mkdir(parents=True)
    for name, data in (files or {}).items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    snapshot = take_snapshot([str(d)], str(tmp_path / "snapshot"))
    out = io.BytesIO()
    program = argv or [*PY, textwrap.dedent(code)]
    rec = record(program, snapshot, cwd=str(d), stdout=out, **kw)  # type: ignore[arg-type]
    assert rec.stdout == out.getvalue()
    if exact:
        assert replay(snapshot, rec.operations) == actual(snapshot.roots)
    return rec, d.resolve(), snapshot


def show(rec: Recording, d: Path) -> list[tuple[object, ...]]:
    """The operations as tuples, paths relative to *d*."""

    def rel(path: str) -> str:
        return os.path.relpath(path, d)

    shown: list[tuple[object, ...]] = []
    for op in rec.operations:
        shown.append(_show(op, rel))
    return shown


def _show(op: Operation, rel: object) -> tuple[object, ...]:  # noqa: PLR0911
    assert callable(rel)
    if isinstance(op, Create):
        return ("create", rel(op.path), op.inode, oct(op.mode), op.named)
    if isinstance(op, Mkdir):
        return ("mkdir", rel(op.path), op.inode, oct(op.mode))
    if isinstance(op, Symlink):
        return ("symlink", rel(op.path), op.target)
    if isinstance(op, Link):
        return ("link", rel(op.path), op.inode)
    if isinstance(op, Unlink):
        return ("unlink", rel(op.path))
    if isinstance(op, Rmdir):
        return ("rmdir", rel(op.path))
    if isinstance(op, Rename):
        return ("rename", rel(op.src), rel(op.dst), op.exchange)
    if isinstance(op, Write):
        flags = ("sync" if op.synced else "") + ("append" if op.appended else "")
        return ("write", op.inode, op.offset, op.data, flags)
    if isinstance(op, Truncate):
        return ("truncate", op.inode, op.size)
    if isinstance(op, SetMode):
        return ("chmod", op.inode, oct(op.mode))
    if isinstance(op, Sync):
        return (op.kind, op.inode)
    if isinstance(op, SyncAll):
        return ("syncall",)
    assert isinstance(op, Output)
    return ("output", op.data)


# ---- data: writes, offsets, appends, truncation ----------------------------------


def test_writes_land_at_the_offsets_the_program_wrote_them(tmp_path: Path) -> None:
    rec, d, snap = run(
        tmp_path,
        """
        import os
        fd = os.open("a.tmp", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.write(fd, b"hello world")
        os.pwrite(fd, b"XY", 2)
        os.writev(fd, [b"ab", b"cd"])
        os.pwritev(fd, [b"ef", b"gh"], 20)
        os.lseek(fd, 1, os.SEEK_SET)
        os.write(fd, b"Q")
        os.fsync(fd)
        os.close(fd)
        r = os.open("r", os.O_RDWR)
        os.read(r, 4)
        os.write(r, b"ab")
        os.readv(r, [bytearray(2)])
        os.pread(r, 5, 0)
        os.write(r, b"cd")
        os.rename("a.tmp", "a")
        os.write(1, b"saved\\n")
        """,
        {"r": b"0123456789"},
    )
    r = snap.entries[str(d / "r")].inode
    assert show(rec, d) == [
        ("create", "a.tmp", -1, "0o644", True),
        ("write", -1, 0, b"hello world", "append"),
        ("write", -1, 2, b"XY", ""),
        ("write", -1, 11, b"abcd", "append"),
        ("write", -1, 20, b"efgh", "append"),
        ("write", -1, 1, b"Q", ""),
        ("fsync", -1),
        ("write", r, 4, b"ab", ""),
        ("write", r, 8, b"cd", ""),
        ("rename", "a.tmp", "a", False),
        ("output", b"saved\n"),
    ]
    assert rec.stdout == b"saved\n"
    assert rec.status == 0 and rec.refused == []
    # every call counts, Python's startup too; operations come in the order of the calls
    indexes = [op.call.index for op in rec.operations]
    assert indexes == sorted(indexes) and indexes[0] > 100 and indexes[-1] <= rec.calls
    rename = rec.operations[-2].call
    assert rename.text == 'rename("a.tmp", "a")' and rename.pid > 0


def test_appends_land_at_the_end_whatever_the_offset(tmp_path: Path) -> None:
    rec, d, snap = run(
        tmp_path,
        """
        import os
        fd = os.open("log", os.O_WRONLY | os.O_APPEND)
        os.write(fd, b"one\\n")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"two\\n")
        os.pwrite(fd, b"three\\n", 0)  # Linux appends here too
        g = os.open("log", os.O_WRONLY)
        os.pwritev(g, [b"four\\n"], 0, os.RWF_APPEND)
        os.write(g, b"ZZ")
        """,
        {"log": b"zero\n"},
    )
    log = snap.entries[str(d / "log")].inode
    assert show(rec, d) == [
        ("write", log, 5, b"one\n", "append"),
        ("write", log, 9, b"two\n", "append"),
        ("write", log, 13, b"three\n", "append"),
        ("write", log, 19, b"four\n", "append"),
        ("write", log, 0, b"ZZ", ""),
    ]


def test_truncate_and_fallocate(tmp_path: Path) -> None:
    rec, d, snap = run(
        tmp_path,
        LIBC
        + """
fall = libc.fallocate
fall.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
def must(r):
    assert r == 0, os.strerror(ctypes.get_errno())
old = os.open("old", os.O_WRONLY | os.O_TRUNC)
empty = os.open("empty", os.O_WRONLY | os.O_TRUNC)  # already empty: nothing to record
ro = os.open("ro", os.O_RDONLY | os.O_TRUNC)  # Linux truncates all the same
fd = os.open("f", os.O_CREAT | os.O_RDWR, 0o644)
os.write(fd, b"x" * 100)
os.posix_fallocate(fd, 0, 200)
must(fall(fd, 1, 0, 4096))  # KEEP_SIZE: nothing visible
must(fall(fd, 3, 10, 20))  # PUNCH_HOLE | KEEP_SIZE
must(fall(fd, 0x10, 150, 100))  # ZERO_RANGE, growing the file
must(fall(fd, 0x11, 240, 100))  # ZERO_RANGE | KEEP_SIZE: up to the end only
os.ftruncate(fd, 50)
os.truncate("f", 60)
""",
        {"old": b"old content", "empty": b"", "ro": b"read only?"},
    )
    old = snap.entries[str(d / "old")].inode
    ro = snap.entries[str(d / "ro")].inode
    assert show(rec, d) == [
        ("truncate", old, 0),
        ("truncate", ro, 0),
        ("create", "f", -1, "0o644", True),
        ("write", -1, 0, b"x" * 100, "append"),
        ("truncate", -1, 200),
        ("write", -1, 10, bytes(20), ""),
        ("write", -1, 150, bytes(100), ""),
        ("write", -1, 240, bytes(10), ""),
        ("truncate", -1, 50),
        ("truncate", -1, 60),
    ]


def test_o_dsync_o_sync_and_rwf_dsync_writes_are_synced(tmp_path: Path) -> None:
    rec, d, snap = run(
        tmp_path,
        LIBC
        + """
a = os.open("a", os.O_CREAT | os.O_WRONLY | os.O_DSYNC, 0o644)
os.write(a, b"a")
b = os.open("b", os.O_CREAT | os.O_WRONLY | os.O_SYNC, 0o644)
os.write(b, b"b")
c = os.open("c", os.O_CREAT | os.O_WRONLY, 0o644)
os.pwritev(c, [b"c"], 0, os.RWF_DSYNC)
os.write(c, b"d")
libc.sync_file_range(c, ctypes.c_int64(0), ctypes.c_int64(0), 2)  # not a barrier
os.fdatasync(c)
here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
os.fsync(here)
os.sync()
assert libc.syncfs(here) == 0
""",
    )
    root = snap.entries[str(d)].inode
    assert show(rec, d) == [
        ("create", "a", -1, "0o644", True),
        ("write", -1, 0, b"a", "syncappend"),
        ("create", "b", -2, "0o644", True),
        ("write", -2, 0, b"b", "syncappend"),
        ("create", "c", -3, "0o644", True),
        ("write", -3, 0, b"c", "syncappend"),
        ("write", -3, 0, b"d", ""),
        ("fdatasync", -3),
        ("fsync", root),
        ("syncall",),
        ("syncall",),
    ]


# ---- names ---------------------------------------------------------------------


def test_names_created_moved_linked_and_removed(tmp_path: Path) -> None:
    rec, d, snap = run(
        tmp_path,
        """
        import os
        os.mkdir("dir", 0o750)
        os.close(os.open("dir/a", os.O_CREAT | os.O_WRONLY, 0o600))
        os.link("dir/a", "b")
        os.symlink("dir/a", "s")
        os.rename("dir", "dir2")
        os.unlink("dir2/a")
        os.rmdir("dir2")
        os.chmod("old", 0o600)
        fd = os.open("b", os.O_RDONLY)
        os.fchmod(fd, 0o640)
        os.unlink("s")
        os.link("b", "b2", follow_symlinks=False)  # linkat(..., 0)
        os.rename("b", "b2")  # two names of one file: nothing happens
        os.rename("b", "b")
        os.symlink("b", "s3")
        os.link("s3", "s4", follow_symlinks=False)  # a hard link to a symlink
        os.setxattr("b", "user.k", b"v")  # may change the mode (an ACL would): read after
        os.open("missing", os.O_RDONLY)  # fails: no operation, status 1
        """,
        {"old": b"old"},
    )
    assert rec.status == 1
    old = snap.entries[str(d / "old")].inode
    assert show(rec, d) == [
        ("mkdir", "dir", -1, "0o750"),
        ("create", "dir/a", -2, "0o600", True),
        ("link", "b", -2),
        ("symlink", "s", "dir/a"),
        ("rename", "dir", "dir2", False),
        ("unlink", "dir2/a"),
        ("rmdir", "dir2"),
        ("chmod", old, "0o600"),
        ("chmod", -2, "0o640"),
        ("unlink", "s"),
        ("link", "b2", -2),
        ("symlink", "s3", "b"),
        ("symlink", "s4", "b"),
        ("chmod", -2, "0o640"),
    ]


def test_names_through_symlinks_and_modes(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "real").mkdir()
    (d / "target").write_bytes(b"t")
    os.symlink("real", d / "ln")
    os.symlink("target", d / "s2")
    snapshot = take_snapshot([str(d)], str(tmp_path / "snapshot"))
    require_tools("strace")
    code = textwrap.dedent(
        LIBC
        + """
import stat
os.umask(0o027)
fd = os.open("ln/f", os.O_CREAT | os.O_WRONLY, 0o666)
os.write(fd, b"f")
os.rename("ln/f", "ln/g")
os.chmod("s2", 0o604)
os.mknod("n", 0o666 | stat.S_IFREG)
os.link("ln/g", "h")
assert libc.renameat2(-100, b"h", -100, b"c", 1) == 0  # RENAME_NOREPLACE
assert libc.renameat2(-100, b"c", -100, b"n", 2) == 0  # RENAME_EXCHANGE
here = os.open(".", os.O_RDONLY)
os.mkdir("e", dir_fd=here)
os.rmdir("e", dir_fd=here)
os.unlink("n", dir_fd=here)
"""
    )
    rec = record([*PY, code], snapshot, cwd=str(d), stdout=io.BytesIO())
    d = d.resolve()
    target = snapshot.entries[str(d / "target")].inode
    assert show(rec, d) == [
        ("create", "real/f", -1, "0o640", True),
        ("write", -1, 0, b"f", "append"),
        ("rename", "real/f", "real/g", False),
        ("chmod", target, "0o604"),
        ("create", "n", -2, "0o640", True),
        ("link", "h", -1),
        ("rename", "h", "c", False),
        ("rename", "c", "n", True),
        ("mkdir", "e", -3, "0o750"),
        ("rmdir", "e"),
        ("unlink", "n"),
    ]
    assert replay(snapshot, rec.operations) == actual(snapshot.roots)


def test_o_tmpfile_then_linkat_is_a_create_then_a_link(tmp_path: Path) -> None:
    rec, d, _ = run(
        tmp_path,
        LIBC
        + """
here = os.open(".", os.O_RDONLY)
fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o600)
os.write(fd, b"one")
os.fsync(fd)
os.link(f"/proc/self/fd/{fd}", "first", dst_dir_fd=here)
fd2 = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o640)
os.write(fd2, b"two")
assert libc.linkat(fd2, b"", -100, b"second", 0x1000) == 0  # AT_EMPTY_PATH
gone = os.open("gone", os.O_CREAT | os.O_WRONLY, 0o644)
os.unlink("gone")
os.write(gone, b"still written")  # to a (deleted) file
""",
    )
    assert show(rec, d) == [
        ("create", ".", -1, "0o600", False),
        ("write", -1, 0, b"one", "append"),
        ("fsync", -1),
        ("link", "first", -1),
        ("create", ".", -2, "0o640", False),
        ("write", -2, 0, b"two", "append"),
        ("link", "second", -2),
        ("create", "gone", -3, "0o644", True),
        ("unlink", "gone"),
        ("write", -3, 0, b"still written", "append"),
    ]


# ---- fds, threads, processes, working directories ---------------------------------


def test_dup_fcntl_and_fork_share_offsets(tmp_path: Path) -> None:
    rec, d, _ = run(
        tmp_path,
        """
        import os, fcntl
        fd = os.open("f", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"aa")
        d = os.dup(fd)
        os.write(d, b"bb")
        os.dup2(fd, 9)
        os.write(9, b"cc")
        e = fcntl.fcntl(fd, fcntl.F_DUPFD, 20)
        os.write(e, b"dd")
        os.close(fd)
        os.write(d, b"ee")
        fcntl.fcntl(d, fcntl.F_SETFL, os.O_APPEND)
        os.lseek(d, 0, os.SEEK_SET)
        os.write(9, b"ff")
        pid = os.fork()
        if pid == 0:
            os.write(e, b"child")
            os._exit(0)
        os.waitpid(pid, 0)
        fcntl.fcntl(d, fcntl.F_SETFL, 0)
        os.lseek(d, 1, os.SEEK_SET)
        os.write(e, b"X")
        """,
    )
    writes = [s for s in show(rec, d) if s[0] == "write"]
    assert writes == [
        ("write", -1, 0, b"aa", "append"),
        ("write", -1, 2, b"bb", "append"),
        ("write", -1, 4, b"cc", "append"),
        ("write", -1, 6, b"dd", "append"),
        ("write", -1, 8, b"ee", "append"),
        ("write", -1, 10, b"ff", "append"),
        ("write", -1, 12, b"child", "append"),
        ("write", -1, 1, b"X", ""),
    ]
    pids = {op.call.pid for op in rec.operations if isinstance(op, Write)}
    assert len(pids) == 2  # the child's write is its own


def test_threads_writing_at_once(tmp_path: Path) -> None:
    rec, d, _ = run(
        tmp_path,
        """
        import os, threading
        go = threading.Barrier(4)
        def work(i):
            fd = os.open(f"t{i}", os.O_CREAT | os.O_WRONLY, 0o644)
            go.wait()
            for j in range(20):
                os.write(fd, bytes([65 + i]) * (j + 1))
            os.fsync(fd)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        """,
    )
    by_name = {op.path: op for op in rec.operations if isinstance(op, Create)}
    assert len(by_name) == 4
    pids = set()
    for i in range(4):
        created = by_name[str(d / f"t{i}")]
        mine = [op for op in rec.operations if getattr(op, "inode", None) == created.inode]
        pids |= {op.call.pid for op in mine}
        writes = [(op.offset, op.data) for op in mine if isinstance(op, Write)]
        expected, at = [], 0
        for j in range(20):
            expected.append((at, bytes([65 + i]) * (j + 1)))
            at += j + 1
        assert writes == expected
        assert isinstance(mine[-1], Sync)
    assert len(pids) == 4


def test_children_and_working_directories(tmp_path: Path) -> None:
    rec, d, _ = run(
        tmp_path,
        """
        import os, subprocess
        os.mkdir("sub")
        pid = os.fork()
        if pid == 0:
            os.chdir("sub")
            fd = os.open("x", os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, b"child")
            os.rename("x", "x2")
            os._exit(0)
        os.waitpid(pid, 0)
        os.rename("sub/x2", "y")
        subprocess.run(["/bin/sh", "-c", "cd sub && echo shell > z && mv z ../w"], check=True)
        here = os.open("sub", os.O_RDONLY)
        os.fchdir(here)
        os.rename("../y", "y")
        os.write(1, b"done\\n")
        """,
    )
    assert show(rec, d) == [
        ("mkdir", "sub", -1, "0o755"),
        ("create", "sub/x", -2, "0o644", True),
        ("write", -2, 0, b"child", "append"),
        ("rename", "sub/x", "sub/x2", False),
        ("rename", "sub/x2", "y", False),
        ("create", "sub/z", -3, "0o644", True),
        ("write", -3, 0, b"shell\n", "append"),
        ("rename", "sub/z", "w", False),
        ("rename", "y", "sub/y", False),
        ("output", b"done\n"),
    ]
    assert len({op.call.pid for op in rec.operations}) == 4  # python, its child, sh, mv


def test_copy_file_range_and_sendfile_write_what_they_copied(tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"OUTSIDE-DATA")
    rec, d, _ = run(
        tmp_path,
        f"""
        import os
        src = os.open("src", os.O_RDONLY)
        dst = os.open("dst", os.O_CREAT | os.O_WRONLY, 0o644)
        os.lseek(src, 10, os.SEEK_SET)
        os.copy_file_range(src, dst, 5)
        os.copy_file_range(src, dst, 5, 50, 100)
        os.sendfile(dst, src, None, 3)
        os.sendfile(dst, src, 90, 4)
        out = os.open({str(outside)!r}, os.O_RDONLY)
        os.sendfile(dst, out, None, 7)
        os.copy_file_range(out, dst, 4, 8)
        os.sendfile(1, src, 0, 2)
        """,
        {"src": bytes(range(100))},
    )
    assert show(rec, d) == [
        ("create", "dst", -1, "0o644", True),
        ("write", -1, 0, bytes(range(10, 15)), "append"),
        ("write", -1, 100, bytes(range(50, 55)), "append"),
        ("write", -1, 5, bytes(range(15, 18)), ""),
        ("write", -1, 8, bytes(range(90, 94)), ""),
        ("write", -1, 12, b"OUTSIDE", ""),
        ("write", -1, 19, b"DATA", ""),
        ("output", bytes(range(2))),
    ]


def test_reflinks_write_what_they_cloned(tmp_path: Path) -> None:
    from tests.harness.mounts import loop_mount

    with loop_mount("xfs") as mnt:
        (mnt / "d").mkdir()
        (mnt / "d" / "src").write_bytes(b"S" * 4096 + b"T" * 4096)
        (mnt / "d" / "dst").write_bytes(b"D" * 20000)
        snapshot = take_snapshot([str(mnt / "d")], str(tmp_path / "snapshot"))
        code = textwrap.dedent(
            """
            import fcntl, os, struct
            src = os.open("src", os.O_RDONLY)
            whole = os.open("whole", os.O_CREAT | os.O_WRONLY, 0o644)
            fcntl.ioctl(whole, 0x40049409, src)  # FICLONE
            dst = os.open("dst", os.O_WRONLY)
            fcntl.ioctl(dst, 0x4020940D, struct.pack("qQQQ", src, 4096, 4096, 8192))
            fcntl.ioctl(dst, 0x40049409, src)  # the whole source over dst's start
            """
        )
        rec = record([*PY, code], snapshot, cwd=str(mnt / "d"), stdout=io.BytesIO())
        assert replay(snapshot, rec.operations) == actual(snapshot.roots)
        dst = snapshot.entries[str(mnt / "d" / "dst")].inode
        assert show(rec, mnt / "d") == [
            ("create", "whole", -1, "0o644", True),
            ("write", -1, 0, b"S" * 4096 + b"T" * 4096, "append"),
            ("write", dst, 8192, b"T" * 4096, ""),
            ("write", dst, 0, b"S" * 4096 + b"T" * 4096, ""),
        ]


# ---- standard output, status, refusals ----------------------------------------------


def test_standard_output_reaches_the_given_stdout_and_sits_among_the_operations(
    tmp_path: Path,
) -> None:
    require_tools("strace")
    d = tmp_path / "d"
    d.mkdir()
    snapshot = take_snapshot([str(d)], str(tmp_path / "snapshot"))
    code = """
import os
os.write(1, b"one\\n")
fd = os.open("f", os.O_CREAT | os.O_WRONLY, 0o644)
os.write(fd, b"data")
os.write(2, b"to stderr\\n")
os.writev(1, [b"tw", b"o\\n"])
saved = os.dup(1)
os.dup2(fd, 1)
os.write(1, b"into f")  # fd 1 is the file now: not output
os.dup2(saved, 1)
os.write(1, b"three\\n")
"""
    with open(tmp_path / "out", "wb") as out:
        rec = record([*PY, code], snapshot, cwd=str(d), stdout=out.fileno())
    assert (tmp_path / "out").read_bytes() == b"one\ntwo\nthree\n" == rec.stdout
    assert show(rec, d.resolve()) == [
        ("output", b"one\n"),
        ("create", "f", -1, "0o644", True),
        ("write", -1, 0, b"data", "append"),
        ("output", b"two\n"),
        ("write", -1, 4, b"into f", "append"),
        ("output", b"three\n"),
    ]


def test_exit_status_and_death_by_signal(tmp_path: Path) -> None:
    rec, _, _ = run(tmp_path, "import os; os._exit(3)")
    assert rec.status == 3
    rec2, _, _ = run(tmp_path / "2", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert rec2.status == -9


def test_writable_shared_maps_are_refused_unless_ignored(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(bytes(4096))
    code = f"""
        import mmap, os
        maps = []
        for name in ["db", "db-shm", "sub/x.map", {str(outside)!r}]:
            fd = os.open(name, os.O_RDWR)
            maps.append(mmap.mmap(fd, 4096))  # shared, writable
        fd = os.open("private", os.O_RDWR)
        maps.append(mmap.mmap(fd, 4096, access=mmap.ACCESS_COPY))
        maps.append(mmap.mmap(fd, 4096, access=mmap.ACCESS_READ))
        """
    files = {n: bytes(4096) for n in ["db", "db-shm", "sub/x.map", "private"]}
    rec, d, _ = run(tmp_path, code, files)
    assert len(rec.refused) == 3
    for name, why in zip(["db", "db-shm", "sub/x.map"], rec.refused, strict=True):
        assert why.startswith(f"{d / name} is mapped writable and shared")
    rec2, _, _ = run(tmp_path / "2", code, files, ignore_mmap=["*-shm", "sub/*.map"])
    assert len(rec2.refused) == 1 and rec2.refused[0].startswith(f"{d.parent / '2/d/db'} ")
    rec3, _, _ = run(tmp_path / "3", code, files, ignore_mmap=["x.map", "db*"])
    assert rec3.refused == []


# ---- errors ----------------------------------------------------------------------


def test_strace_missing_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = take_snapshot([str(tmp_path)], str(tmp_path.parent / f"{tmp_path.name}-snap"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CrashcheckError, match=r"cannot record prog: .*apt-get install strace"):
        record(["prog"], snapshot)


def test_a_missing_program_is_named(tmp_path: Path) -> None:
    require_tools("strace")
    snapshot = take_snapshot([str(tmp_path)], str(tmp_path.parent / f"{tmp_path.name}-snap"))
    with pytest.raises(CrashcheckError, match=r"cannot record no-such-program-x: .*Can't stat"):
        record(["no-such-program-x"], snapshot, stdout=io.BytesIO())


def test_ptrace_not_permitted_is_said_plainly(tmp_path: Path) -> None:
    """Inside a tracer (an outer strace -f), strace cannot trace: record says why."""
    require_tools("strace")
    inner = textwrap.dedent(
        f"""
        from crashsafe.crashcheck._errors import CrashcheckError
        from crashsafe.crashcheck._ops import take_snapshot
        from crashsafe.crashcheck._trace import record
        snapshot = take_snapshot([{str(tmp_path / "d")!r}], {str(tmp_path / "snap")!r})
        try:
            record(["true"], snapshot)
        except CrashcheckError as e:
            print(e)
        """
    )
    (tmp_path / "d").mkdir()
    done = subprocess.run(
        ["strace", "-f", "-o", os.devnull, sys.executable, "-c", inner],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (tmp_path / "snap").exists()
    assert done.stdout.startswith("cannot record true: ptrace is not permitted here"), done


# ---- the parser alone ------------------------------------------------------------


def test_parse_merges_split_calls_and_skips_strace_noise(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a b").write_bytes(b"")
    snapshot = take_snapshot([str(d)], str(tmp_path / "snapshot"))
    root = str(d.resolve())
    a_b = snapshot.entries[f"{root}/a b"].inode
    lines = f"""\
strace: Process 100 attached
[pid   100] openat(-100<{root}>, "new\\n\\"q\\"\\303\\251", 0x241, 0666 <unfinished ...>
[pid   101] clone3({{flags=0x3d0f00, child_tid=0x7f}}, 88 <unfinished ...>
[pid   100] <... openat resumed>) = 3<{root}/new\\n"q"\\303\\251>
100   write(3<{root}/new\\n"q"\\303\\251>, ""..., 3) = 3
 | 00000  61 62 63                                          abc              |
[pid   102] write(3<{root}/new\\n"q"\\303\\251>, ""..., 2) = 2
 | 00000  64 65                                             de               |
[pid   101] <... clone3 resumed> => {{parent_tid=[102]}}, 88) = 102
100   --- SIGCHLD {{si_signo=17, si_code=0x1}} ---
100   openat(-100<{root}>, "missing", 0) = -1 ENOENT (No such file or directory)
100   openat(-100<{root}>, "a b", 0x1) = 4<{root}/a b>
100   unlink("a b") = 0
100   write(4<{root}/a b>(deleted), ""..., 1) = 1
 | 00000  7a                                                z                |
100   fsync(4<{root}/a b>(deleted) <unfinished ...>
101   write(1<pipe:[7]>, ""..., 2 <unfinished ...>
100   <... fsync resumed>) = 0
101   <... write resumed>) = 2
 | 00000  6f 6b                                             ok               |
100   exit_group(0) = ?
101   +++ killed by SIGKILL +++
100   +++ exited with 0 +++
"""
    rec = parse(lines.splitlines(keepends=True), snapshot, cwd=root, umask=0o022)
    new = 'new\n"q"\u00e9'
    assert show(rec, d.resolve()) == [
        ("create", new, -1, "0o644", True),
        ("write", -1, 0, b"abc", "append"),
        ("write", -1, 3, b"de", "append"),
        ("unlink", "a b"),
        ("write", a_b, 0, b"z", "append"),
        ("fsync", a_b),
        ("output", b"ok"),
    ]
    assert [op.call.index for op in rec.operations] == [1, 2, 3, 7, 8, 9, 10]
    assert rec.calls == 11 and rec.status == 0 and rec.stdout == b"ok"
    assert rec.operations[0].call.text == 'openat(AT_FDCWD, "new\\n\\"q\\"\\303\\251", 0x241, 0666)'
    assert rec.operations[0].call.pid == 100


# ---- real programs ---------------------------------------------------------------


def test_git_commit_parses_into_plausible_operations(tmp_path: Path) -> None:
    require_tools("git")
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}
    script = (
        "git init -q -b main && echo hello > f && git add f && "
        "git -c user.name=a -c user.email=a@b -c core.fsync=all commit -qm first"
    )
    rec, d, _ = run(tmp_path, "", argv=["/bin/sh", "-c", script], env=env)
    assert rec.status == 0 and rec.refused == []
    shown = show(rec, d)
    assert ("rename", ".git/index.lock", ".git/index", False) in shown
    assert ("rename", ".git/refs/heads/main.lock", ".git/refs/heads/main", False) in shown
    objects = [s for s in shown if s[0] == "create" and str(s[1]).startswith(".git/objects/")]
    assert len(objects) >= 3  # blob, tree, commit (each a temporary object, then linked)
    assert sum(1 for s in shown if s[0] == "fsync") >= 3


def test_sqlite_transaction_parses_into_journal_operations(tmp_path: Path) -> None:
    require_tools("sqlite3")
    sql = (
        "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL;"
        "CREATE TABLE t(x); BEGIN; INSERT INTO t VALUES (1), (2); COMMIT;"
    )
    rec, d, _ = run(tmp_path, "", {"db": b""}, argv=["sqlite3", "db", sql])
    assert rec.status == 0 and rec.refused == []
    assert rec.stdout == b"delete\n"
    shown = show(rec, d)
    journal = [s for s in shown if s[0] == "create" and s[1] == "db-journal"]
    assert len(journal) >= 1
    inode = journal[0][2]
    assert any(s[:2] == ("write", inode) for s in shown)
    assert ("fdatasync", inode) in shown or ("fsync", inode) in shown
    assert ("unlink", "db-journal") in shown
    # sqlite3's stdout is a pipe, buffered: "delete" is written at its exit, and sits there
    assert shown[-1] == ("output", b"delete\n")
    # WAL mode maps db-shm shared and writable: refused, unless ignored (it is rebuilt)
    wal = ["sqlite3", "db", "PRAGMA journal_mode=WAL; INSERT INTO t VALUES (3);"]
    rec2, d2, _ = run(tmp_path / "wal", "", {"db": (d / "db").read_bytes()}, argv=wal)
    assert len(rec2.refused) == 1 and rec2.refused[0].startswith(f"{d2 / 'db-shm'} is mapped")
    rec3, _, _ = run(tmp_path / "wal2", "", {"db": (d / "db").read_bytes()}, argv=wal,
                     ignore_mmap=["*-shm"])  # fmt: skip
    assert rec3.refused == [] and rec3.stdout == b"wal\n"


def test_awkward_names_are_read_back_exactly(tmp_path: Path) -> None:
    name = 'a>b<c\n"\u00e9\\ ,)'
    rec, d, _ = run(
        tmp_path,
        f"""
        import os
        fd = os.open({name!r}, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"x")
        os.fsync(fd)
        os.rename({name!r}, "plain")
        """,
    )
    assert show(rec, d) == [
        ("create", name, -1, "0o644", True),
        ("write", -1, 0, b"x", "append"),
        ("fsync", -1),
        ("rename", name, "plain", False),
    ]


def test_names_moved_or_linked_across_the_roots_edge(tmp_path: Path) -> None:
    """What comes in from outside is read whole; what leaves is removed."""
    out = tmp_path / "out"
    (out / "indir" / "deeper").mkdir(parents=True)
    (out / "in1").write_bytes(b"from outside")
    (out / "in2").write_bytes(b"linked in")
    (out / "indir" / "x").write_bytes(b"x inside")
    os.symlink("x", out / "indir" / "deeper" / "s")
    os.chmod(out / "indir", 0o700)
    rec, d, _ = run(
        tmp_path,
        f"""
        import os
        out = {str(out)!r}
        os.rename(out + "/in1", "moved_in")
        os.rename(out + "/indir", "dir_in")
        os.link(out + "/in2", "linked_in")
        os.rename("local", out + "/gone")
        os.mkdir("ldir")
        os.rename("ldir", out + "/gonedir")
        here = os.open(".", os.O_RDONLY)
        os.symlink("moved_in", "sl", dir_fd=here)
        os.mkfifo("fifo")  # holds no data: no operation
        os.unlink("fifo")
        os.close(os.open("new", os.O_CREAT | os.O_WRONLY, 0o644))
        os.chmod("new", 0o600, dir_fd=here)
        """,
        {"local": b"local"},
    )
    assert show(rec, d) == [
        ("create", "moved_in", -1, "0o644", True),
        ("write", -1, 0, b"from outside", "append"),
        ("mkdir", "dir_in", -2, "0o700"),
        ("mkdir", "dir_in/deeper", -3, "0o755"),
        ("symlink", "dir_in/deeper/s", "x"),
        ("create", "dir_in/x", -5, "0o644", True),
        ("write", -5, 0, b"x inside", "append"),
        ("create", "linked_in", -6, "0o644", True),
        ("write", -6, 0, b"linked in", "append"),
        ("unlink", "local"),
        ("mkdir", "ldir", -7, "0o755"),
        ("rmdir", "ldir"),
        ("symlink", "sl", "moved_in"),
        ("unlink", "fifo"),
        ("create", "new", -9, "0o644", True),
        ("chmod", -9, "0o600"),
    ]


def test_fds_opened_and_closed_every_way(tmp_path: Path) -> None:
    rec, d, _ = run(
        tmp_path,
        LIBC
        + """
import struct
libc.syscall.restype = ctypes.c_long
a = libc.syscall(85, b"creat", 0o644)  # creat(2)
os.write(a, b"c")
b = libc.syscall(2, b"open", os.O_CREAT | os.O_WRONLY, 0o600)  # open(2)
os.write(b, b"o")
how = struct.pack("QQQ", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o640, 0)
c = libc.syscall(437, -100, b"openat2", how, len(how))  # openat2(2)
os.write(c, b"2")
os.dup2(a, 30, inheritable=False)  # dup3
os.write(30, b"3")
e = libc.dup(b)
os.write(e, b"d")
os.closerange(30, 31)  # close_range
os.write(a, b"a")
class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_char_p), ("len", ctypes.c_size_t)]
iov = Iovec(b"PQ", 2)
assert libc.syscall(296, a, ctypes.byref(iov), 1, ctypes.c_long(7), ctypes.c_long(0)) == 2
os.set_inheritable(b, True)
os.execv("/bin/sh", ["sh", "-c", f"echo x >&{b}; echo y >&{e} || true"])
""",
    )
    assert [s for s in show(rec, d) if s[0] != "output"] == [
        ("create", "creat", -1, "0o644", True),
        ("write", -1, 0, b"c", "append"),
        ("create", "open", -2, "0o600", True),
        ("write", -2, 0, b"o", "append"),
        ("create", "openat2", -3, "0o640", True),
        ("write", -3, 0, b"2", "append"),
        ("write", -1, 1, b"3", "append"),
        ("write", -2, 1, b"d", "append"),
        ("write", -1, 2, b"a", "append"),
        ("write", -1, 7, b"PQ", "append"),  # pwritev(2), past the end
        ("write", -2, 2, b"x\n", "append"),  # inherited across execve, offset kept
        ("write", -2, 4, b"y\n", "append"),  # dup(2) makes no close-on-exec fd
    ]


def test_what_a_trace_cannot_show_is_refused(tmp_path: Path) -> None:
    rec, _, _ = run(
        tmp_path,
        LIBC
        + """
fall = libc.fallocate
fall.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
fd = os.open("f", os.O_RDWR)
assert fall(fd, 8, 0, 4096) == 0, os.strerror(ctypes.get_errno())  # COLLAPSE_RANGE
assert libc.renameat2(-100, b"f", -100, b"g", 4) == 0, os.strerror(ctypes.get_errno())
""",
        {"f": b"a" * 4096 + b"b" * 4096},
        exact=False,
    )
    assert len(rec.refused) == 2
    assert re.match(
        r"call \d+ \(fallocate\(3<[^>]+>, 0x8, 0, 4096\)\) shifts data in ", rec.refused[0]
    )
    assert rec.refused[1].endswith("RENAME_WHITEOUT")


def test_parse_refuses_writes_without_their_data(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    snapshot = take_snapshot([str(d)], str(tmp_path / "snapshot"))
    root = snapshot.roots[0]
    lines = [
        f'7 openat(-100<{root}>, "f", 0x41, 0644) = 3<{root}/f>\n',
        f'7 write(3<{root}/f>, ""..., 4) = 4\n',
        '7 write(4<pipe:[9]>, ""..., 4) = 4\n',  # to a pipe: its data does not matter
        f"7 copy_file_range(5</nowhere/x>, NULL, 3<{root}/f>, NULL, 2, 0) = 2\n",
        "7 +++ exited with 0 +++\n",
    ]
    rec = parse(lines, snapshot, cwd=root)
    assert show(rec, Path(root)) == [
        ("create", "f", -1, "0o644", True),
        ("write", -1, 0, bytes(4), "append"),
        ("write", -1, 4, bytes(2), "append"),
    ]
    assert rec.refused == [
        f"the trace lacks the data of call 2 (write(3<{root}/f>, ..., 4)): record with strace "
        "-e write=all",
        f"the content call 4 (copy_file_range(5</nowhere/x>, NULL, 3<{root}/f>, NULL, 2, 0)) "
        "copied is unknown",
    ]


def test_coreutils_replay_to_what_they_left(tmp_path: Path) -> None:
    """sed -i and cp -a set the mode through an ACL xattr, read when the trace is parsed."""
    script = (
        "sed -i s/a/z/ f && cp -a f g && install -m 600 f h && ln -s h i && mv i j && "
        "truncate -s 1 g && dd if=/dev/zero of=z bs=4k count=3 conv=fsync status=none && "
        "tar cf t.tar f g && mkdir x && cd x && tar xf ../t.tar && rm -r ../x"
    )
    rec, d, _ = run(tmp_path, "", {"f": b"a\nb\n"}, argv=["/bin/sh", "-c", script])
    assert rec.status == 0 and rec.refused == []
    shown = show(rec, d)
    created = rec.operations[0]
    assert isinstance(created, Create) and created.mode == 0o600  # sed's temporary file
    assert shown[1] == ("chmod", -1, "0o644")  # given f's mode through the ACL xattr
    assert ("rename", shown[0][1], "f", False) in shown
    assert [s for s in shown if s[0] == "chmod" and s[1] == -3] == [("chmod", -3, "0o600")] * 2
    assert sum(1 for s in shown if s[0] == "fsync") >= 1  # dd conv=fsync


def test_data_spliced_from_a_pipe_is_refused(tmp_path: Path) -> None:
    rec, d, _ = run(
        tmp_path,
        """
        import os
        r, w = os.pipe()
        src = os.open("src", os.O_RDONLY)
        os.splice(src, w, 3)  # a file into a pipe: moves src's offset only
        dst = os.open("dst", os.O_CREAT | os.O_WRONLY, 0o644)
        os.splice(r, dst, 3)
        os.sendfile(dst, src, None, 2)
        """,
        {"src": b"abcdef"},
        exact=False,
    )
    assert len(rec.refused) == 1 and rec.refused[0].endswith(f"into {d / 'dst'}")
    assert show(rec, d)[-1] == ("write", -1, 3, b"de", "append")


def test_strace_quirks_in_arguments_and_lines(tmp_path: Path) -> None:
    assert int_arg("0644") == 0o644 and int_arg("0x1|0x40") == 0x41 and int_arg("-100") == -100
    assert int_arg("[10] => [13]") == 10 and int_arg("NULL") is None and int_arg("0") == 0
    assert str_arg('"a\\x41\\101\\t\\\\"') == "aAA\t\\"
    assert str_arg('""...') is None and str_arg("0x1") is None
    fd = fd_arg("3</a/b\\76c>(deleted)")
    assert fd == Fd(3, "/a/b>c", True) and fd_arg("0x7f") is None and fd_arg("3x") is None
    d = tmp_path / "d"
    d.mkdir()
    snapshot = take_snapshot([str(d)], str(tmp_path / "snapshot"))
    root = snapshot.roots[0]
    lines = [
        "strace: Process 5 attached\n",
        "5 <... write resumed>) = 1\n",  # its first half came before the trace began
        "5 getpid(\n",  # cut short: no result
        "5 weird line\n",
        f'5 openat(-100<{root}>, "f", 0x41, 0644) = 3<{root}/f>\n',
        f'5 write(3<{root}/f>, ""..., 2) = 2\n',
        " | 00000  68 69                                             hi               |\n",
    ]
    rec = parse(lines, snapshot, cwd=root)
    assert show(rec, Path(root)) == [
        ("create", "f", -1, "0o644", True),
        ("write", -1, 0, b"hi", "append"),
    ]
    assert rec.calls == 2


def test_parse_reads_a_trace_without_pids(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    snapshot = take_snapshot([str(d)], str(tmp_path / "snapshot"))
    root = snapshot.roots[0]
    lines = [
        f'openat(-100<{root}>, "f", 0x41, 0644) = 3<{root}/f>\n',
        f'write(3<{root}/f>, ""..., 1) = 1\n',
        " | 00000  7a                                                z                |\n",
        "+++ exited with 4 +++\n",
    ]
    rec = parse(lines, snapshot, cwd=root)
    assert show(rec, Path(root)) == [
        ("create", "f", -1, "0o644", True),
        ("write", -1, 0, b"z", "append"),
    ]
    assert rec.status == 4 and rec.operations[0].call.pid == 0


def test_a_missing_working_directory_raises_and_leaks_no_fd(tmp_path: Path) -> None:
    require_tools("strace")
    snapshot = take_snapshot([str(tmp_path)], str(tmp_path.parent / f"{tmp_path.name}-snap"))
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(FileNotFoundError):
        record(["true"], snapshot, cwd=str(tmp_path / "nowhere"))
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_shared_map_made_writable_later_is_refused(tmp_path: Path) -> None:
    rec, d, _ = run(
        tmp_path,
        LIBC
        + """
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mprotect.argtypes += [ctypes.c_int]
fd = os.open("later", os.O_RDWR)
at = libc.mmap(None, 4096, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED: fine so far
assert libc.mprotect(at, 4096, 3) == 0  # now writable
gone = os.open("gone", os.O_RDWR)
at = libc.mmap(None, 4096, 1, 1, gone, 0)
assert libc.munmap(at, 4096) == 0
anon = libc.mmap(at, 4096, 3, 0x32, -1, 0)  # anonymous, MAP_FIXED where it was
assert libc.mprotect(anon, 4096, 1) == 0 and libc.mprotect(anon, 4096, 3) == 0
""",
        {"later": bytes(4096), "gone": bytes(4096)},
    )
    assert len(rec.refused) == 1 and rec.refused[0].startswith(f"{d / 'later'} is mapped")
