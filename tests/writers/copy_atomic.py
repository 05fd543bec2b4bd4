"""Copies one file with ``crashsafe.atomic_copy``, durably: SOURCE over TARGET.

``copy_atomic.py TARGET SOURCE STAGING``. Its broken twin, ``copy_broken.py``,
copies to a temporary name with ``shutil.copyfile`` and renames it, with no
fsync.
"""

import ctypes  # noqa: F401 - imported by the copy on first use: not part of the crash points
import fcntl  # noqa: F401
import sys

import crashsafe
from tests.writers.markers import end, start, use_staging

atomic_copy = crashsafe.atomic_copy  # a lazy export: resolved before the start marker
target, source, staging = sys.argv[1:4]
use_staging(staging)
start()
atomic_copy(source, target, durability="durable")
end()
