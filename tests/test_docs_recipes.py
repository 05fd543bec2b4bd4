"""Every Python block of docs/recipes.md runs, as a program of its own, and passes.

Each block is written to a file in a fresh directory and run there by this
Python in a child process (so a recipe that starts processes with ``spawn``
runs as a user would run it); its own asserts are what it checks, and a block
that raises fails the test with its output. A block whose first line is
``# needs: ...`` names the packages it imports beyond the standard library and
crashsafe: those in the test extra (numpy, safetensors) must be installed and
the block runs; a block that needs PyTorch (too large a download for CI) is
only compiled, and the numpy block before it runs the same recipe.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crashsafe.staging import TEMP_RE

RECIPES = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"
BLOCK = re.compile(r"^```python\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
NEEDS = re.compile(r"\A# needs: (?P<modules>[\w, ]+)\n")
# Packages no test machine installs: their blocks are compiled, not run.
NOT_INSTALLED = frozenset({"torch"})


def blocks() -> list[tuple[str, str]]:
    """(id, code) of each Python block, named by the section it is in."""
    text = RECIPES.read_text(encoding="utf-8")
    found: list[tuple[str, str]] = []
    for match in BLOCK.finditer(text):
        headings = re.findall(r"^## (.+)$", text[: match.start()], re.MULTILINE)
        section = re.sub(r"\W+", "-", headings[-1].lower()).strip("-") if headings else "top"
        found.append((f"{section}-{len(found) + 1}", match["code"]))
    return found


def test_the_page_has_a_block_for_each_recipe() -> None:
    names = {name.rsplit("-", 1)[0] for name, _ in blocks()}
    assert names == {
        "config-files-and-secrets",
        "ml-checkpoints",
        "sqlite-backups",
        "publishing-build-artifacts-the-c1z-case",
        "a-checksum-store",
        "state-shared-between-processes",
    }


def _needs(code: str) -> set[str]:
    needs = NEEDS.match(code)
    return {m.strip() for m in needs["modules"].split(",")} if needs else set()


RUN = [(name, code) for name, code in blocks() if not _needs(code) & NOT_INSTALLED]
COMPILE = [(name, code) for name, code in blocks() if _needs(code) & NOT_INSTALLED]


@pytest.mark.parametrize(("name", "code"), COMPILE, ids=[name for name, _ in COMPILE])
def test_recipe_for_a_package_not_installed_compiles(name: str, code: str) -> None:
    assert _needs(code) <= NOT_INSTALLED | {"numpy", "safetensors"}, name
    compile(code, name, "exec")


@pytest.mark.parametrize(("name", "code"), RUN, ids=[name for name, _ in RUN])
def test_recipe_runs(name: str, code: str, tmp_path: Path) -> None:
    missing = sorted(m for m in _needs(code) if importlib.util.find_spec(m) is None)
    assert not missing, f"{name} needs {missing}: install the test extra"
    script = tmp_path / "recipe.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}{done.stderr}"
    # Every recipe leaves what it published, and no temporary file beside it.
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) > 1, left
    assert not [n for n in left if TEMP_RE.match(n)], left
