"""Errors at every step of the protocol, produced for real.

The promise under test (docs/contract.md, "Nothing lost on error"): every failure
before the rename raises the original OSError (errno intact), leaves the target
exactly as it was (old bytes, old mode) and leaves no temporary file; a failure
of the directory fsync after the rename raises NotDurableError (an OSError) with
the new content in place; fsync is never retried after an error.

Every errno here comes from a real condition (a full tmpfs or loop filesystem,
a read-only remount, a bind mount, an immutable inode, a file-size rlimit, an
unprivileged user) or from strace's syscall fault injection into an unmodified
child process. Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import crashsafe
from crashsafe import NotDurableError, atomic_open, atomic_write, write_file_atomic
from tests.children import NOBODY, nobody_python
from tests.children import start as start_child
from tests.harness.capabilities import capabilities
from tests.harness.checks import entries, read
from tests.harness.inject import fault, run_python, run_traced
from tests.harness.mounts import loop_mount, remount, run, tmpfs
from tests.harness.require import require_root, require_tools

OLD = b"old content, complete\n"
OLD_MODE = 0o640
NEW = b"new content, complete\n"
BIG = b"x" * (1 << 20)  # 1 MiB: more than the small filesystems below can hold
APIS = ["write_file_atomic", "atomic_write", "atomic_open"]

# ---------------------------------------------------------------------------
# helpers


def make_target(directory: Path, name: str = "target") -> Path:
    """An existing file with known bytes and a known, non-default mode."""
    target = directory / name
    target.write_bytes(OLD)
    os.chmod(target, OLD_MODE)
    return target


def assert_unchanged(target: Path) -> None:
    st = os.lstat(target)
    assert stat.S_ISREG(st.st_mode), f"{target} is no longer a regular file"
    assert read(target) == OLD, f"{target} changed: {read(target)[:40]!r}"
    mode = stat.S_IMODE(st.st_mode)
    if mode != OLD_MODE:  # where modes are not kept (exFAT, ntfs-3g): the mode every file shows
        assert mode == capabilities(target.parent).mode_shown(OLD_MODE), (
            f"{target} mode is {mode:o}"
        )


def assert_only(directory: Path, *names: str) -> None:
    """The directory holds exactly *names*: no temporary file, no probe, nothing else."""
    assert entries(directory) == sorted(names), f"{directory} holds {entries(directory)}"


def write_with(api: str, target: Path, data: bytes) -> None:
    """Replace *target* with *data* through one public API.

    write_file_atomic asks for mode 0o600, so a library that touched the
    target in place before failing would show it in the mode.
    """
    if api == "write_file_atomic":
        write_file_atomic(target.parent, target.name, data, 0o600)
    elif api == "atomic_write":
        atomic_write(target, data)
    else:
        with atomic_open(target, "wb") as f:
            for start in range(0, len(data), 64 << 10):
                f.write(data[start : start + (64 << 10)])


# The same three calls, as code for a child process (argv[1] is the target).
CHILD_WRITE = {
    "write_file_atomic": (
        "write_file_atomic(os.path.dirname(sys.argv[1]), os.path.basename(sys.argv[1]), "
        "DATA, 0o600)"
    ),
    "atomic_write": "atomic_write(sys.argv[1], DATA)",
    "atomic_open": (
        "with atomic_open(sys.argv[1], 'wb') as f:\n"
        "            for i in range(0, len(DATA), 65536):\n"
        "                f.write(DATA[i:i + 65536])"
    ),
}


def child_write(api: str, data: str = "b'new content, complete\\n'") -> str:
    """Child code: one write through *api*, reported as JSON."""
    return f"""
    DATA = {data}
    def go():
        {CHILD_WRITE[api]}
    report(**attempt(go))
    """


def free_blocks(path: Path) -> int:
    return os.statvfs(path).f_bfree


_counter = itertools.count()


@pytest.fixture(scope="module")
def ext4_mnt() -> Iterator[Path]:
    """One small loop ext4 for this module (chattr and remount need a real one)."""
    require_tools("chattr", "mkfs.ext4")
    with loop_mount("ext4", size_mb=32) as mnt:
        yield mnt


@pytest.fixture
def loopdir(ext4_mnt: Path) -> Iterator[Path]:
    """A fresh directory on the loop ext4; removed (and checked) afterwards."""
    d = ext4_mnt / f"case{next(_counter)}"
    d.mkdir()
    yield d
    shutil.rmtree(d)


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    run("chattr", "+i", str(path))
    try:
        yield
    finally:
        run("chattr", "-i", str(path))


@contextlib.contextmanager
def read_only(mnt: Path) -> Iterator[None]:
    remount(mnt, "ro")
    try:
        yield
    finally:
        remount(mnt, "rw")


# ---------------------------------------------------------------------------
# ENOSPC: real full filesystems


@pytest.mark.parametrize("api", APIS)
def test_enospc_on_full_tmpfs_leaves_target_and_no_temp(api: str, staging: str) -> None:
    with tmpfs(size_kb=256) as mnt:
        target = make_target(mnt)
        before = free_blocks(mnt)
        with pytest.raises(OSError) as info:
            write_with(api, target, BIG)
        assert info.value.errno == errno.ENOSPC, info.value
        assert not isinstance(info.value, NotDurableError)
        assert_unchanged(target)
        assert_only(mnt, "target")
        assert free_blocks(mnt) == before, "the staged data still holds space"


def _fill(mnt: Path) -> None:
    """Fill *mnt* with real data: fallocate most of it, then dd until ENOSPC."""
    st = os.statvfs(mnt)
    bulk = st.f_bavail * st.f_frsize - (4 << 20)
    if bulk > 0:
        run("fallocate", "-l", str(bulk), str(mnt / "bulk"))
    done = subprocess.run(
        ["dd", "if=/dev/zero", f"of={mnt / 'fill'}", "bs=64k"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "No space left on device" in done.stderr, done.stderr
    os.sync()


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_enospc_on_full_loop_filesystem_leaves_target_and_no_temp(
    fstype: str, staging: str
) -> None:
    require_tools("dd", "fallocate")
    with loop_mount(fstype, size_mb=300 if fstype == "xfs" else 16) as mnt:
        work = mnt / "work"
        work.mkdir()
        target = make_target(work)
        _fill(mnt)
        before = free_blocks(mnt)
        for api in APIS:
            with pytest.raises(OSError) as info:
                write_with(api, target, BIG)
            assert info.value.errno == errno.ENOSPC, (api, info.value)
            assert_unchanged(target)
            assert_only(work, "target")
        os.sync()
        assert free_blocks(mnt) >= before, "failed writes leaked space"


# ---------------------------------------------------------------------------
# EROFS: a read-only remount


@pytest.mark.parametrize("api", APIS)
def test_erofs_leaves_target_and_no_temp(api: str, staging: str, ext4_mnt: Path) -> None:
    work = ext4_mnt / f"case{next(_counter)}"
    work.mkdir()
    target = make_target(work)
    try:
        with read_only(ext4_mnt):
            with pytest.raises(OSError) as info:
                write_with(api, target, NEW)
            assert info.value.errno == errno.EROFS, info.value
            assert_unchanged(target)
            assert_only(work, "target")
        assert_only(work, "target")
    finally:
        shutil.rmtree(work)


@pytest.mark.parametrize("cause", ["erofs", "immutable-dir"])
def test_error_before_rename_names_the_target_or_its_directory(
    cause: str, staging: str, ext4_mnt: Path
) -> None:
    """The OSError's filename must point at something the caller knows.

    A name relative to the library's private directory descriptor (".", or
    the random temporary name) read from the caller's working directory
    names the wrong file; the CLI prints it as "crashsafe: .: ...".
    """
    work = ext4_mnt / f"case{next(_counter)}"
    work.mkdir()
    target = make_target(work)
    ctx = read_only(ext4_mnt) if cause == "erofs" else immutable(work)
    try:
        with ctx, pytest.raises(OSError) as info:
            atomic_write(target, NEW)
        assert info.value.errno in (errno.EROFS, errno.EPERM)
        name = info.value.filename
        sensible = {str(target), str(work)}
        assert name is None or os.path.abspath(name) in sensible, (
            f"filename {name!r} (from cwd {os.getcwd()!r}) names neither {target} nor {work}"
        )
    finally:
        shutil.rmtree(work)


# ---------------------------------------------------------------------------
# EXDEV: crashsafe must not hit it where naive code does


def test_symlink_into_other_filesystem_is_written_through_without_exdev(
    workdir: Path, staging: str
) -> None:
    with tmpfs(size_kb=1024) as mnt:
        real = make_target(mnt, "real")
        link = workdir / "link"
        link.symlink_to(real)
        # Control: the naive "temp next to the path, rename onto the file" fails here.
        naive = workdir / "naive.tmp"
        naive.write_bytes(NEW)
        with pytest.raises(OSError) as info:
            os.rename(naive, real)
        assert info.value.errno == errno.EXDEV
        naive.unlink()

        atomic_write(link, NEW)
        assert link.is_symlink() and os.readlink(link) == str(real)
        assert read(real) == NEW
        assert stat.S_IMODE(os.stat(real).st_mode) == OLD_MODE
        with atomic_open(link, "ab") as f:
            f.write(b"more\n")
        assert read(real) == NEW + b"more\n"
        assert link.is_symlink()
        assert_only(mnt, "real")
        assert_only(workdir, "link")


def test_write_file_atomic_replaces_a_cross_filesystem_link_itself(
    workdir: Path, staging: str
) -> None:
    with tmpfs(size_kb=1024) as mnt:
        real = make_target(mnt, "real")
        link = workdir / "link"
        link.symlink_to(real)
        write_file_atomic(workdir, "link", NEW, 0o600)
        assert not link.is_symlink()
        assert read(link) == NEW
        assert_unchanged(real)
        assert_only(mnt, "real")
        assert_only(workdir, "link")


def test_rename_onto_bind_mounted_file_raises_and_leaves_it(workdir: Path, staging: str) -> None:
    require_root()
    with tmpfs(size_kb=1024) as mnt:
        source = make_target(mnt, "source")
        target = make_target(workdir)
        run("mount", "--bind", str(source), str(target))
        try:
            for api in APIS:
                with pytest.raises(OSError) as info:
                    write_with(api, target, NEW)
                assert info.value.errno in (errno.EBUSY, errno.EXDEV), (api, info.value)
                assert not isinstance(info.value, NotDurableError)
                assert_unchanged(target)  # what readers see: the bind-mounted file
                assert_unchanged(source)
                assert_only(workdir, "target")
                assert_only(mnt, "source")
        finally:
            run("umount", str(target))
        assert_unchanged(target)  # the file under the mount point, too


# ---------------------------------------------------------------------------
# EACCES, ENOENT: no permission, no directory


@pytest.mark.parametrize("api", APIS)
def test_eacces_unprivileged_writer_gets_permission_error_and_creates_nothing(
    api: str, staging: str
) -> None:
    python, src = nobody_python()
    base = Path(tempfile.mkdtemp(prefix="crashsafe-eacces-"))
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o755)
        target = make_target(locked)
        target.chmod(0o644)
        for name in ("target", "fresh"):
            child = run_python(
                child_write(api),
                str(locked / name),
                staging=staging,
                wrapper=NOBODY,
                python=python,
                env={"PYTHONPATH": src},
            )
            result = child.result
            assert result["raised"] == "PermissionError", (name, result, child.stderr)
            assert result["errno"] == errno.EACCES
            # The directory it may not write, and no "-> None" for a second name.
            assert result["filename"] == str(locked)
            assert result["message"] == f"[Errno 13] Permission denied: {str(locked)!r}"
            assert read(target) == OLD
            assert_only(locked, "target")
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("api", APIS)
def test_missing_directory_raises_file_not_found_and_creates_nothing(
    api: str, workdir: Path
) -> None:
    target = workdir / "missing" / "target"
    with pytest.raises(FileNotFoundError) as info:
        write_with(api, target, NEW)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(workdir / "missing")
    assert_only(workdir)


PROC_APIS = [*APIS, "atomic_copy"]


@pytest.mark.parametrize("api", PROC_APIS)
def test_a_filesystem_that_allows_no_new_files_is_named_with_the_users_path(
    api: str, staging: str, workdir: Path
) -> None:
    """procfs answers ENOENT to creating a file in /proc, which exists: the error
    names the user's path and says why, not "/proc: No such file or directory"."""
    target = Path("/proc/crashsafe-no-such-entry")
    with pytest.raises(FileNotFoundError) as info:
        if api == "atomic_copy":
            (workdir / "src").write_bytes(NEW)
            crashsafe.atomic_copy(workdir / "src", target)
        else:
            write_with(api, target, NEW)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(target)
    assert str(info.value) == (
        f"[Errno 2] cannot create a file in '/proc': its filesystem allows no new files: '{target}'"
    )
    assert not target.exists()


def test_cli_copy_into_proc_names_the_users_path(workdir: Path) -> None:
    (workdir / "src").write_bytes(NEW)
    done = _cli("copy", str(workdir / "src"), "/proc/x")
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        "crashsafe: /proc/x: cannot create a file in '/proc': its filesystem allows no new "
        "files; nothing was changed\n"
    )


@pytest.mark.parametrize("mode", ["wb", "w", "ab", "a"])
def test_an_error_that_is_no_syscalls_keeps_its_own_message(
    mode: str, staging: str, workdir: Path
) -> None:
    """io.UnsupportedOperation is an OSError without an errno: given a filename it
    would print "[Errno None] None: 'path'"."""
    target = make_target(workdir)
    with pytest.raises(io.UnsupportedOperation) as info, atomic_open(target, mode) as f:
        f.read()
    message = str(info.value)
    assert "Errno" not in message and "None" not in message, message
    assert message in ("read", "not readable", "File not open for reading")
    assert info.value.filename is None
    assert read(target) == OLD
    assert_only(workdir, "target")


def test_a_validators_error_without_errno_keeps_its_message_and_a_real_one_is_named(
    staging: str, workdir: Path
) -> None:
    target = make_target(workdir)

    def message_only(f: object) -> None:
        raise OSError("the staged content is not what the caller expected")

    def real(f: object) -> None:
        os.read(-1, 1)  # EBADF, from the kernel

    with pytest.raises(OSError) as info:
        atomic_write(target, NEW, validate=message_only)
    assert str(info.value) == "the staged content is not what the caller expected"
    assert info.value.filename is None
    with pytest.raises(OSError) as info:
        atomic_write(target, NEW, validate=real)
    assert (info.value.errno, info.value.filename) == (errno.EBADF, str(target))
    assert read(target) == OLD
    assert_only(workdir, "target")


# ---------------------------------------------------------------------------
# EPERM: immutable directory, immutable target (applies to root too)


@pytest.mark.parametrize("api", APIS)
def test_immutable_directory_raises_eperm_and_leaves_nothing(
    api: str, staging: str, loopdir: Path
) -> None:
    target = make_target(loopdir)
    with immutable(loopdir):
        with pytest.raises(PermissionError) as info:
            write_with(api, target, NEW)
        assert info.value.errno == errno.EPERM
        assert_unchanged(target)
        assert_only(loopdir, "target")


@pytest.mark.parametrize("api", APIS)
def test_rename_over_immutable_target_raises_eperm_and_leaves_it(
    api: str, staging: str, loopdir: Path
) -> None:
    target = make_target(loopdir)
    with immutable(target):
        with pytest.raises(PermissionError) as info:
            write_with(api, target, NEW)
        assert info.value.errno == errno.EPERM
        # The rename names two files; the error names the target alone.
        assert str(info.value) == f"[Errno 1] Operation not permitted: {str(target)!r}"
        assert info.value.filename2 is None
        assert_unchanged(target)
        assert_only(loopdir, "target")
    assert_unchanged(target)


# ---------------------------------------------------------------------------
# EFBIG: a file-size rlimit (a real short write, then EFBIG)


@pytest.mark.parametrize("api", APIS)
def test_efbig_under_file_size_limit_leaves_target_and_no_temp(
    api: str, staging: str, workdir: Path
) -> None:
    require_tools("prlimit")
    target = make_target(workdir)
    code = """
    import resource, signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    LIMIT = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    """ + child_write(api, "b'x' * (1 << 20)").replace(
        "report(**attempt(go))", "report(limit=LIMIT, **attempt(go))"
    )
    child = run_python(
        code, str(target), staging=staging, wrapper=["prlimit", "--fsize=65536", "--"]
    )
    result = child.result
    assert result["limit"] == 65536
    assert result["raised"] == "OSError", (result, child.stderr)
    assert result["errno"] == errno.EFBIG
    assert_unchanged(target)
    assert_only(workdir, "target")


# ---------------------------------------------------------------------------
# Injected errors (strace): fsync


@pytest.mark.parametrize("api", APIS)
def test_eio_on_file_fsync_raises_once_and_leaves_target(
    api: str, staging: str, workdir: Path
) -> None:
    target = make_target(workdir)
    child = run_traced(
        child_write(api),
        str(target),
        trace=["fsync", "fdatasync"],
        inject=[fault("fsync", error="EIO", when=1)],
        staging=staging,
    )
    result = child.result
    assert result["raised"] == "OSError", (result, child.stderr)
    assert result["errno"] == errno.EIO
    assert child.count("fsync") == 1, f"fsync retried or the directory synced: {child.log}"
    assert child.count("fdatasync") == 0
    assert str(workdir) in child.injected()[0], "the failed fsync was not the staged file's"
    assert_unchanged(target)
    assert_only(workdir, "target")


def test_failed_commit_is_final_and_the_next_write_succeeds(staging: str, workdir: Path) -> None:
    target = make_target(workdir)
    code = """
    path = sys.argv[1]
    staged = AtomicFile(path)
    staged.file.write(b"lost\\n")
    first = attempt(staged.commit)
    after_first = open(path, "rb").read().decode()
    again = attempt(staged.commit)
    second_write = attempt(atomic_write, path, b"new content, complete\\n")
    report(first=first, after_first=after_first, again=again, second_write=second_write)
    """
    child = run_traced(
        code,
        str(target),
        trace=["fsync", "fdatasync"],
        inject=[fault("fsync", error="EIO", when=1)],
        staging=staging,
    )
    result = child.result
    assert result["first"]["raised"] == "OSError", (result, child.stderr)
    assert result["first"]["errno"] == errno.EIO
    assert result["after_first"] == OLD.decode()
    assert result["again"]["raised"] == "ValueError", result["again"]
    assert result["second_write"] == {"raised": None}
    # 1 failed fsync, then the fresh write's file and directory: never a retry.
    assert child.count("fsync") == 3, child.log
    assert len(child.injected()) == 1
    assert read(target) == NEW
    assert stat.S_IMODE(os.stat(target).st_mode) == OLD_MODE
    assert_only(workdir, "target")


@pytest.mark.parametrize("api", APIS)
def test_eio_on_directory_fsync_raises_not_durable_with_new_content(
    api: str, staging: str, workdir: Path
) -> None:
    target = make_target(workdir)
    child = run_traced(
        child_write(api),
        str(target),
        trace=["fsync"],
        inject=[fault("fsync", error="EIO", when=2)],
        staging=staging,
    )
    result = child.result
    assert result["raised"] == "NotDurableError", (result, child.stderr)
    assert result["oserror"] is True
    assert result["errno"] == errno.EIO
    assert result["cause_errno"] == errno.EIO
    assert result["filename"] == str(target)
    assert "power cut" in result["message"]
    assert child.count("fsync") == 2, child.log
    assert f"{workdir}>" in child.injected()[0], "the failed fsync was not the directory's"
    assert read(target) == NEW
    assert_only(workdir, "target")


def test_eio_on_directory_fsync_of_created_file_raises_not_durable(
    staging: str, workdir: Path
) -> None:
    """Create-only publishes by link (then unlink of the temp); the same rule holds."""
    target = workdir / "fresh"
    child = run_traced(
        "report(**attempt(atomic_write, sys.argv[1], b'new', overwrite=False))",
        str(target),
        trace=["fsync"],
        inject=[fault("fsync", error="EIO", when=2)],
        staging=staging,
    )
    result = child.result
    assert result["raised"] == "NotDurableError", (result, child.stderr)
    assert result["errno"] == errno.EIO
    assert result["filename"] == str(target)
    assert child.count("fsync") == 2, child.log
    assert read(target) == b"new"
    assert_only(workdir, "fresh")


def test_cli_exits_3_when_directory_fsync_fails(staging: str, workdir: Path) -> None:
    target = make_target(workdir)
    child = run_traced(
        "from crashsafe.cli import main\nsys.exit(main(sys.argv[1:]))",
        "write",
        str(target),
        trace=["fsync"],
        inject=[fault("fsync", error="EIO", when=2)],
        staging=staging,
        stdin=NEW,
    )
    assert child.returncode == 3, child.stderr
    assert "replaced" in child.stderr
    assert "power cut" in child.stderr
    assert read(target) == NEW
    assert_only(workdir, "target")


@pytest.mark.parametrize("errname", ["EINVAL", "EOPNOTSUPP"])
def test_directory_fsync_unsupported_counts_as_no_directory_durability(
    errname: str, staging: str, workdir: Path
) -> None:
    target = make_target(workdir)
    child = run_traced(
        child_write("atomic_write"),
        str(target),
        trace=["fsync"],
        inject=[fault("fsync", error=errname, when=2)],
        staging=staging,
    )
    assert child.result == {"raised": None}, child.stderr
    assert child.count("fsync") == 2
    assert errname in child.injected()[0]
    assert read(target) == NEW
    assert_only(workdir, "target")


@pytest.mark.parametrize(("durability", "fsyncs"), [("none", 0), ("consistent", 1), ("durable", 2)])
def test_fsync_calls_match_durability(
    durability: str, fsyncs: int, staging: str, workdir: Path
) -> None:
    target = make_target(workdir)
    code = f"report(**attempt(atomic_write, sys.argv[1], b'new', durability={durability!r}))"
    child = run_traced(code, str(target), trace=["fsync", "fdatasync", "sync", "syncfs"])
    assert child.result == {"raised": None}, child.stderr
    assert child.count("fsync") == fsyncs, child.log
    assert len(child.log) == fsyncs, child.log
    if fsyncs:
        assert str(workdir) in child.calls("fsync")[0]
    if fsyncs == 2:
        assert child.calls("fsync")[1].split("<", 1)[1].startswith(f"{workdir}>")
    assert read(target) == b"new"
    assert_only(workdir, "target")


# ---------------------------------------------------------------------------
# Injected errors (strace): write, openat, rename


INJECTED_BEFORE_RENAME = {
    # case: (traced syscalls, inject, -P the directory, errno)
    "write-enospc": (["write", "pwrite64", "writev"], "write:error=ENOSPC:when=1", False, "ENOSPC"),
    "open-directory-emfile": (["openat", "open"], "openat:error=EMFILE:when=1", True, "EMFILE"),
    "open-temp-emfile": (["openat", "open"], "openat:error=EMFILE:when=2", True, "EMFILE"),
    "rename-exdev": (
        ["rename", "renameat", "renameat2"],
        "rename,renameat,renameat2:error=EXDEV:when=1",
        False,
        "EXDEV",
    ),
    "fchmod-eio": (["fchmod"], "fchmod:error=EIO:when=1", False, "EIO"),
}


@pytest.mark.parametrize("case", sorted(INJECTED_BEFORE_RENAME))
@pytest.mark.parametrize("api", APIS)
def test_injected_error_before_rename_leaves_target_and_no_temp(
    case: str, api: str, staging: str, workdir: Path
) -> None:
    trace, spec, by_path, errname = INJECTED_BEFORE_RENAME[case]
    target = make_target(workdir)
    code = textwrap.dedent(child_write(api))
    if case == "fchmod-eio":
        # An O_TMPFILE file is created with its final mode and chmod is only
        # called when the umask took bits away: take some, so that it is.
        code = "os.umask(0o277)\n" + code
    child = run_traced(
        code,
        str(target),
        trace=trace,
        inject=[spec],
        paths=[workdir] if by_path else [],
        staging=staging,
    )
    result = child.result
    assert result["errno"] == getattr(errno, errname), (result, child.log, child.stderr)
    assert result["oserror"] is True
    assert result["raised"] != "NotDurableError"
    hit = child.injected()
    assert len(hit) == 1, child.log
    assert str(workdir) in hit[0], f"the injected call was not crashsafe's: {hit[0]}"
    assert_unchanged(target)
    assert_only(workdir, "target")


# ---------------------------------------------------------------------------
# KeyboardInterrupt from a real SIGINT at a syscall

INTERRUPTS = {
    # case: (inject, -P the directory, contents allowed afterwards)
    "file-fsync-eintr": ("fsync:error=EINTR:signal=INT:when=1", False, {OLD}),
    "after-file-fsync": ("fsync:signal=INT:when=1", False, {OLD, NEW}),
    "after-rename": ("rename,renameat,renameat2:signal=INT:when=1", False, {OLD, NEW}),
    "directory-fsync": ("fsync:signal=INT:when=2", False, {NEW}),
    "after-temp-created": ("openat:signal=INT:when=2", True, {OLD}),
    "after-temp-linked": ("linkat:signal=INT:when=1", False, {OLD, NEW}),
}


@pytest.mark.parametrize("case", list(INTERRUPTS))
def test_keyboard_interrupt_never_tears_and_leaves_no_temp(
    case: str, staging: str, tmp_path: Path
) -> None:
    # tmp_path, not workdir: a leftover fails this test once, not twice.
    workdir = tmp_path
    spec, by_path, allowed = INTERRUPTS[case]
    syscalls = spec.split(":", 1)[0].split(",")
    target = make_target(workdir)
    child = run_traced(
        child_write("atomic_write"),
        str(target),
        trace=syscalls,
        inject=[spec],
        paths=[workdir] if by_path else [],
        staging=staging,
    )
    if case == "after-temp-linked" and staging == "named":
        # linkat names only an O_TMPFILE file; the named path never calls it.
        assert child.count("linkat") == 0, child.log
        assert child.result == {"raised": None}
        assert read(target) == NEW
        return
    result = child.result
    assert result["raised"] == "KeyboardInterrupt", (result, child.stderr)
    assert read(target) in allowed
    assert stat.S_IMODE(os.stat(target).st_mode) == OLD_MODE
    assert_only(workdir, "target")


SIGNAL_STORM = """
import os, signal, sys, time
import crashsafe

class Hit(Exception):
    pass

armed = False

def handler(signum, frame):
    global armed
    if armed:  # at most one Hit per write, and only while a write runs
        armed = False
        raise Hit()

signal.signal(signal.SIGUSR1, handler)
target = os.path.join(sys.argv[1], "target")
from crashsafe._platform import _native
for _ in range(3):  # everything imported (ctypes too): the storm hits writes only
    crashsafe.atomic_write(target, b"warm-up", durability="none")
assert sorted(_native.probe()) == ([] if sys.argv[3] == "none" else [sys.argv[3]])
print("ready", flush=True)
hits = left_blocked = 0
# Until enough writes were interrupted, however long a busy machine takes: the
# parent signals until this process exits (pytest's timeout bounds a hang).
while hits < int(sys.argv[2]):
    if signal.pthread_sigmask(signal.SIG_BLOCK, ()):
        left_blocked += 1
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
    try:
        armed = True
        crashsafe.atomic_write(target, b"new", durability="none")
        armed = False
    except Hit:
        hits += 1
armed = False
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])  # the parent sends until we exit
print(hits, left_blocked, flush=True)
"""


@pytest.mark.parametrize("blocker", ["libc_sigmask", "_signal", "none"])
def test_a_signal_at_any_moment_of_a_write_never_leaves_signals_blocked(blocker: str) -> None:
    """Thousands of signals at random moments of writes, each handler raising:
    after every interrupted write the thread's signal mask is as it was, and
    nothing is left behind.

    CPython runs pending handlers right after the call that blocks signals
    (inside ``signal.pthread_sigmask``, or at the end of a ctypes call). A
    handler that raised there, after the block, once took the old mask with
    it: about one interrupted write in a thousand left every signal blocked
    for the rest of the process (Ctrl-C ignored, children born with it). The
    window is a few bytecodes wide, so only numbers find it: 20,000
    interrupted writes on a tmpfs, where writes are fastest; with the C
    library's pthread_sigmask, with CPython's ``_signal.pthread_sigmask`` and
    with the pure-Python fallback's ``signal.pthread_sigmask``
    (``CRASHSAFE_NATIVE``).
    """
    with tmpfs(size_kb=1024) as mnt:
        child = start_child(
            SIGNAL_STORM,
            str(mnt),
            "20000",
            blocker,
            stdin=None,
            stderr=subprocess.PIPE,
            text=True,
            env={"CRASHSAFE_NATIVE": blocker},
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n", child.stderr
            while child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGUSR1)
                time.sleep(0.0002)
            out, err = child.communicate(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == 0, err
        hits, left_blocked = map(int, out.split())
        assert hits == 20000, f"only {hits} writes were interrupted; too few to tell"
        assert left_blocked == 0, f"{left_blocked} of {hits} interrupted writes left all blocked"
        assert entries(mnt) == ["target"]


@pytest.mark.parametrize("native", ["libc_sigmask", "_signal", "none"])
def test_a_write_reads_the_mask_before_it_blocks_and_restores_it(
    workdir: Path, native: str
) -> None:
    """Each of a write's two signal blocks has the old mask in hand before a handler
    can run: the C library's call returns it from the blocking syscall itself; the
    Python-level calls read it with a call of their own first. Then the block
    restores it: a handler that raises right after the blocking call cannot take the
    old mask with it. The mask after the writes is the one before them, with a signal
    the caller had blocked still blocked; so with the C library's pthread_sigmask,
    CPython's ``_signal`` and the pure-Python fallback (``CRASHSAFE_NATIVE``).
    Each temporary name draws its own random bits."""
    target = workdir / "target"
    target.write_bytes(b"old")
    child = run_traced(
        "import signal\n"
        "from crashsafe._platform import _native\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])\n"
        "os.access('/.crashsafe-test-start', os.F_OK)\n"
        "for n in range(64):\n"
        "    atomic_write(sys.argv[1], b'new %d' % n)\n"
        "os.access('/.crashsafe-test-end', os.F_OK)\n"
        "report(mask=sorted(signal.pthread_sigmask(signal.SIG_BLOCK, ())),\n"
        "       pieces=sorted(_native.probe()))",
        str(target),
        trace=["rt_sigprocmask", "getrandom", "access", "renameat"],
        env={**os.environ, "CRASHSAFE_NATIVE": native},
    )
    pieces = [] if native == "none" else [native]
    assert child.result == {"mask": [signal.SIGUSR2], "pieces": pieces}, child.stderr
    start = next(i for i, line in enumerate(child.log) if "crashsafe-test-start" in line)
    end = next(i for i, line in enumerate(child.log) if "crashsafe-test-end" in line)
    calls = [line.split(None, 1)[1] for line in child.log[start + 1 : end]]
    assert sum(call.startswith("renameat(") for call in calls) == 64, calls
    masks = [call for call in calls if call.startswith("rt_sigprocmask(")]
    per_block = 2 if native == "libc_sigmask" else 3
    assert len(masks) == 64 * 2 * per_block, masks
    reads = masks[0::3] if per_block == 3 else []
    blocks, restores = masks[per_block - 2 :: per_block], masks[per_block - 1 :: per_block]
    # Every read and every block returns the old mask (SIGUSR2 alone); every
    # restore puts it back.
    assert all(r.startswith("rt_sigprocmask(SIG_BLOCK, [], [USR2]") for r in reads), reads
    assert all(b.startswith("rt_sigprocmask(SIG_BLOCK, ~[") and "[USR2]" in b for b in blocks)
    assert all(r.startswith("rt_sigprocmask(SIG_SETMASK, [USR2], ") for r in restores)
    assert sum(call.startswith("getrandom(") for call in calls) == 64, calls
    assert target.read_bytes() == b"new 63"
    assert_only(workdir, "target")


# ---------------------------------------------------------------------------
# The command line


def _cli(*args: str, stdin: bytes = NEW) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crashsafe", *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_cli_missing_directory_exits_1_naming_the_path(workdir: Path) -> None:
    missing = workdir / "missing"
    done = _cli("write", str(missing / "target"))
    assert done.returncode == 1, done.stderr
    assert str(missing) in done.stderr
    assert "nothing was changed" in done.stderr
    assert_only(workdir)


def test_cli_read_only_filesystem_exits_1_and_leaves_target(loopdir: Path) -> None:
    target = make_target(loopdir)
    mnt = loopdir.parent
    with read_only(mnt):
        done = _cli("write", str(target))
        assert done.returncode == 1, done.stderr
        assert "Read-only file system" in done.stderr
        assert_unchanged(target)
        assert_only(loopdir, "target")


def test_cli_create_only_over_existing_exits_4_and_leaves_target(workdir: Path) -> None:
    target = make_target(workdir)
    done = _cli("write", "--create-only", str(target))
    assert done.returncode == 4, done.stderr
    assert str(target) in done.stderr
    assert_unchanged(target)
    assert_only(workdir, "target")


def test_cli_interrupt_after_rename_does_not_claim_target_unchanged(
    staging: str, workdir: Path
) -> None:
    """SIGINT during the directory fsync: the target is already replaced.

    The CLI must not then say "the target is unchanged" (CONTRACT: never
    report "nothing happened" after the rename).
    """
    target = make_target(workdir)
    child = run_traced(
        "from crashsafe.cli import main\nsys.exit(main(sys.argv[1:]))",
        "write",
        str(target),
        trace=["fsync"],
        inject=[fault("fsync", signal="INT", when=2)],
        staging=staging,
        stdin=NEW,
    )
    assert child.count("fsync") == 2, child.log
    assert read(target) == NEW
    assert_only(workdir, "target")
    if "unchanged" in child.stderr:
        pytest.fail(
            f"exit {child.returncode}, stderr {child.stderr.strip()!r}, "
            f"but the target holds the new content"
        )


def test_interrupt_during_the_rename_still_reports_committed(staging: str, workdir: Path) -> None:
    """SIGINT arriving at the rename itself is held back until the file is marked
    committed; when it is raised, ``committed`` must still say the target was
    replaced, and the CLI must say so too (exit 3), not "unchanged"."""
    target = make_target(workdir)
    code = """
    path = sys.argv[1]
    staged = AtomicFile(path)
    staged.file.write(sys.argv[2].encode())
    outcome = attempt(staged.commit)
    report(outcome=outcome, committed=staged.committed)
    """
    child = run_traced(
        code,
        str(target),
        NEW.decode(),
        trace=["rename", "renameat", "renameat2"],
        inject=[fault(["rename", "renameat", "renameat2"], signal="INT", when=1)],
        staging=staging,
    )
    result = child.result
    assert result["outcome"]["raised"] == "KeyboardInterrupt", (result, child.stderr)
    assert result["committed"] is True, result
    assert read(target) == NEW
    assert_only(workdir, "target")

    target.write_bytes(OLD)
    cli = run_traced(
        "from crashsafe.cli import main\nsys.exit(main(sys.argv[1:]))",
        "write",
        str(target),
        trace=["rename", "renameat", "renameat2"],
        inject=[fault(["rename", "renameat", "renameat2"], signal="INT", when=1)],
        staging=staging,
        stdin=NEW,
    )
    assert read(target) == NEW
    assert cli.returncode == 3, (cli.returncode, cli.stderr)
    assert "replaced" in cli.stderr
    assert_only(workdir, "target")
