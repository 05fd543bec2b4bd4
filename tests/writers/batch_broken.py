"""Deliberately broken twin of ``batch_commit.py``: no fsync of the data.

``batch_broken.py PLAN``: each file written to a temporary name and renamed
over its target on a pool of threads, then each directory fsynced once, but
no file's data fsynced before its rename: a rename that reaches the journal
without its data leaves an empty (or zero-filled) file.
"""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from tests.writers.markers import end, start

plan: dict[str, str] = json.loads(sys.argv[1])
data = {}
for target, source in plan.items():
    with open(source, "rb") as f:
        data[target] = f.read()


def publish(target: str) -> None:
    temp = os.path.join(os.path.dirname(target), "." + os.path.basename(target) + ".broken-tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    view = memoryview(data[target])
    while view:
        view = view[os.write(fd, view) :]
    os.close(fd)
    os.rename(temp, target)


start()
with ThreadPoolExecutor(len(data)) as pool:
    list(pool.map(publish, data))
for directory in sorted({os.path.dirname(t) for t in data}):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
end()
