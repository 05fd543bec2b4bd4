"""Reads a transactional directory with ``snapshot()`` in a loop, until told to stop.

``snapshot_reader.py DIRECTORY``: says "ready", then loops on snapshot().
Between two snapshots it looks at its standard input: "read" asks for one
more snapshot whose generation it prints at once (so the test knows, without
any timing, that the reader read at that moment, while the writer is being
killed), anything else for its tally as JSON: reads, the bad states it saw
(a mix, a torn file) and how many generations. It writes nothing: the
"broken twin" it must catch is a writer whose commit a reader can see half
done.
"""

import json
import select
import sys

from crashsafe.transactions import snapshot
from tests.harness.generations import classify_generation

directory = sys.argv[1]
reads = 0
bad: dict[str, int] = {}
seen: set[int] = set()


def read() -> int | str:
    global reads  # noqa: PLW0603 - a script's own tally
    with snapshot(directory) as snap:
        found = classify_generation(lambda n: snap.read(n) if snap.exists(n) else None)
    reads += 1
    if isinstance(found, int):
        seen.add(found)
    else:
        bad[found] = bad.get(found, 0) + 1
    return found


print("ready", flush=True)
while True:
    if select.select([0], [], [], 0)[0]:
        command = sys.stdin.readline().strip()
        if command != "read":
            break
        print(json.dumps(read()), flush=True)
    else:
        read()
print(json.dumps({"reads": reads, "bad": bad, "generations": len(seen)}), flush=True)
