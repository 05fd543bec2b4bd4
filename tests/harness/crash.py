"""The crash harness in one import, for the tests outside the crash test files.

The machinery lives in modules named for what they do; this module only
gathers the names other tests use (``crash.kill9_loop``, ``crash.TX_WRITER``...):

* :mod:`tests.harness.payloads`: self-checking contents and setup writes;
* :mod:`tests.harness.kill9`: a forked writer SIGKILLed right after each call;
* :mod:`tests.harness.power_cut`: a power cut (or a kill) right after every
  syscall of a writer program from ``tests/writers/``;
* :mod:`tests.harness.traces`: reading the strace log of such a run;
* :mod:`tests.harness.generations`: transaction fixtures and what a crash left.
"""

from __future__ import annotations

from tests.harness.generations import (
    TX_FILES,
    TX_NAMES,
    TX_SIZE,
    TX_TOGGLE,
    TxState,
    classify_generation,
    exposed_entries,
    generation_data,
    inspect_transaction,
    prepare_generation,
    protocol_leftovers,
    put_generation,
    read_generation,
    tx_writer_args,
    write_generation,
)
from tests.harness.kill9 import KillPoint, TortureResult, kill9_loop, kill9_torture
from tests.harness.payloads import classify, durable_put, payload, read_or_none
from tests.harness.power_cut import (
    MODES,
    WRITERS,
    PowerCutRun,
    Trial,
    describe,
    kill_every_syscall,
    power_cut_every_syscall,
    require_power_cut,
    violations,
    writeback_off,
)
from tests.harness.traces import Syscall, commit_index, copy_method, dir_sync_index

TX_WRITER = WRITERS / "tx_commit.py"
TX_BROKEN_WRITER = WRITERS / "tx_broken.py"

__all__ = [
    "MODES",
    "TX_BROKEN_WRITER",
    "TX_FILES",
    "TX_NAMES",
    "TX_SIZE",
    "TX_TOGGLE",
    "TX_WRITER",
    "WRITERS",
    "KillPoint",
    "PowerCutRun",
    "Syscall",
    "TortureResult",
    "Trial",
    "TxState",
    "classify",
    "classify_generation",
    "commit_index",
    "copy_method",
    "describe",
    "dir_sync_index",
    "durable_put",
    "exposed_entries",
    "generation_data",
    "inspect_transaction",
    "kill9_loop",
    "kill9_torture",
    "kill_every_syscall",
    "payload",
    "power_cut_every_syscall",
    "prepare_generation",
    "protocol_leftovers",
    "put_generation",
    "read_generation",
    "read_or_none",
    "require_power_cut",
    "tx_writer_args",
    "violations",
    "write_generation",
    "writeback_off",
]
