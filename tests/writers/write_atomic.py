"""Writes one file with ``crashsafe.atomic_write``: the content of SOURCE at TARGET.

``write_atomic.py TARGET SOURCE STAGING DURABILITY``. Its broken twin,
``write_broken.py``, does temp + rename with plain os calls and no fsync (or
an fsync of the file but none of the directory).
"""

import sys

import crashsafe
from tests.writers.markers import end, start, use_staging

target, source, staging, durability = sys.argv[1:5]
use_staging(staging)
with open(source, "rb") as f:
    data = f.read()
start()
crashsafe.atomic_write(target, data, durability=durability)  # type: ignore[arg-type]
end()
