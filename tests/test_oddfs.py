"""The library on filesystems that do less than ext4: FUSE (bindfs, sshfs), ntfs-3g, exFAT.

Issue 18's findings, each proven on a real mount of :mod:`tests.harness.filesystems`
(one mount per filesystem for the module):

* readers racing renames: on FUSE a reader can find a file missing (ENOENT, or
  ESTALE on sshfs) while another file is renamed over it. Plain ``open()`` readers
  see it (the control, which must fail); crashsafe's readers (``read_json``,
  ``snapshot().read``, ``sha256_file``) ride it out with a bounded retry;
* modes that do not hold: ntfs-3g and exFAT accept ``chmod`` and keep 0o777; an
  explicit ``perm=`` is refused before anything is published, a carried mode warns;
* no create-only on exFAT (no ``link``, no ``RENAME_NOREPLACE``): it says so;
  transactions still commit, and a ``kill -9`` there is still all-or-nothing, while
  the same files replaced one by one (the deliberately broken writer) are caught;
* what ``crashsafe doctor`` says on each.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import crashsafe
from crashsafe import _platform
from crashsafe.checksums import sha256_file
from crashsafe.doctor import diagnose
from crashsafe.transactions import Transaction
from tests import children
from tests.harness import generations
from tests.harness.checks import leftovers, umask
from tests.harness.filesystems import Mounted, mount
from tests.harness.kill9 import kill9_loop

FUSE = ("bindfs", "sshfs", "ntfs3g", "exfat")
NO_MODES = ("ntfs3g", "exfat")

# The reader race: run until the control (plain open()) has found the file missing
# this many times, and crashsafe's readers have read at least READS times; a race
# that never shows in MAX_ROUNDS rounds fails the test (the control proves nothing).
CONTROL_FAILURES = 5
READS = 150
MAX_ROUNDS = 20_000


@pytest.fixture(scope="module")
def mounted() -> Iterator[Callable[[str], Mounted]]:
    """Mount each filesystem once for the module, on first use; all are unmounted at
    the end (by the harness, which removes what it made)."""
    with contextlib.ExitStack() as stack:
        made: dict[str, Mounted] = {}

        def get(name: str) -> Mounted:
            if name not in made:
                made[name] = stack.enter_context(mount(name))
            return made[name]

        yield get


# ------------------------------------------------------------------ readers racing renames

# Renames a fresh, complete JSON document over doc.json in a loop until killed; plain
# os calls, no crashsafe: the race is the filesystem's.
RENAMER = textwrap.dedent(
    """
    import json, os, sys
    d = sys.argv[1]
    target = os.path.join(d, "doc.json")
    i = 0
    while True:
        tmp = os.path.join(d, "renamer.tmp")
        with open(tmp, "w") as f:
            json.dump({"n": i, "pad": "x" * 200}, f)
        os.rename(tmp, target)
        i += 1
    """
)


def _plain_read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("fs", FUSE)
def test_readers_ride_out_a_rename_that_hides_the_file(
    mounted: Callable[[str], Mounted], fs: str
) -> None:
    """A writer renames complete documents over doc.json in a loop. Plain open()
    readers find it missing now and then (ENOENT; ESTALE on sshfs): the control, run
    until it has failed CONTROL_FAILURES times. Interleaved with it, crashsafe's
    readers (read_json, snapshot().read, sha256_file) read it READS times and more,
    and never fail; each read is a complete document."""
    directory = mounted(fs).fresh()
    target = directory / "doc.json"
    crashsafe.write_json(target, {"n": -1})
    renamer = children.start(
        RENAMER, str(directory), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, isolated=True
    )
    control: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    failures: list[str] = []
    readers: list[Callable[[], object]] = [
        lambda: crashsafe.read_json(target),
        lambda: _snapshot_read(directory),
        lambda: sha256_file(target),
    ]
    rounds = 0
    try:
        while control["missing"] < CONTROL_FAILURES or sum(ours.values()) < READS:
            rounds += 1
            assert rounds <= MAX_ROUNDS, (
                f"the control saw the file missing {control['missing']} times in "
                f"{MAX_ROUNDS} rounds: the race did not happen, this proves nothing"
            )
            try:
                json.loads(_plain_read(target))
                control["read"] += 1
            except OSError as e:
                assert e.errno in (errno.ENOENT, errno.ESTALE), e
                control["missing"] += 1
            reader = readers[rounds % len(readers)]
            try:
                reader()
                ours["read"] += 1
            except OSError as e:
                failures.append(f"{reader}: {e!r}")
    finally:
        children.reap_group(renamer, 0)
    print(
        f"\n{fs}: {rounds} rounds; plain open(): {control['missing']} missing of "
        f"{rounds}; crashsafe's readers: {len(failures)} errors of {ours['read'] + len(failures)}"
    )
    assert failures == []
    assert control["missing"] >= CONTROL_FAILURES
    assert _platform.renames_hide_files(str(directory))


def _snapshot_read(directory: Path) -> object:
    with crashsafe.snapshot(directory) as snap:
        return json.loads(snap.read("doc.json"))


@pytest.mark.parametrize("fs", ["bindfs", "tmp"])
def test_a_file_really_missing_is_reported_after_the_bounded_retry(
    mounted: Callable[[str], Mounted], fs: str, tmp_path: Path
) -> None:
    """The retry is bounded: a file that is really missing is tried 10 times on FUSE
    (then FileNotFoundError naming it, or read_json's default), once elsewhere."""
    directory = mounted(fs).fresh() if fs != "tmp" else tmp_path
    missing = directory / "never-there.json"
    tries: list[int] = []

    def attempt() -> int:
        tries.append(1)
        return os.open(missing, os.O_RDONLY)

    with pytest.raises(FileNotFoundError) as raised:
        _platform.through_renames(attempt, str(missing))
    assert raised.value.filename == str(missing)
    fuse = fs != "tmp"
    assert len(tries) == (10 if fuse else 1)
    assert _platform.renames_hide_files(str(missing)) is fuse
    assert crashsafe.read_json(missing, default={"d": 1}) == {"d": 1}
    with pytest.raises(FileNotFoundError) as raised:
        crashsafe.read_json(missing)
    assert raised.value.filename == str(missing)
    # Any other error is not retried: a directory opened for writing.
    tries.clear()

    def other() -> int:
        tries.append(1)
        return os.open(directory, os.O_WRONLY)

    with pytest.raises(IsADirectoryError):
        _platform.through_renames(other, str(directory))
    assert len(tries) == 1


# ------------------------------------------------------------------ modes that do not hold


@pytest.mark.parametrize("fs", NO_MODES)
def test_an_explicit_perm_the_filesystem_ignores_is_refused(
    mounted: Callable[[str], Mounted], fs: str
) -> None:
    """ntfs-3g and exFAT accept chmod and keep 0o777: perm=0o600 raises
    UnsupportedByFilesystemError naming the path, before anything is published; the
    old file stays as it was and nothing is left behind."""
    directory = mounted(fs).fresh()
    new, old = directory / "new.key", directory / "old.key"
    old.write_bytes(b"old")
    writes: list[Callable[[Path], object]] = [
        lambda p: crashsafe.atomic_write(p, b"secret", perm=0o600),
        lambda p: _atomic_path_write(p, perm=0o600),
    ]
    for path, before in ((new, None), (old, b"old")):
        for write in writes:
            with pytest.raises(crashsafe.UnsupportedByFilesystemError) as raised:
                write(path)
            assert raised.value.errno == errno.EOPNOTSUPP
            assert raised.value.filename == str(path)
            assert "does not keep the mode perm=0o600" in str(raised.value)
            assert "nothing was written" in str(raised.value)
            assert (path.read_bytes() if path.exists() else None) == before
    assert sorted(os.listdir(directory)) == ["old.key"]
    # A mode it does keep is written as asked.
    crashsafe.atomic_write(new, b"open", perm=0o777)
    assert new.read_bytes() == b"open"


def _atomic_path_write(path: Path, perm: int) -> None:
    with crashsafe.atomic_path(path, perm=perm) as staged:
        Path(staged).write_bytes(b"secret")


def test_an_explicit_perm_holds_on_a_passthrough(mounted: Callable[[str], Mounted]) -> None:
    """The control: on bindfs (a passthrough to ext4 or tmpfs) the mode holds, and no
    error or warning comes."""
    directory = mounted("bindfs").fresh()
    path = directory / "k"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crashsafe.atomic_write(path, b"secret", perm=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("fs", NO_MODES)
def test_a_carried_mode_the_filesystem_ignores_is_warned_about(
    mounted: Callable[[str], Mounted], fs: str, tmp_path: Path
) -> None:
    """atomic_copy gives a new target the source's mode; where the filesystem keeps
    0o777 instead, MetadataNotPreservedWarning names the mode before any data is
    written (as an error, it publishes nothing), and the copy has 0o777."""
    directory = mounted(fs).fresh()
    source = tmp_path / "source"
    source.write_bytes(b"data")
    source.chmod(0o640)
    dst = directory / "copy"
    with pytest.warns(crashsafe.MetadataNotPreservedWarning) as caught:
        crashsafe.atomic_copy(source, dst)
    (warning,) = [w.message for w in caught]
    assert isinstance(warning, crashsafe.MetadataNotPreservedWarning)
    assert warning.filename == str(dst)
    assert warning.attributes == ["mode"]
    assert "mode 0o640 (chmod accepted, not kept: the file has 0o777)" in str(warning)
    assert dst.read_bytes() == b"data"
    assert stat.S_IMODE(dst.stat().st_mode) == 0o777
    dst.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error", crashsafe.MetadataNotPreservedWarning)
        with pytest.raises(crashsafe.MetadataNotPreservedWarning):
            crashsafe.atomic_copy(source, dst)
    assert os.listdir(directory) == []


# ------------------------------------------------------------------ exFAT: no create-only


def test_create_only_on_exfat_says_it_is_not_possible(mounted: Callable[[str], Mounted]) -> None:
    """exFAT has no link() (EPERM) and no RENAME_NOREPLACE (EINVAL): a create-only
    write raises UnsupportedByFilesystemError naming the path, not a bare EINVAL, and
    leaves nothing; over an existing file it is still FileExistsError."""
    directory = mounted("exfat").fresh()
    path = directory / "new"
    writes: list[Callable[[], object]] = [
        lambda: crashsafe.atomic_write(path, b"x", overwrite=False),
        lambda: _write_x(path),
    ]
    for write in writes:
        with pytest.raises(crashsafe.UnsupportedByFilesystemError) as raised:
            write()
        assert raised.value.filename == str(path)
        assert "create-only is not possible on this filesystem" in str(raised.value)
        assert os.listdir(directory) == []
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        crashsafe.atomic_write(path, b"x", overwrite=False)
    assert path.read_bytes() == b"old"
    assert os.listdir(directory) == ["new"]


def _write_x(path: Path) -> None:
    with crashsafe.atomic_open(path, "xb") as f:
        f.write(b"x")


def test_create_only_where_link_works_is_atomic_on_fuse(mounted: Callable[[str], Mounted]) -> None:
    """The control: ntfs-3g has link(), so create-only works there (and refuses an
    existing file)."""
    directory = mounted("ntfs3g").fresh()
    path = directory / "new"
    crashsafe.atomic_write(path, b"x", overwrite=False)
    with pytest.raises(FileExistsError):
        crashsafe.atomic_write(path, b"y", overwrite=False)
    assert path.read_bytes() == b"x"
    assert leftovers(directory) == []


def test_a_create_only_file_is_not_taken_for_hard_linked_on_bindfs(
    mounted: Callable[[str], Mounted],
) -> None:
    """bindfs publishes create-only by link() and unlink(), and its attribute cache
    then shows two links for a second: the next write asks past the cache and
    goes on. The control: the cached count is 2 right after the publish (else
    this proves nothing). Also in a fresh process, whose first writes read with
    os.stat (the warm-up of crashsafe._platform._native)."""
    directory = mounted("bindfs").fresh()
    path = directory / "new"
    crashsafe.atomic_write(path, b"x", overwrite=False)
    assert os.stat(path).st_nlink == 2  # the cache, right after the publish
    crashsafe.atomic_write(path, b"y")
    assert path.read_bytes() == b"y"
    fresh = directory / "fresh"
    script = (
        "import os, sys, crashsafe\n"
        "p = sys.argv[1]\n"
        "crashsafe.atomic_write(p, b'x', overwrite=False)\n"
        "assert os.stat(p).st_nlink == 2, os.stat(p).st_nlink\n"
        "crashsafe.atomic_write(p, b'y')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(fresh)], check=True, timeout=60)
    assert fresh.read_bytes() == b"y"
    assert leftovers(directory) == []


def _write_generation(tx: Transaction, generation: int) -> None:
    # generations.write_generation without its perm= (exFAT keeps no mode).
    for name in generations.TX_FILES:
        tx.write(name, generations.generation_data(generation, name))
    if generation % 2:
        tx.write(generations.TX_TOGGLE, generations.generation_data(generation, "odd"))
    else:
        tx.remove(generations.TX_TOGGLE)


def test_transactions_commit_and_recover_on_exfat(mounted: Callable[[str], Mounted]) -> None:
    """A transaction publishes its private names (staged files, the journal) with a
    plain rename where create-only is impossible: commits, snapshots and a commit
    recovered from its journal all work on exFAT."""
    directory = mounted("exfat").fresh()
    for generation in (1, 2, 3):
        with crashsafe.transaction(directory) as tx:
            _write_generation(tx, generation)
        assert generations.read_generation(directory) == generation
    with crashsafe.snapshot(directory) as snap:
        assert snap.read("a") == generations.generation_data(3, "a")
    assert not crashsafe.recover(directory)
    assert generations.protocol_leftovers(directory) == []


def _tx_writer(directory: Path) -> Callable[[int], None]:
    def write(generation: int) -> None:
        with crashsafe.transaction(directory) as tx:
            _write_generation(tx, generation)

    return write


def _one_by_one(directory: Path) -> Callable[[int], None]:
    # Deliberately broken: the same files, each replaced crash-safely, the set not.
    def write(generation: int) -> None:
        for name in generations.TX_FILES:
            crashsafe.atomic_write(directory / name, generations.generation_data(generation, name))
        toggle = directory / generations.TX_TOGGLE
        if generation % 2:
            crashsafe.atomic_write(toggle, generations.generation_data(generation, "odd"))
        elif toggle.exists():
            toggle.unlink()

    return write


def _recovered_generation(directory: Path, mixes: list[str]) -> Callable[[], int | str]:
    def check() -> int | str:
        before = generations.read_generation(directory)
        if str(before).startswith("mixed"):
            mixes.append(str(before))
        crashsafe.recover(directory)
        left = generations.protocol_leftovers(directory)
        return f"protocol names left: {left}" if left else generations.read_generation(directory)

    return check


@pytest.mark.parametrize("writer", ["transaction", "broken"])
def test_kill9_on_exfat_is_all_or_nothing(mounted: Callable[[str], Mounted], writer: str) -> None:
    """kill -9 right after each syscall of two commits in turn, on exFAT: after
    recovery the files are always one whole generation. The deliberately broken
    writer (the same files replaced one by one) must be caught leaving a mix, or the
    harness proves nothing."""
    directory = mounted("exfat").fresh()
    transactional = writer == "transaction"
    write = (_tx_writer if transactional else _one_by_one)(directory)
    write(1)
    mixes: list[str] = []
    kills = 40
    result = kill9_loop(
        directory,
        kills=kills,
        write=write,
        check=_recovered_generation(directory, mixes),
        staging="named",  # exFAT has no O_TMPFILE
        min_age=0,
    )
    crashsafe.recover(directory)
    print(
        f"\nexfat kill -9 {writer}: {result.kills} kills at {result.plan()}: "
        f"{dict(result.outcomes)}; mixed before recovery {len(mixes)}; temp files "
        f"{result.orphans_before_sweep} -> left {len(result.left_after_sweep)}; "
        f"{result.seconds:.1f} s"
    )
    assert result.kills == kills
    assert result.left_after_sweep == []
    if transactional:
        assert result.outcomes == Counter(complete=kills), result.outcomes
        assert 0 < result.changed < kills
        assert generations.protocol_leftovers(directory) == []
    else:
        assert any(o.startswith("mixed") for o in result.outcomes), result.outcomes


# ------------------------------------------------------------------ what doctor says


def test_doctor_names_what_each_fuse_filesystem_lacks(mounted: Callable[[str], Mounted]) -> None:
    """doctor on each mount: readers retry on all of FUSE; perm= refused on ntfs-3g and
    exFAT; create-only not possible on exFAT; durable "no" on sshfs (no fsyncdir)."""
    said = {}
    for fs in FUSE:
        d = diagnose(str(mounted(fs).fresh()))
        facts = {f.name: f.value for f in d.facts}
        said[fs] = facts
        assert facts["readers"] == "retry", facts
        assert d.capabilities["modes"] is (fs not in NO_MODES)
        assert ("perm=" in facts) is (fs in NO_MODES)
        assert ("create-only" in facts) is (fs == "exfat")
    assert said["sshfs"]["durable"] == "no"
    sshfs = diagnose(str(mounted("sshfs").fresh())).conclusions["durable"][1]
    assert "no fsyncdir" in sshfs


# ------------------------------------------------------------------ sshfs: contained symlinks


def test_sshfs_refuses_absolute_and_parent_symlinks_naming_the_path(
    mounted: Callable[[str], Mounted],
) -> None:
    """Debian's sshfs contains symlinks: reading an absolute or ``..`` link is EPERM.
    A write through one raises PermissionError naming the link's path, the file it
    points to is untouched and nothing is left; a relative link inside the mount is
    followed as everywhere."""
    directory = mounted("sshfs").fresh()
    real = directory / "real"
    real.write_bytes(b"old")
    (directory / "sub").mkdir()
    links = {
        directory / "abs": str(real),
        directory / "sub" / "up": "../real",
    }
    for link, target in links.items():
        link.symlink_to(target)
        with pytest.raises(PermissionError) as raised:
            crashsafe.atomic_write(link, b"new")
        assert raised.value.errno == errno.EPERM
        assert raised.value.filename == str(link)
        with pytest.raises(PermissionError):
            crashsafe.read_json(link)
    assert real.read_bytes() == b"old"
    (directory / "rel").symlink_to("real")
    crashsafe.atomic_write(directory / "rel", b"new")
    assert real.read_bytes() == b"new"
    assert (directory / "rel").is_symlink()
    assert leftovers(directory) == []
    assert leftovers(directory / "sub") == []


def test_sshfs_new_files_get_what_open_gives_and_perm_is_exact(
    mounted: Callable[[str], Mounted],
) -> None:
    """On sshfs the server's umask applies to new files too: a new file gets what
    open() gives there (learned from the kernel, as everywhere), even under umask 0;
    an explicit perm= is set exactly (a chmod, which no umask touches) and read back."""
    directory = mounted("sshfs").fresh()
    with umask(0):
        (directory / "plain").touch()
        crashsafe.atomic_write(directory / "ours", b"x")
        crashsafe.atomic_write(directory / "exact", b"x", perm=0o666)
    plain = stat.S_IMODE((directory / "plain").stat().st_mode)
    assert stat.S_IMODE((directory / "ours").stat().st_mode) == plain
    assert stat.S_IMODE((directory / "exact").stat().st_mode) == 0o666
    print(f"\nsshfs under umask 0: open() gives {plain:#o}")
    assert leftovers(directory) == []
