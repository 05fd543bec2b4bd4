"""Writes one file through ``crashsafe.atomic_path``, as a path-only library would.

``path_atomic.py TARGET SOURCE DURABILITY HOW``: inside the block, the content
of SOURCE reaches the staged path by name, the way HOW says: ``write`` opens
the staged path, writes and closes it; ``rename`` writes a file of its own
beside it and renames that onto the staged path (a library that itself
writes through a temporary file). Its broken twin, ``path_broken.py``,
renames the staged path over TARGET with no fsync.
"""

import os
import sys

import crashsafe
from crashsafe import staging
from tests.writers.markers import end, start

# A lazy export, and the writer's part of temporary names (read from /proc
# once): resolved before the start marker, so no crash point is spent on them.
atomic_path = crashsafe.atomic_path
staging.temp_name("warm-up")

target, source, durability, how = sys.argv[1:5]
with open(source, "rb") as f:
    data = f.read()
start()
with atomic_path(target, durability=durability) as staged:  # type: ignore[call-overload]
    name = staged if how == "write" else os.path.join(os.path.dirname(target), "lib-own.tmp")
    with open(name, "wb") as out:
        out.write(data)
    if how == "rename":
        os.replace(name, staged)
end()
