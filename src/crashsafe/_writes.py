"""The one-call writes built on :class:`~crashsafe.atomic.AtomicFile`.

:func:`atomic_open`, :func:`atomic_write` and :func:`write_file_atomic` are
imported from :mod:`crashsafe.atomic`, where they are documented as part of
the protocol's public face; they live here so that the protocol module holds
the protocol.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO, Unpack, overload

from crashsafe._checks import (
    DEFAULT_ENCODING,
    BinaryMode,
    BytesLike,
    Durability,
    OpenOptions,
    TextMode,
    Validate,
    as_bytes,
    check_flag,
    single_name,
)
from crashsafe._metadata import Hardlinks, Preserve
from crashsafe.atomic import AtomicFile
from crashsafe.objectstore._url import is_url

if TYPE_CHECKING:
    from crashsafe.objectstore import S3Store

__all__ = ["atomic_open", "atomic_write", "write_file_atomic"]


@overload
def atomic_open(
    path: str | os.PathLike[str],
    mode: TextMode,
    *,
    store: S3Store | None = None,
    **options: Unpack[OpenOptions],
) -> AbstractContextManager[TextIO]: ...
@overload
def atomic_open(
    path: str | os.PathLike[str],
    mode: BinaryMode = "wb",
    *,
    store: S3Store | None = None,
    **options: Unpack[OpenOptions],
) -> AbstractContextManager[BinaryIO]: ...
@contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    mode: TextMode | BinaryMode = "wb",
    *,
    perm: int | None = None,
    durability: Durability = "durable",
    follow_symlinks: bool = True,
    parents: bool = False,
    preserve: Preserve = "all",
    hardlinks: Hardlinks = "refuse",
    validate: Validate = None,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    store: S3Store | None = None,
) -> Iterator[Any]:  # typed by the overloads above
    """Open *path* for an all-or-nothing write; use it in a ``with`` statement.

    Yields a real file object. Leaving the block normally publishes what was
    written, atomically and (by default) durably; leaving it by any exception,
    ``KeyboardInterrupt`` included, leaves *path* exactly as it was and no
    temporary file behind. Modes and keywords are those of
    :class:`AtomicFile`, as are the errors. The file object is typed
    :class:`~typing.TextIO` for a text mode (UTF-8 unless *encoding* says
    otherwise) and :class:`~typing.BinaryIO` for a binary one; the mode must
    be a literal or have a :data:`TextMode` or :data:`BinaryMode` type.

    Example::

        with crashsafe.atomic_open("state.json", "w", validate=validators.json) as f:
            json.dump(state, f)

    *path* may be an ``s3://bucket/key`` URL (modes ``wb``, ``xb``, ``w``,
    ``x``; *store* an :class:`~crashsafe.objectstore.S3Store`, else the
    ``AWS_*`` environment): the block writes to an anonymous local file, and
    its end publishes it as one object (see the README's object-storage
    section); *perm*, *follow_symlinks* and a *durability* other than
    ``"durable"`` raise :class:`ValueError` there, and *parents* is accepted
    and has nothing to do (a key needs no directory).
    """
    if parents is not False and parents is not True:
        check_flag("parents", parents)
    if is_url(path):
        from crashsafe.objectstore import _objects

        assert isinstance(path, str)
        _objects.check_options(
            path, perm=perm, durability=durability, follow_symlinks=follow_symlinks
        )
        with _objects.open_for_write(
            path,
            mode,
            validate=validate,
            encoding=encoding,
            errors=errors,
            newline=newline,
            store=store,
        ) as f:
            yield f
        return
    if store is not None:
        raise ValueError(f"{os.fsdecode(os.fspath(path))!r}: store= applies to s3:// URLs only")
    staged = AtomicFile(
        path,
        mode,
        perm=perm,
        durability=durability,
        follow_symlinks=follow_symlinks,
        parents=parents,
        preserve=preserve,
        hardlinks=hardlinks,
        validate=validate,
        encoding=encoding,
        errors=errors,
        newline=newline,
    )
    with staged:
        yield staged.file


def atomic_write(
    path: str | os.PathLike[str],
    data: BytesLike | str,
    *,
    perm: int | None = None,
    durability: Durability = "durable",
    overwrite: bool = True,
    follow_symlinks: bool = True,
    parents: bool = False,
    preserve: Preserve = "all",
    hardlinks: Hardlinks = "refuse",
    validate: Validate = None,
    encoding: str = DEFAULT_ENCODING,
    store: S3Store | None = None,
) -> None:
    """Replace *path* with *data*, all or nothing.

    *data* is bytes (or any buffer) or str, which is encoded with *encoding*
    (UTF-8 unless given, as text modes of :func:`atomic_open`) before
    anything is created. With *overwrite* False, any entry at *path*
    (a symlink too, dangling or not) raises :class:`FileExistsError`,
    atomically, as mode ``xb`` of :class:`AtomicFile` does. The other keywords and the
    errors are those of :class:`AtomicFile` (*parents*: missing directories
    made first, durably with ``"durable"``); a wrong type of *data*, or an
    *overwrite* or *parents* that is not a bool, raises :class:`TypeError`.

    *path* may be an ``s3://bucket/key`` URL (*store* an
    :class:`~crashsafe.objectstore.S3Store`, else the ``AWS_*`` environment):
    one object, never partial; with *overwrite* False, :class:`FileExistsError`
    even against writers on other machines; *parents* is accepted and has
    nothing to do. See the README's object-storage section for what holds
    there and the errors it adds.
    """
    if overwrite is not True and overwrite is not False:  # no frame per write
        check_flag("overwrite", overwrite)
    if parents is not False and parents is not True:
        check_flag("parents", parents)
    if isinstance(data, str):
        data = data.encode(encoding)
    elif not isinstance(data, bytes):
        data = as_bytes(data, "bytes or str")
    if store is not None or is_url(path):
        _write_object(
            path,
            bytes(data),
            overwrite=overwrite,
            perm=perm,
            durability=durability,
            follow_symlinks=follow_symlinks,
            validate=validate,
            store=store,
        )
        return
    with AtomicFile(
        path,
        "wb" if overwrite else "xb",
        perm=perm,
        durability=durability,
        follow_symlinks=follow_symlinks,
        parents=parents,
        preserve=preserve,
        hardlinks=hardlinks,
        validate=validate,
    ) as staged:
        staged.write_all(data)


def _write_object(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    overwrite: bool,
    perm: int | None,
    durability: Durability,
    follow_symlinks: bool,
    validate: Validate,
    store: S3Store | None,
) -> None:
    if not is_url(path):
        raise ValueError(f"{os.fsdecode(os.fspath(path))!r}: store= applies to s3:// URLs only")
    from crashsafe.objectstore import _objects

    assert isinstance(path, str)
    _objects.check_options(path, perm=perm, durability=durability, follow_symlinks=follow_symlinks)
    _objects.write(path, data, overwrite=overwrite, validate=validate, store=store)


def write_file_atomic(
    dir: str | os.PathLike[str],
    name: str | os.PathLike[str],
    data: BytesLike,
    perm: int,
    *,
    preserve: Preserve = "all",
    hardlinks: Hardlinks = "refuse",
) -> None:
    """Write *data* to ``dir/name`` with exactly the mode *perm*, all or nothing, durably.

    The entry ``dir/name`` itself becomes a regular file: a symlink there is
    replaced, not followed (use :func:`atomic_write` to write through links).
    On any failure the underlying :class:`OSError` is raised with its errno
    intact, the previous file is untouched and no temporary file is left; a
    missing or unwritable *dir* creates nothing. :class:`NotDurableError`
    means the file was replaced but the directory fsync failed.

    *dir* and *name* may be str, bytes or path-like. Raises
    :class:`ValueError` if *name* is not a single path component and
    :class:`TypeError` if *data* is not bytes-like or *name* not a name.
    *preserve* and *hardlinks* are those of :class:`AtomicFile`.
    """
    atomic_write(
        os.path.join(os.fsdecode(os.fspath(dir)), single_name(name)),
        as_bytes(data, "bytes"),
        perm=perm,
        follow_symlinks=False,
        preserve=preserve,
        hardlinks=hardlinks,
    )
