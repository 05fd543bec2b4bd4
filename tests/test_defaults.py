"""Defaults a new user relies on without asking: text is UTF-8 whatever the locale, and a
mode written in decimal (``perm=644``) is caught instead of giving odd bits."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import crashsafe
from crashsafe import documents
from crashsafe.batch import write_many
from crashsafe.checksums import ChecksumStore
from crashsafe.transactions import transaction

# -- encoding ---------------------------------------------------------------------------


def _child_in_ascii_locale(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run *code* in a Python whose locale encoding is ASCII, warning on a default encoding.

    LC_ALL=C alone would not do: Python coerces the C locale to C.UTF-8 (PEP 538) and turns
    on UTF-8 mode (PEP 540); both are switched off here.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LC_", "LANG", "PYTHONIOENCODING", "PYTHONUTF8"))
    }
    env.update(LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    return subprocess.run(
        [
            sys.executable,
            "-X",
            "warn_default_encoding",
            "-W",
            "error::EncodingWarning",
            "-c",
            textwrap.dedent(code),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_text_modes_and_str_data_are_utf8_whatever_the_locale(workdir: Path) -> None:
    code = """
        import locale, sys
        import crashsafe
        print(locale.getencoding(), sys.flags.utf8_mode)
        with crashsafe.atomic_open(sys.argv[1], "w") as f:
            f.write("\\u00e9")
        with crashsafe.atomic_open(sys.argv[2], "a") as f:
            f.write("\\u00fc")
        staged = crashsafe.AtomicFile(sys.argv[3], "xt")
        staged.file.write("\\u00df")
        staged.commit()
        crashsafe.atomic_write(sys.argv[4], "\\u20ac")
    """
    names = [workdir / n for n in ("w", "a", "x", "str")]
    names[1].write_bytes("ä".encode())
    result = _child_in_ascii_locale(code, *map(str, names))
    assert result.returncode == 0, result.stderr
    # The premise: this child's locale would have encoded nothing beyond ASCII.
    assert result.stdout.split() == ["ANSI_X3.4-1968", "0"]
    assert [p.read_bytes() for p in names] == [
        "é".encode(),
        "äü".encode(),
        "ß".encode(),
        "€".encode(),
    ]


def test_an_explicit_encoding_overrides_the_default(workdir: Path) -> None:
    target = workdir / "latin"
    with crashsafe.atomic_open(target, "w", encoding="latin-1") as f:
        f.write("é")
    crashsafe.atomic_write(workdir / "u16", "é", encoding="utf-16-le")
    assert target.read_bytes() == b"\xe9"
    assert (workdir / "u16").read_bytes() == b"\xe9\x00"


# -- perm written in decimal ------------------------------------------------------------


def _refused(perm: int) -> str | None:
    """The ValueError message for *perm*, or None if it is accepted."""
    try:
        crashsafe._checks.check_options("wb", perm, "durable")
    except ValueError as e:
        return str(e)
    return None


@pytest.mark.parametrize(
    ("perm", "meant"),
    [(644, "0o644"), (600, "0o600"), (755, "0o755"), (777, "0o777"), (640, "0o640"),
     (4755, "0o4755")],
)  # fmt: skip
def test_decimal_perm_raises_naming_the_octal_mode(workdir: Path, perm: int, meant: str) -> None:
    target = workdir / "key"
    with pytest.raises(ValueError, match=f"perm={perm} looks like .*did you mean {meant}"):
        crashsafe.atomic_write(target, b"secret", perm=perm)
    assert not target.exists()


def test_every_mode_a_user_can_mean_is_accepted() -> None:
    # Usual permissions (owner can read, group no more than owner, others no more than
    # group) with any of setuid, setgid and sticky: none of them is refused.
    for mode in range(0o10000):
        owner, group, other = mode >> 6 & 7, mode >> 3 & 7, mode & 7
        if owner & 4 and not group & ~owner and not other & ~group:
            assert _refused(mode) is None, oct(mode)
    for mode in range(0o1000):  # and every plain permission, usual or not
        assert _refused(mode) is None, oct(mode)


def test_refused_values_are_exactly_octal_digits_from_512_to_777() -> None:
    refused = [v for v in range(0o10000) if _refused(v) is not None]
    assert refused == [v for v in range(512, 778) if set(str(v)) <= set("01234567")]
    for value in refused:
        # What the value would be as a mode: sticky (meaningless on a file), no setuid or
        # setgid, and an owner who cannot both read and write. Nobody means that.
        assert value & 0o7000 == 0o1000
        assert value & 0o600 != 0o600


@pytest.mark.parametrize("mode", [0o4755, 0o2775, 0o1777, 0o6755, 0o2750, 0o4711, 0o1644])
def test_special_bits_a_user_means_are_published_exactly(workdir: Path, mode: int) -> None:
    target = workdir / "tool"
    crashsafe.atomic_write(target, b"#!/bin/sh\n", perm=mode)
    assert stat.S_IMODE(target.stat().st_mode) == mode


def _tx_write(path: Path, perm: int) -> None:
    with transaction(path.parent) as tx:
        tx.write(path.name, b"x", perm=perm)


def _copy(path: Path, perm: int) -> None:
    source = path.with_name("source")
    source.write_bytes(b"x")
    try:
        crashsafe.atomic_copy(source, path, perm=perm)
    finally:
        source.unlink()


def _atomic_open(path: Path, perm: int) -> None:
    with crashsafe.atomic_open(path, "wb", perm=perm) as f:
        f.write(b"x")


WRITERS: dict[str, Callable[[Path, int], object]] = {
    "atomic_write": lambda p, perm: crashsafe.atomic_write(p, b"x", perm=perm),
    "atomic_open": _atomic_open,
    "AtomicFile": lambda p, perm: crashsafe.AtomicFile(p, perm=perm),
    "write_file_atomic": lambda p, perm: crashsafe.write_file_atomic(p.parent, p.name, b"x", perm),
    "atomic_copy": _copy,
    "write_json": lambda p, perm: documents.write_json(p, {}, perm=perm),
    "update_json": lambda p, perm: documents.update_json(p, lambda d: d, default={}, perm=perm),
    "update": lambda p, perm: documents.update(p, lambda b: b"x", perm=perm),
    "write_many": lambda p, perm: write_many({p: b"x"}, perm=perm),
    "tx.write": _tx_write,
    "ChecksumStore": lambda p, perm: ChecksumStore(p, perm=perm),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_every_call_that_takes_perm_refuses_644_before_creating_anything(
    workdir: Path, writer: str
) -> None:
    target = workdir / "out"
    with pytest.raises(ValueError, match="did you mean 0o644"):
        WRITERS[writer](target, 644)
    # Nothing: no target, no lock file, no journal (a transaction holds its directory's
    # lock from its start, before any write names a perm).
    expected = [".crashsafe-tx.lock"] if writer == "tx.write" else []
    assert os.listdir(workdir) == expected
