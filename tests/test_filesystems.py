"""The filesystems of the matrix themselves (tests/harness/filesystems.py): each mounts
fresh and writable, is what its name says, and leaves nothing behind; the probes see
exactly what each one lacks; on overlayfs, writes over files of the lower layer (a
copy-up) keep the contract; and on each filesystem of the matrix, ``kill -9`` of a
writer right after each of its syscalls never tears the target (``pytest -s`` prints
the figures: the README's "Verified on" rows).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

import crashsafe
from tests.harness.capabilities import CAPABILITIES, Capability, capabilities, label_mount
from tests.harness.checks import verify_no_leftovers
from tests.harness.filesystems import LOWER_CONTENT, NAMES, Mounted, mount
from tests.harness.kill9 import kill9_torture
from tests.harness.summary import module_summary

_note, _print_summary = module_summary("kill -9 on each filesystem of the matrix")
# Two 256 KiB overwrites touch the directory in about 22 syscalls: 48 kills land right
# after each of them at least twice, before and after commits (about 6 s a filesystem).
KILLS = 48

REFLINK: set[Capability] = {"reflink"}
CLONES: set[Capability] = {"streamed_copy"}  # what a reflinking filesystem lacks
NO_RENAME_FLAGS: set[Capability] = {"o_tmpfile", "rename_noreplace", "rename_exchange"}
# What each filesystem lacks, as measured on Linux 6.18 with Debian 12's packages; the
# probes must find exactly this (a probe that always answered "yes" fails here).
# (type in /proc/self/mounts, an option it must show, the capabilities it lacks)
EXPECTED: dict[str, tuple[str, str, set[Capability]]] = {
    "ext4": ("ext4", "rw", REFLINK),
    "ext4-noauto_da_alloc": ("ext4", "noauto_da_alloc", REFLINK),
    "ext4-journal": ("ext4", "data=journal", REFLINK),
    "ext2": ("ext2", "rw", REFLINK),
    "ext3": ("ext3", "rw", REFLINK),
    "xfs": ("xfs", "rw", CLONES),
    "xfs-noreflink": ("xfs", "rw", REFLINK),
    "btrfs": ("btrfs", "rw", CLONES),
    "tmpfs": ("tmpfs", "rw", REFLINK),
    "ramfs": ("ramfs", "rw", REFLINK | {"xattrs"}),
    "overlayfs": ("overlay", "upperdir=", REFLINK),
    "bindfs": ("fuse", "rw", REFLINK | NO_RENAME_FLAGS),
    # Debian's sshfs follows no absolute symlink (contain_symlinks); SFTP has no xattrs.
    "sshfs": (
        "fuse.sshfs",
        "rw",
        REFLINK | NO_RENAME_FLAGS | {"absolute_symlinks", "xattrs", "fifos"},
    ),
    # ntfs-3g's default options keep no modes or owners (no user mapping).
    "ntfs3g": ("fuseblk", "rw", REFLINK | NO_RENAME_FLAGS | {"chmod", "chown"}),
    "exfat": ("fuseblk", "rw", set(CAPABILITIES) - {"dir_fsync", "streamed_copy"}),
}


def _mount_line(root: Path) -> list[str]:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(root):
            return fields
    raise AssertionError(f"{root} is not a mount point")


def _processes_naming(path: Path) -> list[str]:
    """Command lines of processes that name *path* (a daemon a mount left running)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


@pytest.mark.parametrize("name", NAMES)
def test_each_filesystem_mounts_fresh_is_what_it_says_and_leaves_nothing(name: str) -> None:
    fstype, option, lacks = EXPECTED[name]
    with mount(name) as mounted:
        root = mounted.root
        base = root.parent
        device, _, kind, options = _mount_line(root)[:4]
        assert kind == fstype and option in options, (kind, options)
        directory = mounted.fresh()
        (directory / "f").write_bytes(b"written")
        assert (directory / "f").read_bytes() == b"written"
        assert mounted.fresh() != directory  # each test its own
        label_mount(root, name)
        caps = capabilities(directory)
        assert caps.label == name
        assert set(CAPABILITIES) - caps.present == lacks, caps.why
        assert all(
            caps.why[c].startswith(("no ", "modes", "owners", "absolute", "case")) for c in lacks
        )
        # The probe cleans up after itself.
        assert sorted(os.listdir(directory)) == ["f"]
    assert not os.path.exists(base), f"{base} left behind"
    assert all(
        fields[1] != str(root)
        for fields in map(str.split, Path("/proc/self/mounts").read_text().splitlines())
    )
    assert _processes_naming(base) == []
    if device.startswith("/dev/loop"):
        backing = Path(f"/sys/block/{Path(device).name}/loop/backing_file")
        assert not backing.exists() or str(base) not in backing.read_text()


def _upper_of(root: Path) -> Path:
    options = _mount_line(root)[3].split(",")
    return Path(next(o for o in options if o.startswith("upperdir=")).partition("=")[2])


def test_on_overlayfs_writes_over_lower_files_copy_them_up_whole() -> None:
    """Each write below starts from a file of the lower layer: the first change copies
    it up. The result is the whole new content, in the upper layer; the lower layer
    is untouched; nothing is left."""
    with mount("overlayfs") as mounted:
        here = mounted.lower_files
        assert here is not None
        upper = _upper_of(mounted.root) / here.name
        assert not upper.exists()  # nothing copied up yet

        crashsafe.atomic_write(here / "blob", b"y" * 70000)
        with crashsafe.atomic_open(here / "log.txt", "ab") as f:
            f.write(b"two\n")
        crashsafe.update_json(here / "doc.json", lambda d: {"version": d["version"] + 1})
        crashsafe.atomic_copy(here / "log.txt", here / "copy.txt")

        assert (here / "blob").read_bytes() == b"y" * 70000
        assert (here / "log.txt").read_bytes() == LOWER_CONTENT["log.txt"] + b"two\n"
        assert json.loads((here / "doc.json").read_text()) == {"version": 2}
        assert (here / "copy.txt").read_bytes() == b"one\ntwo\n"
        for name in ("blob", "log.txt", "doc.json", "copy.txt"):
            assert (upper / name).read_bytes() == (here / name).read_bytes()
        lower = _upper_of(mounted.root).parent / "lower" / here.name
        assert {n: (lower / n).read_bytes() for n in os.listdir(lower)} == LOWER_CONTENT
        verify_no_leftovers(here)
        assert crashsafe.sweep(here) == []


def test_kill9_after_each_syscall_never_tears_and_sweep_cleans(
    workdir: Path, fs: Mounted | None
) -> None:
    """The library's own staging choice (O_TMPFILE, or named files where it is refused)."""
    result = kill9_torture(workdir, kills=KILLS, staging="tmpfile", size=256 << 10)
    where = fs.name if fs is not None else "tmp_path"
    _note(
        f"kill -9 {where:<21} {result.kills} kills: torn {result.torn} "
        f"{dict(result.outcomes)}, changed after {result.changed}, orphans "
        f"{result.orphans_before_sweep} -> swept {result.swept} -> left "
        f"{len(result.left_after_sweep)}; {result.seconds:.1f} s"
    )
    assert result.outcomes == Counter(complete=KILLS), result.outcomes
    assert result.returned_then_lost() == []
    assert 0 < result.changed < KILLS  # kills landed before and after commits
    assert result.swept == result.orphans_before_sweep
    assert result.left_after_sweep == []
    assert os.listdir(workdir) == ["target"]
