"""sshfs to a private ``sshd`` on 127.0.0.1: a real network filesystem (SFTP) for tests.

The server is our own: its own configuration, host key and authorized key in a
temporary directory, an unused port on loopback, started and stopped by the pid
(and process group) we recorded. It never reads the machine's sshd_config or
keys, and the client never reads ~/.ssh.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.harness.mounts import unmount
from tests.harness.require import require_root, require_tools

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
# sshd refuses to start without its privilege-separation directory, which the
# openssh-server package normally makes at boot (tmpfiles.d). It is made if
# missing and left in place: another sshd (another test's) may be using it.
PRIVSEP_DIR = Path("/run/sshd")
# Bounds that only turn a hang into a failure; no verdict depends on them.
START_BOUND = 60.0


@dataclass(frozen=True)
class Server:
    """A running sshd: where it listens and what a client needs to log in."""

    port: int
    identity: Path
    known_hosts: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait(condition: object, proc: subprocess.Popen[bytes], what: str) -> bool:
    """Poll *condition* while *proc* runs; False if *proc* exited first."""
    assert callable(condition)
    deadline = time.monotonic() + START_BOUND
    while not condition():
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not ready after {START_BOUND} s")
        time.sleep(0.01)
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group *proc* leads (started with a session of its own),
    then SIGKILL it if it lingers; reap *proc*."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def sshd(base: Path) -> Iterator[Server]:
    """Run a private sshd on 127.0.0.1 with its files under *base* (an empty
    directory); root may log in with the generated key only. Stopped on exit,
    with every session process it started."""
    require_root()
    require_tools(SSHD, SFTP_SERVER, "ssh-keygen", "ssh")
    for key in ("host", "user"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / key)], check=True
        )
    shutil.copy(base / "user.pub", base / "authorized_keys")
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    host_key = (base / "host.pub").read_text().split()[:2]
    for _attempt in range(5):  # another process may take the port we found free
        port = _free_port()
        config = base / "sshd_config"
        config.write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host'}\n"
            f"AuthorizedKeysFile {base / 'authorized_keys'}\nPidFile none\n"
            # The keys live under /tmp, which is world-writable: StrictModes would refuse.
            "StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            f"Subsystem sftp {SFTP_SERVER}\n"
        )
        log = open(base / "sshd.log", "ab")  # noqa: SIM115 (closed below)
        try:
            proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        try:
            if not _wait(lambda p=port: _listening(p), proc, "sshd"):
                continue
            known = base / "known_hosts"
            known.write_text(f"[127.0.0.1]:{port} {' '.join(host_key)}\n")
            yield Server(port, base / "user", known)
            return
        finally:
            _stop(proc)
    log_text = (base / "sshd.log").read_text(errors="replace")
    raise AssertionError(f"sshd did not start in 5 attempts:\n{log_text}")


@contextlib.contextmanager
def sshfs(server: Server, remote: Path, mnt: Path) -> Iterator[Path]:
    """Mount *remote* (a directory the server can read) at *mnt* through sshfs,
    in the foreground process we track; unmounted and reaped on exit."""
    require_tools("sshfs")
    options = ",".join(
        (
            f"port={server.port}",
            f"IdentityFile={server.identity}",
            f"UserKnownHostsFile={server.known_hosts}",
            "BatchMode=yes",
            "StrictHostKeyChecking=yes",
        )
    )
    proc = subprocess.Popen(
        ["sshfs", "-f", "-F", "/dev/null", "-o", options, f"root@127.0.0.1:{remote}", str(mnt)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        if not _wait(lambda: os.path.ismount(mnt), proc, "sshfs"):
            assert proc.stderr is not None
            raise AssertionError(f"sshfs exited {proc.returncode}: {proc.stderr.read()!r}")
        yield mnt
    finally:
        if os.path.ismount(mnt):
            unmount(mnt)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _stop(proc)
        if proc.stderr is not None:
            proc.stderr.close()


@contextlib.contextmanager
def sshfs_mount() -> Iterator[Path]:
    """A fresh directory on this machine's root filesystem, seen through sshfs from a
    private sshd on loopback. Yields the mount point; removes everything on exit."""
    base = Path(tempfile.mkdtemp(prefix="crashsafe-sshfs-"))
    try:
        remote, mnt, keys = base / "export", base / "mnt", base / "keys"
        for d in (remote, mnt, keys):
            d.mkdir()
        with sshd(keys) as server, sshfs(server, remote, mnt):
            yield mnt
    finally:
        shutil.rmtree(base, ignore_errors=True)
