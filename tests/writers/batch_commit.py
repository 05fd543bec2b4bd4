"""Writes a batch of files with ``crashsafe.write_many`` on its pool of threads.

``batch_commit.py PLAN THREADS DURABILITY``: PLAN is a JSON object
``{target: source}``; every source is read before the start marker. THREADS,
if not empty, caps the pool. Its broken twin, ``batch_broken.py``, has
write_many's shape (publish on a pool, then sync each directory once) but no
fsync of the data before the rename: a power cut finds empty files.
"""

import concurrent.futures.thread  # noqa: F401 - imported by write_many on first use
import json
import sys

import crashsafe.batch
from crashsafe.batch import write_many
from tests.writers.markers import end, start

plan: dict[str, str] = json.loads(sys.argv[1])
if sys.argv[2]:
    crashsafe.batch._THREADS = int(sys.argv[2])  # type: ignore[misc]  # a Final the test caps
durability = sys.argv[3]
data = {}
for target, source in plan.items():
    with open(source, "rb") as f:
        data[target] = f.read()
start()
write_many(data, durability=durability)  # type: ignore[arg-type]
end()
