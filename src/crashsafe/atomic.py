"""The crash-safety protocol for one file, top to bottom.

Every public write in crashsafe goes through :class:`AtomicFile`. Its steps are
numbered as in the project's contract (``docs/contract.md``):

1. open the target's directory once; every later step is relative to it;
2. create a temporary file there, exclusively, without following symlinks,
   unguessably named (or anonymous, with ``O_TMPFILE``);
3. give it the owner, then the exact mode, before any data is written;
4. the caller writes; :meth:`AtomicFile.commit` flushes, then runs the
   validators on the staged file, read-only from its start;
5. fsync the temporary file; on error remove it and raise, never retry;
6. rename it over the target (create-only: an atomic link that fails if the
   target exists);
7. fsync the directory; an error here is :class:`NotDurableError`;
8. on any failure before step 6, ``KeyboardInterrupt`` included, remove the
   temporary file. A commit happens at most once.

How each step is done on a platform lives in :mod:`crashsafe._platform`.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import (
    IO,
    Any,
    BinaryIO,
    Final,
    Generic,
    Literal,
    Self,
    TextIO,
    TypeGuard,
    TypeVar,
    cast,
    overload,
)

from crashsafe import _platform
from crashsafe.errors import NotDurableError, VerificationError

__all__ = [
    "DEFAULT_ENCODING",
    "AtomicFile",
    "BinaryMode",
    "Durability",
    "TextMode",
    "atomic_open",
    "atomic_write",
    "write_file_atomic",
]

Durability = Literal["durable", "consistent", "none"]
# The modes, as types: a mode held in a variable needs one of these (or a
# Literal of its own) for atomic_open and AtomicFile to be typed by it; a plain
# str is refused by the type checker, as "r" is.
TextMode = Literal["w", "wt", "x", "xt", "a", "at"]
BinaryMode = Literal["wb", "xb", "ab"]
# The encoding of text modes and of str data when none is given: UTF-8, as
# Python's own default from 3.15 (PEP 686), never the locale's.
DEFAULT_ENCODING: Final = "utf-8"
# The staged file object's type: TextIO for a text mode, BinaryIO for a binary one.
_F_co = TypeVar("_F_co", bound=IO[Any], covariant=True)
# Any object with the buffer protocol works at run time (numpy arrays too);
# collections.abc.Buffer, the exact type, needs Python 3.12.
BytesLike = bytes | bytearray | memoryview
_DURABILITIES: Final = ("durable", "consistent", "none")
Validator = Callable[[BinaryIO], object]
Validate = Validator | Sequence[Validator] | None

# mode -> (mode for the file object, replace an existing target, keep old content)
_MODES: Final[dict[str, tuple[str, bool, bool]]] = {
    "w": ("w", True, False),
    "wt": ("w", True, False),
    "wb": ("wb", True, False),
    "x": ("w", False, False),
    "xt": ("w", False, False),
    "xb": ("wb", False, False),
    "a": ("a", True, True),
    "at": ("a", True, True),
    "ab": ("ab", True, True),
}
_MAX_SYMLINKS: Final = 40  # as Linux's MAXSYMLINKS
_SETID: Final = stat.S_ISUID | stat.S_ISGID


def unnamed_os_error(error: object) -> TypeGuard[OSError]:
    """Whether *error* is a failed syscall's :class:`OSError` that names no file.

    Only those may be given the caller's path. An ``OSError`` without an
    errno (``io.UnsupportedOperation`` from reading a write-only file,
    :class:`shutil.SameFileError`) is a message, not a syscall's failure: a
    filename would turn ``str()`` of it into ``[Errno None] None: 'path'``.
    """
    return isinstance(error, OSError) and error.errno is not None and error.filename is None


def _check_options(mode: str, perm: int | None, durability: str) -> None:
    if not isinstance(mode, str) or mode not in _MODES:
        raise ValueError(f"invalid mode {mode!r}: expected one of {', '.join(_MODES)}")
    if perm is not None and (
        not isinstance(perm, int)
        or isinstance(perm, bool)
        or not 0 <= perm <= 0o7777
        # 644 for 0o644? Real modes up to 0o777 (511) fail this at its first compare.
        or 512 <= perm <= 777
    ):
        _check_perm(perm)
    if durability not in _DURABILITIES:
        raise ValueError(
            f"invalid durability {durability!r}: expected one of {', '.join(_DURABILITIES)}"
        )


def _check_perm(perm: object) -> None:
    """Raise ValueError for a *perm* that is no mode or is an octal mode written in decimal.

    ``perm=644`` is 0o1204: the sticky bit, meaningless on a file, with an
    owner who cannot read. Every int from 512 to 777 whose digits are all 0-7
    is such a slip (its octal reading is 0o1000 to 0o1411: sticky, owner
    without both read and write, nothing a file is meant to have), so it is
    refused. Four digits (1777, 2755) cannot be told from a real setuid or
    setgid mode below 0o7777 and are taken as given; above it (4755) they are
    refused with the same hint.
    """
    if not isinstance(perm, int) or isinstance(perm, bool) or perm < 0:
        raise ValueError(f"perm must be an int from 0 to 0o7777, not {perm!r}")
    digits = str(perm)
    octal_slip = perm > 0o777 and digits.isdigit() and set(digits) <= set("01234567")
    if octal_slip and (perm <= 777 or perm > 0o7777) and int(digits, 8) <= 0o7777:
        raise ValueError(
            f"perm={perm} looks like an octal mode written in decimal ({perm} is 0o{perm:o}); "
            f"did you mean 0o{digits}?"
        )
    if perm > 0o7777:
        raise ValueError(f"perm must be an int from 0 to 0o7777, not {perm!r}")


def check_flag(keyword: str, value: object) -> None:
    """Raise :class:`TypeError` unless *value* is True or False.

    Every truthy object would pass for True: ``overwrite="no"`` must not
    overwrite.
    """
    if value is not True and value is not False:
        raise TypeError(f"{keyword} must be True or False, not {value!r}")


def _validators(validate: Validator | Sequence[Validator]) -> tuple[Validator, ...]:
    checks = (validate,) if callable(validate) else validate
    if isinstance(checks, str | bytes) or not isinstance(checks, Sequence):
        raise TypeError(
            f"validate must be a callable or a list of them, not {type(validate).__name__}"
        )
    for check in checks:
        if not callable(check):
            raise TypeError(f"validate: {check!r} is not callable")
    return tuple(checks)


def _locate(
    path: str, follow_symlinks: bool
) -> tuple[_platform.Directory, str, _platform.Status | None]:
    """Open the directory that will hold the target; return it, the target's name in it,
    and the target's own status (None if there is no such entry).

    With *follow_symlinks*, a symlink at the last component is followed (link
    by link, each relative to the directory that holds it) so that the file it
    points to is the one replaced, and a dangling link creates its target.
    Create-only writes never pass it: they publish at the path's own name, and
    any entry there, a symlink included, makes them fail.
    """
    head, name = os.path.split(path)
    if name in ("", ".", ".."):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
    directory = _platform.Directory(head)
    try:
        # The common case (no symlink) before the loop: 2 % of a write after an
        # fsync's wait, when every bytecode costs double (docs/benchmarks.md).
        st = directory.lstat(name)
        if st is None or not follow_symlinks or not stat.S_ISLNK(st.st_mode):
            return directory, name, st
        # Linux follows at most 40 links in a row; so does this, then says ELOOP.
        for _ in range(_MAX_SYMLINKS):
            link_head, name = os.path.split(os.path.join(head, directory.readlink(name)))
            if link_head != head:
                # Open the next directory before closing this one, so that a
                # failure leaves exactly one descriptor for the handler to close.
                next_directory = _platform.Directory(link_head)
                directory.close()
                directory, head = next_directory, link_head
            if name in ("", ".", ".."):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            st = directory.lstat(name)
            if st is None or not stat.S_ISLNK(st.st_mode):
                return directory, name, st
        raise OSError(errno.ELOOP, "Too many levels of symbolic links", path)
    except BaseException:
        directory.close()
        raise


def _replaced_file(
    old: _platform.Status | None, replace: bool, path: str
) -> _platform.Status | None:
    """The status of the regular file that the write will replace, or None if it
    creates one (no entry, or a symlink that is replaced, not followed).

    Raises for an entry that must not be replaced: in a create-only mode any
    entry at all (``FileExistsError``, as ``open(path, "x")`` and ``O_EXCL``
    say, for a directory or a symlink too, dangling or not); otherwise a
    directory, a FIFO or a device.
    """
    if old is None:
        return None
    if not replace:
        raise FileExistsError(errno.EEXIST, "File exists", path)
    if stat.S_ISDIR(old.st_mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
    if stat.S_ISREG(old.st_mode):
        return old
    if stat.S_ISLNK(old.st_mode):
        return None
    raise OSError(errno.EINVAL, "Not a regular file; only those are replaced", path)


class AtomicFile(Generic[_F_co]):
    """A staged file that replaces *path* all at once, or not at all.

    The new content is written to :attr:`file`, a real file object (it has
    ``fileno()``, ``seek()`` and ``tell()``), and becomes visible at *path*
    only on :meth:`commit`. :meth:`discard` throws it away. Used as a context
    manager, a normal exit commits (unless the block already called
    :meth:`commit` or :meth:`discard`) and any exception
    (``KeyboardInterrupt`` included) discards. An AtomicFile that is
    garbage-collected while still open is discarded with a
    :class:`ResourceWarning`.

    *mode* is one of ``w``, ``wb``, ``x``, ``xb`` (create-only: like
    ``open(path, "x")``, any entry at *path* raises :class:`FileExistsError`:
    a file, a directory, or a symlink, dangling or not, whatever
    *follow_symlinks* says; one that appears before the commit makes commit
    raise it, atomically, even against racing writers) and ``a``, ``ab`` (the
    old content, then what is written, published at once; concurrent
    appenders need a lock to not lose each other's appends). ``t`` may be
    added to a text mode. A text mode's
    *encoding* is UTF-8 unless given (:data:`DEFAULT_ENCODING`), whatever
    the locale.

    For a type checker, :attr:`file` is :class:`~typing.TextIO` for a text
    mode and :class:`~typing.BinaryIO` for a binary one (``AtomicFile[TextIO]``,
    ``AtomicFile[BinaryIO]``), so writing bytes to a text file is caught
    before it runs. The mode must be a literal: one held in a variable needs
    a :data:`TextMode` or :data:`BinaryMode` type (or a ``Literal`` of its
    own); a plain ``str``, like an invalid mode such as ``"r"``, is a type
    error.

    *durability* says what a returned :meth:`commit` survives:

    * ``"durable"``: fsync the file, rename, fsync the directory. After
      commit returns, the new content survives a power cut.
    * ``"consistent"``: fsync the file, rename. A power cut leaves the old or
      the new content, never a mix, but may leave the old one after commit
      returned.
    * ``"none"``: no fsync. A killed process never leaves a torn target; a
      power cut may leave an empty or partial one on some filesystems.

    *perm*: given, the file ends with exactly these mode bits, whatever the
    umask. Not given, a replaced file keeps its mode and, where permitted,
    its owner and group; a new file gets the mode ``open()`` would give it
    (0o666 less the umask, or the directory's default ACL). The temporary
    file is never more permissive than the final one. *perm* is an int
    written in octal (``0o644``): an int from 512 to 777 made of the digits
    0-7 (``perm=644``, which is 0o1204: sticky, and the owner cannot read)
    is taken for octal written in decimal and raises :class:`ValueError`.

    *follow_symlinks*: a symlink at *path* is followed and the file it points
    to replaced, keeping the link (a dangling link creates its target). With
    False, the link itself is replaced by a regular file. Create-only modes
    follow no link: a link at *path* is an existing entry.

    *validate*: a callable, or a sequence of them, each called by
    :meth:`commit` with the complete staged content as a read-only binary
    file positioned at its start, before the fsync and the rename. A
    validator rejects the content by raising, usually
    :class:`~crashsafe.VerificationError` (see :mod:`crashsafe.validators`);
    commit then raises that exception, with ``filename`` set to *path*, and
    publishes nothing.

    Raises, before anything is created: :class:`ValueError` for a bad *mode*,
    *perm* or *durability*, or an *encoding* with a binary mode;
    :class:`TypeError` for a *validate* that is not callable or a
    *follow_symlinks* that is not a bool;
    :class:`IsADirectoryError` if *path* is a directory; :class:`OSError`
    (``EINVAL``) if it is another kind of non-regular file (a FIFO, a device),
    which crashsafe never replaces; :class:`FileExistsError` for ``x`` modes
    when any entry is at *path*; the
    :class:`OSError` of any failed step (a missing directory, no permission).
    """

    # No per-instance dict: a write's object is made and dropped on every call.
    __slots__ = (
        "__weakref__", "_dir", "_durability", "_fd", "_file", "_mode", "_name",
        "_open_args", "_replace", "_state", "_temp", "_validators", "path",
    )  # fmt: skip

    @overload
    def __init__(
        self: AtomicFile[BinaryIO],
        path: str | os.PathLike[str],
        mode: BinaryMode = "wb",
        *,
        perm: int | None = None,
        durability: Durability = "durable",
        follow_symlinks: bool = True,
        validate: Validate = None,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self: AtomicFile[TextIO],
        path: str | os.PathLike[str],
        mode: TextMode,
        *,
        perm: int | None = None,
        durability: Durability = "durable",
        follow_symlinks: bool = True,
        validate: Validate = None,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> None: ...
    def __init__(
        self,
        path: str | os.PathLike[str],
        mode: str = "wb",
        *,
        perm: int | None = None,
        durability: Durability = "durable",
        follow_symlinks: bool = True,
        validate: Validate = None,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> None:
        self._state = "new"  # so that __del__ is quiet if __init__ fails early
        _check_options(mode, perm, durability)
        if follow_symlinks is not True and follow_symlinks is not False:  # no frame per write
            check_flag("follow_symlinks", follow_symlinks)
        self._validators = () if validate is None else _validators(validate)
        file_mode, self._replace, keep_old = _MODES[mode]
        binary = "b" in file_mode
        if binary and (encoding, errors, newline) != (None, None, None):
            raise ValueError("binary mode takes no encoding, errors or newline argument")
        # A str needs neither call (each a Python frame, on every write).
        self.path = path if isinstance(path, str) else os.fsdecode(os.fspath(path))
        self._durability = durability

        # Step 1: the directory, once; symlinks at the last component resolved,
        # except for create-only: a link there is an entry, which it refuses.
        self._dir, self._name, old = _locate(self.path, follow_symlinks and self._replace)
        self._fd: int | None = None
        self._temp: str | None = None
        try:
            existing = _replaced_file(old, self._replace, self.path)

            # Steps 2 and 3: the temporary file, with its owner, then its
            # exact mode, before a byte of data is in it.
            if perm is not None:
                mode_bits: int | None = perm
            elif existing:
                mode_bits = stat.S_IMODE(existing.st_mode)
            else:
                mode_bits = self._new_file_perm
            owner = (existing.st_uid, existing.st_gid) if existing and perm is None else None
            with _platform.signals_deferred():
                self._fd, self._temp, self._mode = self._dir.create_temp(
                    self._name, mode_bits, owner
                )
                self._state = "open"

            if keep_old and existing:
                source = self._dir.open_read(self._name)
                try:
                    _platform.copy_into(source, self._fd)
                finally:
                    os.close(source)
            # The file object is made on first use of .file: atomic_write and
            # the batch and transaction writers need none, and it costs three
            # syscalls. A text one is made now, so a bad encoding fails here.
            self._file: IO[Any] | None = None
            if encoding is None and not binary:
                encoding = DEFAULT_ENCODING
            self._open_args = (file_mode, encoding, errors, newline)
            if not binary:
                self._file = self._open_file()
        except BaseException as e:
            self._fail(e)
            raise

    # The mode of a new file when no perm is given; None: what open() would give.
    # atomic_copy's staged file sets it to the source's permission bits.
    _new_file_perm: int | None = None

    @property
    def file(self) -> _F_co:
        """The staged file object, to write the new content to.

        A real file object (it has ``fileno()``, ``seek()`` and ``tell()``),
        binary or text as *mode* says. Closing it does not commit. Its
        ``name`` is the target path (:attr:`path`), for libraries that take
        the format from the extension; the content is there only after
        :meth:`commit`.
        """
        if self._file is None:
            if self._state != "open":
                raise ValueError(f"the staged file for {self.path!r} was already {self._state}")
            self._file = self._open_file()
        return cast("_F_co", self._file)

    def _open_file(self) -> IO[Any]:
        assert self._fd is not None
        file_mode, encoding, errors, newline = self._open_args
        f = open(  # noqa: SIM115 - closed by commit or discard
            self._fd,
            file_mode,
            encoding=None if "b" in file_mode else io.text_encoding(encoding),
            errors=errors,
            newline=newline,
            closefd=False,
        )
        # open(fd) names the file by its descriptor, an int; libraries that
        # take the format from the name's extension (Pillow's Image.save)
        # need the path. The raw FileIO holds the name for every layer above it.
        layer: Any = f.buffer if isinstance(f, io.TextIOWrapper) else f
        layer.raw.name = self.path
        return f

    def _write(self, data: BytesLike) -> None:
        # atomic_write's path: all of data straight to the descriptor, looping
        # on short writes, with no file object in between.
        view = memoryview(data)
        if self._file is not None or view.ndim != 1 or view.itemsize != 1:
            self.file.write(view)
            return
        assert self._fd is not None
        while view:
            view = view[os.write(self._fd, view) :]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # A block that already committed or discarded explicitly has decided.
        if exc_type is None and self._state == "open":
            self.commit()
            return
        if self._state == "open" and unnamed_os_error(exc):
            # A failed write to the staged file (ENOSPC, EIO) names nothing;
            # the target is the name the caller knows.
            exc.filename = self.path
        self.discard()

    def commit(self) -> None:
        """Publish the written content at the target path, once.

        Raises, with the target untouched and the temporary file removed:
        whatever a validator raised (:class:`~crashsafe.VerificationError`
        with ``filename`` set to the target path, for the built-in ones); the
        :class:`OSError` of the flush or fsync (never retried; the staged data
        is gone and this file cannot be committed again), or of the rename
        (:class:`FileExistsError` for create-only modes). Raises
        :class:`NotDurableError` if the target was replaced but the directory
        fsync failed. Raises :class:`ValueError` if already committed or
        discarded.
        """
        self._publish(self._name, replace=self._replace, sync=self._durability == "durable")

    def _publish(self, name: str, *, replace: bool, sync: bool, keep_dir: bool = False) -> None:
        # commit() publishes at the target's name; a transaction publishes under
        # a private staging name, and write_many keeps the directory open
        # (keep_dir), to sync each directory once for all their files.
        if self._state != "open":
            raise ValueError(f"cannot commit {self.path!r}: it was already {self._state}")
        assert self._fd is not None
        try:
            # Step 4: the file object's buffer reaches the kernel.
            if self._file is not None:
                self._file.close()
            if self._mode & _SETID:
                # A write() by a process without CAP_FSETID clears setuid and
                # setgid; the file is still invisible, so set them again now.
                _platform.set_metadata(self._fd, self._mode, None)
            for check in self._validators:
                self._run(check, self._fd)
            # Step 5: the data reaches the disk before any name points to it.
            if self._durability != "none":
                _platform.fsync_file(self._fd)
            # Step 6: the platform takes the descriptor and the name; the
            # state changes in the same breath, or an interrupt could make a
            # published file look unpublished.
            with _platform.signals_deferred():
                fd, temp, self._fd, self._temp = self._fd, self._temp, None, None
                self._dir.publish(fd, temp, name, replace=replace)
                self._state = "committed"
        except BaseException as e:
            if self._state != "committed":
                self._fail(e)
                raise
            # A signal held back during the rename is raised as the block
            # ends: the target is replaced, and must not be reported otherwise.
            if not keep_dir:
                self._dir.close()
            raise
        if keep_dir:
            return
        try:
            # Step 7: the rename reaches the disk.
            if sync:
                self._dir.sync()
        except OSError as e:
            raise NotDurableError(e.errno, e.strerror, self.path) from e
        finally:
            self._dir.close()

    @staticmethod
    def _run(check: Validator, fd: int) -> None:
        # The writer is closed, so its file position is free to reuse; every
        # validator starts at offset 0, through an object that cannot write.
        os.lseek(fd, 0, os.SEEK_SET)
        with open(fd, "rb", closefd=False) as reader:
            check(reader)

    @property
    def committed(self) -> bool:
        """Whether the new content has been published at the target.

        True from the rename on, even if :meth:`commit` then raised
        :class:`NotDurableError` or was interrupted during the directory fsync:
        a caller that caught an exception can tell "replaced" from "not".
        """
        return self._state == "committed"

    def discard(self) -> None:
        """Throw the staged content away; the target stays as it was.

        Does nothing after :meth:`commit` or an earlier discard, so it is
        safe in a ``finally`` block.
        """
        if self._state == "open":
            self._discard()

    def _fail(self, error: BaseException) -> None:
        self._discard()
        # Errors from the file object, fsync or a validator carry no name; the
        # target's is the one the caller knows.
        if unnamed_os_error(error) or (
            isinstance(error, VerificationError) and error.filename is None
        ):
            error.filename = self.path

    def _discard(self) -> None:
        # Step 8: every path that does not commit ends here.
        self._state = "discarded"
        try:
            file = getattr(self, "_file", None)  # absent if __init__ failed early
            if file is not None:
                file.close()
        except OSError:
            pass  # a failed flush of data that is being thrown away
        finally:
            fd, temp, self._fd, self._temp = self._fd, self._temp, None, None
            try:
                if fd is not None:
                    self._dir.discard(fd, temp)
            finally:
                self._dir.close()

    def __del__(self) -> None:
        if getattr(self, "_state", None) == "open":
            warnings.warn(
                f"AtomicFile for {self.path!r} was never committed or discarded; discarding it",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )
            self._discard()

    def __repr__(self) -> str:
        return f"<crashsafe.AtomicFile {self.path!r} {self._state}>"


@overload
def atomic_open(
    path: str | os.PathLike[str],
    mode: TextMode,
    *,
    perm: int | None = None,
    durability: Durability = "durable",
    follow_symlinks: bool = True,
    validate: Validate = None,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
) -> AbstractContextManager[TextIO]: ...
@overload
def atomic_open(
    path: str | os.PathLike[str],
    mode: BinaryMode = "wb",
    *,
    perm: int | None = None,
    durability: Durability = "durable",
    follow_symlinks: bool = True,
    validate: Validate = None,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
) -> AbstractContextManager[BinaryIO]: ...
@contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    mode: TextMode | BinaryMode = "wb",
    *,
    perm: int | None = None,
    durability: Durability = "durable",
    follow_symlinks: bool = True,
    validate: Validate = None,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
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
    """
    staged = AtomicFile(
        path,
        mode,
        perm=perm,
        durability=durability,
        follow_symlinks=follow_symlinks,
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
    validate: Validate = None,
    encoding: str = DEFAULT_ENCODING,
) -> None:
    """Replace *path* with *data*, all or nothing.

    *data* is bytes (or any buffer) or str, which is encoded with *encoding*
    (UTF-8 unless given, as text modes of :func:`atomic_open`) before
    anything is created. With *overwrite* False, any entry at *path*
    (a symlink too, dangling or not) raises :class:`FileExistsError`,
    atomically, as mode ``xb`` of :class:`AtomicFile` does. The other keywords and the
    errors are those of :class:`AtomicFile`; a wrong type of *data*, or an
    *overwrite* that is not a bool, raises :class:`TypeError`.
    """
    if overwrite is not True and overwrite is not False:  # no frame per write
        check_flag("overwrite", overwrite)
    if isinstance(data, str):
        data = data.encode(encoding)
    elif not isinstance(data, bytes):
        data = _as_bytes(data, "bytes or str")
    with AtomicFile(
        path,
        "wb" if overwrite else "xb",
        perm=perm,
        durability=durability,
        follow_symlinks=follow_symlinks,
        validate=validate,
    ) as staged:
        staged._write(data)


def _as_bytes(data: object, expected: str) -> memoryview:
    try:
        return memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"data must be {expected}, not {type(data).__name__}") from None


def write_file_atomic(
    dir: str | os.PathLike[str], name: str | os.PathLike[str], data: BytesLike, perm: int
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
    """
    atomic_write(
        os.path.join(os.fsdecode(os.fspath(dir)), single_name(name)),
        _as_bytes(data, "bytes"),
        perm=perm,
        follow_symlinks=False,
    )


def single_name(name: object) -> str:
    """Return *name* as a str if it is one file name (no separator, not ``.`` or
    ``..``), else raise :class:`ValueError`.

    A path-like object or bytes is taken as its text, as paths are everywhere;
    anything else raises :class:`TypeError`.
    """
    if isinstance(name, bytes | os.PathLike):
        name = os.fsdecode(os.fspath(name))
    elif not isinstance(name, str):
        raise TypeError(
            f"name must be a file name (str, bytes or os.PathLike), not {type(name).__name__}"
        )
    if name in ("", ".", "..") or "/" in name or "\0" in name or os.sep in name:
        raise ValueError(f"name must be a single file name, not {name!r}")
    return name
