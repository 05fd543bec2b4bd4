"""griffe extension: the docstrings' Sphinx roles become links on the docs site.

crashsafe's docstrings cross-reference with Sphinx roles (``:func:`atomic_open```,
``:class:`~crashsafe.objectstore.S3Store```), which Markdown would show as they are
typed. Once the package is loaded, each role's target is resolved in the scope
of the object whose docstring holds it (as Sphinx would) and becomes an optional
cross-reference (mkdocs-autorefs' ``<autoref ... optional>``): a link where the
API page renders that object, inline code where it does not (a private helper,
the standard library), never a build warning. The name shown is the one typed,
or its last dotted part when the target starts with ``~``, as Sphinx shows it.
The docstrings stay as they are: the source is read by people and by Sphinx-aware
tools too.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj|const):`(?P<target>[^`]+)`")


def resolve(obj: Any, name: str) -> str | None:
    """The full path of *name* as seen from *obj*'s docstring, or None."""
    if name.startswith("crashsafe."):
        return name
    head, _, rest = name.partition(".")
    for scope in (obj, getattr(obj, "parent", None)):
        if scope is None:
            continue
        try:
            full: str = scope.resolve(head)
        except (griffe.NameResolutionError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        return f"{full}.{rest}" if rest else full
    return None


def linked(docstring: str, obj: Any = None) -> str:
    """*docstring* with every Sphinx role replaced by a cross-reference (or code)."""

    def replace(match: re.Match[str]) -> str:
        target = match["target"]
        shown = target
        if target.startswith("~"):
            target = target[1:]
            shown = target.rsplit(".", 1)[-1]
        code = f"<code>{escape(shown)}</code>"
        full = resolve(obj, target) if obj is not None else None
        if full is None:
            return code
        return f'<autoref identifier="{escape(full)}" optional>{code}</autoref>'

    return ROLE.sub(replace, docstring)


def objects(root: Any) -> Any:
    """*root* and everything defined in it (imports, which are aliases, left out)."""
    yield root
    for member in root.members.values():
        if not member.is_alias:
            yield from objects(member)


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring of the package once it is loaded."""

    def on_package(self, **kwargs: Any) -> None:
        for obj in objects(kwargs["pkg"]):
            if obj.docstring is not None:
                obj.docstring.value = linked(obj.docstring.value, obj)
