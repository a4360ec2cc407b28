"""``tracevault copy --from URL --to URL``: move a trail between ledgers, verified."""

from __future__ import annotations

import argparse
import os
import sys

import orjson

from tracevault.cli import UsageError
from tracevault.store import DEFAULT_URL, StoreError, open_store, shown_url
from tracevault.store.copy import copy_trail


def cmd_copy(args: argparse.Namespace) -> int:
    """Copy every event of ``--from`` that ``--to`` lacks; exit 1 if the copy does not
    verify, 2 on a store error."""
    source_url = args.source or args.store or os.environ.get("TRACEVAULT_STORE") or DEFAULT_URL
    if source_url == args.target:
        raise StoreError("--from and --to are the same ledger")
    if args.batch < 1:
        raise UsageError(f"--batch must be at least 1 (got {args.batch})")
    source = open_store(source_url, create=False)
    try:
        target = open_store(args.target)
        try:
            report = copy_trail(source, target, batch=args.batch)
        finally:
            target.close()
    finally:
        source.close()
    if args.json:
        sys.stdout.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        span = f" (#{report.first_seq}..#{report.last_seq})" if report.copied else ""
        print(
            f"copied {report.copied} events{span} from {shown_url(source_url)} "
            f"to {shown_url(args.target)}"
        )
        if report.erased:
            print(f"erased {report.erased} payloads in the copy that the source erased since "
                  "the last copy")
        check = report.verify
        if check.ok:
            print(f"OK: {check.checked} events verified in the copy, chain intact up to "
                  f"#{check.head_seq}")  # fmt: skip
        else:
            print(f"TAMPERED: the copy does not verify: first bad event #{check.first_bad_seq}: "
                  f"{check.reason} (the source holds the same rows)")  # fmt: skip
    return 0 if report.verify.ok else 1


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    reading: argparse.ArgumentParser,
) -> None:
    """Add the ``copy`` command to the ``tracevault`` parser."""
    p = subparsers.add_parser(
        "copy",
        parents=[reading],
        help="copy the trail to another ledger exactly (SQLite <-> PostgreSQL) and verify it",
        description=(
            "Copy every event, with its sequence number, salt, digest and chain value, "
            "so the copy verifies like the original. The target must be empty or hold "
            "the beginning of the same trail (the copy then resumes)."
        ),
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="URL",
        help="ledger to copy from (default --store, $TRACEVAULT_STORE or the default ledger)",
    )
    p.add_argument("--to", dest="target", metavar="URL", required=True, help="ledger to copy to")
    p.add_argument("--batch", type=int, default=5_000, help="rows per transaction")
    p.set_defaults(func=cmd_copy)
