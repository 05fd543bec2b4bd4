"""The one seam between the crash-safety protocol and the operating system.

What a backend provides is stated once, as the protocols
:class:`~crashsafe._platform._interface.Backend` (the module-level steps) and
:class:`~crashsafe._platform._interface.Directory` (an open directory and the
steps relative to it). The backend is chosen here, once: ``_windows`` on
Windows (written with care, not verified on this project's CI), ``_posix``
everywhere else, with its copy paths in ``_copy`` and its Linux-only calls in
``_linux``. Type checkers check the chosen backend against the protocol on
every platform (``mypy``, ``mypy --platform win32``, ``mypy --platform
darwin``), and the Windows one everywhere.

No other module of the package makes a system call of its own with platform
flags or fallbacks: it calls a step from here.

The POSIX backend's module flag ``use_tmpfile`` says whether anonymous
``O_TMPFILE`` staging is tried; tests turn it off to prove the named path.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if sys.platform == "win32":  # pragma: no cover - not verified on this project's CI
    from crashsafe._platform import _windows as _backend
else:
    from crashsafe._platform import _posix as _backend

__all__ = [
    "Directory",
    "Status",
    "copy_data",
    "copy_into",
    "create_private",
    "fsync_file",
    "lock",
    "lock_file_linked",
    "open_lock_file",
    "open_reading",
    "reopen_path",
    "set_metadata",
    "signals_deferred",
    "unlock",
]

Directory = _backend.Directory
Status = _backend.Status
copy_data = _backend.copy_data
copy_into = _backend.copy_into
create_private = _backend.create_private
fsync_file = _backend.fsync_file
lock = _backend.lock
lock_file_linked = _backend.lock_file_linked
open_lock_file = _backend.open_lock_file
open_reading = _backend.open_reading
reopen_path = _backend.reopen_path
set_metadata = _backend.set_metadata
signals_deferred = _backend.signals_deferred
unlock = _backend.unlock

if TYPE_CHECKING:
    # Where a backend falls short of the interface, these assignments fail
    # type checking. _posix is checked wherever it can run (its body is
    # unreachable for Windows); _windows is written to type-check anywhere.
    from crashsafe._platform import _interface, _windows

    if sys.platform != "win32":
        _posix_conforms: _interface.Backend = _backend
    _windows_conforms: _interface.Backend = _windows
