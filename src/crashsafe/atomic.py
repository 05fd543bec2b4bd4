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

How each step is done on a platform lives in :mod:`crashsafe._platform`, step
1's path resolution in :mod:`crashsafe._target`, the argument checks in
:mod:`crashsafe._checks`; :func:`atomic_open`, :func:`atomic_write` and
:func:`write_file_atomic` (in :mod:`crashsafe._writes`) are importable from here.

Internal doors, the only part of :class:`AtomicFile` its siblings (batch,
transactions, copying) use beyond the public API, and not part of it:
:meth:`~AtomicFile.stage` (in a directory the caller opened; the mode of a new
file), :meth:`~AtomicFile.write_all`, :meth:`~AtomicFile.publish` (under
another name; without the directory sync), :attr:`~AtomicFile.descriptor`.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from collections.abc import Callable
from contextvars import ContextVar
from typing import IO, Any, BinaryIO, Final, Generic, Self, TextIO, TypeVar, Unpack, cast, overload

from crashsafe import _platform
from crashsafe._checks import (
    DEFAULT_ENCODING,
    MODES,
    MUST_EXIST,
    BinaryMode,
    BytesLike,
    Durability,
    OpenOptions,
    TextMode,
    Validate,
    Validator,
    check_flag,
    check_options,
    unnamed_os_error,
    validators_of,
)
from crashsafe._metadata import (
    Hardlinks,
    Preserve,
    carry,
    check_keywords,
    check_target,
    metadata_not_kept,
)
from crashsafe._target import Target, locate, replaced_file
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
# The staged file object's type: TextIO for a text mode, BinaryIO for a binary one.
_F_co = TypeVar("_F_co", bound=IO[Any], covariant=True)
_SETID: Final = stat.S_ISUID | stat.S_ISGID

#: Internal door for :mod:`crashsafe.aio`: called (where set) right before
#: step 6, in the thread that commits. Raising there discards the staged file,
#: so a cancelled task's write is never published; returning lets the commit
#: run to its end. Unset, a commit costs one lookup more.
commit_gate: ContextVar[Callable[[], None] | None] = ContextVar(
    "crashsafe_commit_gate", default=None
)


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
    appenders need a lock to not lose each other's appends), and the update
    modes, with ``open()``'s meaning: ``r+``, ``r+b`` (the file must exist:
    a missing one raises :class:`FileNotFoundError` naming *path* before
    anything is created, *parents* included; the staged file starts as a
    copy of the current content, positioned at 0), ``a+``, ``a+b`` (the same
    copy, or an empty file if there is none; writes land at the end, as
    with ``O_APPEND``, wherever a seek put the position, and reads start
    wherever a seek puts it) and ``w+``, ``w+b`` (starts empty). In all
    three :attr:`file` is readable, writable and seekable, and nothing
    reaches *path* before :meth:`commit`. The copy is a reflink
    (``FICLONE``: shared blocks, no data moved) where the filesystem has
    one (xfs, btrfs), else a copy in the kernel (``copy_file_range``); a
    target written in place during the copy (its size, mtime or ctime
    changed) raises :class:`~crashsafe.VerificationError` and publishes
    nothing. A change to the target after the copy is not seen: the last
    commit wins, as with every write; read-modify-write among several
    writers needs a :class:`~crashsafe.FileLock` held from before the
    open to after the commit. ``t`` may be
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

    *parents*: a missing directory of *path* is created first (each mode
    0o777 less the umask, as :func:`os.makedirs`), from the deepest existing
    one down, never following a symlink in the part it creates; a directory
    a racing process made meanwhile serves as well, and the file goes into
    the directory made, held open (not the path resolved again). With ``"durable"``, every
    directory of that part is fsynced, and the one that holds the first of
    them, before the file is published: a returned commit survives a power
    cut, the new directories included. With ``"consistent"`` and ``"none"``
    they are not synced: a power cut may take the new directories and the
    file with them (as it may take a new file's name), never leave the file
    torn. Directories made before an error (of the write or of a later
    directory) stay, as :func:`os.makedirs` leaves them; the target is
    untouched. A non-directory where a directory goes (a file, a symlink,
    dangling or not) raises :class:`NotADirectoryError` naming it. Without
    it, a missing directory raises :class:`FileNotFoundError`. A symlink at
    the target that points into a missing directory does not create it.

    *preserve*: ``"all"`` (the default): a replaced file's extended
    attributes (``user.*``, ``security.selinux`` and other labels where the
    process may set them, the POSIX access ACL, ``trusted.*`` when
    privileged) are set on the staged file right after it is created, before
    any data, besides its mode and owner; an access ACL the directory's
    default ACL would add is removed if the old file had none. *perm* still
    wins for the mode bits, applied after the ACL: its group bits become the
    ACL's mask, as ``chmod`` does. What cannot be kept (``EPERM``,
    ``ENOTSUP``), and file capabilities (never carried: the kernel drops them
    on a write), are named by a :class:`~crashsafe.MetadataNotPreservedWarning`,
    warned before any data is written (a warnings filter that turns it into
    an error makes the call raise and publish nothing). ``"mode"``: only the
    mode, owner and group, as :func:`open` and a plain rename would leave.

    *hardlinks*: ``"refuse"`` (the default): a target with more than one hard
    link raises :class:`~crashsafe.HardLinkedTargetError` before anything is
    staged (a rename would leave the other names on the old content);
    ``"break"`` replaces this name anyway and lets the others keep the old file.
    A target that is a mount point (a bind-mounted file) always raises
    :class:`~crashsafe.MountedTargetError` (``EBUSY``) before anything is staged.

    *validate*: a callable, or a sequence of them, each called by
    :meth:`commit` with the complete staged content as a read-only binary
    file positioned at its start, before the fsync and the rename. A
    validator rejects the content by raising, usually
    :class:`~crashsafe.VerificationError` (see :mod:`crashsafe.validators`);
    commit then raises that exception, with ``filename`` set to *path*, and
    publishes nothing.

    Raises, before anything is created: :class:`ValueError` for a bad *mode*,
    *perm*, *durability*, *preserve* or *hardlinks*, or an *encoding* with a
    binary mode; :class:`~crashsafe.HardLinkedTargetError` and
    :class:`~crashsafe.MountedTargetError` (above);
    :class:`TypeError` for a *validate* that is not callable or a
    *follow_symlinks* or *parents* that is not a bool;
    :class:`IsADirectoryError` if *path* is a directory; :class:`OSError`
    (``EINVAL``) if it is another kind of non-regular file (a FIFO, a device),
    which crashsafe never replaces; :class:`FileExistsError` for ``x`` modes
    when any entry is at *path*; the
    :class:`OSError` of any failed step (a missing directory, no permission).
    """

    # No per-instance dict: a write's object is made and dropped on every call.
    __slots__ = (
        "__weakref__", "_dir", "_durability", "_fd", "_file", "_mode", "_name",
        "_open_args", "_owns_dir", "_replace", "_state", "_temp", "_validators", "path",
    )  # fmt: skip

    @overload
    def __init__(
        self: AtomicFile[BinaryIO],
        path: str | os.PathLike[str],
        mode: BinaryMode = "wb",
        **options: Unpack[OpenOptions],
    ) -> None: ...
    @overload
    def __init__(
        self: AtomicFile[TextIO],
        path: str | os.PathLike[str],
        mode: TextMode,
        **options: Unpack[OpenOptions],
    ) -> None: ...
    def __init__(
        self,
        path: str | os.PathLike[str],
        mode: str = "wb",
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
    ) -> None:
        self._setup(path, mode, perm, durability, follow_symlinks, validate, encoding,
                    errors, newline, None, None, parents, preserve, hardlinks)  # fmt: skip

    # One body for __init__ and stage(), no frame between: every step of staging.
    def _setup(  # noqa: PLR0912, PLR0915, PLR0917 - every step of staging, in order
        self,
        path: str | os.PathLike[str],
        mode: str,
        perm: int | None,
        durability: Durability,
        follow_symlinks: bool,
        validate: Validate,
        encoding: str | None,
        errors: str | None,
        newline: str | None,
        target: Target | None,
        new_file_perm: int | None,
        parents: bool,
        preserve: Preserve,
        hardlinks: Hardlinks,
    ) -> None:
        self._state = "new"  # so that __del__ is quiet if __init__ fails early
        check_options(mode, perm, durability)
        if preserve != "all" or hardlinks != "refuse":  # no frame per write
            check_keywords(preserve, hardlinks)
        if follow_symlinks is not True and follow_symlinks is not False:  # no frame per write
            check_flag("follow_symlinks", follow_symlinks)
        if parents is not False and parents is not True:
            check_flag("parents", parents)
        self._validators = () if validate is None else validators_of(validate)
        file_mode, self._replace, keep_old = MODES[mode]
        binary = "b" in file_mode
        if binary and (encoding, errors, newline) != (None, None, None):
            raise ValueError("binary mode takes no encoding, errors or newline argument")
        # A str needs neither call (each a Python frame, on every write).
        self.path = path if isinstance(path, str) else os.fsdecode(os.fspath(path))
        self._durability = durability

        # Step 1: the directory, once; symlinks at the last component resolved,
        # except for create-only: a link there is an entry, which it refuses.
        # A target given by a sibling is in a directory that sibling owns.
        self._owns_dir = target is None
        must_exist = mode in MUST_EXIST
        if target is None:
            target = locate(
                self.path,
                follow_symlinks and self._replace,
                # r+ of a missing file creates nothing, no directory either.
                parents=parents and not must_exist,
                sync_parents=durability == "durable",
            )
        self._dir, self._name, old = target
        self._fd: int | None = None
        self._temp: str | None = None
        try:
            existing = replaced_file(old, self._replace, self.path)
            if must_exist:
                _refuse_missing(existing, old, self.path)
            if existing:
                check_target(self._dir, self._name, existing, self.path, hardlinks)

            # Steps 2 and 3: the temporary file, with its owner, then its
            # exact mode, before a byte of data is in it.
            if perm is not None:
                mode_bits: int | None = perm
            elif existing:
                mode_bits = stat.S_IMODE(existing.st_mode)
            else:
                mode_bits = new_file_perm
            owner = (existing.st_uid, existing.st_gid) if existing and perm is None else None
            with _platform.signals_deferred():
                self._fd, self._temp, self._mode, lost = self._dir.create_temp(
                    self._name, mode_bits, owner
                )
                self._state = "open"
            if lost:
                metadata_not_kept(self.path, perm, self._mode, lost)
            if existing and preserve == "all":
                # Before any data: the staged file is invisible until the
                # rename, so no reader sees the target without them.
                carry(self._dir, self._name, self._fd, self._mode, self.path)

            self._start_content(file_mode, keep_old and existing is not None)
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

    def _start_content(self, file_mode: str, copy: bool) -> None:
        """With *copy*, put the target's current content in the staged file (a
        reflink where the filesystem has one, else a copy in the kernel),
        checked to be whole; in an append mode, make writes land at the end."""
        assert self._fd is not None
        append = file_mode.startswith("a")
        if not copy:
            if append:
                _platform.append_only(self._fd)
            return
        source = self._dir.open_read(self._name)
        try:
            before = os.fstat(source)
            if not stat.S_ISREG(before.st_mode):  # replaced since the lstat
                raise OSError(errno.EINVAL, "Not a regular file; only those are replaced")
            copied, _ = _platform.copy_data(source, self._fd, before.st_size)
            after = os.fstat(source)
        finally:
            os.close(source)
        # Someone writing the target in place during the copy would give a
        # copy that is neither their content nor the old: refused, as
        # atomic_copy refuses a source that changed. (A writer after the copy
        # is not seen: the last commit wins, as for every write.)
        if copied != before.st_size or _changed(before, after):
            raise VerificationError(
                f"the file changed while its content was copied to the staged file "
                f"(size {before.st_size} -> {after.st_size} bytes, {copied} copied); "
                "nothing was published",
                self.path,
            )
        if append:
            _platform.append_only(self._fd)  # after the copy: FICLONE refuses O_APPEND
        else:
            os.lseek(self._fd, 0, os.SEEK_SET)

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
        self.publish()

    def publish(  # noqa: PLR0912 - the protocol's steps 4 to 7 in one frame, read in order
        self,
        name: str | None = None,
        *,
        replace: bool | None = None,
        sync: bool | None = None,
        private: bool = False,
    ) -> None:
        """Internal door: :meth:`commit`, at another *name* in the directory or
        without the directory sync (*sync* False).

        *replace* and *sync* default to what *mode* and *durability* say.
        *private*: the name is the caller's own, written only under its lock;
        where the filesystem cannot publish create-only (exFAT), a plain
        rename then serves instead of
        :class:`~crashsafe.errors.UnsupportedByFilesystemError`.
        A staged file made by :meth:`stage` in a directory its caller owns
        neither syncs nor closes that directory: the caller syncs it once for
        all its files. Errors are those of :meth:`commit`.
        """
        replace = self._replace if replace is None else replace
        sync = self._durability == "durable" if sync is None else sync
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
            gate = commit_gate.get()
            if gate is not None:
                gate()
            # Step 6: the platform takes the descriptor and the name; the
            # state changes in the same breath, or an interrupt could make a
            # published file look unpublished.
            with _platform.signals_deferred():
                fd, temp, self._fd, self._temp = self._fd, self._temp, None, None
                self._dir.publish(fd, temp, name or self._name, replace=replace, private=private)
                self._state = "committed"
        except BaseException as e:
            if self._state != "committed":
                self._fail(e)
                raise
            # A signal held back during the rename is raised as the block
            # ends: the target is replaced, and must not be reported otherwise.
            if self._owns_dir:
                self._dir.close()
            raise
        if not self._owns_dir:
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
                if self._owns_dir:
                    self._dir.close()

    # ---------------------------------------------------------------- internal doors
    # What crashsafe's own modules (batch, transactions, copying) use instead
    # of this class's private state: not part of the public API.

    @staticmethod
    def stage(
        path: str,
        *,
        target: Target | None = None,
        mode: BinaryMode = "wb",
        perm: int | None = None,
        durability: Durability = "durable",
        follow_symlinks: bool = True,
        validate: Validate = None,
        new_file_perm: int | None = None,
        parents: bool = False,
        preserve: Preserve = "all",
        hardlinks: Hardlinks = "refuse",
    ) -> AtomicFile[BinaryIO]:
        """Internal door: a binary staged file, as ``AtomicFile(path, mode, ...)``.

        *target* (see :mod:`crashsafe._target`): the already-open directory,
        the name in it and its entry's status, so that one descriptor serves
        many staged files. The caller owns that directory: the staged file
        neither syncs nor closes it (see :meth:`publish`). Without it, *path*
        is resolved as :class:`AtomicFile` does. *new_file_perm*: the mode of
        a new file when *perm* is not given (None: what ``open()`` would
        give). Errors are those of :class:`AtomicFile`.
        """
        staged = cast("AtomicFile[BinaryIO]", object.__new__(AtomicFile))
        staged._setup(path, mode, perm, durability, follow_symlinks, validate,
                      None, None, None, target, new_file_perm, parents, preserve,
                      hardlinks)  # fmt: skip
        return staged

    @property
    def descriptor(self) -> int:
        """Internal door: the staged file's descriptor, for a copy that moves
        data without a file object. :class:`ValueError` once it is closed."""
        if self._fd is None:
            raise ValueError(f"the staged file for {self.path!r} was already {self._state}")
        return self._fd

    def write_all(self, data: BytesLike) -> None:
        """Internal door: write all of *data* to the staged file.

        Straight to the descriptor, looping on short writes, with no file
        object in between (atomic_write's path); through :attr:`file` once
        there is one, or for a buffer of items wider than a byte. A failed
        write (``ENOSPC``, ``EIO``) raises its :class:`OSError` with
        ``filename`` set to the target path: every caller (``write_many``, a
        transaction's ``write``) then names the file the user knows.
        """
        view = memoryview(data)
        try:
            if self._file is not None or view.ndim != 1 or view.itemsize != 1:
                self.file.write(view)
                return
            assert self._fd is not None
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as e:
            if unnamed_os_error(e):
                e.filename = self.path
            raise

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


def _refuse_missing(
    existing: _platform.Status | None, old: _platform.Status | None, path: str
) -> None:
    """Raise what ``open(path, "r+")`` would where there is no regular file to
    update (*existing* None): a missing one, or a symlink not to be followed."""
    if existing is not None:
        return
    if old is not None and stat.S_ISLNK(old.st_mode):
        raise OSError(errno.ELOOP, "Is a symbolic link, and follow_symlinks is False", path)
    raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)


def _changed(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_size, before.st_mtime_ns, before.st_ctime_ns) != (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    )


# At the end: they build on AtomicFile, and _writes imports it from here.
from crashsafe._writes import atomic_open, atomic_write, write_file_atomic  # noqa: E402
