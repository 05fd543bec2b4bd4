"""Which crash states a run allows, checking each, and the vulnerabilities they show.

The model of persistence is the project's conservative one (CONTRACT.md):

- a crash point is "after operation k" (k = 0 .. n, 0 before any);
- operation i <= k is *durable at k* when a barrier s, i < s <= k, covers it: a write,
  truncate or mode change of inode I is covered by an fsync of I (an fdatasync covers
  data and size, not a mode) or by ``sync()``; a write through an ``O_SYNC``/``O_DSYNC``
  descriptor is durable at once; a create, mkdir, symlink, link, unlink or rmdir of P by
  a sync of the directory inode that held P's name when the operation ran, a rename by a
  sync of the directory that held its destination (it is atomic, the source goes with
  it); ``sync()`` covers everything. An ``O_TMPFILE`` create and the program's output are
  never lost;
- everything not durable at k may be lost or persist, in any combination; a write may
  persist in part, as any set of its pieces split at 4096-byte file offsets, and a write
  that grows the file may leave its new size with zeros or garbage where its data did
  not land;
- the check is told the standard output written by operations <= k.

The families of states looked at (by default, the ones that found ALICE's bugs): every
*prefix* (operations 1..k all persisted); *one left out* (1..k but one operation j < k
not durable at k); *torn* (1..k-1 and write k in part: each proper prefix of its pieces,
each piece alone, capped, and for a growing write the new size with zeros and with
garbage). ``exhaustive=True`` instead enumerates at every k every combination of the
operations not durable at k and of the pieces of their writes, up to a cap.

A broken state is classified as ALICE does: a prefix or torn state is *atomicity*
(consecutive broken prefix points are one finding); a state with operations lost is
*durability* if the same files are fine when told only the standard output written
before the first lost operation j (what the program printed since, that it had done
what was lost, is what the loss betrays), otherwise *ordering* (broken whatever was
printed: a later operation persisted without j); it is not reported at all when it
holds the very files of a broken prefix state (the atomicity finding there is the one
to fix). A state with operations lost or a write torn is not
reported when the prefix at the same crash point (everything whole) is broken too:
stopping there already breaks it, and that atomicity finding is the one to fix (so is a
state identical to a broken prefix state). One finding per broken run of prefix points,
per torn write, and per first lost operation (whatever its kind), at the earliest crash point that
shows it.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ._checkrun import Check, Running, memory_dir, remove_tree, run_check
from ._errors import CrashcheckError
from ._model import Base, State, pieces
from ._ops import (
    Create,
    Mkdir,
    Operation,
    Snapshot,
    Write,
)
from ._report import Family, Kind, Report, Vulnerability
from ._run import STATEFUL, Run

__all__ = ["LISTED", "explore_operations"]

LISTED = 20
"""At most this many operations are named in a finding's *persisted*: the latest ones,
after a note of how many earlier ones it kept too."""


# A torn write: (operation number, indexes of the pieces that landed, fill or None).
Torn = tuple[int, tuple[int, ...], str | None]
Key = tuple[bytes, int]  # (fingerprint, which standard output): identical states


@dataclass(frozen=True)
class _Spec:
    """One crash state: after operation *k*, *lost* not persisted, *torn* in part, told
    the standard output of operations <= *told*."""

    k: int
    family: Family
    lost: frozenset[int] = frozenset()
    torn: tuple[Torn, ...] = ()
    told: int = -1  # -1: k

    @property
    def stdout_of(self) -> int:
        return self.k if self.told < 0 else self.told


def _torn_variants(
    op: Write, grows: bool, cap: int, every: bool
) -> list[tuple[tuple[int, ...], str | None]]:
    """How write *op* may persist in part: (pieces landed, fill). Its proper prefixes
    and its pieces alone, at most *cap* of them spread evenly; with *every*, every proper
    subset when it has at most 8 pieces; and the two fills when it *grows* the file."""
    count = len(pieces(op.offset, len(op.data)))
    out: list[tuple[tuple[int, ...], str | None]] = []
    if every and count <= 8:
        for r in range(1, count):
            out.extend((c, None) for c in itertools.combinations(range(count), r))
    else:
        prefixes = [tuple(range(m)) for m in range(1, count)]
        singles = [(p,) for p in range(1, count)]
        if len(prefixes) + len(singles) > cap:
            prefixes = prefixes[:: max(1, -(-len(prefixes) // max(1, cap // 2)))]
            singles = singles[:: max(1, -(-len(singles) // max(1, cap - len(prefixes))))]
        out.extend((p, None) for p in (prefixes + singles)[:cap])
    if grows:
        out.extend([((), "zeros"), ((), "garbage")])
    return out


class _Explorer:
    """One exploration: enumerates states, has each distinct one checked by a pool of
    threads, and classifies the broken ones."""

    def __init__(
        self,
        *,
        snapshot: Snapshot,
        ops: Sequence[Operation],
        check: Check,
        jobs: int,
        scratch: str,
        timeout: float | None,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.base = Base(snapshot)
        self.ops = ops
        self.n = len(ops)
        self.run = Run(self.base, ops)
        self.check = check
        self.scratch = scratch
        self.timeout = timeout
        self.progress = progress
        self.pool = cf.ThreadPoolExecutor(max_workers=jobs)
        # Removing a state waits on the disk (rmdir costs 1-2 ms each on this machine's
        # ext4, 20 directories in a git repository): done beside the checks, not in line.
        self.trash = cf.ThreadPoolExecutor(max_workers=4)
        self.removals: list[cf.Future[None]] = []
        self.running = Running()
        self.numbers: dict[Key, int] = {}
        self.futures: dict[int, cf.Future[tuple[bool, str]]] = {}
        self.records: list[tuple[_Spec, Key]] = []
        self.enumerated = 0
        self.prefix_fp: list[bytes] = []

    # -- states ---------------------------------------------------------------------

    def replay(self, spec: _Spec) -> State:
        state = self.base.state()
        torn = {i: (landed, fill) for i, landed, fill in spec.torn}
        for i in range(1, spec.k + 1):
            op = self.ops[i - 1]
            if i in spec.lost:
                if isinstance(op, Create | Mkdir):
                    state.make_inode(op)
            elif i in torn:
                assert isinstance(op, Write)
                ps = pieces(op.offset, len(op.data))
                state.write(op, [ps[p] for p in torn[i][0]], torn[i][1])
            else:
                state.apply(op)
        return state

    def key(self, spec: _Spec, fingerprint: bytes) -> Key:
        return fingerprint, self.run.stdout_id[spec.stdout_of]

    def record(self, spec: _Spec, fingerprint: bytes, keep: bool = True) -> Key:
        """Count *spec*, and have it checked unless an identical state was."""
        self.enumerated += 1
        key = self.key(spec, fingerprint)
        if key not in self.numbers:
            number = len(self.numbers)
            self.numbers[key] = number
            self.futures[number] = self.pool.submit(self._job, number, spec)
        if keep:
            self.records.append((spec, key))
        return key

    def _job(self, number: int, spec: _Spec) -> tuple[bool, str]:
        state = self.replay(spec)
        where = os.path.join(self.scratch, f"state-{number}")
        os.mkdir(where)
        try:
            dirs = [os.path.join(where, str(i)) for i in range(len(self.base.roots))]
            state.materialise(dirs)
            stdout = self.run.stdout[spec.stdout_of]
            stdout_file = os.path.join(where, "stdout")
            with open(stdout_file, "wb") as f:
                f.write(stdout)
            return run_check(
                self.check, dirs, stdout, stdout_file, timeout=self.timeout, running=self.running
            )
        finally:
            self.removals.append(self.trash.submit(remove_tree, where))

    def result(self, key: Key) -> tuple[bool, str]:
        return self.futures[self.numbers[key]].result()

    def wait(self) -> None:
        total = len(self.futures)
        done = sum(f.done() for f in self.futures.values())
        pending = [f for f in self.futures.values() if not f.done()]
        if self.progress:
            self.progress(done, total)
        for future in cf.as_completed(pending):
            future.result()
            done += 1
            if self.progress:
                self.progress(done, total)

    # -- enumeration ----------------------------------------------------------------

    def sanity(self) -> None:
        state = self.base.state()
        self.prefix_fp = [state.fingerprint()]
        for op in self.ops:
            state.apply(op)
            changed = isinstance(op, STATEFUL)
            self.prefix_fp.append(state.fingerprint() if changed else self.prefix_fp[-1])
        before = self.record(_Spec(0, "prefix"), self.prefix_fp[0], keep=False)
        after = self.record(_Spec(self.n, "prefix"), self.prefix_fp[self.n], keep=False)
        for key, when in ((before, "before the run"), (after, "after the whole run")):
            broken, output = self.result(key)
            if broken:
                why = (
                    "so it cannot tell a crash state from a good one"
                    if key == before
                    else "with every operation persisted: the check or the program is wrong"
                )
                raise CrashcheckError(
                    f"the check {self._name()} fails on the directories as they are {when}, "
                    f"{why}; its output:\n{output}"
                )

    def _name(self) -> str:
        return (
            repr(self.check)
            if isinstance(self.check, str)
            else getattr(self.check, "__qualname__", repr(self.check))
        )

    def targeted(self, max_torn: int) -> None:
        run = self.run
        for k in range(self.n + 1):
            self.record(_Spec(k, "prefix"), self.prefix_fp[k])
        for j in range(1, self.n + 1):
            if not isinstance(self.ops[j - 1], STATEFUL) or not run.loseable(j, j + 1):
                continue
            state = self.replay(_Spec(j, "one-left-out", frozenset([j])))
            fingerprint = b""
            for k in range(j + 1, self.n + 1):
                if not run.loseable(j, k):
                    break
                op = self.ops[k - 1]
                state.apply(op)
                if isinstance(op, STATEFUL) or not fingerprint:
                    fingerprint = state.fingerprint()
                self.record(_Spec(k, "one-left-out", frozenset([j])), fingerprint)
        for k in range(1, self.n + 1):
            op = self.ops[k - 1]
            if not isinstance(op, Write) or not run.loseable(k, k):
                continue
            before = self.replay(_Spec(k - 1, "torn"))
            variants = _torn_variants(op, run.grows[k], max_torn, every=False)
            for landed, fill in variants:
                state = before.clone()
                state.write(op, [pieces(op.offset, len(op.data))[p] for p in landed], fill)
                self.record(_Spec(k, "torn", torn=((k, landed, fill),)), state.fingerprint())

    def _exhaustive_specs(self, max_torn: int) -> Iterator[_Spec]:
        run = self.run
        for k in range(self.n + 1):
            relevant = [
                i
                for i in range(1, k + 1)
                if isinstance(self.ops[i - 1], STATEFUL) and run.loseable(i, k)
            ]
            for r in range(len(relevant) + 1):
                for lost in itertools.combinations(relevant, r):
                    writes = [
                        i for i in relevant if i not in lost and isinstance(self.ops[i - 1], Write)
                    ]
                    options: list[list[tuple[tuple[int, ...], str | None] | None]] = []
                    for i in writes:
                        op = self.ops[i - 1]
                        assert isinstance(op, Write)
                        options.append([None, *_torn_variants(op, run.grows[i], max_torn, True)])
                    for choice in itertools.product(*options):
                        torn = tuple(
                            (i, c[0], c[1]) for i, c in zip(writes, choice, strict=True) if c
                        )
                        yield _Spec(k, "exhaustive", frozenset(lost), torn)

    def exhaustive(self, max_states: int, max_torn: int) -> bool:
        """Enumerate until *max_states*; return whether it stopped before the end."""
        for spec in self._exhaustive_specs(max_torn):
            if self.enumerated >= max_states:
                return True
            self.record(spec, self.replay(spec).fingerprint())
        return False

    # -- classification -------------------------------------------------------------

    def _kept(self, spec: _Spec, upto: int) -> list[str]:
        """The operations <= *upto* not durable at the crash point that *spec* kept."""
        torn = {i: (landed, fill) for i, landed, fill in spec.torn}
        out = []
        for i in range(1, upto + 1):
            if not isinstance(self.ops[i - 1], STATEFUL) or not self.run.loseable(i, spec.k):
                continue
            if i in spec.lost:
                continue
            out.append(self._torn_desc(i, *torn[i]) if i in torn else self.run.descs[i])
        if len(out) > LISTED:  # a run with no sync at all keeps hundreds
            out = [f"({len(out) - LISTED + 1} earlier operations)", *out[-LISTED + 1 :]]
        return out

    def _torn_desc(self, i: int, landed: tuple[int, ...], fill: str | None) -> str:
        op = self.ops[i - 1]
        assert isinstance(op, Write)
        ps = pieces(op.offset, len(op.data))
        got = ", ".join(f"{ps[p][0]}..{ps[p][1]}" for p in landed) or "none of its data"
        rest = f", its new size with {fill}" if fill else ""
        return f"{self.run.descs[i]} in part: {got}{rest}"

    def _gone(self, spec: _Spec) -> frozenset[int]:
        """The operations *spec* lost, with its torn writes that a later operation
        persisted after (a write torn under later operations is an ordering question,
        not a torn end)."""
        later = [
            i
            for i in range(1, spec.k + 1)
            if isinstance(self.ops[i - 1], STATEFUL) and i not in spec.lost
        ]
        last = later[-1] if later else 0
        return spec.lost | {i for i, _, _ in spec.torn if i != last}

    def classify(self, max_states_reached: bool) -> Report:
        """The findings of the checked states (checking the few more they need)."""
        found: dict[tuple[str, str, int], Vulnerability] = {}
        broken = [(spec, key) for spec, key in self.records if self.result(key)[0]]
        broken_prefix: dict[int, Key] = {}
        for spec, key in broken:
            if not spec.lost and not spec.torn:
                broken_prefix.setdefault(spec.k, key)
        # A state broken with something lost, and not at a broken prefix point: are the
        # same files broken when told only what the program had printed before the first
        # loss? If not, what it printed since is what the loss betrays.
        auxiliary: list[tuple[_Spec, Key, Key]] = []
        prefix_keys = set(broken_prefix.values())
        for spec, key in broken:
            gone = self._gone(spec)
            if gone and spec.k not in broken_prefix and key not in prefix_keys:
                told = dataclasses.replace(spec, told=min(gone) - 1)
                auxiliary.append((spec, key, self.record(told, key[0], keep=False)))
        self.wait()
        self._prefix_findings(broken_prefix, found)
        for spec, key in broken:
            whole = spec.k in broken_prefix or key in prefix_keys
            if spec.torn and not whole and not self._gone(spec):
                i = spec.torn[-1][0]
                found.setdefault(
                    ("atomicity", "torn", i),
                    Vulnerability(
                        "atomicity",
                        self.run.crash_point(spec.k),
                        tuple(self._kept(spec, spec.k)),
                        (f"the rest of {self.run.descs[i]}",),
                        self.result(key)[1],
                        spec.family,
                    ),
                )
        for spec, key, aux in auxiliary:
            gone = self._gone(spec)
            j = min(gone)
            # A loss that leaves the very files of a broken prefix state adds nothing to
            # the atomicity finding there.
            if j - 1 in broken_prefix and key[0] == self.prefix_fp[j - 1]:
                continue
            kind: Kind = "ordering" if self.result(aux)[0] else "durability"
            found.setdefault(
                ("lost", "", j),  # one finding per lost operation, the earliest
                Vulnerability(
                    kind,
                    self.run.crash_point(spec.k),
                    tuple(self._kept(spec, spec.k)),
                    tuple(
                        self.run.descs[i] if i in spec.lost else f"the rest of {self.run.descs[i]}"
                        for i in sorted(gone)
                    ),
                    self.result(key)[1],
                    spec.family,
                ),
            )
        order = {"atomicity": 0, "ordering": 1, "durability": 2}
        vulnerabilities = sorted(
            found.values(), key=lambda v: (v.crash_point.syscall, order[v.kind], v.lost)
        )
        return Report(self.enumerated, len(self.numbers), vulnerabilities, max_states_reached)

    def _prefix_findings(
        self, broken_prefix: dict[int, Key], found: dict[tuple[str, str, int], Vulnerability]
    ) -> None:
        """One atomicity finding per run of consecutive broken prefix points."""
        points = sorted(broken_prefix)
        for _, group in itertools.groupby(enumerate(points), lambda e: e[1] - e[0]):
            ks = [k for _, k in group]
            first, last = ks[0], ks[-1]
            spec = _Spec(first, "exhaustive" if self._exhaustive else "prefix")
            needed = [
                self.run.descs[i]
                for i in range(first + 1, min(last + 1, self.n) + 1)
                if isinstance(self.ops[i - 1], STATEFUL)
            ]
            if len(needed) > LISTED:
                needed = [*needed[: LISTED - 1], f"({len(needed) - LISTED + 1} more operations)"]
            found[("atomicity", "prefix", first)] = Vulnerability(
                "atomicity",
                self.run.crash_point(first),
                tuple(self._kept(spec, first)),
                tuple(needed),
                self.result(broken_prefix[first])[1],
                spec.family,
            )

    _exhaustive = False


def explore_operations(
    snapshot: Snapshot,
    operations: Sequence[Operation],
    check: Check,
    *,
    exhaustive: bool = False,
    max_states: int = 100_000,
    jobs: int | None = None,
    scratch: str | None = None,
    timeout: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_torn: int = 16,
) -> Report:
    """Check every crash state of a run and report the vulnerabilities they show.

    *snapshot* holds the directories before the run, *operations* what the run did to
    them (see :mod:`._ops`). *check* is a shell command or a callable (see
    :func:`._checkrun.run_check` for what each is given): it runs once on each distinct
    state, made under *scratch* as ``state-N/0``, ``state-N/1``, ... (one per root) and
    removed after its check. By default *scratch* is a fresh directory, removed at the
    end, in ``/dev/shm`` when that is a memory filesystem with room for twice *jobs*
    copies of the directories and 64 MiB more (making and removing thousands of copies
    on a disk costs several times more), else in the system's temporary directory.

    Up to *jobs* checks (default ``os.cpu_count()``) run at once, in threads: a callable
    check must be thread-safe, or pass ``jobs=1``. *progress* is called as
    ``progress(done, total)`` from the calling thread while checks finish (*total* grows
    when findings need a further state checked); an exception it raises stops the
    exploration, killing the checks still running.

    The states are ALICE's targeted families, or with *exhaustive* every combination the
    model allows, up to *max_states* enumerated (the report then says ``stopped_early``).
    A torn write is tried as at most *max_torn* part-states (plus the two fills of a
    write that grows the file); the exhaustive enumeration tears a write of up to 8
    pieces every way. *timeout*: seconds a check may run before its state counts
    as broken.

    Raises :class:`CrashcheckError` if the check fails on the directories before the run
    or after the whole run (with every operation persisted): then the check, or the
    program, is wrong, and no crash state could be judged. Errors materialising a state
    (``OSError``) propagate.
    """
    own_scratch = scratch is None
    workers = jobs or os.cpu_count() or 1
    where = scratch or tempfile.mkdtemp(prefix="crashcheck-", dir=memory_dir(snapshot, workers))
    explorer = _Explorer(
        snapshot=snapshot,
        ops=operations,
        check=check,
        jobs=workers,
        scratch=where,
        timeout=timeout,
        progress=progress,
    )
    try:
        explorer.sanity()
        stopped = False
        if exhaustive:
            explorer._exhaustive = True
            stopped = explorer.exhaustive(max_states, max_torn)
        else:
            explorer.targeted(max_torn)
        explorer.wait()
        return explorer.classify(stopped)
    except BaseException:
        for future in explorer.futures.values():
            future.cancel()
        explorer.running.stop()  # checks run in sessions of their own: Ctrl-C misses them
        raise
    finally:
        explorer.pool.shutdown(wait=True)
        explorer.trash.shutdown(wait=True)
        for removal in explorer.removals:
            removal.result()  # an error removing a state is the caller's to see
        if own_scratch:
            remove_tree(where)
