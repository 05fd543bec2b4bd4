"""Deliberately broken twin of ``path_atomic.py``: the commit without an fsync.

``path_broken.py TARGET SOURCE``: the content of SOURCE is written to a staged
path named as atomic_path names it, which is then renamed over TARGET with a
plain ``os.replace``: no fsync of the staged file, none of the directory. A
power cut finds the rename without the data: an empty or partial target.
"""

import os
import sys

from crashsafe.staging import staged_suffix, temp_name
from tests.writers.markers import end, start

target, source = sys.argv[1:3]
name = os.path.basename(target)
staged = os.path.join(os.path.dirname(target), temp_name(name, staged_suffix(name)))
with open(source, "rb") as f:
    data = f.read()
start()
with open(staged, "xb") as out:
    out.write(data)
os.replace(staged, target)
end()
