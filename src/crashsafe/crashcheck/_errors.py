"""The one error crashcheck raises for what it cannot do."""

from __future__ import annotations

__all__ = ["CrashcheckError"]


class CrashcheckError(Exception):
    """crashcheck could not give an answer: the program could not be traced, the trace
    holds what a trace cannot show, or the check is wrong (it fails on the directories
    before the run, or after the whole run). The message says which, and names the
    user's path or command."""
