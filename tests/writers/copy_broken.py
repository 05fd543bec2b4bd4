"""Deliberately broken twin of ``copy_atomic.py``: copy, rename, never fsync.

``copy_broken.py TARGET SOURCE``: ``shutil.copyfile`` (sendfile on Linux,
through the page cache) to a fixed temporary name, then a rename over TARGET.
A power cut finds the rename without the data: an empty or partial target.
"""

import os
import shutil
import sys

from tests.writers.markers import end, start

target, source = sys.argv[1:3]
temp = os.path.join(os.path.dirname(target), ".target.broken-tmp")
start()
shutil.copyfile(source, temp)
os.rename(temp, target)
end()
