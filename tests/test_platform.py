"""The platform seam: one interface, provided in full by both backends.

crashsafe._platform._interface states what a backend provides; mypy checks both
backends against it (``mypy``, ``--platform win32``, ``--platform darwin``).
These tests make the same drift fail on any OS, at run time: each backend
exports exactly the interface's names, with its parameters, and the Windows
backend imports here, so a change to one backend alone fails CI. They do not
prove that the Windows backend works on Windows: its moves and locks cannot run
here, and it is not verified on this project's CI.
"""

from __future__ import annotations

import errno
import inspect
import os
import stat
import types
from pathlib import Path

import pytest

import crashsafe._platform
import crashsafe._platform._posix as posix
import crashsafe._platform._windows as windows
from crashsafe._platform import _interface
from tests.harness.checks import entries

BACKENDS = [posix, windows]


def _parameters(function: object) -> list[tuple[str, object, object]]:
    """Name, kind and default of each parameter: what a caller relies on. The
    types are mypy's to check (they read differently in builtins)."""
    assert callable(function)
    signature = inspect.signature(function)
    return [(p.name, p.kind, p.default) for p in signature.parameters.values() if p.name != "self"]


def _declared(protocol: type) -> dict[str, object]:
    """The members a protocol class declares: a property as "property", a method
    as its parameters."""
    return {
        name: "property" if isinstance(value, property) else _parameters(value)
        for name, value in vars(protocol).items()
        if not name.startswith("_") and (isinstance(value, property) or inspect.isfunction(value))
    }


def _provided(module: types.ModuleType) -> dict[str, object]:
    """What *module* exports, described as _declared describes the Backend protocol
    (its classes and the context factory are properties there)."""
    declared = _declared(_interface.Backend)
    return {
        name: "property" if declared.get(name) == "property" else _parameters(getattr(module, name))
        for name in module.__all__
    }


def _directory_methods(cls: type) -> dict[str, object]:
    return {
        name: _parameters(member)
        for name, member in vars(cls).items()
        if not name.startswith("_") and inspect.isfunction(member)
    }


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_each_backend_exports_exactly_the_interface(backend: types.ModuleType) -> None:
    declared = _declared(_interface.Backend)
    assert sorted(backend.__all__) == sorted(declared) == sorted(crashsafe._platform.__all__)
    assert _provided(backend) == declared
    for name in crashsafe._platform.__all__:
        assert callable(getattr(backend, name)), name


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_each_backends_directory_has_exactly_the_interfaces_methods(
    backend: types.ModuleType, workdir: Path
) -> None:
    declared = _declared(_interface.Directory)
    methods = {name: kind for name, kind in declared.items() if kind != "property"}
    assert _directory_methods(backend.Directory) == methods
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert _parameters(backend.Directory) == [("path", positional, inspect.Parameter.empty)]
    directory = backend.Directory(str(workdir))
    try:
        for name in (n for n, kind in declared.items() if kind == "property"):
            assert isinstance(getattr(directory, name), str), name
        assert directory.path == str(workdir)
    finally:
        directory.close()


def test_the_seam_takes_everything_from_the_posix_backend_here() -> None:
    for name in crashsafe._platform.__all__:
        assert getattr(crashsafe._platform, name) is getattr(posix, name), name


def test_windows_backend_imports_here_and_its_pure_parts_run(workdir: Path) -> None:
    """What needs no Windows call runs anywhere: names, status, create and
    discard, the sweep's reads, the lock file's open."""
    directory = windows.Directory(str(workdir))
    fd, temp, mode, _ = directory.create_temp("target", None)
    assert temp is not None and (mode, directory.names()) == (0o666, [temp])
    st = directory.lstat(temp)
    assert st is not None and stat.S_ISREG(st.st_mode)
    assert directory.mtime(temp) == os.stat(workdir / temp).st_mtime
    assert directory.lstat("missing") is None
    assert directory.mtime("missing") is None
    directory.discard(fd, temp)
    assert entries(workdir) == []
    # Windows has no anonymous files, nor a path that reopens an open one.
    assert directory.create_anonymous() is None
    with pytest.raises(OSError) as info:
        directory.link_anonymous(0, "name")
    assert (info.value.errno, info.value.filename) == (errno.ENOTSUP, str(workdir / "name"))
    assert windows.reopen_path(0) is None
    (workdir / "sub").mkdir()
    assert directory.mtime("sub") is None  # not a regular file
    os.rmdir(workdir / "sub")
    (workdir / "gone").write_bytes(b"")
    assert (directory.remove("gone"), directory.remove("gone")) == (True, False)
    lock_file = str(workdir / ".f.lock")
    fd = windows.open_lock_file(lock_file)
    try:
        assert windows.lock_file_linked(lock_file, fd)
        os.unlink(lock_file)
        assert not windows.lock_file_linked(lock_file, fd)
    finally:
        os.close(fd)
    directory.close()
    with pytest.raises(FileNotFoundError) as missing:
        windows.Directory(str(workdir / "missing"))
    assert missing.value.filename == str(workdir / "missing")
