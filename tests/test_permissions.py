"""Permissions: exact perm, a replaced file keeps mode and owner, new files get open()'s mode.

Also: the staged file is never more permissive than the final one, and a writer that
may not give a file away still succeeds and owns the result.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import os
import pwd
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

import crashsafe
from crashsafe.staging import MARKER
from tests.harness.capabilities import capabilities, does_not_apply
from tests.harness.checks import leftovers, umask
from tests.harness.inject import run_traced
from tests.harness.require import require_root, require_tools

UMASKS = [0o000, 0o002, 0o022, 0o027, 0o077]


def mode_of(path: str | os.PathLike[str]) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def nobody() -> tuple[int, int]:
    """uid of nobody and gid of nogroup (called nobody on some distributions)."""
    uid = pwd.getpwnam("nobody").pw_uid
    for name in ("nogroup", "nobody"):
        with contextlib.suppress(KeyError):
            return uid, grp.getgrnam(name).gr_gid
    pytest.fail("no nogroup or nobody group on this system")


def run_as(uid: int, gid: int, groups: list[int], cwd: Path, func: Callable[[], object]) -> object:
    """Run *func* in a forked child with exactly these ids and no capabilities, in *cwd*.

    The child changes into *cwd* before dropping root, so it reaches a directory under
    pytest's private base through its working directory; the interpreter is already
    loaded, so it need not be readable by *uid*. This is what ``setpriv --reuid
    --regid --groups`` does, in-process. Returns what *func* returns (JSON-able).
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            os.close(read_end)
            os.chdir(cwd)
            os.setgroups(groups)
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            report = ["ok", func()]
            status = 0
        except BaseException as e:
            report = ["error", f"{type(e).__name__}: {e}"]
        finally:
            try:
                os.write(write_end, json.dumps(report).encode())
            finally:
                os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        payload = f.read()
    os.waitpid(pid, 0)
    kind, value = json.loads(payload)
    if kind != "ok":
        pytest.fail(f"as uid {uid}: {value}")
    return value


# ---------------------------------------------------------------- perm given


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077, 0o777], ids=oct)
@pytest.mark.parametrize(
    "perm", [0o000, 0o444, 0o600, 0o640, 0o755, 0o777, 0o4755, 0o2755, 0o1777, 0o6711]
)
def test_perm_gives_exactly_those_bits_whatever_the_umask(
    workdir: Path, staging: str, perm: int, mask: int
) -> None:
    target = workdir / "f"
    with umask(mask):
        crashsafe.atomic_write(target, b"data", perm=perm)
    assert mode_of(target) == perm
    assert target.read_bytes() == b"data"


@pytest.mark.parametrize(("old", "perm"), [(0o644, 0o600), (0o600, 0o4755), (0o4755, 0o644)])
def test_perm_overrides_the_existing_mode(workdir: Path, staging: str, old: int, perm: int) -> None:
    target = workdir / "f"
    target.write_bytes(b"old")
    target.chmod(old)
    with umask(0o077):
        crashsafe.atomic_write(target, b"new", perm=perm)
    assert mode_of(target) == perm
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("mode", ["wb", "xb", "ab", "w", "a"])
def test_perm_applies_to_every_mode_of_atomic_open(workdir: Path, staging: str, mode: str) -> None:
    target = workdir / "f"
    with umask(0o022), crashsafe.atomic_open(target, mode, perm=0o2751) as f:
        f.write(b"x" if "b" in mode else "x")
    assert mode_of(target) == 0o2751


def test_perm_applies_to_atomicfile(workdir: Path, staging: str) -> None:
    target = workdir / "f"
    target.write_bytes(b"old")
    target.chmod(0o644)
    with umask(0o000), crashsafe.AtomicFile(target, "wb", perm=0o1700) as af:
        af.file.write(b"new")
    assert mode_of(target) == 0o1700


# ---------------------------------------------------------------- perm not given


@pytest.mark.parametrize(
    "old", [0o000, 0o444, 0o600, 0o644, 0o755, 0o777, 0o4755, 0o2750, 0o6755, 0o1777]
)
def test_replacing_keeps_the_existing_mode(workdir: Path, staging: str, old: int) -> None:
    target = workdir / "f"
    target.write_bytes(b"old")
    target.chmod(old)
    with umask(0o077):  # a umask that would change every one of these modes
        crashsafe.atomic_write(target, b"new")
    assert mode_of(target) == old
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("old", [0o4755, 0o2750, 0o6755, 0o640])
@pytest.mark.parametrize("mode", ["wb", "ab"])
def test_replacing_keeps_owner_group_and_setuid_as_root(
    workdir: Path, staging: str, old: int, mode: str
) -> None:
    require_root()
    uid, gid = nobody()
    target = workdir / "f"
    target.write_bytes(b"old")
    os.chown(target, uid, gid)
    target.chmod(old)  # after chown, which clears setuid
    with crashsafe.atomic_open(target, mode) as f:
        f.write(b"new")
    st = target.stat()
    assert (st.st_uid, st.st_gid) == (uid, gid)
    assert stat.S_IMODE(st.st_mode) == old
    assert target.read_bytes() == (b"oldnew" if mode == "ab" else b"new")


@pytest.mark.parametrize("mode", ["w", "a"])
@pytest.mark.parametrize("existing", [None, 0o600, 0o644, 0o755])
@pytest.mark.parametrize("mask", UMASKS, ids=oct)
def test_mode_matches_open_across_umask_and_existing_file(
    workdir: Path, staging: str, mask: int, existing: int | None, mode: str
) -> None:
    ours, theirs = workdir / "ours", workdir / "theirs"
    if existing is not None:
        for path in (ours, theirs):
            path.write_text("old")
            path.chmod(existing)
    with umask(mask):
        with crashsafe.atomic_open(ours, mode) as f:
            f.write("new")
        with open(theirs, mode) as f:
            f.write("new")
    assert mode_of(ours) == mode_of(theirs)
    assert mode_of(ours) == (0o666 & ~mask if existing is None else existing)
    assert ours.read_bytes() == theirs.read_bytes()


def _access_acl(path: Path) -> bytes | None:
    try:
        return os.getxattr(path, "system.posix_acl_access")
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
        return None


@pytest.mark.parametrize(
    "default_acl",
    [
        "u::rw,g::r,o::r",  # a minimal default ACL: mode 0o644 despite the umask
        "u::rw,g::r,o::-,u:nobody:rwx,m::rw",  # an extended one, with a mask
        "u::rwx,g::rwx,o::rwx",  # everything: umask ignored, execute bits not given
    ],
)
def test_new_file_in_default_acl_directory_gets_what_open_gives(
    workdir: Path, staging: str, default_acl: str
) -> None:
    require_tools("setfacl")
    directory = workdir / "acl"
    directory.mkdir()
    done = subprocess.run(
        ["setfacl", "-d", "-m", default_acl, str(directory)], capture_output=True, check=False
    )
    # What the filesystem does with default ACLs (not a missing tool: no require).
    label = capabilities(workdir).label
    if done.returncode != 0:
        does_not_apply(
            label, f"no default ACLs: setfacl -d refused ({done.stderr.decode().strip()})"
        )
    ours, theirs = directory / "ours", directory / "theirs"
    with umask(0o077):  # a default ACL overrides the umask; both must honour that
        crashsafe.atomic_write(ours, b"x")
        with open(theirs, "wb") as f:
            f.write(b"x")
    if mode_of(theirs) == 0o600:
        does_not_apply(label, "default ACLs not applied: open() under umask 077 gave 0600 (FUSE)")
    assert mode_of(ours) == mode_of(theirs)
    assert mode_of(ours) != 0o600  # the ACL, not the umask, decided
    assert _access_acl(ours) == _access_acl(theirs)
    assert leftovers(directory) == []


# ---------------------------------------------------------------- the staged file


@pytest.mark.parametrize(
    ("case", "mask", "final"),
    [("perm", 0o000, 0o600), ("existing", 0o000, 0o640), ("new", 0o077, 0o600)],
)
def test_staged_file_is_never_more_permissive_than_the_final_file(
    workdir: Path, staging: str, case: str, mask: int, final: int
) -> None:
    target = workdir / "secret"
    if case == "existing":
        target.write_bytes(b"old")
        target.chmod(final)
    with umask(mask):
        af = crashsafe.AtomicFile(target, "wb", perm=final if case == "perm" else None)
    try:
        for _ in ("before writing", "after writing"):
            staged_mode = stat.S_IMODE(os.fstat(af.file.fileno()).st_mode)
            assert staged_mode & ~final == 0, oct(staged_mode)
            if staging == "named":
                temps = [n for n in os.listdir(workdir) if MARKER in n]
                assert len(temps) == 1, temps
                assert mode_of(workdir / temps[0]) & ~final == 0
            af.file.write(b"private" * 1000)
            af.file.flush()
        af.commit()
    finally:
        af.discard()
    assert mode_of(target) == final
    assert target.read_bytes() == b"private" * 2000


# ---------------------------------------------------------------- writers that are not root


def _open_to_all(workdir: Path) -> None:
    workdir.chmod(0o777)  # not sticky: anyone may replace entries


def test_writer_that_cannot_give_the_file_away_owns_the_replacement(
    workdir: Path, staging: str
) -> None:
    require_root()
    uid, gid = nobody()
    target = workdir / "shared"
    target.write_bytes(b"root's")
    os.chown(target, 0, 0)
    target.chmod(0o666)
    _open_to_all(workdir)
    run_as(uid, gid, [], workdir, lambda: crashsafe.atomic_write("shared", b"nobody's"))
    st = target.stat()
    assert target.read_bytes() == b"nobody's"
    assert (st.st_uid, st.st_gid) == (uid, gid)
    assert stat.S_IMODE(st.st_mode) == 0o666


def test_writer_that_cannot_give_the_file_away_keeps_a_group_it_belongs_to(
    workdir: Path, staging: str
) -> None:
    require_root()
    uid, gid = nobody()
    shared_gid = 4242  # a supplementary group of the writer, not its primary one
    target = workdir / "shared"
    target.write_bytes(b"root's")
    os.chown(target, 0, shared_gid)
    target.chmod(0o664)
    _open_to_all(workdir)
    run_as(uid, gid, [shared_gid], workdir, lambda: crashsafe.atomic_write("shared", b"new"))
    st = target.stat()
    assert target.read_bytes() == b"new"
    assert (st.st_uid, st.st_gid) == (uid, shared_gid)
    assert stat.S_IMODE(st.st_mode) == 0o664


@pytest.mark.parametrize("perm", [0o4755, 0o2755, 0o6750], ids=oct)
def test_perm_with_setuid_setgid_is_exact_for_a_writer_that_is_not_root(
    workdir: Path, staging: str, perm: int
) -> None:
    require_root()
    uid, gid = nobody()
    _open_to_all(workdir)

    def write() -> int:
        crashsafe.atomic_write("tool", b"#!/bin/sh\n", perm=perm)
        return stat.S_IMODE(os.stat("tool").st_mode)

    assert oct(run_as(uid, gid, [], workdir, write)) == oct(perm)  # type: ignore[arg-type]
    assert (workdir / "tool").read_bytes() == b"#!/bin/sh\n"


def test_replacing_keeps_setuid_of_the_writers_own_file(workdir: Path, staging: str) -> None:
    require_root()
    uid, gid = nobody()
    target = workdir / "tool"
    target.write_bytes(b"old")
    os.chown(target, uid, gid)
    target.chmod(0o4755)
    _open_to_all(workdir)
    run_as(uid, gid, [], workdir, lambda: crashsafe.atomic_write("tool", b"new"))
    assert target.read_bytes() == b"new"
    assert oct(mode_of(target)) == oct(0o4755)


@pytest.mark.parametrize(("perm", "existing"), [(0o600, None), (0o640, None), (None, 0o600)])
def test_temporary_file_is_created_no_more_permissive_than_final(
    workdir: Path, staging: str, perm: int | None, existing: int | None
) -> None:
    """The creating syscall itself asks for no more than the final bits (seen with strace)."""
    require_tools("strace")
    target = workdir / "secret"
    if existing is not None:
        target.write_bytes(b"old")
        target.chmod(existing)
    final = perm if perm is not None else existing
    assert final is not None
    child = run_traced(
        f"import crashsafe; crashsafe.atomic_write({str(target)!r}, b'k', perm={perm!r})",
        trace=["openat"],
        paths=[workdir],
        staging=staging,
    )
    assert child.returncode == 0, child.stderr
    # A refused O_TMPFILE (FUSE: EOPNOTSUPP) creates nothing; the named file after it does.
    creating = [
        c
        for c in child.calls("openat")
        if ("O_TMPFILE" in c or "O_CREAT" in c) and " = -1 " not in c
    ]
    assert creating, child.log
    for call in creating:
        requested = int(call.rsplit(",", 1)[1].split(")")[0], 8)
        assert requested & ~final == 0, call
    assert stat.S_IMODE(target.stat().st_mode) == final


# A process's first write reads with stat (the warm-up, see
# crashsafe._platform._native); these children use statx from the first read.
NO_WARM_UP = {**os.environ, "CRASHSAFE_NATIVE": "statx,_signal,libc_sigmask"}


@pytest.mark.parametrize(("umask", "chmods"), [(0o022, 0), (0o077, 1)], ids=["022", "077"])
def test_an_anonymous_staged_file_is_chmodded_only_when_the_umask_took_bits(
    workdir: Path, umask: int, chmods: int
) -> None:
    """An O_TMPFILE file is created with the final mode (nobody can open it before it
    is linked): under the usual umask an overwrite needs no fchmod and no fchown, and
    atomic_write builds no file object (whose fstat, ioctl and lseek it would cost).
    A umask that takes bits away gets its one fchmod, read back by one more statx (a
    filesystem may accept a chmod and keep nothing). The mode is exact either way.
    The target and the staged file are each read once more, by a statx that asks for
    no timestamp (reading one makes the inode's next change cost a log write)."""
    target = workdir / "target"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    child = run_traced(
        f"os.umask({umask:#o})\nreport(**attempt(crashsafe.atomic_write, sys.argv[1], b'new'))",
        str(target),
        trace=["fchmod", "fchown", "ioctl", "lseek", "newfstatat", "fstat", "statx"],
        staging="tmpfile",
        env=NO_WARM_UP,
    )
    assert child.result == {"raised": None}, child.stderr
    ours = [line for line in child.log if str(workdir) in line]
    calls = [line.split()[1].split("(")[0] for line in ours]
    # The target's status and the staged file's, once each, and the read-back of a
    # chmod; no stat of either.
    assert calls.count("statx") == 2 + chmods, ours
    assert "newfstatat" not in calls and "fstat" not in calls, ours
    for line in ours:
        if line.split()[1].startswith("statx("):
            asked = line.split(", ")[3]
            # The link count too: a hard-linked target is refused (test_metadata.py).
            assert asked == "STATX_TYPE|STATX_MODE|STATX_NLINK|STATX_UID|STATX_GID", line
    assert sum("fchmod(" in line for line in ours) == chmods, ours
    assert not [line for line in ours if "fchown(" in line or "ioctl(" in line or "lseek(" in line]
    assert target.read_bytes() == b"new"
    assert mode_of(target) == 0o644
    assert leftovers(workdir) == []


def test_a_refused_statx_falls_back_to_stat_once_and_for_all(workdir: Path, staging: str) -> None:
    """Where statx is refused (a seccomp filter answering EPERM, as older container
    runtimes did), the write still reads the mode and owner, with stat, and does not
    try statx again. (ENOSYS, from a kernel before 4.11, glibc answers itself, with
    fstatat.)"""
    target = workdir / "target"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    child = run_traced(
        "for data in (b'one', b'two'):\n"
        "    crashsafe.atomic_write(sys.argv[1], data)\n"
        "report(raised=None)",
        str(target),
        trace=["statx", "newfstatat"],
        inject=["statx:error=EPERM"],
        staging=staging,
    )
    assert child.result == {"raised": None}, child.stderr
    ours = [line for line in child.log if str(workdir) in line]
    calls = [line.split()[1].split("(")[0] for line in ours]
    # The first write reads with stat; the second tries statx once, is refused, and
    # reads with stat too. A named staged file (named staging, or no O_TMPFILE on this
    # filesystem) is chmodded (it starts private), and its mode read back, once a write.
    assert calls.count("statx") == 1, ours
    assert "(INJECTED)" in ours[calls.index("statx")], ours
    named = staging == "named" or any(".crashsafe-tmp>" in line for line in ours)
    assert calls.count("newfstatat") == 4 + (2 if named else 0), ours
    assert target.read_bytes() == b"two"
    assert mode_of(target) == 0o640
    assert leftovers(workdir) == []


def test_statx_is_loaded_by_the_second_write_of_a_process(workdir: Path) -> None:
    """Loading statx means importing ctypes, which takes longer than a small write: a
    process that writes once reads with stat and never imports it; from the second
    write on, the reads are statx calls without timestamps."""
    target = workdir / "target"
    target.write_bytes(b"old")
    child = run_traced(
        "crashsafe.atomic_write(sys.argv[1], b'one')\n"
        "first = 'ctypes' in sys.modules\n"
        "crashsafe.atomic_write(sys.argv[1], b'two')\n"
        "report(first=first, second='ctypes' in sys.modules)",
        str(target),
        trace=["statx", "newfstatat", "renameat"],
    )
    assert child.result == {"first": False, "second": True}, child.stderr
    ours = [line for line in child.log if str(workdir) in line]
    calls = [line.split()[1].split("(")[0] for line in ours]
    # A named staged file (no O_TMPFILE on this filesystem) is chmodded, as it starts
    # private, and its mode read back: one status read more in each write.
    again = 1 if any(".crashsafe-tmp>" in line for line in ours) else 0
    assert calls == (
        ["newfstatat"] * (2 + again) + ["renameat"] + ["statx"] * (2 + again) + ["renameat"]
    ), ours
    assert target.read_bytes() == b"two"
