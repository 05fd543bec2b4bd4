"""Atomic copies of large files: the fastest kernel path, checked before publishing.

:func:`atomic_copy` is :class:`~crashsafe.AtomicFile` with the data moved by
the kernel instead of by ``write()``: the same staging, durability levels,
permissions, symlink handling and errors. What it adds happens between "the
staged file is complete" and "publish it", where a rejection still costs
nothing but the staged file:

1. the byte count must equal the source's size, and the source must not
   have changed (size, mtime, inode) while it was copied;
2. the validators run on the staged file (inside :meth:`AtomicFile.commit`).
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, Any, Final, NamedTuple

from crashsafe import _platform
from crashsafe._checks import Durability, Validate, check_flag, unnamed_os_error
from crashsafe._metadata import Hardlinks, Preserve
from crashsafe.atomic import AtomicFile
from crashsafe.errors import VerificationError
from crashsafe.objectstore._url import is_url

if TYPE_CHECKING:
    import hashlib

    from crashsafe.objectstore import S3Store

__all__ = ["CopyResult", "atomic_copy"]

Progress = Callable[[int, int | None], object]
_CHUNK: Final = 1 << 20
_DIGESTS: Final = ("sha256", "blake2b", "sha512", "sha1", "md5")


class CopyResult(NamedTuple):
    """What :func:`atomic_copy` published."""

    bytes: int
    """The number of bytes copied, equal to the source's size."""
    method: str
    """How the data moved: ``"reflink"``, ``"copy_file_range"``, ``"sendfile"``
    or ``"read/write"`` (a digest, or a source without a file descriptor)."""
    digest: str | None
    """The hex digest of the published content, if one was asked for."""


class _Source:
    """The file being copied: an open descriptor or a file object, and what it was."""

    def __init__(self, src: object) -> None:
        self.path: str | None = None
        # What to call the source in errors: its path, or a file object's own name.
        self.label = "src"
        self.name: str | None = None  # a file object's name, if it is a path
        self.fd: int | None = None
        self.obj: IO[bytes] | None = None
        self.owned = False
        self.before: os.stat_result | None = None
        self.size: int | None = None
        if isinstance(src, str | bytes | os.PathLike):
            self._open_path(os.fsdecode(os.fspath(src)))
        else:
            self._adopt(src)

    def _open_path(self, path: str) -> None:
        self.path = self.label = path
        self.fd = _platform.open_reading(path)
        self.owned = True
        try:
            st = os.fstat(self.fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(
                    errno.EINVAL,
                    "Not a regular file; to copy a stream, pass it as an open file object",
                    path,
                )
        except BaseException:
            self.close()
            raise
        self.before, self.size = st, st.st_size

    def _adopt(self, src: object) -> None:
        if not callable(getattr(src, "read", None)):
            raise TypeError(
                f"src must be a path or a readable binary file, not {type(src).__name__}"
            )
        f: Any = src
        if getattr(f, "closed", False):
            raise ValueError("src is a closed file")
        if isinstance(f, io.TextIOBase):
            raise TypeError("src must be opened in binary mode ('rb'), not text mode")
        name = getattr(f, "name", None)
        # A file object's name, if it has one; a pipe's is its descriptor.
        if isinstance(name, str):
            self.label = self.name = name
        elif isinstance(name, int):
            self.label = f"<file descriptor {name}>"
        else:
            self.label = f"<{type(f).__name__} object>"
        if callable(getattr(f, "readable", None)) and not f.readable():
            # Found here, not by the copy's first read: that would fail with
            # EBADF, and look like the destination's error.
            mode = getattr(f, "mode", None)
            raise io.UnsupportedOperation(
                f"src {self.label if self.name is None else repr(self.name)} is not open "
                f"for reading{'' if mode is None else f' (mode {mode!r})'}: open it with 'rb'"
            )
        self.obj = f
        if callable(getattr(f, "writable", None)) and f.writable():
            f.flush()  # a finished temporary file may still hold its last writes
        fd = _plain_fileno(f)
        if fd is not None and stat.S_ISREG((st := os.fstat(fd)).st_mode):
            self.fd, self.before, self.size = fd, st, st.st_size
        elif _seekable(f):
            self.size = f.seek(0, os.SEEK_END)
        if self.size is not None:
            f.seek(0)

    def copy_to(
        self,
        dst_fd: int,
        dst: str,
        hasher: hashlib._Hash | None,
        report: Callable[[int], object] | None,
    ) -> tuple[int, str]:
        """Copy everything from the source's start into *dst_fd* (the staged file of
        *dst*); return (bytes, method). An OSError that names no file is given the
        name of the side it came from, where that is known, else *dst*'s."""
        if self.fd is not None and hasher is None:
            try:
                return _platform.copy_data(self.fd, dst_fd, self.size or 0, report)
            except OSError as e:
                # One syscall both reads and writes (copy_file_range, sendfile),
                # so its error does not say which side failed; most of what it
                # can say (ENOSPC, EDQUOT, EFBIG) is the destination's.
                if unnamed_os_error(e):
                    e.filename = dst
                raise
        if self.obj is not None:
            reader: IO[bytes] = self.obj
        else:
            assert self.fd is not None
            reader = open(self.fd, "rb", buffering=0, closefd=False)  # noqa: SIM115 - below
        try:
            return (
                _copy_buffered(reader, dst_fd, hasher, report, src=self.label, dst=dst),
                "read/write",
            )
        finally:
            if reader is not self.obj:
                reader.close()

    def file_path(self) -> str | None:
        """The path of the source file: the path given, or a file object's name
        when that names the very file it reads; None for anything else."""
        if self.path is not None:
            return self.path
        if self.name is None or self.before is None:
            return None
        try:
            st = os.stat(self.name)
        except (OSError, ValueError):
            return None
        return self.name if _same_file(st, self.before) else None

    def check_unchanged(self, copied: int) -> None:
        """Raise VerificationError if the copy is not exactly the source as it was."""
        where = self.path or "the source"
        if self.before is not None:
            assert self.fd is not None
            after = os.fstat(self.fd)
            if (after.st_size, after.st_mtime_ns) != (self.before.st_size, self.before.st_mtime_ns):
                raise VerificationError(
                    f"{where} changed while it was copied (size {self.before.st_size} -> "
                    f"{after.st_size} bytes, {copied} copied; mtime "
                    f"{'changed' if after.st_mtime_ns != self.before.st_mtime_ns else 'same'})",
                    self.path,
                )
        if self.path is not None:
            assert self.before is not None
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (self.before.st_dev, self.before.st_ino):
                raise VerificationError(
                    f"{where} was replaced or removed while it was copied", self.path
                )
        if self.size is not None and copied != self.size:
            raise VerificationError(
                f"{copied} bytes were copied, but {where} is {self.size} bytes: "
                f"the copy is {'short' if copied < self.size else 'long'}",
                self.path,
            )

    def close(self) -> None:
        if self.owned and self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _refuse_same_file(source: _Source, dst: str, follow_symlinks: bool) -> None:
    """Raise :class:`shutil.SameFileError` if *dst* is the source file itself."""
    if source.before is None:
        return
    try:
        st = os.stat(dst, follow_symlinks=follow_symlinks)
    except (OSError, ValueError):
        return  # no such file (or no such name): the staging says what is wrong
    if _same_file(st, source.before):
        import shutil

        # Copied onto itself, the file would come out unchanged but for its
        # inode: hard links to it would silently become copies.
        raise shutil.SameFileError(
            f"{source.label!r} and {dst!r} are the same file: a file cannot be copied onto itself"
        )


def _sqlite_source(source: _Source, validate: Validate) -> str | None:
    """The source's path if the copy is to be checked as a SQLite database."""
    if validate is None:
        return None
    from crashsafe.validators import sqlite

    checks = (validate,) if callable(validate) else validate
    if not isinstance(checks, Sequence) or not any(c is sqlite for c in checks):
        return None  # not a sequence: AtomicFile raises the TypeError
    return source.file_path()


# File objects whose bytes are exactly their descriptor's: only these may be
# copied by descriptor. A GzipFile's fileno() is the compressed file underneath,
# a tar member's buffer has no descriptor of its own.
_BUFFERED: Final = (io.BufferedReader, io.BufferedWriter, io.BufferedRandom)


def _plain_fileno(f: Any) -> int | None:
    if type(f).__name__ == "_TemporaryFileWrapper":  # tempfile.NamedTemporaryFile
        f = f.file
    if isinstance(f, _BUFFERED):
        f = f.raw
    if type(f) is not io.FileIO:
        return None
    try:
        fd = f.fileno()
    except (OSError, ValueError):
        return None
    return fd if fd >= 0 else None


def _seekable(f: Any) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _read_chunk(reader: IO[bytes], view: memoryview, src: str) -> memoryview | None:
    """The next chunk of *reader* (into *view* where it can), empty at its end,
    None if a non-blocking stream has nothing yet."""
    try:
        readinto = getattr(reader, "readinto", None)
        if readinto is not None:
            n = readinto(view)
            return view[:n] if n is not None else None
        data = reader.read(_CHUNK)
    except OSError as e:
        # The source's failure (EIO of a bad disk, a stream's own error):
        # named after the source, never after the destination.
        if unnamed_os_error(e):
            e.filename = src
        raise
    if data is not None and not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"src.read() returned {type(data).__name__}, not bytes")
    return None if data is None else memoryview(data)


def _copy_buffered(
    reader: IO[bytes],
    dst_fd: int,
    hasher: hashlib._Hash | None,
    report: Callable[[int], object] | None,
    *,
    src: str,
    dst: str,
) -> int:
    # One 1 MiB buffer, reused: memory stays flat whatever the file's size.
    view = memoryview(bytearray(_CHUNK))
    done = 0
    while True:
        chunk = _read_chunk(reader, view, src)
        if chunk is None:
            # A non-blocking stream with nothing to read yet: not its end.
            _wait_readable(reader)
            continue
        if not chunk:
            return done
        if hasher is not None:
            hasher.update(chunk)
        rest = memoryview(chunk)
        try:
            while rest:
                rest = rest[os.write(dst_fd, rest) :]
        except OSError as e:
            if unnamed_os_error(e):
                e.filename = dst
            raise
        done += len(chunk)
        if report is not None:
            report(done)


def _wait_readable(reader: IO[bytes]) -> None:
    import select

    try:
        fd = reader.fileno()
    except (AttributeError, OSError, ValueError):
        raise ValueError(
            "src is a non-blocking stream that had no data ready, and has no descriptor to wait on"
        ) from None
    select.select([fd], [], [])


def _hasher(digest: str | None) -> hashlib._Hash | None:
    if digest is None:
        return None
    if digest not in _DIGESTS:
        raise ValueError(f"invalid digest {digest!r}: expected one of {', '.join(_DIGESTS)}")
    import hashlib

    return hashlib.new(digest)


def atomic_copy(
    src: str | os.PathLike[str] | IO[bytes],
    dst: str | os.PathLike[str],
    *,
    perm: int | None = None,
    durability: Durability = "durable",
    follow_symlinks: bool = True,
    validate: Validate = None,
    digest: str | None = None,
    progress: Progress | None = None,
    parents: bool = False,
    preserve: Preserve = "all",
    hardlinks: Hardlinks = "refuse",
    store: S3Store | None = None,
) -> CopyResult:
    """Copy *src* to *dst* all or nothing: *dst* shows its old content or a complete,
    verified copy, after a ``kill -9`` or a power cut at any instant.

    *src* is a path (followed if it is a symlink) to a regular file, or a
    readable binary file object. A seekable file object is copied whole, from
    offset 0, whatever its position (a finished temporary file sits at its
    end); it is flushed first if it is open for writing. A non-seekable one
    (a pipe) is read from its position to its end.

    The data moves the fastest way the files allow, in this order: a reflink
    (O(1), the copy shares blocks copy-on-write: xfs, btrfs),
    ``copy_file_range``, ``sendfile``, a read/write loop; a *digest* or a
    source without a file descriptor takes the loop. Space for the copy is
    reserved first where the filesystem can, so a disk that is too small
    fails at once. Memory use does not grow with the file's size.

    Before anything is published, the copy is checked:

    * the bytes copied must equal the source's size, and a source whose
      size, mtime or (for a path) inode changed during the copy is rejected.
      A rewrite in place that keeps the size and lands within the
      filesystem's timestamp granularity is not seen; a
      :func:`crashsafe.validators.sha256` validator catches that too;
    * each of *validate* (a callable or a sequence of them, see
      :mod:`crashsafe.validators`) reads the staged file from its start.

    *perm*, *durability* and *follow_symlinks* are those of
    :class:`~crashsafe.AtomicFile`, except that without *perm* a new *dst*
    takes *src*'s permission bits (``rwxrwxrwx``; setuid, setgid and sticky
    are not copied), when *src* is a path. An existing *dst* keeps its mode
    and owner. *parents*: *dst*'s missing directories are made first, as
    :class:`~crashsafe.AtomicFile` makes them (durably with ``"durable"``);
    to a store it has nothing to do.

    *digest* (``"sha256"``, ``"blake2b"``, ``"sha512"``, ``"sha1"`` or
    ``"md5"``) is computed over the bytes as they are written, in the same
    pass. *progress(done, total)* is called as the copy advances (at most every
    16 MiB, and once at the end); *total* is the source's size, or None for a
    stream of unknown length. An exception from it aborts the copy.

    With :func:`crashsafe.validators.sqlite` among the validators, a source
    whose ``-wal`` file holds committed transactions (a WAL-mode database
    that was not checkpointed) is refused before and after the copy: the file
    alone lacks them.

    Returns a :class:`CopyResult` ``(bytes, method, digest)``.

    Raises, with *dst* untouched and nothing left behind:
    :class:`~crashsafe.VerificationError` if the size check, a validator or
    the ``-wal`` check rejects the copy (``filename`` is *src* for a source
    that changed or a ``-wal`` with commits, *dst* for a validator);
    :class:`shutil.SameFileError` (an :class:`OSError`) if *src* and *dst* are
    the same file (one path, two spellings, a hard link, or a symlink that is
    followed); the errors of :class:`~crashsafe.AtomicFile` for *dst*;
    :class:`IsADirectoryError`, :class:`FileNotFoundError` or :class:`OSError`
    (``EINVAL``: not a regular file) for a *src* path; :class:`TypeError` for a
    *src* that is neither a path nor a binary file; :class:`ValueError` for a
    closed *src*, an unknown *digest* or a bad option;
    :class:`io.UnsupportedOperation` (a :class:`ValueError` and an
    :class:`OSError`) for a *src* file object that is not open for reading;
    :class:`NotDurableError` if *dst* was replaced but the directory fsync
    failed. An :class:`OSError` of the copy itself names the side it came
    from: a failed read in the read/write loop names *src* (its path, or a
    file object's ``name``), a failed write or kernel copy (which reads and
    writes in one call) names *dst*.

    Either side, or both, may be an ``s3://bucket/key`` URL (*store* an
    :class:`~crashsafe.objectstore.S3Store`, else the ``AWS_*`` environment).
    To a store: the local source is validated (*validate*, its size, and
    *digest* over the bytes sent) before the object is published, in one PUT
    up to 64 MiB or a multipart upload above, with memory bounded by one
    part; *perm*, *follow_symlinks* and a *durability* other than
    ``"durable"`` raise :class:`ValueError`. From a store: the object is
    streamed into *dst*, checked against its size and *validate*, and
    published with the local contract above (*perm* and the other keywords
    apply to *dst*). The result's *method* is then ``"put"``,
    ``"multipart"`` or ``"download"``.
    """
    _hasher(digest)  # an unknown digest is refused before anything is read
    check_flag("parents", parents)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, not {type(progress).__name__}")
    if store is not None or is_url(src) or is_url(dst):
        from crashsafe.objectstore import _objects

        if not (is_url(src) or is_url(dst)):
            raise ValueError(f"{dst!r}: store= applies to s3:// URLs only")
        copied, how, hexdigest = _objects.copy(
            src,
            dst,
            perm=perm,
            durability=durability,
            follow_symlinks=follow_symlinks,
            validate=validate,
            digest=digest,
            progress=progress,
            store=store,
            hasher_for=_hasher,
            parents=parents,
        )
        return CopyResult(copied, how, hexdigest)
    hasher = _hasher(digest)
    dst_path = dst if isinstance(dst, str) else os.fsdecode(os.fspath(dst))
    source = _Source(src)
    try:
        _refuse_same_file(source, dst_path, follow_symlinks)
        database = _sqlite_source(source, validate)
        if database is not None:
            from crashsafe.validators._sqlite import check_no_wal_commits

            check_no_wal_commits(database)  # before, not to copy gigabytes for nothing
        new_file_perm = None
        if source.path is not None and source.before is not None:
            new_file_perm = stat.S_IMODE(source.before.st_mode) & 0o777
        total = source.size
        report = None if progress is None else (lambda done: progress(done, total))
        with AtomicFile.stage(
            dst_path,
            new_file_perm=new_file_perm,  # a new target takes the source's bits
            perm=perm,
            durability=durability,
            follow_symlinks=follow_symlinks,
            validate=validate,
            parents=parents,
            preserve=preserve,
            hardlinks=hardlinks,
        ) as staged:
            # The descriptor itself: a file object would only cost syscalls.
            copied, method = source.copy_to(staged.descriptor, staged.path, hasher, report)
            source.check_unchanged(copied)
            if database is not None:
                check_no_wal_commits(database)  # and after: a commit during the copy
            if report is not None and copied == 0:
                report(0)  # an empty file: still one call, so a progress bar can finish
    finally:
        source.close()
    return CopyResult(copied, method, hasher.hexdigest() if hasher is not None else None)
