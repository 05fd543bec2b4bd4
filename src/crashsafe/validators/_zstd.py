"""The zstd validator: walk every frame and block, and decode them all.

The frame structure is walked here; the content is decoded by the standard
library's :mod:`compression.zstd` on Python 3.14+, else by the ``zstandard``
package, imported only when a validator runs (:func:`zstd_backend`).
:class:`ZstdStream` also serves :func:`crashsafe.validators.c1z`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, Final

from crashsafe.errors import VerificationError
from crashsafe.validators._io import CHUNK, Input, byte_count

if TYPE_CHECKING:
    from typing import Protocol

    class _ZstdDecoder(Protocol):
        """The part of a zstd one-frame decompressor that :func:`zstd` uses."""

        def decompress(self, data: bytes, /) -> bytes: ...  # pragma: no cover

        @property
        def eof(self) -> bool: ...  # pragma: no cover

        @property
        def unused_data(self) -> bytes: ...  # pragma: no cover


_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_BLOCK_MAX: Final = 128 * 1024
"""No zstd block decodes to more than this (the format's Block_Maximum_Size)."""
_WINDOW_MAX: Final = 1 << 27
"""The largest window decoded, as libzstd's default (``zstd -d`` without ``--long``)."""
_INSTALL_HINT: Final = (
    "validating zstd needs the 'zstandard' package on this Python "
    f"({sys.version_info[0]}.{sys.version_info[1]}; the standard library has "
    "compression.zstd only from 3.14): pip install 'crashsafe[zstd]'"
)


ZstdBackend = tuple[Callable[[], "_ZstdDecoder"], tuple[type[Exception], ...]]


def zstd_backend() -> ZstdBackend:
    """Return (a factory of one-frame decoders, the decoder's error types).

    Uses the standard library's compression.zstd where it exists (3.14+), else
    the zstandard package. Raises ModuleNotFoundError with the install hint if
    neither is there: the file was not judged, so this is no VerificationError.
    """
    if sys.version_info >= (3, 14):  # pragma: no cover - needs Python 3.14
        try:
            from compression import zstd as stdlib_zstd
        except ImportError:  # Python built without zstd support
            pass
        else:
            return stdlib_zstd.ZstdDecompressor, (stdlib_zstd.ZstdError,)
    try:
        import zstandard
    except ImportError as exc:
        raise ModuleNotFoundError(_INSTALL_HINT, name="zstandard") from exc
    dctx = zstandard.ZstdDecompressor()
    return dctx.decompressobj, (zstandard.ZstdError,)


class ZstdStream:
    """Checks that a file holds only complete zstd frames, decoding each to its end.

    The frame structure (header, block headers, checksum) is walked here, which
    is what tells a complete frame from a prefix; the content is decoded by the
    library, which checks the blocks, the content size and the checksum. Each
    frame goes to a fresh decoder in whole blocks, at most ~1 MiB of input and of
    possible output at a time, so memory stays bounded. Decoded bytes go to *sink*.
    """

    def __init__(
        self, inp: Input, backend: ZstdBackend, sink: Callable[[bytes], object] | None
    ) -> None:
        self.inp = inp
        self.new_decoder, self.errors = backend
        self.sink = sink
        self.frames = 0  # frames begun so far; the current one while in a frame
        self.frame_start = 0
        # The current frame's decoder and the whole blocks not yet given to it:
        self.decoder: _ZstdDecoder | None = None
        self.pending: list[bytes] = []
        self.pending_in = 0
        self.pending_out = 0
        self.first_block = 1
        self.unit_start = 0

    def run(self, empty: str) -> None:
        """Walk the stream to its end; *empty* is the message for an empty stream."""
        inp = self.inp
        while True:
            start = inp.offset
            magic = inp.take(4)
            if not magic:
                if self.frames == 0:
                    raise VerificationError(empty)
                return
            if magic == _MAGIC:
                self.frames += 1
                self.frame_start = start
                self._frame(magic)
            elif len(magic) == 4 and magic[0] & 0xF0 == 0x50 and magic[1:] == b"\x2a\x4d\x18":
                self.frames += 1
                self.frame_start = start
                self._skippable()
            else:
                self._not_a_frame(start, magic)

    def _not_a_frame(self, start: int, magic: bytes) -> None:
        rest = len(magic) + self.inp.skip_to_end()
        if len(magic) < 4 and (
            _MAGIC.startswith(magic)
            or (magic[0] & 0xF0 == 0x50 and b"\x2a\x4d\x18".startswith(magic[1:]))
        ):
            after = f", after {self.frames} complete frame(s)," if self.frames else ""
            raise VerificationError(
                f"zstd stream ends inside a frame magic number{after} at offset "
                f"{self.inp.offset} ({len(magic)} of its 4 bytes present): the file is truncated"
            )
        if self.frames == 0:
            raise VerificationError(
                f"not a zstd stream: offset {start} holds {magic.hex(' ')}, "
                f"not the zstd frame magic {_MAGIC.hex(' ')}"
            )
        raise VerificationError(
            f"{byte_count(rest)} of trailing garbage at offset {start}, after {self.frames} "
            f"complete zstd frame(s): they start with {magic.hex(' ')}, which is no zstd frame"
        )

    def _truncated(self, part: str) -> VerificationError:
        return VerificationError(
            f"zstd stream ends inside frame {self.frames} (which starts at offset "
            f"{self.frame_start}), in {part}, after {self.inp.offset} bytes: "
            "the file is truncated"
        )

    def _corrupt(self, what: str) -> VerificationError:
        return VerificationError(
            f"zstd frame {self.frames} (which starts at offset {self.frame_start}) "
            f"{what}: the file is corrupt"
        )

    def _skippable(self) -> None:
        raw = self.inp.take(4)
        if len(raw) < 4:
            raise self._truncated("the size field of a skippable frame")
        length = int.from_bytes(raw, "little")
        if self.inp.skip(length) < length:
            raise self._truncated(f"the {length}-byte content of a skippable frame")

    def _frame_header(self) -> tuple[bytes, bool]:
        """Read the header after the magic; return it and whether a checksum ends the frame."""
        inp = self.inp
        descriptor = inp.take(1)
        if not descriptor:
            raise self._truncated("the frame header")
        d = descriptor[0]
        single_segment = (d >> 5) & 1
        fcs_len = ((1 if single_segment else 0), 2, 4, 8)[d >> 6]  # Frame_Content_Size
        rest = (0 if single_segment else 1) + (0, 1, 2, 4)[d & 3] + fcs_len
        header = descriptor + inp.take(rest)
        if len(header) < 1 + rest:
            raise self._truncated("the frame header")
        if single_segment:  # the window is the whole content
            window = int.from_bytes(header[len(header) - fcs_len :], "little")
            window += 256 if fcs_len == 2 else 0
        else:
            exponent, mantissa = header[1] >> 3, header[1] & 7
            window = (1 << (10 + exponent)) * (8 + mantissa) // 8
        if window > _WINDOW_MAX:
            raise VerificationError(
                f"zstd frame {self.frames} (which starts at offset {self.frame_start}) "
                f"needs a {window}-byte window, more than the {_WINDOW_MAX} bytes "
                "(128 MiB) this validator decodes with, like zstd -d without --long: "
                "it cannot be checked in bounded memory"
            )
        return header, bool((d >> 2) & 1)

    def _frame(self, magic: bytes) -> None:
        inp = self.inp
        header, has_checksum = self._frame_header()
        self.decoder = self.new_decoder()
        self.pending = [magic, header]
        self.pending_in, self.pending_out = 4 + len(header), 0
        self.first_block, self.unit_start = 1, self.frame_start
        block = 0
        while True:
            block += 1
            block_start = inp.offset
            raw = inp.take(3)
            if len(raw) < 3:
                raise self._truncated(f"the header of block {block}")
            value = int.from_bytes(raw, "little")
            last, kind, block_size = value & 1, (value >> 1) & 3, value >> 3
            if kind == 3:
                raise self._corrupt(
                    f"has the reserved block type 3 in block {block} at offset {block_start}"
                )
            content_len = 1 if kind == 1 else block_size  # an RLE block stores one byte
            content = inp.take(content_len)
            if len(content) < content_len:
                raise self._truncated(
                    f"block {block} ({len(content)} of its {content_len} content bytes present)"
                )
            self.pending += (raw, content)
            self.pending_in += 3 + content_len
            self.pending_out += _BLOCK_MAX if kind == 2 else block_size
            if last:
                break
            if self.pending_in >= CHUNK or self.pending_out >= CHUNK:
                self._feed(block)
                self.first_block, self.unit_start = block + 1, inp.offset
        if has_checksum:
            checksum = inp.take(4)
            if len(checksum) < 4:
                raise self._truncated("the content checksum after the last block")
            self.pending.append(checksum)
        self._feed(block)
        if not self.decoder.eof or self.decoder.unused_data:
            raise self._corrupt(
                f"ends at offset {inp.offset} by its block headers, but the decoder "
                "did not finish the frame there"
            )

    def _feed(self, last_block: int) -> None:
        """Give the pending whole blocks to the decoder and its output to the sink."""
        assert self.decoder is not None
        data = b"".join(self.pending)
        self.pending, self.pending_in, self.pending_out = [], 0, 0
        try:
            out = self.decoder.decompress(data)
        except self.errors as exc:
            blocks = (
                f"block {last_block}"
                if self.first_block == last_block
                else f"blocks {self.first_block} to {last_block}"
            )
            end = self.unit_start + len(data) - 1
            raise self._corrupt(
                f"does not decode in {blocks} (offsets {self.unit_start} to {end}): {exc}"
            ) from exc
        if self.sink is not None and out:
            self.sink(out)


def zstd(f: BinaryIO) -> None:
    """Accept a complete zstd stream: one or more whole frames and nothing else.

    Every frame is decoded to its end (the output is discarded, memory stays
    bounded). Accepted: one frame, several concatenated frames, and skippable
    frames (their content is skipped, not interpreted).

    Rejected, with the offset and frame number in the message:

    * an empty file;
    * a file that does not start with the zstd frame magic;
    * a stream that ends anywhere inside a frame: in the magic, the frame
      header, a block header, a block, or the content checksum;
    * trailing bytes after the last complete frame that are not another frame;
    * a frame the decoder rejects: corrupt blocks, a content size or content
      checksum that does not match, a reserved block type, or a frame that
      needs a dictionary;
    * a frame whose window is larger than 128 MiB (written with ``zstd
      --long`` or ``--ultra``): like ``zstd -d`` without ``--long``, the
      validator does not decode it, to keep memory bounded.

    Limits: a stream cut exactly between two frames is itself a complete
    stream and is accepted; a single-frame format (c1z) has no such boundary.
    Damage inside a frame is certain to be caught only if the frame carries a
    content checksum (``zstd`` writes one by default, ``zstandard`` only with
    ``write_checksum=True``); without one, a changed byte in a raw or literal
    block decodes to different data without any error.

    The decoder is the standard library's :mod:`compression.zstd` on Python
    3.14+, else the ``zstandard`` package.

    Raises:
        VerificationError: the stream is incomplete, corrupt or not zstd.
        ModuleNotFoundError: no zstd decoder is installed (``pip install
            'crashsafe[zstd]'``); the file was not judged.
    """
    ZstdStream(Input(f), zstd_backend(), None).run(
        "file is empty: a zstd stream holds at least one frame"
    )
