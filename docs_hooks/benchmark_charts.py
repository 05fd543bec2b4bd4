"""mkdocs hook: a chart of each benchmark table's ratios, drawn at build time.

``docs/benchmarks.md`` is written by ``benchmarks/run.py``; its tables hold a ratio
column (``1.07x (1.04-1.10)``: the median of the per-repetition ratios and its 95 %
interval) and often a target (``≤ 1.10``). On the site each such table is
followed by an SVG that plots every row's ratio as a dot on its interval, the
target as a tick, and 1.0 (as fast as the reference) as a dashed line: a row
that failed its target is red, one that passed green, one without a target
grey-blue. The numbers are read from the page itself, so the charts always show
the run the tables show; nothing is fetched and no script runs in the browser.

A ratio table from which no ratio can be read fails the build: the generator's
format changed and the charts would silently vanish.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from html import escape
from typing import Any

from mkdocs.exceptions import PluginError

PAGE = "benchmarks.md"
RATIO = re.compile(
    r"(?P<ratio>\d+(?:\.\d+)?)x(?:\s*\((?P<low>\d+(?:\.\d+)?)-(?P<high>\d+(?:\.\d+)?)\))?"
)
TARGET = re.compile(r"(?P<op>[≤<≥>])\s*(?P<value>\d+(?:\.\d+)?)")

WIDTH = 760
LABEL_WIDTH = 360
ROW = 22
TOP = 10
AXIS = 34
COLOURS = {"pass": "#2e7d32", "fail": "#c62828", "none": "#3f51b5"}


@dataclass(frozen=True)
class Point:
    """One table row: its label, ratio, 95 % interval (if given), target and result."""

    label: str
    ratio: float
    low: float | None
    high: float | None
    target: float | None
    result: str  # "pass", "fail" or "none"


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def points(header: list[str], rows: list[list[str]]) -> list[Point] | None:
    """The plotted rows of a table, or None for a table without a ratio column."""
    ratio_column = next((i for i, name in enumerate(header) if "ratio" in name), None)
    if ratio_column is None:
        return None
    target_column = next((i for i, name in enumerate(header) if name == "target"), None)
    result_column = next((i for i, name in enumerate(header) if name == "result"), None)
    found: list[Point] = []
    for row in rows:
        if len(row) <= ratio_column:
            continue
        match = RATIO.search(row[ratio_column])
        if match is None:
            continue
        target = None
        if target_column is not None and target_column < len(row):
            target_match = TARGET.search(row[target_column])
            target = float(target_match["value"]) if target_match else None
        result = "none"
        if result_column is not None and result_column < len(row):
            verdict = row[result_column].strip("* ").lower()
            result = verdict if verdict in ("pass", "fail") else "none"
        found.append(
            Point(
                label=row[0].replace("`", ""),
                ratio=float(match["ratio"]),
                low=float(match["low"]) if match["low"] else None,
                high=float(match["high"]) if match["high"] else None,
                target=target,
                result=result,
            )
        )
    return found


def nice_ticks(low: float, high: float, log: bool) -> list[float]:
    """Round axis values spanning [low, high]."""
    if log:
        ticks = []
        first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
        mantissas = (1, 2, 5) if last - first <= 2 else (1,)  # labels that do not overlap
        for exponent in range(first, last + 1):
            for mantissa in mantissas:
                value = mantissa * 10.0**exponent
                if low <= value <= high:
                    ticks.append(value)
        return ticks
    span = high - low
    step = 10 ** math.floor(math.log10(span / 4))
    for factor in (1, 2, 2.5, 5, 10):
        if span / (step * factor) <= 6:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [round(first + i * step, 6) for i in range(int((high - first) / step) + 1)]


def svg(title: str, plotted: list[Point]) -> str:
    """A horizontal interval plot of *plotted*, one row each, as one line of SVG."""
    values = [1.0]
    for point in plotted:
        values += [point.ratio] + [v for v in (point.low, point.high, point.target) if v]
    low, high = min(values), max(values)
    log = high / low > 4
    if log:
        low, high = low / 1.2, high * 1.2
    else:
        pad = (high - low) * 0.08 or 0.05
        low, high = max(0.0, low - pad), high + pad
    left, right = LABEL_WIDTH + 10, WIDTH - 20

    def x(value: float) -> float:
        if log:
            share = (math.log10(value) - math.log10(low)) / (math.log10(high) - math.log10(low))
        else:
            share = (value - low) / (high - low)
        return round(left + share * (right - left), 1)

    height = TOP + ROW * len(plotted) + AXIS
    bottom = TOP + ROW * len(plotted)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="benchmark-chart" role="img" '
        f'width="100%" style="max-width:{WIDTH}px" viewBox="0 0 {WIDTH} {height}" '
        f'font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}: each ratio with its 95 % interval"
        f"{' (log scale)' if log else ''}</title>",
    ]
    for tick in nice_ticks(low, high, log):
        parts.append(
            f'<line x1="{x(tick)}" y1="{TOP}" x2="{x(tick)}" y2="{bottom}" stroke="#e0e0e0"/>'
            f'<text x="{x(tick)}" y="{bottom + 14}" text-anchor="middle" fill="#555">'
            f"{tick:g}x</text>"
        )
    parts.append(
        f'<line x1="{x(1.0)}" y1="{TOP - 4}" x2="{x(1.0)}" y2="{bottom}" stroke="#333" '
        f'stroke-dasharray="4 3"/>'
        f'<text x="{(left + right) / 2}" y="{bottom + 29}" text-anchor="middle" fill="#333">'
        f"time or throughput ratio{' (log scale)' if log else ''}; dashed: 1.0x, "
        f"orange tick: target</text>"
    )
    for index, point in enumerate(plotted):
        y = TOP + ROW * index + ROW / 2
        colour = COLOURS[point.result]
        label = point.label if len(point.label) <= 58 else point.label[:56] + "…"
        interval = f" ({point.low}-{point.high})" if point.low is not None else ""
        parts.append(
            f"<g><title>{escape(point.label)}: {point.ratio}x{interval}"
            f"{f', target {point.target}' if point.target else ''}, {point.result}</title>"
            f'<text x="{LABEL_WIDTH}" y="{y + 4}" text-anchor="end" fill="#222">'
            f"{escape(label)}</text>"
        )
        if point.low is not None and point.high is not None:
            parts.append(
                f'<line x1="{x(point.low)}" y1="{y}" x2="{x(point.high)}" y2="{y}" '
                f'stroke="{colour}" stroke-width="2"/>'
                f'<line x1="{x(point.low)}" y1="{y - 4}" x2="{x(point.low)}" y2="{y + 4}" '
                f'stroke="{colour}"/>'
                f'<line x1="{x(point.high)}" y1="{y - 4}" x2="{x(point.high)}" y2="{y + 4}" '
                f'stroke="{colour}"/>'
            )
        if point.target is not None:
            parts.append(
                f'<line x1="{x(point.target)}" y1="{y - 7}" x2="{x(point.target)}" '
                f'y2="{y + 7}" stroke="#ef6c00" stroke-width="2"/>'
            )
        parts.append(f'<circle cx="{x(point.ratio)}" cy="{y}" r="4" fill="{colour}"/></g>')
    parts.append("</svg>")
    return "".join(parts)


def add_charts(markdown: str) -> tuple[str, int]:
    """*markdown* with a chart after each ratio table; and how many were added."""
    lines = markdown.splitlines()
    out: list[str] = []
    title = "benchmark"
    charts = 0
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            title = line.lstrip("#").strip()
        is_table = (
            line.startswith("|")
            and index + 1 < len(lines)
            and re.fullmatch(r"\|[\s:|-]+\|", lines[index + 1].strip()) is not None
        )
        if not is_table:
            out.append(line)
            index += 1
            continue
        end = index + 2
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        out.extend(lines[index:end])
        plotted = points(cells(line), [cells(row) for row in lines[index + 2 : end]])
        if plotted is not None:
            if not plotted:
                raise PluginError(f"{PAGE}: no ratio could be read from the table under {title!r}")
            out += [
                "",
                f'<div class="benchmark-chart" markdown="0">{svg(title, plotted)}</div>',
                "",
            ]
            charts += 1
        index = end
    return "\n".join(out) + "\n", charts


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    return add_charts(markdown)[0]
