"""Real fsync errors: a filesystem that answers them (tests/harness/forgetful.py), not
syscall injection.

The filesystem that forgets can be told to fail: an fsync answers ``EIO`` with Linux's
semantics (the unsynced data is dropped and marked clean: a retried fsync succeeds and
the data is gone), a write answers ``ENOSPC`` or ``EIO``, a directory fsync answers
``EIO``, or ``EINVAL`` as some FUSE and CIFS mounts always do. Each test reads what a
crash would leave from the filesystem's own account, and counts the fsyncs it saw.

The promises (README, "What is guaranteed" and "Errors"): an fsync error raises the
``OSError`` naming the target, leaves the old file and no temporary file, and is never
retried; a failed directory fsync after the rename is ``NotDurableError``; a filesystem
that cannot sync directories is not an error, the write has "consistent" strength there,
and ``crashsafe doctor`` says so. A writer that retries fsync is the broken variant the
harness must catch.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import crashsafe
from crashsafe.doctor import diagnose
from tests.harness.checks import leftovers
from tests.harness.forgetful import ALWAYS, Forgetful, forgetful

OLD, NEW = b"old content\n", b"new content\n" * 1000


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forgetful]:
    with forgetful(tmp_path_factory.mktemp("backing")) as mounted:
        yield mounted


@pytest.fixture
def fs(mounted: Forgetful) -> Forgetful:
    """The module's filesystem, reset, holding a durable "target" with OLD."""
    mounted.reset()
    (mounted.mnt / "target").write_bytes(OLD)
    mounted.sync_all()
    return mounted


def after_a_crash(fs: Forgetful, rel: str) -> set[bytes | None]:
    """Every content *rel* may have after a crash now (None: missing)."""
    found: set[bytes | None] = set()
    for state in fs.crash_states(limit=256):
        fs.restore(state)
        path = fs.mnt / rel
        found.add(path.read_bytes() if path.exists() else None)
    return found


def _transaction(target: Path, data: bytes) -> None:
    with crashsafe.transaction(target.parent) as tx:
        tx.write(target.name, data)


def _copy(target: Path, data: bytes) -> None:
    source = target.parent.parent / "copy-source"  # outside the mount: only dst is synced
    source.write_bytes(data)
    try:
        crashsafe.atomic_copy(source, target)
    finally:
        source.unlink()


WRITERS: dict[str, Callable[[Path, bytes], object]] = {
    "atomic_write": crashsafe.atomic_write,
    "atomic_write consistent": lambda t, d: crashsafe.atomic_write(t, d, durability="consistent"),
    "write_many": lambda t, d: crashsafe.write_many({t: d}),
    "write_json": lambda t, d: crashsafe.write_json(t, {"data": d.decode()}),
    "atomic_copy": _copy,
    "transaction": _transaction,
}


# -- fsync ------------------------------------------------------------------------------


@pytest.mark.parametrize("writer", list(WRITERS))
def test_an_fsync_error_raises_keeps_the_old_file_and_is_never_retried(
    fs: Forgetful, writer: str, tmp_path: Path
) -> None:
    target = fs.mnt / "target"
    fs.fail("fsync", errno.EIO)  # the first fsync the writer asks for
    with pytest.raises(OSError) as raised:
        WRITERS[writer](target, NEW)
    assert raised.value.errno == errno.EIO
    assert not isinstance(raised.value, crashsafe.NotDurableError)
    assert str(target) in str(raised.value)  # the user's own path
    assert fs.calls("fsync") == 1  # the failed one, and no retry
    assert target.read_bytes() == OLD
    assert leftovers(fs.mnt) == []  # lock files stay, by design; no temporary file
    assert after_a_crash(fs, "target") == {OLD}


def retrying_writer(target: Path, data: bytes) -> None:
    """The broken variant: a temporary file, fsync, and on an error fsync again (it
    "succeeds": Linux marked the failed pages clean), rename, directory fsync, return."""
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        try:
            os.fsync(fd)
        except OSError:
            os.fsync(fd)  # the PostgreSQL mistake (2018)
    finally:
        os.close(fd)
    os.rename(tmp, target)
    dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def returned_write_is_durable(fs: Forgetful, rel: str, data: bytes) -> bool:
    """The promise a returned durable write makes: a crash now keeps *data* at *rel*."""
    return fs.durable_view().get(rel) == data


def test_a_writer_that_retries_fsync_is_caught(fs: Forgetful) -> None:
    target = fs.mnt / "target"
    retrying_writer(target, NEW)  # correct without a fault: the check passes
    assert returned_write_is_durable(fs, "target", NEW)
    fs.fail("fsync", errno.EIO)
    retrying_writer(target, NEW + b"2")  # returns, as if all went well
    assert fs.calls("fsync") == 3  # 1 earlier, then the failed one and its retry
    assert target.read_bytes() == NEW + b"2"  # readers see it: the pages are still cached
    assert not returned_write_is_durable(fs, "target", NEW + b"2")
    assert fs.durable_view()["target"] == b""  # the rename is durable, the data is gone
    assert b"" in after_a_crash(fs, "target")


def test_crashsafe_keeps_the_same_promise(fs: Forgetful) -> None:
    target = fs.mnt / "target"
    crashsafe.atomic_write(target, NEW)
    assert returned_write_is_durable(fs, "target", NEW)
    fs.fail("fsync", errno.EIO)
    with pytest.raises(OSError, match="Input/output error"):
        crashsafe.atomic_write(target, NEW + b"2")
    assert fs.durable_view()["target"] == NEW  # the call raised; the old file stays
    assert after_a_crash(fs, "target") == {NEW}


# -- write ------------------------------------------------------------------------------


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("writer", ["atomic_write", "write_many", "transaction"])
def test_a_failed_write_raises_and_keeps_the_old_file(fs: Forgetful, err: int, writer: str) -> None:
    target = fs.mnt / "target"
    fs.fail("write", err, name="*crashsafe*")  # the staged file's, not a lock's or journal's
    with pytest.raises(OSError) as raised:
        WRITERS[writer](target, NEW)
    assert raised.value.errno == err
    assert str(target) in str(raised.value)
    assert fs.calls("write", name="*crashsafe*") == 1
    assert fs.calls("fsync") == 0  # nothing was synced for a write that failed
    assert target.read_bytes() == OLD
    assert leftovers(fs.mnt) == []  # lock files stay, by design; no temporary file
    assert after_a_crash(fs, "target") == {OLD}


# -- directory fsync --------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["atomic_write", "write_many"])
def test_a_failed_directory_fsync_is_not_durable_error(fs: Forgetful, writer: str) -> None:
    target = fs.mnt / "target"
    fs.fail("fsyncdir", errno.EIO)
    with pytest.raises(crashsafe.NotDurableError) as raised:
        WRITERS[writer](target, NEW)
    assert raised.value.errno == errno.EIO
    assert raised.value.filename in (str(target), str(fs.mnt))
    assert fs.calls("fsyncdir") == 1  # never retried
    assert target.read_bytes() == NEW  # replaced: every reader sees the new content now
    assert after_a_crash(fs, "target") == {OLD, NEW}  # "may not survive a power cut"


def test_a_filesystem_that_cannot_sync_directories_is_handled_as_documented(
    fs: Forgetful,
) -> None:
    # README, "Not promised": the write succeeds, with "consistent" strength at best;
    # `crashsafe doctor` says which guarantee holds, and why.
    target = fs.mnt / "target"
    fs.fail("fsyncdir", errno.EINVAL, times=ALWAYS)
    crashsafe.atomic_write(target, NEW)  # no error: nothing more this write could do
    assert fs.calls("fsyncdir") == 1
    assert target.read_bytes() == NEW
    assert after_a_crash(fs, "target") == {OLD, NEW}  # old or new, never torn
    diagnosis = diagnose(str(fs.mnt))
    assert diagnosis.capabilities["dir_fsync"] is False
    (fact,) = [f for f in diagnosis.facts if f.name == "directory fsync"]
    assert "EINVAL" in fact.evidence and "renames cannot be made durable" in fact.evidence
    assert diagnosis.conclusions["durable"][0] != "yes"
    fs.clear_faults()
    assert diagnose(str(fs.mnt)).capabilities["dir_fsync"] is True


def test_a_transaction_there_is_not_all_or_nothing_across_a_power_cut(fs: Forgetful) -> None:
    # The documented limit (README, "Not promised"), shown: with no directory fsync,
    # nothing orders the commit's renames, so a cut may leave either file new alone.
    (fs.mnt / "other").write_bytes(OLD)
    fs.sync_all()
    fs.fail("fsyncdir", errno.EINVAL, times=ALWAYS)
    with crashsafe.transaction(fs.mnt) as tx:
        tx.write("target", NEW)
        tx.write("other", NEW)
    seen = set()
    for state in fs.crash_states(limit=64):  # the families first: one lost shows the mixes
        fs.restore(state)
        crashsafe.recover(fs.mnt)
        seen.add(((fs.mnt / "target").read_bytes(), (fs.mnt / "other").read_bytes()))
    assert {(OLD, OLD), (NEW, NEW)} <= seen
    assert (OLD, NEW) in seen and (NEW, OLD) in seen
    # Where directories can be synced, the same commit is all or nothing.
    fs.reset()
    for name in ("target", "other"):
        (fs.mnt / name).write_bytes(OLD)
    fs.sync_all()
    with crashsafe.transaction(fs.mnt) as tx:
        tx.write("target", NEW)
        tx.write("other", NEW)
    for state in fs.crash_states(limit=64):
        fs.restore(state)
        crashsafe.recover(fs.mnt)
        assert (fs.mnt / "target").read_bytes() == (fs.mnt / "other").read_bytes() == NEW
