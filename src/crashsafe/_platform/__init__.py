"""The one seam between the crash-safety protocol and the operating system.

What a backend provides is stated once, as the protocols
:class:`~crashsafe._platform._interface.Backend` (the module-level steps) and
:class:`~crashsafe._platform._interface.Directory` (an open directory and the
steps relative to it). The backend is chosen here, once: ``_windows`` on
Windows (written with care, not verified on this project's CI), ``_posix``
everywhere else, with its copy paths in ``_copy`` and its Linux-only calls in
``_linux``; what is the same on every platform is in ``_common``, used by
both. Type checkers check the chosen backend against the protocol on every
platform (``mypy``, ``mypy --platform win32``, ``mypy --platform darwin``),
and the Windows one everywhere.

The rest of the package opens, lists, links and removes files through these
steps, never with platform flags or fallbacks of its own.

The POSIX backend's module flag ``use_tmpfile`` says whether anonymous
``O_TMPFILE`` staging is tried; tests turn it off to prove the named path.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

# As os takes posix or nt: the backend's __all__ is the interface (tested
# against the protocol, with mypy and tests/test_platform.py).
if sys.platform == "win32":  # pragma: no cover - not verified on this project's CI
    from crashsafe._platform import _windows as _backend
    from crashsafe._platform._windows import *  # noqa: F403
else:
    from crashsafe._platform import _posix as _backend
    from crashsafe._platform._posix import *  # noqa: F403

__all__ = _backend.__all__

if TYPE_CHECKING:
    # Where a backend falls short of the interface, these assignments fail
    # type checking. _posix is checked wherever it can run (its body is
    # unreachable for Windows); _windows is written to type-check anywhere.
    from crashsafe._platform import _interface, _windows

    if sys.platform != "win32":
        _posix_conforms: _interface.Backend = _backend
    _windows_conforms: _interface.Backend = _windows
