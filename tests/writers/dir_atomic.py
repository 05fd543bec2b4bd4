"""Replaces a small tree through ``crashsafe.atomic_directory``.

``dir_atomic.py TARGET VERSION DURABILITY SCHEME``: TARGET gets the tree of
:func:`tests.writers.dir_tree.write_tree` for VERSION (3 files in 2
directories). SCHEME ``exchange`` uses renameat2(RENAME_EXCHANGE); ``link``
switches the exchange off, for the symlink scheme. Its broken twin is
``dir_broken.py``.
"""

import sys

import crashsafe
from crashsafe import directories, staging
from tests.writers.dir_tree import write_tree
from tests.writers.markers import end, start

# A lazy export, and the writer's part of temporary names (read from /proc
# once): resolved before the start marker, so no crash point is spent on them.
atomic_directory = crashsafe.atomic_directory
staging.temp_name("warm-up")

target, version, durability, scheme = sys.argv[1:5]
directories.use_exchange = scheme == "exchange"
start()
with atomic_directory(target, durability=durability) as staged:  # type: ignore[call-overload]
    write_tree(staged, int(version))
end()
