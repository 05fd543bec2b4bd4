"""The ``crashsafe checksums`` command: record, verify and forget files' SHA-256 in a store.

A thin client of :class:`crashsafe.ChecksumStore`: ``record`` is one
:meth:`~crashsafe.ChecksumStore.record_many` (every path, directories walked,
in one commit), ``verify`` prints one line a file as ``sha256sum -c`` does.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from crashsafe.checksums import ChecksumStore

__all__ = ["add_parser", "run"]

_EPILOG: Final = """\
examples:
  crashsafe checksums record /var/lib/app/sums.jsonl /usr/local/bin /etc/app.conf
  crashsafe checksums verify /var/lib/app/sums.jsonl          # every recorded file
  jq -s '[.[1:][].sha256] | add' /var/lib/app/sums.jsonl      # the store, read by jq

exit status: 0 recorded, forgotten, or every file verified OK; 1 a file FAILED
  or is NOT RECORDED, a file could not be read (nothing was recorded), or the
  store is damaged (it is left as it is); 2 bad usage."""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``checksums record|verify|forget STORE PATH...`` to the ``crashsafe`` command."""
    checksums = commands.add_parser(
        "checksums",
        help="record and verify files' SHA-256 in a crash-safe store",
        description="Keep files' SHA-256 in STORE, a JSON-lines file that people and jq "
        "can read: every change is appended under a lock and fsynced, so processes that "
        "record at once lose nothing and a crash leaves the changes made before it.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = checksums.add_subparsers(dest="action", required=True, metavar="ACTION")
    record = actions.add_parser(
        "record",
        help="record every PATH in one commit (a directory: its regular files, walked)",
    )
    verify = actions.add_parser(
        "verify", help="check every PATH (default: every recorded file): OK or FAILED"
    )
    forget = actions.add_parser("forget", help="remove every PATH's entry")
    for action, paths in ((record, "+"), (verify, "*"), (forget, "+")):
        action.add_argument("store", metavar="STORE")
        action.add_argument("paths", metavar="PATH", nargs=paths)


def run(args: argparse.Namespace) -> int:
    """Run ``crashsafe checksums``; returns the exit status."""
    from crashsafe.checksums import ChecksumStore
    from crashsafe.errors import JSONDocumentError

    store = ChecksumStore(args.store)
    try:
        if args.action == "record":
            for name, digest in store.record_many(args.paths).items():
                print(f"{digest}  {name}")
            return 0
        if args.action == "forget":
            for path in args.paths:
                store.forget(path)
            return 0
        return _verify(store, args.paths or [name for name, _ in store.items()])
    except JSONDocumentError as e:
        print(f"crashsafe: {e}; the store was left as it is", file=sys.stderr)
        return 1


def _verify(store: ChecksumStore, paths: list[str]) -> int:
    from crashsafe.errors import NotRecordedError

    failed = 0
    for path in paths:
        try:
            verdict = "OK" if store.verify(path) else "FAILED"
        except NotRecordedError:
            verdict = "NOT RECORDED"
        failed += verdict != "OK"
        print(f"{path}: {verdict}")
    if failed:
        print(f"crashsafe: {failed} of {len(paths)} files did not verify", file=sys.stderr)
    return 1 if failed else 0
