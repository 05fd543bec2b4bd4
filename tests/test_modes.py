"""Modes and the two exits: replace, create-only, append; commit on success, discard on error.

Text modes behave as open() does; the staged file is a real file object.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import stat
import zipfile
from pathlib import Path

import pytest

import crashsafe
from tests.harness.checks import entries

WRITE_MODES = ["w", "wt", "wb"]
CREATE_MODES = ["x", "xt", "xb"]
APPEND_MODES = ["a", "at", "ab"]
ALL_MODES = WRITE_MODES + CREATE_MODES + APPEND_MODES


def payload(mode: str, text: str) -> str | bytes:
    return text.encode() if "b" in mode else text


# ---------------------------------------------------------------- what each mode publishes


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
@pytest.mark.parametrize("mode", WRITE_MODES)
def test_write_modes_publish_exactly_the_new_content(
    workdir: Path, staging: str, mode: str, existing: bool
) -> None:
    target = workdir / "f"
    if existing:
        target.write_bytes(b"a much longer old content")
    with crashsafe.atomic_open(target, mode) as f:
        f.write(payload(mode, "new"))
        if existing:
            assert target.read_bytes() == b"a much longer old content"
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("mode", CREATE_MODES)
def test_create_only_modes_create_a_new_file(workdir: Path, staging: str, mode: str) -> None:
    target = workdir / "f"
    with crashsafe.atomic_open(target, mode) as f:
        f.write(payload(mode, "new"))
        assert not target.exists()
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("mode", CREATE_MODES)
def test_create_only_modes_refuse_an_existing_target(
    workdir: Path, staging: str, mode: str
) -> None:
    target = workdir / "f"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError) as info, crashsafe.atomic_open(target, mode) as f:
        f.write(payload(mode, "new"))
    assert info.value.filename == str(target)
    assert target.read_bytes() == b"old"
    assert entries(workdir) == ["f"]


def test_overwrite_false_refuses_an_existing_target(workdir: Path, staging: str) -> None:
    target = workdir / "f"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        crashsafe.atomic_write(target, b"new", overwrite=False)
    assert target.read_bytes() == b"old"
    crashsafe.atomic_write(workdir / "g", b"new", overwrite=False)
    assert (workdir / "g").read_bytes() == b"new"


@pytest.mark.parametrize("mode", CREATE_MODES)
def test_create_only_refuses_a_target_that_appears_before_commit(
    workdir: Path, staging: str, mode: str
) -> None:
    # The check is the atomic publish itself, not a look before the write.
    target = workdir / "f"
    af = crashsafe.AtomicFile(target, mode)
    af.file.write(payload(mode, "mine"))
    target.write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        af.commit()
    assert target.read_bytes() == b"theirs"
    assert entries(workdir) == ["f"]
    af.discard()  # a no-op now: the failed commit already discarded
    assert target.read_bytes() == b"theirs"


@pytest.mark.parametrize("mode", APPEND_MODES)
def test_append_modes_publish_old_and_new_content_at_once(
    workdir: Path, staging: str, mode: str
) -> None:
    target = workdir / "log"
    target.write_bytes(b"one\n")
    inode = target.stat().st_ino
    with crashsafe.atomic_open(target, mode) as f:
        f.write(payload(mode, "two\n"))
        f.flush()
        assert target.read_bytes() == b"one\n"
        assert target.stat().st_ino == inode
        f.write(payload(mode, "three\n"))
    assert target.read_bytes() == b"one\ntwo\nthree\n"


@pytest.mark.parametrize("mode", APPEND_MODES)
def test_append_to_a_missing_file_creates_it(workdir: Path, staging: str, mode: str) -> None:
    target = workdir / "log"
    with crashsafe.atomic_open(target, mode) as f:
        f.write(payload(mode, "first\n"))
    assert target.read_bytes() == b"first\n"


def test_append_position_and_seek_behave_as_with_open(workdir: Path, staging: str) -> None:
    ours, theirs = workdir / "ours", workdir / "theirs"
    big = os.urandom(3 << 20)  # larger than one copy chunk
    for path in (ours, theirs):
        path.write_bytes(big)
    results = []
    for path, opener in ((ours, crashsafe.atomic_open), (theirs, open)):
        with opener(path, "ab") as f:
            start = f.tell()
            f.seek(0)
            f.write(b"end")  # O_APPEND: lands at the end whatever the position
            results.append(start)
    assert results == [len(big), len(big)]
    assert ours.read_bytes() == theirs.read_bytes() == big + b"end"


# ---------------------------------------------------------------- the two exits


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("mode", ALL_MODES)
def test_exception_in_block_leaves_target_unchanged(
    workdir: Path, staging: str, mode: str, error: type[BaseException]
) -> None:
    target = workdir / "f"
    if not mode.startswith("x"):
        target.write_bytes(b"old")
        target.chmod(0o640)
    with pytest.raises(error), crashsafe.atomic_open(target, mode) as f:
        f.write(payload(mode, "partial" * 1000))
        f.flush()
        raise error
    if mode.startswith("x"):
        assert entries(workdir) == []
    else:
        assert target.read_bytes() == b"old"
        assert stat.S_IMODE(target.stat().st_mode) == 0o640
        assert entries(workdir) == ["f"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomicfile_with_block_discards_on_exception(
    workdir: Path, staging: str, error: type[BaseException]
) -> None:
    target = workdir / "f"
    target.write_bytes(b"old")
    with pytest.raises(error), crashsafe.AtomicFile(target, "wb") as af:
        af.file.write(b"partial")
        raise error
    assert target.read_bytes() == b"old"
    assert repr(af).endswith("discarded>")


def test_normal_exit_of_atomicfile_commits(workdir: Path, staging: str) -> None:
    target = workdir / "f"
    with crashsafe.AtomicFile(target, "wb") as af:
        assert isinstance(af, crashsafe.AtomicFile)
        af.file.write(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new"


def test_commit_twice_raises(workdir: Path, staging: str) -> None:
    target = workdir / "f"
    af = crashsafe.AtomicFile(target, "wb")
    af.file.write(b"first")
    af.commit()
    with pytest.raises(ValueError, match="already committed"):
        af.commit()
    assert target.read_bytes() == b"first"


def test_discard_after_commit_is_a_no_op(workdir: Path, staging: str) -> None:
    target = workdir / "f"
    af = crashsafe.AtomicFile(target, "wb")
    af.file.write(b"kept")
    af.commit()
    af.discard()
    af.discard()
    assert target.read_bytes() == b"kept"


def test_commit_after_discard_raises(workdir: Path, staging: str) -> None:
    target = workdir / "f"
    target.write_bytes(b"old")
    af = crashsafe.AtomicFile(target, "wb")
    af.file.write(b"dropped")
    af.discard()
    af.discard()  # twice is fine too
    with pytest.raises(ValueError, match="already discarded"):
        af.commit()
    assert target.read_bytes() == b"old"
    assert entries(workdir) == ["f"]


def test_garbage_collected_open_atomicfile_is_discarded_with_a_warning(
    workdir: Path, staging: str
) -> None:
    target = workdir / "f"
    target.write_bytes(b"old")
    af = crashsafe.AtomicFile(target, "wb")
    af.file.write(b"forgotten")
    with pytest.warns(ResourceWarning, match="never committed or discarded"):
        del af
        gc.collect()
    assert target.read_bytes() == b"old"
    assert entries(workdir) == ["f"]


@pytest.mark.parametrize("how", ["atomic_open", "AtomicFile"])
def test_closing_the_file_inside_the_block_still_commits(
    workdir: Path, staging: str, how: str
) -> None:
    target = workdir / "f"
    target.write_bytes(b"old")
    if how == "atomic_open":
        with crashsafe.atomic_open(target, "wb") as f:
            f.write(b"new")
            f.close()
    else:
        with crashsafe.AtomicFile(target, "wb") as af:
            af.file.write(b"new")
            af.file.close()
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("durability", ["durable", "consistent", "none"])
@pytest.mark.parametrize("mode", ["wb", "xb", "ab", "w"])
def test_every_durability_level_publishes_the_content(
    workdir: Path, staging: str, durability: str, mode: str
) -> None:
    target = workdir / "f"
    if mode != "xb":
        target.write_bytes(b"old,")
    with crashsafe.atomic_open(target, mode, durability=durability) as f:  # type: ignore[arg-type]
        f.write(payload(mode, "new"))
    assert target.read_bytes() == (b"old,new" if mode == "ab" else b"new")
    crashsafe.atomic_write(target, b"again", durability=durability)  # type: ignore[arg-type]
    assert target.read_bytes() == b"again"


# ---------------------------------------------------------------- text, as open() does it

TEXT = "héllo\nwörld\r\nmac\rend\n"


@pytest.mark.parametrize("newline", [None, "", "\n", "\r\n", "\r"])
@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "utf-16"])
@pytest.mark.parametrize("mode", ["w", "wt", "x", "xt"])
def test_text_modes_write_what_open_writes(
    workdir: Path, staging: str, mode: str, encoding: str, newline: str | None
) -> None:
    ours, theirs = workdir / "ours", workdir / "theirs"
    text = TEXT + ("€" if encoding != "latin-1" else "")
    with crashsafe.atomic_open(ours, mode, encoding=encoding, newline=newline) as f:
        f.write(text)
    with open(theirs, mode, encoding=encoding, newline=newline) as f:
        f.write(text)
    assert ours.read_bytes() == theirs.read_bytes()
    assert ours.read_bytes().decode(encoding).startswith("héllo")


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "utf-16"])
@pytest.mark.parametrize("mode", ["a", "at"])
def test_text_append_writes_what_open_writes(
    workdir: Path, staging: str, mode: str, encoding: str
) -> None:
    # utf-16 shows it best: an append must not put a second BOM in the middle.
    ours, theirs = workdir / "ours", workdir / "theirs"
    for path in (ours, theirs):
        path.write_text("first\n", encoding=encoding)
    with crashsafe.atomic_open(ours, mode, encoding=encoding) as f:
        f.write("second\n")
    with open(theirs, mode, encoding=encoding) as f:
        f.write("second\n")
    assert ours.read_bytes() == theirs.read_bytes()
    assert ours.read_text(encoding=encoding) == "first\nsecond\n"


@pytest.mark.parametrize("errors", ["replace", "ignore", "xmlcharrefreplace", "backslashreplace"])
def test_text_errors_argument_behaves_as_with_open(
    workdir: Path, staging: str, errors: str
) -> None:
    ours, theirs = workdir / "ours", workdir / "theirs"
    with crashsafe.atomic_open(ours, "w", encoding="ascii", errors=errors) as f:
        f.write("naïve €")
    with open(theirs, "w", encoding="ascii", errors=errors) as f:
        f.write("naïve €")
    assert ours.read_bytes() == theirs.read_bytes()


def test_unencodable_text_raises_and_leaves_target_unchanged(workdir: Path, staging: str) -> None:
    target = workdir / "f"
    target.write_bytes(b"old")
    with (
        pytest.raises(UnicodeEncodeError),
        crashsafe.atomic_open(target, "w", encoding="latin-1", errors="strict") as f,
    ):
        f.write("fine, then €")
    assert target.read_bytes() == b"old"


# ---------------------------------------------------------------- a real file object


def test_file_object_is_a_real_seekable_file(workdir: Path, staging: str) -> None:
    target = workdir / "f"
    with crashsafe.atomic_open(target, "wb") as f:
        assert stat.S_ISREG(os.fstat(f.fileno()).st_mode)
        f.write(b"hello world")
        assert f.tell() == 11
        f.seek(0)
        f.write(b"J")
        f.seek(0, os.SEEK_END)
        f.write(b"!")
        f.flush()
        assert os.pread(f.fileno(), 100, 0) == b"Jello world!"
    assert target.read_bytes() == b"Jello world!"


def test_json_dump_into_atomic_open(workdir: Path, staging: str) -> None:
    target = workdir / "state.json"
    state = {"name": "crashsafe", "list": [1, 2, 3], "text": "é"}
    with crashsafe.atomic_open(target, "w", encoding="utf-8") as f:
        json.dump(state, f)
    assert json.loads(target.read_text(encoding="utf-8")) == state


def test_pickle_dump_into_atomic_open(workdir: Path, staging: str) -> None:
    target = workdir / "state.pickle"
    state = {"a": [1, 2.5, None], "b": b"\x00\xff"}
    with crashsafe.atomic_open(target, "wb") as f:
        pickle.dump(state, f)
    with open(target, "rb") as f:
        assert pickle.load(f) == state  # noqa: S301 - our own file, just written


def test_zipfile_writes_into_atomic_open(workdir: Path, staging: str) -> None:
    # zipfile seeks back to patch headers: it needs tell() and seek() of a real file.
    target = workdir / "archive.zip"
    big = os.urandom(200_000)
    with crashsafe.atomic_open(target, "wb") as f, zipfile.ZipFile(f, "w") as z:
        z.writestr("a.txt", "hello")
        with z.open("big.bin", "w") as member:
            member.write(big)
    with zipfile.ZipFile(target) as z:
        assert z.testzip() is None
        assert z.read("a.txt") == b"hello"
        assert z.read("big.bin") == big


def test_committed_tells_replaced_from_not(workdir: Path, staging: str) -> None:
    target = workdir / "t"
    staged = crashsafe.AtomicFile(target)
    assert not staged.committed
    staged.file.write(b"new")
    staged.commit()
    assert staged.committed
    assert target.read_bytes() == b"new"
    dropped = crashsafe.AtomicFile(target)
    dropped.discard()
    assert not dropped.committed
    assert target.read_bytes() == b"new"


def test_explicit_commit_or_discard_inside_the_block_is_final(workdir: Path, staging: str) -> None:
    target = workdir / "t"
    with crashsafe.AtomicFile(target) as staged:
        staged.file.write(b"committed inside")
        staged.commit()
    assert target.read_bytes() == b"committed inside"
    with crashsafe.AtomicFile(target) as staged:
        staged.file.write(b"thrown away")
        staged.discard()
    assert target.read_bytes() == b"committed inside"
    assert not staged.committed
