"""crashsafe on S3-compatible object storage: the same calls, given ``s3://bucket/key``.

:func:`crashsafe.atomic_write`, :func:`~crashsafe.atomic_open`,
:func:`~crashsafe.atomic_copy`, :func:`~crashsafe.read_json`,
:func:`~crashsafe.write_json`, :func:`~crashsafe.update`,
:func:`~crashsafe.update_json`, :func:`~crashsafe.transaction`,
:func:`~crashsafe.snapshot` and :func:`~crashsafe.sweep` accept an object URL
where they accept a path, and come here for it. The protocol is in
:mod:`crashsafe.objectstore._commit`; the requests in
:mod:`crashsafe.objectstore._client`. Needs boto3: ``pip install 'crashsafe[s3]'``.
"""

from __future__ import annotations

from crashsafe.objectstore._client import Endpoint
from crashsafe.objectstore._url import is_url

__all__ = ["Endpoint", "is_url"]
