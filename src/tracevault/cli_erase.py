"""``tracevault erase``: erase the content of a session's, a user's or a run's events."""

from __future__ import annotations

import argparse
import os

from tracevault import capture, dead_letters
from tracevault.cli import UsageError, _open_existing, _print_json, _store_url, parse_when
from tracevault.ledger import format_ts
from tracevault.store import shown_url
from tracevault.store.sql import SQLStore


def cmd_erase(args: argparse.Namespace) -> int:
    """Clear the payloads of the chosen events; exit 2 on bad input or a store error."""
    if args.found:
        return _record_found(args)
    before = parse_when(args.before) if args.before is not None else None
    what = [f"{name} {value!r}" for name, value in
            (("session", args.session), ("user", args.user), ("trace", args.trace))
            if value is not None]
    if before is not None:
        what.append(f"recorded before {format_ts(before)}")
    if not what:
        raise UsageError("choose what to erase: --session ID, --user ID, --trace ID and/or "
                         "--before WHEN")
    if not args.yes:
        raise UsageError("erasure cannot be undone: add --yes to erase")
    try:
        files = dead_letters.files_in(args.dead_letters or [os.getcwd()])
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    url = _store_url(args)
    store = _open_existing(args)
    try:
        erased = store.erase(session_id=args.session, user_id=args.user, trace_id=args.trace,
                             before=before, reason=_reason(args))
    finally:
        store.close()
    cleared = dead_letters.erase(files, session_id=args.session, user_id=args.user,
                                 trace_id=args.trace, before=before)
    if args.json:
        _print_json({"erased": erased, "store": shown_url(url),
                     "dead_letters_erased": cleared, "dead_letter_files": len(files)})
        return 0
    print(f"erased the content of {erased} events ({', '.join(what)}) in {shown_url(url)}"
          + ("; a tracevault.erasure event records it, and the trail still verifies "
             "(`tracevault verify`)" if erased else ""))
    if cleared:
        print(f"erased the content of {cleared} events in {len(files)} dead-letter files")
    return 0


def _record_found(args: argparse.Namespace) -> int:
    # --found: a record for the erasures verify finds no record of.
    if any(v is not None for v in (args.session, args.user, args.trace, args.before)):
        raise UsageError("--found records the erasures already made: it takes no "
                         "--session, --user, --trace or --before")
    if not args.yes:
        raise UsageError("verify will accept the erasures found: add --yes to record them")
    url = _store_url(args)
    store = _open_existing(args)
    try:
        if not isinstance(store, SQLStore):
            raise UsageError(f"{shown_url(url)} is not a SQL ledger")
        found = store.record_found_erasures(reason=_reason(args))
    finally:
        store.close()
    if args.json:
        _print_json({"found": len(found), "seqs": found, "store": shown_url(url)})
    elif found:
        print(f"found {len(found)} erased events no erasure record covered (#{found[0]}.."
              f"#{found[-1]}) in {shown_url(url)}; a tracevault.erasure event now records "
              "them as found")
    else:
        print(f"every erased event in {shown_url(url)} is covered by an erasure record")
    return 0


def _reason(args: argparse.Namespace) -> str | None:
    from tracevault.redaction.redactor import redact_reason

    return redact_reason(args.reason, capture.settings())


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    reading: argparse.ArgumentParser,
) -> None:
    """Add the ``erase`` command to the ``tracevault`` parser."""
    p = subparsers.add_parser(
        "erase",
        parents=[reading],
        help="erase the content of a session's, user's or run's events (the chain still verifies)",
        description=(
            "Clear the payload (inputs, messages, arguments, results) of every matching "
            "event; ids, names, kinds, times and metrics stay, and so does the hash chain. "
            "Filters combine with AND. A sealed tracevault.erasure event records what was "
            "erased, by whom and why."
        ),
    )
    p.add_argument("--session", metavar="ID", help="events of this session")
    p.add_argument("--user", metavar="ID", help="events of this user")
    p.add_argument("--trace", metavar="ID", help="events of this run")
    p.add_argument("--before", metavar="WHEN",
                   help="events recorded before this time (ISO, or an age: 90d, 12w): retention")
    p.add_argument("--reason", metavar="TEXT",
                   help="why (a request's reference, a retention policy): kept in the "
                   "erasure's record")
    p.add_argument("--dead-letters", metavar="PATH", action="append",
                   help="a dead-letter file, or a directory of them, where the same events "
                   "are erased (repeatable; default: the working directory)")
    p.add_argument("--found", action="store_true",
                   help="erase nothing: record the events found erased that no erasure "
                   "record covers (erased before erasures were recorded, or by SQL), so "
                   "that verify accepts them")
    p.add_argument("--yes", action="store_true", help="erase (it cannot be undone)")
    p.set_defaults(func=cmd_erase)
