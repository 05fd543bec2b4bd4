"""Deliberately broken twin of ``dir_atomic.py``: the exchange without an fsync.

``dir_broken.py TARGET VERSION``: the tree is staged under a name as
atomic_directory names it, then exchanged with TARGET by renameat2 at once:
no fsync of the staged files or directories, none of the parent. A power cut
finds the exchange without the data: empty or missing files in the new tree.
"""

import os
import sys

from crashsafe._platform import _linux
from crashsafe.staging import temp_name
from tests.writers.dir_tree import write_tree
from tests.writers.markers import end, start

target, version = sys.argv[1:3]
parent, name = os.path.split(target)
staged = temp_name(name, "-dir")
start()
os.mkdir(os.path.join(parent, staged), 0o700)
write_tree(os.path.join(parent, staged), int(version))
fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
_linux.renameat2_exchange(fd, staged, name)
os.close(fd)
end()
