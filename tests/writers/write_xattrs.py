"""Replaces TARGET (which has extended attributes and an ACL) with SOURCE's content.

``write_xattrs.py TARGET SOURCE STAGING all|after``: ``all`` is
``crashsafe.atomic_write(TARGET, data)`` (``preserve="all"``, the default: the
attributes go on the staged file before any data); ``after`` is the broken
variant, ``atomic_write(..., preserve="mode")`` and then the old attributes set
on the published file, fsynced: a window where the published file lacks them.
"""

import os
import sys

import crashsafe
from tests.writers.markers import end, start, use_staging

target, source, staging, how = sys.argv[1:5]
use_staging(staging)
with open(source, "rb") as f:
    data = f.read()
saved = {name: os.getxattr(target, name) for name in os.listxattr(target)}
start()
if how == "all":
    crashsafe.atomic_write(target, data)
else:
    crashsafe.atomic_write(target, data, preserve="mode")
    fd = os.open(target, os.O_RDONLY)
    for name, value in saved.items():
        os.setxattr(fd, name, value)
    os.fsync(fd)
    os.close(fd)
end()
