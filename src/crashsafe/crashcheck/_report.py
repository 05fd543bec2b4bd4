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
    before the end: states beyond it were not looked at. *program* names what ran,
    *syscalls* and *operations* count what its trace held and what of it touched the
    directories; *seconds* is the time the whole exploration took (0 if not measured).
    """

    states_enumerated: int = 0
    states_checked: int = 0
    vulnerabilities: list[Vulnerability] = field(default_factory=list)
    stopped_early: bool = False
    program: str = ""
    syscalls: int = 0
    operations: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON values."""
        return {
            "syscalls": self.syscalls,
            "operations": self.operations,
            "states_enumerated": self.states_enumerated,
            "states_checked": self.states_checked,
            "stopped_early": self.stopped_early,
            "seconds": round(self.seconds, 3),
            "vulnerabilities": [v.to_dict() for v in self.vulnerabilities],
        }

    def text(self) -> str:
        """The report for a person: what was explored, then each vulnerability."""
        took = f" in {self.seconds:.1f} s" if self.seconds else ""
        lines = [
            f"crashcheck: {self.program}: {self.operations} operations on the directories "
            f"in {self.syscalls} system calls; {self.states_enumerated} crash states, "
            f"{self.states_checked} distinct ones checked{took}"
        ]
        if self.stopped_early:
            lines.append("stopped at the state cap: later states were not looked at")
        found = self.vulnerabilities
        if not found:
            lines.append("no vulnerabilities: the check passed in every crash state")
            return "\n".join(lines)
        lines.append(f"{len(found)} {'vulnerability' if len(found) == 1 else 'vulnerabilities'}:")
        for n, v in enumerate(found, 1):
            lines.append("")
            lines.append(
                f"{n}. {v.kind}: a crash after system call {v.crash_point.syscall}, "
                f"{v.crash_point.call} ({v.family} state)"
            )
            lines.append(f"   lost:      {', '.join(v.lost) or '-'}")
            lines.append(f"   persisted: {', '.join(v.persisted) or '-'}")
            said = v.check_output.strip().replace("\n", "\n              ")
            lines.append(f"   check:     {said or '(no output)'}")
        return "\n".join(lines)

    def to_json(self) -> str:
        """The report as one JSON object: ``{"states_checked": N, "vulnerabilities":
        [{"kind", "crash_point": {"syscall", "call"}, "persisted", "lost",
        "check_output", "family"}], ...}``."""
        return json.dumps(self.to_dict(), ensure_ascii=False)
