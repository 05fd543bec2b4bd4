"""What replacing a file inherently does, as the README's "Not promised" says: a hard link
keeps the old content, append mode rewrites the whole old file into a new one, and
extended attributes and ACL entries beyond the mode are not carried over (yet).

Each test shows the documented behaviour on real files; if one starts failing, the
behaviour changed and the README must change with it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import crashsafe
from tests.harness.checks import verify_no_leftovers
from tests.harness.mounts import tmpfs
from tests.harness.require import require_tools


def test_replacing_with_hardlinks_break_splits_a_hard_link_which_keeps_the_old_content(
    workdir: Path, staging: str
) -> None:
    # Without hardlinks="break" this is refused (tests/test_metadata.py).
    target = workdir / "config"
    target.write_bytes(b"old")
    alias = workdir / "config.hardlink"
    os.link(target, alias)
    assert target.stat().st_nlink == 2

    crashsafe.atomic_write(target, b"new", hardlinks="break")

    assert target.read_bytes() == b"new"
    assert alias.read_bytes() == b"old"  # still the old inode
    assert not os.path.samefile(target, alias)
    assert target.stat().st_nlink == 1
    assert alias.stat().st_nlink == 1


def test_append_mode_publishes_a_new_file_holding_a_copy_of_the_old_one(
    workdir: Path, staging: str
) -> None:
    target = workdir / "journal.log"
    old = os.urandom(1 << 20) + b"\n"  # 1 MiB, more than one copy chunk of some paths
    target.write_bytes(old)
    before = target.stat()
    # A hard link pins the old inode, so what happened to it can be seen afterwards.
    pinned = workdir / "journal.before"
    os.link(target, pinned)

    with crashsafe.atomic_open(target, "ab", hardlinks="break") as f:
        f.write(b"one more line\n")

    after = target.stat()
    assert (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino)  # a new file
    assert target.read_bytes() == old + b"one more line\n"  # the whole old content, copied
    assert pinned.read_bytes() == old  # the old file itself was never written to
    assert pinned.stat().st_mtime_ns == before.st_mtime_ns


@contextlib.contextmanager
def _directory(kind: str, workdir: Path) -> Iterator[Path]:
    if kind == "disk":
        yield workdir
        return
    with tmpfs(size_kb=4096) as mnt:
        try:
            yield mnt
        finally:
            verify_no_leftovers(mnt)


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_extended_attributes_are_not_carried_with_preserve_mode(
    workdir: Path, staging: str, where: str
) -> None:
    with _directory(where, workdir) as directory:
        target = directory / "tagged"
        target.write_bytes(b"old")
        os.setxattr(target, "user.origin", b"build-42")  # tmpfs: Linux 6.6 and later
        assert os.getxattr(target, "user.origin") == b"build-42"

        # preserve="all", the default, carries them (tests/test_metadata.py).
        crashsafe.atomic_write(target, b"new", preserve="mode")

        assert target.read_bytes() == b"new"
        assert "user.origin" not in os.listxattr(target)


def test_acl_entries_beyond_the_mode_are_not_carried_with_preserve_mode(
    workdir: Path, staging: str
) -> None:
    require_tools("setfacl", "getfacl")
    target = workdir / "shared"
    target.write_bytes(b"old")
    target.chmod(0o640)
    subprocess.run(["setfacl", "-m", "u:nobody:r", str(target)], check=True)

    def acl() -> str:
        return subprocess.run(
            ["getfacl", "--omit-header", "--absolute-names", str(target)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert "user:nobody:r--" in acl()

    crashsafe.atomic_write(target, b"new", preserve="mode")

    assert target.read_bytes() == b"new"
    assert "user:nobody" not in acl()
    assert "system.posix_acl_access" not in os.listxattr(target)
    # The mode bits are carried over: with an ACL, the group bits are its mask.
    assert target.stat().st_mode & 0o777 == 0o640
