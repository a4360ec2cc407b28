"""``tracevault redact``: redact text (or a JSON document) from stdin to stdout.

    echo "mail bob@example.com" | tracevault redact            # mail [EMAIL]
    tracevault redact --json < payload.json                     # every string redacted
    tracevault redact --explain < app.log > clean.log           # findings on stderr

``--explain`` lists what was found on stderr (category, detector, where), never the
values, so stdout stays a clean pipe. The policy comes from ``TRACEVAULT_REDACT`` /
``TRACEVAULT_REDACT_KEY`` unless ``--policy`` is given.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from tracevault.redaction.policy import Policy
from tracevault.redaction.redactor import Redactor


def register(subparsers: Any, common: argparse.ArgumentParser,
             reading: argparse.ArgumentParser) -> None:
    """Add the ``redact`` command to the ``tracevault`` CLI."""
    p = subparsers.add_parser(
        "redact", parents=[common],
        help="redact PII and secrets from stdin to stdout",
        description="Read text from stdin, write it with PII and secrets replaced to stdout.",
    )
    p.add_argument("--json", action="store_true",
                   help="read a JSON document and redact every string in it")
    p.add_argument("--explain", action="store_true",
                   help="list what was found on stderr (never the values)")
    p.add_argument("--policy", choices=("default", "strict"),
                   help="redaction policy (default: $TRACEVAULT_REDACT or default)")
    p.set_defaults(func=cmd_redact)


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def cmd_redact(args: argparse.Namespace) -> int:
    """Run ``tracevault redact``; return the exit status."""
    policy = Policy.from_env()
    if args.policy:
        policy = Policy.from_env(mode=args.policy)
    if not policy.enabled:
        print("tracevault: warning: TRACEVAULT_REDACT=off, using the default policy",
              file=sys.stderr)
        policy = Policy.from_env(mode="default")
    redactor = Redactor(policy)
    text = sys.stdin.read()
    if args.json:
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"stdin is not JSON: {exc}") from None
        redacted, report = redactor.redact(document)
        sys.stdout.write(orjson.dumps(redacted, option=orjson.OPT_INDENT_2).decode() + "\n")
        if args.explain:
            for row in report:
                print(f"{row['category']}\t{row['count']}\t{row['path'] or '(document)'}",
                      file=sys.stderr)
            print(f"{sum(r['count'] for r in report)} values redacted", file=sys.stderr)
        return 0
    redacted_text, findings = redactor.redact_text(text)
    sys.stdout.write(redacted_text)
    if args.explain:
        for f in findings:
            line, col = _line_col(text, f.start)
            print(f"{f.category}\t{f.detector}\tline {line} col {col}\t{f.end - f.start} chars",
                  file=sys.stderr)
        print(f"{len(findings)} values redacted", file=sys.stderr)
    return 0
