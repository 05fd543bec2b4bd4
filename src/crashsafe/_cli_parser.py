"""The ``crashsafe`` command's argument parsing: commands, options, help texts.

:mod:`crashsafe.cli` runs the commands; this module only says what they take.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any, Final

from crashsafe._cli_checksums import add_parser as _add_checksums

__all__ = ["FORMATS", "build_parser"]

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

FORMATS: Final = ("zstd", "gzip", "json", "sqlite", "c1z")

_COPY_EPILOG = """\
examples:
  crashsafe copy build/sync.c1z /srv/sync.c1z --validate c1z
  crashsafe copy image.zst /data/image.zst --validate zstd --sha256 9f86d0...
  curl -s https://example.org/x.gz | crashsafe copy --validate gzip - x.gz

exit status: 0 copied; 1 failed or rejected, DST unchanged; 2 bad usage;
3 copied, but the directory fsync failed or was interrupted;
130 interrupted, DST unchanged."""

_DOCTOR_EPILOG = """\
examples:
  crashsafe doctor /var/lib/app        # what holds there, in ten lines
  crashsafe doctor --json . | jq .guarantee
  sudo crashsafe doctor --crash-probe /srv/data

exit status: 0 probed (whatever the guarantee); 1 DIR's filesystem refuses
  something crashsafe needs (creating or renaming files: read-only, no
  permission); 2 bad usage: DIR is not an existing directory, or
  --crash-probe without root."""

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
        choices=FORMATS,
        default=[],
        metavar="FORMAT",
        help=f"reject {what} unless it is a complete file of FORMAT "
        f"({', '.join(FORMATS)}); may be repeated",
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


def _add_target(
    command: argparse.ArgumentParser, target: str, perm: str, durability: str | None = None
) -> None:
    # What write and copy share: how the target is published.
    command.add_argument("--perm", type=_octal_mode, metavar="MODE", help=perm)
    command.add_argument(
        "--durability",
        choices=["durable", "consistent", "none"],
        default="durable",
        help=durability,
    )
    command.add_argument(
        "--no-follow",
        action="store_true",
        help=f"replace a symlink at {target} itself instead of the file it points to",
    )


_TORTURE_DESCRIPTION = """\
A naive writer (open with truncation, write, close) and crashsafe.atomic_write
each replace a file of known content and are killed (SIGKILL) N times while
they do; then each file is read: intact (the complete old or new content),
empty, torn (a prefix, a mix, zeros) or missing. With strace on PATH, each
kill comes right before a syscall of the write, chosen by --seed; without it,
at a random time during the write (the results then vary). A progress bar is
shown when standard error is a terminal."""

_TORTURE_EPILOG = """\
examples:
  crashsafe torture                   # 50 kills per writer in a temporary directory
  crashsafe torture /mnt/data -n 200  # on the filesystem you care about
  crashsafe torture --seed 7 --json   # the same kill points again, as JSON

exit status: 0 crashsafe left every file complete (the naive writer's damage
  is the demonstration, not a failure); 1 crashsafe left an empty, torn or
  missing file (a bug: please report it), or a writer could not be run;
2 bad usage; 130 interrupted."""


def _at_least_one(what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {what} >= 1")
        return value

    return parse


def _seed(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed (a whole number >= 0)")
    return int(text)


def _add_torture(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    torture = commands.add_parser(
        "torture",
        help="kill a naive writer and atomic_write N times each, mid-write; show what each left",
        description=_TORTURE_DESCRIPTION,
        epilog=_TORTURE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    torture.add_argument(
        "directory",
        nargs="?",
        metavar="DIR",
        help="write in a scratch subdirectory of DIR, removed afterwards "
        "(default: a temporary directory)",
    )
    torture.add_argument(
        "-n",
        type=_at_least_one("kills"),
        default=50,
        metavar="N",
        help="kills per writer (default 50)",
    )
    torture.add_argument(
        "--seed",
        type=_seed,
        metavar="S",
        help="which kill points (default: a random seed, printed)",
    )
    torture.add_argument(
        "--size",
        type=_at_least_one("bytes"),
        default=1 << 20,
        metavar="BYTES",
        help="the file's size (default 1048576; written in 64 KiB pieces)",
    )
    _add_json(torture)


_CRASHCHECK_DESCRIPTION = """\
Run PROGRAM once under strace, over the directories given with --dir (default:
the current directory; PROGRAM changes them for real), then check every crash
state of those directories that the conservative model allows: only fsync
orders anything, a new name is durable only once its directory is synced, a
write may persist in part. Each state is built in a scratch copy of the
directories as they were before the run, and --check CMD runs there (exit
status non-zero: the state is broken). Each broken state is reported as a
vulnerability: atomicity, ordering or durability, as the ALICE paper names
them."""

_CRASHCHECK_EPILOG = """\
the check runs by /bin/sh -c with its working directory the state's copy of the
first --dir; CRASHCHECK_DIRS holds the copies of all of them, joined by ':';
CRASHCHECK_STDOUT what PROGRAM had printed to standard output before the crash
(CRASHCHECK_STDOUT_FILE: a file holding it all).

examples:
  crashsafe crashcheck --check 'sqlite3 db "PRAGMA integrity_check" | grep -qx ok' \\
      -- sqlite3 db "INSERT INTO t VALUES (1)"
  crashsafe crashcheck --dir repo --check 'git fsck' -- git -C repo commit -qam x

exit status: 0 no crash state broke the check; 1 some did (each is reported);
2 PROGRAM could not be traced or failed, the check fails before or after the
run, PROGRAM wrote through a shared memory map (see --ignore-mmap), or bad usage."""


def _add_crashcheck(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    crashcheck = commands.add_parser(
        "crashcheck",
        help="find the crash bugs of PROGRAM: check every crash state its run allows",
        description=_CRASHCHECK_DESCRIPTION,
        epilog=_CRASHCHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [options] --check CMD -- PROGRAM [ARGS...]",
    )
    crashcheck.add_argument(
        "--check",
        required=True,
        metavar="CMD",
        help="the shell command that tells a good state (exit status 0) from a broken one",
    )
    crashcheck.add_argument(
        "--dir",
        dest="dirs",
        action="append",
        metavar="DIR",
        help="a directory PROGRAM writes in, whose crash states are checked (repeatable; "
        "default: the current directory)",
    )
    crashcheck.add_argument(
        "--exhaustive",
        action="store_true",
        help="every combination the model allows, not only the targeted families "
        "(every prefix, each operation left out, each write torn)",
    )
    crashcheck.add_argument(
        "--max-states",
        type=_at_least_one("states"),
        default=100_000,
        metavar="N",
        help="with --exhaustive, stop after N states (default 100000)",
    )
    crashcheck.add_argument(
        "--jobs",
        "-j",
        type=_at_least_one("jobs"),
        metavar="N",
        help="checks run at once (default: one per CPU)",
    )
    crashcheck.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help="a check that runs longer counts as a broken state (default: no limit)",
    )
    crashcheck.add_argument(
        "--ignore-mmap",
        action="append",
        default=[],
        metavar="PATTERN",
        help="files PROGRAM may write through a shared memory map, because they are "
        "rebuilt after a crash (e.g. '*-shm' for SQLite's WAL index); matched against "
        "the basename and the path relative to its --dir",
    )
    _add_json(crashcheck)
    crashcheck.add_argument(
        "program", nargs=argparse.REMAINDER, metavar="-- PROGRAM [ARGS...]",
        help="the program to run, after --",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The ``crashsafe`` command's parser: its commands, options and help."""
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
    write.add_argument(
        "path", metavar="PATH", help="the file to write, or an s3://bucket/key object"
    )
    _add_target(
        write,
        "PATH",
        "exact octal mode, e.g. 600 (default: keep an existing file's mode and owner; "
        "a new file gets 666 less the umask)",
        "durable (default): survives a power cut once the command returns; "
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
        "standard error is a terminal; a one-line summary is printed at the end. "
        "SRC or DST (or both) may be an s3://bucket/key object: a local SRC is checked "
        "before the object is published; an object is checked before DST is replaced.",
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
    _add_target(
        copy,
        "DST",
        "exact octal mode (default: keep an existing DST's mode and owner; "
        "a new DST gets SRC's permission bits)",
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
        choices=FORMATS,
        metavar="FORMAT",
        help=f"one of {', '.join(FORMATS)} (default: from each file's first bytes)",
    )
    _add_json(check)

    clean = commands.add_parser(
        "sweep",
        help="remove temporary files left behind by killed writers",
        description="Remove crashsafe temporary files in DIR whose writer is proven dead "
        "(or, where that cannot be proven, older than --min-age). Prints each path removed. "
        "Never touches other files and never follows symlinks. DIR may be an "
        "s3://bucket/prefix: then the uploads and transaction objects that crashsafe "
        "writers left there are removed, when older than --min-age.",
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
        default=None,
        metavar="SECONDS",
        help="age after which an unprovable temporary file counts as orphaned (default 60; "
        "for an s3:// prefix, 86400: no writer's liveness can be proven across machines)",
    )
    doctor = commands.add_parser(
        "doctor",
        help="probe DIR's filesystem: what it does, and which guarantees hold there",
        description="Read DIR's mount (type, the options that matter: ext4 data= and "
        "auto_da_alloc, barriers, overlay, FUSE, network filesystems) and its disk's write "
        "cache and FUA from /sys; measure in a scratch directory inside DIR (removed "
        "afterwards) O_TMPFILE, no-replace and exchange renames, reflink, directory fsync, "
        "fsync latency (median and p99 of 20) and free space; then say which crashsafe "
        "guarantees follow there (durable, consistent, only atomic), each with its reason.",
        epilog=_DOCTOR_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    doctor.add_argument(
        "directory", metavar="DIR", nargs="?", default=".", help="default: the current directory"
    )
    doctor.add_argument(
        "--json",
        action="store_true",
        help="print every fact and its evidence as one JSON object on standard output",
    )
    doctor.add_argument(
        "--crash-probe",
        action="store_true",
        help="(root) also crash a scratch loop filesystem of DIR's type and options with the "
        "shutdown ioctl, and report what a rename, an fsync, a truncate and an append "
        "without fsync left",
    )
    _add_torture(commands)
    _add_crashcheck(commands)
    _add_checksums(commands)
    return parser
