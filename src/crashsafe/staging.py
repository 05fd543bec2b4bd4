"""Temporary file names, the proof of who owns one, and the sweep of orphans.

A temporary name looks like::

    .report.json.3f9a1c2be4d5f607.1234-13181-9ab3c4d2.crashsafe-tmp
     ^target     ^64 random bits  ^pid ^start ^host     ^marker

* hidden (leading dot) and recognisable (fixed marker suffix), so ``ls`` stays
  clean and :func:`sweep` never mistakes another program's file for ours;
* the target's name comes first (cut short if the whole would exceed
  ``NAME_MAX``), so a person can tell which file it belongs to;
* 64 bits from ``os.urandom`` make it unguessable: nobody can plant a symlink or a file
  at the name in advance;
* the writer's pid, its start time in clock ticks since boot, and a tag of the
  boot and pid namespace prove whether the writer is still alive: a pid alone
  can be reused, a (pid, start time) pair on the same boot cannot.

A staged path of :func:`crashsafe.atomic_path` ends, after the marker, with
``-path`` and the target's own suffixes
(``.db.sqlite.3f9a...crashsafe-tmp-path.sqlite``), so that a library that
picks a format from the extension sees the right one; the side files SQLite
makes beside it (``-journal``, ``-wal``, ``-shm``) carry the same name and the
same proof of ownership. :func:`sweep` recognises all of them, and nothing
else after the marker (a person's ``....crashsafe-tmp.bak`` is left alone).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, overload

from crashsafe.objectstore._url import is_url

if TYPE_CHECKING:
    from pathlib import Path

    from crashsafe.objectstore import S3Store

__all__ = ["sweep", "temp_name"]

MARKER = ".crashsafe-tmp"
# The names SQLite gives the files it keeps beside a database (rollback
# journal, write-ahead log, its shared-memory index): atomic_path removes
# exactly these beside its staged path.
SIDE_FILES = ("-journal", "-wal", "-shm")
# After the marker in atomic_path's staged names, before the target's suffixes.
STAGED_PATH = "-path"
# At most this many bytes of the target's suffixes end a staged path's name.
SUFFIX_MAX = 64
_NAME_MAX = 255
# Internal door: every temporary name crashsafe makes (directories.py reads its
# writer fields).
TEMP_RE = re.compile(
    r"^\.(?P<stem>.*)\.[0-9a-f]{16}\.(?P<pid>\d+)-(?P<start>\d+)-(?P<host>[0-9a-f]{8})"
    + re.escape(MARKER)
    # atomic_path's staged names: a token, the target's suffixes, SQLite's side files;
    # or atomic_directory's: a staged tree, an old one, a version, a link, a probe.
    + r"(?:-path(?:\.[^.]+)*(?:-journal|-wal|-shm)?|-(?P<tree>dir|old|ver|link|probe))?$",
    re.DOTALL,
)
_UNKNOWN_HOST = "00000000"
# atomic_directory's names, after the marker: the kind of entry each must be
# for sweep() to remove it (a directory, or the symlink of a swap).
TREE_KINDS: Final = {"dir": "d", "old": "d", "ver": "d", "probe": "d", "link": "l"}

# The owner part of the name, computed once per process; a forked child is a
# different writer, so it starts afresh.
_owner: str | None = None


def _reset_after_fork() -> None:
    global _owner  # noqa: PLW0603 - a per-process cache, reset after fork
    _owner = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _owner_part() -> str:
    global _owner  # noqa: PLW0603 - see _reset_after_fork
    if _owner is None:
        from crashsafe import _platform  # at call time: the backends import temp_name

        pid = os.getpid()
        start = _platform.process_start(pid)
        tag = _platform.boot_tag() if start is not None else None
        host = _UNKNOWN_HOST if tag is None else f"{tag:08x}"
        _owner = f"{pid}-{start or 0}-{host}"
    return _owner


def temp_name(target_name: str, suffix: str = "") -> str:
    """A fresh, unguessable temporary name for *target_name* in the same directory.

    *suffix* (from :func:`staged_suffix`) ends the name, after the marker."""
    tail = f".{os.urandom(8).hex()}.{_owner or _owner_part()}{MARKER}{suffix}"
    # The tail is ASCII but for the suffix, which staged_suffix() keeps short.
    room = _NAME_MAX - 1 - len(tail.encode(errors="surrogateescape"))
    if len(target_name) * 4 > room:  # it may not fit (a character is up to 4 bytes)
        target_name = target_name.encode(errors="surrogateescape")[:room].decode(errors="ignore")
    return f".{target_name}{tail}"


def staged_suffix(target_name: str) -> str:
    """What a staged path's name ends with after the marker: ``-path``, then the
    suffixes of *target_name* (``-path.sqlite`` for ``db.sqlite``, ``-path.tar.gz``
    for ``a.tar.gz``, ``-path`` for ``.bashrc``).

    The suffixes as :attr:`pathlib.PurePath.suffixes` splits them, the last
    ones that fit in :data:`SUFFIX_MAX` bytes (a long run of dotted words
    keeps its end)."""
    from pathlib import PurePath

    kept = ""
    for suffix in reversed(PurePath(target_name).suffixes):
        if len(suffix) < 2 or len((suffix + kept).encode(errors="surrogateescape")) > SUFFIX_MAX:
            break  # a lone dot is no suffix, and the name has a bounded length
        kept = suffix + kept
    return STAGED_PATH + kept


def _writer_alive(match: re.Match[str], process_start: Callable[[int], int | None]) -> bool | None:
    """True or False when it can be proven, None when it cannot (another host or boot).

    *process_start* is the platform's (see :mod:`crashsafe._platform`), passed in
    by :func:`sweep`, which imports the platform once a call."""
    host = match["host"]
    if host == _UNKNOWN_HOST or host != _owner_part().rsplit("-", 1)[1]:
        return None
    return process_start(int(match["pid"])) == int(match["start"])


@overload
def sweep(
    directory: bytes | os.PathLike[bytes],
    *,
    min_age: float | None = None,
    dry_run: bool = False,
    store: S3Store | None = None,
    grace: float | None = None,
) -> list[bytes]: ...
@overload
def sweep(
    directory: os.PathLike[str],
    *,
    min_age: float | None = None,
    dry_run: bool = False,
    store: S3Store | None = None,
    grace: float | None = None,
) -> list[Path]: ...
@overload
def sweep(
    directory: str,
    *,
    min_age: float | None = None,
    dry_run: bool = False,
    store: S3Store | None = None,
    grace: float | None = None,
) -> list[Any]: ...  # Path objects for a directory, str for an s3:// URL
def sweep(
    directory: str | bytes | os.PathLike[str] | os.PathLike[bytes],
    *,
    min_age: float | None = None,
    dry_run: bool = False,
    store: S3Store | None = None,
    grace: float | None = None,
) -> list[Path] | list[bytes] | list[str]:
    """Remove crashsafe temporary files in *directory* whose writer is gone.

    Only entries that carry crashsafe's temporary-name marker and are regular
    files are considered, and :func:`~crashsafe.atomic_directory`'s trees
    (``-dir`` staged, ``-old`` replaced, ``-ver`` versions, as directories, and
    the ``-link`` symlink of a swap); every other entry and name is never
    touched, and nothing is followed. A tree is removed, with all it holds,
    only when its writer is proven dead (whatever *min_age* says), and a
    version directory only when no symlink in *directory* points to it.

    A file is removed when its writer is proven dead: the name records the
    writer's pid, start time and boot, and on the same boot and pid namespace a
    live writer is recognised exactly (a reused pid has another start time). Where
    that proof is impossible (a file written on another host or before a reboot,
    or a system without ``/proc``), the file is removed only when it was last
    modified at least *min_age* seconds ago.

    Returns the paths removed: :class:`~pathlib.Path` objects, or bytes when
    *directory* is bytes (as :func:`os.listdir` answers in the type it is
    given). Entries that vanish during the sweep (a writer committing, a
    concurrent sweep) are skipped silently. With *dry_run*,
    nothing is removed and the paths that would have been are returned.

    *min_age* defaults to 60 seconds for a directory.

    *directory* may be an ``s3://bucket/prefix`` URL (*store* an
    :class:`~crashsafe.objectstore.S3Store`, else the ``AWS_*``
    environment): then the multipart uploads crashsafe recorded, the
    objects of transactions that no manifest references and older
    generations past their grace period, under the prefix, are removed when
    older than *min_age* (default a day: no writer's liveness can be proven
    across machines); never an upload crashsafe did not start, nor an object
    a manifest references. *grace* (URLs only; default an hour, at most a
    day): how long a generation replaced by a transaction's commit stays
    readable by the snapshots still using it. Returns the ``s3://`` URLs
    removed (an upload as ``"s3://b/key (upload ID)"``).

    Raises :class:`ValueError` for a negative *min_age*, and the underlying
    :class:`OSError` if *directory* cannot be opened or listed (for example
    :class:`FileNotFoundError`, :class:`NotADirectoryError`).
    """
    if min_age is not None and (
        # "not >= 0" also refuses NaN, which every comparison would let through.
        isinstance(min_age, bool) or not isinstance(min_age, int | float) or not min_age >= 0
    ):
        raise ValueError(f"min_age must be a non-negative number of seconds, not {min_age!r}")
    if is_url(directory):
        from crashsafe.objectstore import _sweep

        assert isinstance(directory, str)
        age = _sweep.MIN_AGE if min_age is None else min_age
        return _sweep.sweep(directory, min_age=age, grace=grace, dry_run=dry_run, store=store)
    if store is not None or grace is not None:
        raise ValueError(f"{directory!r}: store= and grace= apply to s3:// URLs only")
    min_age = 60.0 if min_age is None else min_age
    from pathlib import Path

    # Here, not at the top: the platform backends take their temporary names
    # from this module, so it is imported below them.
    from crashsafe import _platform

    given = os.fspath(directory)
    base = Path(os.fsdecode(given))
    now = time.time()
    removed: list[Path] = []
    opened = _platform.Directory(os.fsdecode(given))
    try:
        links: dict[str, set[str]] = {}  # filled on first need by _sweep_tree
        for name in opened.names():
            match = TEMP_RE.match(name)
            if match is None:
                continue
            if match["tree"] is not None:
                if _sweep_tree(opened, name, match, links, dry_run):
                    removed.append(base / name)
                continue
            mtime = opened.mtime(name)
            if mtime is None:  # gone, or not a regular file
                continue
            alive = _writer_alive(match, _platform.process_start)
            if alive or (alive is None and now - mtime < min_age):
                continue
            if dry_run or opened.remove(name):
                removed.append(base / name)
    finally:
        opened.close()
    if isinstance(given, bytes):
        return [os.path.join(given, os.fsencode(path.name)) for path in removed]
    return removed


def _link_targets(opened: Any) -> set[str]:
    """What the symlinks in the open directory point to: a version directory of
    atomic_directory that one names is in use, whoever made it."""
    import stat

    targets = set()
    for name in opened.names():
        # The temporary symlink of a swap never published keeps nothing alive.
        if TEMP_RE.match(name):
            continue
        st = opened.lstat(name)
        if st is not None and stat.S_ISLNK(st.st_mode):
            targets.add(opened.readlink(name))
    return targets


def _sweep_tree(
    opened: Any, name: str, match: re.Match[str], links: dict[str, set[str]], dry_run: bool
) -> bool:
    """Remove one of atomic_directory's entries if its writer is proven dead (a
    version directory only when no symlink here names it); whether it was.

    *links* caches, under ``"in use"``, what the directory's symlinks point to,
    read once, when the first version directory is met."""
    import stat

    from crashsafe import _platform

    st = opened.lstat(name)
    if st is None:
        return False
    kind = TREE_KINDS[match["tree"]]
    if (kind == "d" and not stat.S_ISDIR(st.st_mode)) or (
        kind == "l" and not stat.S_ISLNK(st.st_mode)
    ):
        return False
    # A tree whose writer cannot be proven dead (another host, another boot)
    # is left: it may be a live writer's, and has no age of its own to judge by.
    if _writer_alive(match, _platform.process_start) is not False:
        return False
    if match["tree"] == "ver":
        if "in use" not in links:
            links["in use"] = _link_targets(opened)
        if name in links["in use"]:
            return False
    if not dry_run:
        if kind == "d":
            opened.remove_tree(name)
        else:
            opened.remove(name)
    return True


def is_temp_name(name: str) -> bool:
    """Whether *name* has the shape of a crashsafe temporary name."""
    return TEMP_RE.match(name) is not None
