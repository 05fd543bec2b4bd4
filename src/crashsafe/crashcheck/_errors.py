"""The errors crashcheck raises."""

from __future__ import annotations

__all__ = ["CrashcheckError"]


class CrashcheckError(Exception):
    """crashcheck could not do what it was asked: strace is missing, tracing is not
    permitted, or a trace could not be read. The message names the program or the line."""
