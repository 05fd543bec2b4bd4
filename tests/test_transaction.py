"""transaction(directory): several files published together, recovery, snapshot readers.

What is proven here, on real filesystems, without mocking the os:

* Writes and removes inside one ``with crashsafe.transactions.transaction(d)``
  block appear together when the block ends, with exact modes (``perm``), the
  mode of the replaced file, or the umask default for a new file; a symlink at
  a name is replaced, never followed. An exception in the block
  (``KeyboardInterrupt`` included) publishes nothing and leaves nothing
  staged. Bad and reserved names, wrong data types, a directory to remove and
  use after commit or discard are refused.
* Recovery: a commit killed right after each of its syscalls (strace freezes
  the writer there, then SIGKILL) always recovers to all old (killed before
  the journal existed) or all new (after), never a mix, with no protocol
  names left and no file ever more permissive than its final mode. Crashed
  states built by hand recover the same way; ``transaction()`` and
  ``snapshot()`` recover by themselves; a journal crashsafe did not write is
  refused and changes nothing.
* Permissions: the syscall that creates each staged file and the journal asks
  for no group or other bits (seen with strace).
* Concurrency: readers that use ``snapshot()`` while several processes commit
  four-file generations never see a mix; readers that open the files directly
  do (the control), which is what makes the first result mean something.

Several tests here first showed bugs, since fixed in ``src``: an explicit
discard in the block, a snapshot read after its block, staged names with a gap,
a journal naming other files as staged, and an error after the journal's link
(its directory fsync, a held-back SIGINT) that unstaged a committed transaction.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crashsafe.transactions import (
    JOURNAL,
    LOCK,
    STAGED,
    Transaction,
    recover,
    snapshot,
    transaction,
)
from tests.children import blocked_in_flock, wait_until
from tests.children import run as run_child
from tests.children import start as start_child
from tests.harness import crash
from tests.harness.checks import leftovers
from tests.harness.inject import fault, run_traced
from tests.harness.require import require_root, require_tools
from tests.harness.summary import module_summary

_note, _print_summary = module_summary("transaction summary")


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def state_of(directory: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """Every entry: kind, mode and content (or link target), to prove "nothing changed"."""
    found: dict[str, tuple[str, int, bytes | str]] = {}
    for name in listing(directory):
        st = os.lstat(directory / name)
        if stat.S_ISLNK(st.st_mode):
            found[name] = ("link", 0, os.readlink(directory / name))
        elif stat.S_ISDIR(st.st_mode):
            found[name] = ("dir", stat.S_IMODE(st.st_mode), "")
        else:
            found[name] = ("file", stat.S_IMODE(st.st_mode), (directory / name).read_bytes())
    return found


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    saved = os.umask(0o022)
    os.umask(saved)

    def set_umask(value: int) -> None:
        os.umask(value)

    try:
        yield set_umask
    finally:
        os.umask(saved)


# --------------------------------------------------------------------------- publishing


def test_writes_and_removes_publish_together(workdir: Path, staging: str) -> None:
    (workdir / "a").write_bytes(b"old a")
    (workdir / "b").write_bytes(b"old b")
    (workdir / "gone").write_bytes(b"old gone")
    with transaction(workdir) as tx:
        tx.write("a", b"new a")
        tx.write("c", "new c \N{SNOWMAN}")
        tx.remove("gone")
        # Nothing is visible at any path before the commit.
        assert (workdir / "a").read_bytes() == b"old a"
        assert not (workdir / "c").exists()
        assert (workdir / "gone").read_bytes() == b"old gone"
        assert not tx.committed
    assert tx.committed
    assert (workdir / "a").read_bytes() == b"new a"
    assert (workdir / "b").read_bytes() == b"old b"
    assert (workdir / "c").read_bytes() == "new c \N{SNOWMAN}".encode()
    assert not (workdir / "gone").exists()
    assert listing(workdir) == [LOCK, "a", "b", "c"]


def test_accepts_bytes_like_and_str(workdir: Path, staging: str) -> None:
    with transaction(workdir) as tx:
        tx.write("bytes", b"1")
        tx.write("bytearray", bytearray(b"2"))
        tx.write("memoryview", memoryview(b"x3y")[1:2])
        tx.write("str", "\N{GREEK SMALL LETTER ALPHA}")
    assert {n: (workdir / n).read_bytes() for n in listing(workdir) if n != LOCK} == {
        "bytes": b"1",
        "bytearray": b"2",
        "memoryview": b"3",
        "str": "\N{GREEK SMALL LETTER ALPHA}".encode(),
    }


@pytest.mark.parametrize("perm", [0o600, 0o640, 0o644, 0o755, 0o400])
def test_perm_is_exact_whatever_the_umask(
    workdir: Path, staging: str, umask: Callable[[int], None], perm: int
) -> None:
    umask(0o077)
    (workdir / "old").write_bytes(b"x")
    os.chmod(workdir / "old", 0o666)  # noqa: S103 - replaced by an exact perm
    with transaction(workdir) as tx:
        tx.write("new", b"n", perm=perm)
        tx.write("old", b"o", perm=perm)
    assert oct(mode_of(workdir / "new")) == oct(perm)
    assert oct(mode_of(workdir / "old")) == oct(perm)


@pytest.mark.parametrize("mode", [0o600, 0o604, 0o640, 0o751])
def test_without_perm_an_existing_file_keeps_its_mode(
    workdir: Path, staging: str, umask: Callable[[int], None], mode: int
) -> None:
    umask(0o022)
    (workdir / "f").write_bytes(b"old")
    os.chmod(workdir / "f", mode)
    with transaction(workdir) as tx:
        tx.write("f", b"new")
    assert (workdir / "f").read_bytes() == b"new"
    assert oct(mode_of(workdir / "f")) == oct(mode)


def test_without_perm_an_existing_file_keeps_its_owner(workdir: Path, staging: str) -> None:
    require_root()
    (workdir / "f").write_bytes(b"old")
    os.chown(workdir / "f", 65534, 65534)
    with transaction(workdir) as tx:
        tx.write("f", b"new")
    st = os.stat(workdir / "f")
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert (workdir / "f").read_bytes() == b"new"


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_a_new_file_gets_the_umask_default(
    workdir: Path, staging: str, umask: Callable[[int], None], mask: int, expected: int
) -> None:
    umask(mask)
    with transaction(workdir) as tx:
        tx.write("f", b"new")
    assert oct(mode_of(workdir / "f")) == oct(expected)


def test_a_symlink_at_a_name_is_replaced_not_followed(workdir: Path, staging: str) -> None:
    (workdir / "pointee").write_bytes(b"pointee")
    os.symlink("pointee", workdir / "link")
    os.symlink("nowhere", workdir / "dangling")
    os.symlink("pointee", workdir / "removed-link")
    with transaction(workdir) as tx:
        tx.write("link", b"new link")
        tx.write("dangling", b"new dangling")
        tx.remove("removed-link")
    for name in ("link", "dangling"):
        assert stat.S_ISREG(os.lstat(workdir / name).st_mode), name
        assert (workdir / name).read_bytes() == f"new {name}".encode()
    assert (workdir / "pointee").read_bytes() == b"pointee"
    assert not (workdir / "nowhere").exists()
    assert not os.path.lexists(workdir / "removed-link")
    assert listing(workdir) == [LOCK, "dangling", "link", "pointee"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_exception_in_the_block_publishes_nothing(
    workdir: Path, staging: str, error: type[BaseException]
) -> None:
    (workdir / "a").write_bytes(b"old a")
    (workdir / "gone").write_bytes(b"old gone")
    os.chmod(workdir / "a", 0o640)
    before = state_of(workdir)
    with pytest.raises(error), transaction(workdir) as tx:
        tx.write("a", b"new a", perm=0o600)
        tx.write("new", b"new")
        tx.remove("gone")
        if staging == "named":
            # The staged files exist, under temporary names, until the end.
            assert len(leftovers(workdir)) == 2
        raise error("in the block")
    assert not tx.committed
    assert state_of(workdir) == {**before, LOCK: ("file", mode_of(workdir / LOCK), b"")}
    assert listing(workdir) == [LOCK, "a", "gone"]
    assert crash.protocol_leftovers(workdir) == []
    with pytest.raises(ValueError, match="discarded"):
        tx.write("a", b"again")


def test_writing_the_same_name_twice_last_wins(workdir: Path, staging: str) -> None:
    with transaction(workdir) as tx:
        tx.write("f", b"first", perm=0o600)
        tx.write("f", b"second", perm=0o644)
        if staging == "named":
            assert len(leftovers(workdir)) == 1  # the first staged file is gone at once
    assert (workdir / "f").read_bytes() == b"second"
    assert oct(mode_of(workdir / "f")) == oct(0o644)
    assert listing(workdir) == [LOCK, "f"]


def test_write_then_remove_and_remove_then_write(workdir: Path, staging: str) -> None:
    (workdir / "existing").write_bytes(b"old")
    (workdir / "rewritten").write_bytes(b"old")
    with transaction(workdir) as tx:
        tx.write("existing", b"new")
        tx.remove("existing")
        tx.write("never", b"new")
        tx.remove("never")
        tx.remove("rewritten")
        tx.write("rewritten", b"new")
    assert listing(workdir) == [LOCK, "rewritten"]
    assert (workdir / "rewritten").read_bytes() == b"new"


def test_removing_a_missing_file_is_fine(workdir: Path, staging: str) -> None:
    with transaction(workdir) as tx:
        tx.remove("missing")
        tx.write("a", b"a")
    assert tx.committed
    assert listing(workdir) == [LOCK, "a"]


@pytest.mark.parametrize("explicit", [False, True])
def test_removing_a_directory_raises_at_commit_and_publishes_nothing(
    workdir: Path, staging: str, explicit: bool
) -> None:
    (workdir / "a").write_bytes(b"old")
    (workdir / "sub").mkdir()
    (workdir / "sub" / "inner").write_bytes(b"inner")
    before = state_of(workdir)
    with pytest.raises(IsADirectoryError) as raised, transaction(workdir) as tx:
        tx.write("a", b"new")
        tx.write("b", b"new")
        tx.remove("sub")  # accepted now, refused at the commit
        if explicit:
            tx.commit()
    assert raised.value.errno == errno.EISDIR
    assert raised.value.filename == os.path.join(workdir, "sub")
    assert not tx.committed
    assert {n: v for n, v in state_of(workdir).items() if n != LOCK} == before
    assert (workdir / "sub" / "inner").read_bytes() == b"inner"
    assert crash.protocol_leftovers(workdir) == []
    with pytest.raises(ValueError, match="discarded"):
        tx.commit()


def test_writing_over_a_directory_or_a_fifo_raises_at_once(workdir: Path, staging: str) -> None:
    (workdir / "sub").mkdir()
    os.mkfifo(workdir / "fifo")
    with transaction(workdir) as tx:
        with pytest.raises(IsADirectoryError):
            tx.write("sub", b"x")
        with pytest.raises(OSError) as raised:
            tx.write("fifo", b"x")
        assert raised.value.errno == errno.EINVAL
        tx.write("ok", b"ok")
    assert listing(workdir) == [LOCK, "fifo", "ok", "sub"]


BAD_NAMES = ["", ".", "..", "a/b", "/abs", "sub/", "a\0b", Path("a/b"), b"a/b", b""]
RESERVED = [JOURNAL, LOCK, f"{STAGED}0", f"{STAGED}17", f"{STAGED}x", STAGED]


@pytest.mark.parametrize("name", BAD_NAMES + RESERVED, ids=repr)
def test_bad_and_reserved_names_raise_value_error(workdir: Path, staging: str, name: Any) -> None:
    with transaction(workdir) as tx:
        with pytest.raises(ValueError, match=r"name|reserved"):
            tx.write(name, b"x")
        with pytest.raises(ValueError, match=r"name|reserved"):
            tx.remove(name)
        assert leftovers(workdir) == []
        tx.write("ok", b"ok")  # the transaction is still usable
    assert listing(workdir) == [LOCK, "ok"]
    with snapshot(workdir) as snap:
        with pytest.raises(ValueError, match=r"name|reserved"):
            snap.read(name)
        with pytest.raises(ValueError, match=r"name|reserved"):
            snap.exists(name)


@pytest.mark.parametrize("name", [None, 3, 1.5, ["a"], object()], ids=repr)
def test_a_name_of_the_wrong_type_raises_type_error_naming_the_type(
    workdir: Path, staging: str, name: Any
) -> None:
    # A wrong type, not "not a single file name".
    with transaction(workdir) as tx:
        for op in (lambda: tx.write(name, b"x"), lambda: tx.remove(name)):
            with pytest.raises(TypeError) as raised:
                op()
            assert str(raised.value) == (
                f"name must be a file name (str, bytes or os.PathLike), not {type(name).__name__}"
            )
        tx.write("ok", b"ok")
    assert listing(workdir) == [LOCK, "ok"]
    with snapshot(workdir) as snap, pytest.raises(TypeError, match=r"os\.PathLike"):
        snap.read(name)


def test_names_may_be_path_like_or_bytes_as_paths_are(workdir: Path, staging: str) -> None:
    (workdir / "old").write_bytes(b"old")
    with transaction(workdir) as tx:
        tx.write(Path("a"), b"1")
        tx.write(b"b", b"2")
        tx.write("c", b"first")
        tx.write(Path("c"), b"second")  # one name, however spelled: the last wins
        tx.remove(Path("old"))
    assert listing(workdir) == [LOCK, "a", "b", "c"]
    with snapshot(workdir) as snap:
        assert [snap.read(Path("a")), snap.read(b"b"), snap.read("c")] == [b"1", b"2", b"second"]
        assert snap.exists(Path("a")) and not snap.exists(Path("old"))


@pytest.mark.parametrize("data", [5, None, 1.5, ["x"], {"a": 1}, object()], ids=repr)
def test_data_that_is_not_bytes_raises_type_error(workdir: Path, staging: str, data: Any) -> None:
    with transaction(workdir) as tx:
        with pytest.raises(TypeError, match="bytes or str"):
            tx.write("f", data)
        assert leftovers(workdir) == []
    assert listing(workdir) == [LOCK]


def test_operations_after_commit_or_discard_raise(workdir: Path, staging: str) -> None:
    with transaction(workdir) as tx:
        tx.write("a", b"1")
    assert tx.committed
    for op in (lambda: tx.write("b", b"x"), lambda: tx.remove("a"), tx.commit):
        with pytest.raises(ValueError, match="committed"):
            op()
    tx.discard()  # a no-op once committed
    assert (workdir / "a").read_bytes() == b"1"
    assert listing(workdir) == [LOCK, "a"]

    discarded = Transaction(workdir, "durable")
    discarded.write("b", b"x")
    discarded.discard()
    for op in (lambda: discarded.write("b", b"x"), lambda: discarded.remove("a"), discarded.commit):
        with pytest.raises(ValueError, match="discarded"):
            op()
    discarded.discard()
    assert not discarded.committed
    assert listing(workdir) == [LOCK, "a"]


def test_explicit_commit_inside_the_block(workdir: Path, staging: str) -> None:
    with transaction(workdir) as tx:
        tx.write("a", b"1")
        tx.remove("missing")
        tx.commit()
        assert tx.committed
        assert (workdir / "a").read_bytes() == b"1"  # visible before the block ends
        with pytest.raises(ValueError, match="committed"):
            tx.write("b", b"2")
    assert listing(workdir) == [LOCK, "a"]


def test_explicit_commit_then_an_exception_keeps_the_commit(workdir: Path, staging: str) -> None:
    with pytest.raises(RuntimeError), transaction(workdir) as tx:
        tx.write("a", b"1")
        tx.commit()
        raise RuntimeError("after the commit")
    assert tx.committed
    assert (workdir / "a").read_bytes() == b"1"
    assert listing(workdir) == [LOCK, "a"]


def test_explicit_discard_inside_the_block_publishes_nothing(workdir: Path, staging: str) -> None:
    (workdir / "a").write_bytes(b"old")
    with transaction(workdir) as tx:
        tx.write("a", b"new")
        tx.discard()
    assert not tx.committed
    assert (workdir / "a").read_bytes() == b"old"
    assert listing(workdir) == [LOCK, "a"]


def test_an_empty_transaction_changes_nothing(workdir: Path, staging: str) -> None:
    (workdir / "a").write_bytes(b"a")
    before = state_of(workdir)
    with transaction(workdir) as tx:
        pass
    assert tx.committed
    assert {n: v for n, v in state_of(workdir).items() if n != LOCK} == before
    assert listing(workdir) == [LOCK, "a"]


@pytest.mark.parametrize("durability", ["durable", "consistent", "none"])
def test_durability_levels_publish_and_fsync_as_documented(
    workdir: Path, staging: str, durability: str
) -> None:
    """Every level publishes; ``none`` fsyncs nothing; the others fsync every staged file
    and the journal before the commit point, and ``durable`` the directory after the
    journal is gone (its end state is on disk when the call returns)."""
    (workdir / "gone").write_bytes(b"old")
    child = run_traced(
        f"""
        from crashsafe.transactions import transaction
        with transaction({str(workdir)!r}, durability={durability!r}) as tx:
            tx.write("a", b"1")
            tx.write("b", b"2")
            tx.remove("gone")
        report(ok=True)
        """,
        trace=["fsync", "fdatasync", "unlinkat"],
        staging=staging,
    )
    assert child.returncode == 0, child.stderr
    assert listing(workdir) == [LOCK, "a", "b"]
    assert (workdir / "a").read_bytes() == b"1"
    syncs = [line for line in child.log if "fsync(" in line or "fdatasync(" in line]
    if durability == "none":
        assert syncs == []
        return
    file_syncs = [s for s in syncs if f"<{workdir}/" in s]
    dir_syncs = [s for s in syncs if f"<{workdir}>)" in s]
    assert len(file_syncs) >= 3, syncs  # two staged files and the journal
    assert len(dir_syncs) >= 2, syncs  # the staged names, then the journal
    journal_gone = next(
        i for i, line in enumerate(child.log) if "unlinkat(" in line and JOURNAL in line
    )
    after = [line for line in child.log[journal_gone:] if f"<{workdir}>)" in line]
    if durability == "durable":
        assert after, "durable: no directory fsync after the journal was removed"


def test_an_invalid_durability_raises(workdir: Path) -> None:
    with pytest.raises(ValueError, match="durability"), transaction(workdir, durability="fast"):  # type: ignore[arg-type]
        pass
    assert crash.protocol_leftovers(workdir) == []
    assert listing(workdir) == []  # refused before recovery made the lock file


def test_two_open_transactions_the_last_commit_wins(workdir: Path, staging: str) -> None:
    with transaction(workdir) as first:
        first.write("a", b"first")
        first.write("c", b"first")
        with transaction(workdir) as second:
            second.write("a", b"second")
            second.write("b", b"second")
        assert (workdir / "a").read_bytes() == b"second"
        assert not (workdir / "c").exists()  # first's staged files are its own
    assert {n: (workdir / n).read_bytes() for n in ("a", "b", "c")} == {
        "a": b"first",
        "b": b"second",
        "c": b"first",
    }
    assert listing(workdir) == [LOCK, "a", "b", "c"]


def test_a_directory_replaced_before_the_commit_gets_the_whole_transaction(
    workdir: Path, staging: str
) -> None:
    # The transaction pins the directory it staged in: renamed away and a new
    # one put at its path between write() and commit, the commit (journal,
    # staged names, renames) lands wholly in the pinned one, as a single
    # AtomicFile does; the new directory is not touched. Before the pin, the
    # journal went to the new directory, which made the staged files (in the
    # old one) look already renamed: commit returned, and nothing was published.
    pinned, moved = workdir / "d", workdir / "moved"
    pinned.mkdir()
    (pinned / "a").write_bytes(b"old a")
    (pinned / "gone").write_bytes(b"old")
    with transaction(pinned) as tx:
        tx.write("a", b"new a")
        tx.write("b", b"new b")
        tx.remove("gone")
        pinned.rename(moved)
        pinned.mkdir()
        (pinned / "a").write_bytes(b"other a")
    assert tx.committed
    assert recover(moved) is False
    assert recover(pinned) is False
    assert listing(moved) == [LOCK, "a", "b"]
    assert [(moved / n).read_bytes() for n in ("a", "b")] == [b"new a", b"new b"]
    assert listing(pinned) == [LOCK, "a"]  # the lock from recover(), and its own file
    assert (pinned / "a").read_bytes() == b"other a"


def fds_under(directory: Path) -> list[str]:
    """What this process's open descriptors under *directory* point at."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # closed since the listing
            continue
        if target == str(directory) or target.startswith(f"{directory}/"):
            found.append(target)
    return found


def test_a_transaction_dropped_open_is_discarded_with_a_warning(workdir: Path) -> None:
    # It holds its directory open from the first write: dropped without a
    # commit or a discard, it says so and closes it, publishing nothing.
    import gc

    (workdir / "a").write_bytes(b"old")
    tx = Transaction(workdir, "durable")
    tx.write("a", b"new")
    # Counted by what they point at, not in total: the collection below may
    # also close another test's garbage, and server threads open their own.
    assert len(fds_under(workdir)) == 2  # the directory and the staged file
    with pytest.warns(ResourceWarning, match="never committed or discarded"):
        del tx
        gc.collect()
    assert fds_under(workdir) == []
    assert listing(workdir) == ["a"]
    assert (workdir / "a").read_bytes() == b"old"


# --------------------------------------------------------------------------- snapshot


def test_snapshot_reads_one_generation(workdir: Path, staging: str) -> None:
    with transaction(workdir) as tx:
        crash.write_generation(tx, 3)
    os.symlink("a", workdir / "link")
    with snapshot(workdir) as snap:
        assert crash.classify_generation(lambda n: snap.read(n) if snap.exists(n) else None) == 3
        assert snap.read("a") == crash.generation_data(3, "a")
        assert snap.exists("a")
        assert not snap.exists("missing")
        with pytest.raises(FileNotFoundError):
            snap.read("missing")
        with pytest.raises(OSError) as raised:
            snap.read("link")  # a transaction never writes a symlink
        assert raised.value.errno == errno.ELOOP


def test_a_snapshot_cannot_be_read_after_its_block(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "one" / "a").write_bytes(b"one")
    (tmp_path / "two" / "a").write_bytes(b"two")
    with snapshot(tmp_path / "one") as snap:
        assert snap.read("a") == b"one"
    fd = os.open(tmp_path / "two", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ValueError):
            snap.read("a")
    finally:
        os.close(fd)


def test_a_transaction_inside_a_snapshot_of_the_same_directory_does_not_hang(
    tmp_path: Path,
) -> None:
    code = f"""
from crashsafe.transactions import snapshot, transaction
try:
    with snapshot({str(tmp_path)!r}):
        with transaction({str(tmp_path)!r}) as tx:
            tx.write("a", b"1")
except RuntimeError as e:
    print("raised RuntimeError", type(e).__name__)
else:
    print("committed")
"""
    done = run_child(code, prelude="", staging=None, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "raised RuntimeError SnapshotDeadlockError"
    assert crash.protocol_leftovers(tmp_path) == []


def _fork(work: Callable[[], dict[str, Any]]) -> tuple[int, int]:
    """Run *work* in a forked child; its result comes back as JSON through a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(read_end)
            try:
                result = work()
            except BaseException as e:
                result, code = {"error": repr(e)}, 1
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    return pid, read_end


def _collect(pid: int, read_end: int, timeout: float = 200) -> dict[str, Any]:
    chunks = []
    deadline = time.monotonic() + timeout
    with open(read_end, "rb") as f:
        while chunk := f.read(65536):
            chunks.append(chunk)
            assert time.monotonic() < deadline
    _, status = os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, result)
    return result


def test_a_commit_waits_for_an_open_snapshot(tmp_path: Path) -> None:
    with transaction(tmp_path) as tx:
        crash.write_generation(tx, 1)
    # A fresh interpreter: a forked child would inherit the snapshot's lock (flock
    # belongs to the open file description) and wait for itself forever.
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from crashsafe.transactions import transaction
from tests.harness import crash
print("ready", flush=True)
with transaction({str(tmp_path)!r}) as tx:
    crash.write_generation(tx, 2)
print("committed", flush=True)
"""
    with snapshot(tmp_path) as snap:
        writer = start_child(code, stdin=None, text=True)
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline() == "ready\n"
            # Queued in flock behind the snapshot (seen in /proc/locks, not
            # guessed from a sleep): nothing changed under the reader.
            wait_until(lambda: blocked_in_flock(writer.pid), timeout=120)
            assert crash.read_generation(tmp_path) == 1
            assert (
                crash.classify_generation(lambda n: snap.read(n) if snap.exists(n) else None) == 1
            )
            assert writer.poll() is None
        except BaseException:
            writer.kill()
            writer.wait()
            raise
    out, _ = writer.communicate(timeout=120)
    assert writer.returncode == 0
    assert out == "committed\n"
    assert crash.read_generation(tmp_path) == 2


# --------------------------------------------------------------------------- recovery


def _put(path: Path, data: bytes, perm: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, perm)
        os.write(fd, data)
    finally:
        os.close(fd)


def _journal(ops: list[list[Any]]) -> bytes:
    return json.dumps({"format": 1, "ops": ops}).encode()


def crashed_commit(directory: Path, *, journal: bool, staged: int = 4, applied: int = 0) -> None:
    """The state a commit of generation 2 over generation 1 leaves when it stops with
    *staged* files named ``.crashsafe-tx.N``, the journal written or not, and the
    first *applied* operations of the journal done (plain os calls)."""
    crash.put_generation(directory, 1)
    ops: list[list[Any]] = []
    for n, (name, perm) in enumerate(crash.TX_FILES.items()):
        if n < staged:
            _put(directory / f"{STAGED}{n}", crash.generation_data(2, name), perm)
        ops.append(["write", name, f"{STAGED}{n}"])
    ops.append(["remove", crash.TX_TOGGLE, None])
    if journal:
        _put(directory / JOURNAL, _journal(ops), 0o600)
    for op, name, staging in ops[:applied]:
        if op == "write":
            os.rename(directory / staging, directory / name)
        else:
            os.unlink(directory / name)


@pytest.mark.parametrize("applied", range(6))
def test_recover_completes_a_commit_whose_journal_exists(tmp_path: Path, applied: int) -> None:
    crashed_commit(tmp_path, journal=True, applied=applied)
    if 0 < applied < 5:
        assert str(crash.read_generation(tmp_path)).startswith("mixed")
    assert recover(tmp_path) is True
    assert crash.read_generation(tmp_path) == 2
    assert crash.protocol_leftovers(tmp_path) == []
    assert {n: mode_of(tmp_path / n) for n in crash.TX_FILES} == crash.TX_FILES
    assert listing(tmp_path) == sorted([LOCK, *crash.TX_FILES])
    assert recover(tmp_path) is False


@pytest.mark.parametrize("staged", range(1, 5))
def test_recover_removes_staged_files_without_a_journal(tmp_path: Path, staged: int) -> None:
    crashed_commit(tmp_path, journal=False, staged=staged)
    assert recover(tmp_path) is True
    assert crash.read_generation(tmp_path) == 1
    assert listing(tmp_path) == sorted([LOCK, *crash.TX_NAMES])
    assert recover(tmp_path) is False


def test_staged_files_with_a_gap_are_removed_and_never_block_a_commit(tmp_path: Path) -> None:
    crashed_commit(tmp_path, journal=False, staged=4)
    os.unlink(tmp_path / f"{STAGED}0")
    os.unlink(tmp_path / f"{STAGED}2")
    assert recover(tmp_path) is True
    assert crash.protocol_leftovers(tmp_path) == []
    assert crash.read_generation(tmp_path) == 1
    # Left again, they never block a commit: its own recovery finds them first.
    crashed_commit(tmp_path, journal=False, staged=4)
    os.unlink(tmp_path / f"{STAGED}0")
    with transaction(tmp_path) as tx:
        crash.write_generation(tx, 3)
    assert crash.read_generation(tmp_path) == 3
    assert crash.protocol_leftovers(tmp_path) == []


def test_recover_on_a_clean_directory_returns_false(tmp_path: Path) -> None:
    assert recover(tmp_path) is False
    assert listing(tmp_path) == [LOCK]
    with transaction(tmp_path) as tx:
        crash.write_generation(tx, 1)
    assert recover(tmp_path) is False
    assert crash.read_generation(tmp_path) == 1


@pytest.mark.parametrize(("journal", "expected"), [(True, 2), (False, 1)])
def test_transaction_entry_recovers_by_itself(tmp_path: Path, journal: bool, expected: int) -> None:
    crashed_commit(tmp_path, journal=journal, applied=2 if journal else 0)
    with transaction(tmp_path) as tx:
        # Recovered before the block runs.
        assert crash.read_generation(tmp_path) == expected
        assert crash.protocol_leftovers(tmp_path) == []
        tx.write("extra", b"x")
    assert crash.read_generation(tmp_path) == expected
    assert recover(tmp_path) is False


def test_snapshot_recovers_an_interrupted_commit_by_itself(tmp_path: Path) -> None:
    crashed_commit(tmp_path, journal=True, applied=2)
    with snapshot(tmp_path) as snap:
        assert crash.classify_generation(lambda n: snap.read(n) if snap.exists(n) else None) == 2
    assert crash.protocol_leftovers(tmp_path) == []
    assert recover(tmp_path) is False


def test_snapshot_of_staged_files_without_a_journal_reads_the_old_generation(
    tmp_path: Path,
) -> None:
    crashed_commit(tmp_path, journal=False, staged=3)
    with snapshot(tmp_path) as snap:
        assert crash.classify_generation(lambda n: snap.read(n) if snap.exists(n) else None) == 1


CORRUPT_JOURNALS = {
    "not json": b"this is not json",
    "empty": b"",
    "not utf-8": b"\xff\xfe\x00{",
    "null": b"null",
    "list": b"[]",
    "no format": b'{"ops": []}',
    "format 2": b'{"format": 2, "ops": []}',
    "no ops": b'{"format": 1}',
    "unknown op": _journal([["delete", "a", None]]),
    "write without staged": _journal([["write", "a", None]]),
    "remove with staged": _journal([["remove", "a", f"{STAGED}0"]]),
    "staged not a str": _journal([["write", "a", 5]]),
    "path as name": _journal([["write", "../a", f"{STAGED}0"]]),
    "reserved name": _journal([["write", JOURNAL, f"{STAGED}0"]]),
    "short op": _journal([["write", "a"]]),
}


@pytest.mark.parametrize("content", CORRUPT_JOURNALS.values(), ids=CORRUPT_JOURNALS.keys())
def test_a_journal_crashsafe_did_not_write_is_refused_and_changes_nothing(
    tmp_path: Path, content: bytes
) -> None:
    crashed_commit(tmp_path, journal=False, staged=4)
    os.rename(tmp_path / f"{STAGED}0", tmp_path / "a")  # a mix on disk
    _put(tmp_path / JOURNAL, content, 0o600)
    (tmp_path / LOCK).touch()
    before = state_of(tmp_path)

    def enter_transaction(directory: Path) -> None:
        with transaction(directory) as tx:
            tx.write("a", b"never")

    def enter_snapshot(directory: Path) -> None:
        with snapshot(directory) as snap:
            snap.read("a")

    for entry in (recover, enter_transaction, enter_snapshot):
        with pytest.raises(ValueError, match="not a crashsafe transaction journal") as raised:
            entry(tmp_path)
        assert str(tmp_path / JOURNAL) in str(raised.value)
        assert state_of(tmp_path) == before


@pytest.mark.parametrize("staged", ["../outside", "b"])
def test_a_journal_naming_other_files_as_staged_is_refused(tmp_path: Path, staged: str) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    (tmp_path / "outside").write_bytes(b"outside")
    (directory / "a").write_bytes(b"a")
    (directory / "b").write_bytes(b"b")
    (directory / LOCK).touch()
    _put(directory / JOURNAL, _journal([["write", "a", staged]]), 0o600)
    before = state_of(directory)
    with pytest.raises(ValueError, match="not a crashsafe transaction journal"):
        recover(directory)
    assert state_of(directory) == before
    assert (tmp_path / "outside").read_bytes() == b"outside"


# (syscall, errno or signal, which call); with two writes and a removal the fsyncs
# are: staged a, staged b, directory (staged names), journal, directory (journal),
# directory (renames), directory (journal removed); linkat: a, b, journal.
FAULTS = [
    pytest.param("fsync", "EIO", 1, id="fsync-staged-file"),
    pytest.param("fsync", "EIO", 3, id="fsync-dir-after-naming"),
    pytest.param("fsync", "EIO", 4, id="fsync-journal"),
    pytest.param("fsync", "EIO", 5, id="fsync-dir-after-journal"),
    pytest.param("fsync", "EIO", 6, id="fsync-dir-after-renames"),
    pytest.param("fsync", "EIO", 7, id="fsync-dir-after-journal-removed"),
    pytest.param("linkat", "ENOSPC", 1, id="link-first-staged"),
    pytest.param("linkat", "ENOSPC", 2, id="link-second-staged"),
    pytest.param("linkat", "ENOSPC", 3, id="link-journal"),
    pytest.param("renameat", "EIO", 1, id="first-rename"),
    pytest.param("linkat", "INT", 3, id="sigint-at-journal-link"),
    pytest.param("renameat", "INT", 1, id="sigint-at-first-rename"),
    pytest.param("fsync", "INT", 2, id="sigint-at-staged-fsync"),
]


@pytest.mark.parametrize(("syscall", "what", "when"), FAULTS)
def test_an_error_at_any_step_leaves_all_old_or_all_new(
    workdir: Path, staging: str, syscall: str, what: str, when: int
) -> None:
    """A real errno (strace injection) or a SIGINT at one step of the commit: the call
    raises; with ``committed`` False every file is as it was and nothing is staged, with
    ``committed`` True the next recovery completes the commit. Never a mix."""
    require_tools("strace")
    (workdir / "a").write_bytes(b"old a")
    (workdir / "gone").write_bytes(b"old gone")
    old = {"a": b"old a", "gone": b"old gone"}
    new = {"a": b"new a", "b": b"new b"}
    signal_or_error = {"signal": what} if what == "INT" else {"error": what}
    child = run_traced(
        f"""
        from crashsafe.transactions import transaction
        tx = None
        try:
            with transaction({str(workdir)!r}) as t:
                tx = t
                t.write("a", b"new a")
                t.write("b", b"new b")
                t.remove("gone")
        except BaseException as e:
            report(committed=tx.committed, **describe(e))
        else:
            report(committed=tx.committed, raised=None)
        """,
        trace=[syscall],
        inject=[fault(syscall, when=when, **signal_or_error)],
        staging=staging,
    )
    result = child.result
    if what == "INT":  # strace does not mark a signal injection in its log
        assert result["raised"] == "KeyboardInterrupt", result
    else:
        assert child.injected(), child.log
        assert result["errno"] == getattr(errno, what), result

    def files() -> dict[str, bytes]:
        return {n: (workdir / n).read_bytes() for n in ("a", "b", "gone") if (workdir / n).exists()}

    if not result["committed"]:
        # "Raises, with every file as it was and nothing staged left."
        assert files() == old
        assert crash.protocol_leftovers(workdir) == []
    recovered = recover(workdir)
    assert files() == (new if result["committed"] else old), (result, recovered)
    assert crash.protocol_leftovers(workdir) == []
    assert listing(workdir) == sorted([LOCK, *(new if result["committed"] else old)])


@pytest.mark.slow
def test_a_commit_killed_after_any_syscall_recovers_to_old_or_new(
    tmp_path: Path, staging: str
) -> None:
    """SIGKILL right after each syscall of a four-file commit (and a removal), then
    recover(): all old before the journal is linked, all new from then on."""
    require_tools("strace")
    directory = tmp_path / "d"
    directory.mkdir()
    args = crash.tx_writer_args(directory, tmp_path / "source", 2, staging=staging)
    run = crash.kill_every_syscall(
        crash.TX_WRITER,
        args,
        prepare=lambda: crash.prepare_generation(directory, 1),
        inspect=lambda: crash.inspect_transaction(directory),
        sweep_dir=directory,
    )
    commit = crash.commit_index(run.trace, JOURNAL)
    assert commit is not None, "no link of the journal in the trace"
    states: list[crash.TxState] = [t.outcome for t in run.trials]
    problems = [(str(t.point), t.outcome.problems()) for t in run.trials if t.outcome.problems()]
    order = [
        (str(t.point), t.outcome.after)
        for t in run.trials
        if t.outcome.after != (1 if t.point.index < commit else 2)
    ]
    raw_mixed = sum(str(s.before).startswith("mixed") for s in states)
    recoveries = Counter(s.recovery for s in states)
    temps = sum(len(t.leftovers) for t in run.trials)
    _note(
        f"kill at every syscall, {staging:<8}: {len(run.trials)} kills, journal linked at "
        f"#{commit}; after recovery {dict(Counter(s.after for s in states))}; recovery "
        f"{dict(recoveries)}; mixed before recovery {raw_mixed}; temp files {temps} -> "
        f"left after sweep {sum(len(t.left_after_sweep) for t in run.trials)}; "
        f"{run.seconds:.0f} s"
    )
    assert problems == []
    assert order == []
    assert recoveries["forward"] > 0 and recoveries["back"] > 0
    assert raw_mixed > 0  # kills among the renames: recovery was needed
    assert [t.left_after_sweep for t in run.trials if t.left_after_sweep] == []
    assert leftovers(directory) == []


@pytest.mark.parametrize("existing", [False, True])
def test_every_staged_file_is_created_private(workdir: Path, staging: str, existing: bool) -> None:
    """The syscall that creates each staged file and the journal asks for no more than
    the file's final mode: a named staged file asks for no group or other bits (others
    could open it by name), an anonymous O_TMPFILE one for its final mode (nobody can
    open it before it is linked, after its mode is set). The final modes are exact.
    The lock file (always empty) is excluded."""
    if existing:
        crash.put_generation(workdir, 1)
        os.chmod(workdir / "key", 0o600)
        code = """
        with transaction(directory) as tx:
            tx.write("key", b"secret")
            tx.write("a", b"public")
            tx.remove("odd")
        """
    else:
        code = """
        with transaction(directory) as tx:
            tx.write("key", b"secret", perm=0o600)
            tx.write("a", b"public", perm=0o644)
            tx.write("c", b"group", perm=0o640)
        """
    child = run_traced(
        f"from crashsafe.transactions import transaction\ndirectory = {str(workdir)!r}\n"
        + code.strip().replace("\n        ", "\n")
        + "\nreport(ok=True)\n",
        trace=["openat", "fchmod", "fchmodat", "chmod"],
        staging=staging,
    )
    assert child.returncode == 0, child.stderr
    creating = [
        c
        for c in child.calls("openat")
        if ("O_TMPFILE" in c or "O_CREAT" in c)
        and str(workdir) in c
        and LOCK not in c
        # A refused O_TMPFILE (FUSE: EOPNOTSUPP) creates nothing; the named file after it does.
        and " = -1 " not in c
    ]
    # The staged files in the order written, then the journal (0o600).
    finals = [0o600, 0o644] if existing else [0o600, 0o644, 0o640]
    finals.append(0o600)
    assert len(creating) == len(finals), child.log
    for call, final in zip(creating, finals, strict=True):
        requested = int(call.rsplit(",", 1)[1].split(")")[0], 8)
        if "O_TMPFILE" in call:
            assert requested == final, call
        else:
            assert requested & 0o077 == 0, call
    assert child.calls("chmod") == [] and child.calls("fchmodat") == []
    assert mode_of(workdir / "key") == 0o600
    assert mode_of(workdir / "a") == 0o644
    if not existing:
        assert mode_of(workdir / "c") == 0o640


# --------------------------------------------------------------------------- concurrency

WRITERS = 2
READERS = 2
MIN_COMMITS = 50  # per writer
MIN_READS = 500  # per reader
SIZE = 4096

# The race runs until it has shown what it must, not for a time: each reader
# reads until it has read MIN_READS times and seen what it waits for (a second
# generation; for the control, a mix), then says so with a file of its own;
# the writers commit until every reader has, and at least MIN_COMMITS times.
# A busy machine makes it slower, never different.


def _writer(directory: Path, index: int, durability: str, done: list[Path]) -> dict[str, Any]:
    commits = 0
    generation = index
    while commits < MIN_COMMITS or not all(p.exists() for p in done):
        generation += WRITERS  # generations are unique to a writer
        with transaction(directory, durability=durability) as tx:  # type: ignore[arg-type]
            crash.write_generation(tx, generation, SIZE)
        commits += 1
    return {"commits": commits}


def _reader(directory: Path, done: Path, *, through_snapshot: bool) -> dict[str, Any]:
    reads = 0
    bad: Counter[str] = Counter()
    seen: set[int] = set()
    examples: list[str] = []
    # The snapshot readers wait for a second generation; the control's direct
    # readers for a mix, which a commit landing between two of their reads makes.
    while reads < MIN_READS or (len(seen) < 2 if through_snapshot else not bad["mixed"]):
        if through_snapshot:
            with snapshot(directory) as snap:
                found = crash.classify_generation(
                    lambda n: snap.read(n) if snap.exists(n) else None
                )
        else:
            found = crash.read_generation(directory)
        reads += 1
        if isinstance(found, int):
            seen.add(found)
        else:
            bad[found.split(" (")[0]] += 1
            if len(examples) < 3:
                examples.append(found)
    done.touch()
    return {"reads": reads, "bad": dict(bad), "generations": len(seen), "examples": examples}


def _race(directory: Path, durability: str, *, through_snapshot: bool) -> dict[str, Any]:
    with transaction(directory) as tx:
        crash.write_generation(tx, 0, SIZE)
    control = directory.parent / f"{directory.name}-race"
    control.mkdir()
    done = [control / f"reader-{i}" for i in range(READERS)]
    writers = [_fork(lambda i=i: _writer(directory, i, durability, done)) for i in range(WRITERS)]
    readers = [
        _fork(lambda p=p: _reader(directory, p, through_snapshot=through_snapshot)) for p in done
    ]
    try:
        results = [_collect(*r) for r in readers]
    finally:
        for p in done:  # a failed reader must not leave the writers running
            p.touch()
    commits = [_collect(*w)["commits"] for w in writers]
    bad: Counter[str] = Counter()
    for r in results:
        bad.update(r["bad"])
    return {
        "commits": commits,
        "reads": [r["reads"] for r in results],
        "generations": [r["generations"] for r in results],
        "bad": bad,
        "examples": [e for r in results for e in r["examples"]],
    }


@pytest.mark.parametrize("durability", ["none", "durable"])
def test_snapshot_readers_never_see_a_mix(tmp_path: Path, durability: str) -> None:
    race = _race(tmp_path, durability, through_snapshot=True)
    _note(
        f"concurrency {durability:<8} snapshot readers: {WRITERS} writers committed "
        f"{race['commits']}, {READERS} readers read {race['reads']} times, "
        f"generations seen {race['generations']}, bad {dict(race['bad'])}"
    )
    assert race["bad"] == Counter(), race["examples"]
    assert all(r >= MIN_READS for r in race["reads"])
    assert all(c >= MIN_COMMITS for c in race["commits"]), "a writer starved"
    assert all(g > 1 for g in race["generations"]), "the readers never saw a commit land"
    assert crash.read_generation(tmp_path) > 0
    assert crash.protocol_leftovers(tmp_path) == []


def test_direct_readers_do_see_mixes_the_control(tmp_path: Path) -> None:
    """Without snapshot(), a reader opening the four files one by one sees commits land
    between its reads: the mixes that snapshot() prevents are real."""
    race = _race(tmp_path, "none", through_snapshot=False)
    _note(
        f"concurrency none     direct readers (control): writers committed {race['commits']}, "
        f"readers read {race['reads']} times, mixed {race['bad'].get('mixed', 0)}, "
        f"other {dict((k, v) for k, v in race['bad'].items() if k != 'mixed')}; "
        f"e.g. {race['examples'][:1]}"
    )
    assert all(r >= MIN_READS for r in race["reads"])
    assert race["bad"]["mixed"] > 0, "the control saw no mix: the snapshot test proves nothing"
    # Each file, read alone, is always complete (every file is replaced atomically).
    assert set(race["bad"]) == {"mixed"}, race["bad"]
