"""Reading a staged file for the validators: chunks, sizes, descriptors, scratch copies.

Nothing here imports a decoder; :class:`ScratchDatabase` imports
:mod:`tempfile` only when it is used.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable, Iterator
from typing import IO, Final

from crashsafe import _platform

CHUNK: Final = 1 << 20
"""How much is read from the file at a time, and the most output decoded at once."""


def fileno(f: IO[bytes]) -> int | None:
    """Return the file descriptor behind *f*, or None if it has none (io.BytesIO)."""
    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def file_size(f: IO[bytes]) -> int:
    """Return the size of *f* in bytes: fstat for a regular file, else seek to its end."""
    fd = fileno(f)
    if fd is not None:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            return st.st_size
    here = f.tell()
    end = f.seek(0, os.SEEK_END)
    f.seek(here)
    return end


def byte_count(n: int) -> str:
    """Return ``"1 byte"`` or ``"<n> bytes"``, for messages."""
    return "1 byte" if n == 1 else f"{n} bytes"


def read_upto(f: IO[bytes], n: int) -> bytes:
    """Read *n* bytes from *f*, looping on short reads; fewer only at EOF."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        data = f.read(n - got)
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def chunks(f: IO[bytes]) -> Iterator[bytes]:
    """Yield the rest of *f* in chunks of up to :data:`CHUNK` bytes."""
    while chunk := f.read(CHUNK):
        yield chunk


class ScratchDatabase:
    """A scratch file for a database that SQLite must open by path, named only
    for the instant SQLite takes it, in a directory of its own.

    Use as a context manager: write the database to :attr:`file`, then call
    :meth:`open_checked` with a function that opens and checks it by path.
    The file lives in :func:`tempfile.gettempdir`, where a killed validator
    must not leave gigabytes behind. On Linux it is an anonymous
    ``O_TMPFILE`` while it is written; just before SQLite opens it, it gets a
    name in a new private directory (:func:`tempfile.mkdtemp`: mode 0700, an
    unguessable ``crashsafe-validation-*`` name), and the name and the
    directory are removed as soon as SQLite has the file open. Where
    anonymous files are not supported, it is named in its private directory
    from the start. Either way both are gone on exit.

    Nothing else in the temporary directory is read or touched: it holds
    other users' files too. A validator killed in the instant the file has a
    name leaves that one private directory, for the system's cleaning of its
    temporary directory.
    """

    def __init__(self) -> None:
        import tempfile

        self._parent = tempfile.gettempdir()
        self._dir: str | None = None  # the private directory, while it exists
        self._path: str | None = None  # the file's name in it, while it has one
        fd = self._anonymous()
        if fd is None:
            fd = self._named()
        self.file: IO[bytes] = open(fd, "w+b")  # noqa: SIM115 - __exit__

    def _anonymous(self) -> int | None:
        parent = _platform.Directory(self._parent)
        try:
            return parent.create_anonymous()
        finally:
            parent.close()

    def _named(self, fd: int | None = None) -> int:
        """Make the private directory and the name in it: a link to *fd*, or a new file."""
        import tempfile

        self._dir = tempfile.mkdtemp(prefix="crashsafe-validation-", dir=self._parent)
        path = os.path.join(self._dir, _SCRATCH)
        try:
            if fd is not None:
                private = _platform.Directory(self._dir)
                try:
                    private.link_anonymous(fd, _SCRATCH)
                finally:
                    private.close()
            else:
                fd = _platform.create_private(path)
        except BaseException:
            self._remove()
            raise
        self._path = path
        return fd

    def __enter__(self) -> ScratchDatabase:
        return self

    def open_checked(self, check: Callable[[str, Callable[[], None]], None]) -> None:
        """Call ``check(path, opened)``: *check* opens the database at *path* and calls
        *opened()* as soon as it has, which removes the name and its directory."""
        self.file.flush()
        if self._path is None:
            self._named(self.file.fileno())
        assert self._path is not None
        check(self._path, self._remove)

    def _remove(self) -> None:
        if self._path is not None:
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
            except PermissionError:
                if not self.file.closed:
                    return  # Windows removes no open file: __exit__ tries again
                raise
            self._path = None
        if self._dir is not None:
            os.rmdir(self._dir)
            self._dir = None

    def __exit__(self, *exc: object) -> None:
        try:
            self.file.close()
        finally:
            self._remove()


_SCRATCH: Final = "database.sqlite"


class Input:
    """Reads a file object front to back in ~1 MiB chunks, counting absolute offsets."""

    def __init__(self, f: IO[bytes], offset: int = 0) -> None:
        self._f = f
        self._buf = b""
        self._pos = 0
        self.offset = offset  # absolute offset of the next byte take() returns

    def _fill(self) -> bool:
        data = self._f.read(CHUNK)
        if not data:
            return False
        self._buf, self._pos = data, 0
        return True

    def take(self, n: int) -> bytes:
        """Return the next *n* bytes (n is small: at most a few MiB); fewer only at EOF."""
        end = self._pos + n
        if end <= len(self._buf):
            out = self._buf[self._pos : end]
            self._pos = end
            self.offset += n
            return out
        parts = [self._buf[self._pos :]]
        got = len(parts[0])
        self._buf, self._pos = b"", 0
        while got < n and self._fill():
            k = min(n - got, len(self._buf))
            parts.append(self._buf[:k])
            self._pos = k
            got += k
        self.offset += got
        return b"".join(parts)

    def skip(self, n: int) -> int:
        """Skip up to *n* bytes without keeping them; return how many there were."""
        skipped = 0
        while skipped < n:
            avail = len(self._buf) - self._pos
            if avail == 0:
                if not self._fill():
                    break
                continue
            k = min(avail, n - skipped)
            self._pos += k
            skipped += k
        self.offset += skipped
        return skipped

    def skip_to_end(self) -> int:
        """Skip the rest of the file; return how many bytes it had."""
        return self.skip(sys.maxsize)
