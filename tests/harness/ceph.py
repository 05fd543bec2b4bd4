"""A single-node Ceph RGW on 127.0.0.1 for the object-store tests (Debian ``ceph-mon
ceph-osd radosgw``, 16.2 on bookworm).

:func:`ceph_rgw` builds a cluster of one monitor, one OSD and one radosgw under the caller's
*tmp*, creates an S3 user with known keys, and yields a :class:`CephRGW` once a signed S3 call
(ListBuckets) answers. Every daemon runs in the foreground (``-f``) in a process group of its
own, started by this module; :meth:`CephRGW.stop` and :meth:`CephRGW.kill9` signal exactly
those groups, so nothing else on the machine is touched and nothing is left running.

The OSD keeps its data in BlueStore on a sparse file under *tmp* (written with O_DIRECT), and
the monitor in its own RocksDB there too: after :meth:`CephRGW.kill9` and
:meth:`CephRGW.start` the cluster comes back on the same state (memstore, the other choice,
loses everything at a restart).

Why the configuration is what it is (each found the hard way on a machine without IPv6
sockets for Ceph):

- ``monmaptool --add NAME IP:PORT`` with a port other than 6789 records a msgr2 (``v2:``)
  address only. A daemon configured with ``ms bind msgr2 = false`` then has no protocol in
  common with the monitor, tries to connect to an empty address and logs ``NetHandler
  create_socket couldn't create socket (97) Address family not supported by protocol``
  forever: that, not IPv6, is what kept the OSD from booting. Everything here speaks msgr2
  to a ``v2:`` monitor address given with ``--addv``.
- radosgw's built-in defaults are ``ms_mon_client_mode = secure`` and ``auth_client_required
  = cephx``; with authentication off (``auth * required = none``) the secure mode has no
  method to use, the monitor session fails with ``get_initial_auth_request returned -13``
  and radosgw exits after 300 s with "failed to fetch mon config". ``ms mon client mode =
  crc`` fixes it.
- Speed, with no verdict depending on it: the monitor batches map changes for ``paxos
  propose interval`` (1 s), and radosgw creates its pools one map change after another;
  0.1 s takes the build from about 16 s to about 7 s and a first bucket from 2.7 s to 0.3 s.
  A radosgw started beside a restarting OSD first talks to the OSD's old address and only
  asks for a new map when the request is ``objecter timeout`` old (10 s): with 2 s, and
  the paxos change, a restart after :meth:`CephRGW.kill9` takes about 3.5 s, not 11 s.
- The monitor writes its cluster log to /var/log/ceph unless ``mon cluster log file`` says
  otherwise, and crash reports to /var/lib/ceph/crash unless ``crash dir`` does.

The endpoint, ports and process-group helpers are those of tests/harness/s3servers.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from tests.harness.s3servers import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    Endpoint,
    free_ports,
    group_members,
)

if TYPE_CHECKING:
    pass

TOOLS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
"""The programs :func:`ceph_rgw` runs (Debian ``ceph-mon ceph-osd radosgw``)."""


# Bounds that only turn a hang into a failure; no verdict depends on them.
READY_TIMEOUT = 180.0
COMMAND_TIMEOUT = 120.0
STOP_GRACE = 30.0

# The daemons in the order they start; they stop in the reverse order (the OSD tells the
# monitor it is going down, which takes its shutdown timeout if the monitor is gone).
DAEMONS = ("mon", "osd", "rgw")


class CephStartError(RuntimeError):
    """A step of building or starting the cluster failed; the message ends with the tail of
    the log that says why. *exited* is true when a daemon exited (a port taken between
    choosing and binding it, for one), false when a step failed or timed out."""

    def __init__(self, message: str, *, exited: bool = False) -> None:
        super().__init__(message)
        self.exited = exited


def _conf(work: Path, fsid: str, mon_port: int, rgw_port: int, objectstore: str) -> str:
    return f"""\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false
ms bind msgr2 = true
ms mon client mode = crc
auth cluster required = none
auth service required = none
auth client required = none
keyring = {work}/keyring
run dir = {work}/run
admin socket = {work}/run/$name.asok
pid file = {work}/run/$name.pid
log file = {work}/log/$name.log
mon cluster log file = {work}/log/$cluster.$channel.log
crash dir = {work}/crash
mon data = {work}/mon/$cluster-$id
osd data = {work}/osd/$cluster-$id
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
osd crush chooseleaf type = 0
osd objectstore = {objectstore}
memstore device bytes = 1073741824
bluestore block create = true
bluestore block size = 4294967296
osd memory target = 1073741824
objecter tick interval = 1
objecter timeout = 2
paxos propose interval = 0.1
paxos min wait = 0.01

[client.rgw.r]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {work}/rgw
rgw init timeout = 150
"""


class CephRGW:
    """One monitor, one BlueStore OSD and one radosgw, all under *workdir*, on 127.0.0.1.

    :meth:`create` builds and starts it (once); :meth:`stop` ends the daemons (SIGTERM, then
    SIGKILL past a grace period) and :meth:`kill9` crashes some or all of them at once.
    :meth:`start` after either brings the missing daemons back on the same data and ports
    (the OSD's own ports are picked again from Ceph's 6800-7300 range, on 127.0.0.1).

    *objectstore* is ``bluestore`` (a sparse 4 GiB file under *workdir*: survives
    :meth:`kill9`) or ``memstore`` (the OSD's memory: a restarted OSD has lost every object,
    radosgw's own metadata included, and radosgw then timed out initialising, here).
    """

    def __init__(
        self, workdir: Path, *, mon_port: int, rgw_port: int, objectstore: str = "bluestore"
    ) -> None:
        self.workdir = workdir
        self.objectstore = objectstore
        self.mon_port = mon_port
        self.rgw_port = rgw_port
        self.conf = workdir / "ceph.conf"
        self.endpoint = Endpoint(
            "ceph", f"http://127.0.0.1:{rgw_port}", ACCESS_KEY, SECRET_KEY, REGION
        )
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- building -------------------------------------------------------------------------

    def create(self) -> None:
        """Write the configuration, make the monitor and the OSD, start both, start radosgw
        and create the S3 user; return once a signed ListBuckets answers.

        Raises :class:`CephStartError` (after stopping what was started) if a step fails.
        """
        for sub in ("run", "log", "mon", "osd/ceph-0", "rgw", "crash"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (self.workdir / "keyring").touch()
        fsid = str(uuid.uuid4())
        self.conf.write_text(
            _conf(self.workdir, fsid, self.mon_port, self.rgw_port, self.objectstore)
        )
        monmap = self.workdir / "monmap"
        try:
            self._run(
                "monmaptool", "--create", "--fsid", fsid,
                "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]", str(monmap),
            )  # fmt: skip
            self._run(
                "ceph-mon", "-c", str(self.conf), "--mkfs", "-i", "a", "--monmap", str(monmap)
            )
            self._spawn("mon")
            osd_id = self._run(
                "ceph", "-c", str(self.conf), "--connect-timeout", "60", "osd", "create"
            ).strip()
            if osd_id != "0":
                raise CephStartError(f"ceph osd create gave id {osd_id!r}, expected 0")
            self._run("ceph-osd", "-c", str(self.conf), "-i", "0", "--mkfs")
            self._spawn("osd")
            self._spawn("rgw")
            self._run(
                "radosgw-admin", "-c", str(self.conf), "user", "create",
                "--uid", "crashsafe", "--display-name", "crashsafe",
                "--access-key", ACCESS_KEY, "--secret", SECRET_KEY,
            )  # fmt: skip
            self._wait_ready()
        except BaseException:
            self.kill9()
            raise

    def start(self) -> None:
        """Start the daemons that are not running on the existing state; return once a
        signed ListBuckets answers. Raises :class:`CephStartError` (after stopping what was
        started) if a daemon exits first or it is not ready in time."""
        try:
            for name in DAEMONS:
                if name not in self._procs:
                    self._spawn(name)
            self._wait_ready()
        except BaseException:
            self.kill9()
            raise

    # -- running --------------------------------------------------------------------------

    @property
    def pids(self) -> dict[str, int]:
        """The running daemons' pids (each its own process group's id), by role."""
        return {name: proc.pid for name, proc in self._procs.items()}

    def is_ready(self) -> bool:
        """Whether radosgw answers a signed ListBuckets with success."""
        try:
            self.endpoint.client(read_timeout=10).list_buckets()
        except (ClientError, BotoCoreError):
            return False
        return True

    def listening(self) -> set[tuple[str, int]]:
        """The TCP (address, port) pairs the daemons listen on, from ``ss``."""
        pids = set(self.pids.values())
        out = subprocess.run(["ss", "-Hltnp"], check=True, capture_output=True, text=True)
        found = set()
        for line in out.stdout.splitlines():
            if {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids:
                address, _, port = line.split()[3].rpartition(":")
                found.add((address.strip("[]"), int(port)))
        return found

    # -- ending ---------------------------------------------------------------------------

    def stop(self) -> None:
        """SIGTERM each daemon (radosgw, then the OSD, then the monitor), SIGKILL what
        outlives a grace period, reap it. Does nothing for daemons not running."""
        for name in reversed(DAEMONS):
            self._end(name, signal.SIGTERM)

    def kill9(self, *names: str) -> None:
        """SIGKILL the daemons named (``mon``, ``osd``, ``rgw``; all three when none is
        named) at once, then reap them: a crash with no chance to flush anything. Daemons
        not running are skipped; :meth:`start` brings back whichever are down."""
        unknown = set(names) - set(DAEMONS)
        if unknown:
            raise ValueError(f"no ceph daemon {sorted(unknown)}: choose from {DAEMONS}")
        victims = [n for n in (names or DAEMONS) if n in self._procs]
        for name in victims:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._procs[name].pid, signal.SIGKILL)
        for name in victims:
            self._end(name, signal.SIGKILL)

    # -- internals ------------------------------------------------------------------------

    def _argv(self, name: str) -> list[str]:
        conf = ["-f", "-c", str(self.conf)]
        if name == "mon":
            return ["ceph-mon", *conf, "-i", "a"]
        if name == "osd":
            return ["ceph-osd", *conf, "-i", "0"]
        return ["radosgw", *conf, "-n", "client.rgw.r"]

    def _spawn(self, name: str) -> None:
        with open(self.workdir / "log" / f"{name}.out", "ab") as out:
            self._procs[name] = subprocess.Popen(
                self._argv(name),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )

    def _run(self, *argv: str) -> str:
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                cwd=self.workdir,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise CephStartError(
                f"{argv[0]} did not finish in {COMMAND_TIMEOUT} s\n{self._log_tails()}",
                exited=self._any_exited(),
            ) from e
        if done.returncode != 0:
            raise CephStartError(
                f"{' '.join(argv)} exited with {done.returncode}:\n{done.stderr[-3000:]}\n"
                f"{self._log_tails()}",
                exited=self._any_exited(),
            )
        return done.stdout

    def _any_exited(self) -> bool:
        return any(proc.poll() is not None for proc in self._procs.values())

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.is_ready():
            gone = [n for n, p in self._procs.items() if p.poll() is not None]
            if gone or time.monotonic() > deadline:
                why = f"{', '.join(gone)} exited" if gone else "radosgw not ready in time"
                raise CephStartError(
                    f"ceph at {self.endpoint.url}: {why}\n{self._log_tails()}", exited=bool(gone)
                )
            time.sleep(0.1)

    def _log_tails(self) -> str:
        tails = []
        # The daemons' own logs and outputs; the cluster and audit logs say little here.
        names = ("mon.a", "osd.0", "client.rgw.r", "mon", "osd", "rgw")
        logs = [self.workdir / "log" / f"{n}.{ext}" for n in names for ext in ("log", "out")]
        for log in (path for path in logs if path.exists()):
            text = log.read_text(errors="replace")
            tails.append(f"== {log.name}\n{text[-1500:]}")
        return "\n".join(tails)

    def _end(self, name: str, sig: signal.Signals) -> None:
        proc = self._procs.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_GRACE)
        # The group's id stays the leader's pid until every member is gone, so this
        # signals nothing but ours.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + STOP_GRACE
        while members := group_members(proc.pid):
            if time.monotonic() > deadline:
                raise AssertionError(f"ceph {name}: process group {proc.pid} still has {members}")
            time.sleep(0.02)


@contextlib.contextmanager
def ceph_rgw(tmp: Path, *, objectstore: str = "bluestore", attempts: int = 3) -> Iterator[CephRGW]:
    """A fresh single-node Ceph RGW under *tmp* (its own new directory there), ready for
    signed S3 calls with :data:`ACCESS_KEY`/:data:`SECRET_KEY`; on exit every daemon it
    started is stopped and its directory removed. *objectstore* as for :class:`CephRGW`.

    A build whose daemon exits before it is ready (a port taken between choosing and
    binding it) is started over on new ports, up to *attempts* builds in all. Raises
    :class:`CephStartError` if none succeeds; the message carries the daemons' log tails.
    """
    for attempt in range(attempts):
        work = tmp / f"ceph-{uuid.uuid4().hex[:8]}"
        work.mkdir()
        mon_port, rgw_port = free_ports(2)
        cluster = CephRGW(work, mon_port=mon_port, rgw_port=rgw_port, objectstore=objectstore)
        try:
            cluster.create()
        except CephStartError as e:
            shutil.rmtree(work, ignore_errors=True)
            if not e.exited or attempt == attempts - 1:
                raise
            continue
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        try:
            yield cluster
        finally:
            cluster.stop()
            shutil.rmtree(work, ignore_errors=True)
        return
