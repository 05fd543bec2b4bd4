"""Commits one generation of files with ``crashsafe.transactions.transaction``.

Arguments: see :mod:`tests.writers.plan`. Its broken twin, ``tx_broken.py``,
replaces the same files one by one with atomic_write (each write crash-safe,
the set not), with no journal: a crash leaves a mix.
"""

import fcntl  # noqa: F401 - imported by the lock on first use: not part of the crash points
import sys

from crashsafe.transactions import transaction
from tests.writers.markers import end, start, use_staging
from tests.writers.plan import read_plan

plan = read_plan(sys.argv)
use_staging(plan.staging)
start()
with transaction(plan.directory, durability=plan.durability) as tx:  # type: ignore[arg-type]
    for name, perm in plan.steps:
        if perm is None:
            tx.remove(name)
        else:
            tx.write(name, plan.data[name], perm=perm)
end()
