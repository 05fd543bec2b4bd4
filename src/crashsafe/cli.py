"""The ``crashsafe`` command: a thin client of the library.

Exit status: 0 done; 1 failed, the target is unchanged (``check``: the file is
not complete); 2 bad usage; 3 written, but the directory fsync failed or was
interrupted (durability unconfirmed); 4 create-only and the target exists;
130 interrupted (target unchanged).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Final

from crashsafe.atomic import AtomicFile, Validator
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

exit status: 0 written; 1 failed, target unchanged; 2 bad usage;
3 written, but the directory fsync failed or was interrupted (the new content
  is in place but may not survive a power cut);
4 --create-only and the target exists; 130 interrupted, target unchanged."""

_FORMATS: Final = ("zstd", "gzip", "json", "sqlite", "c1z")

_COPY_EPILOG = """\
examples:
  crashsafe copy build/sync.c1z /srv/sync.c1z --validate c1z
  crashsafe copy image.zst /data/image.zst --validate zstd --sha256 9f86d0...

exit status: 0 copied; 1 failed or rejected, DST unchanged; 2 bad usage;
3 copied, but the directory fsync failed or was interrupted;
130 interrupted, DST unchanged."""

_CHECK_EPILOG = """\
exit status: 0 the file is complete and valid; 1 it is not (or cannot be read),
and the message says why; 2 bad usage."""


def _octal_mode(text: str) -> int:
    try:
        value = int(text.removeprefix("0o"), 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 644") from None
    if not 0 <= value <= 0o7777:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range (0 to 7777)")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crashsafe", description=_DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    write = commands.add_parser(
        "write",
        help="publish standard input at PATH, all or nothing",
        description="Read standard input to its end, then replace PATH with it atomically. "
        "PATH is untouched until all input has been read and flushed to disk.",
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
    copy.add_argument("src", metavar="SRC", help="the file to copy (a symlink is followed)")
    copy.add_argument("dst", metavar="DST", help="the file to replace or create")
    copy.add_argument(
        "--validate",
        action="append",
        choices=_FORMATS,
        default=[],
        metavar="FORMAT",
        help=f"reject the copy unless it is a complete file of FORMAT ({', '.join(_FORMATS)}); "
        "may be repeated",
    )
    copy.add_argument("--sha256", metavar="HEX", help="reject the copy unless its SHA-256 is HEX")
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

    check = commands.add_parser(
        "check",
        help="tell whether FILE is a complete file of a format, without writing",
        description="Decode FILE to its end as FORMAT: a zstd or gzip stream must be "
        "complete with nothing after it, a JSON document whole, a SQLite database "
        "consistent with its size and pass quick_check; c1z is the magic C1ZF\\0, "
        "then zstd, then SQLite.",
        epilog=_CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("file", metavar="FILE")
    check.add_argument(
        "--as",
        dest="format",
        required=True,
        choices=_FORMATS,
        metavar="FORMAT",
        help=f"one of {', '.join(_FORMATS)}",
    )

    clean = commands.add_parser(
        "sweep",
        help="remove temporary files left behind by killed writers",
        description="Remove crashsafe temporary files in DIR whose writer is proven dead "
        "(or, where that cannot be proven, older than --min-age). Prints each path removed. "
        "Never touches other files and never follows symlinks.",
    )
    clean.add_argument("directory", metavar="DIR")
    clean.add_argument(
        "--min-age",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="age after which an unprovable temporary file counts as orphaned (default 60)",
    )
    return parser


def _write(args: argparse.Namespace) -> int:
    mode = "xb" if args.create_only else "ab" if args.append else "wb"
    staged = AtomicFile(
        args.path,
        mode,
        perm=args.perm,
        durability=args.durability,
        follow_symlinks=not args.no_follow,
    )
    try:
        with staged:
            stdin = sys.stdin.buffer
            while chunk := stdin.read(_CHUNK):
                staged.file.write(chunk)
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


def _copy(args: argparse.Namespace) -> int:
    from crashsafe import validators
    from crashsafe.copying import atomic_copy

    checks: list[Validator] = [validators.BY_NAME[name] for name in args.validate]
    if args.sha256 is not None:
        checks.append(validators.sha256(args.sha256))
    bar = _ProgressBar() if sys.stderr.isatty() and not args.quiet else None
    started = time.monotonic()
    try:
        result = atomic_copy(
            args.src,
            args.dst,
            perm=args.perm,
            durability=args.durability,
            follow_symlinks=not args.no_follow,
            validate=checks,
            progress=bar,
        )
    finally:
        if bar is not None:
            bar.finish()
    if not args.quiet:
        seconds = time.monotonic() - started
        rate = f"{_size(result.bytes / seconds)}/s" if seconds > 0 else "-"
        print(
            f"copied {args.src} to {args.dst}: {result.bytes} bytes ({_size(result.bytes)}) "
            f"by {result.method} in {seconds:.3f} s, {rate}"
        )
    return 0


def _check(args: argparse.Namespace) -> int:
    from crashsafe import validators

    check = validators.BY_NAME[args.format]
    try:
        with open(args.file, "rb") as f:
            check(f)
    except VerificationError as e:
        print(
            f"crashsafe: {args.file}: not a complete {args.format} file: {e.message}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except (OSError, ModuleNotFoundError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        print(f"crashsafe: {args.file}: cannot check: {reason}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.file}: complete {args.format} file")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    for path in sweep(args.directory, min_age=args.min_age):
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 - one per outcome
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
        print("crashsafe: interrupted; the target is unchanged", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NotDurableError as e:
        print(f"crashsafe: warning: {e}", file=sys.stderr)
        return EXIT_NOT_DURABLE
    except FileExistsError as e:
        print(f"crashsafe: {e.filename}: already exists (--create-only)", file=sys.stderr)
        return EXIT_EXISTS
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"crashsafe: {where}{e.strerror or e}; nothing was changed", file=sys.stderr)
        return EXIT_FAILED
    except VerificationError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"crashsafe: {where}rejected: {e.message}; nothing was changed", file=sys.stderr)
        return EXIT_FAILED
    except ModuleNotFoundError as e:  # a validator's decoder is an optional extra
        print(f"crashsafe: {e}; nothing was changed", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as e:
        parser.error(str(e))
    return EXIT_FAILED  # unreachable: parser.error exits
