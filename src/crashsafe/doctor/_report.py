"""What ``--crash-probe`` saw: plain data, the same on every platform."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Finding:
    """One persistence probe, repeated: the *question*, what the program did
    (*steps*), and how often each outcome was seen after the crash and remount
    (``{"old": 2, "empty": 1}``)."""

    name: str
    question: str
    steps: str
    outcomes: dict[str, int]

    @property
    def trials(self) -> int:
        return sum(self.outcomes.values())


@dataclass(frozen=True)
class CrashReport:
    """The crash probes run on a scratch filesystem of type *fstype* mounted
    with *options*, crashed by *method*; *note* says why none (or not all) ran."""

    fstype: str
    options: str
    note: str
    findings: tuple[Finding, ...]
    method: str = ""

    def to_json(self) -> dict[str, Any]:
        result = asdict(self)
        for finding, out in zip(self.findings, result["findings"], strict=True):
            out["trials"] = finding.trials
        return result

    def text_lines(self) -> list[str]:
        lines = [f"  crash probe ({self.fstype}{', ' + self.options if self.options else ''}):"]
        if self.note:
            lines.append(f"    {self.note}")
        if self.findings:
            lines.append(
                "    each: its steps in a fresh directory (journal committed: another file "
                f"fsynced), cut by {self.method}, remount, read"
            )
        for f in self.findings:
            seen = ", ".join(f"{k} {v}" for k, v in sorted(f.outcomes.items()))
            lines.append(f"    {f.question:<48} {seen} (of {f.trials})")
        return lines
