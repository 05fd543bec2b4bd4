"""Writes one file into a missing 3-deep chain of directories: SOURCE's content at TARGET.

``write_parents.py TARGET SOURCE STAGING parents|makedirs``: ``parents`` is
``crashsafe.atomic_write(TARGET, data, parents=True)``; ``makedirs`` is the broken
variant, ``os.makedirs`` of TARGET's directory (no directory fsync) then a durable
``atomic_write``, whose file a power cut after the call can take with its directories.
"""

import os
import sys

import crashsafe
from tests.writers.markers import end, start, use_staging

target, source, staging, how = sys.argv[1:5]
use_staging(staging)
with open(source, "rb") as f:
    data = f.read()
start()
if how == "parents":
    crashsafe.atomic_write(target, data, parents=True)
else:
    os.makedirs(os.path.dirname(target))
    crashsafe.atomic_write(target, data)
end()
