"""From the mount, the disk and the probes to the lines doctor prints and the
guarantees that follow, each with its reason."""

from __future__ import annotations

import os
import sys

assert sys.platform != "win32", "crashsafe.doctor is for Linux"

from crashsafe import _platform  # noqa: E402
from crashsafe.doctor import FAST_FSYNC_US, Diagnosis, Fact  # noqa: E402
from crashsafe.doctor._mounts import (  # noqa: E402
    MEMORY_TYPES,
    NETWORK_TYPES,
    Disk,
    Mount,
    disk_of,
    mount_of,
    overlay_upper,
)
from crashsafe.doctor._probes import Measured, measure  # noqa: E402

_CAPABILITY_NAMES = {
    "o_tmpfile": "O_TMPFILE",
    "hard_link": "hard links",
    "rename_noreplace": "no-replace rename",
    "rename_exchange": "exchange rename",
    "reflink": "reflink",
    "modes": "file modes",
    "dir_fsync": "directory fsync",
}
# FUSE servers known to implement no fsyncdir: the kernel then answers every
# directory fsync with 0, having done nothing (fc->no_fsyncdir).
_NO_FSYNCDIR = {"fuse.sshfs": "sshfs implements no fsyncdir"}


_FUA = {True: "yes", False: "no", None: "unknown"}


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _option_facts(mount: Mount) -> list[Fact]:
    """The options of *mount* that change what a crash leaves."""
    facts = []
    if mount.read_only:
        facts.append(Fact("mounted", "read-only", "option ro"))
    if mount.fstype == "ext4":
        data = mount.option("data")
        facts.append(
            Fact(
                "ext4 data=",
                data or "ordered",
                f"option data={data}" if data else "no data= option: the default, ordered",
            )
        )
        no_da = mount.option("noauto_da_alloc") is not None
        facts.append(
            Fact(
                "ext4 auto_da_alloc",
                "off" if no_da else "on",
                "option noauto_da_alloc: a rename without fsync may leave an empty file"
                if no_da
                else "no noauto_da_alloc option: a rename over a file flushes its data first",
                say_why=no_da,
            )
        )
    if mount.option("nobarrier") is not None or mount.option("barrier") == "0":
        facts.append(
            Fact("barriers", "off", "option nobarrier/barrier=0: no cache flushes", say_why=True)
        )
    return facts


def _mount_facts(mount: Mount, upper: Mount | None) -> list[Fact]:
    facts = [
        Fact(
            "filesystem",
            f"{mount.fstype} on {mount.source}, mounted at {mount.mount_point}",
            "/proc/self/mountinfo",
        )
    ]
    facts += _option_facts(mount)
    if mount.fstype == "overlay":
        where = f"{upper.fstype} at {upper.mount_point}" if upper else "unknown"
        facts.append(Fact("overlay upper", where, f"upperdir={mount.option('upperdir')}"))
        if upper is not None:  # where the data goes: its options are what count
            facts += _option_facts(upper)
    if mount.fstype.startswith("fuse"):
        subtype = mount.fstype.partition(".")[2] or mount.option("subtype") or "unknown"
        facts.append(Fact("FUSE subtype", subtype, f"type {mount.fstype}: a user-space server"))
    if mount.fstype in NETWORK_TYPES:
        facts.append(Fact("network", "yes", f"type {mount.fstype}: the server decides"))
    return facts


def _disk_facts(disk: Disk | None, kind: str) -> list[Fact]:
    if disk is None:
        return [Fact("disk", "none", f"{kind}: no block device behind it")]
    facts = [
        Fact(
            "write cache",
            f"{disk.write_cache or 'unknown'} (FUA {_FUA[disk.fua]}) on {disk.name}",
            disk.evidence,
        )
    ]
    if disk.backing_file is not None:
        on = disk.backing_mount
        lives = f"{on.fstype} at {on.mount_point}" if on else "unknown"
        under = disk_of(on) if on else None
        if under is not None:  # where the loop device's flushes end up
            lives += f" ({under.name}: {under.write_cache or 'unknown'})"
        facts.append(Fact("loop backing", f"{disk.backing_file} on {lives}", "loop/backing_file"))
    return facts


def _conclude(
    mount: Mount, kind: Mount, disk: Disk | None, measured: Measured
) -> dict[str, tuple[str, str]]:
    """yes/no/unverified for each level, and why, in one line each."""
    if measured.refused is not None:
        why = f"the filesystem refused {measured.refused}"
        return {level: ("no", why) for level in ("atomic", "consistent", "durable")}
    atomic = ("yes", "rename() over an existing file worked: readers see old or new")
    fstype = kind.fstype
    backing = disk.backing_mount if disk else None
    fsync = measured.fsync
    # A loop device's flush is an fsync of its backing file: barriers off
    # there lose it as surely as here.
    barriers_off = any(
        m.option("nobarrier") is not None or m.option("barrier") == "0"
        for m in (kind, backing)
        if m is not None
    )
    consistent: tuple[str, str]
    if fstype in MEMORY_TYPES:
        consistent = ("no", f"{fstype} lives in memory: a power cut loses everything")
    elif backing is not None and backing.fstype in MEMORY_TYPES:
        consistent = ("no", f"loop device backed by a file on {backing.fstype}: in memory")
    elif barriers_off and (disk is None or disk.write_cache != "write through"):
        consistent = ("no", "barriers off with a write-back cache: fsync does not flush it")
    elif fsync is not None and fsync.median_us < FAST_FSYNC_US:
        consistent = (
            "no",
            f"fsync took {fsync.median_us:.0f} µs (median), under {FAST_FSYNC_US:.0f} µs: "
            "faster than a disk flush; the cache is likely not flushed",
        )
    elif fstype in NETWORK_TYPES or fstype.startswith("fuse"):
        consistent = ("unverified", f"{fstype}: the server's durability is not visible here")
    else:
        consistent = ("yes", "fsync waits for the disk: old or new survives a power cut")
    durable: tuple[str, str]
    if fstype in _NO_FSYNCDIR:
        durable = (
            "no",
            f"{_NO_FSYNCDIR[fstype]}: a directory fsync returns 0 and does nothing; "
            "a returned write may be old after a cut",
        )
    elif consistent[0] != "yes":
        durable = (consistent[0], consistent[1])
    elif not measured.probes["dir_fsync"].supported:
        durable = ("no", "directory fsync unsupported: a returned write may be old after a cut")
    else:
        durable = ("yes", "fsync of file and directory both reach the disk")
    return {"atomic": atomic, "consistent": consistent, "durable": durable}


def _oddities(where: str, measured: Measured) -> list[Fact]:
    """What crashsafe does differently here: create-only, modes, readers racing renames."""
    probes = measured.probes
    facts = []
    if not (probes["hard_link"].supported or probes["rename_noreplace"].supported):
        facts.append(
            Fact(
                "create-only",
                "not possible",
                'neither link() nor renameat2(RENAME_NOREPLACE): mode="x" and '
                "overwrite=False raise UnsupportedByFilesystemError (transactions still commit)",
                say_why=True,
            )
        )
    if not probes["modes"].supported:
        facts.append(Fact("perm=", "refused", probes["modes"].evidence, say_why=True))
    if _platform.renames_hide_files(where):
        facts.append(
            Fact(
                "readers",
                "retry",
                "FUSE or NFS: a reader racing a rename can find the file missing "
                "(ENOENT, ESTALE); crashsafe's readers try 10 times over 0.213 s",
                say_why=True,
            )
        )
    return facts


def _disk_json(disk: Disk) -> dict[str, str | bool | None]:
    on = disk.backing_mount
    return {
        "name": disk.name,
        "write_cache": disk.write_cache,
        "fua": disk.fua,
        "backing_file": disk.backing_file,
        "backing_fstype": on.fstype if on else None,
        "backing_mount_point": on.mount_point if on else None,
    }


def build(where: str, *, crash_probe: bool) -> Diagnosis:
    """The diagnosis of the existing directory *where* (see :func:`diagnose`)."""
    mount = mount_of(where)
    upper = overlay_upper(mount) if mount.fstype == "overlay" else None
    kind = upper if upper is not None else mount  # where the data really goes
    disk = disk_of(kind)
    facts = _mount_facts(mount, upper)
    facts += _disk_facts(disk, kind.fstype)
    measured = measure(where)
    for key, probe in measured.probes.items():
        value = "yes" if probe.supported else "no"
        facts.append(Fact(_CAPABILITY_NAMES[key], value, probe.evidence, group="supports"))
    for latency in (measured.fsync, measured.dir_fsync):
        if latency is not None:
            flag = ""
            if (
                latency.what.endswith("+ fsync")
                and latency.median_us < FAST_FSYNC_US
                and kind.fstype not in MEMORY_TYPES
            ):
                flag = f"  IMPLAUSIBLY FAST for a disk (< {FAST_FSYNC_US:.0f} µs)"
            facts.append(
                Fact(
                    "fsync latency" if latency.what.endswith("+ fsync") else "dir fsync latency",
                    f"median {latency.median_us:.0f} µs, p99 {latency.p99_us:.0f} µs{flag}",
                    f"{latency.rounds} rounds of {latency.what} in a scratch directory",
                )
            )
    if measured.refused is None:
        facts += _oddities(where, measured)
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    facts.append(
        Fact("free space", f"{_size(free)} of {_size(st.f_blocks * st.f_frsize)}", "statvfs")
    )
    if measured.refused is not None:
        facts.append(Fact("REFUSED", measured.refused, "crashsafe cannot write here", say_why=True))
    conclusions = _conclude(mount, kind, disk, measured)
    for level in ("durable", "consistent", "atomic"):
        holds, why = conclusions[level]
        facts.append(Fact(level, holds, why, say_why=True))
    guarantee = next(
        (lv for lv in ("durable", "consistent", "atomic") if conclusions[lv][0] == "yes"), "none"
    )
    facts.append(Fact("guarantee", guarantee, ""))
    report = None
    if crash_probe:
        from crashsafe.doctor._crashprobe import run

        report = run(kind)
    return Diagnosis(
        path=where,
        fstype=mount.fstype,
        mount_point=mount.mount_point,
        source=mount.source,
        options=mount.options,
        facts=tuple(facts),
        capabilities={k: p.supported for k, p in measured.probes.items()},
        conclusions=conclusions,
        guarantee=guarantee,
        refused=measured.refused,
        disk=None if disk is None else _disk_json(disk),
        latency_us={
            key: {"median": lat.median_us, "p99": lat.p99_us, "rounds": lat.rounds}
            for key, lat in (("fsync", measured.fsync), ("dir_fsync", measured.dir_fsync))
            if lat is not None
        },
        free_bytes=free,
        total_bytes=st.f_blocks * st.f_frsize,
        crash_probe=report,
    )
