"""The one error crashcheck raises for what it cannot do."""

from __future__ import annotations

__all__ = ["CrashcheckError"]


class CrashcheckError(Exception):
    """crashcheck could not give an answer: the program could not be traced (strace is
    missing, tracing is not permitted), the trace holds what a trace cannot show (a write
    through a shared memory map), the program failed, or the check is wrong (it fails on
    the directories before the run, or after the whole run). The message says which, and
    names the user's program, path or command."""
