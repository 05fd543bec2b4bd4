"""The ``crashsafe`` command: a thin client of the library.

Exit status: 0 done; 1 failed, the target is unchanged (``write``: also empty
input without ``--allow-empty``; ``check``: a file is not complete, or its
format is unknown); 2 bad usage; 3 written, but the directory fsync failed or
was interrupted (durability unconfirmed); 4 create-only and the target exists;
130 interrupted (target unchanged).

The commands are here; what they take (options, help texts) is in
:mod:`crashsafe._cli_parser`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, BinaryIO, Final

from crashsafe import _cli_checksums
from crashsafe._checks import BinaryMode, Validator
from crashsafe._cli_parser import build_parser
from crashsafe.atomic import AtomicFile
from crashsafe.errors import AmbiguousWriteError, NotDurableError, VerificationError
from crashsafe.objectstore._url import is_url
from crashsafe.staging import sweep

EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_DURABLE: Final = 3
EXIT_EXISTS: Final = 4
EXIT_INTERRUPTED: Final = 130
_CHUNK: Final = 1 << 20


def _checks(args: argparse.Namespace) -> list[Validator]:
    from crashsafe import validators

    checks: list[Validator] = [validators.BY_NAME[name] for name in args.validate]
    if args.sha256 is not None:
        checks.append(validators.sha256(args.sha256))
    if args.min_size:
        checks.append(_MinSize(args.min_size))
    return checks


class _MinSize:
    """A validator: at least *n* bytes (the library's ``size(n)`` wants exactly n)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, f: BinaryIO) -> None:
        size = os.fstat(f.fileno()).st_size
        if size < self.n:
            raise VerificationError(f"{size} bytes, fewer than --min-size {self.n}")


def _say_waiting(what: str) -> None:
    # A person at a terminal would otherwise see nothing and think it hung.
    print(
        f"crashsafe: reading standard input for {what}; end it with Ctrl-D at the start "
        "of a line (Ctrl-C: nothing is changed)",
        file=sys.stderr,
        flush=True,
    )


def _write(args: argparse.Namespace) -> int:
    mode: BinaryMode = "xb" if args.create_only else "ab" if args.append else "wb"
    if is_url(args.path):
        return _write_object(args, mode)
    staged = AtomicFile(
        args.path,
        mode,
        perm=args.perm,
        durability=args.durability,
        follow_symlinks=not args.no_follow,
        validate=_checks(args),
    )
    try:
        with staged:
            if os.isatty(0):
                _say_waiting(args.path)
            if _read_input(staged.file) == 0 and not args.allow_empty:
                raise VerificationError(
                    "standard input is empty (give --allow-empty to publish an empty file)",
                    args.path,
                )
    except KeyboardInterrupt:
        if not staged.committed:
            raise
        # Interrupted during the directory fsync: the new content is in place.
        print(
            f"crashsafe: interrupted after {args.path} was replaced; "
            "the new content may not survive a power cut",
            file=sys.stderr,
        )
        return EXIT_NOT_DURABLE
    return 0


def _read_input(out: BinaryIO) -> int:
    """Copy standard input to its end into *out*; return the byte count.

    By descriptor, one read(2) at a time: a buffered reader keeps reading after
    a terminal's Ctrl-D has returned a short read, so one Ctrl-D would not end
    the input (it would take two).
    """
    import select

    total = 0
    while True:
        try:
            chunk = os.read(0, _CHUNK)
        except BlockingIOError:  # a non-blocking stdin left by the caller
            select.select([0], [], [])
            continue
        if not chunk:
            return total
        out.write(chunk)
        total += len(chunk)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


class _ProgressBar:
    """A one-line bar on standard error, redrawn at most ten times a second."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.shown = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self.shown < 0.1 and done != total:
            return
        self.shown = now
        rate = done / max(now - self.started, 1e-9)
        if total:
            filled = 30 * done // total
            head = f"{100 * done // total:3d}% [{'#' * filled}{'.' * (30 - filled)}] "
            amount = f"{_size(done)} / {_size(total)}"
        else:
            head, amount = "", _size(done)
        sys.stderr.write(f"\r{head}{amount}  {_size(rate)}/s\x1b[K")
        sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


def _write_object(args: argparse.Namespace, mode: BinaryMode) -> int:
    from crashsafe import atomic_open

    with atomic_open(
        args.path,
        mode,
        perm=args.perm,
        durability=args.durability,
        follow_symlinks=not args.no_follow,
        validate=_checks(args),
    ) as f:
        if os.isatty(0):
            _say_waiting(args.path)
        if _read_input(f) == 0 and not args.allow_empty:
            raise VerificationError(
                "standard input is empty (give --allow-empty to publish an empty object)",
                args.path,
            )
    return 0


def _print_json(result: dict[str, object]) -> None:
    import json

    print(json.dumps(result))


def _copy(args: argparse.Namespace) -> int:
    from crashsafe.copying import atomic_copy

    source: str | IO[bytes] = args.src
    if args.src == "-":
        # Unbuffered, so that one Ctrl-D ends a terminal's input (see _read_input).
        source = open(0, "rb", buffering=0, closefd=False)  # noqa: SIM115 - closed below
    from_terminal = args.src == "-" and os.isatty(0)
    if from_terminal:
        _say_waiting(args.dst)
    show_bar = sys.stderr.isatty() and not args.quiet and not args.json and not from_terminal
    bar = _ProgressBar() if show_bar else None
    started = time.monotonic()
    try:
        result = atomic_copy(
            source,
            args.dst,
            perm=args.perm,
            durability=args.durability,
            follow_symlinks=not args.no_follow,
            validate=_checks(args),
            progress=bar,
        )
    finally:
        if bar is not None:
            bar.finish()
        if not isinstance(source, str):
            source.close()
    seconds = time.monotonic() - started
    if args.json:
        _print_json(
            {
                "ok": True,
                "src": args.src,
                "dst": args.dst,
                "bytes": result.bytes,
                "method": result.method,
                "seconds": round(seconds, 6),
            }
        )
    elif not args.quiet:
        rate = f"{_size(result.bytes / seconds)}/s" if seconds > 0 else "-"
        what = "standard input" if args.src == "-" else args.src
        print(
            f"copied {what} to {args.dst}: {result.bytes} bytes ({_size(result.bytes)}) "
            f"by {result.method} in {seconds:.3f} s, {rate}"
        )
    return 0


# The first bytes of each format that check tells without --as; JSON is told
# by its first character instead. c1z first: it is its own magic, then zstd.
_MAGIC: Final = (
    (b"C1ZF\0", "c1z"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x1f\x8b", "gzip"),
    (b"SQLite format 3\0", "sqlite"),
)
_SNIFF: Final = 4096


def _sniff(head: bytes) -> str | None:
    """The format that *head*, a file's first bytes, shows; None if none does."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    # A zstd skippable frame (magic 0x184D2A50 to 0x184D2A5F, little-endian).
    if head[1:4] == b"\x2a\x4d\x18" and head[:1] and head[0] & 0xF0 == 0x50:
        return "zstd"
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if text[:1] in (b"{", b"["):
        return "json"
    return None


def _check_one(path: str, given: str | None) -> dict[str, object]:
    """Check one file; the result as --json prints it, and the message on standard error."""
    from crashsafe import validators

    result: dict[str, object] = {"file": path, "format": given, "complete": False}
    try:
        with open(path, "rb") as f:
            form = given
            if form is None:
                form = _sniff(f.read(_SNIFF))
                f.seek(0)
            if form is None:
                result["error"] = (
                    "cannot tell its format from its first bytes (not zstd, gzip, SQLite, "
                    "c1z or JSON); give --as FORMAT"
                )
                return result
            result["format"] = form
            validators.BY_NAME[form](f)
    except VerificationError as e:
        result["error"] = f"not a complete {result['format']} file: {e.message}"
        return result
    except (OSError, ModuleNotFoundError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        result["error"] = f"cannot check: {reason}"
        return result
    result["complete"] = True
    return result


def _check(args: argparse.Namespace) -> int:
    results = [_check_one(path, args.format) for path in args.files]
    ok = all(r["complete"] for r in results)
    for r in results:
        if not r["complete"]:
            print(f"crashsafe: {r['file']}: {r['error']}", file=sys.stderr)
        elif not args.json:
            print(f"{r['file']}: complete {r['format']} file")
    if args.json:
        _print_json({"ok": ok, "files": results})
    return 0 if ok else EXIT_FAILED


def _sweep(args: argparse.Namespace) -> int:
    paths = sweep(args.directory, min_age=args.min_age, dry_run=args.dry_run)
    if args.json:
        _print_json(
            {
                "ok": True,
                "directory": args.directory,
                "dry_run": args.dry_run,
                "orphans": [str(path) for path in paths],
            }
        )
    else:
        for path in paths:
            print(path)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from crashsafe.doctor import diagnose

    try:
        diagnosis = diagnose(args.directory, crash_probe=args.crash_probe)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
        # Bad usage, not a finding: DIR is not a directory, or the probe needs root.
        message = f"doctor: {args.directory}: {e.strerror}"
        print(f"crashsafe: {message}", file=sys.stderr)
        if args.json:
            _print_json({"ok": False, "exit_status": EXIT_USAGE, "error": message})
        return EXIT_USAGE
    except OSError as e:
        # A failure no probe expects (EIO, say): the probing stopped there.
        message = f"doctor: {e.filename or args.directory}: {e.strerror or e}"
        print(f"crashsafe: {message}", file=sys.stderr)
        if args.json:
            _print_json({"ok": False, "exit_status": EXIT_FAILED, "error": message})
        return EXIT_FAILED
    if args.json:
        _print_json(diagnosis.to_json())
    else:
        print(diagnosis.text())
    if not diagnosis.ok:
        print(f"crashsafe: {args.directory}: refused {diagnosis.refused}", file=sys.stderr)
        return EXIT_FAILED
    return 0


class _CountBar:
    """Progress as one line on standard error, redrawn at each step: "VERB done/total"."""

    def __init__(self, verb: str) -> None:
        self.verb = verb

    def __call__(self, done: int, total: int) -> None:
        filled = 30 * done // max(total, 1)
        bar = "#" * filled + "." * (30 - filled)
        sys.stderr.write(f"\r{self.verb} {done}/{total} [{bar}]\x1b[K")
        sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


def _torture(args: argparse.Namespace) -> int:
    import secrets

    from crashsafe._torture import report, torture

    where = args.directory
    if where is not None and not os.path.isdir(where):
        why = "not a directory" if os.path.exists(where) else "no such directory"
        print(f"crashsafe torture: error: DIR {where}: {why}", file=sys.stderr)
        return EXIT_USAGE
    seed = secrets.randbelow(1_000_000) if args.seed is None else args.seed
    bar = _CountBar("killing") if sys.stderr.isatty() and not args.json else None
    try:
        result = torture(where, args.n, seed, args.size, progress=bar)
    except RuntimeError as e:  # a writer child failed or hung: nothing was measured
        status, message = EXIT_FAILED, f"torture could not run: {e}"
        print(f"crashsafe: {message}", file=sys.stderr)
        if args.json:
            _print_json({"ok": False, "exit_status": status, "error": message})
        return status
    except KeyboardInterrupt:
        print("crashsafe: interrupted; the scratch directory is removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if bar is not None:
            bar.finish()
    bug = result.bug()
    if args.json:
        failed = {} if bug is None else {"exit_status": EXIT_FAILED, "error": bug}
        _print_json({**result.to_json(), **failed})
        if bug is not None:
            print(f"crashsafe: {bug}", file=sys.stderr)
    else:
        print(report(result))
    return 0 if bug is None else EXIT_FAILED


def _crashcheck(args: argparse.Namespace) -> int:
    from crashsafe.crashcheck import CrashcheckError, explore

    program = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not program:
        print("crashsafe crashcheck: error: no PROGRAM given (after --)", file=sys.stderr)
        return EXIT_USAGE
    bar = _CountBar("checking") if sys.stderr.isatty() and not args.json else None
    # A SIGTERM unwinds like an exception, so the checks running are stopped and the
    # scratch copies removed, as after Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    try:
        report = explore(
            program,
            args.check,
            dirs=args.dirs or ["."],
            exhaustive=args.exhaustive,
            max_states=args.max_states,
            jobs=args.jobs,
            timeout=args.timeout,
            ignore_mmap=args.ignore_mmap,
            # With --json, standard output is the report's alone.
            stdout=2 if args.json else None,
            progress=bar,
        )
    except (CrashcheckError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        message = str(e).removeprefix("crashcheck: ")
        print(f"crashsafe crashcheck: {message}", file=sys.stderr)
        if args.json:
            _print_json({"ok": False, "exit_status": EXIT_USAGE, "error": message})
        return EXIT_USAGE
    finally:
        if bar is not None:
            bar.finish()
    report.seconds = time.monotonic() - started
    status = EXIT_FAILED if report.vulnerabilities else 0
    if args.json:
        _print_json({"ok": not report.vulnerabilities, "exit_status": status,
                     "program": program, **report.to_dict()})  # fmt: skip
    else:
        print(report.text())
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "write": _write,
        "copy": _copy,
        "check": _check,
        "sweep": _sweep,
        "doctor": _doctor,
        "torture": _torture,
        "crashcheck": _crashcheck,
        "checksums": _cli_checksums.run,
    }
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        status, message = EXIT_INTERRUPTED, "interrupted; the target is unchanged"
    except NotDurableError as e:
        status, message = EXIT_NOT_DURABLE, f"warning: {e}"
    except FileExistsError as e:
        status, message = EXIT_EXISTS, f"{e.filename}: already exists (--create-only)"
    except AmbiguousWriteError as e:
        status, message = EXIT_FAILED, f"{e}; it holds one complete version, but which is unknown"
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        status, message = EXIT_FAILED, f"{where}{e.strerror or e}; nothing was changed"
    except VerificationError as e:
        where = f"{e.filename}: " if e.filename else ""
        status, message = EXIT_FAILED, f"{where}rejected: {e.message}; nothing was changed"
    except ModuleNotFoundError as e:  # a validator's decoder is an optional extra
        status, message = EXIT_FAILED, f"{e}; nothing was changed"
    except ValueError as e:
        parser.error(str(e))
    print(f"crashsafe: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        _print_json({"ok": False, "exit_status": status, "error": message})
    return status
