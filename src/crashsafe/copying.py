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
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Final, NamedTuple

from crashsafe import _platform
from crashsafe.atomic import AtomicFile, Durability, Validate
from crashsafe.errors import VerificationError

if TYPE_CHECKING:
    import hashlib

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
        self.path = path
        # O_NONBLOCK: opening a FIFO for reading would wait for a writer; it
        # changes nothing for the regular files that are copied.
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
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
        self, dst_fd: int, hasher: hashlib._Hash | None, report: Callable[[int], object] | None
    ) -> tuple[int, str]:
        """Copy everything from the source's start into *dst_fd*; return (bytes, method)."""
        if self.fd is not None and hasher is None:
            return _platform.copy_data(self.fd, dst_fd, self.size or 0, report)
        if self.obj is not None:
            reader: IO[bytes] = self.obj
        else:
            assert self.fd is not None
            reader = open(self.fd, "rb", buffering=0, closefd=False)  # noqa: SIM115 - below
        try:
            return _copy_buffered(reader, dst_fd, hasher, report), "read/write"
        finally:
            if reader is not self.obj:
                reader.close()

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


def _copy_buffered(
    reader: IO[bytes],
    dst_fd: int,
    hasher: hashlib._Hash | None,
    report: Callable[[int], object] | None,
) -> int:
    # One 1 MiB buffer, reused: memory stays flat whatever the file's size.
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    readinto = getattr(reader, "readinto", None)
    done = 0
    while True:
        if readinto is not None:
            n = readinto(view)
            chunk = view[:n] if n is not None else None
        else:
            data = reader.read(_CHUNK)
            if data is not None and not isinstance(data, bytes | bytearray | memoryview):
                raise TypeError(f"src.read() returned {type(data).__name__}, not bytes")
            chunk = None if data is None else memoryview(data)
        if chunk is None:
            # A non-blocking stream with nothing to read yet: not its end.
            _wait_readable(reader)
            continue
        if not chunk:
            return done
        if hasher is not None:
            hasher.update(chunk)
        rest = memoryview(chunk)
        while rest:
            rest = rest[os.write(dst_fd, rest) :]
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


class _Staged(AtomicFile[BinaryIO]):
    """The copy's staged file: a new target takes the source's permission bits."""

    def __init__(self, path: str | os.PathLike[str], new_file_perm: int | None, **kw: Any) -> None:
        self._new_file_perm = new_file_perm
        super().__init__(path, "wb", **kw)


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
    and owner.

    *digest* (``"sha256"``, ``"blake2b"``, ``"sha512"``, ``"sha1"`` or
    ``"md5"``) is computed over the bytes as they are written, in the same
    pass. *progress(done, total)* is called as the copy advances (at most every
    16 MiB, and once at the end); *total* is the source's size, or None for a
    stream of unknown length. An exception from it aborts the copy.

    Returns a :class:`CopyResult` ``(bytes, method, digest)``.

    Raises, with *dst* untouched and nothing left behind:
    :class:`~crashsafe.VerificationError` if the size check or a validator
    rejects the copy (``filename`` is *src* for a source that changed, *dst*
    for a validator); the errors of :class:`~crashsafe.AtomicFile` for *dst*;
    :class:`IsADirectoryError`, :class:`FileNotFoundError` or :class:`OSError`
    (``EINVAL``: not a regular file) for a *src* path; :class:`TypeError` for a
    *src* that is neither a path nor a binary file; :class:`ValueError` for a
    closed *src*, an unknown *digest* or a bad option;
    :class:`NotDurableError` if *dst* was replaced but the directory fsync failed.
    """
    hasher = _hasher(digest)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, not {type(progress).__name__}")
    source = _Source(src)
    try:
        new_file_perm = None
        if source.path is not None and source.before is not None:
            new_file_perm = stat.S_IMODE(source.before.st_mode) & 0o777
        total = source.size
        report = None if progress is None else (lambda done: progress(done, total))
        with _Staged(
            dst,
            new_file_perm,
            perm=perm,
            durability=durability,
            follow_symlinks=follow_symlinks,
            validate=validate,
        ) as staged:
            try:
                # The descriptor itself: a file object would only cost syscalls.
                assert staged._fd is not None
                copied, method = source.copy_to(staged._fd, hasher, report)
            except OSError as e:
                # The copy's syscalls name no file; the target is the one to report.
                if e.filename is None:
                    e.filename = staged.path
                raise
            source.check_unchanged(copied)
            if report is not None and copied == 0:
                report(0)  # an empty file: still one call, so a progress bar can finish
    finally:
        source.close()
    return CopyResult(copied, method, hasher.hexdigest() if hasher is not None else None)
