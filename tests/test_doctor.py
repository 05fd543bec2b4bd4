"""``crashsafe doctor``: what it says about a filesystem is what the test set up.

Every filesystem here is real: loop-mounted ext4 (default and
``noauto_da_alloc``, and ``nobarrier``), xfs and btrfs, a tmpfs, overlayfs on a
tmpfs and on xfs. The facts are checked against tools that do not share its
code (findmnt, xfs_info, stat -f, df), the crash probe's findings against what
each filesystem is known to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from crashsafe.doctor import Diagnosis, diagnose
from crashsafe.doctor._crashprobe import REPEATS
from crashsafe.doctor._crashprobe import run as run_crash_probe
from crashsafe.doctor._mounts import Disk, Mount
from crashsafe.doctor._probes import Latency, Measured, Probe
from crashsafe.doctor._verdict import _conclude
from tests import children
from tests.harness.mounts import loop_mount, overlay, remount, run, tmpfs
from tests.harness.require import require_root, require_tools

CLI = [sys.executable, "-m", "crashsafe", "doctor"]
JSON_KEYS = {
    "path",
    "fstype",
    "mount_point",
    "source",
    "options",
    "facts",
    "capabilities",
    "conclusions",
    "guarantee",
    "refused",
    "disk",
    "latency_us",
    "free_bytes",
    "total_bytes",
    "crash_probe",
    "ok",
}
CAPABILITIES = {
    "o_tmpfile",
    "hard_link",
    "rename_noreplace",
    "rename_exchange",
    "reflink",
    "modes",
}


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, check=False)


def fact(d: Diagnosis, name: str) -> str:
    return next(f.value for f in d.facts if f.name == name)


def images_in_memory() -> bool:
    """Whether loop images (made in the temporary directory) live in memory."""
    kind = run("stat", "-f", "-c", "%T", tempfile.gettempdir()).strip()
    return kind in ("tmpfs", "ramfs")


def assert_scratch_removed(mnt: Path) -> None:
    assert [n for n in os.listdir(mnt) if n.startswith(".crashsafe-doctor-")] == []


@contextlib.contextmanager
def filesystem(label: str) -> Iterator[Path]:
    if label == "tmpfs":
        with tmpfs(size_kb=16 << 10) as mnt:
            yield mnt
        return
    fstype, _, options = label.partition("-")
    require_tools(f"mkfs.{fstype}")
    with loop_mount(fstype, options=options) as mnt:
        yield mnt


# label: (type, reflink)
FILESYSTEMS = {
    "ext4": ("ext4", False),
    "ext4-noauto_da_alloc": ("ext4", False),
    "xfs": ("xfs", True),
    "btrfs": ("btrfs", True),
    "tmpfs": ("tmpfs", False),
}


@pytest.mark.parametrize("label", FILESYSTEMS)
def test_facts_match_the_filesystem_set_up(label: str) -> None:
    require_root()
    fstype, reflinks = FILESYSTEMS[label]
    with filesystem(label) as mnt:
        d = diagnose(mnt)
        found = run("findmnt", "-n", "-o", "FSTYPE,SOURCE", "--mountpoint", str(mnt)).split()
        avail = int(run("df", "-B1", "--output=avail", str(mnt)).split()[-1])
        backing = cache = ""
        if found[1].startswith("/dev/loop"):  # asked while the device is attached
            backing = run("losetup", "-n", "-O", "BACK-FILE", found[1]).strip()
            cache = Path(f"/sys/block/{found[1][5:]}/queue/write_cache").read_text().strip()
        assert_scratch_removed(mnt)
    assert d.ok and d.refused is None
    assert [d.fstype, d.source] == found == [fstype, d.source]
    assert d.mount_point == str(mnt)
    assert fact(d, "filesystem").startswith(f"{fstype} on {d.source}")
    # The scratch files the probes made are gone again: free space as df sees it.
    assert abs(d.free_bytes - avail) <= 8 << 20
    assert d.capabilities["o_tmpfile"] is True  # ext4, xfs, btrfs and tmpfs all have it
    assert d.capabilities["rename_noreplace"] is True
    assert d.capabilities["dir_fsync"] is True
    assert d.capabilities["reflink"] is reflinks
    fsync = d.latency_us["fsync"]
    assert 0 < fsync["median"] <= fsync["p99"] and fsync["rounds"] == 20
    if fstype == "tmpfs":
        assert fact(d, "disk") == "none"
        assert d.guarantee == "atomic"
        assert "power cut loses everything" in d.conclusions["durable"][1]
        return
    device = Path(d.source).name
    assert device.startswith("loop")
    assert cache and fact(d, "write cache").startswith(cache)
    assert backing.endswith("/img")
    assert fact(d, "loop backing").startswith(f"{backing} on ")
    assert d.disk is not None
    assert (d.disk["name"], d.disk["write_cache"], d.disk["backing_file"]) == (
        device,
        cache,
        backing,
    )
    assert d.guarantee == ("atomic" if images_in_memory() else "durable")
    if fstype == "ext4":
        noauto = "noauto_da_alloc" in label
        assert ("noauto_da_alloc" in d.options) is noauto
        assert fact(d, "ext4 auto_da_alloc") == ("off" if noauto else "on")
        assert fact(d, "ext4 data=") == "ordered"


def test_xfs_reflink_is_mkfs_default_and_found() -> None:
    """Debian 12's xfsprogs makes reflink=1 by default; doctor's FICLONE finds it."""
    require_root()
    require_tools("mkfs.xfs", "xfs_info")
    with loop_mount("xfs") as mnt:
        info = run("xfs_info", str(mnt))
        d = diagnose(mnt)
    assert "reflink=1" in info
    assert d.capabilities["reflink"] is True


def test_ext4_without_barriers_is_only_atomic() -> None:
    require_root()
    with loop_mount("ext4", options="nobarrier") as mnt:
        d = diagnose(mnt)
        cache = Path(f"/sys/block/{Path(d.source).name}/queue/write_cache").read_text().strip()
    assert fact(d, "barriers") == "off"
    if cache == "write back":  # a loop device's, on Linux 6.18
        assert d.guarantee == "atomic"
        assert "barriers off" in d.conclusions["consistent"][1]


@pytest.mark.parametrize("upper", ["tmpfs", "xfs", "ext4-noauto_da_alloc"])
def test_overlay_is_judged_by_its_upper_layer(upper: str) -> None:
    """Facts, options, guarantee and the crash probe's filesystem are the upper layer's."""
    require_root()
    upper_fs = upper.partition("-")[0]
    with filesystem(upper) as under, overlay(under) as mnt:
        d = diagnose(mnt, crash_probe=True)
        assert_scratch_removed(mnt)
    assert d.fstype == "overlay"
    assert d.crash_probe is not None and d.crash_probe.fstype == upper_fs
    assert bool(d.crash_probe.findings) is (upper_fs != "tmpfs")
    assert fact(d, "overlay upper") == f"{upper_fs} at {under}"
    if upper_fs == "ext4":
        assert fact(d, "ext4 auto_da_alloc") == "off"
        assert d.crash_probe.options == "noauto_da_alloc"
    if upper_fs == "tmpfs":
        assert d.guarantee == "atomic"
        assert "tmpfs lives in memory" in d.conclusions["consistent"][1]
    else:
        assert fact(d, "write cache")  # the upper layer's disk
        assert d.guarantee == ("atomic" if images_in_memory() else "durable")


def _measured(fsync_us: float) -> Measured:
    probes = {k: Probe(True, "") for k in [*CAPABILITIES, "dir_fsync"]}
    return Measured(None, probes, Latency("write 4 KiB + fsync", 20, fsync_us, fsync_us), None)


def test_an_implausibly_fast_fsync_on_a_disk_means_only_atomic() -> None:
    """The rule, on its own: under 50 µs on a disk is no flush; tmpfs is judged as memory."""
    disk_fs = Mount("/data", "ext4", "/dev/vda", "254:0", ("rw",))
    disk = Disk("vda", "write back", False, "")
    fast = _conclude(disk_fs, disk_fs, disk, _measured(12.0))
    assert fast["consistent"][0] == "no" and "under 50 µs" in fast["consistent"][1]
    assert fast["durable"][0] == "no" and fast["atomic"][0] == "yes"
    slow = _conclude(disk_fs, disk_fs, disk, _measured(800.0))
    assert slow["durable"] == ("yes", "fsync of file and directory both reach the disk")
    nfs = Mount("/n", "nfs4", "srv:/x", "0:50", ("rw",))
    assert _conclude(nfs, nfs, None, _measured(800.0))["durable"][0] == "unverified"


def test_cli_json_has_every_fact_with_its_evidence() -> None:
    require_root()
    with tmpfs(size_kb=16 << 10) as mnt:
        done = doctor("--json", str(mnt))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert set(out) == JSON_KEYS
    assert out["ok"] is True and out["fstype"] == "tmpfs" and out["guarantee"] == "atomic"
    assert out["disk"] is None and set(out["latency_us"]) == {"fsync", "dir_fsync"}
    assert set(out["capabilities"]) == {*CAPABILITIES, "dir_fsync"}
    assert all(set(f) == {"name", "value", "evidence"} for f in out["facts"])
    assert all(f["evidence"] for f in out["facts"] if f["name"] != "guarantee")
    assert {k: v["holds"] for k, v in out["conclusions"].items()} == {
        "durable": "no",
        "consistent": "no",
        "atomic": "yes",
    }
    assert all(v["why"] for v in out["conclusions"].values())


def test_cli_text_is_aligned_lines_for_the_current_directory_by_default() -> None:
    require_root()
    with tmpfs(size_kb=16 << 10) as mnt:
        done = subprocess.run(CLI, capture_output=True, text=True, cwd=mnt, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    first, *rows = done.stdout.splitlines()
    assert first == "crashsafe doctor: ."
    assert rows[0].split()[:2] == ["filesystem", "tmpfs"]
    assert 8 <= len(rows) <= 16  # read in ten seconds
    # The value column starts at one offset on every line.
    starts = {len(r) - len(r[2:].split("  ", 1)[1].lstrip()) for r in rows}
    assert len(starts) == 1
    assert any(r.split()[:2] == ["guarantee", "atomic"] for r in rows)


def test_cli_missing_or_not_a_directory_is_bad_usage_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    done = doctor(str(missing))
    assert done.returncode == 2
    assert f"{missing}: No such file or directory" in done.stderr
    a_file = tmp_path / "file"
    a_file.write_bytes(b"x")
    done = doctor("--json", str(a_file))
    assert done.returncode == 2 and str(a_file) in done.stderr
    assert json.loads(done.stdout)["exit_status"] == 2


def test_cli_read_only_filesystem_exits_1() -> None:
    require_root()
    with loop_mount("ext4", size_mb=64) as mnt:
        remount(mnt, "ro")
        done = doctor(str(mnt))
    assert done.returncode == 1, done.stdout
    assert "EROFS" in done.stdout and str(mnt) in done.stderr
    assert ["guarantee", "none"] in [row.split() for row in done.stdout.splitlines()]


def test_cli_crash_probe_without_root_is_bad_usage() -> None:
    python, path = children.nobody_python()
    where = tempfile.gettempdir()  # a directory nobody can reach
    done = subprocess.run(
        [*children.NOBODY, python, "-m", "crashsafe", "doctor", "--crash-probe", where],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "needs root" in done.stderr and where in done.stderr


def _leftover_scratch() -> list[str]:
    """Loop devices and mounts of the crash probe that are still there."""
    loops = run("losetup", "-n", "-O", "BACK-FILE")
    mounts = Path("/proc/self/mountinfo").read_text()
    return [line for line in (loops + mounts).splitlines() if "crashsafe-doctor-crash-" in line]


@pytest.mark.parametrize("label", ["ext4", "ext4-noauto_da_alloc", "xfs"])
def test_crash_probe_findings(label: str) -> None:
    """What each filesystem left after a real shutdown, each probe repeated 5 times.

    Stable, and asserted: an fsynced new file is there without a directory
    fsync (ext4 and xfs log the new entry with the inode); a rename without
    fsync left an empty file on xfs and on ext4 noauto_da_alloc in every trial
    here, never on default ext4 (auto_da_alloc flushes the data at the rename).
    """
    require_root()
    fstype, _, options = label.partition("-")
    with filesystem(label) as mnt:
        d = diagnose(mnt, crash_probe=True)
    report = d.crash_probe
    assert report is not None and report.fstype == fstype
    assert report.options == options
    print(f"\n{label}:\n" + "\n".join(report.text_lines()))
    seen = {f.name: f.outcomes for f in report.findings}
    assert all(sum(outcomes.values()) == REPEATS for outcomes in seen.values())
    assert seen["fsynced_new_file"] == {"new": REPEATS}
    rename = seen["rename_without_fsync"]
    if label == "ext4":
        assert set(rename) <= {"old", "new"} and "empty" not in seen["truncate_then_write"]
    else:
        assert rename.get("empty", 0) >= 1
    if label == "ext4-noauto_da_alloc":
        assert seen["truncate_then_write"].get("empty", 0) >= 1
    assert set(seen["append_without_fsync"]) <= {"old", "old+new", "old+zeros"}
    # Without a journal commit the rename itself may be lost, never made empty or torn.
    assert set(seen["rename_uncommitted"]) <= {"old", "new"}
    # ext4 and xfs commit their whole journal on fsync: the earlier create comes along.
    assert seen["create_then_rename"] == {"both": REPEATS}
    assert _leftover_scratch() == []


def test_btrfs_is_cut_by_a_copy_of_its_image() -> None:
    """btrfs has no shutdown ioctl on Linux 6.18: each cut is a copy of the loop image.

    Stable, and asserted: the fsynced new file survives. Seen in every trial
    here (printed with -s): an fsync after a rename keeps the rename but not an
    earlier create in the same directory (btrfs logs only the fsynced inode).
    """
    require_root()
    with filesystem("btrfs") as mnt:
        done = doctor("--json", "--crash-probe", str(mnt))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["crash_probe"]
    print("\nbtrfs:", json.dumps({f["name"]: f["outcomes"] for f in report["findings"]}))
    seen = {f["name"]: f["outcomes"] for f in report["findings"]}
    assert seen["fsynced_new_file"] == {"new": REPEATS}
    assert report["method"].startswith("shutdown") or "copy of the loop image" in report["method"]
    assert set(seen["create_then_rename"]) <= {"both", "rename, not the create"}
    assert _leftover_scratch() == []


def test_a_cut_by_copy_sees_what_the_shutdown_ioctl_sees() -> None:
    """The copy method, checked against the ioctl on xfs, where the two must agree:
    the committed rename empty, the uncommitted one old, the fsynced file there."""
    require_root()
    xfs = Mount("/x", "xfs", "/dev/x", "0:0", ("rw",))
    by_ioctl = run_crash_probe(xfs, repeats=2)
    by_copy = run_crash_probe(xfs, repeats=2, by_copy=True)
    assert by_ioctl.method.startswith("shutdown") and "copy" in by_copy.method
    assert [f.outcomes for f in by_copy.findings] == [f.outcomes for f in by_ioctl.findings]
    assert by_copy.findings[0].outcomes == {"empty": 2}
    assert _leftover_scratch() == []


def test_crash_probe_on_tmpfs_needs_none() -> None:
    require_root()
    with filesystem("tmpfs") as mnt:
        done = doctor("--json", "--crash-probe", str(mnt))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["crash_probe"]
    assert report["findings"] == [] and "power cut loses everything" in report["note"]


def test_mount_point_with_a_space_is_found(tmp_path: Path) -> None:
    """mountinfo escapes a space as \\040; the mount is still the one found."""
    require_root()
    where = tmp_path / "a dir"
    where.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where))
    try:
        d = diagnose(where)
    finally:
        run("umount", str(where))
    assert d.mount_point == str(where) and d.fstype == "tmpfs"


def test_public_names_and_no_cost_to_import_crashsafe() -> None:
    """``crashsafe.doctor`` exports what it says; ``import crashsafe`` does not load it."""
    import crashsafe.doctor

    assert sorted(crashsafe.doctor.__all__) == [
        "CrashReport",
        "Diagnosis",
        "Fact",
        "Finding",
        "diagnose",
    ]
    assert all(hasattr(crashsafe.doctor, name) for name in crashsafe.doctor.__all__)
    code = (
        "import sys, crashsafe; print(any(m.startswith('crashsafe.doctor') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _doctor_with_fsync_error(
    where: Path, error: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """doctor under strace, its first fsync (the directory fsync probe) failing with *error*."""
    require_tools("strace")
    inject = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=fsync"]
    inject += ["-e", f"inject=fsync:error={error}:when=1"]
    return subprocess.run(
        [*inject, *CLI, *args, str(where)], capture_output=True, text=True, timeout=120, check=False
    )


def test_a_directory_fsync_refused_with_einval_means_consistent_at_best(workdir: Path) -> None:
    """What some FUSE and network filesystems answer; here injected with strace."""
    done = _doctor_with_fsync_error(workdir, "EINVAL", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["capabilities"]["dir_fsync"] is False
    assert "dir_fsync" not in out["latency_us"]
    assert out["conclusions"]["durable"]["holds"] == "no"
    assert "directory fsync unsupported" in out["conclusions"]["durable"]["why"]
    assert out["guarantee"] == ("atomic" if images_in_memory() else "consistent")
    assert os.listdir(workdir) == []


def test_an_io_error_during_the_probes_exits_1_and_cleans_up(workdir: Path) -> None:
    done = _doctor_with_fsync_error(workdir, "EIO", "--json")
    assert done.returncode == 1
    assert f"{workdir}: Input/output error" in done.stderr
    assert json.loads(done.stdout)["exit_status"] == 1
    assert os.listdir(workdir) == []


def test_help_names_the_options_and_exit_statuses() -> None:
    done = doctor("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for needed in ("DIR", "--json", "--crash-probe", "exit status: 0 probed", "2 bad usage"):
        assert needed in text
