"""Records one file in a checksum store: ``checksum_record.py STORE FILE STAGING HOW``.

``append``: ``ChecksumStore(STORE).record(FILE)``, which appends one line and
fsyncs it; ``compact``: the same with the log bound at zero, so the record
compacts the store (a new file, atomically). The broken variants the power-cut
harness must catch: ``nofsync``, the append without its fsync; ``inplace``, a
compaction that truncates the store and writes it again in place.
"""

import hashlib  # noqa: F401 - imported before start(): no import in the traced window
import json  # noqa: F401
import os
import sys

import crashsafe.checksums
from crashsafe import _checksum_log
from crashsafe._checksum_log import Changes
from crashsafe.checksums import ChecksumStore
from tests.writers.markers import end, start, use_staging


class InPlace(ChecksumStore):
    """A compaction that rewrites the store file in place: truncate, write, fsync."""

    def _compact(self, fd: int | None, changes: Changes) -> None:
        with _checksum_log.current(self.path, fd) as state:
            files = {} if state is None else dict(state.files)
        files.update({k: v for k, v in changes.items() if v is not None})
        content, _, _ = _checksum_log.dump_store(files)
        with open(self.path, "r+b") as f:
            f.truncate(0)
            f.write(content)
            f.flush()
            os.fsync(f.fileno())


store, file, staging, how = sys.argv[1:5]
use_staging(staging)
if how in ("compact", "inplace"):
    crashsafe.checksums._MIN_LOG = 0  # type: ignore[misc]
recorder = {
    "append": ChecksumStore(store),
    "compact": ChecksumStore(store),
    "nofsync": ChecksumStore(store, durability="none"),
    "inplace": InPlace(store),
}[how]
start()
recorder.record(file)
end()
