"""The SQLite validator: the header against the file size, then ``PRAGMA quick_check``.

:func:`check_header` and :func:`quick_check` also serve
:func:`crashsafe.validators.c1z` for the database its zstd stream holds.
:mod:`sqlite3` is imported only when a validator runs.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import IO, BinaryIO, Final

from crashsafe import _platform
from crashsafe.errors import VerificationError
from crashsafe.validators._io import (
    ScratchDatabase,
    byte_count,
    chunks,
    file_size,
    fileno,
    read_upto,
)

_MAGIC: Final = b"SQLite format 3\x00"
HEADER_SIZE: Final = 100
"""The size of the database header at the start of a SQLite file."""


def check_header(header: bytes, size: int) -> None:
    """Check a SQLite header (the first 100 bytes) against the file size, *size*."""
    if size == 0:
        raise VerificationError(
            "not a SQLite database: the file is empty (a database has at least one page)"
        )
    if header[:16] != _MAGIC[: len(header[:16])]:
        raise VerificationError(
            f"not a SQLite database: it starts with {header[:16]!r}, not {_MAGIC!r}"
        )
    if len(header) < HEADER_SIZE:
        raise VerificationError(
            f"SQLite file is {size} bytes, shorter than the {HEADER_SIZE}-byte "
            "database header: the file is truncated"
        )
    raw_page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if raw_page_size == 1 else raw_page_size
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise VerificationError(
            f"invalid SQLite header: the page size at offset 16 is {raw_page_size}, "
            "not a power of two from 512 to 65536 (or 1 for 65536)"
        )
    change_counter = int.from_bytes(header[24:28], "big")
    pages = int.from_bytes(header[28:32], "big")
    valid_for = int.from_bytes(header[92:96], "big")
    if pages and valid_for == change_counter:
        expected = pages * page_size
        if size < expected:
            raise VerificationError(
                f"SQLite header says the database has {pages} pages of {page_size} bytes "
                f"({expected} bytes), but the file is {size} bytes: "
                "the file is truncated"
            )
        if size > expected:
            raise VerificationError(
                f"SQLite header says the database has {pages} pages of {page_size} bytes "
                f"({expected} bytes), but the file is {size} bytes: "
                f"{byte_count(size - expected)} follow the last page"
            )
    elif size % page_size:
        raise VerificationError(
            f"SQLite file is {size} bytes, not a whole number of {page_size}-byte "
            f"pages (it ends {byte_count(size % page_size)} into page "
            f"{size // page_size + 1}): the file is truncated or has trailing bytes"
        )


def quick_check(path: str, opened: Callable[[], object] | None = None) -> None:
    """Run PRAGMA quick_check on the database file at *path*, read-only and immutable.

    *opened*, if given, is called as soon as SQLite has the file open (so a
    scratch file can lose its name before the check reads it).
    """
    import sqlite3
    from contextlib import closing
    from urllib.parse import quote

    # immutable=1: no locks and no -wal, -shm or -journal file is created or read.
    uri = f"file:{quote(path)}?mode=ro&immutable=1"
    # Errors that say nothing about the file's content are raised as they are.
    environment = {3, 5, 6, 7, 9, 10, 13, 14, 23}  # PERM BUSY LOCKED NOMEM ... CANTOPEN AUTH
    try:
        with closing(sqlite3.connect(uri, uri=True)) as con:
            if opened is not None:
                opened()
            rows = con.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        if (getattr(exc, "sqlite_errorcode", 1) & 0xFF) in environment:
            raise
        raise VerificationError(f"SQLite cannot read the database: {exc}") from exc
    problems = [" ".join(str(row[0]).split()) for row in rows]
    if problems != ["ok"]:
        shown = "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
        raise VerificationError(
            f"PRAGMA quick_check found {len(problems)} problem(s): {shown}: the database is corrupt"
        )


# The write-ahead log (https://www.sqlite.org/fileformat2.html#walformat): a
# 32-byte header, then frames of a 24-byte header and one page. All integers
# are big-endian; the checksums' own words are big-endian when the magic's low
# bit is set, else little-endian.
_WAL_MAGICS: Final = (0x377F0682, 0x377F0683)
_WAL_VERSION: Final = 3007000
_WAL_HEADER: Final = 32
_FRAME_HEADER: Final = 24


def _wal_checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    import struct

    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def wal_has_commits(wal: IO[bytes]) -> bool:
    """Whether the write-ahead log *wal* holds a committed transaction that SQLite
    would replay into its database: a commit frame reached through frames whose
    salts match the log's header and whose checksums chain from it.

    That is SQLite's own rule for recovering a log. A log that is empty, cut
    inside its header, or holds only frames of an earlier generation (stale
    salts) or of a transaction that never committed has none. Frames that a
    checkpoint has already copied into the database still count: only the
    ``-shm`` index, which is not read, could tell them apart.
    """
    header = read_upto(wal, _WAL_HEADER)
    if len(header) < _WAL_HEADER:
        return False
    magic, version, page_size = (int.from_bytes(header[i : i + 4], "big") for i in (0, 4, 8))
    big_endian = bool(magic & 1)
    sums = _wal_checksum(header[:24], 0, 0, big_endian)
    if (
        magic not in _WAL_MAGICS
        or version != _WAL_VERSION
        or not 512 <= page_size <= 65536
        or page_size & (page_size - 1)
        or header[24:32] != _sums_bytes(sums)
    ):
        return False
    while len(frame := read_upto(wal, _FRAME_HEADER + page_size)) == _FRAME_HEADER + page_size:
        if frame[8:16] != header[16:24] or frame[:4] == bytes(4):  # salts, page number
            return False
        sums = _wal_checksum(frame[:8], *sums, big_endian)
        sums = _wal_checksum(frame[_FRAME_HEADER:], *sums, big_endian)
        if frame[16:24] != _sums_bytes(sums):
            return False
        if frame[4:8] != bytes(4):  # the database's size after a commit
            return True
    return False


def _sums_bytes(sums: tuple[int, int]) -> bytes:
    return sums[0].to_bytes(4, "big") + sums[1].to_bytes(4, "big")


def check_no_wal_commits(path: str) -> None:
    """Raise :class:`~crashsafe.VerificationError` if the database file *path* is
    not the whole database: its ``-wal`` file holds committed transactions.

    SQLite replays those into what every connection sees, so a copy of *path*
    alone lacks them, and passes every check of the file itself. Nothing is
    opened but the ``-wal`` file, read-only; no lock is taken.
    """
    wal_path = path + "-wal"
    try:
        fd = _platform.open_reading(wal_path)
    except FileNotFoundError:
        return
    with open(fd, "rb") as wal:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or not wal_has_commits(wal):
            return
    raise VerificationError(
        f"{wal_path} holds committed transactions that are not in the database file "
        "itself, so a copy of the file alone would lack them: checkpoint first "
        "(PRAGMA wal_checkpoint(TRUNCATE)), or copy with SQLite's backup API or "
        "VACUUM INTO",
        path,
    )


def sqlite_path(f: IO[bytes]) -> str | None:
    """Return a path SQLite can open for the file behind *f*, or None if there is none.

    On Linux that is ``/proc/self/fd/N`` (see :func:`crashsafe._platform.reopen_path`).
    SQLite resolves symbolic links in the path it is given, and an anonymous
    file's link (``O_TMPFILE``, or an unlinked file) points to
    ``/dir/#123 (deleted)``, which it cannot open; so the path is used only
    when that link leads back to the same file and the file can be opened for
    reading.
    """
    fd = fileno(f)
    return None if fd is None else _platform.reopen_path(fd)


def sqlite(f: BinaryIO) -> None:
    """Accept a complete, consistent SQLite database file.

    Checks, in order:

    1. the 100-byte header starts with ``SQLite format 3\\0``;
    2. the page size (offset 16, big-endian; 1 means 65536) is a power of two
       from 512 to 65536;
    3. the file size: when the in-header database size (offset 28) is valid,
       that is non-zero and its "version-valid-for" number (offset 92) equals
       the change counter (offset 24), the file must be exactly that many
       pages; otherwise (files from SQLite before 3.7.0) it must be a non-zero
       whole number of pages;
    4. ``PRAGMA quick_check`` returns ``ok``. The file is opened read-only and
       immutable (``file:PATH?mode=ro&immutable=1``), so no lock is taken and no
       ``-wal``, ``-shm`` or ``-journal`` file is created or read next to it.

    So an empty file, a file shorter than the header, a file cut anywhere
    (inside a page or, with a valid in-header size, at a page boundary), a
    file with trailing bytes, and a database whose b-tree pages are damaged
    or missing are all rejected. A file cut at a page
    boundary whose in-header size is not valid passes step 3 and is left to
    quick_check, which rejects it when a b-tree refers to a missing page.

    Limits: quick_check follows the structure (b-tree pages, cell pointers,
    freelist, overflow chain lengths, pages nothing uses) but not the bytes of
    the rows themselves, and SQLite keeps no page checksums, so a changed byte
    inside a row's content is not seen. Nor does quick_check compare indexes
    with their tables (``PRAGMA integrity_check`` does, at a far higher cost).

    A database in WAL mode: only the file itself is checked. Transactions
    still in its ``-wal`` file are not part of it, so a file whose ``-wal``
    holds commits passes, though it lacks them. :func:`crashsafe.atomic_copy`
    with this validator therefore also reads the *source's* ``-wal`` (see
    :func:`check_no_wal_commits`), before and after the copy, and refuses
    with "checkpoint first" if it holds a committed transaction.

    SQLite opens the file by path: ``/proc/self/fd/N`` when the file object has
    a descriptor on Linux and that link leads to the file. Otherwise (no
    descriptor, another platform, or an anonymous ``O_TMPFILE`` or unlinked
    file, whose link SQLite cannot follow) the content is first copied, in
    1 MiB chunks, to a scratch file in :func:`tempfile.gettempdir` (see
    :class:`~crashsafe.validators._io.ScratchDatabase`: anonymous but for the
    instant SQLite opens it, then in a private directory of its own), which
    needs free space there equal to the file size. Nothing else there is
    read or touched.

    Raises:
        VerificationError: the file is not a complete, consistent database.
        sqlite3.OperationalError: SQLite could not open or read the file for a
            reason unrelated to its content (permissions, I/O error, no memory).
    """
    header = read_upto(f, HEADER_SIZE)
    check_header(header, file_size(f))
    path = sqlite_path(f)
    if path is not None:
        quick_check(path)
        return
    with ScratchDatabase() as scratch:
        scratch.file.write(header)
        for chunk in chunks(f):
            scratch.file.write(chunk)
        scratch.open_checked(quick_check)
