"""Figures a test module collects and prints once all its tests have run.

Crash harnesses report what they saw (trials, outcomes, seconds); ``pytest -s``
shows one block per module at its end, the README's figures come from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


def module_summary(title: str) -> tuple[Callable[[str], None], Any]:
    """Return ``(note, fixture)``: *note(line)* records a line; the fixture, bound
    to a module-level name, prints the lines under *title* after the module ran."""
    lines: list[str] = []

    @pytest.fixture(scope="module", autouse=True)
    def printed() -> Iterator[None]:
        yield
        if lines:
            print(f"\n\n{title}\n" + "\n".join(lines))
            # A module whose tests pytest splits into groups (the filesystem matrix's
            # session-scoped mounts) prints each line once.
            lines.clear()

    return lines.append, printed
