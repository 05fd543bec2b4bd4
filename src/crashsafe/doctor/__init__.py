"""``crashsafe doctor``: what holds on the filesystem of a directory, measured.

:func:`diagnose` reads the mount (type, options that matter) from
``/proc/self/mountinfo``, the disk's write cache from ``/sys``, measures in a
scratch directory inside the directory what the filesystem does (``O_TMPFILE``,
no-replace and exchange renames, reflink, directory fsync, fsync latency),
and concludes which of crashsafe's guarantees follow there:

* **durable**: a power cut keeps what a call returned;
* **consistent**: after a power cut the old or the new content, maybe the old
  after the call returned (the directory cannot be synced);
* **atomic** only: old or new against a killed process, nothing promised for
  a power cut (tmpfs, or a disk whose write cache is not flushed).

With ``crash_probe=True`` (root only) it also crashes a scratch loop
filesystem of the same type and options with the shutdown ioctl (btrfs, which
has none: a copy of its image) and reports what survived
(:mod:`crashsafe.doctor._crashprobe`). Linux only.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from crashsafe.doctor._report import CrashReport, Finding

__all__ = ["CrashReport", "Diagnosis", "Fact", "Finding", "diagnose"]

# A write and a flush of a disk's cache take at least one round trip to the
# device, and a journaled fsync two dependent ones (data, then the commit
# record): about 20 µs each on the fastest NVMe drives. An fsync that does no
# I/O at all returns in a few µs. Measured on this project's VM (medians of
# 20 writes of 4 KiB + fsync): tmpfs 2 µs; ext4 nobarrier on a loop device,
# whose flushes are dropped, 26 to 130 µs; the virtio disk 3.6 to 4 ms. Under
# 50 µs on a disk is taken as "the cache is not flushed"; a nobarrier mount
# is caught by its option, whatever its time.
FAST_FSYNC_US = 50.0
_LINUX_ONLY = "crashsafe doctor reads /proc and /sys: Linux only"


@dataclass(frozen=True)
class Fact:
    """One line of the diagnosis: a *name*, its *value*, and the *evidence*
    (what was read or measured)."""

    name: str
    value: str
    evidence: str
    group: str = ""  # facts of one group share a line of the text ("supports")
    say_why: bool = False  # the text shows the evidence too


@dataclass(frozen=True)
class Diagnosis:
    """What :func:`diagnose` found for *path*.

    ``guarantee`` is the strongest of ``"durable"``, ``"consistent"`` and
    ``"atomic"`` that holds there (``"none"`` if the filesystem refuses what
    crashsafe needs: then ``refused`` says what). ``facts`` are the lines the
    command prints, in order; ``capabilities`` the probes' yes/no;
    ``conclusions`` each level with yes/no/unverified and why; ``disk`` the
    block device's name, write cache, FUA and loop backing (None without one);
    ``latency_us`` the ``"fsync"`` and ``"dir_fsync"`` times (median, p99, rounds).
    """

    path: str
    fstype: str
    mount_point: str
    source: str
    options: tuple[str, ...]
    facts: tuple[Fact, ...]
    capabilities: dict[str, bool]
    conclusions: dict[str, tuple[str, str]]
    guarantee: str
    refused: str | None
    disk: dict[str, str | bool | None] | None
    latency_us: dict[str, dict[str, float]]
    free_bytes: int
    total_bytes: int
    crash_probe: CrashReport | None = field(default=None)

    @property
    def ok(self) -> bool:
        """False where the filesystem refuses something crashsafe needs."""
        return self.refused is None

    def to_json(self) -> dict[str, Any]:
        """Every fact and its evidence, as one JSON-ready dict."""
        result = asdict(self)
        result["ok"] = self.ok
        result["facts"] = [
            {"name": f.name, "value": f.value, "evidence": f.evidence} for f in self.facts
        ]
        result["conclusions"] = {
            level: {"holds": holds, "why": why} for level, (holds, why) in self.conclusions.items()
        }
        if self.crash_probe is not None:
            result["crash_probe"] = self.crash_probe.to_json()
        return result

    def text(self) -> str:
        """The aligned lines ``crashsafe doctor`` prints: one per fact, the
        capabilities on one line, each conclusion with its reason."""
        rows: list[tuple[str, str]] = []
        groups: dict[str, int] = {}
        for f in self.facts:
            if f.group:
                item = f"{f.name} {f.value}"
                if f.group in groups:
                    name, value = rows[groups[f.group]]
                    rows[groups[f.group]] = (name, f"{value}, {item}")
                else:
                    groups[f.group] = len(rows)
                    rows.append((f.group, item))
            else:
                rows.append((f.name, f"{f.value}: {f.evidence}" if f.say_why else f.value))
        width = max(len(name) for name, _ in rows) + 2
        lines = [f"crashsafe doctor: {self.path}"]
        lines += [f"  {name.ljust(width)}{value}" for name, value in rows]
        if self.crash_probe is not None:
            lines.extend(self.crash_probe.text_lines())
        return "\n".join(lines)


def diagnose(path: str | os.PathLike[str], *, crash_probe: bool = False) -> Diagnosis:
    """Diagnose the filesystem of the directory *path*: its mount, disk,
    capabilities, fsync latency and the crashsafe guarantees that follow.

    A scratch directory inside *path* is created for the probes and removed
    afterwards. Raises the ``OSError`` of ``stat`` (``FileNotFoundError``,
    ``PermissionError``) or ``NotADirectoryError``, naming *path*, if it is not
    a directory this process can reach, ``OSError(ENOTSUP)`` on a
    system other than Linux, and ``PermissionError`` for *crash_probe*
    without root.
    """
    where = os.fspath(path)
    # Written as a test of "win32", so that type checkers skip the rest for Windows.
    if sys.platform == "win32" or not sys.platform.startswith("linux"):  # pragma: no cover
        raise OSError(errno.ENOTSUP, _LINUX_ONLY, where)
    try:
        st = os.stat(where)
    except OSError as e:
        raise type(e)(e.errno, e.strerror, where) from None
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", where)
    if crash_probe and os.geteuid() != 0:
        raise PermissionError(
            errno.EPERM, "--crash-probe mounts a scratch loop filesystem: it needs root", where
        )
    from crashsafe.doctor import _verdict

    return _verdict.build(where, crash_probe=crash_probe)
