"""``tracevault status`` and ``tracevault forward``.

* ``status``: per sink, the cursor (last delivered sequence number), the lag (ledger head
  minus cursor), when it last moved and the last delivery error, if any. Sinks named in
  ``TRACEVAULT_SINKS`` are listed even before their first delivery.
* ``forward``: deliver what the ledger holds now to each sink and exit (for cron or
  serverless). Exit status 0 when every sink caught up, 1 when one still failed at the
  deadline (nothing is lost: the next run continues from the cursor) or skipped an event
  it refused for good, 2 for bad options.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any

import orjson

from tracevault.cli import UsageError
from tracevault.sinks.base import Forwarder, describe
from tracevault.sinks.registry import batch_size_env, build, parse, persist_error
from tracevault.store import DEFAULT_URL, Store, open_store
from tracevault.store.base import SinkCursor


def _store(args: argparse.Namespace) -> Store:
    url = str(args.store or os.environ.get("TRACEVAULT_STORE") or DEFAULT_URL)
    return open_store(url, create=False)


def _names(args: argparse.Namespace) -> list[str]:
    chosen = args.sink or [os.environ.get("TRACEVAULT_SINKS") or ""]
    return [str(name) for name in parse(",".join(chosen))]  # from a string: names only


def sink_status(store: Store, names: list[str]) -> list[dict[str, Any]]:
    """Return one row per sink: name, cursor, head, lag, updated, last_error, error_at."""
    head = store.head()[0]
    listing = getattr(store, "sink_cursors", None)
    known: dict[str, SinkCursor] = {c.name: c for c in listing()} if listing else {}
    for name in names:
        if name not in known:
            known[name] = SinkCursor(name, store.get_cursor(name), None, None, None)
    return [
        {"sink": c.name, "cursor": c.seq, "head": head, "lag": max(head - c.seq, 0),
         "updated": c.updated, "last_error": c.last_error, "error_at": c.error_at}
        for c in sorted(known.values(), key=lambda c: c.name)
    ]


def cmd_status(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        rows = sink_status(store, _names(args))
    finally:
        store.close()
    if args.json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not rows:
        print("no sinks configured (set TRACEVAULT_SINKS) and no forwarding recorded yet")
        return 0
    width = max(len(r["sink"]) for r in rows)
    print(f"{'SINK':<{width}}  {'CURSOR':>8}  {'LAG':>8}  UPDATED                      LAST ERROR")
    for r in rows:
        print(f"{r['sink']:<{width}}  {r['cursor']:>8}  {r['lag']:>8}  "
              f"{r['updated'] or '-':<27}  {r['last_error'] or '-'}")
    return 0


def _check_options(args: argparse.Namespace) -> None:
    """Refuse ``forward`` options no run could honour, before any sink is contacted."""
    # NaN compares false with everything: a deadline of NaN would never pass.
    if not math.isfinite(args.timeout) or args.timeout < 0:
        raise UsageError(f"--timeout must be a finite number of seconds, 0 or more "
                         f"(got {args.timeout})")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1 (got {args.batch_size})")


def cmd_forward(args: argparse.Namespace) -> int:
    _check_options(args)
    names = _names(args)
    if not names:
        raise ValueError("no sinks to forward to: set TRACEVAULT_SINKS or pass --sink NAME")
    store = _store(args)
    failed = 0
    try:
        for name in names:
            try:
                sink = build(name)
            except Exception as exc:
                failed += 1
                message = describe(exc)
                print(f"{name}: not started: {message}", file=sys.stderr)
                persist_error(store, name, message)
                continue
            forwarder = Forwarder(store, sink, batch_size=args.batch_size)
            try:
                report = forwarder.drain_once(timeout=args.timeout)
            finally:
                forwarder.shutdown()
            line = (f"{name}: delivered {report.delivered} events, cursor {report.cursor}"
                    f" of {report.head}")
            if report.skipped:
                # Refused for good: the cursor moved past them, so say so loudly once.
                line += (f"; skipped {report.skipped} the sink refused for good (see "
                         "`tracevault status`)")
            if report.ok and not report.skipped:
                print(line)
            else:
                failed += 1
                failure = f"; failed: {report.error}" if report.error else ""
                print(f"{line}{failure}", file=sys.stderr)
    finally:
        store.close()
    return 1 if failed else 0


def register(sub: Any, common: argparse.ArgumentParser, reading: argparse.ArgumentParser) -> None:
    """Add ``status`` and ``forward`` to the ``tracevault`` command line."""
    p = sub.add_parser("status", parents=[reading],
                       help="per sink: cursor, lag behind the ledger, last delivery error")
    p.add_argument("--sink", action="append", metavar="NAME",
                   help="also list this sink (default: those in TRACEVAULT_SINKS)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("forward", parents=[common],
                       help="deliver what the ledger holds now to the sinks, then exit")
    p.add_argument("--sink", action="append", metavar="NAME",
                   help="sink to feed (repeatable; default: TRACEVAULT_SINKS)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to keep retrying a failing sink (default 60)")
    p.add_argument("--batch-size", type=int,
                   default=batch_size_env(),
                   help="events per request (default 500, or TRACEVAULT_FORWARD_BATCH)")
    p.set_defaults(func=cmd_forward)
