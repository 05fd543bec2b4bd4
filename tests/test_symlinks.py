"""Symlinks: followed to the file they name (the link stays), or replaced when asked.

A loop raises ELOOP and a link to a directory IsADirectoryError, with nothing created.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

import crashsafe
from crashsafe.staging import MARKER

APIS = ["atomic_write", "atomic_open", "AtomicFile"]


def write(api: str, path: str | os.PathLike[str], data: bytes, **kw: object) -> None:
    """Write *data* to *path* through one of the public entry points."""
    if api == "atomic_write":
        crashsafe.atomic_write(path, data, **kw)  # type: ignore[arg-type]
    elif api == "atomic_open":
        with crashsafe.atomic_open(path, "wb", **kw) as f:  # type: ignore[arg-type]
            f.write(data)
    else:
        with crashsafe.AtomicFile(path, "wb", **kw) as af:  # type: ignore[arg-type]
            af.file.write(data)


def leftovers_anywhere(root: Path) -> list[str]:
    """Temporary files in *root* and every directory below it."""
    return sorted(os.path.join(d, n) for d, _, files in os.walk(root) for n in files if MARKER in n)


def snapshot(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_ino, stat.S_IMODE(st.st_mode)


@pytest.mark.parametrize("api", APIS)
def test_follow_writes_through_a_relative_link_and_keeps_the_link(
    workdir: Path, staging: str, api: str
) -> None:
    target = workdir / "real"
    target.write_bytes(b"old")
    target.chmod(0o640)
    link = workdir / "link"
    link.symlink_to("real")
    write(api, link, b"new")
    assert link.is_symlink()
    assert os.readlink(link) == "real"
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(os.listdir(workdir)) == ["link", "real"]


@pytest.mark.parametrize("absolute", [False, True], ids=["relative", "absolute"])
def test_follow_link_into_another_directory_replaces_the_file_there(
    workdir: Path, staging: str, absolute: bool
) -> None:
    here, there = workdir / "here", workdir / "there"
    here.mkdir()
    there.mkdir()
    target = there / "real"
    target.write_bytes(b"old")
    target.chmod(0o604)
    link = here / "link"
    link.symlink_to(target if absolute else Path("..", "there", "real"))
    crashsafe.atomic_write(link, b"new")
    assert link.is_symlink()
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o604
    assert os.listdir(here) == ["link"]
    assert os.listdir(there) == ["real"]
    assert leftovers_anywhere(workdir) == []


def test_follow_relative_link_given_by_a_relative_path(
    workdir: Path, staging: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "sub").mkdir()
    (workdir / "sub" / "real").write_bytes(b"old")
    (workdir / "link").symlink_to("sub/real")
    monkeypatch.chdir(workdir)
    crashsafe.atomic_write("link", b"new")
    assert (workdir / "sub" / "real").read_bytes() == b"new"
    assert (workdir / "link").is_symlink()
    assert leftovers_anywhere(workdir) == []


@pytest.mark.parametrize("api", APIS)
def test_follow_a_chain_of_links_replaces_the_last_file(
    workdir: Path, staging: str, api: str
) -> None:
    # a -> sub/b -> ../c -> /abs/real: relative, across directories, absolute.
    sub = workdir / "sub"
    sub.mkdir()
    real = workdir / "real"
    real.write_bytes(b"old")
    real.chmod(0o600)
    (workdir / "c").symlink_to(real)
    (sub / "b").symlink_to("../c")
    (workdir / "a").symlink_to("sub/b")
    write(api, workdir / "a", b"new")
    assert real.read_bytes() == b"new"
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert os.readlink(workdir / "a") == "sub/b"
    assert os.readlink(sub / "b") == "../c"
    assert os.readlink(workdir / "c") == str(real)
    assert leftovers_anywhere(workdir) == []


def test_follow_a_chain_as_long_as_open_follows(workdir: Path, staging: str) -> None:
    # Linux follows up to 40 links (MAXSYMLINKS); what open() can write, so must crashsafe.
    for i in range(40):
        (workdir / f"l{i}").symlink_to(f"l{i + 1}")
    with open(workdir / "l0", "wb") as f:
        f.write(b"by open")
    assert (workdir / "l40").read_bytes() == b"by open"
    crashsafe.atomic_write(workdir / "l0", b"by crashsafe")
    assert (workdir / "l40").read_bytes() == b"by crashsafe"
    assert (workdir / "l0").is_symlink()


@pytest.mark.parametrize("api", APIS)
def test_dangling_link_creates_its_target(workdir: Path, staging: str, api: str) -> None:
    link = workdir / "link"
    link.symlink_to("new")
    write(api, link, b"data")
    assert link.is_symlink()
    assert os.readlink(link) == "new"
    assert (workdir / "new").read_bytes() == b"data"
    assert stat.S_ISREG((workdir / "new").lstat().st_mode)


def test_dangling_link_into_a_missing_directory_raises_file_not_found(
    workdir: Path, staging: str
) -> None:
    link = workdir / "link"
    link.symlink_to("missing/new")
    with pytest.raises(FileNotFoundError):
        crashsafe.atomic_write(link, b"data")
    assert os.listdir(workdir) == ["link"]
    assert os.readlink(link) == "missing/new"


@pytest.mark.parametrize("api", APIS)
def test_no_follow_replaces_the_link_and_leaves_its_target_untouched(
    workdir: Path, staging: str, api: str
) -> None:
    target = workdir / "real"
    target.write_bytes(b"old")
    target.chmod(0o600)
    before = snapshot(target)
    link = workdir / "link"
    link.symlink_to("real")
    write(api, link, b"new", follow_symlinks=False)
    assert not link.is_symlink()
    assert stat.S_ISREG(link.lstat().st_mode)
    assert link.read_bytes() == b"new"
    assert snapshot(target) == before


@pytest.mark.parametrize("kind", ["dangling", "loop", "directory"])
def test_no_follow_replaces_any_link_with_a_regular_file(
    workdir: Path, staging: str, kind: str
) -> None:
    (workdir / "dir").mkdir()
    link = workdir / "link"
    link.symlink_to({"dangling": "nowhere", "loop": "link", "directory": "dir"}[kind])
    crashsafe.atomic_write(link, b"new", follow_symlinks=False)
    assert stat.S_ISREG(link.lstat().st_mode)
    assert link.read_bytes() == b"new"
    assert os.listdir(workdir / "dir") == []
    assert not (workdir / "nowhere").exists()


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("loop", ["self", "pair"])
def test_symlink_loop_raises_eloop(workdir: Path, staging: str, api: str, loop: str) -> None:
    a, b = workdir / "a", workdir / "b"
    if loop == "self":
        a.symlink_to("a")
    else:
        a.symlink_to("b")
        b.symlink_to("a")
    with pytest.raises(OSError, match="symbolic links") as info:
        write(api, a, b"new")
    assert info.value.errno == errno.ELOOP
    assert os.readlink(a) == ("a" if loop == "self" else "b")
    assert sorted(os.listdir(workdir)) == (["a"] if loop == "self" else ["a", "b"])


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("spelling", ["dir", "dir/", "./dir"])
def test_link_to_a_directory_raises_is_a_directory(
    workdir: Path, staging: str, api: str, spelling: str
) -> None:
    directory = workdir / "dir"
    directory.mkdir()
    link = workdir / "link"
    link.symlink_to(spelling)
    with pytest.raises(IsADirectoryError):
        write(api, link, b"new")
    assert os.listdir(directory) == []
    assert os.readlink(link) == spelling


def test_append_through_a_link_appends_to_its_target(workdir: Path, staging: str) -> None:
    target = workdir / "log"
    target.write_bytes(b"one\n")
    target.chmod(0o620)
    (workdir / "link").symlink_to("log")
    with crashsafe.atomic_open(workdir / "link", "ab") as f:
        f.write(b"two\n")
    assert target.read_bytes() == b"one\ntwo\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o620
    assert (workdir / "link").is_symlink()


def test_create_only_through_a_link_to_an_existing_file_raises(workdir: Path, staging: str) -> None:
    (workdir / "real").write_bytes(b"old")
    (workdir / "link").symlink_to("real")
    with pytest.raises(FileExistsError):
        crashsafe.atomic_write(workdir / "link", b"new", overwrite=False)
    assert (workdir / "real").read_bytes() == b"old"
    assert (workdir / "link").is_symlink()


CREATE_ONLY = ["atomic_write overwrite=False", "atomic_open x", "atomic_open xb", "AtomicFile xb"]


def create_only(how: str, path: Path, follow_symlinks: bool) -> None:
    if how.startswith("atomic_write"):
        crashsafe.atomic_write(path, b"new", overwrite=False, follow_symlinks=follow_symlinks)
    elif how.startswith("atomic_open"):
        mode = how.split()[1]
        with crashsafe.atomic_open(path, mode, follow_symlinks=follow_symlinks) as f:
            f.write("new" if mode == "x" else b"new")
    else:
        with crashsafe.AtomicFile(path, "xb", follow_symlinks=follow_symlinks) as af:
            af.file.write(b"new")


# Where each link points; the entry at the path exists in every case.
LINKS = {
    "dangling": "new",
    "dangling into another directory": "sub/new",
    "to a file": "real",
    "to a directory": "sub",
    "to itself": "link",
}


@pytest.mark.parametrize("follow_symlinks", [True, False])
@pytest.mark.parametrize("how", CREATE_ONLY)
@pytest.mark.parametrize("points_to", LINKS.values(), ids=LINKS.keys())
def test_create_only_refuses_any_link_at_the_path_and_creates_nothing(
    workdir: Path, staging: str, how: str, points_to: str, follow_symlinks: bool
) -> None:
    # As open(path, "x") and O_EXCL: create-only exists to refuse a planted
    # link, not to create the file it points to.
    (workdir / "sub").mkdir()
    (workdir / "real").write_bytes(b"old")
    link = workdir / "link"
    link.symlink_to(points_to)
    with pytest.raises(FileExistsError) as caught:
        create_only(how, link, follow_symlinks)
    assert caught.value.errno == errno.EEXIST
    assert caught.value.filename == str(link)
    assert sorted(os.listdir(workdir)) == ["link", "real", "sub"]
    assert os.listdir(workdir / "sub") == []
    assert os.readlink(link) == points_to
    assert (workdir / "real").read_bytes() == b"old"


@pytest.mark.parametrize("how", CREATE_ONLY)
def test_create_only_refuses_a_directory_at_the_path(workdir: Path, staging: str, how: str) -> None:
    (workdir / "dir").mkdir()
    with pytest.raises(FileExistsError):
        create_only(how, workdir / "dir", True)
    assert os.listdir(workdir) == ["dir"]
    assert os.listdir(workdir / "dir") == []


def test_a_dangling_link_planted_before_a_create_only_commit_makes_it_fail(
    workdir: Path, staging: str
) -> None:
    # The commit publishes at the path's own name, atomically refusing any entry
    # that appeared there after the file was staged; it never follows the link.
    link = workdir / "link"
    staged = crashsafe.AtomicFile(link, "xb")
    staged.file.write(b"new")
    link.symlink_to("planted")
    with pytest.raises(FileExistsError):
        staged.commit()
    assert os.listdir(workdir) == ["link"]
    assert os.readlink(link) == "planted"


def test_create_only_with_nothing_at_the_path_creates_it(workdir: Path, staging: str) -> None:
    crashsafe.atomic_write(workdir / "new", b"data", overwrite=False)
    assert (workdir / "new").read_bytes() == b"data"
    assert stat.S_ISREG((workdir / "new").lstat().st_mode)


def test_write_file_atomic_replaces_a_link_instead_of_following_it(
    workdir: Path, staging: str
) -> None:
    outside = workdir / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"keep")
    victim.chmod(0o644)
    before = snapshot(victim)
    (workdir / "name").symlink_to(victim)
    crashsafe.write_file_atomic(workdir, "name", b"data", 0o600)
    assert not (workdir / "name").is_symlink()
    assert (workdir / "name").read_bytes() == b"data"
    assert stat.S_IMODE((workdir / "name").stat().st_mode) == 0o600
    assert snapshot(victim) == before
    assert leftovers_anywhere(workdir) == []
