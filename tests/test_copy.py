"""atomic_copy, and validate= on every write path: what they promise, on real filesystems.

What this file proves, with nothing mocked (errors come from full filesystems,
from the source really changing under the copy, or from strace's syscall
fault injection into an unmodified child process):

* The data moves the fastest way the files allow, and byte-exactly: a reflink
  on xfs that shares every block (no space used, ``filefrag`` says
  ``shared``); ``copy_file_range`` within ext4 and tmpfs; ``sendfile`` across
  filesystems; a read/write loop with a digest, for a source without a
  descriptor, and when the kernel refuses the fast paths, also mid-copy (the
  next method continues at the same offset).
* Sources: a path (a symlink is followed), an open file copied whole from
  offset 0 whatever its position and buffer, a BytesIO, a pipe from its
  position; every wrong kind of source raises the documented error and
  changes nothing.
* Verification: a source truncated, appended to, rewritten, replaced or
  removed during the copy (mutated for real from the progress callback,
  mid-copy) and a validator's rejection raise VerificationError; validators
  see the staged content at offset 0, read-only, also through AtomicFile,
  atomic_open (binary, text, append) and atomic_write.
* Progress, permissions (a new dst takes the source's rwx bits exactly,
  never setuid, setgid or sticky), errors (a real ENOSPC from the space
  reservation before any data moved, a real ENOSPC mid-copy, injected ones),
  and memory: 1 GiB copied or streamed with a bounded peak RSS.

Every failure leaves the old dst byte-for-byte and mode-for-mode intact, and
no temporary file behind (the directory holds exactly what it held).
"""

from __future__ import annotations

import contextlib
import errno
import gzip as gziplib
import hashlib
import io
import json as jsonlib
import os
import random
import shutil
import sqlite3
import stat
import struct
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from crashsafe import (
    AtomicFile,
    VerificationError,
    atomic_copy,
    atomic_open,
    atomic_write,
    validators,
)
from tests.children import run as run_child
from tests.harness.capabilities import capabilities
from tests.harness.checks import entries, leftovers, umask
from tests.harness.inject import fault, run_python, run_traced
from tests.harness.mounts import loop_mount, run, tmpfs
from tests.harness.require import require_root, require_tools

MiB = 1 << 20
STEP = 16 * MiB  # the largest step of copy_file_range and sendfile
TAIL = 12345  # an odd tail, so that no size is a multiple of a step
OLD = b"old destination content, complete\n"
OLD_MODE = 0o640
_BLOCK = random.Random(20240601).randbytes(MiB)

# ---------------------------------------------------------------------------
# helpers


def fill(path: Path, size: int, seed: int = 0) -> Path:
    """Write *size* bytes to *path*, no two MiB alike: a misplaced chunk shows."""
    with open(path, "wb") as f:
        for offset in range(0, size, MiB):
            chunk = struct.pack("<QQ", seed, offset) + _BLOCK[16:]
            f.write(chunk[: size - offset])
    return path


def sha(path: Path, name: str = "sha256") -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, name).hexdigest()


def assert_same(copy: Path, original: Path) -> None:
    """Byte-exact, compared a MiB at a time (a failure names the first bad MiB)."""
    assert os.path.getsize(copy) == os.path.getsize(original), (copy, original)
    with open(copy, "rb") as a, open(original, "rb") as b:
        offset = 0
        while True:
            x, y = a.read(MiB), b.read(MiB)
            if x != y:
                pytest.fail(f"{copy} differs from {original} in the MiB at offset {offset}")
            if not x:
                return
            offset += len(x)


def same_fs_method(directory: Path) -> str:
    """How atomic_copy moves data within *directory*'s filesystem: a reflink where the
    filesystem clones (btrfs, xfs with reflink=1), else copy_file_range."""
    return "reflink" if capabilities(directory)["reflink"] else "copy_file_range"


def make_dst(directory: Path, name: str = "dst") -> Path:
    """An existing destination with known bytes and a known, non-default mode."""
    directory.mkdir(parents=True, exist_ok=True)
    dst = directory / name
    dst.write_bytes(OLD)
    dst.chmod(OLD_MODE)
    return dst


def assert_intact(dst: Path) -> None:
    st = os.lstat(dst)
    assert stat.S_ISREG(st.st_mode), f"{dst} is no longer a regular file"
    assert dst.read_bytes() == OLD, f"{dst} changed: {dst.read_bytes()[:40]!r}"
    mode = stat.S_IMODE(st.st_mode)
    if mode != OLD_MODE:  # where modes are not kept (exFAT, ntfs-3g): the mode every file shows
        assert mode == capabilities(dst.parent).mode_shown(OLD_MODE), f"{dst} mode is {mode:o}"


def assert_only(directory: Path, *names: str) -> None:
    """*directory* holds exactly *names*: no temporary file, no probe, nothing else."""
    assert leftovers(directory) == [], leftovers(directory)
    assert entries(directory) == sorted(names), f"{directory} holds {entries(directory)}"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def free_blocks(path: Path) -> int:
    os.sync()
    return os.statvfs(path).f_bfree


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Recorder:
    """A progress callback that records its calls and can act on the first one."""

    def __init__(self, on_first: Callable[[], object] | None = None) -> None:
        self.calls: list[tuple[int, int | None]] = []
        self.on_first = on_first

    def __call__(self, done: int, total: int | None) -> None:
        self.calls.append((done, total))
        if len(self.calls) == 1 and self.on_first is not None:
            self.on_first()

    def assert_sane(self, size: int | None, copied: int, max_gap: int | None = STEP) -> None:
        """Non-decreasing, never more than a step apart, the same total, ending at the end."""
        assert self.calls, "progress was never called"
        dones = [done for done, _ in self.calls]
        assert dones == sorted(dones), f"progress went backwards: {dones}"
        gaps = [b - a for a, b in zip([0, *dones], dones, strict=False)]
        if max_gap is not None:
            assert max(gaps) <= max_gap, f"progress skipped more than {max_gap} bytes: {dones}"
        assert {total for _, total in self.calls} == {size}, self.calls
        assert self.calls[-1] == (copied, size), self.calls[-3:]


@dataclass
class Seen:
    position: int
    size: int
    sha256: str
    readable: bool
    writable: bool
    write_error: str | None


class Probe:
    """A validator that accepts, after recording what it was handed."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []

    def __call__(self, f: BinaryIO) -> None:
        position = f.tell()
        digest = hashlib.sha256()
        size = 0
        while chunk := f.read(MiB):
            digest.update(chunk)
            size += len(chunk)
        try:
            f.write(b"validators must not write")
        except (io.UnsupportedOperation, OSError) as e:
            write_error: str | None = type(e).__name__
        else:
            write_error = None
        self.seen.append(
            Seen(position, size, digest.hexdigest(), f.readable(), f.writable(), write_error)
        )

    def assert_saw(self, data_sha256: str, size: int) -> None:
        assert len(self.seen) == 1, self.seen
        seen = self.seen[0]
        assert seen.position == 0, f"validator started at offset {seen.position}"
        assert (seen.size, seen.sha256) == (size, data_sha256), "validator saw other content"
        assert seen.readable and not seen.writable, seen
        assert seen.write_error is not None, "the validator's file accepted a write"


# The child process's copy: argv is src, dst, keyword arguments as JSON.
CHILD_COPY = """
kwargs = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
try:
    r = crashsafe.atomic_copy(sys.argv[1], sys.argv[2], **kwargs)
except BaseException as e:
    report(**describe(e))
else:
    report(raised=None, bytes=r.bytes, method=r.method)
"""


# ---------------------------------------------------------------------------
# real filesystems


@pytest.fixture(scope="module")
def xfs_source() -> Iterator[Path]:
    """A 256 MiB file on a loop xfs with reflink, written and fsynced once."""
    require_root()
    require_tools("mkfs.xfs", "xfs_info", "filefrag")
    with loop_mount("xfs", size_mb=1024) as mnt:
        info = run("xfs_info", str(mnt))
        assert "reflink=1" in info, f"mkfs.xfs made no reflink filesystem:\n{info}"
        src = fill(mnt / "src", 256 * MiB, seed=1)
        with open(src, "rb+") as f:
            os.fsync(f.fileno())
        yield src


@contextlib.contextmanager
def places(workdir: Path, *kinds: str) -> Iterator[dict[str, Path]]:
    """One directory per kind of filesystem: "ext4" (the VM's disk, *workdir*),
    "loop-ext4" (a fresh loop mount) or "tmpfs"."""
    with contextlib.ExitStack() as stack:
        found: dict[str, Path] = {}
        for kind in kinds:
            if kind in found:
                continue
            if kind == "ext4":
                found[kind] = workdir
            elif kind == "loop-ext4":
                found[kind] = stack.enter_context(loop_mount("ext4", size_mb=128))
            else:
                found[kind] = stack.enter_context(tmpfs(size_kb=128 * 1024))
        yield found


# ---------------------------------------------------------------------------
# methods, byte-exact


def test_reflink_on_xfs_shares_every_block_and_takes_no_space(
    xfs_source: Path, staging: str
) -> None:
    mnt = xfs_source.parent
    work = mnt / f"reflink-{staging}"
    dst = make_dst(work)
    frsize = os.statvfs(mnt).f_frsize
    used_before = os.statvfs(mnt).f_blocks - free_blocks(mnt)
    started = time.perf_counter()
    result = atomic_copy(xfs_source, dst)
    seconds = time.perf_counter() - started
    used = (os.statvfs(mnt).f_blocks - free_blocks(mnt) - used_before) * frsize
    print(f"\nreflink of 256 MiB on xfs ({staging}): {seconds * 1000:.1f} ms, {used} bytes used")

    assert result == (256 * MiB, "reflink", None)
    assert_same(dst, xfs_source)
    assert mode_of(dst) == OLD_MODE, "an existing dst keeps its mode"
    # O(1): the copy's data takes no new blocks (a real copy would take 256 MiB).
    assert used < 8 * MiB, f"the reflinked copy used {used} bytes of new space"
    extents = [
        line for line in run("filefrag", "-v", str(dst)).splitlines() if line.strip()[:1].isdigit()
    ]
    assert extents, "filefrag listed no extents"
    assert all("shared" in line for line in extents), "\n".join(extents)

    # Progress and validators on the reflink path: one call, the whole content.
    probe, progress = Probe(), Recorder()
    assert atomic_copy(xfs_source, dst, validate=probe, progress=progress).method == "reflink"
    progress.assert_sane(256 * MiB, 256 * MiB, max_gap=None)
    probe.assert_saw(sha(xfs_source), 256 * MiB)
    assert_only(work, "dst")
    dst.unlink()
    work.rmdir()


METHODS = [
    # (source's filesystem, destination's filesystem, method expected)
    ("ext4", "ext4", "copy_file_range"),
    ("loop-ext4", "loop-ext4", "copy_file_range"),
    ("tmpfs", "tmpfs", "copy_file_range"),
    ("tmpfs", "ext4", "sendfile"),  # copy_file_range says EXDEV across filesystems
    ("ext4", "tmpfs", "sendfile"),
]


@pytest.mark.parametrize(("src_fs", "dst_fs", "method"), METHODS)
def test_copy_uses_the_fastest_method_and_is_byte_exact(
    src_fs: str, dst_fs: str, method: str, workdir: Path, staging: str
) -> None:
    with places(workdir, src_fs, dst_fs) as where:
        src_dir, dst_dir = where[src_fs] / "a", where[dst_fs] / "b"
        src_dir.mkdir()
        size = 2 * STEP + TAIL
        src = fill(src_dir / "src", size, seed=2)
        dst = make_dst(dst_dir)
        probe = Probe()
        result = atomic_copy(src, dst, validate=probe)
        if src_fs == dst_fs == "ext4":  # the test's own directory, on any filesystem
            method = same_fs_method(workdir)
        assert result.method == method
        assert result.bytes == size
        assert result.digest is None
        assert_same(dst, src)
        assert mode_of(dst) == OLD_MODE
        probe.assert_saw(sha(src), size)
        assert_only(dst_dir, "dst")
        assert_only(src_dir, "src")


@pytest.mark.parametrize("name", ["sha256", "blake2b", "sha512", "sha1", "md5"])
def test_digest_is_computed_in_the_read_write_pass(name: str, workdir: Path, staging: str) -> None:
    size = 5 * MiB + TAIL
    src = fill(workdir / "src", size, seed=3)
    dst = make_dst(workdir)
    result = atomic_copy(src, dst, digest=name)
    assert result.method == "read/write"
    assert result.bytes == size
    assert result.digest == sha(src, name) == sha(dst, name)
    assert_same(dst, src)
    assert_only(workdir, "dst", "src")


# Kernel refusals injected into an unmodified child: the next method takes
# over, at the offset the previous one reached.
FALLBACKS = {
    "no-fast-path": (
        [fault("copy_file_range", error="ENOSYS"), fault("sendfile", error="EINVAL")],
        "read/write",
    ),
    "copy_file_range-stops-mid-copy": (
        [fault("copy_file_range", error="EXDEV", when="2+")],
        "sendfile",
    ),
    "both-stop-mid-copy": (
        [
            fault("copy_file_range", error="EOPNOTSUPP", when="2+"),
            fault("sendfile", error="EINVAL", when="2+"),
        ],
        "read/write",
    ),
}


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_refused_fast_paths_fall_back_at_the_same_offset(
    case: str, workdir: Path, staging: str
) -> None:
    inject, method = FALLBACKS[case]
    size = 2 * STEP + 3 * MiB + TAIL
    src = fill(workdir / "src", size, seed=4)
    dst = make_dst(workdir)
    child = run_traced(
        CHILD_COPY,
        str(src),
        str(dst),
        trace=["copy_file_range", "sendfile", "pwrite64"],
        inject=inject,
        staging=staging,
    )
    assert child.result == {"raised": None, "bytes": size, "method": method}, child.stderr
    assert child.injected(), child.log
    if case != "no-fast-path":
        assert "(INJECTED)" not in child.calls("copy_file_range")[0], "no step moved data first"
    assert_same(dst, src)
    assert mode_of(dst) == OLD_MODE
    assert_only(workdir, "dst", "src")


@pytest.mark.parametrize("errname", ["ENOSPC", "EIO"])
def test_real_error_mid_copy_is_raised_not_fallen_back_from(
    errname: str, workdir: Path, staging: str
) -> None:
    src = fill(workdir / "src", 2 * STEP + TAIL, seed=5)
    dst = make_dst(workdir)
    child = run_traced(
        CHILD_COPY,
        str(src),
        str(dst),
        trace=["copy_file_range", "sendfile", "pwrite64", "write"],
        inject=[fault("copy_file_range", error=errname, when=2)],
        staging=staging,
    )
    result = child.result
    assert result["raised"] == "OSError", (result, child.stderr)
    assert result["errno"] == getattr(errno, errname)
    assert len(child.injected()) == 1
    assert child.count("sendfile") == 0, "a real error was taken for 'try the next method'"
    assert child.count("pwrite64") == 0
    assert_intact(dst)
    assert_only(workdir, "dst", "src")


# ---------------------------------------------------------------------------
# sources


@pytest.mark.parametrize("digest", [None, "sha256"])
def test_just_written_temporary_file_is_copied_whole_from_offset_0(
    digest: str | None, workdir: Path, staging: str
) -> None:
    data = _BLOCK * 3 + b"a short tail still in the write buffer"
    dst = make_dst(workdir)
    with tempfile.TemporaryFile(dir=workdir) as src:
        src.write(data[: 3 * MiB])
        src.write(data[3 * MiB :])  # smaller than the buffer: not yet in the kernel
        assert src.tell() == len(data)
        probe = Probe()
        result = atomic_copy(src, dst, digest=digest, validate=probe)
    assert dst.read_bytes() == data
    assert result.bytes == len(data)
    assert result.method == (same_fs_method(workdir) if digest is None else "read/write")
    if digest is not None:
        assert result.digest == hashlib.sha256(data).hexdigest()
    probe.assert_saw(hashlib.sha256(data).hexdigest(), len(data))
    assert_only(workdir, "dst")


def test_bytesio_is_copied_whole_by_read_write(workdir: Path, staging: str) -> None:
    data = _BLOCK * 2 + b"tail"
    src = io.BytesIO(data)
    src.seek(12345)  # a position that must not matter
    dst = make_dst(workdir)
    progress = Recorder()
    result = atomic_copy(src, dst, digest="blake2b", progress=progress)
    assert (result.bytes, result.method) == (len(data), "read/write")
    assert result.digest == hashlib.blake2b(data).hexdigest()
    assert dst.read_bytes() == data
    progress.assert_sane(len(data), len(data))
    assert_only(workdir, "dst")


def _pipe_writer(w: int, data: bytes) -> threading.Thread:
    def feed() -> None:
        try:
            with open(w, "wb") as f:
                f.write(data)
        except BrokenPipeError:
            pass

    thread = threading.Thread(target=feed)
    thread.start()
    return thread


@pytest.mark.parametrize("digest", [None, "sha256"])
def test_pipe_is_copied_from_its_position_with_unknown_total(
    digest: str | None, workdir: Path
) -> None:
    header = b"HEADER, read by the caller\n"
    payload = _BLOCK * 3 + b"end of stream"
    r, w = os.pipe()
    writer = _pipe_writer(w, header + payload)
    dst = make_dst(workdir)
    progress = Recorder()
    try:
        with open(r, "rb") as src:
            assert src.read(len(header)) == header
            result = atomic_copy(src, dst, digest=digest, progress=progress)
    finally:
        writer.join()
    assert dst.read_bytes() == payload
    assert (result.bytes, result.method) == (len(payload), "read/write")
    progress.assert_sane(None, len(payload))
    assert mode_of(dst) == OLD_MODE
    assert_only(workdir, "dst")


def test_nonblocking_pipe_without_data_yet_is_never_published_short(workdir: Path) -> None:
    """A non-blocking stream with nothing to read *yet* is not at its end.

    Its read returns None; treating that as end of stream publishes a prefix
    as if it were the complete copy. Raising (dst intact) or waiting for the
    rest are both acceptable; a published prefix is not.
    """
    first, second = b"a" * 1000, b"b" * 1000
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.write(w, first)

    def finish() -> None:
        time.sleep(0.5)
        try:
            os.write(w, second)
        except BrokenPipeError:
            pass  # the copy already ended and closed the reading end
        finally:
            os.close(w)

    writer = threading.Thread(target=finish)
    writer.start()
    dst = make_dst(workdir)
    try:
        with open(r, "rb") as src:
            try:
                atomic_copy(src, dst)
            except Exception:  # any refusal is fine, if nothing was published
                assert_intact(dst)
            else:
                got = dst.read_bytes()
                assert got == first + second, (
                    f"published {len(got)} of the stream's {len(first + second)} bytes "
                    "as a complete copy"
                )
    finally:
        writer.join()
    assert_only(workdir, "dst")


def _gzip_source(tmp: Path, data: bytes, stack: contextlib.ExitStack) -> BinaryIO:
    (tmp / "s.gz").write_bytes(gziplib.compress(data))
    return stack.enter_context(gziplib.open(tmp / "s.gz", "rb"))  # type: ignore[return-value]


def _zip_source(tmp: Path, data: bytes, stack: contextlib.ExitStack) -> BinaryIO:
    with zipfile.ZipFile(tmp / "s.zip", "w") as zf:
        zf.writestr("member", data)
    archive = stack.enter_context(zipfile.ZipFile(tmp / "s.zip"))
    return stack.enter_context(archive.open("member"))  # type: ignore[return-value]


def _tar_source(tmp: Path, data: bytes, stack: contextlib.ExitStack) -> BinaryIO:
    with tarfile.open(tmp / "s.tar", "w") as tf:
        info = tarfile.TarInfo("member")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    archive = stack.enter_context(tarfile.open(tmp / "s.tar"))  # noqa: SIM115 - it is
    member = archive.extractfile("member")
    assert member is not None
    return stack.enter_context(member)


def _buffered_source(tmp: Path, data: bytes, stack: contextlib.ExitStack) -> BinaryIO:
    return stack.enter_context(io.BufferedReader(io.BytesIO(data)))  # type: ignore[arg-type]


BINARY_STREAMS: dict[str, Callable[[Path, bytes, contextlib.ExitStack], BinaryIO]] = {
    "gzip.open": _gzip_source,
    "zipfile member": _zip_source,
    "tarfile member": _tar_source,
    "BufferedReader(BytesIO)": _buffered_source,
}


@pytest.mark.parametrize("kind", list(BINARY_STREAMS))
def test_binary_streams_of_the_standard_library_are_accepted(
    kind: str, workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Each of these reads bytes, so each is "a readable binary file object", and
    what is copied is what it reads (not the bytes of a file underneath)."""
    data = b"member content " * 5000
    dst = make_dst(workdir)
    with contextlib.ExitStack() as stack:
        src = BINARY_STREAMS[kind](tmp_path_factory.mktemp("archives"), data, stack)
        result = atomic_copy(src, dst)
    assert dst.read_bytes() == data
    assert (result.bytes, result.method) == (len(data), "read/write")
    assert_only(workdir, "dst")


def test_symlink_source_is_followed(workdir: Path, staging: str) -> None:
    real = fill(workdir / "real", 3 * MiB + TAIL, seed=6)
    real.chmod(0o750)
    (workdir / "link").symlink_to("real")
    dst = workdir / "dst"
    result = atomic_copy(workdir / "link", dst)
    assert result.bytes == 3 * MiB + TAIL
    assert_same(dst, real)
    assert mode_of(dst) == 0o750, "the mode is the linked file's, not the link's"
    assert not dst.is_symlink()
    assert_only(workdir, "dst", "link", "real")


def _text_file(tmp: Path) -> Any:
    (tmp / "t").write_text("text")
    return open(tmp / "t", encoding="utf-8")


def _closed_file(tmp: Path) -> Any:
    (tmp / "c").write_bytes(b"closed")
    f = open(tmp / "c", "rb")  # noqa: SIM115 - closed right here
    f.close()
    return f


BAD_OBJECTS: dict[str, tuple[Callable[[Path], Any], type[BaseException]]] = {
    "text file": (_text_file, TypeError),
    "StringIO": (lambda tmp: io.StringIO("text"), TypeError),
    "closed file": (_closed_file, ValueError),
    "int": (lambda tmp: 3, TypeError),
    "None": (lambda tmp: None, TypeError),
}


@pytest.mark.parametrize("kind", list(BAD_OBJECTS))
def test_wrong_source_objects_raise_and_change_nothing(
    kind: str, workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    make, error = BAD_OBJECTS[kind]
    dst = make_dst(workdir)
    fds = open_fds()
    src = make(tmp_path_factory.mktemp("sources"))
    try:
        with pytest.raises(error) as info:
            atomic_copy(src, dst)
    finally:
        if hasattr(src, "close"):
            src.close()
    assert type(info.value) is error, info.value
    assert open_fds() == fds, "a descriptor leaked"
    assert_intact(dst)
    assert_only(workdir, "dst")


@pytest.mark.parametrize("how", ["ab", "wb-on-O_WRONLY"])
def test_write_only_source_is_refused_naming_the_source(
    how: str, workdir: Path, staging: str
) -> None:
    """Not an EBADF from the copy's first read, which named the destination."""
    src = fill(workdir / "src", MiB + TAIL, seed=30)
    dst = make_dst(workdir)
    fds = open_fds()
    if how == "ab":
        f: Any = open(src, "ab")  # noqa: SIM115 - closed below
    else:
        f = os.fdopen(os.open(src, os.O_WRONLY), "wb")
    name = repr(str(src)) if how == "ab" else f"<file descriptor {f.fileno()}>"
    with f, pytest.raises(io.UnsupportedOperation) as info:
        atomic_copy(f, dst)
    message = str(info.value)
    assert message == f"src {name} is not open for reading (mode {f.mode!r}): open it with 'rb'"
    assert str(dst) not in message
    assert "Errno" not in message
    assert isinstance(info.value, OSError) and isinstance(info.value, ValueError)
    assert open_fds() == fds
    assert_intact(dst)
    assert os.path.getsize(src) == MiB + TAIL
    assert_only(workdir, "dst", "src")


def test_source_read_error_names_the_source_not_the_destination(
    workdir: Path, staging: str
) -> None:
    """A real read() of the source failing (EIO injected into that syscall only)."""
    src = fill(workdir / "src", 2 * MiB + TAIL, seed=31)
    dst = make_dst(workdir)
    child = run_traced(
        CHILD_COPY,
        str(src),
        str(dst),
        jsonlib.dumps({"digest": "sha256"}),  # the read/write loop: one read per MiB
        trace=["read"],
        inject=[fault("read", error="EIO", when=2)],
        paths=[src],
        staging=staging,
    )
    result = child.result
    assert len(child.injected()) == 1, child.log
    assert (result["raised"], result["errno"]) == ("OSError", errno.EIO), (result, child.stderr)
    assert result["filename"] == str(src), f"the error names {result['filename']!r}"
    assert_intact(dst)
    assert_only(workdir, "dst", "src")


def _hard_link(src: Path, workdir: Path) -> Path:
    os.link(src, workdir / "hard")
    return workdir / "hard"


def _symlink(src: Path, workdir: Path) -> Path:
    (workdir / "soft").symlink_to("src")
    return workdir / "soft"


SAME_FILE: dict[str, Callable[[Path, Path], Path]] = {
    "same path": lambda src, workdir: src,
    "other spelling": lambda src, workdir: Path(f"{workdir}/./src"),
    "hard link": _hard_link,
    "symlink": _symlink,
}


@pytest.mark.parametrize("as_object", [False, True])
@pytest.mark.parametrize("case", list(SAME_FILE))
def test_copy_onto_itself_is_refused(
    case: str, as_object: bool, workdir: Path, staging: str
) -> None:
    src = fill(workdir / "src", MiB + TAIL, seed=32)
    dst = SAME_FILE[case](src, workdir)
    names = entries(workdir)
    before = os.stat(src)
    with contextlib.ExitStack() as stack:
        source: Any = stack.enter_context(open(src, "rb")) if as_object else src
        with pytest.raises(shutil.SameFileError) as info:
            atomic_copy(source, dst)
    assert isinstance(info.value, OSError)
    assert str(info.value) == (
        f"{str(src)!r} and {str(dst)!r} are the same file: a file cannot be copied onto itself"
    )
    after = os.stat(src)
    assert (after.st_ino, after.st_nlink, after.st_mtime_ns) == (
        before.st_ino,
        before.st_nlink,
        before.st_mtime_ns,
    )
    assert entries(workdir) == names
    assert leftovers(workdir) == []


def test_copy_over_a_symlink_to_the_source_itself_replaces_the_link_when_not_following(
    workdir: Path, staging: str
) -> None:
    src = fill(workdir / "src", MiB + TAIL, seed=33)
    link = _symlink(src, workdir)
    atomic_copy(src, link, follow_symlinks=False)  # the link is the file replaced
    assert not link.is_symlink()
    assert_same(link, src)
    assert_only(workdir, "soft", "src")


def test_directory_source_raises_is_a_directory(workdir: Path) -> None:
    (workdir / "dir").mkdir()
    dst = make_dst(workdir)
    fds = open_fds()
    with pytest.raises(IsADirectoryError) as info:
        atomic_copy(workdir / "dir", dst)
    assert info.value.filename == str(workdir / "dir")
    assert open_fds() == fds
    assert_intact(dst)
    assert_only(workdir, "dir", "dst")


def test_missing_source_raises_file_not_found(workdir: Path) -> None:
    dst = make_dst(workdir)
    with pytest.raises(FileNotFoundError) as info:
        atomic_copy(workdir / "missing", dst)
    assert info.value.filename == str(workdir / "missing")
    assert_intact(dst)
    assert_only(workdir, "dst")


def test_fifo_source_raises_einval_without_waiting_for_a_writer(workdir: Path) -> None:
    fifo = workdir / "fifo"
    os.mkfifo(fifo)
    dst = make_dst(workdir)
    # In a child with a timeout: a copy that waits for a writer hangs there, not here.
    child = run_python(CHILD_COPY, str(fifo), str(dst), timeout=20)
    result = child.result
    assert result["raised"] == "OSError", (result, child.stderr)
    assert result["errno"] == errno.EINVAL
    assert result["filename"] == str(fifo)
    assert_intact(dst)
    assert_only(workdir, "dst", "fifo")


# ---------------------------------------------------------------------------
# verification: the source changed during the copy


def _truncate(src: Path) -> None:
    os.truncate(src, os.path.getsize(src) // 2)


def _append(src: Path) -> None:
    with open(src, "ab") as f:
        f.write(_BLOCK)


def _rewrite(src: Path) -> None:
    # Same size, new bytes, in place: only the mtime tells (set to 2020 before).
    with open(src, "r+b") as f:
        f.write(b"rewritten" * 1000)


def _replace(src: Path) -> None:
    # A new inode with the same size and mtime: only the inode tells.
    st = os.stat(src)
    new = fill(src.with_name("src.new"), st.st_size, seed=99)
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, src)


def _remove(src: Path) -> None:
    os.unlink(src)


MUTATIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (_truncate, "changed while it was copied"),
    "appended": (_append, "changed while it was copied"),
    "rewritten": (_rewrite, "changed while it was copied"),
    "replaced": (_replace, "replaced or removed"),
    "removed": (_remove, "replaced or removed"),
}


@pytest.mark.parametrize("method", ["copy_file_range", "read/write"])
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_source_changed_during_copy_is_rejected(
    mutation: str, method: str, workdir: Path, staging: str
) -> None:
    change, message = MUTATIONS[mutation]
    # copy_file_range moves 16 MiB a step, read/write 1 MiB: several steps each.
    size = 4 * STEP if method == "copy_file_range" else 8 * MiB
    src = fill(workdir / "src", size, seed=7)
    os.utime(src, (1_600_000_000, 1_600_000_000))  # any rewrite now moves the mtime
    dst = make_dst(workdir)
    progress = Recorder(on_first=lambda: change(src))
    digest = None if method == "copy_file_range" else "sha256"
    with pytest.raises(VerificationError) as info:
        atomic_copy(src, dst, digest=digest, progress=progress)
    assert progress.calls[0][0] < size, "the source changed only after the copy ended"
    assert info.value.filename == str(src)
    assert message in info.value.message, info.value.message
    assert_intact(dst)
    assert_only(workdir, "dst", *([] if mutation == "removed" else ["src"]))


def test_open_file_source_truncated_during_copy_is_rejected(workdir: Path, staging: str) -> None:
    dst = make_dst(workdir)
    with tempfile.TemporaryFile(dir=workdir) as src:
        src.write(_BLOCK * 40)
        progress = Recorder(on_first=lambda: os.ftruncate(src.fileno(), MiB))
        with pytest.raises(VerificationError, match="changed while it was copied"):
            atomic_copy(src, dst, progress=progress)
    assert_intact(dst)
    assert_only(workdir, "dst")


def _shrink(src: io.BytesIO) -> None:
    src.truncate(2 * MiB)


def _grow(src: io.BytesIO) -> None:
    position = src.tell()
    src.seek(0, os.SEEK_END)
    src.write(_BLOCK)
    src.seek(position)


@pytest.mark.parametrize(("change", "word"), [(_shrink, "short"), (_grow, "long")])
def test_stream_whose_length_changes_is_rejected_by_the_byte_count(
    change: Callable[[io.BytesIO], None], word: str, workdir: Path
) -> None:
    """No descriptor, no inode, no mtime: only the byte count can tell."""
    src = io.BytesIO(_BLOCK * 4)
    dst = make_dst(workdir)
    progress = Recorder(on_first=lambda: change(src))
    with pytest.raises(VerificationError, match=f"the copy is {word}"):
        atomic_copy(src, dst, progress=progress)
    assert_intact(dst)
    assert_only(workdir, "dst")


# ---------------------------------------------------------------------------
# verification: validators on atomic_copy


def _zstd(data: bytes) -> bytes:
    zstandard = pytest.importorskip("zstandard")
    return bytes(zstandard.ZstdCompressor(write_checksum=True).compress(data))


PAYLOAD = jsonlib.dumps({"rows": [{"id": i, "name": f"row {i}"} for i in range(20000)]}).encode()
VALIDATED: dict[str, tuple[Callable[[], Any], Callable[[], bytes]]] = {
    # name: (validator, complete content); the content cut in half must be rejected
    "zstd": (lambda: validators.zstd, lambda: _zstd(PAYLOAD)),
    "gzip": (lambda: validators.gzip, lambda: gziplib.compress(PAYLOAD)),
    "json": (lambda: validators.json, lambda: PAYLOAD),
    "size": (lambda: validators.size(len(PAYLOAD)), lambda: PAYLOAD),
    "sha256": (lambda: validators.sha256(hashlib.sha256(PAYLOAD).hexdigest()), lambda: PAYLOAD),
}


@pytest.mark.parametrize("name", list(VALIDATED))
def test_validator_rejects_a_truncated_copy_and_accepts_a_complete_one(
    name: str, workdir: Path, staging: str
) -> None:
    validator, content = (make() for make in VALIDATED[name])
    src = workdir / "src"
    dst = make_dst(workdir)
    src.write_bytes(content[: len(content) // 2])
    with pytest.raises(VerificationError) as info:
        atomic_copy(src, dst, validate=validator)
    assert info.value.filename == str(dst), "a validator's rejection names dst"
    assert_intact(dst)
    assert_only(workdir, "dst", "src")

    src.write_bytes(content)
    result = atomic_copy(src, dst, validate=[validator])
    assert result.bytes == len(content)
    assert dst.read_bytes() == content
    assert_only(workdir, "dst", "src")


def _wal_database(path: Path) -> sqlite3.Connection:
    """A WAL database whose last commit lives only in its -wal (no checkpoint ran)."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA wal_autocheckpoint = 0")
    con.execute("CREATE TABLE t (x)")
    con.execute("INSERT INTO t VALUES (0)")
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # so far, all in the file itself
    return con


def rows(db: Path) -> int:
    uri = f"file:{db}?mode=ro&immutable=1"  # the file alone, no -wal read or made
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as con:
        count: int = con.execute("SELECT count(*) FROM t").fetchone()[0]
        return count


def test_sqlite_copy_of_a_database_with_commits_in_its_wal_is_refused(
    workdir: Path, staging: str
) -> None:
    src, dst = workdir / "app.db", make_dst(workdir)
    with contextlib.closing(_wal_database(src)) as con:
        con.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1, 2000)])
        con.commit()
        assert (workdir / "app.db-wal").stat().st_size > 0
        # The file alone is a valid database, without the last commit: what
        # the copy would hold, and what validators.sqlite alone accepts.
        atomic_copy(src, workdir / "file-alone")
        assert rows(workdir / "file-alone") == 1
        with open(workdir / "file-alone", "rb") as f:
            validators.sqlite(f)
        expected = (
            f"{src}: {src}-wal holds committed transactions that are not in the database "
            "file itself, so a copy of the file alone would lack them: checkpoint first "
            "(PRAGMA wal_checkpoint(TRUNCATE)), or copy with SQLite's backup API or VACUUM INTO"
        )
        for validate in (
            validators.sqlite,
            [validators.size(src.stat().st_size), validators.sqlite],
        ):
            with pytest.raises(VerificationError) as info:
                atomic_copy(src, dst, validate=validate)
            assert (str(info.value), info.value.filename) == (expected, str(src))
            assert_intact(dst)
        with open(src, "rb") as f, pytest.raises(VerificationError, match="checkpoint first"):
            atomic_copy(f, dst, validate=validators.sqlite)
        assert_intact(dst)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        atomic_copy(src, dst, validate=validators.sqlite)
        assert rows(dst) == 2000
    assert_only(workdir, "app.db", "dst", "file-alone")


def test_sqlite_copy_refuses_a_commit_made_during_the_copy(workdir: Path, staging: str) -> None:
    src, dst = workdir / "app.db", make_dst(workdir)
    with contextlib.closing(_wal_database(src)) as con:

        def commit_meanwhile(done: int, total: int | None) -> None:
            # The main file does not change: only the -wal tells.
            con.execute("INSERT INTO t VALUES (1)")
            con.commit()

        mtime = src.stat().st_mtime_ns
        with pytest.raises(VerificationError, match="checkpoint first"):
            atomic_copy(src, dst, validate=validators.sqlite, progress=commit_meanwhile)
        assert src.stat().st_mtime_ns == mtime
        assert_intact(dst)
    assert_only(workdir, "app.db", "dst")


def test_custom_validators_run_in_order_and_the_second_can_reject(
    workdir: Path, staging: str
) -> None:
    src = fill(workdir / "src", 3 * MiB + TAIL, seed=8)
    dst = make_dst(workdir)
    ran: list[str] = []
    first, second = Probe(), Probe()

    def accept(f: BinaryIO) -> None:
        ran.append("accept")
        first(f)

    def refuse(f: BinaryIO) -> None:
        ran.append("refuse")
        second(f)
        raise VerificationError("the second validator says no")

    with pytest.raises(VerificationError, match="the second validator says no") as info:
        atomic_copy(src, dst, validate=[accept, refuse])
    assert ran == ["accept", "refuse"]
    first.assert_saw(sha(src), 3 * MiB + TAIL)
    second.assert_saw(sha(src), 3 * MiB + TAIL)  # from offset 0 again
    assert info.value.filename == str(dst)
    assert_intact(dst)
    assert_only(workdir, "dst", "src")


class Boom(RuntimeError):
    """An exception of the caller's own type."""


def test_other_exception_from_a_validator_propagates_as_itself(workdir: Path, staging: str) -> None:
    src = fill(workdir / "src", MiB, seed=9)
    dst = make_dst(workdir)

    def broken(f: BinaryIO) -> None:
        raise Boom("the validator itself failed")

    with pytest.raises(Boom, match="the validator itself failed"):
        atomic_copy(src, dst, validate=broken)
    assert_intact(dst)
    assert_only(workdir, "dst", "src")


# ---------------------------------------------------------------------------
# verification: validate= on AtomicFile, atomic_open, atomic_write

GOOD_DOC = {"complete": True, "items": list(range(100))}
GOOD_JSON = jsonlib.dumps(GOOD_DOC)
CUT_JSON = GOOD_JSON[: len(GOOD_JSON) // 2]


def _via_atomic_open_binary(path: Path, text: str, validate: Any) -> None:
    with atomic_open(path, "wb", validate=validate) as f:
        f.write(text.encode())


def _via_atomic_open_text(path: Path, text: str, validate: Any) -> None:
    with atomic_open(path, "w", validate=validate) as f:
        f.write(text)


def _via_atomic_write_bytes(path: Path, text: str, validate: Any) -> None:
    atomic_write(path, text.encode(), validate=validate)


def _via_atomic_write_str(path: Path, text: str, validate: Any) -> None:
    atomic_write(path, text, validate=validate)


def _via_atomic_file(path: Path, text: str, validate: Any) -> None:
    staged = AtomicFile(path, "wb", validate=validate)
    try:
        staged.file.write(text.encode())
        staged.commit()
    finally:
        staged.discard()


WRITERS = {
    "atomic_open wb": _via_atomic_open_binary,
    "atomic_open w": _via_atomic_open_text,
    "atomic_write bytes": _via_atomic_write_bytes,
    "atomic_write str": _via_atomic_write_str,
    "AtomicFile.commit": _via_atomic_file,
}


@pytest.mark.parametrize("api", list(WRITERS))
def test_validate_on_writers_rejects_and_keeps_the_old_file(
    api: str, workdir: Path, staging: str
) -> None:
    target = make_dst(workdir)
    with pytest.raises(VerificationError) as info:
        WRITERS[api](target, CUT_JSON, validators.json)
    assert info.value.filename == str(target)
    assert_intact(target)
    assert_only(workdir, "dst")

    fresh = workdir / "fresh.json"
    with pytest.raises(VerificationError):
        WRITERS[api](fresh, CUT_JSON, [validators.json])
    assert not fresh.exists(), "a rejected new file was created"
    assert_only(workdir, "dst")


@pytest.mark.parametrize("api", list(WRITERS))
def test_validate_on_writers_sees_exactly_what_was_written(
    api: str, workdir: Path, staging: str
) -> None:
    target = make_dst(workdir)
    probe = Probe()
    WRITERS[api](target, GOOD_JSON, [validators.json, probe])
    probe.assert_saw(hashlib.sha256(GOOD_JSON.encode()).hexdigest(), len(GOOD_JSON))
    assert jsonlib.loads(target.read_bytes()) == GOOD_DOC
    assert mode_of(target) == OLD_MODE
    assert_only(workdir, "dst")


def test_validate_in_append_mode_sees_old_and_new_content(workdir: Path, staging: str) -> None:
    target = workdir / "log.json"
    head, rest = GOOD_JSON[:40], GOOD_JSON[40:]
    target.write_text(head)
    with (
        pytest.raises(VerificationError) as info,
        atomic_open(target, "ab", validate=validators.json) as f,
    ):
        f.write(b"]] not the rest")
    assert info.value.filename == str(target)
    assert target.read_text() == head
    assert_only(workdir, "log.json")

    probe = Probe()
    with atomic_open(target, "ab", validate=[validators.json, probe]) as f:
        f.write(rest.encode())
    probe.assert_saw(hashlib.sha256(GOOD_JSON.encode()).hexdigest(), len(GOOD_JSON))
    assert target.read_text() == GOOD_JSON
    assert_only(workdir, "log.json")


def _copy_with(path: Path, validate: Any) -> None:
    atomic_copy(path.with_name("src"), path, validate=validate)


NOT_CALLABLE_APIS: dict[str, Callable[[Path, Any], object]] = {
    "atomic_copy": _copy_with,
    "atomic_open": lambda p, v: _via_atomic_open_binary(p, "{}", v),
    "atomic_write": lambda p, v: atomic_write(p, b"{}", validate=v),
    "AtomicFile": lambda p, v: AtomicFile(p, validate=v),
}


@pytest.mark.parametrize("value", ["json", 42, [validators.json, "not callable"]], ids=repr)
@pytest.mark.parametrize("api", list(NOT_CALLABLE_APIS))
def test_validate_not_callable_raises_type_error_before_anything_is_created(
    api: str, value: object, workdir: Path, staging: str
) -> None:
    (workdir / "src").write_bytes(b"{}")
    fds = open_fds()
    with pytest.raises(TypeError, match="validate"):
        NOT_CALLABLE_APIS[api](workdir / "new", value)
    with pytest.raises(TypeError, match="validate"):
        NOT_CALLABLE_APIS[api](make_dst(workdir), value)
    assert open_fds() == fds
    assert_intact(workdir / "dst")
    assert_only(workdir, "dst", "src")


# ---------------------------------------------------------------------------
# progress


PROGRESS_SOURCES = {
    # name: (size, digest)
    "copy_file_range": (3 * STEP + TAIL, None),
    "read/write": (5 * MiB + TAIL, "sha256"),
    "empty": (0, None),
}


@pytest.mark.parametrize("case", list(PROGRESS_SOURCES))
def test_progress_is_monotonic_and_ends_at_the_size(case: str, workdir: Path) -> None:
    size, digest = PROGRESS_SOURCES[case]
    src = fill(workdir / "src", size, seed=10)
    dst = make_dst(workdir)
    progress = Recorder()
    result = atomic_copy(src, dst, digest=digest, progress=progress)
    assert result.bytes == size
    progress.assert_sane(size, size)
    if size > STEP:
        assert len(progress.calls) > 1, "no call while the copy advanced"
    assert_same(dst, src)
    assert_only(workdir, "dst", "src")


@pytest.mark.parametrize("digest", [None, "sha256"])
@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_exception_in_progress_aborts_the_copy(
    error: type[BaseException], digest: str | None, workdir: Path, staging: str
) -> None:
    src = fill(workdir / "src", 3 * STEP, seed=11)
    dst = make_dst(workdir)
    calls: list[int] = []

    def progress(done: int, total: int | None) -> None:
        calls.append(done)
        if len(calls) == 2:
            raise error("stop")

    with pytest.raises(error):
        atomic_copy(src, dst, digest=digest, progress=progress)
    assert len(calls) == 2, "the copy went on after progress raised"
    assert_intact(dst)
    assert_only(workdir, "dst", "src")


# ---------------------------------------------------------------------------
# permissions


@pytest.mark.parametrize(
    ("src_mode", "mask"),
    [(0o640, 0o022), (0o755, 0o077), (0o600, 0o000), (0o777, 0o027), (0o444, 0o022)],
    ids=lambda v: f"{v:04o}",
)
def test_new_dst_takes_the_source_permission_bits_exactly(
    src_mode: int, mask: int, workdir: Path, staging: str
) -> None:
    src = fill(workdir / "src", MiB, seed=12)
    src.chmod(src_mode)
    with umask(mask):
        atomic_copy(src, workdir / "dst")
        atomic_copy(src, workdir / "dst2", digest="sha256")
    assert mode_of(workdir / "dst") == src_mode
    assert mode_of(workdir / "dst2") == src_mode
    assert_only(workdir, "dst", "dst2", "src")


@pytest.mark.parametrize(
    ("src_mode", "expected"), [(0o4755, 0o755), (0o2750, 0o750), (0o1777, 0o777), (0o6711, 0o711)]
)
def test_setuid_setgid_and_sticky_are_not_copied(
    src_mode: int, expected: int, workdir: Path, staging: str
) -> None:
    require_root()  # setgid on a file of a group the caller is not in
    src = fill(workdir / "src", MiB, seed=13)
    src.chmod(src_mode)
    assert mode_of(src) == src_mode
    atomic_copy(src, workdir / "dst")
    assert mode_of(workdir / "dst") == expected
    assert_only(workdir, "dst", "src")


def test_perm_overrides_and_existing_dst_keeps_mode_and_owner(workdir: Path, staging: str) -> None:
    src = fill(workdir / "src", MiB, seed=14)
    src.chmod(0o755)
    with umask(0o077):
        atomic_copy(src, workdir / "new", perm=0o604)
    assert mode_of(workdir / "new") == 0o604

    dst = make_dst(workdir)
    if os.geteuid() == 0:
        os.chown(dst, 1234, 2345)
    atomic_copy(src, dst)
    assert_same(dst, src)
    st = os.stat(dst)
    assert stat.S_IMODE(st.st_mode) == OLD_MODE, "an existing dst keeps its mode"
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1234, 2345), "an existing dst keeps its owner"
    atomic_copy(src, dst, perm=0o600)
    assert mode_of(dst) == 0o600
    assert_only(workdir, "dst", "new", "src")


def test_file_object_source_gives_a_new_dst_the_default_mode(workdir: Path, staging: str) -> None:
    with umask(0o027):
        atomic_copy(io.BytesIO(b"data"), workdir / "dst")
    assert mode_of(workdir / "dst") == 0o640  # 0o666 less the umask, as open() gives
    assert_only(workdir, "dst")


@pytest.mark.parametrize("follow", [True, False])
def test_symlink_dst_is_followed_or_replaced(follow: bool, workdir: Path, staging: str) -> None:
    src = fill(workdir / "src", MiB + TAIL, seed=15)
    src.chmod(0o600)
    real = make_dst(workdir, "real")
    link = workdir / "link"
    link.symlink_to("real")
    atomic_copy(src, link, follow_symlinks=follow)
    if follow:
        assert link.is_symlink() and os.readlink(link) == "real"
        assert_same(real, src)
        assert mode_of(real) == OLD_MODE
    else:
        assert not link.is_symlink()
        assert_same(link, src)
        assert mode_of(link) == 0o600  # a new regular file: the source's bits
        assert_intact(real)
    assert_only(workdir, "link", "real", "src")


# ---------------------------------------------------------------------------
# errors and options


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_enospc_comes_from_the_reservation_before_any_data_moves(
    fstype: str, workdir: Path, staging: str
) -> None:
    # ext4: the source on the same filesystem (copy_file_range would be the
    # method); xfs: on the VM disk (a same-filesystem copy would be a reflink,
    # which needs no space).
    with loop_mount(fstype, size_mb=64 if fstype == "ext4" else 300) as mnt:
        src = fill((mnt if fstype == "ext4" else workdir) / "src", 24 * MiB, seed=16)
        work = mnt / "work"
        dst = make_dst(work)
        st = os.statvfs(mnt)
        with open(mnt / "filler", "wb") as filler:  # leave 8 MiB free, really allocated
            os.posix_fallocate(filler.fileno(), 0, st.f_bfree * st.f_frsize - 8 * MiB)
        before = free_blocks(mnt)
        child = run_traced(
            CHILD_COPY,
            str(src),
            str(dst),
            trace=["fallocate", "copy_file_range", "sendfile", "write", "pwrite64"],
            staging=staging,
        )
        result = child.result
        assert result["raised"] == "OSError", (result, child.stderr)
        assert result["errno"] == errno.ENOSPC
        reservation = child.calls("fallocate")
        assert len(reservation) == 1, child.log
        assert str(mnt) in reservation[0] and "ENOSPC" in reservation[0], reservation
        assert "(INJECTED)" not in reservation[0]
        moved = [
            line
            for line in child.log
            if str(mnt) in line and any(f"{call}(" in line for call in ("write", "pwrite64"))
        ]
        assert child.count("copy_file_range") == child.count("sendfile") == 0, child.log
        assert moved == [], moved
        assert_intact(dst)
        assert_only(work, "dst")
        assert free_blocks(mnt) >= before, "the failed copy still holds space"
        (mnt / "filler").unlink()


def test_real_enospc_mid_copy_leaves_dst_and_frees_the_space(workdir: Path) -> None:
    """The source grows during the copy past what the disk holds: the reservation
    (made for the old size) succeeded, and the disk fills up mid-copy."""
    with loop_mount("ext4", size_mb=64) as mnt, tmpfs(size_kb=160 * 1024) as source_fs:
        src = fill(source_fs / "src", 20 * MiB, seed=17)
        work = mnt / "work"
        dst = make_dst(work)
        room = os.statvfs(mnt).f_bfree * os.statvfs(mnt).f_frsize

        def grow() -> None:
            with open(src, "ab") as f:
                for _ in range(room // MiB + 8):
                    f.write(_BLOCK)

        progress = Recorder(on_first=grow)
        before = free_blocks(mnt)
        with pytest.raises(OSError) as info:
            atomic_copy(src, dst, progress=progress)
        assert info.value.errno == errno.ENOSPC, info.value
        assert progress.calls[-1][0] > 20 * MiB, "no data moved past the reservation"
        assert_intact(dst)
        assert_only(work, "dst")
        assert free_blocks(mnt) >= before, "the failed copy still holds space"


NAMED_ERRORS = {
    "reservation-enospc": fault("fallocate", error="ENOSPC", when=1),
    "copy_file_range-eio": fault("copy_file_range", error="EIO", when=2),
}


@pytest.mark.parametrize("case", list(NAMED_ERRORS))
def test_copy_errors_name_the_destination(case: str, workdir: Path, staging: str) -> None:
    """An OSError of the copy has no name of its own; the caller knows dst."""
    src = fill(workdir / "src", 2 * STEP, seed=18)
    dst = make_dst(workdir)
    child = run_traced(
        CHILD_COPY,
        str(src),
        str(dst),
        trace=["fallocate", "copy_file_range"],
        inject=[NAMED_ERRORS[case]],
        staging=staging,
    )
    result = child.result
    assert result["raised"] == "OSError", (result, child.stderr)
    assert len(child.injected()) == 1, child.log
    assert_intact(dst)
    assert_only(workdir, "dst", "src")
    assert result["filename"] == str(dst), f"the error names {result['filename']!r}"


@pytest.mark.parametrize("durability", ["none", "consistent", "durable"])
def test_every_durability_copies(durability: Any, workdir: Path, staging: str) -> None:
    src = fill(workdir / "src", 2 * MiB + TAIL, seed=19)
    dst = make_dst(workdir)
    result = atomic_copy(src, dst, durability=durability)
    assert (result.bytes, result.method) == (2 * MiB + TAIL, same_fs_method(workdir))
    assert_same(dst, src)
    assert_only(workdir, "dst", "src")


BAD_OPTIONS: dict[str, tuple[dict[str, Any], type[Exception]]] = {
    "digest": ({"digest": "sha3_256"}, ValueError),
    "progress": ({"progress": "not callable"}, TypeError),
    "perm": ({"perm": 0o10000}, ValueError),
    "durability": ({"durability": "sometimes"}, ValueError),
}


@pytest.mark.parametrize("option", list(BAD_OPTIONS))
def test_bad_options_raise_before_anything_is_created(option: str, workdir: Path) -> None:
    kwargs, error = BAD_OPTIONS[option]
    src = fill(workdir / "src", MiB, seed=20)
    dst = make_dst(workdir)
    fds = open_fds()
    with pytest.raises(error, match=option):
        atomic_copy(src, dst, **kwargs)
    with pytest.raises(error, match=option):
        atomic_copy(src, workdir / "new", **kwargs)
    assert open_fds() == fds
    assert_intact(dst)
    assert_only(workdir, "dst", "src")


def test_dst_directory_or_missing_directory_raise_and_create_nothing(workdir: Path) -> None:
    src = fill(workdir / "src", MiB, seed=21)
    (workdir / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic_copy(src, workdir / "dir")
    assert entries(workdir / "dir") == []
    with pytest.raises(FileNotFoundError) as info:
        atomic_copy(src, workdir / "missing" / "dst")
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(workdir / "missing")
    assert_only(workdir, "dir", "src")


# ---------------------------------------------------------------------------
# memory: 1 GiB in bounded RSS

# Linux carries a process's peak RSS across exec (and subprocess execs from a
# vfork of pytest), so a child's ru_maxrss starts at pytest's peak and would
# hide any growth. The child forks: the fork's peak starts at its own size.
MEASURE = """
import json, os, resource, sys
import crashsafe, crashsafe.copying, hashlib

def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024

how, src, dst = sys.argv[1:4]
block = os.urandom(1 << 20)
pid = os.fork()
if pid == 0:
    code = 1
    try:
        before = rss_kib()
        if how == "stream":
            with crashsafe.atomic_open(dst, "wb", durability="none") as f:
                for _ in range(1024):
                    f.write(block)
            done, method = 1024 << 20, "atomic_open"
        else:
            digest = "sha256" if how == "digest" else None
            r = crashsafe.atomic_copy(src, dst, durability="none", digest=digest)
            done, method = r.bytes, r.method
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"growth_kib": peak - before, "bytes": done, "method": method}))
        sys.stdout.flush()
        code = 0
    finally:
        os._exit(code)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@pytest.fixture(scope="module")
def gib_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """1 GiB of real data (no holes) on the VM disk, removed afterwards."""
    directory = tmp_path_factory.mktemp("gib")
    src = fill(directory / "src", 1024 * MiB, seed=22)
    try:
        yield src
    finally:
        for path in directory.iterdir():
            path.unlink()
        directory.rmdir()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "method"),
    [("fast", "copy_file_range"), ("digest", "read/write"), ("stream", "atomic_open")],
)
def test_one_gib_is_copied_or_streamed_in_bounded_memory(
    how: str, method: str, gib_source: Path
) -> None:
    dst = gib_source.with_name(f"dst-{how}")
    try:
        started = time.perf_counter()
        done = run_child(MEASURE, how, str(gib_source), str(dst), prelude="", timeout=120)
        seconds = time.perf_counter() - started
        assert done.returncode == 0, done.stderr
        figures = jsonlib.loads(done.stdout)
        growth = figures["growth_kib"] * 1024
        print(
            f"\n1 GiB via {how} ({figures['method']}): "
            f"peak RSS growth {growth / MiB:.1f} MiB, {seconds:.1f} s"
        )
        assert (figures["bytes"], figures["method"]) == (1024 * MiB, method)
        assert dst.stat().st_size == 1024 * MiB
        if how != "stream":
            assert_same(dst, gib_source)
        assert growth < 64 * MiB, f"peak RSS grew by {growth / MiB:.1f} MiB"
        assert leftovers(dst.parent) == []
    finally:
        dst.unlink(missing_ok=True)


def test_a_failed_write_in_the_block_names_the_target() -> None:
    """ENOSPC from a write inside the block (not at commit) names the target too."""
    require_root()
    with tmpfs(size_kb=512) as mnt:
        target = mnt / "big"
        target.write_bytes(b"old")
        big = b"x" * (2 << 20)
        with pytest.raises(OSError) as caught:
            atomic_write(target, big)
        assert caught.value.errno == errno.ENOSPC
        assert caught.value.filename == str(target)
        with pytest.raises(OSError) as caught, atomic_open(target) as f:
            f.write(big)
        assert caught.value.errno == errno.ENOSPC
        assert caught.value.filename == str(target)
        assert target.read_bytes() == b"old"
        assert leftovers(mnt) == []


def test_the_copys_staged_file_is_a_plain_atomicfile_without_a_dict(workdir: Path) -> None:
    # AtomicFile has __slots__ so that a write's object is small; the copy
    # once subclassed it to set a class attribute, which gave every staged
    # copy a __dict__. Seen from inside the copy (its progress callback).
    import gc

    (workdir / "src").write_bytes(b"x" * 100)
    seen: list[AtomicFile[Any]] = []

    def progress(done: int, total: int | None) -> None:
        seen.extend(o for o in gc.get_objects() if isinstance(o, AtomicFile))

    atomic_copy(workdir / "src", workdir / "dst", progress=progress)
    assert seen, "the staged file was not found"
    assert {type(o) for o in seen} == {AtomicFile}
    assert not any(hasattr(o, "__dict__") for o in seen)
    assert AtomicFile.__subclasses__() == []
