"""Deliberately broken twin of ``inplace_patch.py``: the patches written in place.

``inplace_broken.py TARGET``: ``os.open(O_RDWR)``, then each patch with
``pwrite`` and ``fsync``, as code that updates a file where it lies does. A
power cut between the two leaves the first patch without the second: a mix.
"""

import os
import sys

from tests.writers.markers import end, start
from tests.writers.patches import PATCHES

target = sys.argv[1]
start()
fd = os.open(target, os.O_RDWR)
for offset, patch in PATCHES:
    os.pwrite(fd, patch, offset)
    os.fsync(fd)
os.close(fd)
end()
