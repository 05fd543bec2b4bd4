"""mkdocs hook: pages include sections of the README, so the text lives in one place.

A page says ``<!-- readme: What is guaranteed -->`` on a line of its own; at build
time the line becomes the body of the README's section with that heading (up to
the next heading of the same or a higher level; for the title, up to the first
heading), its headings raised so that the
section's own level becomes the page's title level, and its links rewritten for
the site: ``docs/X.md`` becomes ``X.md``, ``#anchor`` the page that includes the
section holding that heading, and a link to a file the site does not have (the
changelog, the licence) plain text. Sections are found by heading, not by line
numbers, so edits to the README move with it. A name that matches no heading, or
an anchor no included section holds, fails the build (strict or not): a page
that silently lost its text is worse than no page.

Chosen over ``pymdownx.snippets`` because snippets include by line range or by
markers that would have to be added to the README, and leave its links pointing
at the repository's layout.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

DIRECTIVE = re.compile(r"^<!-- readme: (?P<name>.+?) -->$", re.MULTILINE)
HEADING = re.compile(r"^(?P<hashes>#{1,6}) (?P<title>.+?)\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def slug(title: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading (its default slugify)."""
    text = re.sub(r"[^\w\s-]", "", title).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def headings(text: str) -> list[tuple[int, int, str]]:
    """Every Markdown heading outside fenced code: (line index, level, title)."""
    found: list[tuple[int, int, str]] = []
    fenced = False
    for index, line in enumerate(text.splitlines()):
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            found.append((index, len(match["hashes"]), match["title"]))
    return found


def section(readme: str, name: str) -> tuple[int, list[str]]:
    """The level and body lines of the README section titled *name*."""
    lines = readme.splitlines()
    marks = headings(readme)
    for position, (index, level, title) in enumerate(marks):
        if title == name:
            end = len(lines)
            for later_index, later_level, _ in marks[position + 1 :]:
                # The title (level 1) owns only the text before the first section.
                if later_level <= level or level == 1:
                    end = later_index
                    break
            return level, lines[index + 1 : end]
    raise PluginError(f"README.md has no section titled {name!r} (asked for by a page)")


def raise_headings(body: list[str], level: int) -> list[str]:
    """Shift headings so that *level* + 1 becomes 2 (the page's title is 1)."""
    out: list[str] = []
    fenced = False
    for line in body:
        if FENCE.match(line):
            fenced = not fenced
        match = None if fenced else HEADING.match(line)
        if match:
            new_level = max(2, len(match["hashes"]) - level + 1)
            out.append("#" * new_level + " " + match["title"])
        else:
            out.append(line)
    return out


class Includes:
    """Which page includes which README section, and where each README anchor lands."""

    def __init__(self, readme: str, docs_dir: Path) -> None:
        self.readme = readme
        self.anchor_page: dict[str, str] = {}
        for page in sorted(docs_dir.rglob("*.md")):
            uri = page.relative_to(docs_dir).as_posix()
            for match in DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
                _, body = section(readme, match["name"])
                for _, _, title in headings("\n".join(body)):
                    self.anchor_page.setdefault(slug(title), uri)
                # The section's own heading is the page's title: its anchor is the page.
                self.anchor_page.setdefault(slug(match["name"]), uri)

    def rewrite_links(self, text: str, page_uri: str) -> str:
        depth = page_uri.count("/")
        up = "../" * depth

        def replace(match: re.Match[str]) -> str:
            target = match["target"]
            if re.match(r"[a-z]+:", target):
                return match[0]
            if target.startswith("#"):
                page = self.anchor_page.get(target[1:])
                if page is None:
                    raise PluginError(
                        f"{page_uri}: the README link {target!r} points at a section no page "
                        "includes"
                    )
                if page == page_uri:
                    return match[0]
                return f"]({up}{page}{target})"
            if target.startswith("docs/"):
                return f"]({up}{target.removeprefix('docs/')})"
            return "](" + "\x00" + target + ")"  # outside the site: unlinked below

        text = LINK.sub(replace, text)
        # [text](\x00file) -> text: the file is in the repository, not on the site.
        return re.sub(r"\[([^\]]*)\]\(\x00[^)]*\)", r"\1", text)

    def expand(self, markdown: str, page_uri: str) -> str:
        def replace(match: re.Match[str]) -> str:
            level, body = section(self.readme, match["name"])
            text = "\n".join(raise_headings(body, level))
            return self.rewrite_links(text, page_uri)

        return DIRECTIVE.sub(replace, markdown)


_includes: Includes | None = None


def on_config(config: Any) -> Any:
    global _includes  # noqa: PLW0603 - mkdocs hooks are module functions sharing state
    root = Path(config["config_file_path"]).parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    _includes = Includes(readme, Path(config["docs_dir"]))
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    assert _includes is not None  # on_config ran first
    return _includes.expand(markdown, page.file.src_uri)
