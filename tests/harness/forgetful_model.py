"""What a filesystem that forgets remembers: the durability ledger of tests/harness/forgetful.

The filesystem passes every operation through to its backing directory at once (the
*live* view, what readers see) and records each one here, as crashcheck's logical
operations (:mod:`crashsafe.crashcheck._ops`), since the last *epoch*: the moment the
whole backing directory was last durable (mount, ``sync_all``, ``restore``), copied as
a crashcheck snapshot. Which of those operations a crash may lose follows the
conservative model (CONTRACT.md), decided here, not by crashcheck's own tracer:

- a write, truncate or mode change of a file is durable once the file is fsynced
  (``fdatasync`` covers data and size, not the mode), or at once through an ``O_SYNC``
  or ``O_DSYNC`` descriptor;
- a create, mkdir, symlink, link, unlink or rmdir once the directory that holds the name
  is fsynced; a rename once *both* its directories are (one, when they are the same);
- everything else may be lost or survive, in any combination; a write may survive in
  part, as pieces split at 4096-byte file offsets (crashcheck's
  :func:`~crashsafe.crashcheck._model.pieces`), and a write that grew the file may leave
  the new size with zeros or garbage where its data did not land;
- an fsync that failed (a fault the test asked for) drops the file's unsynced writes
  for good, as Linux does: they are in no crash state, and a later fsync covers nothing
  of them, although readers still see them until a restore. A size or mode change is
  the inode's, not a dropped page: it stays unsynced, and a later fsync covers it.

Crash states are replayed and written out with crashcheck's model
(:class:`~crashsafe.crashcheck._model.Base` and ``State``: its documented doors), so the
two tools agree on what a state is. Not thread-safe: the filesystem calls it under its
one lock.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from crashsafe.crashcheck._model import Base, State, pieces
from crashsafe.crashcheck._ops import Call, Create, Mkdir, Operation, Sync, Write, take_snapshot

__all__ = ["CrashState", "Ledger", "StaleStateError"]

_EXHAUSTIVE = 10
"""Up to this many unsynced operations, every subset of them is a candidate state."""

_TORN_CAP = 8
"""At most this many torn variants of one write (its fills not counted)."""

_GIVE_UP = 256
"""Sampling stops after this many samples in a row found no new state."""

_LISTED = 4
"""At most this many operations are named in a state's description."""

# A torn write in a state: (operation number, pieces that landed, fill or None).
Torn = tuple[int, tuple[int, ...], str | None]


class StaleStateError(ValueError):
    """A crash state from an earlier epoch (before a ``sync_all`` or ``restore``)."""


@dataclass(frozen=True)
class CrashState:
    """One state a crash may leave: the unsynced operations *kept* (by number in the
    epoch's log), and *torn* writes among them that landed in part. Everything synced is
    in every state; every other unsynced operation is lost."""

    epoch: int
    family: str
    kept: tuple[int, ...] = ()
    torn: tuple[Torn, ...] = ()
    text: str = field(default="", compare=False)

    def describe(self) -> str:
        """A short account for failure messages: the family and what survived."""
        return f"{self.family}: {self.text}" if self.text else self.family


class Ledger:
    """The operations of one epoch over the backing directory *root*, and the crash
    states they allow. At its start everything in *root* is durable: a copy is taken
    into *scratch* (a fresh directory of its own, on any filesystem, removed by
    :meth:`close`), from which crash states are built. *epoch* numbers it."""

    def __init__(self, root: str, scratch: str, epoch: int) -> None:
        self.root = os.path.realpath(root)
        self.scratch = scratch
        self.epoch = epoch
        self._count = 0
        os.mkdir(scratch)
        self.snapshot = take_snapshot([self.root], os.path.join(scratch, "copy"))
        self.base = Base(self.snapshot)
        self.ops: list[Operation] = []
        self.descs: list[str] = []
        self.grows: dict[int, bool] = {}
        self.durable: set[int] = set()
        self.dead: set[int] = set()
        self._waiting: dict[int, set[tuple[str, int]]] = {}  # op -> barriers still missing
        self._pending: dict[tuple[str, int], set[int]] = {}  # barrier -> ops waiting on it
        # The backing filesystem's inode numbers -> the model's: a file that was there at
        # the epoch keeps its own; one made since gets a fresh negative number (a reused
        # inode number then names the new file, as it does on the disk).
        self.inodes: dict[int, int] = {e.inode: e.inode for e in self.snapshot.entries.values()}
        self._next = -1

    def close(self) -> None:
        """Remove the copy: no state of this epoch can be built any more."""
        shutil.rmtree(self.scratch, ignore_errors=True)

    # -- recording ----------------------------------------------------------------------

    def path(self, rel: str) -> str:
        """The backing path of *rel*, a path inside the mount ("/a/b")."""
        return self.root + rel if rel != "/" else self.root

    def inode(self, st_ino: int) -> int:
        """The model's inode for the backing filesystem's *st_ino* (a file that the log
        does not know, changed behind the mount's back, gets a fresh one)."""
        known = self.inodes.get(st_ino)
        return known if known is not None else self.fresh(st_ino)

    def fresh(self, st_ino: int) -> int:
        """A new model inode for a file just made with backing inode *st_ino*."""
        self.inodes[st_ino] = self._next
        self._next -= 1
        return self.inodes[st_ino]

    def call(self, pid: int, text: str) -> Call:
        self._count += 1
        return Call(self._count, pid, text)

    def record(self, op: Operation, barriers: set[tuple[str, int]], *, grows: bool = False) -> None:
        """Append *op*; it is durable once a sync of each of *barriers* (("dir", inode),
        ("data", inode) or ("mode", inode)) followed it; at once when there are none."""
        i = len(self.ops)
        self.ops.append(op)
        self.descs.append(op.call.text)
        self.grows[i] = grows
        if not barriers:
            self.durable.add(i)
            return
        self._waiting[i] = set(barriers)
        for b in barriers:
            self._pending.setdefault(b, set()).add(i)

    def sync(self, op: Sync, *, failed: bool = False) -> None:
        """A sync of *op.inode*; *failed*: it reported an error, so the file's unsynced
        writes are gone for good (Linux drops the dirty pages and marks them clean). A
        size or mode change is the inode's, not a page's: it stays unsynced."""
        self.ops.append(op)
        self.descs.append(op.call.text)
        kinds = ("data", "mode", "dir") if op.kind == "fsync" else ("data", "dir")
        for kind in kinds:
            key = (kind, op.inode)
            for i in sorted(self._pending.pop(key, set())):
                if not failed:
                    waiting = self._waiting[i]
                    waiting.discard(key)
                    if not waiting:
                        self.durable.add(i)
                        del self._waiting[i]
                elif isinstance(self.ops[i], Write):
                    self.dead.add(i)
                    self._forget(i)
                else:
                    self._pending.setdefault(key, set()).add(i)

    def _forget(self, i: int) -> None:
        for b in self._waiting.pop(i, set()):
            self._pending.get(b, set()).discard(i)

    # -- crash states -------------------------------------------------------------------

    def unsynced(self) -> list[int]:
        """The operations a crash now may lose, in order."""
        return [i for i in self._waiting if i not in self.dead]

    def replay(self, kept: tuple[int, ...], torn: tuple[Torn, ...]) -> State:
        """The state with the durable operations, *kept*, and *torn* in part."""
        state = self.base.state()
        keep, tear = set(kept), {i: (landed, fill) for i, landed, fill in torn}
        for i, op in enumerate(self.ops):
            if isinstance(op, Sync):
                continue
            if i in self.durable or i in keep:
                if i in tear:
                    assert isinstance(op, Write)
                    ps = pieces(op.offset, len(op.data))
                    state.write(op, [ps[p] for p in tear[i][0]], tear[i][1])
                else:
                    state.apply(op)
            elif isinstance(op, Create | Mkdir):
                state.make_inode(op)  # its name is lost, not the inode a later op uses
        return state

    def _torn_variants(self, i: int) -> list[tuple[tuple[int, ...], str | None]]:
        op = self.ops[i]
        if not isinstance(op, Write) or not op.data:
            return []
        count = len(pieces(op.offset, len(op.data)))
        out: list[tuple[tuple[int, ...], str | None]] = []
        prefixes = [tuple(range(m)) for m in range(1, count)]
        singles = [(p,) for p in range(1, count)]
        variants = prefixes + singles
        step = max(1, -(-len(variants) // _TORN_CAP))
        out.extend((v, None) for v in variants[::step])
        if self.grows.get(i):
            out.extend([((), "zeros"), ((), "garbage")])
        return out

    def _candidates(
        self, torn: bool, rng: random.Random
    ) -> Iterator[tuple[str, tuple[int, ...], tuple[Torn, ...]]]:
        u = self.unsynced()
        n = len(u)
        yield "pessimistic (only what was synced)", (), ()
        yield "optimistic (everything)", tuple(u), ()
        for m in range(1, n):
            yield f"prefix of {m} unsynced", tuple(u[:m]), ()
        for j in u:
            yield "one lost", tuple(x for x in u if x != j), ()
        for j in u:
            yield "only one kept", (j,), ()
        writes = [(j, v) for j in u for v in (self._torn_variants(j) if torn else [])]
        for j, (landed, fill) in writes:
            yield "torn write", tuple(x for x in u if x <= j), ((j, landed, fill),)
        if n <= _EXHAUSTIVE:
            every: list[tuple[str, tuple[int, ...], tuple[Torn, ...]]] = []
            for r in range(n + 1):
                for kept in itertools.combinations(u, r):
                    every.append(("subset", kept, ()))
                    for j, (landed, fill) in writes:
                        if j in kept:
                            every.append(("subset, torn", kept, ((j, landed, fill),)))
            rng.shuffle(every)
            yield from every
        else:
            for _ in range(1 << 14):
                kept = tuple(x for x in u if rng.random() < 0.5)
                tear = [w for w in writes if w[0] in kept]
                if tear and rng.random() < 0.5:
                    j, (landed, fill) = rng.choice(tear)
                    yield "sample, torn", kept, ((j, landed, fill),)
                else:
                    yield "sample", kept, ()

    def crash_states(self, *, limit: int, torn: bool, seed: int) -> list[CrashState]:
        """The distinct states a crash now may leave (see :meth:`Forgetful.crash_states`
        in tests/harness/forgetful.py)."""
        if limit < 2:
            raise ValueError("limit must be at least 2: the pessimistic and optimistic states")
        rng = random.Random(seed)
        seen: set[bytes] = set()
        out: list[CrashState] = []
        repeats = 0  # samples in a row that found nothing new
        for family, kept, tear in self._candidates(torn, rng):
            fp = self.replay(kept, tear).fingerprint()
            if fp in seen:
                repeats += family.startswith("sample")
                if repeats >= _GIVE_UP:
                    break
                continue
            repeats = 0
            seen.add(fp)
            out.append(CrashState(self.epoch, family, kept, tear, self._text(kept, tear)))
            if len(out) >= limit:
                break
        return out

    def _text(self, kept: tuple[int, ...], tear: tuple[Torn, ...]) -> str:
        """What survived, short: the torn writes, and whichever of the kept and the lost
        operations are fewer (at most :data:`_LISTED` of them named)."""
        u = self.unsynced()
        if not u and not self.dead:
            return "nothing unsynced"
        keep = [i for i in u if i in kept]
        lost = [i for i in u if i not in kept]
        parts = [f"{len(keep)} of {len(u)} unsynced kept"]
        if lost and (len(lost) <= len(keep) or not keep):
            parts.append("lost " + self._names(lost))
        elif keep:
            parts.append("kept " + self._names(keep))
        for i, landed, fill in tear:
            how = f"pieces {list(landed)}" + (f", {fill} elsewhere" if fill else "")
            parts.append(f"torn {self.descs[i]} ({how})")
        if self.dead:
            parts.append("dropped by a failed fsync " + self._names(sorted(self.dead)))
        return "; ".join(parts)

    def _names(self, ops: list[int]) -> str:
        named = ", ".join(self.descs[i] for i in ops[:_LISTED])
        more = f" and {len(ops) - _LISTED} more" if len(ops) > _LISTED else ""
        return f"[{named}{more}]"

    def check(self, state: CrashState) -> None:
        if state.epoch != self.epoch:
            raise StaleStateError(f"crash state of epoch {state.epoch}, not of epoch {self.epoch}")

    def write_out(self, state: CrashState | None, dest: str) -> None:
        """Write *state* (None: the pessimistic one) into the fresh directory *dest*."""
        if state is None:
            built = self.replay((), ())
        else:
            self.check(state)
            built = self.replay(state.kept, state.torn)
        built.materialise([dest])

    def pessimistic_view(self) -> dict[str, bytes | None]:
        """The files of the pessimistic state by path relative to the root: a regular
        file's content; None for a directory or a symlink."""
        dest = os.path.join(self.scratch, "view")
        self.write_out(None, dest)
        try:
            return read_tree(Path(dest))
        finally:
            shutil.rmtree(dest)


def read_tree(top: Path) -> dict[str, bytes | None]:
    """Every entry under *top* by relative path: a regular file's bytes, else None."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(top))
            out[rel] = p.read_bytes() if p.is_file() and not p.is_symlink() else None
    return dict(sorted(out.items()))
