"""crashsafe.validators on real files: complete ones pass, every prefix and damage fails.

Each format gets real files built with its own library (zstandard, gzip, json,
sqlite3), then cut at many points: every cut in the first 64 bytes, right after
the header, ~200 spread through the file and every one of the last 300 bytes.
Cuts are made on one real file with ftruncate (descending), and each verdict is
compared with the verdict on an io.BytesIO of the same bytes (no fileno()).
"""

from __future__ import annotations

import contextlib
import gzip as gziplib
import hashlib
import io
import json as jsonlib
import os
import random
import shutil
import sqlite3
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

import crashsafe
import crashsafe.validators as v
from crashsafe.errors import VerificationError
from crashsafe.staging import is_temp_name
from crashsafe.validators._sqlite import sqlite_path
from tests import children
from tests.harness.inject import run_python as run_child
from tests.harness.require import require_root, require_tools

NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
# crashsafe's source directory, for a child of another user to import it from.
SRC = str(Path(crashsafe.__file__).resolve().parent.parent)

zstandard = pytest.importorskip("zstandard")

Validator = Callable[[BinaryIO], None]
C1Z_MAGIC = b"C1ZF\x00"


# -- helpers ----------------------------------------------------------------------


def verdict(validator: Validator, f: BinaryIO) -> str | None:
    """None if *validator* accepts *f*, else the VerificationError message."""
    try:
        validator(f)
    except VerificationError as exc:
        assert exc.message, "a rejection must say why"
        return exc.message
    return None


def verdict_bytes(validator: Validator, data: bytes) -> str | None:
    return verdict(validator, io.BytesIO(data))


def verdict_file(validator: Validator, path: Path) -> str | None:
    with open(path, "rb") as f:
        return verdict(validator, f)


def mixed(n: int, seed: int) -> bytes:
    """Deterministic data that compresses somewhat: words with random bytes between."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(400)]
    parts: list[bytes] = []
    total = 0
    while total < n:
        part = rng.randbytes(rng.randint(1, 40)) if rng.random() < 0.1 else rng.choice(words)
        parts.append(part)
        total += len(part)
    return b" ".join(parts)[:n]


def cut_points(length: int, header_end: int) -> set[int]:
    """The cut points every format is tested at."""
    cuts = set(range(min(64, length)))
    cuts |= {header_end - 1, header_end, header_end + 1}
    cuts |= {length * i // 200 for i in range(200)}
    cuts |= set(range(max(0, length - 300), length))
    return {c for c in cuts if 0 <= c < length}


def assert_cuts_rejected(
    validator: Validator, data: bytes, cuts: Iterable[int], scratch: Path, expect: str
) -> int:
    """Every cut of *data* is rejected, with *expect* (or "empty") in the message.

    The cuts are made on one real file, truncated from the longest cut down;
    the message for every cut in the first 128 bytes and for every fourth one
    after that is compared with the one for an io.BytesIO of the same prefix.
    """
    path = scratch / "cut"
    path.write_bytes(data)
    accepted, wrong, differ = [], [], []
    for i, cut in enumerate(sorted(set(cuts), reverse=True)):
        assert cut < len(data)
        os.truncate(path, cut)
        with open(path, "rb") as f:
            message = verdict(validator, f)
        if message is None:
            accepted.append(cut)
            continue
        if expect not in message and "empty" not in message:
            wrong.append((cut, message))
        if (cut < 128 or i % 4 == 0) and verdict_bytes(validator, data[:cut]) != message:
            differ.append(cut)
    assert accepted == [], f"prefixes accepted as complete: {accepted[:20]}"
    assert wrong == [], f"unexpected messages: {wrong[:5]}"
    assert differ == [], f"file and BytesIO verdicts differ at cuts {differ[:20]}"
    return len(set(cuts))


def flip(data: bytes, pos: int) -> bytes:
    damaged = bytearray(data)
    damaged[pos] ^= 0x5A
    return bytes(damaged)


def zstd_frame(data: bytes, *, checksum: bool = True, level: int = 3) -> bytes:
    return bytes(zstandard.ZstdCompressor(level=level, write_checksum=checksum).compress(data))


def zstd_streamed(chunks: Iterable[bytes], *, checksum: bool = True) -> bytes:
    """One frame written by the streaming compressor: no content size, a window descriptor."""
    out = io.BytesIO()
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=checksum)
    with cctx.stream_writer(out, closefd=False) as w:
        for chunk in chunks:
            w.write(chunk)
    return out.getvalue()


def skippable(payload: bytes, nibble: int = 0) -> bytes:
    magic = (0x184D2A50 + nibble).to_bytes(4, "little")
    return magic + len(payload).to_bytes(4, "little") + payload


def make_sqlite(path: Path, *, page_size: int = 4096, rows: int = 2500, wal: bool = False) -> bytes:
    """A real database: several tables, indexes, overflow pages, a few hundred KB."""
    rng = random.Random(page_size + rows)
    with contextlib.closing(sqlite3.connect(path)) as con:
        con.execute(f"PRAGMA page_size = {page_size}")
        if wal:
            con.execute("PRAGMA journal_mode = WAL")
        con.executescript(
            """
            CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE);
            CREATE TABLE events (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users,
                                 kind TEXT, payload BLOB);
            CREATE INDEX events_by_user ON events (user_id, kind);
            CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
            """
        )
        con.executemany(
            "INSERT INTO users (name, email) VALUES (?, ?)",
            [(f"user {i}", f"u{i}@example.org") for i in range(rows // 5)],
        )
        con.executemany(
            "INSERT INTO events (user_id, kind, payload) VALUES (?, ?, ?)",
            [
                (rng.randrange(rows // 5), rng.choice("abc"), rng.randbytes(rng.randint(20, 120)))
                for _ in range(rows)
            ],
        )
        # Rows larger than a page, so the file has overflow chains.
        con.executemany(
            "INSERT INTO notes (body) VALUES (?)",
            [(mixed(rng.randint(100, 9000), i).hex(),) for i in range(20)],
        )
        con.commit()
    return path.read_bytes()


@contextlib.contextmanager
def anonymous_file(directory: Path, data: bytes) -> Iterator[BinaryIO]:
    """An O_TMPFILE file holding *data*, as atomic_open stages it on Linux."""
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (AttributeError, OSError) as exc:  # pragma: no cover - not Linux or no support
        pytest.skip(f"O_TMPFILE unavailable: {exc}")
    with os.fdopen(fd, "r+b") as f:
        f.write(data)
        f.flush()
        f.seek(0)
        yield f


# Linux keeps a process's peak RSS across exec, so a child of pytest starts with
# pytest's ru_maxrss. The measuring script forks: the fork's peak starts at its own
# size. Growth is that peak minus the RSS just before the validator ran, in KiB.
MEASURE_PEAK = """
import os, resource, sys
import zstandard
from crashsafe import validators

def rss_now():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024

pid = os.fork()
if pid == 0:
    code = 1
    try:
        before = rss_now()
        with open(sys.argv[2], 'rb') as f:
            getattr(validators, sys.argv[1])(f)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, flush=True)
        code = 0
    finally:
        os._exit(code)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def peak_rss_growth_kib(validator: str, path: Path) -> int:
    result = run_python(MEASURE_PEAK, validator, str(path))
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def run_python(code: str, *args: str) -> children.Ran:
    return children.run(code, *args, prelude="", staging=None)


# -- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def big() -> bytes:
    return mixed(3_000_000, 1)


@pytest.fixture(scope="module")
def zstd_files(big: bytes) -> dict[str, bytes]:
    small = mixed(1000, 2)
    return {
        "tiny": zstd_frame(small),
        "empty-content": zstd_frame(b""),
        "100k": zstd_frame(mixed(100_000, 3)),
        "multi-MB": zstd_frame(big),
        "multi-MB-no-checksum": zstd_frame(big, checksum=False),
        "streamed": zstd_streamed(big[i : i + 65536] for i in range(0, 1_500_000, 65536)),
        "incompressible": zstd_frame(random.Random(4).randbytes(300_000)),
        "rle": zstd_frame(b"\x00" * 1_000_000),
        "frames": b"".join(
            zstd_frame(part) for part in (b"", small, mixed(50_000, 5), big[:1_200_000])
        ),
        "skippable": skippable(b"meta" * 10)
        + zstd_frame(small)
        + skippable(b"", 15)
        + zstd_frame(mixed(20_000, 6)),
    }


@pytest.fixture(scope="module")
def gzip_files(big: bytes) -> dict[str, bytes]:
    named = io.BytesIO()
    with gziplib.GzipFile("data.bin", "wb", fileobj=named, mtime=0) as g:
        g.write(mixed(200_000, 7))
    return {
        "tiny": gziplib.compress(b"hello\n", mtime=0),
        "empty-content": gziplib.compress(b"", mtime=0),
        "multi-MB": gziplib.compress(big, compresslevel=6, mtime=0),
        "1MB": gziplib.compress(big[:1_000_000], compresslevel=9, mtime=0),
        "with-name": named.getvalue(),
        "members": b"".join(
            gziplib.compress(part, mtime=0) for part in (b"", b"one\n", mixed(80_000, 8))
        ),
    }


@pytest.fixture(scope="module")
def db_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_sqlite(tmp_path_factory.mktemp("db") / "real.sqlite")


@pytest.fixture(scope="module")
def c1z_bytes(db_bytes: bytes) -> bytes:
    return C1Z_MAGIC + zstd_frame(db_bytes)


# -- the module itself ------------------------------------------------------------


def test_public_names_and_reprs() -> None:
    assert set(v.__all__) == {
        "BY_NAME",
        "Validator",
        "c1z",
        "gzip",
        "json",
        "sha256",
        "size",
        "sqlite",
        "zstd",
    }
    assert {
        "zstd": v.zstd,
        "gzip": v.gzip,
        "json": v.json,
        "sqlite": v.sqlite,
        "c1z": v.c1z,
    } == v.BY_NAME
    for name, validator in v.BY_NAME.items():
        assert validator.__name__ == name
        assert validator.__doc__
    assert repr(v.size(10)) == "size(10)" == v.size(10).__name__
    digest = "AB" * 32
    assert repr(v.sha256(digest)) == f"sha256('{digest.lower()}')" == v.sha256(digest).__name__


def test_import_is_cheap() -> None:
    """Importing the module adds no decoder: they are imported when a validator runs."""
    result = run_python(
        "import sys, crashsafe\n"
        "before = set(sys.modules)\n"
        "import crashsafe.validators\n"
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    assert result.returncode == 0, result.stderr
    added = set(result.stdout.split())
    assert "crashsafe.validators" in added
    heavy = {"zstandard", "compression", "sqlite3", "gzip", "json", "zlib", "hashlib", "tempfile"}
    assert added & heavy == set()


# -- zstd -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "tiny",
        "empty-content",
        "100k",
        "multi-MB",
        "multi-MB-no-checksum",
        "streamed",
        "incompressible",
        "rle",
        "frames",
        "skippable",
    ],
)
def test_zstd_accepts_complete_streams(
    zstd_files: dict[str, bytes], name: str, tmp_path: Path
) -> None:
    data = zstd_files[name]
    path = tmp_path / "f.zst"
    path.write_bytes(data)
    assert verdict_file(v.zstd, path) is None
    assert verdict_bytes(v.zstd, data) is None
    with anonymous_file(tmp_path, data) as f:
        assert verdict(v.zstd, f) is None


def test_zstd_rejects_empty(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    message = verdict_file(v.zstd, tmp_path / "empty")
    assert message == "file is empty: a zstd stream holds at least one frame"


@pytest.mark.parametrize(
    "name", ["tiny", "empty-content", "100k", "multi-MB", "streamed", "incompressible", "rle"]
)
def test_zstd_rejects_every_prefix(zstd_files: dict[str, bytes], name: str, tmp_path: Path) -> None:
    data = zstd_files[name]
    header_end = zstandard.frame_header_size(data)  # magic included
    n = assert_cuts_rejected(v.zstd, data, cut_points(len(data), header_end), tmp_path, "truncated")
    assert n >= min(len(data), 400)


def test_zstd_multi_frame_prefixes(zstd_files: dict[str, bytes], tmp_path: Path) -> None:
    """Every cut inside a frame is rejected; a cut between frames is a complete stream."""
    for name in ("frames", "skippable"):
        data = zstd_files[name]
        boundaries, pos = [], 0
        while pos < len(data):
            if data[pos : pos + 4] == b"\x28\xb5\x2f\xfd":
                length = _zstd_frame_length(data[pos:])
            else:
                length = 8 + int.from_bytes(data[pos + 4 : pos + 8], "little")
            pos += length
            boundaries.append(pos)
        assert boundaries[-1] == len(data)
        cuts = cut_points(len(data), 6) | {b + d for b in boundaries for d in (-1, 1, 3, 5)}
        cuts = {c for c in cuts if c < len(data)} - set(boundaries)
        assert_cuts_rejected(v.zstd, data, cuts, tmp_path, "truncated")
        # The documented limit: a stream cut exactly between frames is complete.
        for boundary in boundaries:
            assert verdict_bytes(v.zstd, data[:boundary]) is None


def _zstd_frame_length(data: bytes) -> int:
    """The length of the zstd frame at the start of *data*, by decoding it."""
    dobj = zstandard.ZstdDecompressor().decompressobj()
    dobj.decompress(data)
    assert dobj.eof
    return len(data) - len(dobj.unused_data)


def test_zstd_truncation_messages(zstd_files: dict[str, bytes]) -> None:
    data = zstd_files["multi-MB"]
    assert verdict_bytes(v.zstd, data[:2]) == (
        "zstd stream ends inside a frame magic number at offset 2 "
        "(2 of its 4 bytes present): the file is truncated"
    )
    message = verdict_bytes(v.zstd, data[:5])
    assert message == (
        "zstd stream ends inside frame 1 (which starts at offset 0), in the frame header, "
        "after 5 bytes: the file is truncated"
    )
    message = verdict_bytes(v.zstd, data[:-1])
    assert message is not None
    assert "in the content checksum after the last block" in message
    assert f"after {len(data) - 1} bytes: the file is truncated" in message
    message = verdict_bytes(v.zstd, data[: len(data) // 2])
    assert message is not None
    assert "block" in message
    assert f"after {len(data) // 2} bytes: the file is truncated" in message


@pytest.mark.parametrize(
    ("tail", "expect"),
    [
        (b"\x00", "1 byte of trailing garbage at offset"),
        (b"garbage", "7 bytes of trailing garbage at offset"),
        (b"\x00" * 4096, "4096 bytes of trailing garbage"),
        (b"\x28\xb5", "ends inside a frame magic number, after 1 complete frame(s)"),
        (b"\x28\xb5\x2f\xfd", "ends inside frame 2"),
        (b"\x50\x2a\x4d\x18\xff\x00\x00\x00", "skippable frame"),
    ],
)
def test_zstd_rejects_trailing_bytes(
    zstd_files: dict[str, bytes], tail: bytes, expect: str, tmp_path: Path
) -> None:
    data = zstd_files["100k"] + tail
    (tmp_path / "f.zst").write_bytes(data)
    message = verdict_file(v.zstd, tmp_path / "f.zst")
    assert message is not None
    assert expect in message
    if "garbage" in expect:
        assert f"at offset {len(zstd_files['100k'])}, after 1 complete zstd frame(s)" in message


def test_zstd_rejects_non_zstd() -> None:
    assert verdict_bytes(v.zstd, b"PK\x03\x04rest") == (
        "not a zstd stream: offset 0 holds 50 4b 03 04, not the zstd frame magic 28 b5 2f fd"
    )
    assert verdict_bytes(v.zstd, gziplib.compress(b"x")) is not None


def test_zstd_with_checksum_rejects_flipped_bytes(zstd_files: dict[str, bytes]) -> None:
    for name in ("multi-MB", "streamed", "incompressible"):
        data = zstd_files[name]
        positions = range(len(data) // 4, 3 * len(data) // 4, max(1, len(data) // 80))
        accepted = [pos for pos in positions if verdict_bytes(v.zstd, flip(data, pos)) is None]
        assert accepted == [], f"{name}: damage accepted at {accepted}"
    message = verdict_bytes(v.zstd, flip(zstd_files["incompressible"], 150_000))
    assert message is not None
    assert "checksum" in message
    assert message.endswith("the file is corrupt")


def test_zstd_without_checksum_cannot_see_every_flipped_byte() -> None:
    """The documented limit: a raw block without a content checksum is not verified."""
    data = random.Random(9).randbytes(100_000)
    frame = zstd_frame(data, checksum=False)
    assert verdict_bytes(v.zstd, flip(frame, len(frame) // 2)) is None
    assert verdict_bytes(v.zstd, flip(zstd_frame(data), len(frame) // 2)) is not None


def test_zstd_rejects_reserved_block_type_and_huge_window() -> None:
    frame = bytearray(zstd_frame(b"abc" * 100, checksum=False))
    header = zstandard.frame_header_size(bytes(frame))  # magic included
    frame[header] |= 0b110  # block type 3
    message = verdict_bytes(v.zstd, bytes(frame))
    assert message is not None
    assert "reserved block type 3 in block 1" in message
    params = zstandard.ZstdCompressionParameters.from_level(1, window_log=28)
    cctx = zstandard.ZstdCompressor(compression_params=params)
    out = io.BytesIO()
    with cctx.stream_writer(out, closefd=False) as w:
        w.write(b"x" * 1000)
    message = verdict_bytes(v.zstd, out.getvalue())
    assert message == (
        "zstd frame 1 (which starts at offset 0) needs a 268435456-byte window, more than "
        "the 134217728 bytes (128 MiB) this validator decodes with, like zstd -d without "
        "--long: it cannot be checked in bounded memory"
    )
    # A single-segment frame's window is its content size (here claimed, not real).
    frame = bytearray(zstd_frame(b"x" * 1000))
    assert frame[4] >> 5 & 1  # single segment
    assert frame[4] >> 6 == 1  # 2-byte content size (+256)
    frame[5:7] = b"\xff\xff"  # content size 65535 + 256
    message = verdict_bytes(v.zstd, bytes(frame))
    assert message is not None
    assert "does not decode" in message  # 65791 bytes claimed, 1000 present
    big_header = b"\x28\xb5\x2f\xfd" + bytes([0b1110_0000]) + (1 << 30).to_bytes(8, "little")
    message = verdict_bytes(v.zstd, big_header + b"\x01\x00\x00")
    assert message is not None
    assert "needs a 1073741824-byte window" in message


def test_zstd_memory_is_bounded(tmp_path: Path) -> None:
    """A ~200 MB stream is decoded with less than 64 MiB of peak RSS growth (Linux KiB)."""
    path = tmp_path / "big.zst"
    unit = random.Random(10).randbytes(64 * 1024) * 16  # 1 MiB, repetitive
    with open(path, "wb") as raw:
        cctx = zstandard.ZstdCompressor(level=1, write_checksum=True)
        with cctx.stream_writer(raw, closefd=False) as w:
            for _ in range(200):
                w.write(unit)
    assert path.stat().st_size < 20 * 1024 * 1024
    growth_kib = peak_rss_growth_kib("zstd", path)
    print(f"zstd: 200 MiB decoded, peak RSS growth {growth_kib} KiB")
    assert growth_kib < 64 * 1024


def test_memory_measure_sees_growth(tmp_path: Path) -> None:
    """Control for the two tests above: json loads its document, and the measure shows it."""
    path = tmp_path / "big.json"
    with open(path, "wb") as f:
        f.write(b'"')
        for _ in range(80):
            f.write(b"a" * (1 << 20))
        f.write(b'"')
    assert peak_rss_growth_kib("json", path) > 80 * 1024


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="the standard library decodes zstd")
def test_missing_zstd_backend_says_how_to_install() -> None:
    result = run_python(
        "import io, sys\n"
        "sys.modules['zstandard'] = None\n"
        "from crashsafe import validators\n"
        "from crashsafe.errors import VerificationError\n"
        "for fn in (validators.zstd, validators.c1z):\n"
        "    try:\n"
        "        fn(io.BytesIO(b''))\n"
        "    except VerificationError as exc:\n"
        "        print('judged', exc)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        print(type(exc).__name__, exc.name, exc)\n"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith("ModuleNotFoundError zstandard ")
        assert "pip install 'crashsafe[zstd]'" in line


# -- gzip -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["tiny", "empty-content", "multi-MB", "1MB", "with-name", "members"]
)
def test_gzip_accepts_complete_files(
    gzip_files: dict[str, bytes], name: str, tmp_path: Path
) -> None:
    data = gzip_files[name]
    (tmp_path / "f.gz").write_bytes(data)
    assert verdict_file(v.gzip, tmp_path / "f.gz") is None
    assert verdict_bytes(v.gzip, data) is None


def test_gzip_rejects_empty_and_non_gzip() -> None:
    assert verdict_bytes(v.gzip, b"") == "file is empty: a gzip file holds at least one member"
    assert verdict_bytes(v.gzip, b"hello") == (
        "not a gzip file: it starts with 68 65 6c 6c, not the gzip magic 1f 8b"
    )


@pytest.mark.parametrize("name", ["tiny", "empty-content", "1MB", "with-name"])
def test_gzip_rejects_every_prefix(gzip_files: dict[str, bytes], name: str, tmp_path: Path) -> None:
    data = gzip_files[name]
    assert_cuts_rejected(v.gzip, data, cut_points(len(data), 10), tmp_path, "truncated")


def test_gzip_multi_member_prefixes(gzip_files: dict[str, bytes], tmp_path: Path) -> None:
    parts = [gziplib.compress(part, mtime=0) for part in (b"", b"one\n", mixed(80_000, 8))]
    data = gzip_files["members"]
    boundaries = [sum(len(p) for p in parts[: i + 1]) for i in range(len(parts))]
    cuts = cut_points(len(data), 10) | {b + d for b in boundaries for d in (-1, 1, 2, 9, 11)}
    cuts = {c for c in cuts if c < len(data)} - set(boundaries)
    assert_cuts_rejected(v.gzip, data, cuts, tmp_path, "truncated")
    for boundary in boundaries:  # the documented limit
        assert verdict_bytes(v.gzip, data[:boundary]) is None
    message = verdict_bytes(v.gzip, data[: boundaries[1] + 5])
    assert message == (
        f"gzip stream ends inside member 3 (which starts at offset {boundaries[1]}) "
        f"after {boundaries[1] + 5} bytes: the file is truncated"
    )


@pytest.mark.parametrize(
    ("tail", "expect"),
    [
        (b"\x00", "1 byte of zero padding at offset"),
        (b"\x00" * 512, "512 bytes of zero padding at offset"),
        (b"trailing", "8 bytes of trailing garbage at offset"),
        (b"\x1f", "ends inside member 2"),
        (b"\x1f\x8b\x08\x00", "ends inside member 2"),
    ],
)
def test_gzip_rejects_trailing_bytes(
    gzip_files: dict[str, bytes], tail: bytes, expect: str, tmp_path: Path
) -> None:
    data = gzip_files["multi-MB"] + tail
    (tmp_path / "f.gz").write_bytes(data)
    message = verdict_file(v.gzip, tmp_path / "f.gz")
    assert message is not None
    assert expect in message
    assert message == verdict_bytes(v.gzip, data)


def test_gzip_rejects_flipped_bytes(gzip_files: dict[str, bytes]) -> None:
    for name in ("multi-MB", "with-name"):
        data = gzip_files[name]
        positions = range(len(data) // 4, 3 * len(data) // 4, max(1, len(data) // 80))
        accepted = [pos for pos in positions if verdict_bytes(v.gzip, flip(data, pos)) is None]
        assert accepted == [], f"{name}: damage accepted at {accepted}"
    data = gzip_files["tiny"]
    crc_at = len(data) - 8
    message = verdict_bytes(v.gzip, flip(data, crc_at))
    assert message is not None
    assert "incorrect data check" in message
    message = verdict_bytes(v.gzip, flip(data, len(data) - 2))
    assert message is not None
    assert "incorrect length check" in message


def test_gzip_memory_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "big.gz"
    unit = random.Random(11).randbytes(4096) * 256  # 1 MiB, repetitive
    with gziplib.open(path, "wb", compresslevel=1) as g:
        for _ in range(100):
            g.write(unit)
    growth_kib = peak_rss_growth_kib("gzip", path)
    print(f"gzip: 100 MiB decoded, peak RSS growth {growth_kib} KiB")
    assert growth_kib < 64 * 1024


# -- json -------------------------------------------------------------------------

DOC = {
    "name": "crashsafe",
    "numbers": list(range(50)),
    "nested": {"a": [1.5, -2, True, False, None], "text": 'caf\u00e9 \u2603 \U0001f600 "q"'},
    "items": [{"id": i, "tags": ["x", "y"]} for i in range(20)],
}


@pytest.mark.parametrize(
    "data",
    [
        jsonlib.dumps(DOC).encode(),
        jsonlib.dumps(DOC, indent=2, ensure_ascii=False).encode() + b"\n",
        b"\xef\xbb\xbf" + jsonlib.dumps(DOC).encode(),
        jsonlib.dumps(DOC).encode("utf-16"),
        b"0",
        b'  "just a string"  \n',
        b"[]",
    ],
)
def test_json_accepts_documents(data: bytes, tmp_path: Path) -> None:
    (tmp_path / "f.json").write_bytes(data)
    assert verdict_file(v.json, tmp_path / "f.json") is None
    assert verdict_bytes(v.json, data) is None


def test_json_rejects_every_prefix(tmp_path: Path) -> None:
    data = jsonlib.dumps(DOC, indent=1).encode() + b"\n"
    cuts = set(range(len(data) - 1))  # the last cut only drops the final newline
    assert_cuts_rejected(v.json, data, cuts, tmp_path, "not valid JSON")


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        (b"", "file is empty: not a JSON document"),
        (b" \n\t", "not valid JSON: Expecting value: line 2, column 2 (character 3 of 3)"),
        (b'{"a": 1} x', "not valid JSON: Extra data: line 1, column 10 (character 9 of 10)"),
        (b"{}{}", "not valid JSON: Extra data: line 1, column 3 (character 2 of 4)"),
        (
            b'[1,\n 2,\n "abc',
            "Unterminated string starting at: line 3, column 2 (character 9 of 13)",
        ),
        (b'["\xff"]', "the bytes at offsets 2 to 2 are not valid utf-8: invalid start byte"),
        (b"[" * 200_000, "nested too deeply"),
    ],
)
def test_json_rejections_say_where(data: bytes, expect: str) -> None:
    message = verdict_bytes(v.json, data)
    assert message is not None
    assert expect in message


# -- sqlite -----------------------------------------------------------------------


def header_field(data: bytes, offset: int, value: int, width: int = 4) -> bytes:
    return data[:offset] + value.to_bytes(width, "big") + data[offset + width :]


def test_sqlite_accepts_real_databases(db_bytes: bytes, tmp_path: Path) -> None:
    assert len(db_bytes) > 200_000
    path = tmp_path / "f.sqlite"
    path.write_bytes(db_bytes)
    assert verdict_file(v.sqlite, path) is None
    assert verdict_bytes(v.sqlite, db_bytes) is None
    with anonymous_file(tmp_path, db_bytes) as f:
        assert sqlite_path(f) is None  # SQLite cannot follow the /proc link: copied
        assert verdict(v.sqlite, f) is None
    with tempfile.TemporaryFile(dir=tmp_path) as f:  # unlinked: copied as well
        f.write(db_bytes)
        f.seek(0)
        assert verdict(v.sqlite, f) is None
    with open(path, "rb") as f:
        assert sqlite_path(f) == f"/proc/self/fd/{f.fileno()}"
    assert sorted(os.listdir(tmp_path)) == ["f.sqlite"]  # no -wal, -shm or -journal


@pytest.mark.parametrize("page_size", [512, 1024, 8192, 65536])
def test_sqlite_page_sizes(page_size: int, tmp_path: Path) -> None:
    data = make_sqlite(tmp_path / "p.sqlite", page_size=page_size, rows=600)
    raw = int.from_bytes(data[16:18], "big")
    assert raw == (1 if page_size == 65536 else page_size)
    assert verdict_file(v.sqlite, tmp_path / "p.sqlite") is None
    pages = len(data) // page_size
    cuts = {k * page_size for k in range(1, pages)} | {k * page_size + 7 for k in range(pages)}
    assert_cuts_rejected(v.sqlite, data, cuts, tmp_path, "truncated")


def test_sqlite_rejects_every_prefix(db_bytes: bytes, tmp_path: Path) -> None:
    page = 4096
    pages = len(db_bytes) // page
    cuts = cut_points(len(db_bytes), 100)
    cuts |= {k * page for k in range(1, pages)}  # page boundaries
    cuts |= {k * page + d for k in range(pages) for d in (1, 100, page // 2, page - 1)}
    n = assert_cuts_rejected(v.sqlite, db_bytes, cuts, tmp_path, "truncated")
    assert n > 700
    assert verdict_bytes(v.sqlite, db_bytes[: 10 * page]) == (
        f"SQLite header says the database has {pages} pages of 4096 bytes "
        f"({len(db_bytes)} bytes), but the file is {10 * page} bytes: the file is truncated"
    )
    assert verdict_bytes(v.sqlite, db_bytes[:60]) == (
        "SQLite file is 60 bytes, shorter than the 100-byte database header: the file is truncated"
    )
    assert verdict_bytes(v.sqlite, b"") == (
        "not a SQLite database: the file is empty (a database has at least one page)"
    )


def test_sqlite_without_valid_in_header_size(db_bytes: bytes, tmp_path: Path) -> None:
    """Legacy header: the size rule is "whole pages", quick_check catches page-boundary cuts."""
    counter = int.from_bytes(db_bytes[24:28], "big")
    legacy = header_field(db_bytes, 92, counter + 1)  # version-valid-for != change counter
    assert verdict_bytes(v.sqlite, legacy) is None
    zero_size = header_field(db_bytes, 28, 0)  # a zero in-header size is never valid
    assert verdict_bytes(v.sqlite, zero_size) is None
    page = 4096
    pages = len(db_bytes) // page
    # Mid-page cuts fail the whole-pages rule ...
    message = verdict_bytes(v.sqlite, legacy[: 5 * page + 10])
    assert message == (
        f"SQLite file is {5 * page + 10} bytes, not a whole number of 4096-byte pages "
        "(it ends 10 bytes into page 6): the file is truncated or has trailing bytes"
    )
    # ... and every page-boundary cut is caught by quick_check, not by the size rule.
    path = tmp_path / "legacy"
    path.write_bytes(legacy)
    missed, by_size = [], []
    with open(path, "r+b") as f:
        for k in range(pages - 1, 0, -1):
            os.ftruncate(f.fileno(), k * page)
            f.seek(0)
            message = verdict(v.sqlite, f)
            if message is None:
                missed.append(k)
            elif "pages" in message and "whole number" in message:
                by_size.append(k)
    assert missed == []
    assert by_size == []
    # A whole page of zeros appended to a legacy file: a page nothing uses.
    message = verdict_bytes(v.sqlite, legacy + bytes(page))
    assert message is not None
    assert "quick_check" in message
    assert f"Page {pages + 1} is never used" in message


def test_sqlite_rejects_trailing_bytes(db_bytes: bytes) -> None:
    assert verdict_bytes(v.sqlite, db_bytes + bytes(4096)) == (
        f"SQLite header says the database has {len(db_bytes) // 4096} pages of 4096 bytes "
        f"({len(db_bytes)} bytes), but the file is {len(db_bytes) + 4096} bytes: "
        "4096 bytes follow the last page"
    )
    assert verdict_bytes(v.sqlite, db_bytes + b"x") is not None


@pytest.mark.parametrize("raw", [0, 2, 256, 511, 1000, 3000, 32769])
def test_sqlite_rejects_bad_page_size(db_bytes: bytes, raw: int) -> None:
    message = verdict_bytes(v.sqlite, header_field(db_bytes, 16, raw, 2))
    assert message == (
        f"invalid SQLite header: the page size at offset 16 is {raw}, not a power of two "
        "from 512 to 65536 (or 1 for 65536)"
    )


def test_sqlite_rejects_other_files(db_bytes: bytes) -> None:
    message = verdict_bytes(v.sqlite, b"SQLite format 4\x00" + db_bytes[16:])
    assert message is not None
    assert message.startswith("not a SQLite database: it starts with b'SQLite format 4")
    assert verdict_bytes(v.sqlite, b"hello") is not None
    # A valid-looking header on content that is no database.
    assert verdict_bytes(v.sqlite, db_bytes[:100] + bytes(len(db_bytes) - 100)) is not None


def test_sqlite_quick_check_catches_damaged_pages(db_bytes: bytes, tmp_path: Path) -> None:
    page = 4096
    pages = len(db_bytes) // page
    kinds = {k: db_bytes[(k - 1) * page] for k in range(2, pages + 1)}
    btree = [k for k, kind in kinds.items() if kind in (2, 5, 10, 13)]
    overflow = [k for k in kinds if k not in btree]
    assert len(btree) > 20
    assert overflow, "the fixture has rows larger than a page"
    for k in [*btree[:: max(1, len(btree) // 8)], btree[-1]]:
        start = (k - 1) * page
        for damaged in (
            db_bytes[:start] + bytes(page) + db_bytes[start + page :],  # zeroed page
            flip(db_bytes, start),  # page type byte
        ):
            (tmp_path / "d").write_bytes(damaged)
            message = verdict_file(v.sqlite, tmp_path / "d")
            assert message is not None, f"damaged b-tree page {k} accepted"
            assert message == verdict_bytes(v.sqlite, damaged)
            assert "quick_check" in message or "SQLite cannot read" in message
    # The limit: quick_check follows the structure, not the content of cells.
    last_overflow = next(
        k for k in overflow if db_bytes[(k - 1) * page : (k - 1) * page + 4] == bytes(4)
    )
    start = (last_overflow - 1) * page + 4
    damaged = db_bytes[:start] + b"#" * 64 + db_bytes[start + 64 :]
    assert verdict_bytes(v.sqlite, damaged) is None


def test_sqlite_wal_mode(tmp_path: Path) -> None:
    """Only the staged single file is checked; content still in a -wal file is not in it."""
    path = tmp_path / "wal.sqlite"
    data = make_sqlite(path, rows=500, wal=True)
    assert data[18:20] == b"\x02\x02"  # WAL mode in the header
    assert verdict_bytes(v.sqlite, data) is None
    assert verdict_file(v.sqlite, path) is None
    with contextlib.closing(sqlite3.connect(path)) as con:
        con.execute("PRAGMA wal_autocheckpoint = 0")
        con.execute("CREATE TABLE late (x)")
        con.executemany("INSERT INTO late VALUES (?)", [(i,) for i in range(5000)])
        con.commit()
        assert (tmp_path / "wal.sqlite-wal").stat().st_size > 0
        main_only = path.read_bytes()  # the last checkpoint: complete, without "late"
        assert verdict_bytes(v.sqlite, main_only) is None
        before = sorted(os.listdir(tmp_path))
        assert verdict_file(v.sqlite, path) is None
        assert sorted(os.listdir(tmp_path)) == before


def live_wal(tmp_path: Path) -> bytes:
    """The -wal of a database with three commits, none checkpointed."""
    path = tmp_path / "live.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as con:
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA wal_autocheckpoint = 0")
        con.execute("CREATE TABLE t (x)")
        con.commit()
        for i in range(2):
            con.executemany("INSERT INTO t VALUES (?)", [(i * 1000 + j,) for j in range(500)])
            con.commit()
        return (tmp_path / "live.sqlite-wal").read_bytes()


def test_wal_commits_are_found_by_sqlites_own_rule(tmp_path: Path) -> None:
    """A commit frame counts only when reached by salts that match and checksums that chain."""
    from crashsafe.validators._sqlite import wal_has_commits

    wal = live_wal(tmp_path)
    page_size = int.from_bytes(wal[8:12], "big")
    frame = 24 + page_size
    commits = [
        k
        for k in range((len(wal) - 32) // frame)
        if wal[32 + k * frame + 4 : 32 + k * frame + 8] != bytes(4)
    ]
    assert len(commits) == 3
    first_end = 32 + (commits[0] + 1) * frame

    def has(data: bytes) -> bool:
        return wal_has_commits(io.BytesIO(data))

    assert has(wal)
    assert has(wal[:first_end])  # the first transaction whole
    for cut in (0, 31, 32, first_end - 1, 32 + frame):  # ... or not
        assert not has(wal[:cut]), cut
    assert not has(flip(wal, 40))  # a frame's page number: its checksum fails
    assert not has(flip(wal, 32 + 24 + page_size // 2))  # inside the first page
    assert not has(flip(wal, 12))  # the header's checksum fails
    # A restarted log's stale frames: the header's salts changed, the frames' did not.
    restarted = bytearray(wal)
    restarted[16:24] = bytes(8)
    s0 = s1 = 0
    big = wal[3] & 1
    words = struct.unpack((">" if big else "<") + "6I", bytes(restarted[:24]))
    for i in range(0, 6, 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    restarted[24:32] = s0.to_bytes(4, "big") + s1.to_bytes(4, "big")
    assert not has(bytes(restarted))
    assert has(bytes(restarted[:16]) + wal[16:])  # the same, with its own salts: found
    assert not has(b"not a write-ahead log at all, but long enough to have a header")


ORPHAN_IN_TMPDIR = """
import io, os, sys
from crashsafe import atomic_copy, validators

src, dst, c1z_path = sys.argv[1:4]
atomic_copy(src, dst, validate=validators.sqlite)  # an O_TMPFILE staged copy: a scratch file
validators.sqlite(io.BytesIO(open(src, "rb").read()))  # no descriptor: a scratch file
with open(c1z_path, "rb") as f:
    validators.c1z(f)  # the database inside: a scratch file
with open(dst, "rb") as f:
    validators.sqlite(f)  # a named file: no scratch file
report(raised=None)
"""


@pytest.mark.parametrize("user", ["root", "nobody"])
def test_sqlite_validation_touches_nothing_else_in_the_temporary_directory(
    user: str, db_bytes: bytes, c1z_bytes: bytes
) -> None:
    """A stranger's file that looks like an orphan in a sticky TMPDIR is neither in
    the way nor touched: a validator only reads the file it is given."""
    require_root()
    require_tools("setpriv")
    base = Path(tempfile.mkdtemp(prefix="crashsafe-tmpdir-"))
    try:
        base.chmod(0o755)
        tmpdir = base / "tmp"
        tmpdir.mkdir()
        tmpdir.chmod(0o1777)  # as /tmp: anyone creates, only owners remove
        # Shaped like a crashsafe temporary name whose writer cannot be proven
        # alive (unknown host) and that is two hours old: what sweep removes.
        orphan = tmpdir / ".validation.sqlite.0123456789abcdef.4242-1-00000000.crashsafe-tmp"
        assert is_temp_name(orphan.name)
        orphan.write_bytes(b"someone else's")
        os.chown(orphan, 12345, 12345)
        os.utime(orphan, (time.time() - 7200,) * 2)
        before = orphan.stat()
        work = base / "work"
        work.mkdir()
        (work / "src.sqlite").write_bytes(db_bytes)
        (work / "f.c1z").write_bytes(c1z_bytes)
        if user == "nobody":
            for path in (work, work / "src.sqlite", work / "f.c1z"):
                os.chown(path, 65534, 65534)
        child = run_child(
            ORPHAN_IN_TMPDIR,
            str(work / "src.sqlite"),
            str(work / "dst.sqlite"),
            str(work / "f.c1z"),
            wrapper=NOBODY if user == "nobody" else (),
            env={"TMPDIR": str(tmpdir), "PYTHONPATH": SRC},
        )
        assert child.result == {"raised": None}, child.stderr
        after = orphan.stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert os.listdir(tmpdir) == [orphan.name]  # and nothing of its own left
        assert (work / "dst.sqlite").read_bytes() == db_bytes
    finally:
        shutil.rmtree(base)


# -- c1z --------------------------------------------------------------------------


def test_c1z_accepts_complete_files(c1z_bytes: bytes, db_bytes: bytes, tmp_path: Path) -> None:
    (tmp_path / "f.c1z").write_bytes(c1z_bytes)
    assert verdict_file(v.c1z, tmp_path / "f.c1z") is None
    assert verdict_bytes(v.c1z, c1z_bytes) is None
    with anonymous_file(tmp_path, c1z_bytes) as f:
        assert verdict(v.c1z, f) is None
    half = len(db_bytes) // 2
    two_frames = C1Z_MAGIC + zstd_frame(db_bytes[:half]) + zstd_frame(db_bytes[half:])
    assert verdict_bytes(v.c1z, two_frames) is None
    assert verdict_bytes(v.c1z, C1Z_MAGIC + zstd_frame(db_bytes, checksum=False)) is None


def test_c1z_rejects_every_prefix(c1z_bytes: bytes, tmp_path: Path) -> None:
    cuts = cut_points(len(c1z_bytes), 5 + zstandard.frame_header_size(c1z_bytes[5:]))
    n = assert_cuts_rejected(v.c1z, c1z_bytes, cuts, tmp_path, "truncated")
    assert n > 500
    assert verdict_bytes(v.c1z, b"") == "file is empty: not a c1z file"
    assert verdict_bytes(v.c1z, C1Z_MAGIC) == (
        "c1z file is only the 5-byte magic: the zstd stream after it is missing "
        "(the file is truncated)"
    )
    assert verdict_bytes(v.c1z, b"C1Z") == (
        "c1z file is 3 bytes, shorter than the magic b'C1ZF\\x00': the file is truncated"
    )
    message = verdict_bytes(v.c1z, c1z_bytes[:-1])
    assert message is not None
    assert "zstd stream ends inside frame 1 (which starts at offset 5)" in message
    assert f"after {len(c1z_bytes) - 1} bytes" in message


def test_c1z_rejects_wrong_magic_and_trailing_bytes(c1z_bytes: bytes) -> None:
    assert verdict_bytes(v.c1z, b"C1ZG\x00" + c1z_bytes[5:]) == (
        "not a c1z file: it starts with b'C1ZG\\x00', not the magic b'C1ZF\\x00'"
    )
    assert verdict_bytes(v.c1z, c1z_bytes[5:]) is not None  # bare zstd, no magic
    message = verdict_bytes(v.c1z, c1z_bytes + b"\x00\x00\x00\x00\x00")
    assert message is not None
    assert f"5 bytes of trailing garbage at offset {len(c1z_bytes)}" in message


def test_c1z_checks_the_database_inside(db_bytes: bytes) -> None:
    message = verdict_bytes(v.c1z, C1Z_MAGIC + zstd_frame(b"hello"))
    assert message == (
        "the zstd stream is complete, but the 5-byte database it holds is not: "
        "not a SQLite database: it starts with b'hello', not b'SQLite format 3\\x00'"
    )
    # A database truncated *before* it was compressed: the zstd stream is fine.
    cut = db_bytes[: len(db_bytes) - 4096]
    message = verdict_bytes(v.c1z, C1Z_MAGIC + zstd_frame(cut))
    assert message is not None
    assert message.startswith(f"the zstd stream is complete, but the {len(cut)}-byte database")
    assert message.endswith("the file is truncated")
    # An empty database compressed (the "empty file is a new database" bug).
    message = verdict_bytes(v.c1z, C1Z_MAGIC + zstd_frame(b""))
    assert message is not None
    assert "the file is empty" in message
    # A damaged page inside.
    start = (len(db_bytes) // 4096 // 2) * 4096
    damaged = db_bytes[:start] + bytes(4096) + db_bytes[start + 4096 :]
    message = verdict_bytes(v.c1z, C1Z_MAGIC + zstd_frame(damaged))
    assert message is not None
    assert "quick_check" in message or "SQLite cannot read" in message


def test_c1z_rejects_flipped_bytes(c1z_bytes: bytes) -> None:
    positions = range(len(c1z_bytes) // 4, 3 * len(c1z_bytes) // 4, len(c1z_bytes) // 40)
    accepted = [pos for pos in positions if verdict_bytes(v.c1z, flip(c1z_bytes, pos)) is None]
    assert accepted == []


def test_c1z_removes_its_temporary_file(c1z_bytes: bytes) -> None:
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob("crashsafe-*"))
    assert verdict_bytes(v.c1z, c1z_bytes) is None
    assert verdict_bytes(v.c1z, c1z_bytes[:-10]) is not None
    assert verdict_bytes(v.sqlite, c1z_bytes) is not None
    assert set(tmp.glob("crashsafe-*")) <= before


# -- size and sha256 --------------------------------------------------------------


def test_size(tmp_path: Path) -> None:
    data = b"x" * 1000
    (tmp_path / "f").write_bytes(data)
    assert verdict_file(v.size(1000), tmp_path / "f") is None
    assert verdict_bytes(v.size(1000), data) is None
    assert verdict_file(v.size(1001), tmp_path / "f") == (
        "file is 1000 bytes, expected exactly 1001: 1 byte missing (the file is truncated)"
    )
    assert verdict_bytes(v.size(1001), data) == verdict_file(v.size(1001), tmp_path / "f")
    assert verdict_file(v.size(10), tmp_path / "f") == (
        "file is 1000 bytes, expected exactly 10: it has 990 bytes too many"
    )
    assert verdict_bytes(v.size(0), b"") is None
    assert verdict_bytes(v.size(0), b"x") is not None
    buf = io.BytesIO(data)
    buf.seek(0)
    v.size(1000)(buf)
    assert buf.tell() == 0  # the position is restored
    with pytest.raises(ValueError, match="byte count >= 0"):
        v.size(-1)
    for bad in ("10", 1.5, True, None):
        with pytest.raises(TypeError):
            v.size(bad)  # type: ignore[arg-type]


def test_sha256(big: bytes, tmp_path: Path) -> None:
    digest = hashlib.sha256(big).hexdigest()
    (tmp_path / "f").write_bytes(big)
    assert verdict_file(v.sha256(digest), tmp_path / "f") is None
    assert verdict_file(v.sha256(digest.upper()), tmp_path / "f") is None
    assert verdict_bytes(v.sha256(digest), big) is None
    message = verdict_bytes(v.sha256(digest), big[:-1])
    assert message == (
        f"SHA-256 mismatch: the {len(big) - 1}-byte content hashes to "
        f"{hashlib.sha256(big[:-1]).hexdigest()}, expected {digest}"
    )
    assert verdict_bytes(v.sha256(hashlib.sha256(b"").hexdigest()), b"") is None
    for bad in ("", digest[:-1], digest + "0", "g" * 64, " " + digest[1:]):
        with pytest.raises(ValueError, match="64 hexadecimal characters"):
            v.sha256(bad)
    with pytest.raises(TypeError):
        v.sha256(bytes.fromhex(digest))  # type: ignore[arg-type]


# -- every validator: file objects are only read ------------------------------------


def test_validators_only_read(
    zstd_files: dict[str, bytes],
    gzip_files: dict[str, bytes],
    db_bytes: bytes,
    c1z_bytes: bytes,
    tmp_path: Path,
) -> None:
    cases: list[tuple[Validator, bytes]] = [
        (v.zstd, zstd_files["frames"]),
        (v.zstd, zstd_files["frames"][:-5]),
        (v.gzip, gzip_files["members"]),
        (v.gzip, gzip_files["members"] + b"junk"),
        (v.json, jsonlib.dumps(DOC).encode()),
        (v.json, b"{"),
        (v.sqlite, db_bytes),
        (v.sqlite, db_bytes[:-1]),
        (v.c1z, c1z_bytes),
        (v.c1z, c1z_bytes[:-1]),
        (v.size(len(db_bytes)), db_bytes),
        (v.sha256(hashlib.sha256(db_bytes).hexdigest()), db_bytes),
    ]
    for i, (validator, data) in enumerate(cases):
        directory = tmp_path / str(i)
        directory.mkdir()
        path = directory / "staged"
        path.write_bytes(data)
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
        before = path.stat()
        with open(path, "r+b") as f:  # writable, so a write would go through
            verdict(validator, f)
            assert not f.closed
        after = path.stat()
        assert path.read_bytes() == data, repr(validator)
        assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
            before.st_size,
            before.st_mtime_ns,
            before.st_ino,
        )
        assert os.listdir(directory) == ["staged"], repr(validator)
        buf = io.BytesIO(data)
        verdict(validator, buf)
        assert buf.getvalue() == data
        assert not buf.closed
