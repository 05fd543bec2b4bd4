"""The sdist and the wheel users get: built, checked, installed into a fresh virtual
environment with nothing else, and run from outside the checkout.

``python -m build`` (isolated: it fetches setuptools from the package index, so
it needs network or a local index; without one this skips, and under CI=true
fails), ``twine check --strict``, then the wheel installed with ``--no-index``
(it depends on nothing) into a venv made without pip. Every command runs with
its working directory outside the checkout, no PYTHONPATH, and ``python -I``
where Python is run directly: what is tested is the installed package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

import crashsafe
from tests.harness.require import require, require_tools

CHECKOUT = Path(__file__).resolve().parent.parent
SOURCE = CHECKOUT / "src" / "crashsafe"


# What a checkout holds that is not the project's source.
_NOT_SOURCE = (".git", ".venv", "*.egg-info", "build", "dist", "__pycache__", ".*_cache",
               ".coverage*", ".benchmarks")  # fmt: skip


class Built(NamedTuple):
    sdist: Path
    wheel: Path
    venv: Path
    outside: Path  # a working directory outside the checkout


def _clean_env(venv: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "COVERAGE_"))}
    env.pop("VIRTUAL_ENV", None)
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    where = tmp_path_factory.mktemp("wheel")
    dist = where / "dist"
    # From a clean copy: setuptools merges the checkout's own egg-info (left by an
    # editable install) into the sdist, which would hide a missing MANIFEST.in line.
    project = where / "project"
    shutil.copytree(CHECKOUT, project, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    build = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(project)],
        capture_output=True, text=True, timeout=300, check=False, cwd=where,
    )  # fmt: skip
    require(build.returncode == 0, f"python -m build failed: {build.stderr.strip()[-800:]}")
    (sdist,) = dist.glob("crashsafe-*.tar.gz")
    (wheel,) = dist.glob("crashsafe-*-py3-none-any.whl")
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--quiet", "--no-index", "--disable-pip-version-check", str(wheel)],
        check=True, capture_output=True, cwd=where, env=_clean_env(),
    )  # fmt: skip
    outside = where / "elsewhere"
    outside.mkdir()
    yield Built(sdist, wheel, venv, outside)
    # Built and installed under pytest's temporary directory, from a copy: the
    # checkout is not written to.
    shutil.rmtree(where)


def wheel_problems(wheel: Path) -> list[str]:
    """What is wrong with the wheel's contents (an empty list: nothing)."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read("crashsafe-0.1.0.dist-info/entry_points.txt").decode()
    expected = {
        str(p.relative_to(SOURCE.parent))
        for p in SOURCE.rglob("*")
        if p.is_file() and p.suffix in (".py", ".typed") and "__pycache__" not in p.parts
    }
    problems = [f"missing {name}" for name in sorted(expected - names)]
    problems += [f"not the library's: {n}" for n in sorted(names) if n.startswith("tests/")]
    if "crashsafe = crashsafe.cli:main" not in entry_points:
        problems.append("no crashsafe command")
    return problems


def test_twine_check_passes(built: Built) -> None:
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(built.sdist), str(built.wheel)],
        capture_output=True, text=True, check=False, env=_clean_env(), cwd=built.outside,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("PASSED") == 2


def test_wheel_holds_the_whole_library_and_its_typed_marker(built: Built, tmp_path: Path) -> None:
    assert wheel_problems(built.wheel) == []
    # A wheel without the typed marker (as setuptools builds one without
    # package-data) is caught.
    broken = tmp_path / built.wheel.name
    with zipfile.ZipFile(built.wheel) as source, zipfile.ZipFile(broken, "w") as copy:
        for item in source.infolist():
            if item.filename != "crashsafe/py.typed":
                copy.writestr(item, source.read(item))
    assert wheel_problems(broken) == ["missing crashsafe/py.typed"]


def test_sdist_holds_the_whole_project(built: Built) -> None:
    # The tests with their harness (a partial tests/ cannot run), the documents the
    # README links to, the benchmarks; not CI's script or compiled files.
    expected = {"README.md", "LICENSE", "CHANGELOG.md", "pyproject.toml"} | {
        str(p.relative_to(CHECKOUT))
        for top in ("src", "tests", "docs", "benchmarks")
        for p in (CHECKOUT / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p)
    }
    with tarfile.open(built.sdist) as archive:
        names = {n.partition("/")[2] for n in archive.getnames()}
    assert sorted(expected - names) == []
    assert [n for n in names if n.startswith(".ci") or n.endswith(".pyc")] == []


def test_wheel_metadata_is_complete(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as archive:
        metadata = archive.read("crashsafe-0.1.0.dist-info/METADATA").decode()
    headers = [line.partition(": ") for line in metadata.split("\n\n")[0].splitlines()]
    fields = {key: [v for k, _, v in headers if k == key] for key, _, _ in headers}
    assert fields["Requires-Python"] == [">=3.11"]
    assert fields["License-Expression"] == ["MIT"]
    assert {"Typing :: Typed", "Operating System :: POSIX :: Linux"} <= set(fields["Classifier"])
    assert "Programming Language :: Python :: 3.11" in fields["Classifier"]
    assert {u.split(",")[0] for u in fields["Project-URL"]} >= {"Homepage", "Source"}
    assert "Requires-Dist" not in fields or all("extra ==" in d for d in fields["Requires-Dist"])


def test_readme_first_command_runs_from_the_installed_wheel(built: Built) -> None:
    # The README's first command, with the wheel installed instead of `pip install .`.
    target = built.outside / "hello.txt"
    run = subprocess.run(
        ["sh", "-c", f"printf 'hello\\n' | crashsafe write --perm 600 {target} "
         f"&& ls -l {target} && cat {target}"],
        capture_output=True, text=True, check=False, cwd=built.outside,
        env=_clean_env(built.venv),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("-rw------- ")
    assert run.stdout.endswith(f"{target}\nhello\n")
    assert shutil.which("crashsafe", path=str(built.venv / "bin")) is not None


SMOKE = """
import importlib.metadata, importlib.resources, os, sys, crashsafe
from crashsafe.compat.atomicwrites import atomic_write as aw_write
venv, out = sys.argv[1], sys.argv[2]
assert crashsafe.__file__.startswith(venv), crashsafe.__file__
assert importlib.resources.files("crashsafe").joinpath("py.typed").is_file()
assert importlib.metadata.version("crashsafe") == crashsafe.__version__
crashsafe.atomic_write(out + "/a", b"one")
with crashsafe.atomic_open(out + "/b", "w") as f:
    f.write("two")
with aw_write(out + "/c", overwrite=True) as f:
    f.write("three")
print([open(out + "/" + n).read() for n in "abc"], sorted(os.listdir(out)))
"""


def test_smoke_test_of_the_installed_package(built: Built, tmp_path: Path) -> None:
    python = str(built.venv / "bin" / "python")
    smoke = subprocess.run(
        [python, "-I", "-c", SMOKE, str(built.venv), str(tmp_path)],
        capture_output=True, text=True, check=False, cwd=built.outside, env=_clean_env(),
    )  # fmt: skip
    assert smoke.returncode == 0, smoke.stderr
    assert smoke.stdout == "['one', 'two', 'three'] ['a', 'b', 'c']\n"
    version = subprocess.run(
        ["crashsafe", "--version"], capture_output=True, text=True, check=True,
        cwd=built.outside, env=_clean_env(built.venv),
    )  # fmt: skip
    assert version.stdout == f"crashsafe {crashsafe.__version__}\n"


def test_installed_crash_tools_run(built: Built, tmp_path: Path) -> None:
    # crashsafe torture starts children that import the package from where it is
    # installed, not from the checkout; crashcheck traces an installed command.
    require_tools("strace")
    (tmp_path / "data").write_text("old\n")
    check = subprocess.run(
        ["crashsafe", "crashcheck", "--check", "grep -qx old data || grep -qx new data",
         "--", "crashsafe", "write", "data"],
        input="new\n", capture_output=True, text=True, check=False, cwd=tmp_path,
        env=_clean_env(built.venv), timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no vulnerabilities" in check.stdout
    assert (tmp_path / "data").read_text() == "new\n"
    (tmp_path / "data").unlink()
    run = subprocess.run(
        ["crashsafe", "torture", "-n", "3", str(tmp_path)],
        capture_output=True, text=True, check=False, cwd=built.outside,
        env=_clean_env(built.venv), timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "crashsafe.atomic_write: every kill left the complete old or new file." in run.stdout
