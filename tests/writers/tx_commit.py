"""Commits one generation of files with ``crashsafe.transactions.transaction``.

``tx_commit.py DIRECTORY SOURCE STAGING DURABILITY PLAN``: PLAN is a JSON list
of ``[name, perm]`` (perm null: remove the name); each file's content is read
from SOURCE/name before the start marker (see
:func:`tests.harness.generations.tx_writer_args`). Its broken twin,
``tx_broken.py``, replaces the same files one by one with atomic_write (each
write crash-safe, the set not), with no journal: a crash leaves a mix.
"""

import json
import os
import sys

from crashsafe.transactions import transaction
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
with transaction(directory, durability=durability) as tx:  # type: ignore[arg-type]
    for name, perm in plan:
        if perm is None:
            tx.remove(name)
        else:
            tx.write(name, data[name], perm=perm)
end()
