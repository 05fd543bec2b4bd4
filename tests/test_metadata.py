"""The file's metadata comes along: extended attributes, ACLs, and the targets refused.

On real filesystems (loop ext4 and xfs, a tmpfs): every call that replaces a
file keeps the old file's ``user.*``, ``trusted.*`` and ``security.selinux``
attributes and its POSIX ACL with ``preserve="all"`` (the default) and drops
them with ``preserve="mode"``; a file capability is never carried and is said;
an attribute the process may not set is said; a hard-linked target and a
bind-mounted one are refused before anything is staged. The power cut proof
is at the end (marked slow).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import shutil
import subprocess
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import crashsafe
from tests import children
from tests.harness import power_cut
from tests.harness.checks import leftovers
from tests.harness.inject import run_traced
from tests.harness.mounts import loop_mount, tmpfs
from tests.harness.payloads import classify, payload, read_or_none
from tests.harness.power_cut import WRITERS
from tests.harness.require import require_root, require_tools
from tests.harness.summary import module_summary
from tests.harness.traces import commit_index

OLD = b'{"v": 1}\n'
NEW = b'{"v": 2}\n'
HOST = b'{"v": 7}\n'  # what a bind mount shows at the target
# Set on the old file as root: a plain user attribute, a label (this kernel has no
# SELinux, so security.selinux is an attribute root may set like any other), a
# trusted one (root only), and an ACL entry for nobody.
ATTRIBUTES = {
    "user.origin": b"build-42",
    "security.selinux": b"system_u:object_r:etc_t:s0\x00",
    "trusted.note": b"kept",
}

Call = Callable[..., None]


def _write(path: Path, **kw: Any) -> None:
    crashsafe.atomic_write(path, NEW, **kw)


def _open(path: Path, **kw: Any) -> None:
    with crashsafe.atomic_open(path, "wb", **kw) as f:
        f.write(NEW)


def _append(path: Path, **kw: Any) -> None:
    with crashsafe.atomic_open(path, "ab", **kw) as f:
        f.write(b" ")


def _atomic_file(path: Path, **kw: Any) -> None:
    with crashsafe.AtomicFile(path, "wb", **kw) as staged:
        staged.file.write(NEW)


def _write_file_atomic(path: Path, **kw: Any) -> None:
    crashsafe.write_file_atomic(path.parent, path.name, NEW, 0o640, **kw)


def _copy(path: Path, **kw: Any) -> None:
    source = path.parent / "source.json"
    source.write_bytes(NEW)
    try:
        crashsafe.atomic_copy(source, path, **kw)
    finally:
        source.unlink()


def _update(path: Path, **kw: Any) -> None:
    crashsafe.update(path, lambda old: NEW, **kw)


def _write_json(path: Path, **kw: Any) -> None:
    crashsafe.write_json(path, {"v": 2}, **kw)


def _update_json(path: Path, **kw: Any) -> None:
    crashsafe.update_json(path, lambda doc: {"v": doc["v"] + 1}, **kw)


def _write_many(path: Path, **kw: Any) -> None:
    crashsafe.write_many({path: NEW}, **kw)


def _transaction(path: Path, **kw: Any) -> None:
    with crashsafe.transaction(path.parent) as tx:
        tx.write(path.name, NEW, **kw)


def _atomic_path(path: Path, **kw: Any) -> None:
    with crashsafe.atomic_path(path, **kw) as staged:
        staged.write_bytes(NEW)


def _atomic_path_renamed(path: Path, **kw: Any) -> None:
    # A library that writes its own file and renames it onto the staged path.
    with crashsafe.atomic_path(path, **kw) as staged:
        own = staged.with_name(staged.name + ".own")
        own.write_bytes(NEW)
        os.rename(own, staged)


CALLS: dict[str, Call] = {
    "atomic_write": _write,
    "atomic_open": _open,
    "atomic_open-ab": _append,
    "AtomicFile": _atomic_file,
    "write_file_atomic": _write_file_atomic,
    "atomic_copy": _copy,
    "update": _update,
    "write_json": _write_json,
    "update_json": _update_json,
    "write_many": _write_many,
    "transaction": _transaction,
    "atomic_path": _atomic_path,
    "atomic_path-renamed": _atomic_path_renamed,
}


@pytest.fixture(scope="module", params=["ext4", "xfs", "tmpfs"])
def metadata_fs(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A real filesystem for the module: a loop ext4 or xfs, or a tmpfs (which has
    user.* attributes from Linux 6.6)."""
    require_root()
    require_tools("setfacl", "getfacl")
    mount = tmpfs(size_kb=8192) if request.param == "tmpfs" else loop_mount(request.param)
    with mount as mnt:
        yield mnt


@pytest.fixture
def place(metadata_fs: Path) -> Iterator[Path]:
    """A fresh directory on the filesystem, which must hold no temporary file at the end."""
    directory = metadata_fs / "d"
    directory.mkdir()
    try:
        yield directory
    finally:
        found = leftovers(directory)
        shutil.rmtree(directory)
        assert found == []


def _acl(path: Path) -> list[str]:
    out = subprocess.run(
        ["getfacl", "--omit-header", "--absolute-names", "--numeric", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split("#")[0].strip() for line in out.splitlines() if line.strip()]


def _attributes(path: Path) -> dict[str, bytes]:
    return {name: os.getxattr(path, name) for name in os.listxattr(path)}


def _old_file(directory: Path) -> Path:
    target = directory / "config.json"
    target.write_bytes(OLD)
    target.chmod(0o640)
    for name, value in ATTRIBUTES.items():
        os.setxattr(target, name, value)
    subprocess.run(["setfacl", "-m", "u:nobody:r", str(target)], check=True)
    return target


# --------------------------------------------------------------------------- carried


@pytest.mark.parametrize("call", CALLS)
def test_every_replacing_call_keeps_the_attributes_and_the_acl_by_default(
    place: Path, call: str
) -> None:
    target = _old_file(place)
    before, acl = _attributes(target), _acl(target)
    assert "system.posix_acl_access" in before
    assert set(ATTRIBUTES) <= set(before)
    inode = target.stat().st_ino

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is lost, so nothing is said
        CALLS[call](target)

    assert target.stat().st_ino != inode  # replaced, not written in place
    assert target.read_bytes() != OLD
    assert _attributes(target) == before
    assert _acl(target) == acl
    nobody = pwd.getpwnam("nobody").pw_uid
    assert f"user:{nobody}:r--" in _acl(target)
    assert target.stat().st_mode & 0o7777 == 0o640


@pytest.mark.parametrize("call", CALLS)
def test_every_replacing_call_drops_them_with_preserve_mode(place: Path, call: str) -> None:
    target = _old_file(place)

    CALLS[call](target, preserve="mode")

    assert target.read_bytes() != OLD
    assert _attributes(target) == {}
    assert all(not line.startswith("user:") or line == "user::rw-" for line in _acl(target))
    assert target.stat().st_mode & 0o7777 == 0o640  # mode (and owner) as before


def test_perm_sets_the_acl_mask_as_chmod_does(place: Path) -> None:
    """perm= wins for the mode bits; with an ACL, its group bits are the mask (as
    chmod and setfacl do): the named entry stays, limited by the mask."""
    target = _old_file(place)
    nobody = pwd.getpwnam("nobody").pw_uid

    crashsafe.atomic_write(target, NEW, perm=0o600)

    assert target.stat().st_mode & 0o7777 == 0o600
    acl = _acl(target)
    assert f"user:{nobody}:r--" in acl
    assert "mask::---" in acl
    assert _attributes(target)["user.origin"] == b"build-42"


def test_an_acl_the_directory_would_give_a_new_file_is_not_added(place: Path) -> None:
    """ "all" means what the replaced file had: a file without an ACL, in a directory
    that since got a default ACL, is replaced by a file without an ACL."""
    target = place / "plain"
    target.write_bytes(OLD)
    target.chmod(0o644)
    subprocess.run(["setfacl", "-d", "-m", "u:nobody:rw", str(place)], check=True)
    fresh = place / "fresh"
    fresh.write_bytes(b"")
    assert "system.posix_acl_access" in os.listxattr(fresh)  # what a new file gets
    fresh.unlink()

    crashsafe.atomic_write(target, NEW)

    assert "system.posix_acl_access" not in os.listxattr(target)
    assert target.stat().st_mode & 0o7777 == 0o644


def test_a_capability_is_never_carried_and_is_said(place: Path) -> None:
    require_tools("setcap", "getcap")
    target = _old_file(place)
    subprocess.run(["setcap", "cap_net_raw+ep", str(target)], check=True)
    assert "security.capability" in os.listxattr(target)

    with pytest.warns(crashsafe.MetadataNotPreservedWarning) as said:
        crashsafe.atomic_write(target, NEW)

    assert target.read_bytes() == NEW
    assert "security.capability" not in os.listxattr(target)
    assert _attributes(target)["user.origin"] == b"build-42"  # the rest is kept
    (warning,) = said.list
    assert warning.filename == __file__  # the caller's line, not crashsafe's
    message = warning.message
    assert isinstance(message, crashsafe.MetadataNotPreservedWarning)
    assert message.attributes == ["security.capability"]
    assert message.filename == str(target)
    assert "security.capability" in str(message) and "never carried" in str(message)


def test_a_warning_made_an_error_publishes_nothing(place: Path, staging: str) -> None:
    require_tools("setcap")
    target = _old_file(place)
    subprocess.run(["setcap", "cap_net_raw+ep", str(target)], check=True)

    with warnings.catch_warnings():
        warnings.simplefilter("error", crashsafe.MetadataNotPreservedWarning)
        with pytest.raises(crashsafe.MetadataNotPreservedWarning):
            crashsafe.atomic_write(target, NEW)

    assert target.read_bytes() == OLD
    assert "security.capability" in os.listxattr(target)  # the old file, untouched


AS_NOBODY = """
import warnings
with warnings.catch_warnings(record=True) as said:
    warnings.simplefilter("always")
    result = attempt(atomic_write, sys.argv[1], b"new")
report(result=result, said=[(type(w.message).__name__, str(w.message),
       getattr(w.message, "attributes", None)) for w in said],
       names=sorted(os.listxattr(sys.argv[1])))
"""


def test_an_attribute_the_process_may_not_set_is_said() -> None:
    """Unprivileged, most security.* labels cannot be set (a Smack label needs
    CAP_MAC_ADMIN, EPERM here): it is named in a MetadataNotPreservedWarning; user.*,
    the ACL and security.selinux (which this kernel, without SELinux, lets the
    owner set: measured) are kept. trusted.* cannot even be listed by such a
    process: it is neither kept nor seen (the docs say so)."""
    require_tools("setfacl", "setpriv")
    nobody = pwd.getpwnam("nobody")
    with children.root_owned_directory() as base:
        home = base / "home"
        home.mkdir()
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        target = _old_file(home)
        os.setxattr(target, "security.SMACK64", b"_")
        os.chown(target, nobody.pw_uid, nobody.pw_gid)

        got = children.run_as_nobody(AS_NOBODY, str(target))

        assert got["result"] == {"raised": None}
        assert target.read_bytes() == b"new"
        ((kind, message, attributes),) = got["said"]
        assert kind == "MetadataNotPreservedWarning"
        assert attributes == ["security.SMACK64"]
        assert "EPERM" in message and str(target) in message
        assert got["names"] == ["security.selinux", "system.posix_acl_access", "user.origin"]
        assert leftovers(home) == []


# --------------------------------------------------------------------------- refused


@pytest.mark.parametrize("call", CALLS)
def test_a_hard_linked_target_is_refused_before_anything_is_staged(
    workdir: Path, call: str
) -> None:
    target = workdir / "config.json"
    target.write_bytes(OLD)
    alias = workdir / "alias.json"
    os.link(target, alias)

    with pytest.raises(crashsafe.HardLinkedTargetError) as caught:
        CALLS[call](target)

    error = caught.value
    assert isinstance(error, OSError)
    assert error.errno == errno.EMLINK
    assert error.filename == str(target)
    assert error.links == 2
    assert "2 hard links" in str(error) and "split" in str(error)
    assert 'hardlinks="break"' in str(error)
    assert target.read_bytes() == OLD
    assert os.path.samefile(target, alias)
    assert leftovers(workdir) == []


def test_hardlinks_break_replaces_one_name_and_leaves_the_other(workdir: Path) -> None:
    target = workdir / "config.json"
    target.write_bytes(OLD)
    alias = workdir / "alias.json"
    os.link(target, alias)

    crashsafe.atomic_write(target, NEW, hardlinks="break")

    assert target.read_bytes() == NEW
    assert alias.read_bytes() == OLD


def test_write_many_refuses_a_hard_link_before_writing_any_file(workdir: Path) -> None:
    first = workdir / "a"
    first.write_bytes(OLD)
    linked = workdir / "b"
    linked.write_bytes(OLD)
    os.link(linked, workdir / "b.alias")

    with pytest.raises(crashsafe.HardLinkedTargetError):
        crashsafe.write_many({first: NEW, linked: NEW})

    assert first.read_bytes() == OLD  # listed first, yet not written


@contextlib.contextmanager
def _bind_mounted(target: Path) -> Iterator[Path]:
    source = target.with_name("mounted-from")
    source.write_bytes(HOST)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        yield source
    finally:
        subprocess.run(["umount", str(target)], check=True)
        source.unlink()


@pytest.mark.parametrize("call", CALLS)
def test_a_bind_mounted_target_is_refused_then_works_once_unmounted(
    workdir: Path, call: str
) -> None:
    require_root()
    target = workdir / "hosts"
    target.write_bytes(OLD)
    with _bind_mounted(target):
        with pytest.raises(crashsafe.MountedTargetError) as caught:
            CALLS[call](target)
        error = caught.value
        assert error.errno == errno.EBUSY
        assert error.filename == str(target)
        assert "mount point" in str(error) and "nothing was written" in str(error)
        assert target.read_bytes() == HOST
        assert leftovers(workdir) == []

    CALLS[call](target)
    assert target.read_bytes() != OLD


TRACED = "report(**attempt(atomic_write, sys.argv[1], b'new'))"


@pytest.mark.parametrize("native", ["statx", "none"])
def test_a_bind_mount_is_seen_before_any_file_is_created(workdir: Path, native: str) -> None:
    """With statx (STATX_ATTR_MOUNT_ROOT) and without it (/proc/self/mountinfo), the
    error comes before the staged file is created: no O_TMPFILE or O_CREAT open, no
    write."""
    require_root()
    etc = workdir / "etc dir"  # mountinfo escapes the space: \040
    etc.mkdir()
    target = etc / "resolv.conf"
    target.write_bytes(OLD)
    with _bind_mounted(target):
        child = run_traced(
            TRACED,
            str(target),
            trace=["openat", "write", "pwrite64", "rename", "renameat", "renameat2"],
            env={"CRASHSAFE_NATIVE": native},
        )
    assert child.result["raised"] == "MountedTargetError", child.stderr
    assert child.result["errno"] == errno.EBUSY
    ours = [line for line in child.log if str(workdir) in line]
    assert ours, child.log  # the directory was opened, so this would see a creation
    assert not [line for line in ours if "O_TMPFILE" in line or "O_CREAT" in line], ours
    assert not [line for line in ours if " write(" in line or "rename" in line], ours


@pytest.mark.parametrize(
    ("keyword", "value"), [("preserve", "none"), ("preserve", "xattrs"), ("hardlinks", "keep")]
)
def test_a_bad_word_is_refused_naming_it(workdir: Path, keyword: str, value: str) -> None:
    target = workdir / "f"
    for call in (_write, _atomic_path, _write_json, _write_many, _copy):
        with pytest.raises(ValueError, match=f"invalid {keyword} '{value}'"):
            call(target, **{keyword: value})
    assert not target.exists()


# --------------------------------------------------------------------------- power cut

WRITE_XATTRS = WRITERS / "write_xattrs.py"
_note, _print_summary = module_summary("metadata power cut summary")


def _cut(mnt: Path, tmp_path: Path, how: str, modes: tuple[str, ...]) -> power_cut.PowerCutRun:
    source = tmp_path / "new.bin"
    source.write_bytes(payload(2, 64 << 10))
    target = mnt / "config"
    acl_holder = tmp_path / "acl"

    def prepare() -> None:
        crashsafe.atomic_write(target, payload(1, 64 << 10), hardlinks="break", preserve="mode")
        os.setxattr(target, "user.origin", b"build-42")
        subprocess.run(["setfacl", "-m", "u:nobody:r", str(target)], check=True)
        acl_holder.write_bytes(os.getxattr(target, "system.posix_acl_access"))
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        dfd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def inspect() -> str:
        found = classify(read_or_none(target))
        if found not in (1, 2):
            return str(found)
        names = set(os.listxattr(target))
        whole = (
            {"user.origin", "system.posix_acl_access"} <= names
            and os.getxattr(target, "user.origin") == b"build-42"
            and os.getxattr(target, "system.posix_acl_access") == acl_holder.read_bytes()
        )
        return ("old" if found == 1 else "new") + ("" if whole else " without attributes")

    return power_cut.power_cut_every_syscall(
        mnt,
        WRITE_XATTRS,
        [str(target), str(source), "tmpfile", how],
        prepare=prepare,
        inspect=inspect,
        sweep_dir=mnt,
        modes=modes,
    )


def _bad(run: power_cut.PowerCutRun) -> list[tuple[str, str]]:
    commit = commit_index(run.trace, "config")
    assert commit is not None
    bad = []
    for t in run.trials:
        if t.outcome not in ("old", "new"):
            bad.append((t.outcome, str(t.point)))
        elif t.point.index >= run.end and t.outcome != "new":
            bad.append((f"{t.outcome} after return", str(t.point)))
    return bad


@pytest.mark.slow
def test_power_cut_at_every_syscall_keeps_the_attributes_with_the_content(
    cut_fs: tuple[str, Path], tmp_path: Path
) -> None:
    """After a cut at any syscall, the file is the whole old file with its
    attributes or the whole new file with the same attributes."""
    require_tools("setfacl")
    fs, mnt = cut_fs
    run = _cut(mnt, tmp_path, "all", power_cut.MODES)
    outcomes = Counter(t.outcome for t in run.trials)
    _note(power_cut.describe(fs, "preserve=all", run, json.dumps(outcomes)))
    assert _bad(run) == []
    assert set(outcomes) == {"old", "new"}, outcomes
    assert len(run.trials) == len(run.trace) * len(power_cut.MODES)
    # The attributes went on the staged file before its data and before the rename.
    commit = commit_index(run.trace, "config")
    assert commit is not None
    names = [s.name for s in run.trace]
    assert "fsetxattr" in names[:commit], names


@pytest.mark.slow
def test_power_cut_catches_attributes_set_after_the_rename(
    cut_fs: tuple[str, Path], tmp_path: Path
) -> None:
    """The broken variant: replace with preserve="mode", then set the attributes on
    the published file. A cut between the two leaves the new content without them."""
    require_tools("setfacl")
    fs, mnt = cut_fs
    run = _cut(mnt, tmp_path, "after", ("commit",))
    bad = _bad(run)
    _note(power_cut.describe(fs, "BROKEN attributes after rename", run, f"{len(bad)} bad"))
    assert any(outcome == "new without attributes" for outcome, _ in bad), run.trials
