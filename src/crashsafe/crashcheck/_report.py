"""What an exploration found: the :class:`Report` and its :class:`Vulnerability` list."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["CrashPoint", "Report", "Vulnerability"]

Kind = Literal["atomicity", "ordering", "durability"]
Family = Literal["prefix", "one-left-out", "torn", "exhaustive"]


@dataclass(frozen=True)
class CrashPoint:
    """A crash just after system call number *syscall* (1-based in the trace; 0 is before
    the first operation), which strace showed as *call*."""

    syscall: int
    call: str

    def to_dict(self) -> dict[str, Any]:
        return {"syscall": self.syscall, "call": self.call}


@dataclass(frozen=True)
class Vulnerability:
    """One way a crash breaks the program, as ALICE names them.

    *kind*: ``"atomicity"`` (the operations persisted in order, the last one maybe in
    part, and the state is broken: the program stopped inside a group of operations it
    needs together, or one write was torn), ``"ordering"`` (broken only because a later
    operation persisted without the earlier one in *lost*), ``"durability"`` (losing the
    operation in *lost* breaks the state by itself, although the program had said what it
    did or a sync should have covered it). *persisted*: the operations not yet durable at
    the crash point that the state kept; *lost*: those it did not (for a group of
    prefix points, the operations the program needed together). *family*: which family
    of states showed it.
    """

    kind: Kind
    crash_point: CrashPoint
    persisted: tuple[str, ...]
    lost: tuple[str, ...]
    check_output: str
    family: Family

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "crash_point": self.crash_point.to_dict(),
            "persisted": list(self.persisted),
            "lost": list(self.lost),
            "check_output": self.check_output,
            "family": self.family,
        }


@dataclass
class Report:
    """The result of an exploration.

    *states_enumerated* counts every crash state the families (or the exhaustive
    enumeration) produced, repeats included; *states_checked* the distinct ones the check
    ran on (a state is identical to another when its files and the standard output it is
    told are). *stopped_early* is True when the exhaustive enumeration reached its cap
    before the end: states beyond it were not looked at.
    """

    states_enumerated: int = 0
    states_checked: int = 0
    vulnerabilities: list[Vulnerability] = field(default_factory=list)
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON values."""
        return {
            "states_enumerated": self.states_enumerated,
            "states_checked": self.states_checked,
            "stopped_early": self.stopped_early,
            "vulnerabilities": [v.to_dict() for v in self.vulnerabilities],
        }

    def to_json(self) -> str:
        """The report as one JSON object: ``{"states_checked": N, "vulnerabilities":
        [{"kind", "crash_point": {"syscall", "call"}, "persisted", "lost",
        "check_output", "family"}], ...}``."""
        return json.dumps(self.to_dict(), ensure_ascii=False)
