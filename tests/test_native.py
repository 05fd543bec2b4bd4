"""The native pieces of the POSIX backend and their pure-Python fallback.

Reached only through the documented switch of ``crashsafe._platform._native``:
the ``CRASHSAFE_NATIVE`` environment variable, read by ``probe()``. What a
write uses is observed from outside: its status reads in an strace log, its
signal blocks by a profile hook that sees calls of the Python-level
``signal.pthread_sigmask`` (the C-level ``_signal`` one is no Python frame).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from crashsafe._platform import _native
from tests.harness.checks import leftovers
from tests.harness.inject import run_python, run_traced

REPO = Path(__file__).resolve().parent.parent

WRITES = """
import signal as signal_module
from crashsafe._platform import _native

fallback_calls = 0

def profile(frame, event, arg):
    global fallback_calls
    if event == "call" and frame.f_code is signal_module.pthread_sigmask.__code__:
        fallback_calls += 1

os.access("/.crashsafe-test-start", os.F_OK)
sys.setprofile(profile)  # the first write runs the probe by itself
for data in (b"one", b"two", b"three"):
    atomic_write(sys.argv[1], data)
    os.access("/.crashsafe-test-write", os.F_OK)
sys.setprofile(None)
report(pieces=sorted(_native.probe()), fallback_calls=fallback_calls)
"""

FALLBACK_STATUS = ["newfstatat", "newfstatat"]  # the target, then the staged file
STATX = ["statx", "statx"]
# A write blocks signals twice, each time with three calls (read, block, restore).
FALLBACK_SIGNALS = 3 * 2 * 3


@pytest.mark.parametrize(
    ("setting", "pieces", "reads", "fallback_calls"),
    [
        ("statx,warmup,_signal,libc_sigmask", ["_signal", "libc_sigmask", "statx", "warmup"],
         [FALLBACK_STATUS, STATX, STATX], 0),
        ("statx,warmup,_signal", ["_signal", "statx", "warmup"],
         [FALLBACK_STATUS, STATX, STATX], 0),
        ("none", [], [FALLBACK_STATUS] * 3, FALLBACK_SIGNALS),
        ("", [], [FALLBACK_STATUS] * 3, FALLBACK_SIGNALS),
        ("statx", ["statx"], [STATX] * 3, FALLBACK_SIGNALS),
        ("statx,_signal", ["_signal", "statx"], [STATX] * 3, 0),
        ("_signal", ["_signal"], [FALLBACK_STATUS] * 3, 0),
        ("libc_sigmask", ["libc_sigmask"], [FALLBACK_STATUS] * 3, 0),
        # With the warm-up, the first write's blocks take the fallback.
        ("warmup,libc_sigmask", ["libc_sigmask", "warmup"], [FALLBACK_STATUS] * 3, 6),
        # The warm-up defers the ctypes pieces; without them there is nothing to defer.
        ("warmup", [], [FALLBACK_STATUS] * 3, FALLBACK_SIGNALS),
    ],
    ids=["all", "all-but-libc", "none", "empty", "statx", "statx+_signal", "_signal", "libc",
         "warmup+libc", "warmup-alone"],
)  # fmt: skip
def test_the_probes_choice_is_what_the_writes_use(
    workdir: Path, setting: str, pieces: list[str], reads: list[list[str]], fallback_calls: int
) -> None:
    """The pieces the probe reports are the ones the writes use: statx or stat for
    the status reads (with the warm-up, stat for a process's first write), and
    the C library's pthread_sigmask, CPython's ``_signal`` or the fallback's
    ``signal.pthread_sigmask`` for the signal blocks. Every setting writes the
    same files with the same modes."""
    target = workdir / "target"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    child = run_traced(
        WRITES,
        str(target),
        trace=["statx", "newfstatat", "access"],
        env={"CRASHSAFE_NATIVE": setting},
    )
    assert child.result == {"pieces": pieces, "fallback_calls": fallback_calls}, child.stderr
    start = next(i for i, line in enumerate(child.log) if "crashsafe-test-start" in line)
    per_write: list[list[str]] = [[]]
    for line in child.log[start + 1 :]:
        if "crashsafe-test-write" in line:
            per_write.append([])
        elif str(workdir) in line:
            per_write[-1].append(line.split()[1].split("(")[0])
    assert per_write[:-1] == reads, child.log
    assert target.read_bytes() == b"three"
    assert os.stat(target).st_mode & 0o7777 == 0o640
    assert leftovers(workdir) == []


def test_an_unknown_piece_is_refused_by_name(workdir: Path) -> None:
    """A misspelt piece fails the first write with a ValueError that names it,
    before anything is created, instead of silently measuring something else."""
    target = workdir / "target"
    child = run_python(
        "report(**attempt(atomic_write, sys.argv[1], b'new'))",
        str(target),
        env={"CRASHSAFE_NATIVE": "statx,statz"},
    )
    result = child.result
    assert result["raised"] == "ValueError", child.stderr
    assert "statz" in result["message"] and "CRASHSAFE_NATIVE" in result["message"]
    assert not target.exists()
    assert leftovers(workdir) == []


def test_unset_means_every_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the variable, the probe chooses every piece this interpreter has
    (all of them here: CPython on Linux with glibc's statx)."""
    monkeypatch.delenv("CRASHSAFE_NATIVE", raising=False)
    try:
        assert _native.probe() == frozenset(_native.PIECES)
    finally:
        monkeypatch.undo()
        _native.probe()


# The core write, mode and interrupt tests, run again on the fallback. Not the
# tests that assert the pieces' own syscalls (test_permissions's statx tests).
CORE = [
    "tests/test_api.py",
    "tests/test_modes.py",
    "tests/test_errors.py::test_keyboard_interrupt_never_tears_and_leaves_no_temp",
    "tests/test_errors.py::test_interrupt_during_the_rename_still_reports_committed",
    "tests/test_errors.py::test_cli_interrupt_after_rename_does_not_claim_target_unchanged",
]


def test_the_core_tests_pass_on_the_pure_python_fallback() -> None:
    """With ``CRASHSAFE_NATIVE=none`` (every status read a stat, every signal block
    through ``signal.pthread_sigmask``), the core tests pass as they do natively."""
    done = subprocess.run(
        # The fallback is about syscalls, not filesystems: pytest's directory only.
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--no-cov",
            "--fs",
            "tmp",
            *CORE,
        ],
        cwd=REPO,
        env={**os.environ, "CRASHSAFE_NATIVE": "none"},
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed is not None and int(passed[1]) > 600, done.stdout[-2000:]
