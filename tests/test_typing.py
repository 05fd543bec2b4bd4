"""Static types: mypy (strict) sees a text staged file as TextIO and a binary one as
BinaryIO, and refuses bytes to a text file, str to a binary one, and a mode that is not
one of crashsafe's literals.

Each case is a small program checked by a real mypy run; a line marked ``# E`` must be
the only error of its program, a line marked ``# R: TYPE`` must reveal that type.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

HEADER = """\
from typing import BinaryIO, TextIO, reveal_type
from crashsafe import AtomicFile, atomic_open
from crashsafe.atomic import BinaryMode, TextMode

"""

GOOD = """\
def good(p: str, tm: TextMode, bm: BinaryMode) -> None:
    with atomic_open(p, "w") as t:
        reveal_type(t)  # R: typing.TextIO
        t.write("é")
    for_each_text(p)
    with atomic_open(p) as b:
        reveal_type(b)  # R: typing.BinaryIO
        b.write(b"x")
    with atomic_open(p, "ab") as b2:
        reveal_type(b2)  # R: typing.BinaryIO
    with atomic_open(p, tm, encoding="latin-1") as t2:
        reveal_type(t2)  # R: typing.TextIO
    with atomic_open(p, bm) as b3:
        reveal_type(b3)  # R: typing.BinaryIO
    staged = AtomicFile(p)
    reveal_type(staged)  # R: crashsafe.atomic.AtomicFile[typing.BinaryIO]
    reveal_type(staged.file)  # R: typing.BinaryIO
    staged.file.write(bytearray(b"x"))
    with AtomicFile(p, mode="xt", newline="") as text:
        reveal_type(text)  # R: crashsafe.atomic.AtomicFile[typing.TextIO]
        text.file.write("x")
    staged.commit()


def staged_paths(p: str) -> None:
    import pathlib
    from crashsafe import atomic_path

    with atomic_path(p) as s:
        reveal_type(s)  # R: str
    with atomic_path(pathlib.Path(p), perm=0o600) as sp:
        reveal_type(sp)  # R: pathlib.Path


def for_each_text(p: str) -> None:
    with atomic_open(p, "wt") as a:
        reveal_type(a)  # R: typing.TextIO
    with atomic_open(p, "x") as b:
        reveal_type(b)  # R: typing.TextIO
    with atomic_open(p, "xt") as c:
        reveal_type(c)  # R: typing.TextIO
    with atomic_open(p, "a") as d:
        reveal_type(d)  # R: typing.TextIO
    with atomic_open(p, "at") as e:
        reveal_type(e)  # R: typing.TextIO
    with atomic_open(p, "xb") as f:
        reveal_type(f)  # R: typing.BinaryIO
    with atomic_open(p, "wb") as g:
        reveal_type(g)  # R: typing.BinaryIO
    with atomic_open(p, "r+b") as h:
        reveal_type(h)  # R: typing.BinaryIO
    with atomic_open(p, "a+") as i:
        reveal_type(i)  # R: typing.TextIO
    with atomic_open(p, "w+t") as j:
        reveal_type(j)  # R: typing.TextIO
    reveal_type(AtomicFile(p, "r+"))  # R: crashsafe.atomic.AtomicFile[typing.TextIO]
    reveal_type(AtomicFile(p, "a+b").file)  # R: typing.BinaryIO
"""

BAD = {
    "bytes_to_text": """\
def bad(p: str) -> None:
    with atomic_open(p, "w") as f:
        f.write(b"x")  # E
""",
    "str_to_binary": """\
def bad(p: str) -> None:
    with atomic_open(p, "wb") as f:
        f.write("x")  # E
""",
    "str_to_default_binary": """\
def bad(p: str) -> None:
    AtomicFile(p).file.write("x")  # E
""",
    "bytes_to_text_object": """\
def bad(p: str) -> None:
    AtomicFile(p, "a").file.write(b"x")  # E
""",
    "read_mode": """\
def bad(p: str) -> None:
    with atomic_open(p, "r") as f:  # E
        pass
""",
    "read_mode_object": """\
def bad(p: str) -> None:
    AtomicFile(p, "rb+")  # E
""",
    "plain_str_mode": """\
def bad(p: str, mode: str) -> None:
    with atomic_open(p, mode) as f:  # E
        pass
""",
}


def _mypy(directory: Path) -> list[str]:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--show-error-codes",
            "--no-color-output",
            "--cache-dir",
            str(directory / ".mypy_cache"),
            str(directory),
        ],
        capture_output=True,
        text=True,
        cwd=directory,
        timeout=600,
        check=False,
    )
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.stdout.splitlines()


def _lines(lines: list[str], name: str) -> list[tuple[int, str, str]]:
    """(line in the case's own text, kind, message) for each report about file *name*."""
    found = []
    offset = HEADER.count("\n")
    for line in lines:
        match = re.match(rf".*{re.escape(name)}\.py:(\d+): (error|note): (.*)", line)
        if match:
            found.append((int(match[1]) - offset, match[2], match[3]))
    return found


def test_mypy_types_files_by_mode_and_refuses_wrong_writes_and_modes(tmp_path: Path) -> None:
    (tmp_path / "good.py").write_text(HEADER + GOOD)
    for name, body in BAD.items():
        (tmp_path / f"{name}.py").write_text(HEADER + body)
    lines = _mypy(tmp_path)

    reports = _lines(lines, "good")
    assert [r for r in reports if r[1] == "error"] == [], lines
    revealed = {number: text for number, kind, text in reports if kind == "note"}
    expected = {
        number: re.search(r"# R: (\S+)", text)[1]  # type: ignore[index]
        for number, text in enumerate(GOOD.splitlines(), 1)
        if "# R:" in text
    }
    assert len(expected) == 22
    assert revealed == {n: f'Revealed type is "{t}"' for n, t in expected.items()}, lines

    for name, body in BAD.items():
        marked = [n for n, text in enumerate(body.splitlines(), 1) if text.endswith("# E")]
        errors = [(n, text) for n, kind, text in _lines(lines, name) if kind == "error"]
        assert [n for n, _ in errors] == marked, (name, lines)
        code = errors[0][1]
        assert "[arg-type]" in code or "[call-overload]" in code, (name, code)


def test_readme_example_with_a_literal_mode_variable_type_checks(tmp_path: Path) -> None:
    (tmp_path / "example.py").write_text(
        textwrap.dedent(
            """\
            import json
            from typing import Literal
            import crashsafe

            def save(path: str, state: dict[str, int], append: bool) -> None:
                mode: Literal["w", "a"] = "a" if append else "w"
                with crashsafe.atomic_open(path, mode) as f:
                    json.dump(state, f)
            """
        )
    )
    assert _mypy(tmp_path) == []
