"""Fixtures for every test: a scratch directory checked for leftovers, both staging paths."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import crashsafe._platform._posix as posix
from tests.harness.checks import verify_no_leftovers


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
