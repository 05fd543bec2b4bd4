"""griffe extension: the docstrings' Sphinx roles read as code on the docs site.

crashsafe's docstrings cross-reference with Sphinx roles (``:func:`atomic_open```,
``:class:`~crashsafe.objectstore.S3Store```), which Markdown would show as they are
typed. Each becomes inline code holding the name (the last dotted part when the
target starts with ``~``, as Sphinx shows it). The docstrings stay as they are:
the source is read by people and by Sphinx-aware tools too.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj|const):`(?P<target>[^`]+)`")


def plain(docstring: str) -> str:
    """*docstring* with every Sphinx role replaced by inline code."""

    def replace(match: re.Match[str]) -> str:
        target = match["target"]
        if target.startswith("~"):
            target = target[1:].rsplit(".", 1)[-1]
        return f"`{target}`"

    return ROLE.sub(replace, docstring)


class SphinxRoles(griffe.Extension):
    """Rewrites each object's docstring as it is loaded."""

    def on_instance(self, **kwargs: Any) -> None:
        obj = kwargs["obj"]
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)
