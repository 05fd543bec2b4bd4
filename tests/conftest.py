"""Fixtures for every test: a scratch directory checked for leftovers (on each filesystem
of the matrix, ``--fs``), both staging paths, and the loop filesystems of the power-cut
tests."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import coverage
import pytest

import crashsafe._platform._posix as posix
from tests.harness import matrix, power_cut
from tests.harness.capabilities import label_mount, needs
from tests.harness.checks import verify_no_leftovers
from tests.harness.filesystems import FILESYSTEMS, Mounted, mount
from tests.harness.mounts import loop_mount, tmpfs

if TYPE_CHECKING:
    from tests.harness.ceph import CephRGW
    from tests.harness.s3servers import Running, S3Place, Server

# A shell without job control starts a background command (`... &`, nohup) with
# SIGINT ignored, and every child inherits that: Python then installs no
# KeyboardInterrupt handler, and the tests that interrupt a writer with SIGINT
# see it ignored (21 failures in one such run). Python's own handler here is
# inherited by forked children and reset to the default by exec, where each new
# interpreter installs its own.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Children save coverage data beside the suite's (pyproject: patch = subprocess),
# those run as nobody too: their directory is open to every user, sticky as /tmp.
_cov = coverage.Coverage.current()
if _cov is not None and (_data := Path(_cov.config.data_file).parent).name == ".coverage-data":
    _data.mkdir(exist_ok=True)
    _data.chmod(0o1777)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fs",
        default="all",
        metavar="NAMES",
        help="filesystems the contract tests run on: all (the default; needs root), tmp "
        f"(pytest's temporary directory only), or some of: {', '.join(FILESYSTEMS)}",
    )

    parser.addoption(
        "--fs-both-stagings",
        action="store_true",
        help="run the matrix's tests with named staging on every filesystem too (by "
        "default only on " + ", ".join(matrix.NAMED_ON) + "; elsewhere each runs with the "
        "library's own choice: O_TMPFILE, or named files where it is refused)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SELECTION] = matrix.select(config.getoption("--fs"))


def pytest_report_header(config: pytest.Config) -> str:
    chosen = config.stash[_SELECTION]
    if not chosen.names:
        return f"filesystem matrix: off ({chosen.off_because}); contract tests in pytest's tmp_path"
    stagings = (
        "both stagings"
        if config.getoption("--fs-both-stagings")
        else "named staging on " + ", ".join(matrix.NAMED_ON) + " only"
    )
    return f"filesystem matrix: {', '.join(chosen.names)} ({stagings})"


_SELECTION = pytest.StashKey[matrix.Selection]()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = metafunc.config.stash[_SELECTION].names
    if names and matrix.on_matrix(metafunc.definition.nodeid, metafunc.fixturenames):
        # Session scope: pytest orders the tests so that each filesystem is mounted
        # once and unmounted before the next.
        metafunc.parametrize("fs", names, indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    both = config.getoption("--fs-both-stagings")
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        fs = params.get("fs")
        if not isinstance(fs, str):
            kept.append(item)
            continue
        if params.get("staging") == "named" and fs not in matrix.NAMED_ON and not both:
            dropped.append(item)
            continue
        item.add_marker(pytest.mark.fs_matrix)
        if gap := matrix.known_gap(fs, item.nodeid):
            reason, strict = gap
            item.add_marker(pytest.mark.xfail(strict=strict, reason=f"issue 18: {reason}"))
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session")
def fs(request: pytest.FixtureRequest) -> Iterator[Mounted | None]:
    """The test's filesystem of the matrix (tests/harness/filesystems.py), mounted
    once per session; ``None`` for a test off the matrix."""
    name: str | None = getattr(request, "param", None)
    if name is None:
        yield None
        return
    with mount(name) as mounted:
        label_mount(mounted.root, mounted.name)
        yield mounted


@pytest.fixture
def workdir(fs: Mounted | None, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A scratch directory that must hold no temporary file when the test ends: a
    fresh directory on the test's filesystem of the matrix (removed after), or
    pytest's own for a test off the matrix."""
    if fs is None:
        yield tmp_path
        verify_no_leftovers(tmp_path)
        return
    path = fs.fresh()
    try:
        needs(path, *matrix.required(request.node.nodeid))
        yield path
        verify_no_leftovers(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["tmpfile", "named"])
def staging(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once with anonymous O_TMPFILE staging and once with named files."""
    saved = posix.use_tmpfile
    posix.use_tmpfile = request.param == "tmpfile"
    try:
        yield request.param
    finally:
        posix.use_tmpfile = saved


@pytest.fixture(params=["xfs", "ext4"])
def cut_fs(request: pytest.FixtureRequest) -> Iterator[tuple[str, Path]]:
    """A fresh loop filesystem for power cuts, background writeback off while the
    test runs; yields ``(label, mount point)``.

    ext4 is mounted ``noauto_da_alloc`` (label ``ext4-noauto_da_alloc``): its
    default hides the missing-fsync bug.
    """
    power_cut.require_power_cut()
    fstype = request.param
    options = "noauto_da_alloc" if fstype == "ext4" else ""
    with loop_mount(fstype, options=options) as mnt, power_cut.writeback_off():
        yield f"{fstype}{'-' + options if options else ''}", mnt


@pytest.fixture(params=["ext4-tmp", "tmpfs"])
def torture_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The kill -9 loops' directory, ``(label, path)``: pytest's own (on the root
    filesystem), then a fresh tmpfs, where named orphans of 1 MiB pile up until
    the sweep: room for all of them."""
    if request.param == "ext4-tmp":
        yield request.param, tmp_path
    else:
        with tmpfs(size_kb=400 << 10) as mnt:
            yield request.param, mnt


# S3-compatible servers on loopback (tests/harness/s3servers.py): each started on first
# use and stopped when the session ends. Imported on use, so the rest of the suite does
# not need boto3.
def _s3_server(name: str, factory: pytest.TempPathFactory) -> Iterator[Server]:
    from tests.harness.s3servers import SERVERS

    with SERVERS[name](factory.mktemp(name)) as server:
        yield server


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``weed mini`` on loopback: honours every S3 precondition; survives kill -9."""
    yield from _s3_server("seaweedfs", tmp_path_factory)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``moto_server`` on loopback: AWS's answers, in memory (kill -9 loses everything)."""
    yield from _s3_server("moto", tmp_path_factory)


@pytest.fixture(scope="session")
def rclone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``rclone serve s3`` on loopback: ignores every precondition."""
    yield from _s3_server("rclone", tmp_path_factory)


@pytest.fixture(scope="session")
def ceph_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephRGW]:
    """Ceph RGW (mon, one BlueStore OSD, radosgw) on loopback: honours conditions on single
    PUTs only, and If-Match only with a bare ETag; survives kill -9."""
    import importlib.util

    from tests.harness.require import require, require_root, require_tools

    require_root()
    require(importlib.util.find_spec("boto3") is not None, "needs boto3 (the test extra)")
    from tests.harness.ceph import TOOLS, ceph_rgw

    require_tools(*TOOLS, "ss")
    from tests.harness.s3servers import group_members

    with ceph_rgw(tmp_path_factory.mktemp("ceph")) as cluster:
        yield cluster
        pids = cluster.pids  # after the tests: a kill -9 and restart makes new ones
    assert not [p for pid in pids.values() for p in group_members(pid)]


@pytest.fixture(params=["seaweedfs", "moto", "ceph"])
def s3(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Place]:
    """A fresh bucket on each server that honours preconditions (Ceph on single PUTs only),
    with the AWS_* variables set for the test so that ``s3://bucket/key`` reaches it;
    emptied and removed after."""
    from tests.harness.s3servers import S3Place, empty_bucket, make_bucket

    server: Running = request.getfixturevalue(f"{request.param}_server")
    bucket = make_bucket(server.endpoint)
    for key, value in server.endpoint.env().items():
        monkeypatch.setenv(key, value)
    try:
        yield S3Place(server, server.endpoint, bucket)
    finally:
        empty_bucket(server.endpoint, bucket)
