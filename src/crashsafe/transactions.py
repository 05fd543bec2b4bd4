"""Several files in one directory, committed as one: all new, or all old.

The protocol, a redo journal. Each file keeps its own path and stays a
regular file; three private names in the directory serve the protocol:

* ``.crashsafe-tx.lock``: writers commit under an exclusive ``flock`` on it,
  readers of :func:`snapshot` hold a shared one;
* ``.crashsafe-tx.N``: the new content of the N-th written file, named only
  while the commit runs;
* ``.crashsafe-journal``: the list of what the commit does. Its durable
  appearance is the commit point.

Commit, under the exclusive lock:

1. recover from any commit that a crash interrupted (below);
2. give every staged file (written and fsynced by :meth:`Transaction.write`,
   anonymous until now) its name ``.crashsafe-tx.N``; fsync the directory;
3. write the journal, atomically and durably (this is the commit point);
4. rename each ``.crashsafe-tx.N`` over its file, unlink each removed file;
   fsync the directory;
5. unlink the journal; fsync the directory.

Recovery, under the exclusive lock: a journal means the commit point was
passed, so step 4 is redone (a staged name that no longer exists was already
renamed; a removed file that no longer exists was already removed) and step 5
follows. Without a journal, any ``.crashsafe-tx.N`` left by a commit that
died before its commit point is removed; finding them takes a listing of the
directory (after a power cut, unsynced directory changes may survive in any
combination, so no single name tells).

Recovery runs at the start of :func:`transaction`, before each commit, in
:func:`snapshot`, and on demand with :func:`recover`. Other crashsafe calls do
not look for a journal: that would cost every small write a syscall.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, BinaryIO, Final

from crashsafe import _journal, _platform
from crashsafe._checks import BytesLike, Durability, as_data, check_flag
from crashsafe._metadata import Hardlinks, OwnPerm, Preserve
from crashsafe._target import Target
from crashsafe.atomic import AtomicFile
from crashsafe.errors import NotDurableError
from crashsafe.objectstore._url import is_url

if TYPE_CHECKING:
    from crashsafe.objectstore._manifest import Store

__all__ = ["Snapshot", "Transaction", "recover", "snapshot", "transaction"]


# The protocol's names in the directory, as recovery and tests know them.
JOURNAL: Final = _journal.JOURNAL
LOCK: Final = _journal.LOCK
STAGED: Final = _journal.STAGED


class Transaction:
    """Files written and removed in one directory, published together by :meth:`commit`.

    Use :func:`transaction` to get one. :meth:`write` stages a file at once
    (its data is written and, unless ``durability="none"``, fsynced when the
    transaction commits); nothing is visible at any path before the commit.

    The directory is opened once, at the first :meth:`write` or
    :meth:`remove` (or at :meth:`commit`), and everything after goes through
    that open directory: staged files, the lock, the journal, the renames. A
    directory renamed away before the commit (and another put at its path)
    gets the whole transaction, as a single :class:`~crashsafe.AtomicFile`
    would; the one now at the path is not touched.
    """

    def __init__(self, directory: str | os.PathLike[str], durability: Durability) -> None:
        if durability not in ("durable", "consistent", "none"):
            raise ValueError(
                f"invalid durability {durability!r}: expected durable, consistent or none"
            )
        self.directory = os.fsdecode(os.fspath(directory))
        self._durability: Durability = durability
        self._ops: dict[str, AtomicFile[BinaryIO] | None] = {}
        self._state = "open"
        self._pinned: _platform.Directory | None = None

    def _directory(self) -> _platform.Directory:
        if self._pinned is None:
            self._pinned = _platform.Directory(self.directory)
        return self._pinned

    def _unpin(self) -> None:
        pinned, self._pinned = self._pinned, None
        if pinned is not None:
            pinned.close()

    def write(
        self,
        name: str | os.PathLike[str],
        data: BytesLike | str,
        *,
        perm: int | None = None,
        preserve: Preserve = "all",
        hardlinks: Hardlinks = "refuse",
    ) -> None:
        """Stage *data* (bytes, or str encoded as UTF-8) as the new content of *name*.

        *name* is a file name in the transaction's directory (no ``/``; a
        path-like object or bytes is taken as its text). A
        symlink there is replaced, not followed. *perm* and the permission rules
        are those of :class:`~crashsafe.AtomicFile`: without it, an existing file
        keeps its mode and owner. A later write or remove of the same name in
        this transaction replaces this one. *preserve* and *hardlinks*: as for
        :class:`~crashsafe.AtomicFile` (a hard-linked or mounted file is
        refused here, before anything is staged).

        Raises :class:`ValueError` for a bad name or a transaction that is no
        longer open, :class:`TypeError` for a *name* that is no str, bytes or
        path-like object or for *data* of another type,
        :class:`IsADirectoryError` if *name* is a directory, and the
        :class:`OSError` of creating the staged file.
        """
        self._check_open()
        name = _journal.check_name(name)
        data = as_data(data)
        directory = self._directory()
        staged = AtomicFile.stage(
            os.path.join(self.directory, name),
            target=Target(directory, name, directory.lstat(name)),  # a symlink is replaced
            perm=perm,
            durability=self._durability,
            preserve=preserve,
            hardlinks=hardlinks,
        )
        try:
            staged.write_all(data)
        except BaseException:
            staged.discard()
            raise
        self._replace_op(name, staged)

    def remove(self, name: str | os.PathLike[str]) -> None:
        """Remove *name* when the transaction commits; a missing file is no error.

        *name* and its errors are those of :meth:`write`.
        """
        self._check_open()
        self._replace_op(_journal.check_name(name), None)
        self._directory()  # pinned from the first operation on

    def _replace_op(self, name: str, staged: AtomicFile[BinaryIO] | None) -> None:
        old = self._ops.pop(name, None)
        if old is not None:
            old.discard()
        self._ops[name] = staged

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"transaction in {self.directory!r} is already {self._state}")

    @property
    def committed(self) -> bool:
        """True from the commit point on: the journal is durable, so every change
        will be in place, now or after the next recovery, even if :meth:`commit`
        then raised."""
        return self._state == "committed"

    def commit(self) -> None:
        """Publish every staged write and removal together.

        Returns when all of them are in place and (with ``"durable"``) on disk.
        Raises, with every file as it was and nothing staged left: the
        :class:`OSError` of a step before the commit point (flush, fsync,
        naming the staged files, writing the journal) or
        :class:`IsADirectoryError` for a removal of a directory. Raises the
        :class:`OSError` of a step after the commit point with
        :attr:`committed` True: the journal is durable and the next recovery
        completes the transaction.
        """
        self._check_open()
        try:
            with _journal.locked(
                self.directory, shared=False, pinned=self._directory()
            ) as directory:
                _journal.recover_locked(directory, self._durability)
                ops = self._stage(directory)
                if not ops:
                    self._state = "committed"
                    return
                self._write_journal(directory, ops)
                _journal.apply(directory, ops, self._durability)
        except BaseException:
            if self._state != "committed":
                self.discard()
            raise
        finally:
            self._unpin()

    def _write_journal(
        self, directory: _platform.Directory, ops: list[tuple[str, str, str | None]]
    ) -> None:
        import json

        path = os.path.join(self.directory, JOURNAL)
        # No entry by that name: recovery, under this lock, just removed it
        # (and the create-only rename would refuse one).
        journal = AtomicFile.stage(
            path,
            target=Target(directory, JOURNAL, None),
            mode="xb",
            perm=OwnPerm(0o600),
            durability="durable" if self._durability != "none" else "none",
        )
        try:
            journal.write_all(json.dumps({"format": _journal.FORMAT, "ops": ops}).encode())
            journal.publish(private=True)
        except BaseException:
            if not journal.committed:
                _journal.unstage(directory, ops)
                raise
            # A signal held back during the rename: the journal is in place.
            self._state = "committed"
            raise
        # The journal is in place: the commit point is passed, and undoing now
        # would leave it pointing at nothing. Recovery completes the
        # transaction (NotDurableError: the journal may not survive a power
        # cut, which would leave all old).
        self._state = "committed"
        try:
            _journal.sync(directory, self._durability)
        except OSError as e:
            raise NotDurableError(e.errno, e.strerror, path) from e

    def _stage(self, directory: _platform.Directory) -> list[tuple[str, str, str | None]]:
        ops: list[tuple[str, str, str | None]] = []
        try:
            for name, staged in self._ops.items():
                if staged is None:
                    st = directory.lstat(name)
                    if st is not None and stat.S_ISDIR(st.st_mode):
                        raise IsADirectoryError(
                            errno.EISDIR, "Is a directory", os.path.join(self.directory, name)
                        )
                    ops.append(("remove", name, None))
                    continue
                # Numbered 0, 1, 2... with no gap, as recovery expects.
                staging = f"{STAGED}{sum(op == 'write' for op, _, _ in ops)}"
                try:
                    staged.publish(staging, replace=False, sync=False, private=True)
                finally:
                    # Also when a signal held back during the rename (or link) is
                    # raised once the name is in place: then it is there to undo.
                    if staged.committed:
                        ops.append(("write", name, staging))
            _journal.sync(directory, self._durability)
        except BaseException:
            _journal.unstage(directory, ops)
            raise
        return ops

    def discard(self) -> None:
        """Throw away everything staged; no file changes. A no-op once committed."""
        if self._state != "open":
            return
        self._state = "discarded"
        try:
            for staged in self._ops.values():
                if staged is not None:
                    staged.discard()
            self._ops.clear()
        finally:
            self._unpin()

    def __del__(self) -> None:
        # Never committed nor discarded, but holding the directory open.
        if getattr(self, "_pinned", None) is not None and self._state == "open":
            import warnings

            warnings.warn(
                f"transaction in {self.directory!r} was never committed or discarded; "
                "discarding it",
                ResourceWarning,
                stacklevel=2,
                source=self,
            )
            self.discard()

    def __repr__(self) -> str:
        return f"<crashsafe.Transaction {self.directory!r} {self._state}, {len(self._ops)} files>"


@contextmanager
def transaction(
    directory: str | os.PathLike[str],
    *,
    durability: Durability = "durable",
    parents: bool = False,
    store: Store | None = None,
) -> Iterator[Transaction]:
    """Write and remove several files in *directory* as one all-or-nothing change.

    ::

        with crashsafe.transaction("/var/lib/node") as tx:
            tx.write("identity.json", doc)
            tx.write("node.key", key, perm=0o600)
            tx.remove("identity.old")

    A normal exit publishes everything together; an exception (``KeyboardInterrupt``
    included) publishes nothing. After a ``kill -9`` or a power cut at any
    instant, once recovery has run, the files are all old or all new. Recovery
    runs on entering this block, before the commit, in :func:`snapshot` and in
    :func:`recover`.

    *durability*: ``"durable"`` (the default) and ``"consistent"`` are the same
    here: every file and the directory are fsynced around the commit point and
    after the renames, so the files are all old or all new after a power cut,
    and all new once the commit returned. (Skipping the directory sync after
    the renames would let the journal's removal reach the disk before them,
    and all-or-nothing needs them there first.) ``"none"`` fsyncs nothing: all
    or nothing against a killed process only.

    *parents*: a missing *directory* is made first, with its missing parents,
    as :class:`~crashsafe.AtomicFile` makes a file's (each mode 0o777 less the
    umask, no symlink followed in the part it makes); unless *durability* is
    ``"none"``, each of them and the one holding the first are fsynced before
    the block runs, so a committed transaction survives a power cut with them.
    They stay if the transaction then fails or publishes nothing. On an
    ``s3://`` prefix it is accepted and has nothing to do.

    Readers that open the files directly may see some files new and others
    old while a commit is running, and after a crash until recovery has run;
    :func:`snapshot` gives a consistent view. Commits in one directory are
    serialised; two transactions do not see each other's staged files, and the
    one that commits last wins for a file both wrote. Each staged file holds
    a descriptor until the commit, and the transaction one for its directory.

    **On object storage** (*directory* an ``s3://bucket/prefix/`` URL; *store*
    says where and how to reach it, else the environment): the same calls
    and promises, through a manifest object under the prefix that is swapped
    by compare-and-swap (:mod:`crashsafe.objectstore._manifest`). Each
    :meth:`~Transaction.write` sends its object at once, to a key of its own;
    the swap of the manifest is the commit point, so :func:`snapshot` readers
    see all old or all new, also after a writer is killed at any point (a
    killed writer's last request may land after its death: then all new).
    Concurrent commits do not block each other: a commit that lost the race
    re-reads the manifest and puts its own changes over it (so the last one
    wins for a name both wrote and no name only one wrote is lost), up to a
    bound, then :class:`~crashsafe.errors.UpdateConflictError`. An exception
    publishes nothing and deletes the objects written. *durability* other
    than ``"durable"`` and ``perm=`` raise :class:`ValueError`: a write the
    store acknowledged is durable by its guarantee, and an object has no
    mode. Readers that read the keys under ``prefix/.crashsafe/data/``
    directly see each object by itself, never a generation. Objects that a
    killed or losing commit left are removed by :func:`crashsafe.sweep` on
    the prefix once older than its *min_age*, which must exceed the longest
    transaction.
    """
    if is_url(directory):
        check_flag("parents", parents)
        from crashsafe.objectstore import _manifest

        with _manifest.transaction(
            os.fspath(directory), durability=durability, store=store
        ) as remote:
            yield remote
        return
    if store is not None:
        raise ValueError(f"{directory!r}: store= is for s3:// URLs, not a local directory")
    check_flag("parents", parents)
    tx = Transaction(directory, durability)  # checks durability before recovery locks
    if parents:
        _platform.make_directories(tx.directory, sync=durability != "none").close()
    recover(directory)
    try:
        yield tx
    except BaseException:
        tx.discard()
        raise
    if tx._state == "open":  # a block that committed or discarded has decided
        tx.commit()


def recover(directory: str | os.PathLike[str]) -> bool:
    """Complete or undo a commit in *directory* that a crash interrupted.

    Returns True if there was one. When there is nothing to do it costs a lock,
    an ``lstat`` and a listing of the directory. Raises
    :class:`~crashsafe.errors.ForeignJournalError` (a :class:`ValueError`) if
    the journal is not one crashsafe wrote, touching nothing, and the
    :class:`OSError` of a failed step.

    For an ``s3://`` prefix it returns False without a request: the swap of
    the manifest is the commit point and is atomic, so no commit is ever half
    done (what a killed commit left is garbage for :func:`crashsafe.sweep`).
    It raises :class:`ValueError` for a URL it cannot parse.
    """
    if is_url(directory):
        from crashsafe.objectstore._manifest import prefix_of

        prefix_of(os.fspath(directory))
        return False
    path = os.fsdecode(os.fspath(directory))
    with _journal.locked(path, shared=False) as opened:
        return _journal.recover_locked(opened)


class Snapshot:
    """A consistent view of a transactional directory; see :func:`snapshot`."""

    def __init__(self, directory: _platform.Directory) -> None:
        self._directory: _platform.Directory | None = directory

    def _opened(self) -> _platform.Directory:
        if self._directory is None:
            raise ValueError("snapshot used after its with block ended")
        return self._directory

    def read(self, name: str | os.PathLike[str]) -> bytes:
        """The content of *name* in this generation.

        On FUSE and NFS an open that a rename made fail for a moment (``ENOENT``,
        ``ESTALE``) is tried again, 10 times over 0.213 s at most (see
        :func:`crashsafe._platform.through_renames`). Raises
        :class:`FileNotFoundError` if it does not exist,
        :class:`ValueError` after the snapshot's block, and
        :class:`OSError` (``ELOOP``) if it is a symlink, which a transaction
        never writes.
        """
        return self._opened().read(_journal.check_name(name))

    def exists(self, name: str | os.PathLike[str]) -> bool:
        """Whether *name* exists in this generation."""
        return self._opened().lstat(_journal.check_name(name)) is not None


@contextmanager
def snapshot(
    directory: str | os.PathLike[str], *, store: Store | None = None
) -> Iterator[Snapshot]:
    """Read files of *directory* as one generation: no commit lands while the block runs.

    ::

        with crashsafe.snapshot("/var/lib/node") as snap:
            doc, key = snap.read("identity.json"), snap.read("node.key")

    The block holds a shared lock: readers run together, and a commit waits
    for them (and they for it). An interrupted commit is recovered first.
    Keep the block short. A transaction on the same directory inside the
    block, in the same thread, raises
    :class:`~crashsafe.errors.SnapshotDeadlockError` (a :class:`RuntimeError`:
    it would wait for the block forever); a process forked inside the block holds the lock too,
    until it exits or closes its descriptors.

    **On object storage** (*directory* an ``s3://bucket/prefix/`` URL): the
    manifest is read once, on entering the block, and each
    :meth:`~Snapshot.read` fetches that generation's object, which no commit
    overwrites. Nothing is locked: commits go on while the block runs, and the
    block keeps reading its own generation for the grace period after it is
    replaced (:data:`crashsafe.objectstore._manifest.GRACE`, an hour, or the
    *grace* given to :func:`crashsafe.sweep`); after that a read may raise
    :class:`FileNotFoundError` saying the snapshot outlived it. A prefix with
    no commit yet is an empty generation. The snapshot also has
    ``names()`` and ``generation``.
    """
    if is_url(directory):
        from crashsafe.objectstore import _manifest

        with _manifest.snapshot(os.fspath(directory), store=store) as remote:
            yield remote
        return
    if store is not None:
        raise ValueError(f"{directory!r}: store= is for s3:// URLs, not a local directory")
    path = os.fsdecode(os.fspath(directory))
    while True:
        with _journal.locked(path, shared=True) as opened:
            if opened.lstat(JOURNAL) is None:
                view = Snapshot(opened)
                try:
                    yield view
                finally:
                    view._directory = None
                return
        recover(path)
