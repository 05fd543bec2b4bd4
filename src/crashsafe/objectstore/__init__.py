"""crashsafe on S3-compatible object storage: the same calls, given ``s3://bucket/key``.

:func:`crashsafe.atomic_write`, :func:`~crashsafe.atomic_open`,
:func:`~crashsafe.atomic_copy`, :func:`~crashsafe.read_json`,
:func:`~crashsafe.write_json`, :func:`~crashsafe.update`,
:func:`~crashsafe.update_json`, :func:`~crashsafe.transaction`,
:func:`~crashsafe.snapshot` and :func:`~crashsafe.sweep` accept an object URL
where they accept a path, and come here for it. The protocol is in
:mod:`crashsafe.objectstore._commit`; the requests in
:mod:`crashsafe.objectstore._client`. Needs boto3: ``pip install 'crashsafe[s3]'``.

This package is imported by every write (to tell a URL from a path), so it
loads nothing until an object is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crashsafe.objectstore._url import is_url

if TYPE_CHECKING:
    from crashsafe.objectstore._client import S3Store

__all__ = ["S3Store", "is_url"]


def __getattr__(name: str) -> Any:
    if name == "S3Store":
        from crashsafe.objectstore._client import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
