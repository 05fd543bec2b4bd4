"""The two 16-byte patches of the in-place crash tests, and the file they patch.

Two patches half a MiB apart, so that a crash that keeps one and loses the
other (a file written in place) shows as a mix, never as "old" or "new".
"""

from __future__ import annotations

SIZE = 1 << 20
PATCHES = ((0, b"CRASHSAFE-NEW-v2"), (SIZE // 2, b"second patch: v2"))


def old_content() -> bytes:
    """The file before the patches: 1 MiB that no patch appears in."""
    unit = bytes(range(256))
    return (b"CRASHSAFE-OLD-v1" + unit * (SIZE // len(unit)))[:SIZE]


def patched(data: bytes, which: tuple[int, ...] = (0, 1)) -> bytes:
    """*data* with the patches numbered in *which* applied."""
    out = bytearray(data)
    for i in which:
        offset, patch = PATCHES[i]
        out[offset : offset + len(patch)] = patch
    return bytes(out)
