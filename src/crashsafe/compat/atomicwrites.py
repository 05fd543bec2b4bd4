"""atomicwrites 1.4's public API on crashsafe's protocol: change the import, keep the calls.

``from atomicwrites import atomic_write`` becomes
``from crashsafe.compat.atomicwrites import atomic_write``; :func:`atomic_write`,
:class:`AtomicWriter` (with its overridable ``open``, ``_open``,
``get_fileobject``, ``sync``, ``commit`` and ``rollback``), :func:`replace_atomic`
and :func:`move_atomic` take the arguments atomicwrites takes. atomicwrites'
own test suite passes against this module (``tests/test_compat_atomicwrites.py``).

What changes, each on purpose (``docs/migration.md`` has the list):

* A replaced file keeps its mode, owner and group; a new file gets the mode
  ``open()`` would give it. atomicwrites published every file as 0600.
* A symlink at the target is followed: the file it points to is replaced and
  the link kept. atomicwrites replaced the link with a regular file.
* The temporary file is staged by :class:`crashsafe.AtomicFile`: on Linux it has
  no name until the instant it is published, so a killed writer almost never
  leaves one; what a kill does leave has a name that ``crashsafe sweep``
  recognises and removes (atomicwrites' ``tmpXXXXXXXX`` files look like any
  other program's).
  *prefix* and *suffix* of :meth:`AtomicWriter.get_fileobject` are accepted
  and not used.
* The file object's ``name`` is the target path, not a temporary path (as for
  every crashsafe file object). Change its mode with ``os.fchmod(f.fileno(),
  ...)`` or the *perm* keyword, not ``os.chmod(f.name, ...)``.
* Text is UTF-8 unless *encoding* says otherwise, whatever the locale.
* ``overwrite=False`` fails with :class:`FileExistsError` as soon as the
  target exists, before the block runs, as well as at commit time if the
  target appeared meanwhile (atomically, as atomicwrites does).
* The fsync of the file happens in :meth:`AtomicWriter.commit`, as crashsafe's
  protocol orders it; :meth:`AtomicWriter.sync` only flushes. The directory
  is fsynced after the rename, on every platform and for both functions.

Keywords of crashsafe's own are accepted as well: *perm* (the exact final
mode bits), *durability* (``"durable"``, ``"consistent"``, ``"none"``),
*preserve* and *hardlinks*, as for :func:`crashsafe.atomic_write`. A target
with more than one hard link raises :class:`crashsafe.HardLinkedTargetError`
before the block runs, where atomicwrites split the links silently; pass
``hardlinks="break"`` for atomicwrites' behaviour (a *dir* of the writer's
own keeps atomicwrites' rename, and its behaviour, there too). Extended attributes and
ACLs of a replaced file are kept (``preserve="mode"``: only mode and owner).
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any, BinaryIO

from crashsafe import _platform
from crashsafe._checks import DEFAULT_ENCODING, Durability
from crashsafe._metadata import Hardlinks, Preserve, check_keywords
from crashsafe.atomic import AtomicFile
from crashsafe.errors import NotDurableError

__all__ = ["AtomicWriter", "atomic_write", "move_atomic", "replace_atomic"]

# What atomicwrites 1.4.1 reports; its users sometimes check it.
__version__ = "1.4.1"

DEFAULT_MODE = "w"

# open() keywords that make sense for a staged file; anything else is refused by
# name. buffering only changes when data reaches the still invisible staged file.
_OPEN_KEYWORDS = frozenset({"encoding", "errors", "newline", "buffering"})


def replace_atomic(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move *src* to *dst*, replacing *dst* if it exists, durably.

    *src*'s data is fsynced first (a rename that reaches the disk before the
    data would leave an empty *dst* after a power cut), then *src* is renamed
    over *dst*, then *dst*'s directory (and *src*'s, if another) is fsynced.
    Both paths must be on one filesystem (:class:`OSError` ``EXDEV``
    otherwise). A symlink at *src* is moved as a link, and a symlink at *dst*
    is replaced, as :func:`os.replace` does.

    Raises the :class:`OSError` of the fsync (nothing moved) or of the rename;
    :class:`~crashsafe.NotDurableError` if the rename happened but a directory
    fsync failed.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    _sync_data(src)
    os.replace(src, dst)
    _sync_directories(src, dst)


def move_atomic(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move *src* to *dst*; :class:`FileExistsError` if *dst* exists.

    As atomicwrites does it: a hard link at *dst* (which fails atomically if
    any entry is there), then the removal of *src*; for a moment both names
    exist. *src*'s data is fsynced before the link, and both directories
    after the move. Both paths must be on one filesystem, which must support
    hard links.

    Raises the :class:`OSError` of the fsync or the link (nothing moved);
    if removing *src* fails after the link, *dst* is already in place and
    that :class:`OSError`, naming *src*, is raised;
    :class:`~crashsafe.NotDurableError` if a directory fsync failed.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    _sync_data(src)
    os.link(src, dst, follow_symlinks=False)
    os.unlink(src)
    _sync_directories(src, dst)


def _sync_data(path: str) -> None:
    # What cannot be opened for reading (a symlink, a FIFO, no permission) is
    # renamed as atomicwrites would, unsynced; the rename reports a missing file.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            _platform.fsync_file(fd)
    except OSError as e:
        e.filename = path
        raise
    finally:
        os.close(fd)


def _sync_directories(src: str, dst: str) -> None:
    dst_dir = os.path.dirname(os.path.abspath(dst))
    src_dir = os.path.dirname(os.path.abspath(src))
    for directory in dict.fromkeys((dst_dir, src_dir)):
        opened = _platform.Directory(directory)
        try:
            opened.sync()
        except OSError as e:
            raise NotDurableError(e.errno, e.strerror, dst) from e
        finally:
            opened.close()


class AtomicWriter:
    """Writes *path* all at once or not at all; subclass it to change a step.

    Usage, as with atomicwrites::

        with AtomicWriter(path, overwrite=True).open() as f:
            f.write(...)

    *mode*: a write mode (``"w"``, ``"wb"``, ``"w+"``...); ``"a"`` and ``"x"``
    raise :class:`ValueError` as in atomicwrites (use *overwrite*).
    *overwrite*: False (the default) raises :class:`FileExistsError` if an
    entry is at *path*, atomically even against a racing writer.
    *open_kwargs*: ``encoding``, ``errors``, ``newline`` and ``buffering``, as
    :func:`open` takes them; other keywords raise :class:`TypeError` when the
    file is opened. *perm* and *durability* are crashsafe's (see
    :class:`crashsafe.AtomicFile`).

    :meth:`open` yields the file from :meth:`get_fileobject`; when the block
    ends normally, :meth:`sync` and then :meth:`commit` run; when it raises,
    :meth:`rollback` runs and the exception propagates. Errors are those of
    :class:`crashsafe.AtomicFile`.
    """

    def __init__(
        self,
        path: str | bytes | os.PathLike[str],
        mode: str = DEFAULT_MODE,
        overwrite: bool = False,
        *,
        perm: int | None = None,
        durability: Durability = "durable",
        preserve: Preserve = "all",
        hardlinks: Hardlinks = "refuse",
        **open_kwargs: Any,
    ) -> None:
        if "a" in mode:
            raise ValueError(
                f"mode {mode!r}: appending is not supported by atomicwrites' API; "
                "use crashsafe.atomic_open(path, 'a') to append atomically"
            )
        if "x" in mode:
            raise ValueError(f"mode {mode!r}: use overwrite=False instead of 'x'")
        if "w" not in mode:
            raise ValueError(f"mode {mode!r}: an AtomicWriter only writes (a 'w' mode)")
        fspath = os.fspath(path)
        self._path = os.fsdecode(fspath) if isinstance(fspath, bytes) else fspath
        self._mode = mode
        self._overwrite = overwrite
        self._perm = perm
        self._durability: Durability = durability
        check_keywords(preserve, hardlinks)
        self._preserve: Preserve = preserve
        self._hardlinks: Hardlinks = hardlinks
        self._open_kwargs = open_kwargs
        # The staged files this writer handed out, by the file object's id; kept
        # (a discard after a commit does nothing) so that no id is ever reused.
        self._staged: dict[int, tuple[IO[Any], AtomicFile[BinaryIO]]] = {}

    def open(self) -> contextlib.AbstractContextManager[IO[Any]]:
        """The staged file, as a context manager (see the class)."""
        return self._open(self.get_fileobject)

    @contextlib.contextmanager
    def _open(self, get_fileobject: Callable[..., IO[Any]]) -> Iterator[IO[Any]]:
        f: IO[Any] | None = None
        success = False
        try:
            with get_fileobject(**self._open_kwargs) as f:
                yield f
                self.sync(f)
            self.commit(f)
            success = True
        finally:
            if not success:
                # The exception that got here is the one to report, not
                # one from cleaning up after it.
                with contextlib.suppress(Exception):
                    self.rollback(f)

    def get_fileobject(
        self,
        suffix: str = "",
        prefix: str = tempfile.gettempprefix(),
        dir: str | None = None,  # atomicwrites' keyword, shadowing the builtin
        **kwargs: Any,
    ) -> IO[Any]:
        """Return the staged file to write to.

        Without *dir*, or with the target's own directory, the file is a
        :class:`crashsafe.AtomicFile` staged next to the target (*prefix* and
        *suffix* are not used: crashsafe names it). With another *dir*, a
        temporary file is made there with :func:`tempfile.mkstemp` (mode 0600,
        as atomicwrites makes it) and :meth:`commit` renames it by name, as
        atomicwrites does: only the steps after it are crashsafe's.
        *kwargs* are :func:`open`'s (see the class).
        """
        unknown = sorted(set(kwargs) - _OPEN_KEYWORDS)
        if unknown:
            raise TypeError(f"{unknown[0]!r} is not an open() keyword AtomicWriter accepts")
        kwargs.pop("buffering", None)
        binary = "b" in self._mode
        if not binary:
            kwargs.setdefault("encoding", DEFAULT_ENCODING)
        if dir is not None and not _same_directory(dir, self._path):
            descriptor, name = tempfile.mkstemp(suffix=suffix, prefix=prefix, dir=dir)
            # The descriptor, not the name: reopening by name would lose
            # mkstemp's exclusive creation. commit() and rollback() need the name.
            try:
                # A first open that does not own the descriptor checks the
                # arguments: a failed open() may or may not have closed it.
                open(descriptor, self._mode, closefd=False, **kwargs).close()
            except BaseException:
                os.close(descriptor)
                os.unlink(name)
                raise
            temp = open(descriptor, self._mode, **kwargs)  # noqa: SIM115 - the caller's
            _raw(temp).name = name
            return temp
        staged = AtomicFile(
            self._path,
            "wb" if self._overwrite else "xb",
            perm=self._perm,
            durability=self._durability,
            preserve=self._preserve,
            hardlinks=self._hardlinks,
        )
        try:
            f = open(staged.descriptor, self._mode, closefd=False, **kwargs)  # noqa: SIM115
        except BaseException:
            staged.discard()
            raise
        _raw(f).name = self._path  # as every crashsafe file object is named
        self._staged[id(f)] = (f, staged)
        return f

    def sync(self, f: IO[Any]) -> None:
        """Flush *f* before :meth:`commit`.

        A staged file from :meth:`get_fileobject` is fsynced by
        :meth:`commit`, in the protocol's order; another file (from another
        *dir*, or from an overriding ``get_fileobject``) is fsynced here, as
        atomicwrites does.
        """
        f.flush()
        if id(f) not in self._staged:
            _platform.fsync_file(f.fileno())

    def commit(self, f: IO[Any]) -> None:
        """Publish *f* at the target: atomically, and durably by default.

        Raises :class:`FileExistsError` without *overwrite* if an entry
        appeared at the target; :class:`~crashsafe.NotDurableError` if the
        target was replaced but the directory fsync failed; the
        :class:`OSError` of a failed step otherwise, with the target untouched.
        A file that is not one of this writer's staged files is moved by its
        ``name`` with :func:`replace_atomic` or :func:`move_atomic`.
        """
        entry = self._staged.get(id(f))
        if entry is None:
            if self._overwrite:
                replace_atomic(f.name, self._path)
            else:
                move_atomic(f.name, self._path)
            return
        entry[0].close()
        entry[1].commit()

    def rollback(self, f: IO[Any] | None) -> None:
        """Throw *f* away; the target stays as it was.

        A file that is not one of this writer's staged files is removed by its
        ``name``, as atomicwrites does.
        """
        if f is None:
            return
        # A staged file's name is the target's: it is discarded, never unlinked.
        entry = self._staged.get(id(f))
        if entry is None:
            os.unlink(f.name)
            return
        try:
            entry[0].close()
        finally:
            entry[1].discard()


def _raw(f: IO[Any]) -> Any:
    # The FileIO under the buffer and text layers holds the name for all of them.
    return f.buffer.raw if isinstance(f, io.TextIOWrapper) else getattr(f, "raw", f)


def _same_directory(directory: str, path: str) -> bool:
    try:
        return os.path.samefile(directory, os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False


def atomic_write(
    path: str | bytes | os.PathLike[str],
    writer_cls: type[AtomicWriter] = AtomicWriter,
    **cls_kwargs: Any,
) -> contextlib.AbstractContextManager[IO[Any]]:
    """Open *path* for an all-or-nothing write, in a ``with`` statement.

    ``writer_cls(path, **cls_kwargs).open()``: *cls_kwargs* are
    :class:`AtomicWriter`'s (``mode``, ``overwrite``, open keywords, *perm*,
    *durability*); *writer_cls* is a subclass of it that changes a step.
    Without ``overwrite=True``, an existing *path* raises
    :class:`FileExistsError`.
    """
    return writer_cls(path, **cls_kwargs).open()
