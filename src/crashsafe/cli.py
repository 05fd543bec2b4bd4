"""The ``crashsafe`` command: a thin client of the library.

Exit status: 0 done; 1 failed, the target is unchanged (``write``: also empty
input without ``--allow-empty``; ``check``: a file is not complete, or its
format is unknown); 2 bad usage; 3 written, but the directory fsync failed or
was interrupted (durability unconfirmed); 4 create-only and the target exists;
130 interrupted (target unchanged).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any, BinaryIO, Final

from crashsafe._checks import BinaryMode, Validator
from crashsafe.atomic import AtomicFile
from crashsafe.errors import NotDurableError, VerificationError
from crashsafe.staging import sweep

EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_NOT_DURABLE: Final = 3
EXIT_EXISTS: Final = 4
EXIT_INTERRUPTED: Final = 130
_CHUNK: Final = 1 << 20

_DESCRIPTION = """\
Crash-safe file writes. A reader of the target sees the old content or the new
content, complete, even if this command is killed or the power fails; never
an empty or cut-off file."""

_WRITE_EPILOG = """\
examples:
  sort data.txt | crashsafe write data.txt     # like sponge, but crash-safe
  make-key | crashsafe write --perm 600 key.pem
  crashsafe write --create-only lock.json < lock.json.new
  render-config | crashsafe write --validate json --min-size 100 config.json

exit status: 0 written; 1 failed, rejected, or empty input without
  --allow-empty: target unchanged; 2 bad usage;
3 written, but the directory fsync failed or was interrupted (the new content
  is in place but may not survive a power cut);
4 --create-only and the target exists; 130 interrupted, target unchanged."""

_FORMATS: Final = ("zstd", "gzip", "json", "sqlite", "c1z")

_COPY_EPILOG = """\
examples:
  crashsafe copy build/sync.c1z /srv/sync.c1z --validate c1z
  crashsafe copy image.zst /data/image.zst --validate zstd --sha256 9f86d0...
  curl -s https://example.org/x.gz | crashsafe copy --validate gzip - x.gz

exit status: 0 copied; 1 failed or rejected, DST unchanged; 2 bad usage;
3 copied, but the directory fsync failed or was interrupted;
130 interrupted, DST unchanged."""

_CHECK_EPILOG = """\
exit status: 0 every FILE is complete and valid; 1 one is not (or cannot be
read, or its format is unknown), and the message says why; 2 bad usage."""


# argparse names a type= function in its messages ("invalid float value"), so
# each option's type is one of these, and each says what the option takes.
def _octal_mode(text: str) -> int:
    try:
        value = int(text.removeprefix("0o"), 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 644") from None
    if not 0 <= value <= 0o7777:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range (0 to 7777)")
    return value


def _sha256_hex(text: str) -> str:
    if len(text) != 64 or not all(c in "0123456789abcdefABCDEF" for c in text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a SHA-256 digest (64 hexadecimal characters)"
        )
    return text


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _byte_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of bytes >= 0")
    return value


class _Version(argparse.Action):
    """--version, looked up only when asked: importlib.metadata costs every start."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from importlib import metadata

        try:
            version = metadata.version("crashsafe")
        except metadata.PackageNotFoundError:
            version = "(not installed)"
        print(f"crashsafe {version}")
        parser.exit()


def _add_checks(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument(
        "--validate",
        action="append",
        choices=_FORMATS,
        default=[],
        metavar="FORMAT",
        help=f"reject {what} unless it is a complete file of FORMAT "
        f"({', '.join(_FORMATS)}); may be repeated",
    )
    command.add_argument(
        "--sha256", type=_sha256_hex, metavar="HEX", help=f"reject {what} unless its SHA-256 is HEX"
    )
    command.add_argument(
        "--min-size",
        type=_byte_count,
        default=0,
        metavar="N",
        help=f"reject {what} unless it has at least N bytes",
    )


def _add_json(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--json",
        action="store_true",
        help='print the result as one JSON object on standard output (with "ok")',
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crashsafe", description=_DESCRIPTION)
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    write = commands.add_parser(
        "write",
        help="publish standard input at PATH, all or nothing",
        description="Read standard input to its end, then replace PATH with it atomically. "
        "PATH is untouched until all input has been read and flushed to disk, and "
        "untouched if the input is empty (unless --allow-empty) or a check rejects it. "
        "From a terminal, one Ctrl-D at the start of a line ends the input.",
        epilog=_WRITE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    write.add_argument("path", metavar="PATH", help="the file to write")
    write.add_argument(
        "--perm",
        type=_octal_mode,
        metavar="MODE",
        help="exact octal mode, e.g. 600 (default: keep an existing file's mode and owner; "
        "a new file gets 666 less the umask)",
    )
    write.add_argument(
        "--durability",
        choices=["durable", "consistent", "none"],
        default="durable",
        help="durable (default): survives a power cut once the command returns; "
        "consistent: old or new after a power cut; none: no fsync, safe against "
        "a killed process only",
    )
    how = write.add_mutually_exclusive_group()
    how.add_argument(
        "--create-only",
        action="store_true",
        help="fail with exit status 4 if PATH exists (atomic against racing writers)",
    )
    how.add_argument(
        "--append", action="store_true", help="publish the old content followed by the input"
    )
    write.add_argument(
        "--no-follow",
        action="store_true",
        help="replace a symlink at PATH itself instead of the file it points to",
    )
    write.add_argument(
        "--allow-empty",
        action="store_true",
        help="publish empty input (by default it is refused: exit status 1, PATH unchanged)",
    )
    _add_checks(write, "the content (with --append: the old content and the input)")

    copy = commands.add_parser(
        "copy",
        help="copy SRC to DST all or nothing, verified before it is published",
        description="Copy SRC to DST through a staged file, by the fastest path the "
        "filesystems offer (reflink, copy_file_range, sendfile, read/write). The copy's "
        "size must equal SRC's, SRC must not change meanwhile, and each --validate "
        "check must pass; only then is DST replaced. A progress bar is shown when "
        "standard error is a terminal; a one-line summary is printed at the end.",
        epilog=_COPY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    copy.add_argument(
        "src",
        metavar="SRC",
        help="the file to copy (a symlink is followed); - for standard input (./- for a "
        "file named -)",
    )
    copy.add_argument("dst", metavar="DST", help="the file to replace or create")
    _add_checks(copy, "the copy")
    copy.add_argument(
        "--perm",
        type=_octal_mode,
        metavar="MODE",
        help="exact octal mode (default: keep an existing DST's mode and owner; "
        "a new DST gets SRC's permission bits)",
    )
    copy.add_argument("--durability", choices=["durable", "consistent", "none"], default="durable")
    copy.add_argument(
        "--no-follow",
        action="store_true",
        help="replace a symlink at DST itself instead of the file it points to",
    )
    copy.add_argument("--quiet", "-q", action="store_true", help="print no summary")
    _add_json(copy)

    check = commands.add_parser(
        "check",
        help="tell whether each FILE is a complete file of its format, without writing",
        description="Decode each FILE to its end as FORMAT: a zstd or gzip stream must be "
        "complete with nothing after it, a JSON document whole, a SQLite database "
        "consistent with its size and pass quick_check; c1z is the magic C1ZF\\0, "
        "then zstd, then SQLite. Without --as, the format is told from the file's "
        "first bytes (zstd, gzip, SQLite and c1z magic; JSON starting with { or [).",
        epilog=_CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument(
        "--as",
        dest="format",
        choices=_FORMATS,
        metavar="FORMAT",
        help=f"one of {', '.join(_FORMATS)} (default: from each file's first bytes)",
    )
    _add_json(check)

    clean = commands.add_parser(
        "sweep",
        help="remove temporary files left behind by killed writers",
        description="Remove crashsafe temporary files in DIR whose writer is proven dead "
        "(or, where that cannot be proven, older than --min-age). Prints each path removed. "
        "Never touches other files and never follows symlinks.",
    )
    clean.add_argument("directory", metavar="DIR")
    clean.add_argument(
        "--dry-run",
        action="store_true",
        help="remove nothing; print the paths that would be removed",
    )
    _add_json(clean)
    clean.add_argument(
        "--min-age",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="age after which an unprovable temporary file counts as orphaned (default 60)",
    )
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "write": _write,
        "copy": _copy,
        "check": _check,
        "sweep": _sweep,
    }
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:
        status, message = EXIT_INTERRUPTED, "interrupted; the target is unchanged"
    except NotDurableError as e:
        status, message = EXIT_NOT_DURABLE, f"warning: {e}"
    except FileExistsError as e:
        status, message = EXIT_EXISTS, f"{e.filename}: already exists (--create-only)"
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
