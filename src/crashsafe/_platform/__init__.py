"""The one seam between the crash-safety protocol and the operating system.

Both backends expose the same small interface, chosen once here:

* ``Directory(path)``: an open directory with ``lstat`` (a :class:`Status`:
  type, mode and owner, no timestamps), ``readlink``,
  ``open_read``, ``create_temp``,
  ``publish``, ``discard``, ``sync``, ``close``, and for transactions
  ``names``, ``replace``, ``remove``, ``read`` and ``open_lock``;
* ``copy_data(src_fd, dst_fd, size, progress)``: the fastest copy between two
  files (reflink, ``copy_file_range``, ``sendfile``, read/write), for
  :func:`crashsafe.atomic_copy`; ``copy_into(src_fd, dst_fd)``: the same, for
  append mode;
* ``fsync_file(fd)``: the strongest flush the platform has;
* ``set_metadata(fd, mode, owner)``: owner first, then the exact mode;
* ``lock(fd, shared=)`` and ``unlock(fd)``: a lock on an open lock file that
  excludes threads and processes and dies with its holder;
* ``signals_deferred()``: a context in which ``KeyboardInterrupt`` cannot land
  between a syscall and the bookkeeping of what it did.

``Directory.sync()`` returns quietly on a filesystem that cannot sync
directories at all (EINVAL or ENOTSUP from a directory fsync).

The POSIX backend's module flag ``use_tmpfile`` says whether anonymous
``O_TMPFILE`` staging is tried; tests turn it off to prove the named path.
"""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover - not verified on this project's CI
    from crashsafe._platform._windows import (
        Directory,
        Status,
        copy_data,
        copy_into,
        fsync_file,
        lock,
        set_metadata,
        signals_deferred,
        unlock,
    )
else:
    from crashsafe._platform._posix import (
        Directory,
        Status,
        copy_data,
        copy_into,
        fsync_file,
        lock,
        set_metadata,
        signals_deferred,
        unlock,
    )

__all__ = [
    "Directory",
    "Status",
    "copy_data",
    "copy_into",
    "fsync_file",
    "lock",
    "set_metadata",
    "signals_deferred",
    "unlock",
]
