"""Deliberately broken twin of ``write_atomic.py``: temp + rename with plain os calls.

``write_broken.py TARGET SOURCE no-fsync|fsync-file``: writes SOURCE's content
to a fixed temporary name and renames it over TARGET, with no fsync at all
(``no-fsync``), or an fsync of the file but none of the directory
(``fsync-file``). A power cut finds an empty target, or the old one after the
call returned.
"""

import os
import sys

from tests.writers.markers import end, start

target, source = sys.argv[1:3]
fsync_file = sys.argv[3] == "fsync-file"
temp = os.path.join(os.path.dirname(target), ".target.broken-tmp")
with open(source, "rb") as f:
    data = f.read()
start()
fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
view = memoryview(data)
while view:
    view = view[os.write(fd, view) :]
if fsync_file:
    os.fsync(fd)
os.close(fd)
os.rename(temp, target)
end()
