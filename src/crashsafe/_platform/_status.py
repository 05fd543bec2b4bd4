"""What the protocol reads of an existing inode: its type, mode bits, owner, link
count, and whether it is the root of a mount."""

from __future__ import annotations

from typing import NamedTuple


class Status(NamedTuple):
    """The type and permission bits (``st_mode``) and the owner of an inode,
    under the names :func:`os.stat` gives them.

    Deliberately without timestamps: on Linux, reading an inode's ctime or
    mtime has a cost for the next change to it (see ``crashsafe._platform._native``).
    """

    st_mode: int
    st_uid: int
    st_gid: int
    #: How many names the inode has (a replaced file with more than one is refused).
    st_nlink: int = 1
    #: Whether the entry is the root of a mount (a bind-mounted file): True or
    #: False where the read could tell (statx), None where it could not.
    mount_root: bool | None = None
