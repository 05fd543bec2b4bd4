"""Patches TARGET through ``crashsafe.atomic_open(TARGET, "r+b")``: two 16-byte writes.

``inplace_patch.py TARGET STAGING [DURABILITY]``. The staged file starts as a
copy of TARGET (a reflink on xfs, copy_file_range on ext4); the two patches
land in it, and the commit publishes it. With DURABILITY ``none`` the staged
copy is committed without any fsync: the broken variant the harness must
catch. Its other broken twin, ``inplace_broken.py``, patches TARGET in place.
"""

import ctypes  # noqa: F401 - imported by the copy on first use: not part of the crash points
import fcntl  # noqa: F401
import sys

import crashsafe
from crashsafe.atomic import Durability
from tests.writers.markers import end, start, use_staging
from tests.writers.patches import PATCHES

target, staging = sys.argv[1:3]
durability: Durability = "none" if sys.argv[3:] == ["none"] else "durable"
use_staging(staging)
atomic_open = crashsafe.atomic_open
start()
with atomic_open(target, "r+b", durability=durability) as f:
    for offset, patch in PATCHES:
        f.seek(offset)
        f.write(patch)
end()
