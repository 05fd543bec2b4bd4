"""Reading a staged file for the validators: chunks, sizes, descriptors, scratch copies.

Nothing here imports a decoder; :func:`scratch_file` imports :mod:`tempfile`
only when it is called.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterator
from typing import IO, Final

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


def scratch_file(prefix: str) -> IO[bytes]:
    """Return a named temporary ``.sqlite`` file in :func:`tempfile.gettempdir`.

    The file is removed when it is closed; use it as a context manager.
    """
    import tempfile

    return tempfile.NamedTemporaryFile(prefix=prefix, suffix=".sqlite")


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
