"""Sweep: temporary files are removed only when they are proven orphans.

Promise 4 (whatever a killed writer left can be found and removed safely): sweep
removes a crashsafe temporary file when its writer is proven dead (same boot and
pid namespace, and the pid is gone or has another start time), or, where that
cannot be proven, when it is older than ``min_age``. It never touches a live
writer's file, symlinks, directories, other names, or anything outside the one
directory, and it returns exactly what it removed.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import crashsafe
import crashsafe._platform._posix as posix
from crashsafe import sweep
from crashsafe.staging import MARKER, TEMP_RE, is_temp_name, temp_name
from tests.children import Child
from tests.children import start as start_child
from tests.harness import mounts
from tests.harness.checks import entries, leftovers, snapshot
from tests.harness.mounts import loop_mount
from tests.harness.require import require, require_tools

HOUR = 3600.0


# --------------------------------------------------------------------------- names


def own_owner() -> tuple[int, int, str]:
    """This process's (pid, start time, host tag), as crashsafe writes them."""
    match = TEMP_RE.match(temp_name("x"))
    assert match is not None
    return int(match["pid"]), int(match["start"]), match["host"]


def shaped(target: str, pid: int, start: int, host: str) -> str:
    """A name with exactly crashsafe's temporary shape, for the given owner."""
    name = f".{target}.{os.urandom(8).hex()}.{pid}-{start}-{host}{MARKER}"
    assert is_temp_name(name)
    return name


def start_time(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rfind(b")") + 2 :].split()[19])


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    for _ in range(10):
        proc = subprocess.Popen(["true"])
        proc.wait()
        if not os.path.exists(f"/proc/{proc.pid}"):
            return proc.pid
    raise AssertionError("every exited pid was reused at once")


def dead_name(target: str = "data") -> str:
    """A name whose writer is provably dead: this host, a pid that has exited."""
    _, _, host = own_owner()
    return shaped(target, dead_pid(), 12345, host)


def foreign_host() -> str:
    return "ffffffff" if own_owner()[2] != "ffffffff" else "fffffffe"


def make(path: Path, data: bytes = b"staged", *, age: float = 0.0) -> Path:
    path.write_bytes(data)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


# --------------------------------------------------------------------------- writer processes

WRITER = """\
import sys
import crashsafe._platform._posix as p
p.use_tmpfile = False
from crashsafe import AtomicFile
staged = [AtomicFile(t, "wb", perm=0o640) for t in sys.argv[1:]]
for s in staged:
    s.file.write(b"staged by " + s.path.encode())
    s.file.flush()
print("ready", flush=True)
if sys.stdin.readline() == "commit\\n":
    for s in staged:
        s.commit()
    print("committed", flush=True)
"""


class Writer(Child):
    """A writer process holding open AtomicFiles (named staging) for *targets*."""

    def __init__(self, *targets: Path) -> None:
        super().__init__(WRITER, *map(str, targets))

    def ready(self) -> None:
        assert self.readline() == "ready"

    def commit(self) -> None:
        self.send("commit")
        assert self.readline() == "committed"
        assert self.proc.wait(timeout=30) == 0

    def kill(self) -> None:
        """SIGKILL and reap: a dead writer, not a zombie that still has its /proc entry."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    """Writer processes started by a test are killed and reaped when it ends."""
    started: list[Writer] = []
    yield started
    for writer in started:
        writer.close()


# --------------------------------------------------------------------------- proven dead


def test_sweep_removes_leftovers_of_killed_writers_at_once(
    tmp_path: Path, writers: list[Writer]
) -> None:
    """Fresh leftovers of SIGKILLed writers go even with min_age=3600: death is proven."""
    crashsafe.atomic_write(tmp_path / "a", b"committed a")
    make(tmp_path / "unrelated.txt", b"not ours")
    writers += [
        Writer(tmp_path / "a"),
        Writer(tmp_path / "b", tmp_path / "c"),
        Writer(tmp_path / "d"),
    ]
    for writer in writers:
        writer.ready()
    for writer in writers:
        writer.kill()
        assert writer.proc.returncode == -signal.SIGKILL
    left = leftovers(tmp_path)
    assert len(left) == 4

    removed = sweep(tmp_path, min_age=HOUR)

    assert len(removed) == len(set(removed)) == 4
    assert set(removed) == {tmp_path / n for n in left}
    assert all(isinstance(p, Path) for p in removed)
    assert entries(tmp_path) == ["a", "unrelated.txt"]
    assert (tmp_path / "a").read_bytes() == b"committed a"
    assert sweep(tmp_path, min_age=0) == []


def test_sweep_never_removes_a_live_writers_temp_file(workdir: Path, writers: list[Writer]) -> None:
    writers.append(Writer(workdir / "data"))
    writers[0].ready()
    (temp,) = leftovers(workdir)
    before = snapshot(workdir / temp)

    assert sweep(workdir, min_age=0) == []
    assert snapshot(workdir / temp) == before

    writers[0].commit()
    data = workdir / "data"
    assert data.read_bytes() == b"staged by " + str(data).encode()
    assert stat.S_IMODE(os.lstat(data).st_mode) == 0o640
    assert entries(workdir) == ["data"]


def test_sweep_keeps_this_processes_own_live_temp_file(workdir: Path) -> None:
    saved, posix.use_tmpfile = posix.use_tmpfile, False
    try:
        staged = crashsafe.AtomicFile(workdir / "data", "wb")
    finally:
        posix.use_tmpfile = saved
    try:
        staged.file.write(b"mine")
        (temp,) = leftovers(workdir)
        assert sweep(workdir, min_age=0) == []
        assert leftovers(workdir) == [temp]
    except BaseException:
        staged.discard()
        raise
    staged.commit()
    assert (workdir / "data").read_bytes() == b"mine"
    assert entries(workdir) == ["data"]


def test_sweep_removes_dead_pid_on_this_host_regardless_of_age(tmp_path: Path) -> None:
    fresh = make(tmp_path / dead_name("fresh"))
    future = make(tmp_path / dead_name("future"), age=-HOUR)  # mtime an hour ahead
    old = make(tmp_path / dead_name("old"), age=2 * HOUR)
    assert sorted(sweep(tmp_path, min_age=10 * HOUR)) == sorted([fresh, future, old])
    assert entries(tmp_path) == []


def test_sweep_removes_a_reused_pid_but_keeps_the_live_owner(tmp_path: Path) -> None:
    """A live pid with another start time is a reused pid: its writer is dead."""
    pid, start, host = own_owner()
    init_start = start_time(1)
    reused = [
        make(tmp_path / shaped("mine", pid, start + 1, host)),
        make(tmp_path / shaped("init", 1, init_start + 1, host)),
    ]
    live = [
        make(tmp_path / shaped("mine", pid, start, host), age=2 * HOUR),
        make(tmp_path / shaped("init", 1, init_start, host), age=2 * HOUR),
    ]
    assert sorted(sweep(tmp_path, min_age=HOUR)) == sorted(reused)
    assert sorted(tmp_path.iterdir()) == sorted(live)
    assert sweep(tmp_path, min_age=0) == []


# --------------------------------------------------------------------------- unprovable


@pytest.mark.parametrize("host", ["foreign", "unknown"])
def test_sweep_removes_unprovable_names_only_after_min_age(tmp_path: Path, host: str) -> None:
    """Another host's (or an unknown boot's) file: age is the only evidence.

    The pid and start time are this live process's own, so only the host tag
    makes them unprovable; and the dead pid, too, proves nothing elsewhere.
    """
    tag = foreign_host() if host == "foreign" else "00000000"
    pid, start, _ = own_owner()
    gone = dead_pid()
    old = [
        make(tmp_path / shaped("a", pid, start, tag), age=2 * HOUR),
        make(tmp_path / shaped("b", gone, 1, tag), age=2 * HOUR),
    ]
    middle = make(tmp_path / shaped("c", pid, start, tag), age=HOUR / 2)
    fresh = make(tmp_path / shaped("d", gone, 1, tag))
    assert sorted(sweep(tmp_path, min_age=HOUR)) == sorted(old)
    assert sorted(tmp_path.iterdir()) == sorted([middle, fresh])
    assert sweep(tmp_path) == [middle]  # the default min_age: 60 s
    assert list(tmp_path.iterdir()) == [fresh]
    assert sweep(tmp_path, min_age=0) == [fresh]
    assert entries(tmp_path) == []


# --------------------------------------------------------------------------- never touched


def test_sweep_never_touches_symlinks_directories_other_names_or_subdirectories(
    tmp_path: Path,
) -> None:
    directory, elsewhere = tmp_path / "d", tmp_path / "elsewhere"
    directory.mkdir()
    elsewhere.mkdir()
    # Targets of links, themselves shaped like orphans, outside the swept directory.
    victim = make(elsewhere / dead_name("victim"), b"victim", age=2 * HOUR)
    valid = dead_name("data")
    other_names = [
        "x.crashsafe-tmp",
        ".a.crashsafe-tmp.bak",
        MARKER,
        valid[1:],  # no leading dot
        valid + ".bak",
        valid.replace(MARKER, ".crashsafe-TMP"),
        f".data.ABCDEF0123456789.1-1-{own_owner()[2]}{MARKER}",  # upper-case hex
        f".data.{'0' * 16}.1-1-{own_owner()[2].upper() or 'X'}{MARKER}",  # upper-case host
        f".data.{'0' * 15}.1-1-{own_owner()[2]}{MARKER}",  # 15 hex digits
        f".data.{'0' * 17}.1-1-{own_owner()[2]}{MARKER}",  # 17 hex digits
        f".data.{'g' * 16}.1-1-{own_owner()[2]}{MARKER}",  # not hex
        f".data.{'0' * 16}.1-1-{own_owner()[2]}0{MARKER}",  # 9-digit host
        f".data.{'0' * 16}.x-1-{own_owner()[2]}{MARKER}",  # pid not a number
        f".data.{'0' * 16}.1--{own_owner()[2]}{MARKER}",  # no start time
    ]
    for name in other_names:
        assert not is_temp_name(name), name
        make(directory / name, age=2 * HOUR)
    link = directory / dead_name("link")
    link.symlink_to(victim)
    dangling = directory / dead_name("dangling")
    dangling.symlink_to(elsewhere / "nothing")
    shaped_dir = directory / dead_name("dir")
    shaped_dir.mkdir()
    make(shaped_dir / dead_name("inside"), age=2 * HOUR)
    sub = directory / "sub"
    sub.mkdir()
    make(sub / dead_name("nested"), age=2 * HOUR)
    for entry in (link, dangling, shaped_dir, sub):
        then = time.time() - 2 * HOUR
        os.utime(entry, (then, then), follow_symlinks=False)
    orphan = make(directory / valid, age=2 * HOUR)  # the one thing to remove
    before = {p.name: snapshot(p) for p in directory.iterdir() if p != orphan}
    victim_before = snapshot(victim)

    assert sweep(directory, min_age=0) == [orphan]

    assert {p.name: snapshot(p) for p in directory.iterdir()} == before
    assert snapshot(victim) == victim_before
    assert entries(elsewhere) == [victim.name]


# --------------------------------------------------------------------------- bad input


def test_sweep_takes_bytes_and_answers_in_the_type_it_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As os.listdir: bytes in, bytes out; str and path-like in, Path objects out.
    monkeypatch.chdir(tmp_path)
    for given, expected in [
        (b".", lambda name: os.path.join(b".", os.fsencode(name))),
        (os.fsencode(tmp_path), lambda name: os.fsencode(tmp_path / name)),
        (".", lambda name: Path(".") / name),
        (tmp_path, lambda name: tmp_path / name),
    ]:
        name = dead_name()
        make(tmp_path / name)
        removed = sweep(given, min_age=0)  # type: ignore[call-overload]
        assert removed == [expected(name)]
        assert type(removed[0]) is type(expected(name))
        assert entries(tmp_path) == []


def test_sweep_of_a_missing_directory_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        sweep(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(info.value)


def test_sweep_of_a_file_raises_not_a_directory(tmp_path: Path) -> None:
    target = make(tmp_path / "file")
    with pytest.raises(NotADirectoryError):
        sweep(target)
    assert target.read_bytes() == b"staged"


# None is the default: 60 s for a directory, a day for an s3:// prefix.
@pytest.mark.parametrize("min_age", [-1, -0.001, -math.inf, "60", True])
def test_sweep_rejects_a_min_age_that_is_no_non_negative_number_before_touching_anything(
    tmp_path: Path, min_age: float
) -> None:
    orphan = make(tmp_path / dead_name())
    with pytest.raises(ValueError, match="min_age"):
        sweep(tmp_path, min_age=min_age)
    assert orphan.exists()


def test_sweep_rejects_nan_min_age_before_touching_anything(tmp_path: Path) -> None:
    """NaN is not a non-negative age; taken as one, it makes every unprovable file
    count as old, so a fresh file of a live writer on another host would go."""
    fresh = make(tmp_path / shaped("data", 1, 1, foreign_host()))
    with pytest.raises(ValueError, match="min_age"):
        sweep(tmp_path, min_age=math.nan)
    assert fresh.exists()


def test_an_orphan_sweep_cannot_remove_raises_naming_its_full_path() -> None:
    """An unlink refused by the filesystem (an immutable file: EPERM) is raised
    with its errno and the orphan's whole path, not its bare name, which would
    not say which directory the reader should look in."""
    require_tools("chattr", "mkfs.ext4")
    with loop_mount("ext4", size_mb=32) as mnt:
        orphan = make(mnt / dead_name())
        mounts.run("chattr", "+i", str(orphan))
        try:
            with pytest.raises(PermissionError) as info:
                sweep(mnt, min_age=0)
        finally:
            mounts.run("chattr", "-i", str(orphan))
        assert (info.value.errno, info.value.filename) == (errno.EPERM, str(orphan))
        assert sweep(mnt, min_age=0) == [orphan]


# --------------------------------------------------------------------------- command line


def console_script() -> list[str]:
    beside = Path(sys.executable).parent / "crashsafe"
    found = str(beside) if beside.exists() else shutil.which("crashsafe")
    require(found is not None, "the crashsafe console script is not installed")
    assert found is not None
    return [found]


COMMANDS = {
    "console-script": console_script,
    "python -m": lambda: [sys.executable, "-m", "crashsafe"],
}


def run(command: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMANDS[command](), *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("command", list(COMMANDS))
def test_cli_sweep_prints_each_removed_path_and_exits_0(
    tmp_path: Path, writers: list[Writer], command: str
) -> None:
    writers.append(Writer(tmp_path / "killed"))
    writers[0].ready()
    writers[0].kill()
    (killed,) = leftovers(tmp_path)
    orphans = {tmp_path / killed, make(tmp_path / dead_name())}
    young = make(tmp_path / shaped("young", 1, 1, foreign_host()))
    keep = make(tmp_path / "keep.txt")

    result = run(command, "sweep", str(tmp_path))

    assert result.returncode == 0, result.stderr
    assert {Path(line) for line in result.stdout.splitlines()} == orphans
    assert len(result.stdout.splitlines()) == len(orphans)
    assert sorted(tmp_path.iterdir()) == sorted([young, keep])

    result = run(command, "sweep", "--min-age", "0", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(young)]
    assert list(tmp_path.iterdir()) == [keep]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_cli_sweep_of_a_missing_directory_exits_1_naming_it(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "no such dir"
    result = run(command, "sweep", str(missing))
    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert result.stdout == ""
    assert not missing.exists()


def test_cli_sweep_of_a_file_exits_1_naming_it(tmp_path: Path) -> None:
    target = make(tmp_path / "file")
    result = run("console-script", "sweep", str(target))
    assert result.returncode == 1
    assert str(target) in result.stderr
    assert target.read_bytes() == b"staged"


def test_cli_sweep_rejects_a_negative_min_age_as_usage_error(tmp_path: Path) -> None:
    orphan = make(tmp_path / dead_name())
    result = run("console-script", "sweep", "--min-age", "-5", str(tmp_path))
    assert result.returncode == 2
    assert "argument --min-age: '-5' is not a number of seconds" in result.stderr
    assert orphan.exists()


# --------------------------------------------------------------------------- sweeping while writing

# Sweeps in a loop. Between two rounds it looks at its standard input: "round"
# asks for one round right now, whose verdict (did it see a temporary file) it
# prints at once, so that the test knows, without any timing, that a sweep ran
# while a write was staged; anything else ends the loop and prints the tally.
SWEEPER = """\\
import os, select, sys
from crashsafe import sweep
from crashsafe.staging import is_temp_name
directory = sys.argv[1]
removed, rounds, saw = [], 0, 0

def one_round():
    global rounds, saw
    live = any(is_temp_name(n) for n in os.listdir(directory))
    saw += live
    removed.extend(sweep(directory, min_age=0))
    rounds += 1
    return live

print("ready", flush=True)
while True:
    if select.select([0], [], [], 0)[0]:
        if sys.stdin.readline().strip() != "round":
            break
        print(int(one_round()), flush=True)
    else:
        one_round()
print(rounds, saw, len(removed), flush=True)
"""


def test_sweep_running_alongside_live_writers_removes_nothing_and_breaks_no_write(
    workdir: Path,
) -> None:
    """A sweeper with min_age=0 in a loop: the writers' temp files are all provably live.

    400 writes; during every tenth, while its named temporary file exists, the
    sweeper is asked for a round and must see that file (and leave it)."""
    saved, posix.use_tmpfile = posix.use_tmpfile, False
    sweeper = start_child(SWEEPER, str(workdir), text=True)
    failures: list[BaseException] = []
    verdicts: list[str] = []
    writes = 0
    try:
        assert sweeper.stdout is not None and sweeper.stdin is not None
        assert sweeper.stdout.readline() == "ready\n"
        for writes in range(1, 401):
            try:
                with crashsafe.atomic_open(
                    workdir / f"f{writes % 4}", "wb", durability="none"
                ) as f:
                    f.write(b"%d" % writes * 1000)
                    if writes % 10 == 0:
                        sweeper.stdin.write("round\n")
                        sweeper.stdin.flush()
                        verdicts.append(sweeper.stdout.readline().strip())
            except BaseException as e:
                failures.append(e)
        out, _ = sweeper.communicate("stop\n", timeout=60)
        rounds, saw, removed = map(int, out.split())
    finally:
        posix.use_tmpfile = saved
        if sweeper.poll() is None:
            sweeper.kill()
        sweeper.wait()
    print(f"{writes} writes; {rounds} sweeps alongside, {saw} saw a temp file, {removed} removed")
    assert failures == []
    assert removed == 0
    # Every asked round ran while a write was staged, and saw its temporary file.
    assert verdicts == ["1"] * 40, verdicts
    assert rounds >= 40 and saw >= 40
    assert entries(workdir) == [f"f{n}" for n in range(4)]
