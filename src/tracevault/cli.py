"""The ``tracevault`` command line.

Every command takes ``--store URL`` (default ``$TRACEVAULT_STORE`` or
``sqlite:///tracevault.db``); every read command takes ``--json``. Exit status: 0 on
success, 1 when ``verify`` finds tampering, 2 on a usage or store error (with a
one-line message, never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from tracevault.ledger import parse_ts
from tracevault.render import build_runs, render_sessions, render_stats, render_tree, session_header
from tracevault.schema import event_json_schema
from tracevault.store import DEFAULT_URL, Store, StoreError, open_store, shown_url

# Commands contributed by other modules: each exposes ``register(subparsers, common)``
# which adds a sub-parser whose ``func`` default returns an exit status.
PLUGIN_COMMANDS: tuple[str, ...] = (
    "tracevault.sinks.cli", "tracevault.cli_copy", "tracevault.cli_erase",
    "tracevault.redaction.cli",
)

_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class UsageError(ValueError):
    """Bad command-line input; reported as one line with exit status 2."""


def parse_when(text: str) -> datetime:
    """Parse ``--since``/``--until``: ISO date or time, or relative (``30m``, ``24h``, ``7d``)."""
    m = _RELATIVE.match(text.strip())
    if m:
        try:
            return datetime.now(timezone.utc) - timedelta(
                **{_UNITS[m.group(2)]: int(m.group(1))})
        except OverflowError:  # further back than any date
            raise UsageError(f"cannot read time {text!r}: too far back") from None
    try:
        return parse_ts(text.strip())
    except ValueError:
        raise UsageError(
            f"cannot read time {text!r}: use 2026-11-27, 2026-11-27T10:00:00Z or 24h / 7d"
        ) from None


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _store_url(args: argparse.Namespace) -> str:
    return str(args.store or os.environ.get("TRACEVAULT_STORE") or DEFAULT_URL)


def _open_existing(args: argparse.Namespace) -> Store:
    return open_store(_store_url(args), create=False)


# --- commands ---------------------------------------------------------------------------


def cmd_sessions(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {args.limit})")
    with_store = _open_existing(args)
    try:
        sessions = with_store.sessions(
            user_id=args.user,
            since=parse_when(args.since) if args.since else None,
            until=parse_when(args.until) if args.until else None,
            limit=args.limit,
        )
    finally:
        with_store.close()
    if args.json:
        _print_json([s.to_dict() for s in sessions])
    elif sessions:
        print(render_sessions(sessions))
    elif args.user or args.since or args.until:
        print("no matching sessions")
    else:
        print("no sessions recorded yet")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    chosen = [o for o in (args.session is not None, args.trace is not None, args.no_session) if o]
    if len(chosen) != 1:
        raise UsageError("show one session (SESSION), one run (--trace ID) or the runs "
                         "recorded without a session (--no-session)")
    store = _open_existing(args)
    try:
        if args.trace is not None:
            events = list(store.events(trace_id=args.trace))
            summaries = []
        else:
            events = list(store.events(session_id=args.session, no_session=args.no_session))
            summaries = (store.sessions(session_id=args.session, no_session=args.no_session)
                         if events else [])
    finally:
        store.close()
    if not events:
        what = (f"run {args.trace!r}" if args.trace is not None
                else "run without a session" if args.no_session
                else f"session {args.session!r}")
        raise UsageError(f"no {what} in {shown_url(_store_url(args))} (see `tracevault "
                         "sessions`)")
    if args.json:
        _print_json(
            {
                "session": summaries[0].to_dict() if summaries else None,
                "events": [{"seq": e.seq, **e.event.to_dict()} for e in events],
            }
        )
        return 0
    if summaries:
        print(session_header(summaries[0]))
    print(render_tree(build_runs(events), full=args.full, width=args.width))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    store = _open_existing(args)
    try:
        stats = store.stats(
            since=parse_when(args.since) if args.since else None,
            until=parse_when(args.until) if args.until else None,
        )
    finally:
        store.close()
    if args.json:
        _print_json(stats.to_dict())
    else:
        print(render_stats(stats))
    return 0


def parse_anchor(text: str) -> tuple[int, bytes]:
    """Parse ``--anchor SEQ:CHAIN`` (as printed by an earlier ``verify``)."""
    seq, _, chain = text.partition(":")
    try:
        value = (int(seq), bytes.fromhex(chain))
    except ValueError:
        value = (0, b"")
    if value[0] < 1 or len(value[1]) != 32:
        raise UsageError(f"bad anchor {text!r}: use SEQ:CHAIN as `tracevault verify` prints it")
    return value


def cmd_verify(args: argparse.Namespace) -> int:
    store = _open_existing(args)
    try:
        report = store.verify(parse_anchor(args.anchor) if args.anchor else None)
    finally:
        store.close()
    if args.json:
        _print_json(report.to_dict())
    elif report.ok:
        records = f"{report.erasures} erasure event{'' if report.erasures == 1 else 's'}"
        erased = (f", {report.erased} erased payloads (recorded by {records})"
                  if report.erased else "")
        print(
            f"OK: {report.checked} events verified, chain intact up to #{report.head_seq}{erased}"
        )
        if report.head_seq:
            print(f"anchor: {report.head_seq}:{report.head_chain}")
    else:
        print(f"TAMPERED: first bad event #{report.first_bad_seq}: {report.reason}")
    return 0 if report.ok else 1


def cmd_schema(args: argparse.Namespace) -> int:
    _print_json(event_json_schema())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import tracevault

    url = _store_url(args)
    tracevault.configure(store=url)
    run_demo: Callable[..., str]
    if importlib.util.find_spec("tracevault_langchain") is not None:
        run_demo = importlib.import_module("tracevault_langchain.demo").run_demo
    else:
        from tracevault.demo import run_demo
    session_id = run_demo()
    if not tracevault.flush(60):
        raise StoreError(f"the demo's events did not reach {shown_url(url)}")
    tracevault.shutdown()
    # With --json, stdout is the JSON document alone.
    print(f"recorded session {session_id} in {shown_url(url)}\n",
          file=sys.stderr if args.json else sys.stdout)
    args.session, args.trace, args.no_session = session_id, None, False
    args.full = False
    return cmd_show(args)


# --- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every command registered."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store", metavar="URL", help=f"ledger URL (default $TRACEVAULT_STORE or {DEFAULT_URL})"
    )
    reading = argparse.ArgumentParser(add_help=False, parents=[common])
    reading.add_argument("--json", action="store_true", help="print JSON instead of text")

    parser = argparse.ArgumentParser(
        prog="tracevault", description="tamper-evident audit trail for LLM agents"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "demo", parents=[common], help="record a scripted offline agent run and show it"
    )
    p.add_argument("--width", type=int, default=100, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the recorded session as JSON")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "sessions", parents=[reading], help="list sessions with counts, tokens and cost"
    )
    p.add_argument("--user", help="only sessions of this user id")
    p.add_argument("--since", help="from this time (ISO, or relative: 24h, 7d)")
    p.add_argument("--until", help="before this time (ISO, or relative)")
    p.add_argument("--limit", type=int, default=None, help="at most this many sessions")
    p.set_defaults(func=cmd_sessions)

    p = sub.add_parser(
        "show", parents=[reading], help="show one session (or one run) as a tree of steps"
    )
    p.add_argument("session", nargs="?", help="session id (see `tracevault sessions`)")
    p.add_argument("--trace", metavar="ID", help="show the run with this trace id instead")
    p.add_argument("--no-session", action="store_true",
                   help="show the runs recorded without a session instead")
    p.add_argument("--full", action="store_true", help="also print every payload")
    p.add_argument("--width", type=int, default=100, help="width of one-line summaries")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "stats", parents=[reading], help="tool usage, errors per day, tokens and cost per model"
    )
    p.add_argument("--since", help="from this time (ISO, or relative: 24h, 7d)")
    p.add_argument("--until", help="before this time (ISO, or relative)")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser(
        "verify", parents=[reading], help="check the hash chain (exit 1 if tampered)"
    )
    p.add_argument(
        "--anchor",
        metavar="SEQ:CHAIN",
        help="an anchor printed by an earlier verify and kept elsewhere: the chain must "
        "pass through it (detects a trail rewritten from some row onward)",
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("schema", parents=[common], help="print the JSON Schema of an audit event")
    p.set_defaults(func=cmd_schema)

    for module in PLUGIN_COMMANDS:
        importlib.import_module(module).register(sub, common, reading)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # e.g. `tracevault show X | head`
        return 0
    except (StoreError, UsageError, ValueError, OSError) as exc:
        print(f"tracevault: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
