"""The checksum store under a power cut right after every syscall, on loop xfs and ext4.

One record that appends a line, and one record that compacts the store: after a
cut at any point the store reads (in a new reader) as the old set of entries or
the new one, never damaged; once the call returned, the new one; and the next
writer's record lands on top of what survived (a torn line is compacted away).
The broken variants run through the same harness and must be caught: the
append without its fsync ("old after return"), and a compaction that truncates
the store and rewrites it in place (a damaged or emptied store).
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from crashsafe import _checksum_log
from crashsafe.checksums import ChecksumStore
from crashsafe.documents import JSONDocumentError
from tests.harness import mounts, power_cut
from tests.harness.payloads import fsync_directory
from tests.harness.power_cut import WRITERS
from tests.harness.summary import module_summary
from tests.harness.traces import Syscall, commit_index

RECORD = WRITERS / "checksum_record.py"
STORE = "sums.jsonl"

_note, _print_summary = module_summary("checksum store power cut summary")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cut(
    mnt: Path, tmp_path: Path, how: str, modes: tuple[str, ...]
) -> tuple[power_cut.PowerCutRun, str]:
    files = tmp_path / "files"
    files.mkdir()
    for i in range(10):
        (files / f"f{i}").write_bytes(b"file %d" % i)
    (files / "new").write_bytes(b"the new one")
    (files / "next").write_bytes(b"the next writer's")
    directory = mnt / "d"
    directory.mkdir()
    store = directory / STORE
    old = {str(files / f"f{i}"): sha256(b"file %d" % i) for i in range(10)}
    new = {**old, str(files / "new"): sha256(b"the new one")}

    def prepare() -> None:
        # The old state, durably: a snapshot of 8 entries, then appended lines
        # (more than the snapshot holds, so that a zero bound makes a compaction).
        shutil.rmtree(directory)
        directory.mkdir()
        fsync_directory(mnt)
        recorder = ChecksumStore(store)
        recorder.record_many([files / f"f{i}" for i in range(8)])
        for i in range(10):  # f0..f7 again, then f8 and f9
            recorder.record(files / f"f{i}")
        _checksum_log.forget_cached(str(store))

    def inspect() -> str:
        _checksum_log.forget_cached(str(store))
        reader = ChecksumStore(store)
        try:
            found = dict(reader.items())
        except JSONDocumentError:
            return "damaged"
        outcome = "old" if found == old else "new" if found == new else f"{len(found)} entries"
        if outcome in ("old", "new"):
            # The next writer: its record lands on what survived, torn lines or not.
            reader.record(files / "next")
            _checksum_log.forget_cached(str(store))
            if dict(reader.items()) != {**found, str(files / "next"): sha256(b"the next writer's")}:
                return f"{outcome}, then the next record lost it"
        return outcome

    run = power_cut.power_cut_every_syscall(
        mnt,
        RECORD,
        [str(store), str(files / "new"), "tmpfile", how],
        prepare=prepare,
        inspect=inspect,
        sweep_dir=directory,
        modes=modes,
    )
    return run, str(store)


def _first(run: power_cut.PowerCutRun, test: Callable[[Syscall], bool]) -> int | None:
    return next((s.index for s in run.trace if test(s)), None)


def _bad(run: power_cut.PowerCutRun, store: str, how: str) -> list[tuple[str, str, str]]:
    """Anything but old or new; new before the store was touched; old after return."""
    on_store = f"<{store}>"
    if how in ("append", "nofsync"):
        # The first write whose descriptor (strace -y: "4</path>") is the store.
        commit = _first(
            run, lambda s: s.name == "write" and s.args.split(",")[0].endswith(on_store)
        )
    else:
        commit = (
            commit_index(run.trace, STORE)
            if how == "compact"
            else _first(run, lambda s: s.name == "ftruncate" and on_store in s.args)
        )
    assert commit is not None, f"the {how} record never touched the store"
    return power_cut.violations(run, commit, run.end)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["append", "compact"])
def test_power_cut_at_every_syscall_of_a_record(
    cut_fs: tuple[str, Path], tmp_path: Path, how: str
) -> None:
    fs, mnt = cut_fs
    # A compaction is an atomic_write, whose missing directory fsync the "cut" mode
    # would show (proven for atomic_write in test_crash.py); "commit" shows a
    # missing file fsync, or a store published before its content.
    modes = power_cut.MODES if how == "append" else ("commit",)
    run, store = _cut(mnt, tmp_path, how, modes)
    outcomes = Counter(t.outcome for t in run.trials)
    _note(power_cut.describe(fs, f"checksum record ({how})", run, f"{len(run.trace)} syscalls"))
    assert _bad(run, store, how) == []
    assert set(outcomes) == {"old", "new"}, outcomes
    assert len(run.trials) == len(run.trace) * len(modes)
    names = Counter(s.name for s in run.trace)
    if how == "append":
        assert names["rename"] + names["renameat"] + names["renameat2"] + names["linkat"] == 0
        assert _first(run, lambda s: s.name == "fsync" and f"<{store}>" in s.args) is not None
    else:
        assert commit_index(run.trace, STORE) is not None  # replaced, atomically
    assert all(t.left_after_sweep == [] for t in run.trials)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["nofsync", "inplace"])
def test_power_cut_catches_the_broken_store_writers(tmp_path: Path, how: str) -> None:
    """On xfs only, for time (ext4 noauto_da_alloc catches both as well: 4 damaged
    stores of 63 points for the in-place compaction, measured)."""
    power_cut.require_power_cut()
    with mounts.loop_mount("xfs") as mnt, power_cut.writeback_off():
        _catch(mnt, tmp_path, how)


def _catch(mnt: Path, tmp_path: Path, how: str) -> None:
    fs = "xfs"
    # The missing fsync shows when nothing commits the journal before the cut; the
    # truncation in place when something does (the metadata then ahead of the data).
    run, store = _cut(mnt, tmp_path, how, ("cut",) if how == "nofsync" else ("commit",))
    bad = _bad(run, store, how)
    _note(power_cut.describe(fs, f"BROKEN checksum {how}", run, f"{len(bad)} violations"))
    assert bad, "the harness saw nothing wrong with a broken writer"
    whys = Counter(why for why, _, _ in bad)
    if how == "nofsync":
        assert "old after return" in whys, whys
    else:
        assert any(why.endswith("target") for why in whys), whys  # damaged or emptied
