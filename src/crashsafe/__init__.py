"""crashsafe: file writes that are all-or-nothing and durable.

A reader of a file written through crashsafe sees the complete old content or
the complete new content, after a ``kill -9`` of the writer or a power cut at
any instant; never an empty file, a prefix or a mix. See the README for what
each durability level survives and what is not promised.
"""

from crashsafe.atomic import AtomicFile, atomic_open, atomic_write, write_file_atomic
from crashsafe.errors import NotDurableError
from crashsafe.staging import sweep

__all__ = [
    "AtomicFile",
    "NotDurableError",
    "atomic_open",
    "atomic_write",
    "sweep",
    "write_file_atomic",
]
__version__ = "0.1.0"
