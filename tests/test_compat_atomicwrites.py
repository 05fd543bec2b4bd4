"""atomicwrites' own test suite, from its sdist on the package index, passes against
crashsafe.compat.atomicwrites with only its import line changed.

The sdist is downloaded with pip (pinned by version and sha256) into this test's
temporary directory. Without network the test skips, and under CI=true fails.
The same runner, pointed at a deliberately broken drop-in (a plain ``open(path,
"w")``), must count failures: otherwise a pass would prove nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.harness.require import require

SDIST = "atomicwrites-1.4.1.tar.gz"
SDIST_SHA256 = "81b2c9071a49367a7f770170e5eec8cb66567cfbbc8c73d20ce5ca4a8d71cf11"
SUITE = "atomicwrites-1.4.1/tests/test_atomicwrites.py"
IMPORT = "from atomicwrites import atomic_write\n"
# atomicwrites 1.4.1's suite: every one of these must run and pass.
TESTS = {
    "test_atomic_write",
    "test_teardown",
    "test_replace_simultaneously_created_file",
    "test_dont_remove_simultaneously_created_file",
    "test_open_reraise",
    "test_atomic_write_in_pwd",
}

# A drop-in that is not atomic at all: what the runner must catch.
BROKEN = """
import contextlib

@contextlib.contextmanager
def atomic_write(path, overwrite=False, mode="w", **kwargs):
    with open(path, mode, **kwargs) as f:
        yield f
"""
# Loaded with -p: crashsafe's named staging instead of O_TMPFILE, for the whole run.
NAMED_STAGING = "import crashsafe._platform._posix as posix\nposix.use_tmpfile = False\n"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """atomicwrites' test module, extracted from the verified sdist, import unchanged."""
    where = tmp_path_factory.mktemp("atomicwrites-sdist")
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--no-binary", ":all:", "--disable-pip-version-check", "-d", str(where),
         "atomicwrites==1.4.1"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    require(
        download.returncode == 0,
        f"cannot download atomicwrites 1.4.1's sdist: {download.stderr.strip()[-300:]}",
    )
    sdist = where / SDIST
    assert hashlib.sha256(sdist.read_bytes()).hexdigest() == SDIST_SHA256
    with tarfile.open(sdist) as archive:
        member = archive.extractfile(SUITE)
        assert member is not None
        return _write(where / "original.py", member.read().decode())


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _with_import(original: Path, module: str) -> Path:
    """A copy of the suite whose one import line imports atomic_write from *module*."""
    lines = original.read_text(encoding="utf-8").splitlines(keepends=True)
    changed = [line.replace(IMPORT, f"from {module} import atomic_write\n") for line in lines]
    differing = [i for i, (a, b) in enumerate(zip(lines, changed, strict=True)) if a != b]
    assert len(differing) == 1, f"expected one import line to change, changed {differing}"
    copy = original.parent / module.replace(".", "_") / "test_atomicwrites.py"
    copy.parent.mkdir(exist_ok=True)
    return _write(copy, "".join(changed))


def _run(suite_file: Path, *options: str) -> dict[str, str]:
    """Run pytest on *suite_file* in a child, without this project's configuration;
    the outcome of every test, by name."""
    report = suite_file.parent / "report.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         "-c", str(_write(suite_file.parent / "pytest.ini", "[pytest]\n")),
         "--rootdir", str(suite_file.parent), f"--junitxml={report}", *options,
         str(suite_file)],
        cwd=suite_file.parent, env=_child_env(suite_file.parent), capture_output=True,
        timeout=120, check=False,
    )  # fmt: skip
    outcomes = {}
    # The report is the child pytest's own, written just now.
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[case.attrib["name"]] = kinds[0] if kinds else "passed"
    return outcomes


def _child_env(extra_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(extra_path), str(Path(__file__).parent.parent), env.get("PYTHONPATH", "")]
    )
    return env


def test_atomicwrites_own_suite_passes(suite: Path) -> None:
    outcomes = _run(_with_import(suite, "crashsafe.compat.atomicwrites"))
    assert outcomes == dict.fromkeys(TESTS, "passed")


def test_atomicwrites_own_suite_passes_with_named_staging(suite: Path) -> None:
    # Named temporary files (the path where O_TMPFILE is missing) leave no
    # debris either: the suite counts the directory's entries.
    copy = _with_import(suite, "crashsafe.compat.atomicwrites")
    _write(copy.parent / "named_staging.py", NAMED_STAGING)
    assert _run(copy, "-p", "named_staging") == dict.fromkeys(TESTS, "passed")


def test_the_suite_catches_a_broken_drop_in(suite: Path) -> None:
    copy = _with_import(suite, "broken_atomicwrites")
    _write(copy.parent / "broken_atomicwrites.py", BROKEN)
    outcomes = _run(copy)
    assert set(outcomes) == TESTS
    failed = {name for name, outcome in outcomes.items() if outcome != "passed"}
    # Written in place: an error in the block leaves the file, overwrite=False
    # replaces an existing one instead of refusing, a concurrent write is mixed
    # into the file being written. Only the test of which exception propagates
    # cannot tell.
    assert failed == TESTS - {"test_open_reraise"}
