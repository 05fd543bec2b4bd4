"""pytest's ``crashcheck`` fixture: hold a save routine to every crash state of its run.

Installed with crashsafe, the plugin is loaded by pytest on its own (the ``pytest11``
entry point); it only defines the fixture, and imports crashcheck when a test asks for
it. A test::

    def test_save_survives_any_crash(crashcheck, tmp_path):
        (tmp_path / "state.json").write_text('{"n": 1}')

        def save():
            my_app.save(tmp_path / "state.json", {"n": 2})
            print("saved")

        def check(state):
            doc = json.loads((state.dir / "state.json").read_text())
            assert doc == {"n": 2} or (doc == {"n": 1} and b"saved" not in state.stdout)

        crashcheck.assert_safe(save, check, dirs=[tmp_path])

``crashcheck(workload, check, **options)`` returns the
:class:`~crashsafe.crashcheck.Report`; ``crashcheck.assert_safe(...)`` raises
``AssertionError`` with the report's text when a crash state broke the check. *dirs*
defaults to the test's ``tmp_path``; every other option is
:func:`crashsafe.crashcheck.explore`'s. Linux only, with strace installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from crashsafe.crashcheck import Check, Report, Workload

__all__ = ["Crashcheck", "crashcheck"]


class Crashcheck:
    """What the ``crashcheck`` fixture gives a test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    def __call__(self, workload: Workload, check: Check, **options: Any) -> Report:
        """:func:`crashsafe.crashcheck.explore`, with *dirs* defaulting to ``tmp_path``."""
        from crashsafe.crashcheck import explore

        options.setdefault("dirs", [self.tmp_path])
        return explore(workload, check, **options)

    def assert_safe(self, workload: Workload, check: Check, **options: Any) -> Report:
        """As calling the fixture, then fail the test if any crash state broke *check*."""
        report = self(workload, check, **options)
        if report.vulnerabilities:
            raise AssertionError(report.text())
        return report


@pytest.fixture
def crashcheck(tmp_path: Path) -> Crashcheck:
    """Explore a workload's crash states: see :class:`Crashcheck`."""
    return Crashcheck(tmp_path)
