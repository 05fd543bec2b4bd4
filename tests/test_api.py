"""The public API: its exact names, argument checking before anything is created, errors.

Bad arguments raise ValueError or TypeError with a message that says what is valid,
and leave the directory exactly as it was.
"""

from __future__ import annotations

import array
import errno
import mimetypes
import os
import pickle
import pkgutil
import re
import stat
import types
from pathlib import Path

import pytest

import crashsafe
from crashsafe import NotDurableError
from tests.children import run as run_child
from tests.harness.checks import entries

VALID_MODES = ["w", "wt", "wb", "x", "xt", "xb", "a", "at", "ab"]


def test_all_is_exactly_the_public_api() -> None:
    assert set(crashsafe.__all__) == {
        "AmbiguousWriteError",
        "AtomicFile",
        "ChecksumStore",
        "CopyResult",
        "FileLock",
        "ForeignJournalError",
        "HardLinkedTargetError",
        "JSONDocumentError",
        "LockTimeoutError",
        "MetadataNotPreservedWarning",
        "MountedTargetError",
        "NotDurableError",
        "NotRecordedError",
        "ObjectStoreError",
        "S3Store",
        "SnapshotDeadlockError",
        "StoreCapabilityError",
        "UnsupportedByFilesystemError",
        "UpdateConflictError",
        "VerificationError",
        "atomic_copy",
        "atomic_directory",
        "atomic_open",
        "atomic_path",
        "atomic_write",
        "read_json",
        "recover",
        "snapshot",
        "sweep",
        "transaction",
        "update",
        "update_json",
        "validators",
        "write_file_atomic",
        "write_json",
        "write_many",
    }
    assert len(crashsafe.__all__) == len(set(crashsafe.__all__))
    for name in crashsafe.__all__:
        value = getattr(crashsafe, name)
        assert isinstance(value, types.ModuleType) or callable(value), name
    namespace: dict[str, object] = {}
    exec("from crashsafe import *", namespace)  # noqa: S102 - what a star import gives
    assert set(namespace) - {"__builtins__"} == set(crashsafe.__all__)


def test_import_leaves_copying_and_validators_for_first_use() -> None:
    # They cost import time that a program writing small files never needs.
    code = (
        "import sys, crashsafe\n"
        "before = {m for m in sys.modules if m.startswith('crashsafe.')}\n"
        "crashsafe.atomic_copy, crashsafe.validators.zstd\n"
        "after = {m for m in sys.modules if m.startswith('crashsafe.')}\n"
        "print(sorted(before)); print(sorted(after - before))"
    )
    done = run_child(code, prelude="", staging=None)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert "crashsafe.copying" not in out[0]
    assert "crashsafe.validators" not in out[0]
    assert "'crashsafe.copying'" in out[1]
    assert "'crashsafe.validators'" in out[1]


def _submodules() -> list[str]:
    # __main__ runs the command line when imported.
    found = pkgutil.walk_packages(crashsafe.__path__, "crashsafe.")
    return sorted(info.name for info in found if info.name != "crashsafe.__main__")


def test_no_module_of_the_package_is_named_like_an_exported_name() -> None:
    # Importing crashsafe.X binds X on the package, over an exported X.
    clashes = {m.split(".")[1] for m in _submodules()} & set(crashsafe.__all__)
    assert clashes == {"validators"}  # the one export that is meant to be a module


# Each runs first in a fresh interpreter; then every exported name must still be
# what its defining module exports, and a transaction must run (the README's flow:
# recover at start-up, then transact).
FIRST_STEPS = [
    *(f"import {module}" for module in _submodules()),
    *(f"crashsafe.{name}" for name in ("transaction", "recover", "snapshot", "write_json")),
    "crashsafe.recover(d)",
    "with crashsafe.snapshot(d): pass",
    "from crashsafe import *",
]


@pytest.mark.parametrize("first", FIRST_STEPS)
def test_no_import_order_shadows_a_public_name_with_a_module(first: str, tmp_path: Path) -> None:
    code = f"""
import sys, types, importlib, crashsafe
d = sys.argv[1]
{first}
bad = []
for name in crashsafe.__all__:
    value = getattr(crashsafe, name)
    if name == "validators":
        ok = value is importlib.import_module("crashsafe.validators")
    else:
        ok = not isinstance(value, types.ModuleType) and value is getattr(
            importlib.import_module(value.__module__), name)
    if not ok:
        bad.append(name)
crashsafe.recover(d)
with crashsafe.transaction(d) as tx:
    tx.write("a", b"1")
print(bad)
"""
    done = run_child(code, str(tmp_path), prelude="", staging=None)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"
    assert (tmp_path / "a").read_bytes() == b"1"


def test_dir_lists_every_public_name_before_first_use() -> None:
    code = "import crashsafe; print(sorted(set(crashsafe.__all__) - set(dir(crashsafe))))"
    done = run_child(code, prelude="", staging=None)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[]\n"
    assert set(crashsafe.__all__) <= set(dir(crashsafe))
    assert "__version__" in dir(crashsafe)


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        crashsafe.no_such_thing  # type: ignore[attr-defined]  # noqa: B018


def test_not_durable_error_is_an_os_error() -> None:
    assert issubclass(NotDurableError, OSError)
    with pytest.raises(OSError, match="was replaced"):
        raise NotDurableError(errno.EIO, "Input/output error", "/data/f")


def test_not_durable_error_pickles_with_errno_and_filename() -> None:
    error = NotDurableError(errno.EIO, "Input/output error", "/data/f")
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes  # noqa: S301 - our own bytes
    assert type(copy) is NotDurableError
    assert (copy.errno, copy.strerror, copy.filename) == (
        errno.EIO,
        "Input/output error",
        "/data/f",
    )
    assert str(copy) == str(error)


def test_not_durable_error_message_says_what_happened() -> None:
    message = str(NotDurableError(errno.EIO, "Input/output error", "/data/f"))
    assert "[Errno 5]" in message
    assert "'/data/f' was replaced" in message
    assert "power cut" in message


# ---------------------------------------------------------------- arguments checked first


def call(api: str, path: Path, **kw: object) -> None:
    if api == "atomic_write":
        crashsafe.atomic_write(path, b"data", **kw)  # type: ignore[arg-type]
    elif api == "atomic_open":
        with crashsafe.atomic_open(path, **kw) as f:  # type: ignore[arg-type]
            f.write(b"data")
    else:
        with crashsafe.AtomicFile(path, **kw) as af:  # type: ignore[arg-type]
            af.file.write(b"data")


# Every keyword of the public API that takes True or False, called on an existing target.
FLAG_CALLS = {
    "atomic_write overwrite": lambda p, v: crashsafe.atomic_write(p, b"new", overwrite=v),
    "atomic_write follow_symlinks": lambda p, v: crashsafe.atomic_write(
        p, b"new", follow_symlinks=v
    ),
    "atomic_open follow_symlinks": lambda p, v: crashsafe.atomic_open(
        p, follow_symlinks=v
    ).__enter__(),
    "AtomicFile follow_symlinks": lambda p, v: crashsafe.AtomicFile(p, follow_symlinks=v),
    "atomic_copy follow_symlinks": lambda p, v: crashsafe.atomic_copy(
        p.with_name("src"), p, follow_symlinks=v
    ),
    "update overwrite": lambda p, v: crashsafe.update(p, lambda b: b"new", overwrite=v),
    "update follow_symlinks": lambda p, v: crashsafe.update(p, lambda b: b"new", follow_symlinks=v),
    "FileLock follow_symlinks": lambda p, v: crashsafe.FileLock(p, follow_symlinks=v),
}


@pytest.mark.parametrize("value", ["no", "", None, 0, 1, "False"], ids=repr)
@pytest.mark.parametrize("api", FLAG_CALLS)
def test_a_flag_that_is_not_a_bool_raises_type_error_before_anything_is_created(
    workdir: Path, api: str, value: object
) -> None:
    # overwrite="no" is truthy: taken as True, it overwrote.
    (workdir / "f").write_bytes(b"old")
    (workdir / "src").write_bytes(b"new")
    keyword = api.split()[1]
    with pytest.raises(TypeError) as info:
        FLAG_CALLS[api](workdir / "f", value)
    assert str(info.value) == f"{keyword} must be True or False, not {value!r}"
    assert (workdir / "f").read_bytes() == b"old"
    assert entries(workdir) == ["f", "src"]


@pytest.mark.parametrize("mode", ["r", "rb", "rb+", "wb+", "+", "", "bw", "wx", "U", "wbt"])
@pytest.mark.parametrize("api", ["atomic_open", "AtomicFile"])
def test_bad_mode_raises_value_error_naming_the_valid_modes(
    workdir: Path, staging: str, api: str, mode: str
) -> None:
    with pytest.raises(ValueError, match="mode") as info:
        call(api, workdir / "f", mode=mode)
    message = str(info.value)
    assert repr(mode) in message
    for valid in VALID_MODES:
        assert re.search(rf"\b{valid}\b", message), (valid, message)
    assert entries(workdir) == []


@pytest.mark.parametrize("durability", ["fast", "DURABLE", "", None, 1])
@pytest.mark.parametrize("api", ["atomic_write", "atomic_open", "AtomicFile"])
def test_bad_durability_raises_value_error_naming_the_levels(
    workdir: Path, staging: str, api: str, durability: object
) -> None:
    with pytest.raises(ValueError, match="durability") as info:
        call(api, workdir / "f", durability=durability)
    for level in ("durable", "consistent", "none"):
        assert level in str(info.value)
    assert entries(workdir) == []


@pytest.mark.parametrize("perm", [-1, 0o10000, 0o777777, 0o644 + 0.0, "0o644", "644", True])
@pytest.mark.parametrize("api", ["atomic_write", "atomic_open", "AtomicFile"])
def test_perm_out_of_range_or_not_an_int_raises_value_error(
    workdir: Path, staging: str, api: str, perm: object
) -> None:
    target = workdir / "f"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match=r"perm must be an int from 0 to 0o7777") as info:
        call(api, target, perm=perm)
    assert repr(perm) in str(info.value)
    assert target.read_bytes() == b"old"
    assert entries(workdir) == ["f"]


@pytest.mark.parametrize(
    "keyword", [{"encoding": "utf-8"}, {"errors": "strict"}, {"newline": "\n"}]
)
@pytest.mark.parametrize("mode", ["wb", "xb", "ab"])
def test_binary_mode_with_text_arguments_raises_value_error(
    workdir: Path, staging: str, mode: str, keyword: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match="binary mode"):
        crashsafe.AtomicFile(workdir / "f", mode, **keyword)  # type: ignore[arg-type]
    with (
        pytest.raises(ValueError, match="binary mode"),
        crashsafe.atomic_open(
            workdir / "f",
            mode,
            **keyword,  # type: ignore[arg-type]
        ),
    ):
        pass
    assert entries(workdir) == []


@pytest.mark.parametrize("data", [None, 42, 4.2, ["a"], {"a": 1}, object()])
def test_atomic_write_with_data_of_the_wrong_type_raises_type_error(
    workdir: Path, staging: str, data: object
) -> None:
    with pytest.raises(TypeError, match=f"data must be bytes or str, not {type(data).__name__}"):
        crashsafe.atomic_write(workdir / "f", data)  # type: ignore[arg-type]
    assert entries(workdir) == []


@pytest.mark.parametrize(
    "data",
    [b"raw", bytearray(b"raw"), memoryview(b"..raw..")[2:5], array.array("B", b"raw")],
    ids=["bytes", "bytearray", "memoryview", "array"],
)
def test_atomic_write_accepts_any_bytes_like_data(workdir: Path, staging: str, data: bytes) -> None:
    crashsafe.atomic_write(workdir / "f", data)
    assert (workdir / "f").read_bytes() == b"raw"


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "utf-16"])
def test_atomic_write_encodes_str_with_the_encoding(
    workdir: Path, staging: str, encoding: str
) -> None:
    crashsafe.atomic_write(workdir / "f", "café", encoding=encoding)
    assert (workdir / "f").read_bytes() == "café".encode(encoding)


def test_unencodable_str_raises_before_anything_is_created(workdir: Path, staging: str) -> None:
    with pytest.raises(UnicodeEncodeError):
        crashsafe.atomic_write(workdir / "f", "€", encoding="latin-1")
    assert entries(workdir) == []


@pytest.mark.parametrize("api", ["atomic_write", "atomic_open", "AtomicFile"])
@pytest.mark.parametrize("spelling", ["dir", "dir/", "dir/.", "dir/.."])
def test_path_that_is_a_directory_raises_is_a_directory_error(
    workdir: Path, staging: str, api: str, spelling: str
) -> None:
    (workdir / "dir").mkdir()
    (workdir / "dir" / "inside").write_bytes(b"keep")
    with pytest.raises(IsADirectoryError):
        call(api, os.path.join(workdir, spelling))  # type: ignore[arg-type]
    assert entries(workdir) == ["dir"]
    assert entries(workdir / "dir") == ["inside"]


@pytest.mark.parametrize("api", ["atomic_write", "atomic_open", "AtomicFile"])
@pytest.mark.parametrize("before_nul", ["dir", "file", "link"])
def test_name_with_a_nul_raises_value_error_every_time_and_creates_nothing(
    workdir: Path, staging: str, api: str, before_nul: str
) -> None:
    # The target's status is read with statx through ctypes from a process's
    # third read on, and C cuts a name at its NUL: "dir\0x" must not be read
    # as "dir" (a directory, a file to replace, a link to follow).
    (workdir / "dir").mkdir()
    (workdir / "file").write_bytes(b"keep")
    (workdir / "link").symlink_to("file")
    for _ in range(4):
        with pytest.raises(ValueError, match="null"):
            call(api, workdir / f"{before_nul}\0x")
    assert entries(workdir) == ["dir", "file", "link"]
    assert (workdir / "file").read_bytes() == b"keep"


@pytest.mark.parametrize("api", ["atomic_write", "atomic_open", "AtomicFile"])
def test_missing_parent_directory_raises_file_not_found_and_creates_nothing(
    workdir: Path, staging: str, api: str
) -> None:
    target = workdir / "missing" / "f"
    with pytest.raises(FileNotFoundError) as info:
        call(api, target)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename in (str(target), str(target.parent))
    assert entries(workdir) == []


def test_parent_that_is_a_file_raises_not_a_directory(workdir: Path, staging: str) -> None:
    (workdir / "file").write_bytes(b"keep")
    with pytest.raises(NotADirectoryError):
        crashsafe.atomic_write(workdir / "file" / "f", b"data")
    assert (workdir / "file").read_bytes() == b"keep"
    assert entries(workdir) == ["file"]


def test_paths_may_be_str_or_path_like(workdir: Path, staging: str) -> None:
    crashsafe.atomic_write(str(workdir / "a"), b"1")
    crashsafe.atomic_write(workdir / "b", b"2")
    with crashsafe.atomic_open(workdir / "c", "w") as f:
        f.write("3")
    with crashsafe.AtomicFile(workdir / "d") as af:
        af.file.write(b"4")
    crashsafe.write_file_atomic(workdir, "e", b"5", 0o600)
    crashsafe.write_file_atomic(str(workdir), "f", b"6", 0o600)
    assert [(workdir / n).read_bytes() for n in "abcdef"] == [b"1", b"2", b"3", b"4", b"5", b"6"]


def test_atomicfile_enter_returns_itself_with_a_file_and_a_path(
    workdir: Path, staging: str
) -> None:
    af = crashsafe.AtomicFile(workdir / "f", "wb")
    with af as entered:
        assert entered is af
        assert af.path == str(workdir / "f")
        assert not af.file.closed
        af.file.write(b"x")
    assert af.file.closed
    assert (workdir / "f").read_bytes() == b"x"


@pytest.mark.parametrize("mode", VALID_MODES)
def test_staged_file_is_named_after_the_target(mode: str, workdir: Path, staging: str) -> None:
    """Libraries that read the format from the name's extension (Pillow's
    Image.save(f)) see the target's path, not a descriptor number."""
    for target in (str(workdir / "image.png"), workdir / "other.png"):
        staged = crashsafe.AtomicFile(target, mode)
        try:
            assert staged.file.name == staged.path == str(target)
        finally:
            staged.discard()
        with crashsafe.atomic_open(target, mode) as f:
            assert f.name == str(target)
            assert os.path.splitext(f.name)[1] == ".png"
            assert mimetypes.guess_type(f.name)[0] == "image/png"
            assert repr(str(target)) in repr(f)
            f.write("x" if "b" not in mode else b"x")
        assert Path(target).read_bytes() == b"x"
        os.unlink(target)
    assert entries(workdir) == []


# ---------------------------------------------------------------- the platform backends
# (their interface: tests/test_platform.py)


# Runs the macOS branch of the POSIX backend on Linux: fcntl(F_FULLFSYNC) is
# made a known number here (Linux answers EINVAL, and the fsync fallback
# follows), and an audit hook sees every fcntl call with it.
ON_DARWIN = """
import fcntl, os, stat, sys
sys.platform = "darwin"
fcntl.F_FULLFSYNC = 51  # its value on macOS
seen = []
def hook(event, args):
    if event == "fcntl.fcntl" and args[1] == fcntl.F_FULLFSYNC:
        seen.append("directory" if stat.S_ISDIR(os.fstat(args[0]).st_mode) else "file")
sys.addaudithook(hook)
import crashsafe
crashsafe.atomic_write(sys.argv[1], b"data")
print(" ".join(seen))
"""


def test_macos_syncs_the_directory_with_f_fullfsync_as_it_does_the_file(workdir: Path) -> None:
    done = run_child(ON_DARWIN, str(workdir / "f"), prelude="", staging=None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["file", "directory"]
    assert (workdir / "f").read_bytes() == b"data"


def test_atomic_open_default_mode_is_binary_write(workdir: Path, staging: str) -> None:
    (workdir / "f").write_bytes(b"old")
    with crashsafe.atomic_open(workdir / "f") as f:
        with pytest.raises(TypeError):
            f.write("text")  # type: ignore[arg-type]
        f.write(b"bytes")
    assert (workdir / "f").read_bytes() == b"bytes"


# ---------------------------------------------------------------- write_file_atomic


@pytest.mark.parametrize("existing", [None, 0o644, 0o4755])
@pytest.mark.parametrize("perm", [0o000, 0o400, 0o600, 0o644, 0o2755])
def test_write_file_atomic_gives_exactly_the_data_and_perm(
    workdir: Path, staging: str, perm: int, existing: int | None
) -> None:
    target = workdir / "key"
    if existing is not None:
        target.write_bytes(b"old content, longer")
        target.chmod(existing)
    old_umask = os.umask(0o077)
    try:
        crashsafe.write_file_atomic(workdir, "key", b"\x00secret\xff", perm)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"\x00secret\xff"
    assert stat.S_IMODE(target.stat().st_mode) == perm
    assert entries(workdir) == ["key"]


@pytest.mark.parametrize(
    "name", ["a/b", "", ".", "..", "a\0b", "/abs", "dir/", b"a/b", Path("a/b")]
)
def test_write_file_atomic_name_must_be_one_component(
    workdir: Path, staging: str, name: object
) -> None:
    (workdir / "a").mkdir()
    with pytest.raises(ValueError, match="name must be a single file name"):
        crashsafe.write_file_atomic(workdir, name, b"data", 0o600)  # type: ignore[arg-type]
    assert entries(workdir) == ["a"]
    assert entries(workdir / "a") == []


@pytest.mark.parametrize("name", [None, 42, ["key"]], ids=repr)
def test_write_file_atomic_name_of_the_wrong_type_raises_type_error(
    workdir: Path, staging: str, name: object
) -> None:
    with pytest.raises(TypeError, match=f"name must be a file name .*not {type(name).__name__}"):
        crashsafe.write_file_atomic(workdir, name, b"data", 0o600)  # type: ignore[arg-type]
    assert entries(workdir) == []


def test_write_file_atomic_takes_path_like_and_bytes_as_paths_are(
    workdir: Path, staging: str
) -> None:
    crashsafe.write_file_atomic(workdir, Path("a"), b"1", 0o600)
    crashsafe.write_file_atomic(os.fsencode(workdir), b"b", b"2", 0o600)  # type: ignore[arg-type]
    assert [(workdir / n).read_bytes() for n in ("a", "b")] == [b"1", b"2"]


@pytest.mark.parametrize("data", ["text", None, 42, ["a"]])
def test_write_file_atomic_data_must_be_bytes_like(
    workdir: Path, staging: str, data: object
) -> None:
    with pytest.raises(TypeError, match=f"data must be bytes, not {type(data).__name__}"):
        crashsafe.write_file_atomic(workdir, "f", data, 0o600)  # type: ignore[arg-type]
    assert entries(workdir) == []


def test_write_file_atomic_missing_dir_raises_and_creates_nothing(
    workdir: Path, staging: str
) -> None:
    with pytest.raises(FileNotFoundError):
        crashsafe.write_file_atomic(workdir / "missing", "f", b"data", 0o600)
    assert entries(workdir) == []


def test_write_file_atomic_on_a_directory_raises_is_a_directory_error(
    workdir: Path, staging: str
) -> None:
    (workdir / "sub").mkdir()
    with pytest.raises(IsADirectoryError):
        crashsafe.write_file_atomic(workdir, "sub", b"data", 0o600)
    assert entries(workdir) == ["sub"]
    assert entries(workdir / "sub") == []


# ---------------------------------------------------------------- sweep is public


def test_sweep_is_exported_and_leaves_ordinary_files_alone(workdir: Path) -> None:
    (workdir / "data").write_bytes(b"keep")
    (workdir / ".hidden.tmp").write_bytes(b"keep")
    assert crashsafe.sweep(workdir, min_age=0) == []
    assert entries(workdir) == [".hidden.tmp", "data"]


def test_a_fifo_is_never_replaced(workdir: Path, staging: str) -> None:
    fifo = workdir / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="Not a regular file") as caught:
        crashsafe.atomic_write(fifo, b"x")
    assert caught.value.errno == errno.EINVAL
    assert caught.value.filename == str(fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(workdir)) == ["pipe"]


# ---------------------------------------------------------------- errors in one home

# One instance of every public error, with every attribute set, and the builtin
# a caller catches it by.
ERRORS: dict[str, tuple[BaseException, type[BaseException]]] = {
    "NotDurableError": (NotDurableError(5, "Input/output error", "/d/f"), OSError),
    "VerificationError": (crashsafe.VerificationError("cut short", "/d/f.zst"), ValueError),
    "JSONDocumentError": (
        crashsafe.JSONDocumentError(
            "/d/f.json", "truncated", detail="Expecting value", lineno=3, colno=4, pos=20
        ),
        ValueError,
    ),
    "ForeignJournalError": (
        crashsafe.ForeignJournalError("/d/.crashsafe-journal", "bad operation 'x'"),
        ValueError,
    ),
    "LockTimeoutError": (
        crashsafe.LockTimeoutError("/d/f", "/d/.f.lock", 2.5),
        TimeoutError,
    ),
    "NotRecordedError": (
        crashsafe.NotRecordedError("/abs/f", "f", "/d/sums.json"),
        KeyError,
    ),
    "SnapshotDeadlockError": (crashsafe.SnapshotDeadlockError("/d"), RuntimeError),
    "ObjectStoreError": (
        crashsafe.ObjectStoreError("503: SlowDown", "s3://b/k", status=503),
        OSError,
    ),
    "StoreCapabilityError": (
        crashsafe.StoreCapabilityError("ignores If-None-Match", "s3://b/k"),
        OSError,
    ),
    "AmbiguousWriteError": (crashsafe.AmbiguousWriteError("answer lost", "s3://b/k"), OSError),
    "UpdateConflictError": (crashsafe.UpdateConflictError("s3://b/k", 64), TimeoutError),
    "HardLinkedTargetError": (crashsafe.HardLinkedTargetError("/d/f", 3), OSError),
    "MountedTargetError": (crashsafe.MountedTargetError("/etc/hosts"), OSError),
    "UnsupportedByFilesystemError": (
        crashsafe.UnsupportedByFilesystemError("/mnt/usb/f", "create-only is not possible"),
        OSError,
    ),
    "MetadataNotPreservedWarning": (
        crashsafe.MetadataNotPreservedWarning("/d/f", ["security.selinux (EPERM: no)"]),
        UserWarning,
    ),
}


def test_every_public_error_lives_in_errors_and_is_exported() -> None:
    import crashsafe.errors

    assert set(crashsafe.errors.__all__) == set(ERRORS)
    for name in crashsafe.errors.__all__:
        error_type = getattr(crashsafe.errors, name)
        assert getattr(crashsafe, name) is error_type
        assert name in crashsafe.__all__
        assert issubclass(error_type, ERRORS[name][1])
        assert error_type.__module__ == "crashsafe.errors"


def test_old_import_locations_still_work() -> None:
    from crashsafe import checksums, documents, locking

    assert documents.JSONDocumentError is crashsafe.JSONDocumentError
    assert locking.LockTimeoutError is crashsafe.LockTimeoutError
    assert checksums.NotRecordedError is crashsafe.NotRecordedError


@pytest.mark.parametrize("name", ERRORS)
def test_every_public_error_survives_pickle_with_its_attributes(name: str) -> None:
    import pickle

    error, _ = ERRORS[name]
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args
    attributes = {k: v for k, v in vars(error).items() if not k.startswith("_")}
    for key in ("errno", "strerror", "filename", "filename2"):
        if isinstance(error, OSError):
            attributes[key] = getattr(error, key)
    assert attributes, "an error without attributes proves nothing here"
    assert {k: getattr(copy, k) for k in attributes} == attributes
