"""The reader process of the soak test (:mod:`tests.harness.soak`).

``soak_reader.py ROOT STOP``

Three threads read until the stop file exists: plain reads of every written
file (each must be one complete version of its own file; a name once seen
must never be missing, but the transaction's removable file), ``read_json``
of the counters (a whole document whose total is the sum of its counters, no
counter ever smaller than this reader saw before), and ``snapshot`` of the
transaction directory (every file of one commit's generation). Each damaged
read is printed at once as ``damage WHAT``; at the end, one JSON line of
counts. Exits 3 with the traceback if a read raised anything unexpected.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from crashsafe.documents import read_json
from crashsafe.errors import JSONDocumentError
from crashsafe.transactions import snapshot
from tests.harness.soak_format import (
    BATCH,
    BATCH_FILES,
    CHECKED,
    COPIES,
    COUNTERS,
    FILES,
    JSON,
    SHARED_COPIES,
    SHARED_FILES,
    TOTAL,
    TX,
    TX_EXTRA,
    TX_FILES,
    VANISHING,
    check,
    read_or_none,
)

counts: Counter[str] = Counter()
lock = threading.Lock()
PRINTED = 50  # damage lines printed at most; all are counted


def damage(what: str) -> None:
    with lock:
        counts["damaged"] += 1
        if counts["damaged"] <= PRINTED:
            sys.stdout.write(f"damage {what}\n")
            sys.stdout.flush()


def plain(root: Path, stop: Path) -> None:
    names = [f"{FILES}/{n}" for n in SHARED_FILES] + [f"{COPIES}/{n}" for n in SHARED_COPIES]
    names += [f"{BATCH}/{n}" for n in BATCH_FILES] + [f"{TX}/{n}" for n in TX_FILES]
    names.append(f"{TX}/{TX_EXTRA}")
    seen: set[str] = set()
    while not stop.exists():
        checked = [f"{CHECKED}/{n}" for n in os.listdir(root / CHECKED) if not n.startswith(".")]
        for rel in names + checked:
            found = check(rel, read_or_none(root / rel))
            if found == "missing" and (rel not in seen or rel in VANISHING):
                continue
            if isinstance(found, str):
                damage(f"{rel}: {found}")
                continue
            seen.add(rel)
            with lock:
                counts[f"plain {rel.split('/')[0]}"] += 1


def documents(root: Path, stop: Path) -> None:
    last: dict[str, int] = {}
    while not stop.exists():
        try:
            doc = read_json(root / JSON / COUNTERS, default=None)
        except JSONDocumentError as e:
            damage(f"counters: {e}")
            continue
        if doc is None:
            continue
        mine = {k: v for k, v in doc.items() if k != TOTAL}
        if doc[TOTAL] != sum(mine.values()):
            damage(f"counters: total {doc[TOTAL]} != sum {sum(mine.values())}")
        back = [k for k, v in mine.items() if v < last.get(k, 0)]
        if back:
            damage(f"counters went back: {[(k, last[k], mine[k]) for k in back]}")
        last.update(mine)
        with lock:
            counts["read_json"] += 1


def snapshots(root: Path, stop: Path) -> None:
    while not stop.exists():
        with snapshot(root / TX) as snap:
            if not snap.exists(TX_FILES[0]):
                continue  # no commit yet
            found = {n: check(f"{TX}/{n}", snap.read(n)) for n in TX_FILES}
            extra = snap.read(TX_EXTRA) if snap.exists(TX_EXTRA) else None
        versions = set(found.values())
        if len(versions) != 1 or any(isinstance(v, str) for v in versions):
            damage(f"snapshot of {TX}: {found}")
            continue
        (v,) = versions
        assert not isinstance(v, str)
        want_extra = v[2] % 2 == 0
        if (extra is not None) != want_extra or (
            extra is not None and check(f"{TX}/{TX_EXTRA}", extra) != v
        ):
            damage(
                f"snapshot of {TX}: {found}, {TX_EXTRA} {'absent' if extra is None else 'wrong'}"
            )
            continue
        with lock:
            counts["snapshot"] += 1


def main(argv: list[str]) -> None:
    root, stop = Path(argv[1]), Path(argv[2])

    def body(fn: Callable[[Path, Path], None]) -> None:
        try:
            fn(root, stop)
        except BaseException:
            sys.stderr.write(traceback.format_exc())
            sys.stderr.flush()
            os._exit(3)

    pool = [threading.Thread(target=body, args=(fn,)) for fn in (plain, documents, snapshots)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    sys.stdout.write(json.dumps(dict(counts)) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv)
