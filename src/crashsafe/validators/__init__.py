"""Validators: prove that a staged file is complete before it is published.

A validator is a callable ``validator(f) -> None``. It receives a readable
binary file object positioned at offset 0 (the staged copy, which may be an
anonymous ``O_TMPFILE`` with a real ``fileno()``, or an in-memory object such as
:class:`io.BytesIO` without one), reads it, and raises
:class:`~crashsafe.errors.VerificationError` with a message that says what is
wrong and where to reject it. Returning ``None`` accepts the file. A validator
never writes to the file; it may move the file position.

Why decode to the end? A file cut short keeps its beginning, so a valid
header proves nothing. A real case: a c1z file is the five bytes ``C1ZF\\x00``
followed by one zstd frame holding a SQLite database. The code that saved one
truncated the published file and wrote it again; a file cut short that way
still starts with valid magic bytes, and an empty one was silently treated as a
new, empty database. Only decoding every byte to the end of the last frame, and
checking that nothing follows it, tells a complete file from a prefix. So every
validator here reads the whole file:

* :func:`zstd` walks every frame and block and decodes them all;
* :func:`gzip` decodes every member and checks its CRC-32 and length trailer;
* :func:`json` parses the whole document;
* :func:`sqlite` checks the header against the file size, then runs
  ``PRAGMA quick_check``;
* :func:`c1z` checks the magic, decodes the zstd stream into a temporary file
  and checks that as a SQLite database;
* :func:`size` and :func:`sha256` build validators for an exact byte count or
  content hash.

Every validator streams the file in chunks of about 1 MiB, so memory stays
bounded for files of any size, except :func:`json`, which loads the document
into memory. Importing this module is cheap: ``zstandard``, ``zlib``,
``sqlite3``, ``json`` and ``hashlib`` are imported only when a validator runs.

:data:`BY_NAME` maps the names the command line accepts (``--validate zstd``)
to the validators.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO, Final

from crashsafe.errors import VerificationError
from crashsafe.validators._io import (
    CHUNK,
    Input,
    ScratchDatabase,
    byte_count,
    chunks,
    file_size,
    read_upto,
)
from crashsafe.validators._sqlite import HEADER_SIZE, check_header, quick_check, sqlite
from crashsafe.validators._zstd import ZstdStream, zstd, zstd_backend

__all__ = [
    "BY_NAME",
    "Validator",
    "c1z",
    "gzip",
    "json",
    "sha256",
    "size",
    "sqlite",
    "zstd",
]

Validator = Callable[[BinaryIO], None]
"""The type of a validator: it reads the file and raises VerificationError to reject it."""

_C1Z_MAGIC: Final = b"C1ZF\x00"


# -- validators with a parameter ---------------------------------------------------


class _Size:
    """The validator :func:`size` returns."""

    def __init__(self, n: int) -> None:
        self.expected = n
        self.__name__ = f"size({n})"

    def __call__(self, f: BinaryIO) -> None:
        actual = file_size(f)
        if actual < self.expected:
            raise VerificationError(
                f"file is {actual} bytes, expected exactly {self.expected}: "
                f"{byte_count(self.expected - actual)} missing (the file is truncated)"
            )
        if actual > self.expected:
            raise VerificationError(
                f"file is {actual} bytes, expected exactly {self.expected}: "
                f"it has {byte_count(actual - self.expected)} too many"
            )

    def __repr__(self) -> str:
        return self.__name__


class _Sha256:
    """The validator :func:`sha256` returns."""

    def __init__(self, hexdigest: str) -> None:
        self.expected = hexdigest.lower()
        self.__name__ = f"sha256({self.expected!r})"

    def __call__(self, f: BinaryIO) -> None:
        import hashlib

        digest = hashlib.sha256()
        total = 0
        for chunk in chunks(f):
            digest.update(chunk)
            total += len(chunk)
        actual = digest.hexdigest()
        if actual != self.expected:
            raise VerificationError(
                f"SHA-256 mismatch: the {total}-byte content hashes to {actual}, "
                f"expected {self.expected}"
            )

    def __repr__(self) -> str:
        return self.__name__


def size(n: int) -> Validator:
    """Return a validator that accepts only a file of exactly *n* bytes.

    The size comes from ``os.fstat`` when the file object has a descriptor for a
    regular file, else from seeking to its end (the position is restored). A
    shorter file is reported as truncated, a longer one with its excess.
    The validator's repr and ``__name__`` are ``size(n)``.

    Raises:
        TypeError: *n* is not an int.
        ValueError: *n* is negative.
    """
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"size() takes an int byte count, not {type(n).__name__}")
    if n < 0:
        raise ValueError(f"size() takes a byte count >= 0, not {n}")
    return _Size(n)


def sha256(hexdigest: str) -> Validator:
    """Return a validator that accepts only content whose SHA-256 is *hexdigest*.

    *hexdigest* is the 64-character hex digest, in either case. The validator
    reads the file from its current position to the end in 1 MiB chunks and
    rejects it if the digest differs, naming both digests and the byte count.
    Its repr and ``__name__`` are ``sha256('<lower-case digest>')``.

    Raises:
        TypeError: *hexdigest* is not a str.
        ValueError: *hexdigest* is not 64 hexadecimal characters.
    """
    if not isinstance(hexdigest, str):
        raise TypeError(f"sha256() takes a hex digest str, not {type(hexdigest).__name__}")
    if len(hexdigest) != 64 or not all(c in "0123456789abcdefABCDEF" for c in hexdigest):
        raise ValueError(
            f"sha256() takes a SHA-256 digest as 64 hexadecimal characters, not {hexdigest!r}"
        )
    return _Sha256(hexdigest)


# -- gzip -------------------------------------------------------------------------


def gzip(f: BinaryIO) -> None:
    """Accept a complete gzip file: one or more whole members and nothing else.

    Every member is decoded to its end with zlib (``wbits=31``), which checks
    the header, the deflate data and the CRC-32 and length trailer. The output
    is discarded, at most 1 MiB at a time.

    Rejected, with the member number and offsets in the message:

    * an empty file, or one that does not start with the gzip magic ``1f 8b``;
    * a stream that ends inside a member (header, data or trailer);
    * a member whose data, CRC-32 or length does not check out;
    * anything after the last complete member that is not another member,
      including the zero padding that ``gzip -d`` tolerates with a warning.

    Limit: a multi-member file cut exactly between two members is itself a
    complete gzip file and is accepted.

    Raises:
        VerificationError: the file is incomplete, corrupt or not gzip.
    """
    import zlib

    inp = Input(f)
    data = inp.take(CHUNK)
    offset = 0  # absolute offset of data[0]
    members = 0
    while True:
        # Here a member ends (or the file starts) at `offset`.
        if not data:
            data = inp.take(CHUNK)
            if not data:
                if members == 0:
                    raise VerificationError("file is empty: a gzip file holds at least one member")
                return
        if data[:2] != b"\x1f\x8b"[: len(data[:2])]:
            if members == 0:
                raise VerificationError(
                    f"not a gzip file: it starts with {data[:4].hex(' ')}, not the gzip magic 1f 8b"
                )
            garbage = len(data) + inp.skip_to_end()
            kind = "zero padding" if not data.strip(b"\x00") else "trailing garbage"
            raise VerificationError(
                f"{byte_count(garbage)} of {kind} at offset {offset}, after {members} complete "
                f"gzip member(s): they start with {data[:8].hex(' ')}, which is no gzip member"
            )
        members += 1
        member_start = offset
        decoder = zlib.decompressobj(wbits=31)
        while True:
            try:
                out = decoder.decompress(data, CHUNK)
            except zlib.error as exc:
                raise VerificationError(
                    f"gzip member {members} (which starts at offset {member_start}) is "
                    f"corrupt: {exc} (found before offset {offset + len(data)})"
                ) from exc
            if decoder.eof:
                rest = decoder.unused_data
                offset += len(data) - len(rest)
                data = rest
                break
            tail = decoder.unconsumed_tail
            offset += len(data) - len(tail)
            data = tail
            if data or len(out) == CHUNK:  # output was capped: more may be pending
                continue
            data = inp.take(CHUNK)
            if not data:
                raise VerificationError(
                    f"gzip stream ends inside member {members} (which starts at offset "
                    f"{member_start}) after {offset} bytes: the file is truncated"
                )


# -- json -------------------------------------------------------------------------


def json(f: BinaryIO) -> None:
    """Accept a file that parses as one JSON document.

    The file is read whole and parsed by :func:`json.loads` on its bytes, so the
    encoding rules are that function's: UTF-8 (with or without a BOM), UTF-16
    or UTF-32, and Python's extensions ``NaN`` and ``Infinity`` are accepted.
    Unlike the other validators this one loads the document into memory
    (about the file size, plus the parsed objects).

    Rejected, with the line, column and character position of the error:

    * an empty or all-whitespace file;
    * a document cut short (unterminated string, missing bracket, ...);
    * anything after the document other than whitespace (trailing garbage);
    * bytes that do not decode in the detected encoding;
    * nesting deeper than Python's parser can follow.

    Raises:
        VerificationError: the file is not one complete JSON document.
    """
    import json as jsonlib

    data = f.read()
    if not data:
        raise VerificationError("file is empty: not a JSON document")
    try:
        jsonlib.loads(data)
    except jsonlib.JSONDecodeError as exc:
        raise VerificationError(
            f"not valid JSON: {exc.msg}: line {exc.lineno}, column {exc.colno} "
            f"(character {exc.pos} of {len(exc.doc)})"
        ) from exc
    except UnicodeDecodeError as exc:
        raise VerificationError(
            f"not valid JSON: the bytes at offsets {exc.start} to {exc.end - 1} "
            f"are not valid {exc.encoding}: {exc.reason}"
        ) from exc
    except RecursionError as exc:
        raise VerificationError(
            "JSON document is nested too deeply for Python's parser to read"
        ) from exc


# -- c1z --------------------------------------------------------------------------


def c1z(f: BinaryIO) -> None:
    """Accept a complete c1z file: ``C1ZF\\0``, a zstd stream, a SQLite database in it.

    Checks, in order:

    1. the file starts with the 5 magic bytes ``C1ZF\\x00`` (an empty file, a
       shorter one and one with other bytes are rejected);
    2. the rest is a complete zstd stream by the rules of :func:`zstd`: not
       empty (a file that is only the magic is rejected), cut nowhere, nothing
       after the last frame, every frame decodes;
    3. the decompressed content passes :func:`sqlite`. It is decoded into a
       scratch file in :func:`tempfile.gettempdir` (bounded memory, but free
       space there equal to the database size). The scratch file has no name
       but for the instant SQLite opens it, in a private directory of its
       own, so a validation killed at any other point leaves nothing there
       (a kill in that instant leaves that one ``crashsafe-validation-*``
       directory). Nothing else in the temporary directory is touched.

    Raises:
        VerificationError: the file is not a complete c1z file.
        ModuleNotFoundError: no zstd decoder is installed (``pip install
            'crashsafe[zstd]'``); the file was not judged.
    """
    backend = zstd_backend()
    inp = Input(f)
    magic = inp.take(len(_C1Z_MAGIC))
    if not magic:
        raise VerificationError("file is empty: not a c1z file")
    if magic != _C1Z_MAGIC:
        if _C1Z_MAGIC.startswith(magic):
            raise VerificationError(
                f"c1z file is {byte_count(len(magic))}, shorter than the magic "
                f"{_C1Z_MAGIC!r}: the file is truncated"
            )
        raise VerificationError(
            f"not a c1z file: it starts with {magic!r}, not the magic {_C1Z_MAGIC!r}"
        )
    with ScratchDatabase() as scratch:
        payload = scratch.file
        ZstdStream(inp, backend, payload.write).run(
            "c1z file is only the 5-byte magic: the zstd stream after it is missing "
            "(the file is truncated)",
        )
        payload.flush()
        payload_size = payload.tell()
        payload.seek(0)
        try:
            check_header(read_upto(payload, HEADER_SIZE), payload_size)
            scratch.open_checked(quick_check)
        except VerificationError as exc:
            raise VerificationError(
                f"the zstd stream is complete, but the {payload_size}-byte database it "
                f"holds is not: {exc.message}"
            ) from exc


BY_NAME: Final[dict[str, Validator]] = {
    "zstd": zstd,
    "gzip": gzip,
    "json": json,
    "sqlite": sqlite,
    "c1z": c1z,
}
"""The validators by the names the command line's ``--validate NAME`` accepts."""
