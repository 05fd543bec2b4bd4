"""One writer process of the soak test (:mod:`tests.harness.soak`): threads doing
every kind of write in one tree until the stop file exists.

``soak_worker.py ROOT LOGS STOP SLOT INCARNATION THREADS SEED STAGING BROKEN``

Each thread (worker ``p<SLOT>t<j>``) draws operations from a generator seeded
with the soak's seed, its name and the incarnation, and logs each one right
after it returned (see :mod:`tests.harness.soak_format`). *BROKEN* (``-`` for
none, else comma-separated) plants the broken writers the soak must catch:
``naive``, files written with ``open(path, "wb")`` and ``write()``; ``unlocked``,
counters read with ``read_json`` and written with ``write_json``, the lock not
held from the read to the write.

It exits 0 when stopped, 3 (with the traceback on stderr) if an operation
raised: a soak of correct writers sees no error at all.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import crashsafe._platform._posix as posix
from crashsafe import atomic_open, atomic_write, validators
from crashsafe.batch import write_many
from crashsafe.checksums import ChecksumStore
from crashsafe.copying import atomic_copy
from crashsafe.documents import read_json, update_json, write_json
from crashsafe.transactions import transaction
from tests.harness.soak_format import (
    BATCH,
    BATCH_FILES,
    BATCH_SIZE,
    CHECKED,
    COPIES,
    COUNTERS,
    FILES,
    JSON,
    KINDS,
    SHARED_COPIES,
    SHARED_FILES,
    SOURCES,
    STORE,
    TOTAL,
    TX,
    TX_EXTRA,
    TX_FILES,
    Version,
    append_line,
    log_path,
    payload,
    read_log,
)

Durability = Literal["durable", "consistent", "none"]
DURABILITIES: tuple[Durability, ...] = ("durable", "consistent", "none")
CHUNK = 8 << 10


class Worker:
    """One thread's operations; each returns the detail its log line records."""

    def __init__(self, root: Path, key: str, rng: random.Random, broken: set[str]) -> None:
        self.root, self.key, self.rng, self.broken = root, key, rng, broken
        self.store = ChecksumStore(root / JSON / STORE)

    def durability(self) -> Durability:
        return self.rng.choice(DURABILITIES)

    def naive(self, path: Path, data: bytes) -> None:
        """The broken writer: truncate the file in place, then write it."""
        with open(path, "wb") as f:
            for i in range(0, len(data), CHUNK):
                f.write(data[i : i + CHUNK])

    def write(self, v: Version) -> str:
        rel = f"{FILES}/{self.rng.choice(SHARED_FILES)}"
        if "naive" in self.broken:
            self.naive(self.root / rel, payload(rel, v))
        else:
            atomic_write(self.root / rel, payload(rel, v), durability=self.durability())
        return rel

    def open(self, v: Version) -> str:
        rel = f"{FILES}/{self.rng.choice(SHARED_FILES)}"
        data = payload(rel, v)
        if "naive" in self.broken:
            self.naive(self.root / rel, data)
            return rel
        with atomic_open(self.root / rel, "wb", durability=self.durability()) as f:
            for i in range(0, len(data), CHUNK):
                f.write(data[i : i + CHUNK])
        return rel

    def copy(self, v: Version) -> str:
        rel = f"{COPIES}/{self.rng.choice(SHARED_COPIES)}"
        data = payload(rel, v)
        source = self.root / SOURCES / f"{self.key}.src"
        atomic_write(source, data, durability="none")
        check = validators.sha256(hashlib.sha256(data).hexdigest())
        atomic_copy(source, self.root / rel, validate=check, durability=self.durability())
        return rel

    def count(self, v: Version) -> str:
        path = self.root / JSON / COUNTERS
        key = self.key

        def add(doc: dict[str, int]) -> dict[str, int]:
            doc[key] = doc.get(key, 0) + 1
            doc[TOTAL] = doc.get(TOTAL, 0) + 1
            return doc

        if "unlocked" in self.broken:
            new = add(read_json(path, default={}))
            write_json(path, new)
        else:
            new = update_json(path, add, default={})
        return str(new[key])

    def tx(self, v: Version) -> str:
        with transaction(self.root / TX, durability=self.durability()) as t:
            for name in TX_FILES:
                t.write(name, payload(f"{TX}/{name}", v))
            if v[2] % 2 == 0:
                t.write(TX_EXTRA, payload(f"{TX}/{TX_EXTRA}", v))
            else:
                t.remove(TX_EXTRA)
        return "-"

    def batch(self, v: Version) -> str:
        names = sorted(self.rng.sample(BATCH_FILES, BATCH_SIZE))
        items = {self.root / BATCH / n: payload(f"{BATCH}/{n}", v) for n in names}
        write_many(items, durability=self.durability())  # type: ignore[arg-type]
        return ",".join(names)

    def checksum(self, v: Version) -> str:
        rel = f"{CHECKED}/{self.key}.bin"
        atomic_write(self.root / rel, payload(rel, v), durability="none")
        return self.store.record(self.root / rel)


def run_thread(
    root: Path, logs: Path, stop: Path, *, key: str, incarnation: int, seed: str, broken: set[str]
) -> None:
    path = log_path(logs, key)
    read_log(path, key, repair=True)  # a line a kill cut short is cut off
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    rng = random.Random(f"{seed} {key} {incarnation}")
    worker = Worker(root, key, rng, broken)
    ops: dict[str, Callable[[Version], str]] = {k: getattr(worker, k) for k in KINDS}
    seq = 0
    try:
        while not stop.exists():
            seq += 1
            kind = rng.choice(KINDS)
            v = (key, incarnation, seq)
            append_line(fd, kind, v, ops[kind](v))
    finally:
        os.close(fd)


def main(argv: list[str]) -> None:
    root, logs, stop = Path(argv[1]), Path(argv[2]), Path(argv[3])
    slot, incarnation, threads = int(argv[4]), int(argv[5]), int(argv[6])
    seed, staging, broken = argv[7], argv[8], set(argv[9].split(",")) - {"-"}
    posix.use_tmpfile = staging == "tmpfile"

    def body(j: int) -> None:
        try:
            run_thread(
                root,
                logs,
                stop,
                key=f"p{slot}t{j}",
                incarnation=incarnation,
                seed=seed,
                broken=broken,
            )
        except BaseException:
            # At once: the soak stops on the first error, with its traceback.
            sys.stderr.write(traceback.format_exc())
            sys.stderr.flush()
            os._exit(3)

    pool = [threading.Thread(target=body, args=(j,)) for j in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


if __name__ == "__main__":
    main(sys.argv)
