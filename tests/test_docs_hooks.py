"""The docs site's build hooks (docs_hooks/): README sections and benchmark charts.

Run on the project's real README and docs/benchmarks.md, and on planted faults
that must fail the build: a section name the README does not have, a README
link to a section no page includes, a ratio table with no readable ratio.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

from tests.harness.require import require

ROOT = Path(__file__).resolve().parent.parent


def hook(name: str) -> ModuleType:
    require(importlib.util.find_spec("mkdocs") is not None, "needs mkdocs (the docs extra)")
    qualified = f"docs_hooks_{name}"
    spec = importlib.util.spec_from_file_location(qualified, ROOT / "docs_hooks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_readme_directive_resolves_and_links_point_into_the_site() -> None:
    sections = hook("readme_sections")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    includes = sections.Includes(readme, ROOT / "docs")
    page = "library.md"
    text = includes.expand("# Using the library\n\n<!-- readme: The library -->\n", page)
    # The README's own subsections, raised one level under the page's title.
    assert "\n## Libraries that take only a path: `atomic_path`\n" in text
    assert "\n### " not in text.split("```")[0]
    # Links: the README's #anchor to another section now names the page holding it.
    assert "](cli.md#command-line)" in includes.expand(
        "<!-- readme: Try it on a fresh machine -->", "index.md"
    )
    assert "](docs/" not in text
    # Code blocks keep their comment lines (a "# ..." inside a fence is no heading).
    assert "# Whole contents at once: bytes, or str encoded as UTF-8." in text


def test_a_missing_section_or_an_orphan_anchor_fails_the_build(tmp_path: Path) -> None:
    sections = hook("readme_sections")
    from mkdocs.exceptions import PluginError

    readme = "# t\n\nintro, see [b](#b-part)\n\n## A part\n\ntext\n\n## B part\n\nmore\n"
    (tmp_path / "a.md").write_text("# A\n\n<!-- readme: A part -->\n")
    includes = sections.Includes(readme, tmp_path)
    with pytest.raises(PluginError, match="'No such part'"):
        includes.expand("<!-- readme: No such part -->", "a.md")
    # "B part" is included by no page: a link to it cannot be rewritten.
    (tmp_path / "index.md").write_text("<!-- readme: t -->\n")
    includes = sections.Includes(readme, tmp_path)
    with pytest.raises(PluginError, match="#b-part"):
        includes.expand("<!-- readme: t -->", "index.md")
    (tmp_path / "b.md").write_text("<!-- readme: B part -->\n")
    includes = sections.Includes(readme, tmp_path)
    assert "[b](b.md#b-part)" in includes.expand("<!-- readme: t -->", "index.md")


def test_a_chart_for_each_ratio_table_of_the_benchmarks_page() -> None:
    charts = hook("benchmark_charts")
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    out, count = charts.add_charts(page)
    headers = [line for line in page.splitlines() if line.startswith("| benchmark |")]
    assert count == sum("ratio" in line for line in headers) > 10
    ratios = re.findall(r"^\|[^\n]*\| (\d+(?:\.\d+)?)x[^|\n]*\|", page, re.MULTILINE)
    svgs = re.findall(r"<svg.*?</svg>", out)
    assert len(svgs) == count
    dots = 0
    for drawing in svgs:
        tree = ET.fromstring(drawing)  # noqa: S314 - our own output, well-formed XML
        dots += len(tree.findall("{http://www.w3.org/2000/svg}g"))
    # One dot for each row with a ratio in a ratio column: none lost, none made up.
    assert 0 < dots <= len(ratios)
    first = charts.points(
        ["benchmark", "a", "b", "time ratio (95 % interval)", "target", "result"],
        [["none: x / floor", "1", "2", "1.44x (1.37-1.49)", "≤ 1.25", "**FAIL**"]],
    )
    assert first == [charts.Point("none: x / floor", 1.44, 1.37, 1.49, 1.25, "fail")]


def test_a_ratio_table_without_a_readable_ratio_fails_the_build() -> None:
    charts = hook("benchmark_charts")
    from mkdocs.exceptions import PluginError

    broken = "## Small writes\n\n| benchmark | time ratio |\n|---|---:|\n| x | 1,07 times |\n"
    with pytest.raises(PluginError, match="Small writes"):
        charts.add_charts(broken)


def test_sphinx_roles_become_optional_links_or_code() -> None:
    roles = hook("griffe_sphinx_roles")
    import griffe

    package = griffe.load("crashsafe", search_paths=[str(ROOT / "src")])
    write = package["atomic_write"]  # the alias crashsafe.atomic_write
    text = roles.linked("see :func:`atomic_open` and :class:`~crashsafe.errors.NotDurableError`",
                        write.final_target)  # fmt: skip
    assert '<autoref identifier="crashsafe._writes.atomic_open" optional>' in text
    assert '<autoref identifier="crashsafe.errors.NotDurableError" optional>' in text
    assert "<code>NotDurableError</code>" in text  # "~": the last part shown
    # Without a scope, or a name nothing defines: code, never a broken link.
    assert roles.linked(":meth:`no_such_thing`") == "<code>no_such_thing</code>"
    assert roles.linked(":meth:`no_such_thing`", write.final_target) == (
        "<code>no_such_thing</code>"
    )
