"""Load and long runs: every kind of write, in many processes and threads, in one tree,
for ``--soak-seconds`` (40 by default), while a reader checks every read, writers
are killed with ``kill -9`` at random moments and started again, and a sweeper
sweeps.

At the end every file is one complete version, every counter is exactly its
acknowledged increments (plus at most one in-flight increment per kill), the
transaction's files are one commit's, the checksum store holds each file's
last acknowledged digest, and after ``recover`` and a final sweep no temporary
file is left. The same run with broken writers planted (files written with
``open(path, "wb")``, counters updated without the lock) must be caught.

``pytest -s tests/test_soak.py --soak-seconds 600`` runs it for ten minutes and
prints what it did (the README's "Verified on" row). The seed is printed; set
``CRASHSAFE_SOAK_SEED`` to run one again.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.harness.inject import fault, run_traced
from tests.harness.soak import SoakPlan, SoakResult, run_soak
from tests.harness.soak_format import check as check_payload
from tests.harness.soak_format import payload
from tests.harness.summary import module_summary

note, _printed = module_summary("Soak (tests/test_soak.py)")


def _seed() -> int:
    given = os.environ.get("CRASHSAFE_SOAK_SEED")
    return int(given) if given else random.SystemRandom().randrange(1 << 32)


def _report(label: str, result: SoakResult) -> None:
    note(f"{label}:")
    for line in result.summary():
        note(f"  {line}")


def test_payload_check_names_every_damage() -> None:
    """The verdict on one file: a complete version of its own file, or what is wrong."""
    v = ("p1t2", 3, 4)
    data = payload("files/f0.bin", v)
    assert check_payload("files/f0.bin", data) == v
    assert check_payload("files/f0.bin", None) == "missing"
    assert check_payload("files/f0.bin", b"") == "empty"
    assert check_payload("files/f0.bin", bytes(len(data))) == "zeros"
    assert check_payload("files/f0.bin", data[:9]) == "partial"
    assert check_payload("files/f0.bin", data[:-1]) == "partial"
    assert check_payload("files/f0.bin", data + b"x") == "torn"
    other = payload("files/f0.bin", ("p0t0", 1, 1))
    mixed = data[: len(data) // 2] + other[len(data) // 2 :]
    assert check_payload("files/f0.bin", mixed) in {"torn", "partial"}
    assert check_payload("files/f1.bin", data) == "foreign"


@pytest.mark.soak
def test_soak_every_write_kind_under_kills_readers_and_sweeps(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    seconds = float(request.config.getoption("--soak-seconds"))
    seed = _seed()
    print(f"soak seed {seed} (CRASHSAFE_SOAK_SEED={seed} runs it again)")
    plan = SoakPlan(
        seconds=seconds,
        seed=seed,
        # The minimum grows with the budget. Measured 40 s runs on the development
        # machine: 11,647 and 13,720 operations with it nearly idle, 1,014 to 1,398
        # shared with other test runs, 688 beside stress-ng --cpu 4 as well (its
        # fewest of one kind 79, transactions; 38 kills). Short of the minimum,
        # the run goes on past its budget until it is done (SoakPlan.hard_cap).
        min_kills=max(10, int(seconds / 4)),
        min_ops=max(20, int(seconds)),
        min_reads=max(20, int(seconds)),
    )
    result = run_soak(tmp_path, plan)
    _report(f"crashsafe, seed {seed}", result)
    assert result.problems == [], "\n".join(result.summary())
    assert result.damage == [], result.damage
    few = {k: n for k, n in result.reads.items() if n < plan.min_reads}
    assert len(result.reads) >= 7 and not few, f"too few reads checked: {result.reads}"


def test_soak_catches_naive_writers_and_unlocked_counters(tmp_path: Path) -> None:
    """The same soak with files written in place and counters updated without the lock:
    it runs until both are caught (readers see damaged files; counters lose
    acknowledged increments), and the verdict must say so."""
    seed = _seed()
    print(f"broken soak seed {seed}")
    plan = SoakPlan(
        seconds=3, seed=seed, min_kills=3, min_ops=3, min_reads=1, broken=("naive", "unlocked")
    )
    result = run_soak(tmp_path, plan)
    _report(f"broken writers (naive, unlocked), seed {seed}", result)
    assert result.damage, "the readers caught no damaged file of the naive writer"
    assert any(d.startswith("files/") for d in result.damage), result.damage
    lost = [p for p in result.problems if p.startswith("counter ") and "lost" in p]
    assert lost, f"the verdict missed the lost increments: {result.problems}"
    assert not any("minimum of work" in p for p in result.problems), result.problems


# --------------------------------------------------------------------------- found by the soak


@pytest.mark.parametrize("api", ["atomic_write", "transaction"])
def test_a_target_removed_while_its_attributes_are_read_is_written_as_new(
    workdir: Path, api: str
) -> None:
    """The soak's first run: a commit writing ``tx/extra.bin`` raised FileNotFoundError
    naming it, because another commit removed the file between the writer's look
    at the old file and its listing of that file's extended attributes (to carry
    them, ``preserve="all"``). A file that is gone has nothing left to carry: the
    write goes on as over a new file. ``llistxattr`` answers ENOENT here, as the
    kernel does once the file is removed (injected: the race made certain)."""
    target = workdir / "extra.bin"
    target.write_bytes(b"old")
    code = {
        "atomic_write": "report(**attempt(atomic_write, sys.argv[1], b'new'))",
        "transaction": (
            "from crashsafe.transactions import transaction\n"
            "def commit(path):\n"
            "    with transaction(os.path.dirname(path)) as tx:\n"
            "        tx.write(os.path.basename(path), b'new')\n"
            "report(**attempt(commit, sys.argv[1]))"
        ),
    }[api]
    child = run_traced(
        code,
        str(target),
        trace=["llistxattr"],
        inject=[fault("llistxattr", error="ENOENT", when=1)],
    )
    assert child.result == {"raised": None}, child.stderr
    assert [line for line in child.log if "(INJECTED)" in line], child.log
    assert target.read_bytes() == b"new"
