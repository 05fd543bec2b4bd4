"""Every Python block of docs/recipes.md runs, as a program of its own, and passes.

Each block is written to a file in a fresh directory and run there by this
Python in a child process (so a recipe that starts processes with ``spawn``
runs as a user would run it); its own asserts are what it checks, and a block
that raises fails the test with its output. A block whose first line is
``# needs: torch, safetensors`` is skipped where one of those is not installed
(they are not in the test extra; numpy and the standard library stand in for
them in the block before it).
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


@pytest.mark.parametrize(("name", "code"), blocks(), ids=[name for name, _ in blocks()])
def test_recipe_runs(name: str, code: str, tmp_path: Path) -> None:
    needs = NEEDS.match(code)
    if needs:
        missing = [
            module.strip()
            for module in needs["modules"].split(",")
            if importlib.util.find_spec(module.strip()) is None
        ]
        if missing:
            pytest.skip(f"{name} needs {', '.join(missing)}, not in the test extra")
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
