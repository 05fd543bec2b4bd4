"""Transaction fixtures: generations of a set of files, and what a crash left of them.

What every transaction crash test commits: generation g of four files (with
their exact modes, one of them a private key) and a fifth name that holds
generation g when g is odd and is removed when g is even, so that a removal
belongs to every commit too. Each file's content names the file and the
generation: a file swapped with another, a prefix or a mix of two
generations differs from every complete one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.harness.payloads import (
    classify,
    classify_named,
    durable_put,
    fsync_directory,
    payload,
    read_or_none,
)

if TYPE_CHECKING:
    from crashsafe.transactions import Transaction

TX_FILES: dict[str, int] = {"a": 0o644, "b": 0o644, "c": 0o640, "key": 0o600}
TX_TOGGLE = "odd"
TX_NAMES = (*TX_FILES, TX_TOGGLE)
TX_SIZE = 16 << 10


def generation_data(generation: int, name: str, size: int = TX_SIZE) -> bytes:
    return name.encode() + b":" + payload(generation, size)


def write_generation(tx: Transaction, generation: int, size: int = TX_SIZE) -> None:
    """Stage generation *generation* in the open :class:`crashsafe.transactions.Transaction`."""
    for name, perm in TX_FILES.items():
        tx.write(name, generation_data(generation, name, size), perm=perm)
    if generation % 2:
        tx.write(TX_TOGGLE, generation_data(generation, TX_TOGGLE, size), perm=0o644)
    else:
        tx.remove(TX_TOGGLE)


def classify_generation(read: Callable[[str], bytes | None]) -> int | str:
    """The generation the files hold, read with *read(name)* (None: no such file),
    else what is wrong: "NAME missing/empty/partial/torn..." or "mixed (...)"."""
    found = {name: classify_named(name, read(name)) for name in TX_NAMES}
    for name in TX_FILES:
        if not isinstance(found[name], int):
            return f"{name} {found[name]}"
    generations = {found[name] for name in TX_FILES}
    generation = found["a"]
    assert isinstance(generation, int)
    toggle = found[TX_TOGGLE]
    expected_toggle: int | str = generation if generation % 2 else "missing"
    if len(generations) > 1 or toggle != expected_toggle:
        return "mixed (" + " ".join(f"{n}={found[n]}" for n in TX_NAMES) + ")"
    return generation


def read_generation(directory: str | os.PathLike[str]) -> int | str:
    """:func:`classify_generation` of the files in *directory*, read directly."""
    return classify_generation(lambda name: read_or_none(Path(directory) / name))


def put_generation(directory: str | os.PathLike[str], generation: int) -> None:
    """Put generation *generation* in place durably, with their modes, with plain
    os calls (setup, not under test)."""
    directory = Path(directory)
    for name, perm in TX_FILES.items():
        durable_put(directory / name, generation_data(generation, name), perm, sync_dir=False)
    if generation % 2:
        toggle = generation_data(generation, TX_TOGGLE)
        durable_put(directory / TX_TOGGLE, toggle, 0o644, sync_dir=False)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / TX_TOGGLE)
    fsync_directory(directory)  # one for all of them


def prepare_generation(directory: str | os.PathLike[str], generation: int) -> None:
    """Empty *directory* of everything but the files, then put *generation* in place."""
    directory = Path(directory)
    for name in os.listdir(directory):
        if name not in TX_NAMES:
            os.unlink(directory / name)
    put_generation(directory, generation)


def tx_writer_args(
    directory: str | os.PathLike[str],
    source: str | os.PathLike[str],
    generation: int,
    *,
    staging: str,
    durability: str = "durable",
) -> list[str]:
    """Arguments for ``tests/writers/tx_commit.py`` (or its broken twin) that
    commit *generation*; its contents are written to the *source* directory
    (outside the filesystem under test)."""
    source = Path(source)
    source.mkdir(parents=True, exist_ok=True)
    plan: list[tuple[str, int | None]] = list(TX_FILES.items())
    plan.append((TX_TOGGLE, 0o644 if generation % 2 else None))
    for name, perm in plan:
        if perm is not None:
            (source / name).write_bytes(generation_data(generation, name))
    return [os.fspath(directory), os.fspath(source), staging, durability, json.dumps(plan)]


_TX_PROTOCOL = re.compile(r"\A\.crashsafe-(journal|tx\.\d+)\Z")


def protocol_leftovers(directory: str | os.PathLike[str]) -> list[str]:
    """The transaction protocol's own names in *directory*: the journal and staged
    files (``.crashsafe-journal``, ``.crashsafe-tx.N``); the lock file is not one."""
    return sorted(n for n in os.listdir(directory) if _TX_PROTOCOL.match(n))


def exposed_entries(directory: str | os.PathLike[str]) -> list[str]:
    """Entries of *directory* more permissive than the final mode of the file they
    will become (known by content, or by a temporary name's stem); the journal,
    and anything unknown, must be 0o600 or less. The lock file holds no data."""
    from crashsafe.transactions import JOURNAL, LOCK

    directory = Path(directory)
    perms = {**TX_FILES, TX_TOGGLE: 0o644, JOURNAL: 0o600}
    exposed = []
    for name in sorted(os.listdir(directory)):
        st = os.lstat(directory / name)
        if name == LOCK or name.endswith(".harness-setup") or not stat.S_ISREG(st.st_mode):
            continue
        data = read_or_none(directory / name) or b""
        owner = next((n for n in TX_NAMES if data.startswith(n.encode() + b":")), None)
        if owner is None:
            owner = next((n for n in perms if name == n or name.startswith(f".{n}.")), None)
        allowed = perms.get(owner, 0o600) if owner is not None else 0o600
        if stat.S_IMODE(st.st_mode) & ~allowed:
            exposed.append(f"{name} {stat.S_IMODE(st.st_mode):o} (for {owner}: {allowed:o})")
    return exposed


@dataclass(frozen=True)
class TxState:
    """A transactional directory after a crash: before and after :func:`recover`."""

    before: int | str  # read_generation() of the files as a crash left them
    journal: bool  # a journal was there (the commit point was passed)
    staged: tuple[str, ...]  # .crashsafe-tx.N names that were there
    staged_generations: tuple[int | str, ...]  # what they held
    exposed: tuple[str, ...]  # exposed_entries() before recovery
    recovered: bool  # what recover() returned
    after: int | str  # read_generation() after recovery
    left: tuple[str, ...]  # protocol_leftovers() after recovery

    @property
    def recovery(self) -> str:
        """How recovery had to act: ``forward`` (a journal: the commit is completed),
        ``back`` (staged files without a journal: they are removed) or ``none``."""
        return "forward" if self.journal else "back" if self.staged else "none"

    def problems(self) -> list[str]:
        """What breaks the contract in this state; empty when all is well."""
        bad = []
        if not isinstance(self.after, int):
            bad.append(f"after recovery: {self.after}")
        if self.recovered != (self.recovery != "none"):
            bad.append(f"recover() returned {self.recovered} for a {self.recovery} recovery")
        if self.left:
            bad.append(f"protocol names left after recovery: {list(self.left)}")
        if self.exposed:
            bad.append(f"more permissive than final: {list(self.exposed)}")
        complete = [g for g in self.staged_generations if isinstance(g, int)]
        if len(complete) != len(self.staged_generations):
            bad.append(f"a staged file is not complete: {self.staged_generations}")
        if self.recovery == "back" and self.after != self.before:
            bad.append(f"rolled back from {self.before} to {self.after}")
        if self.recovery == "forward" and complete and self.after != max(complete):
            bad.append(f"rolled forward to {self.after}, staged {complete}")
        return bad


def _staged_generation(data: bytes | None) -> int | str:
    for name in TX_NAMES:
        prefix = name.encode() + b":"
        if data is not None and data.startswith(prefix):
            return classify(data[len(prefix) :])
    return classify(data)


def inspect_transaction(directory: str | os.PathLike[str]) -> TxState:
    """Look at *directory* as a crash left it, run :func:`recover` on it, look again."""
    from crashsafe.transactions import JOURNAL, recover

    directory = Path(directory)
    staged = tuple(n for n in protocol_leftovers(directory) if n != JOURNAL)
    state: dict[str, Any] = {
        "before": read_generation(directory),
        "journal": os.path.lexists(directory / JOURNAL),
        "staged": staged,
        "staged_generations": tuple(
            _staged_generation(read_or_none(directory / n)) for n in staged
        ),
        "exposed": tuple(exposed_entries(directory)),
    }
    state["recovered"] = recover(directory)
    state["after"] = read_generation(directory)
    state["left"] = tuple(protocol_leftovers(directory))
    return TxState(**state)
