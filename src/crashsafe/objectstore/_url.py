"""Object URLs: which strings name an object rather than a local file.

Only a :class:`str` that starts with ``s3://`` is an object URL. A
:class:`pathlib.Path` never is, so a local file whose name happens to start
with ``s3:`` stays reachable as ``Path("s3://...")``. ``gs://`` and ``az://``
are recognised only to refuse them clearly: crashsafe speaks S3's protocol,
and Google Cloud Storage and Azure Blob Storage express conditional writes
differently.
"""

from __future__ import annotations

from typing import Final, NamedTuple

__all__ = ["SCHEMES", "ObjectURL", "is_url", "parse"]

SCHEME: Final = "s3://"
# s3:// and the schemes recognised only to be refused by name.
SCHEMES: Final = (SCHEME, "gs://", "az://", "abfs://", "gcs://")


def is_url(path: object) -> bool:
    """True if *path* is a str naming an object: ``s3://``, or a scheme :func:`parse` refuses."""
    return isinstance(path, str) and path.startswith(SCHEMES)


class ObjectURL(NamedTuple):
    """A bucket and a key (or a key prefix); ``str()`` gives the ``s3://`` form back.

    (A named tuple, not a dataclass: this module is imported by every write,
    and :mod:`dataclasses` costs milliseconds to import.)
    """

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    def join(self, name: str) -> ObjectURL:
        """The object *name* under this URL taken as a prefix (a ``/`` is added if missing)."""
        prefix = self.key if not self.key or self.key.endswith("/") else self.key + "/"
        return ObjectURL(self.bucket, prefix + name)


def parse(url: str, *, prefix: bool = False) -> ObjectURL:
    """Split ``s3://bucket/key`` into its bucket and key.

    With *prefix*, the key may be empty or end with ``/`` (it names a set of
    objects); otherwise it must name one object. Raises :class:`ValueError`,
    naming *url*, for another scheme, an empty bucket or an unusable key.
    """
    if not url.startswith(SCHEME):
        scheme = url.split("://", 1)[0]
        raise ValueError(
            f"{url!r}: {scheme}:// is not supported; crashsafe writes objects through the S3 "
            "protocol only (s3://bucket/key), whose conditional writes it relies on"
        )
    bucket, sep, key = url[len(SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"{url!r}: no bucket; expected s3://bucket/key")
    if prefix:
        return ObjectURL(bucket, key)
    if not sep or not key:
        raise ValueError(f"{url!r}: no key; expected s3://bucket/key")
    if key.endswith("/"):
        raise ValueError(f"{url!r}: a key ending in '/' names a prefix, not an object")
    return ObjectURL(bucket, key)
