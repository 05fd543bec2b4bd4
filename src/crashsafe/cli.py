"""The ``crashsafe`` command: a thin client of the library.

Exit status: 0 done; 1 failed, the target is unchanged; 2 bad usage;
3 written, but the directory fsync failed or was interrupted (durability
unconfirmed);
4 create-only and the target exists; 130 interrupted (target unchanged).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Final

from crashsafe.atomic import AtomicFile
from crashsafe.errors import NotDurableError
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


def _sweep(args: argparse.Namespace) -> int:
    for path in sweep(args.directory, min_age=args.min_age):
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    run = _write if args.command == "write" else _sweep
    try:
        return run(args)
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
    except ValueError as e:
        parser.error(str(e))
    return EXIT_FAILED  # unreachable: parser.error exits
