"""Deliberately broken twin of ``tx_commit.py``: the files replaced one by one.

Same arguments. Each file is replaced on its own with
``crashsafe.atomic_write`` (each write crash-safe, the set not) and the
removal is a plain unlink: no journal, so a crash between two of them leaves
a mix of generations that no recovery can undo.
"""

import contextlib
import json
import os
import sys

import crashsafe
from tests.writers.markers import end, start, use_staging

directory, source, staging, durability = sys.argv[1:5]
plan: list[tuple[str, int | None]] = json.loads(sys.argv[5])
use_staging(staging)
data = {}
for name, perm in plan:
    if perm is not None:
        with open(os.path.join(source, name), "rb") as f:
            data[name] = f.read()
start()
for name, perm in plan:
    path = os.path.join(directory, name)
    if perm is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    else:
        crashsafe.atomic_write(path, data[name], perm=perm, durability=durability)  # type: ignore[arg-type]
end()
