"""The argument checks every public call makes before anything is created.

Shared by :mod:`crashsafe.atomic` and its siblings (batch, transactions,
documents, checksums, locking), so that one keyword is refused the same way,
with the same message, whichever door it came in by. Nothing here touches a
file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import BinaryIO, Final, Literal, TypedDict, TypeGuard

__all__ = [
    "DEFAULT_ENCODING",
    "DURABILITIES",
    "MODES",
    "MUST_EXIST",
    "BinaryMode",
    "BytesLike",
    "Durability",
    "OpenOptions",
    "TextMode",
    "Validate",
    "Validator",
    "as_bytes",
    "as_data",
    "check_flag",
    "check_options",
    "check_perm",
    "check_timeout",
    "single_name",
    "unnamed_os_error",
    "validators_of",
]

Durability = Literal["durable", "consistent", "none"]
# The modes, as types: a mode held in a variable needs one of these (or a
# Literal of its own) for atomic_open and AtomicFile to be typed by it; a plain
# str is refused by the type checker, as "r" is.
TextMode = Literal["w", "wt", "x", "xt", "a", "at", "r+", "r+t", "a+", "a+t", "w+", "w+t"]
BinaryMode = Literal["wb", "xb", "ab", "r+b", "a+b", "w+b"]
# The encoding of text modes and of str data when none is given: UTF-8, as
# Python's own default from 3.15 (PEP 686), never the locale's.
DEFAULT_ENCODING: Final = "utf-8"
# Any object with the buffer protocol works at run time (numpy arrays too);
# collections.abc.Buffer, the exact type, needs Python 3.12.
BytesLike = bytes | bytearray | memoryview
DURABILITIES: Final = ("durable", "consistent", "none")
Validator = Callable[[BinaryIO], object]
Validate = Validator | Sequence[Validator] | None


class OpenOptions(TypedDict, total=False):
    """The keywords of :class:`~crashsafe.AtomicFile` and :func:`~crashsafe.atomic_open`,
    for their typed overloads (the functions themselves spell them out)."""

    perm: int | None
    durability: Durability
    follow_symlinks: bool
    parents: bool
    preserve: Literal["all", "mode"]
    hardlinks: Literal["refuse", "break"]
    validate: Validate
    encoding: str | None
    errors: str | None
    newline: str | None


# mode -> (mode for the file object, replace an existing target, keep old content)
MODES: Final[dict[str, tuple[str, bool, bool]]] = {
    "w": ("w", True, False),
    "wt": ("w", True, False),
    "wb": ("wb", True, False),
    "x": ("w", False, False),
    "xt": ("w", False, False),
    "xb": ("wb", False, False),
    "a": ("a", True, True),
    "at": ("a", True, True),
    "ab": ("ab", True, True),
    # The update modes: the staged file is readable too. r+ and a+ start from
    # a copy of the current content (see UPDATE_MODES); w+ starts empty.
    "r+": ("r+", True, True),
    "r+t": ("r+", True, True),
    "r+b": ("r+b", True, True),
    "a+": ("a+", True, True),
    "a+t": ("a+", True, True),
    "a+b": ("a+b", True, True),
    "w+": ("w+", True, False),
    "w+t": ("w+", True, False),
    "w+b": ("w+b", True, False),
}
# Modes whose target must exist, as open()'s r+: a missing one is FileNotFoundError.
MUST_EXIST: Final = frozenset({"r+", "r+t", "r+b"})


def unnamed_os_error(error: object) -> TypeGuard[OSError]:
    """Whether *error* is a failed syscall's :class:`OSError` that names no file.

    Only those may be given the caller's path. An ``OSError`` without an
    errno (``io.UnsupportedOperation`` from reading a write-only file,
    :class:`shutil.SameFileError`) is a message, not a syscall's failure: a
    filename would turn ``str()`` of it into ``[Errno None] None: 'path'``.
    """
    return isinstance(error, OSError) and error.errno is not None and error.filename is None


def check_options(mode: str, perm: int | None, durability: str) -> None:
    """Raise :class:`ValueError` for a *mode*, *perm* or *durability* that
    :class:`~crashsafe.AtomicFile` does not take."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"invalid mode {mode!r}: expected one of {', '.join(MODES)}")
    if perm is not None and (
        not isinstance(perm, int)
        or isinstance(perm, bool)
        or not 0 <= perm <= 0o7777
        # 644 for 0o644? Real modes up to 0o777 (511) fail this at its first compare.
        or 512 <= perm <= 777
    ):
        check_perm(perm)
    if durability not in DURABILITIES:
        raise ValueError(
            f"invalid durability {durability!r}: expected one of {', '.join(DURABILITIES)}"
        )


def check_perm(perm: object) -> None:
    """Raise ValueError for a *perm* that is no mode or is an octal mode written in decimal.

    ``perm=644`` is 0o1204: the sticky bit, meaningless on a file, with an
    owner who cannot read. Every int from 512 to 777 whose digits are all 0-7
    is such a slip (its octal reading is 0o1000 to 0o1411: sticky, owner
    without both read and write, nothing a file is meant to have), so it is
    refused. Four digits (1777, 2755) cannot be told from a real setuid or
    setgid mode below 0o7777 and are taken as given; above it (4755) they are
    refused with the same hint.
    """
    if not isinstance(perm, int) or isinstance(perm, bool) or perm < 0:
        raise ValueError(f"perm must be an int from 0 to 0o7777, not {perm!r}")
    digits = str(perm)
    octal_slip = perm > 0o777 and digits.isdigit() and set(digits) <= set("01234567")
    if octal_slip and (perm <= 777 or perm > 0o7777) and int(digits, 8) <= 0o7777:
        raise ValueError(
            f"perm={perm} looks like an octal mode written in decimal ({perm} is 0o{perm:o}); "
            f"did you mean 0o{digits}?"
        )
    if perm > 0o7777:
        raise ValueError(f"perm must be an int from 0 to 0o7777, not {perm!r}")


def check_flag(keyword: str, value: object) -> None:
    """Raise :class:`TypeError` unless *value* is True or False.

    Every truthy object would pass for True: ``overwrite="no"`` must not
    overwrite.
    """
    if value is not True and value is not False:
        raise TypeError(f"{keyword} must be True or False, not {value!r}")


def check_timeout(timeout: float | None) -> float | None:
    """*timeout* as a lock waits for it: None (for ever) or seconds, infinity as None.

    Raises :class:`ValueError` for anything but None or a number >= 0.
    """
    # "not >= 0" also refuses NaN.
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
    ):
        raise ValueError(f"timeout must be None or a non-negative number, not {timeout!r}")
    # Condition.wait() refuses an infinite timeout; infinity is "no timeout".
    return None if timeout == float("inf") else timeout


def validators_of(validate: Validator | Sequence[Validator]) -> tuple[Validator, ...]:
    """*validate* (a callable or a sequence of them) as a tuple; :class:`TypeError`
    for anything else."""
    checks = (validate,) if callable(validate) else validate
    if isinstance(checks, str | bytes) or not isinstance(checks, Sequence):
        raise TypeError(
            f"validate must be a callable or a list of them, not {type(validate).__name__}"
        )
    for check in checks:
        if not callable(check):
            raise TypeError(f"validate: {check!r} is not callable")
    return tuple(checks)


def as_bytes(data: object, expected: str) -> memoryview:
    """*data* as a memoryview; :class:`TypeError` naming *expected* if it has no buffer."""
    try:
        return memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"data must be {expected}, not {type(data).__name__}") from None


def as_data(data: object) -> memoryview:
    """Data to write: bytes or any buffer as it is, str encoded as UTF-8."""
    if isinstance(data, str):
        return memoryview(data.encode())
    return as_bytes(data, "bytes or str")


def single_name(name: object) -> str:
    """Return *name* as a str if it is one file name (no separator, not ``.`` or
    ``..``), else raise :class:`ValueError`.

    A path-like object or bytes is taken as its text, as paths are everywhere;
    anything else raises :class:`TypeError`.
    """
    if isinstance(name, bytes | os.PathLike):
        name = os.fsdecode(os.fspath(name))
    elif not isinstance(name, str):
        raise TypeError(
            f"name must be a file name (str, bytes or os.PathLike), not {type(name).__name__}"
        )
    if name in ("", ".", "..") or "/" in name or "\0" in name or os.sep in name:
        raise ValueError(f"name must be a single file name, not {name!r}")
    return name
