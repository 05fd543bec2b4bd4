"""What each peer's atomic write does to modes, symlinks and an error in the block.

The table in docs/migration.md comes from this script: for each writer, one
overwrite of a 0640 file, one new file (umask 022), one write through a symlink, one
write that raises in the block. Needs the peers (benchmarks/requirements.txt, plus
click and jupyter_server)::

    python benchmarks/peers_behaviour.py

Pair it with ``strace -f -y -e trace=fsync,rename,link,openat`` on one write to see
which fsyncs each makes.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import tempfile
from contextlib import AbstractContextManager
from typing import IO, Any

WRITERS = ["atomicwrites", "compat", "crashsafe", "safer", "boltons", "click", "jupyter_server"]


def writer(lib: str, path: str) -> AbstractContextManager[IO[Any]]:
    """A text-mode overwrite of *path* with *lib*'s atomic write, as its docs show it."""
    if lib == "compat":
        from crashsafe.compat.atomicwrites import atomic_write

        return atomic_write(path, overwrite=True)
    if lib == "crashsafe":
        import crashsafe

        return crashsafe.atomic_open(path, "w")
    module, call = PEERS[lib]
    peer: Any = importlib.import_module(module)
    return call(peer, path)  # type: ignore[no-any-return]


# Each peer's module and its call, as its documentation shows it.
PEERS: dict[str, tuple[str, Any]] = {
    "atomicwrites": ("atomicwrites", lambda m, p: m.atomic_write(p, overwrite=True)),
    "safer": ("safer", lambda m, p: m.open(p, "w")),
    "boltons": ("boltons.fileutils", lambda m, p: m.atomic_save(p, text_mode=True)),
    "click": ("click", lambda m, p: m.open_file(p, "w", atomic=True)),
    "jupyter_server": (
        "jupyter_server.services.contents.fileio",
        lambda m, p: m.atomic_writing(p),
    ),
}


def probe(lib: str) -> dict[str, object]:
    """The four observations for *lib*, in a fresh directory."""
    found: dict[str, object] = {}
    d = tempfile.mkdtemp()
    try:
        target, new, link = (os.path.join(d, n) for n in ("t", "n", "link"))
        with open(target, "w") as f:
            f.write("old")
        os.chmod(target, 0o640)
        with writer(lib, target) as f:
            f.write("new")
        found["replaced file's mode"] = oct(os.stat(target).st_mode & 0o777)
        with writer(lib, new) as f:
            f.write("new")
        found["new file's mode"] = oct(os.stat(new).st_mode & 0o777)
        os.unlink(new)
        os.symlink("t", link)
        with writer(lib, link) as f:
            f.write("via link")
        found["symlink kept"] = os.path.islink(link)
        os.unlink(link)
        with open(target, "w") as f:
            f.write("old")
        try:
            with writer(lib, target) as f:
                f.write("partial")
                raise RuntimeError("the block failed")
        except RuntimeError:
            pass
        with open(target) as f:
            found["target after an error in the block"] = f.read()  # "old": unchanged
        found["directory after"] = sorted(os.listdir(d))
    finally:
        shutil.rmtree(d)
    return found


def main() -> None:
    os.umask(0o022)
    for lib in sys.argv[1:] or WRITERS:
        try:
            print(f"{lib:15} {json.dumps(probe(lib))}")
        except ImportError as e:
            print(f"{lib:15} not installed ({e.name})")


if __name__ == "__main__":
    main()
