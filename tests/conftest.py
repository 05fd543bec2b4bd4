"""Fixtures for every test: a scratch directory checked for leftovers, both staging paths,
and the loop filesystems of the power-cut tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import coverage
import pytest

import crashsafe._platform._posix as posix
from tests.harness import power_cut
from tests.harness.checks import verify_no_leftovers
from tests.harness.mounts import loop_mount, tmpfs

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


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A scratch directory that must hold no temporary file when the test ends."""
    yield tmp_path
    verify_no_leftovers(tmp_path)


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
