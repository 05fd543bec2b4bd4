"""Deliberately broken twin of ``tx_commit.py``: the files replaced one by one.

Same arguments (:mod:`tests.writers.plan`). Each file is replaced on its own
with ``crashsafe.atomic_write`` (each write crash-safe, the set not) and the
removal is a plain unlink: no journal, so a crash between two of them leaves
a mix of generations that no recovery can undo.
"""

import contextlib
import fcntl  # noqa: F401 - imported by the lock on first use: not part of the crash points
import os
import sys

import crashsafe
from tests.writers.markers import end, start, use_staging
from tests.writers.plan import read_plan

plan = read_plan(sys.argv)
use_staging(plan.staging)
start()
for name, perm in plan.steps:
    path = os.path.join(plan.directory, name)
    if perm is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    else:
        crashsafe.atomic_write(path, plan.data[name], perm=perm, durability=plan.durability)  # type: ignore[arg-type]
end()
