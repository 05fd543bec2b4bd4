"""Several objects committed as one: :func:`transaction` and :func:`snapshot` on a prefix.

The protocol, as Delta Lake and Iceberg commit tables on object storage.
Under a prefix ``s3://bucket/p/`` (a URL without the trailing ``/`` names
the same prefix) crashsafe keeps, in ``p/.crashsafe/``:

* data objects, immutable, each at a key of its own,
  ``p/.crashsafe/data/<generation>-<16 hex digits>/<name>``: written by
  :meth:`ObjectTransaction.write` at once (so memory stays bounded), with a
  plain PUT (no other writer ever uses that key);
* ``p/.crashsafe/manifest.json``, the commit point: which key holds each
  name in the current generation, and which keys earlier generations used
  and when they were replaced::

      {"format": 1, "generation": 7, "committed_at": 1764662400.0,
       "entries": {"a.json": {"key": "p/.crashsafe/data/7-.../a.json",
                              "size": 12, "etag": "\\"...\\""}},
       "retired": [{"key": "p/.crashsafe/data/6-.../a.json",
                    "retired_at": 1764662400.0}]}

  It is only ever replaced by a compare-and-swap (``If-Match`` on the ETag of
  the manifest read, ``If-None-Match: *`` for the first one), through
  :func:`crashsafe.objectstore._commit.commit`, which resolves a lost answer
  by the writer tokens in the manifest's metadata; never by a plain PUT.

**Commit**: read the manifest; put this transaction's writes and removals
over its entries (names the transaction did not touch keep what the manifest
has: the one that commits last wins for a name both wrote, and no name only
one of them wrote is lost); move each replaced or removed key to ``retired``;
swap. If another commit landed in between, the swap is refused: read again
and rebase, after a jittered backoff, up to :data:`ATTEMPTS` times, then
:class:`~crashsafe.errors.UpdateConflictError`.

**What a crash leaves.** Before the swap lands, nothing is published: the
data objects written so far are garbage, unreferenced, that
:func:`sweep_transactions` removes once they are older than its *min_age*.
The swap is atomic: after it, the new generation is whole. A writer killed
while the swap's request is in flight may still have it land after its death;
then its generation is whole too. There is nothing to recover, so
:func:`crashsafe.recover` on a URL returns False.

**Readers.** :func:`snapshot` reads the manifest once and then reads that
generation's keys, which are never overwritten; so it sees one whole
generation. A generation stays readable for :data:`GRACE` (an hour) after it
is replaced, or for the *grace* that :func:`sweep_transactions` is given;
a snapshot that reads for longer may find a key already swept and raises
:class:`FileNotFoundError` saying so. A reader that lists or reads the
``.crashsafe/data/`` keys directly sees each object by itself: keys of
generations being written, of commits that lost, and of old generations,
with no way to tell which belong together.

**Sweep** removes a data object only if the current manifest does not name
it and either it was retired more than *grace* ago or no manifest entry
mentions it and it is older than *min_age* (a commit that crashed or lost,
or a transaction still open). So *min_age* must exceed the longest time a
transaction stays open between its first write and its commit; a commit
checks its own objects are still there just before it swaps, and raises
rather than publish a generation whose objects a sweep took. A sweep then
drops the keys it deleted from ``retired`` (a compare-and-swap that leaves
the generation as it is), so the list stays as short as sweeps are
frequent; without sweeps, commits drop entries older than :data:`RETAIN`
(a day), the longest *grace* a sweep accepts: a key no longer listed is
treated as unlisted (removed once older than *min_age*), and by then every
snapshot that could need it has had its grace.

Clocks: ``retired_at`` is the committer's clock and the data objects'
``LastModified`` is the store's; *grace* and *min_age* are compared with the
sweeper's clock, so they should dwarf the clocks' skew.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import random
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from crashsafe import _journal
from crashsafe._checks import BytesLike, Durability, as_data
from crashsafe._metadata import check_keywords
from crashsafe.errors import ForeignJournalError, ObjectStoreError, UpdateConflictError
from crashsafe.objectstore._client import Ambiguous, Client, Refused, client_for
from crashsafe.objectstore._client import S3Store as Store
from crashsafe.objectstore._commit import Version
from crashsafe.objectstore._commit import commit as commit_once
from crashsafe.objectstore._url import ObjectURL, parse
from crashsafe.transactions import Snapshot, Transaction

__all__ = [
    "ATTEMPTS",
    "GRACE",
    "RETAIN",
    "ObjectSnapshot",
    "ObjectTransaction",
    "Store",
    "prefix_of",
    "snapshot",
    "sweep_transactions",
    "transaction",
    "transaction_prefixes",
]

FORMAT: Final = 1
MANIFEST: Final = ".crashsafe/manifest.json"
DATA: Final = ".crashsafe/data/"
# How long a replaced generation stays readable by default (sweep's grace).
GRACE: Final = 3600.0
# How long a commit keeps a retired key in the manifest's list: the longest
# grace a sweep may be given. After that the key is no longer listed, and sweep
# treats it as any unlisted object (older than min_age: removed); by then every
# snapshot that could still need it has had its grace.
RETAIN: Final = 86400.0
# Compare-and-swap attempts of one commit before UpdateConflictError.
ATTEMPTS: Final = 20
# Sends of one data object whose answer was lost (a plain PUT to a key no one
# else writes: sending it again is harmless).
_PUT_TRIES: Final = 3


def prefix_of(url: str) -> ObjectURL:
    """The prefix *url* names, with its trailing ``/`` (none for the bucket's root)."""
    parsed = parse(url, prefix=True)
    if parsed.key and not parsed.key.endswith("/"):
        parsed = ObjectURL(parsed.bucket, parsed.key + "/")
    return parsed


def _durable(url: str, durability: Durability) -> None:
    if durability != "durable":
        raise ValueError(
            f"{url!r}: durability={durability!r} has no meaning on an object store: a commit "
            "the store acknowledged is durable by its own guarantee; leave it out"
        )


# --------------------------------------------------------------------------- the manifest


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one name's content is, in one generation."""

    key: str
    size: int
    etag: str


@dataclass(slots=True)
class Manifest:
    """One generation as read; *version* None when there is no manifest yet."""

    url: ObjectURL
    generation: int = 0
    entries: dict[str, Entry] = field(default_factory=dict)
    retired: list[tuple[str, float]] = field(default_factory=list)
    version: Version | None = None
    committed_at: float = 0.0

    def encode(self, committed_at: float) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "generation": self.generation,
                "committed_at": committed_at,
                "entries": {
                    name: {"key": e.key, "size": e.size, "etag": e.etag}
                    for name, e in self.entries.items()
                },
                "retired": [{"key": k, "retired_at": t} for k, t in self.retired],
            },
            separators=(",", ":"),
        ).encode()


def read_manifest(client: Client, url: ObjectURL) -> Manifest:
    """The manifest at *url* with its :class:`Version`; an empty generation 0 if none.

    Raises :class:`~crashsafe.errors.ForeignJournalError` (a
    :class:`ValueError`) for an object there that is not a crashsafe manifest,
    and :class:`FileNotFoundError` for a missing bucket.
    """
    try:
        fetched = client.get(url)
    except FileNotFoundError as e:
        if e.strerror and e.strerror.startswith("no bucket"):
            raise
        return Manifest(url)
    try:
        doc = json.loads(fetched.data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format') if isinstance(doc, dict) else doc!r}")
        generation = doc["generation"]
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
            raise ValueError(f"generation {generation!r}")
        entries = {
            str(name): Entry(str(e["key"]), int(e["size"]), str(e["etag"]))
            for name, e in doc["entries"].items()
        }
        retired = [(str(r["key"]), float(r["retired_at"])) for r in doc["retired"]]
        committed_at = float(doc["committed_at"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ForeignJournalError(str(url), f"not a crashsafe manifest: {e}") from e
    return Manifest(url, generation, entries, retired, Version.of(fetched.stat), committed_at)


def _rebased(current: Manifest, ops: Mapping[str, Entry | None], now: float) -> bytes:
    """*current* with *ops* applied over its entries, as the next generation."""
    entries = dict(current.entries)
    retired = [(k, t) for k, t in current.retired if now - t < RETAIN]
    for name, op in ops.items():
        old = entries.pop(name, None)
        if op is not None:
            entries[name] = op
        if old is not None:
            retired.append((old.key, now))
    return Manifest(current.url, current.generation + 1, entries, retired).encode(now)


def _put(client: Client, url: ObjectURL, body: bytes) -> Callable[..., str]:
    """The request :func:`~crashsafe.objectstore._commit.commit` sends: *body* at *url*."""

    def send(metadata: Mapping[str, str], if_none_match: bool, if_match: str | None) -> str:
        return client.put(
            url, body, metadata=metadata, if_none_match=if_none_match, if_match=if_match
        )

    return send


def _jitter(attempt: int) -> float:
    """Full jitter: uniform in [0, min(1 s, 10 ms * 2**attempt)]."""
    return random.uniform(0.0, min(1.0, 0.01 * 2.0**attempt))  # noqa: S311 - not a secret


# ---------------------------------------------------------------------------- transaction


class ObjectTransaction(Transaction):
    """Objects written and removed under one prefix, published together by :meth:`commit`.

    What :func:`crashsafe.transaction` yields for an ``s3://`` URL; see this
    module for the protocol. :meth:`write` sends the object at once, to a key
    no reader looks at until the commit names it; nothing is visible through
    :func:`snapshot` before the commit.
    """

    def __init__(self, client: Client, url: str) -> None:
        # Not Transaction.__init__: that one opens a local directory.
        self.directory = url
        self._client = client
        self._prefix = prefix_of(url)
        self._manifest = self._prefix.join(MANIFEST)
        self._batch: str | None = None
        self._changes: dict[str, Entry | None] = {}
        self._state = "open"
        self._pinned = None

    def _url(self, name: str) -> str:
        return str(self._prefix.join(name))

    def _batch_prefix(self) -> str:
        if self._batch is None:
            # The generation it will most likely be, for a human reading keys;
            # the token makes the key unique whatever generation it lands in.
            base = read_manifest(self._client, self._manifest).generation
            self._batch = f"{self._prefix.key}{DATA}{base + 1}-{secrets.token_hex(8)}/"
        return self._batch

    def write(
        self,
        name: Any,
        data: BytesLike | str,
        *,
        perm: int | None = None,
        preserve: Literal["all", "mode"] = "all",
        hardlinks: Literal["refuse", "break"] = "refuse",
    ) -> None:
        """Send *data* (bytes, or str encoded as UTF-8) as the new content of *name*, now.

        *name* is one name (no ``/``), as locally. The object goes to a key of
        this transaction's own; it is published by the commit. A later write
        or remove of the same name in this transaction replaces this one.

        *preserve* and *hardlinks* are checked and have nothing to do (an
        object has no extended attributes and no links).
        Raises :class:`ValueError` for *perm* (an object has no mode), a bad
        name or a transaction no longer open, :class:`TypeError` as locally,
        and the :class:`OSError` of the request
        (:class:`~crashsafe.errors.ObjectStoreError` after its answer was lost
        :data:`_PUT_TRIES` times), naming the URL.
        """
        self._check_open()
        if perm is not None:
            raise ValueError(
                f"{self._url(str(name))!r}: perm has no meaning for an object; leave it out"
            )
        check_keywords(preserve, hardlinks)
        name = _journal.check_name(name)
        body = bytes(as_data(data))
        url = ObjectURL(self._prefix.bucket, self._batch_prefix() + name)
        for _ in range(_PUT_TRIES):
            try:
                etag = self._client.put(url, body, metadata={})
                break
            except Ambiguous:
                continue  # a plain put to a key of our own: sending it again is harmless
        else:
            raise ObjectStoreError(
                f"the answers to {_PUT_TRIES} sends of {name!r} were lost", str(url)
            )
        self._changes[name] = Entry(url.key, len(body), etag)

    def remove(self, name: Any) -> None:
        """Remove *name* when the transaction commits; a name not there is no error.

        *name* and its errors are those of :meth:`write`.
        """
        self._check_open()
        name = _journal.check_name(name)
        old = self._changes.get(name)
        self._changes[name] = None
        if old is not None:
            self._delete([old.key])

    def commit(self) -> None:
        """Publish every write and removal together, by one compare-and-swap of the manifest.

        Returns once the new generation is the current one. Raises, with
        nothing published and this transaction's objects deleted:
        :class:`~crashsafe.errors.UpdateConflictError` (a
        :class:`TimeoutError`) after :data:`ATTEMPTS` commits of others won the
        race, :class:`FileNotFoundError` if a sweep removed an object this
        transaction wrote (it stayed open longer than the sweep's
        *min_age*), :class:`~crashsafe.errors.ForeignJournalError` for a
        manifest crashsafe did not write, and the :class:`OSError` of a
        request. Raises :class:`~crashsafe.errors.AmbiguousWriteError` (or an
        :class:`OSError` while finding out) when the manifest's answer was lost
        and whether it landed cannot be told: then :attr:`committed` is False
        but the objects are kept (a sweep removes them if the commit did not
        land).
        """
        self._check_open()
        if not self._changes:
            self._state = "committed"
            return
        sent = False
        try:
            self._still_there()
            for attempt in range(ATTEMPTS):
                if attempt:
                    time.sleep(_jitter(attempt))
                current = read_manifest(self._client, self._manifest)
                body = _rebased(current, self._changes, time.time())
                sent = True
                try:
                    commit_once(
                        self._client,
                        self._manifest,
                        current.version,
                        _put(self._client, self._manifest, body),
                    )
                except (Refused, FileExistsError):
                    sent = False  # refused: that attempt did not land, and never will
                    continue
                self._state = "committed"
                return
            raise UpdateConflictError(str(self._manifest), ATTEMPTS)
        except BaseException:
            if sent:
                self._state = "unknown"  # the swap may have landed: keep its objects
            else:
                self.discard()
            raise

    def _still_there(self) -> None:
        written = {e.key for e in self._changes.values() if e is not None}
        if not written or self._batch is None:
            return
        listed = {
            key for key, _ in self._client.listing(ObjectURL(self._prefix.bucket, self._batch))
        }
        for name, e in self._changes.items():
            if e is not None and e.key not in listed:
                raise FileNotFoundError(
                    errno.ENOENT,
                    f"the object written for {name!r} is gone before the commit: a sweep "
                    "removed it, so this transaction stayed open longer than the sweep's "
                    "min_age; nothing was published",
                    str(ObjectURL(self._prefix.bucket, e.key)),
                )

    def discard(self) -> None:
        """Publish nothing and delete the objects written (best effort: what a failed
        delete leaves, a sweep removes). A no-op once committed."""
        if self._state != "open":
            return
        self._state = "discarded"
        self._delete([e.key for e in self._changes.values() if e is not None])
        self._changes.clear()

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(OSError):
                self._client.delete(ObjectURL(self._prefix.bucket, key))

    def __del__(self) -> None:
        # Objects are sent at once; an abandoned transaction's are garbage
        # for sweep, and there is no descriptor to free.
        pass

    def __repr__(self) -> str:
        n = len(self._changes)
        return f"<crashsafe.Transaction {self.directory!r} {self._state}, {n} objects>"


@contextmanager
def transaction(
    url: str, *, durability: Durability = "durable", store: Store | None = None
) -> Iterator[ObjectTransaction]:
    """:func:`crashsafe.transaction` on the prefix *url*: see this module."""
    _durable(url, durability)
    tx = ObjectTransaction(client_for(store, url), url)
    try:
        yield tx
    except BaseException:
        tx.discard()
        raise
    if tx._state == "open":  # a block that committed or discarded has decided
        tx.commit()


# ------------------------------------------------------------------------------- snapshot


class ObjectSnapshot(Snapshot):
    """One generation of a prefix, as :func:`crashsafe.snapshot` yields it for a URL."""

    def __init__(self, client: Client, url: str, manifest: Manifest) -> None:
        self._directory = None
        self._client: Client | None = client
        self._prefix = prefix_of(url)
        self._read = manifest

    @property
    def generation(self) -> int:
        """This generation's number (0: nothing was ever committed under the prefix)."""
        return self._read.generation

    def names(self) -> list[str]:
        """The names in this generation, sorted."""
        self._open()
        return sorted(self._read.entries)

    def _open(self) -> Client:
        if self._client is None:
            raise ValueError("snapshot used after its with block ended")
        return self._client

    def _entry(self, name: object) -> tuple[str, Entry | None]:
        self._open()
        checked = _journal.check_name(name)
        return checked, self._read.entries.get(checked)

    def read(self, name: Any) -> bytes:
        """The content of *name* in this generation.

        Raises :class:`FileNotFoundError` naming the URL if *name* is not in
        this generation, or if its object was removed by a sweep (the
        snapshot outlived the grace period after its generation was replaced),
        :class:`~crashsafe.errors.ObjectStoreError` if the object there is not
        the one the manifest names, and :class:`ValueError` after the
        snapshot's block or for a bad name.
        """
        checked, entry = self._entry(name)
        if entry is None:
            raise FileNotFoundError(
                errno.ENOENT,
                f"not in generation {self._read.generation}",
                str(self._prefix.join(checked)),
            )
        url = ObjectURL(self._prefix.bucket, entry.key)
        try:
            fetched = self._open().get(url)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                errno.ENOENT,
                f"generation {self._read.generation}'s object for {checked!r} ({url}) was "
                "removed: this snapshot outlived the grace period after its generation was "
                f"replaced (sweep's grace, {GRACE:.0f} s by default), or the transaction that "
                "wrote it stayed open longer than sweep's min_age",
                str(self._prefix.join(checked)),
            ) from e
        if fetched.stat.etag.strip('"') != entry.etag.strip('"') or len(fetched.data) != (
            entry.size
        ):
            raise ObjectStoreError(
                f"the object for {checked!r} is not the one generation "
                f"{self._read.generation} names (something else wrote {url})",
                str(self._prefix.join(checked)),
            )
        return fetched.data

    def exists(self, name: Any) -> bool:
        """Whether *name* is in this generation."""
        return self._entry(name)[1] is not None


@contextmanager
def snapshot(url: str, *, store: Store | None = None) -> Iterator[ObjectSnapshot]:
    """:func:`crashsafe.snapshot` on the prefix *url*: the manifest is read once."""
    client = client_for(store, url)
    prefix = prefix_of(url)
    view = ObjectSnapshot(client, url, read_manifest(client, prefix.join(MANIFEST)))
    try:
        yield view
    finally:
        view._client = None


# ---------------------------------------------------------------------------------- sweep


def _seconds(what: str, value: object, most: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= most:
        bound = "" if most == math.inf else f" up to {most:.0f}"
        raise ValueError(f"{what} must be a number of seconds from 0{bound}, not {value!r}")
    return float(value)


def sweep_transactions(
    client: Client,
    prefix: ObjectURL,
    *,
    min_age: float,
    grace: float = GRACE,
    dry_run: bool = False,
) -> list[str]:
    """Delete the data objects under *prefix* that no generation still needs; return their URLs.

    An object is removed only if the current manifest does not name it and
    either the manifest lists it as retired more than *grace* seconds ago, or
    the manifest does not mention it and its ``LastModified`` is more than
    *min_age* seconds ago: the objects of a commit that crashed or lost the
    race, and of a transaction still open after *min_age* (which must
    therefore exceed the longest transaction). A referenced object is never
    removed. *dry_run* removes nothing and returns the same list.

    Raises :class:`ValueError` for a negative *min_age*, or a *grace* that is
    negative or above :data:`RETAIN` (commits forget retired keys after that),
    :class:`~crashsafe.errors.ForeignJournalError` (removing nothing) for a
    manifest crashsafe did not write, and the :class:`OSError` of a request.
    """
    min_age = _seconds("min_age", min_age)
    grace = _seconds("grace", grace, RETAIN)
    if prefix.key and not prefix.key.endswith("/"):
        prefix = ObjectURL(prefix.bucket, prefix.key + "/")
    # The manifest first: a key that a later commit retires is referenced in
    # this one, so it stays; one that a later commit references was written by
    # a transaction younger than min_age (the documented bound).
    manifest = read_manifest(client, prefix.join(MANIFEST))
    referenced = {e.key for e in manifest.entries.values()}
    retired = dict(manifest.retired)
    removed: list[str] = []
    forgotten: set[str] = set()
    now = time.time()
    for key, stat in client.listing(prefix.join(DATA)):
        if key in referenced:
            continue
        if key in retired:
            if now - retired[key] < grace:
                continue
            forgotten.add(key)
        elif stat.last_modified is None or now - stat.last_modified.timestamp() < min_age:
            continue
        url = ObjectURL(prefix.bucket, key)
        if not dry_run:
            client.delete(url)
        removed.append(str(url))
    if forgotten and not dry_run:
        _forget(client, prefix.join(MANIFEST), forgotten)
    return removed


def _forget(client: Client, url: ObjectURL, keys: set[str]) -> None:
    """Drop *keys*, deleted, from the manifest's retired list, so that it stays as short as
    sweeps are frequent. Best effort: a key left in the list names nothing, and the
    commits drop it after :data:`RETAIN`."""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(_jitter(attempt))
        current = read_manifest(client, url)
        kept = [(k, t) for k, t in current.retired if k not in keys]
        if current.version is None or len(kept) == len(current.retired):
            return
        same = Manifest(url, current.generation, current.entries, kept)
        body = same.encode(current.committed_at)  # the same generation, shorter history
        try:
            commit_once(client, url, current.version, _put(client, url, body))
        except (Refused, FileExistsError):
            continue
        return


def transaction_prefixes(client: Client, prefix: ObjectURL) -> list[ObjectURL]:
    """The transaction prefixes at or under *prefix* that hold data objects, sorted.

    For a sweep of a whole prefix: each one found is a prefix to give
    :func:`sweep_transactions`. Costs a listing of everything under *prefix*.
    """
    found: set[str] = set()
    marker = "/" + DATA
    for key, _ in client.listing(prefix):
        if key.startswith(DATA):
            found.add("")
        elif (at := key.find(marker)) >= 0:
            found.add(key[: at + 1])
    return [ObjectURL(prefix.bucket, key) for key in sorted(found)]
