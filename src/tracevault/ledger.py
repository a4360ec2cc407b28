"""The hash chain that makes a store tamper-evident, and its verification.

Every stored event gets:

* ``payload`` — the canonical JSON of the event (the bytes that are stored);
* ``salt`` — 16 random bytes, and ``digest = SHA-256(salt ‖ payload)``;
* ``chain = SHA-256(previous chain ‖ header ‖ digest)`` where ``header`` is the row's
  sequence number and indexed columns.

The chain commits to the salted digest, not to the payload itself, so erasing a payload
later (deleting ``payload`` and ``salt``) keeps the chain verifiable while the digest
alone reveals nothing, not even for guessable values. A store also keeps a single
*head* row (last sequence number and chain value) updated in the same transaction as
the appends, so truncating the tail is detected too.

This module is storage-agnostic: SQLite and PostgreSQL stores both use it.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from tracevault.schema import AuditEvent
from tracevault.snapshot import sanitize_strings, snapshot

GENESIS = bytes(32)
_NO_LIMIT = 2**62
_SEP = "\x1f"
SALT_BYTES = 16
_JSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z

# Columns a store keeps beside the payload, in header order. The metric columns are
# derived from ``data`` so sessions and stats queries need no JSON functions.
COLUMNS: tuple[str, ...] = (
    "event_id",
    "ts",
    "kind",
    "phase",
    "level",
    "name",
    "session_id",
    "user_id",
    "trace_id",
    "span_id",
    "parent_span_id",
    "status",
    "duration_ms",
    "tokens",
    "cost",
)


# The first TEXT_COLUMNS of COLUMNS are text; the rest are numbers.
TEXT_COLUMNS = 12
# Shape of a row for verify_rows(): seq, the text columns already joined in header form,
# the number columns, then payload, salt, digest, chain.
_NUMBERS = 2
_PAYLOAD = _NUMBERS + len(COLUMNS) - TEXT_COLUMNS
_SALT, _DIGEST, _CHAIN = _PAYLOAD + 1, _PAYLOAD + 2, _PAYLOAD + 3


def format_ts(ts: datetime) -> str:
    """Return the canonical UTC text form of a timestamp (microseconds, ``Z``)."""
    if ts.tzinfo is not timezone.utc:
        ts = ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)
    # isoformat is several times faster than strftime; its UTC suffix is "+00:00".
    return ts.isoformat(timespec="microseconds")[:-6] + "Z"


def parse_ts(text: str) -> datetime:
    """Parse a timestamp written by :func:`format_ts` (or any ISO-8601 form)."""
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    ts = datetime.fromisoformat(text)
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def encode_event(event: AuditEvent) -> bytes:
    """Return the canonical JSON bytes of an event (sorted keys, UTC ``Z`` times)."""
    return _encode(event)[0]


def _encode(event: AuditEvent) -> tuple[bytes, AuditEvent]:
    try:
        return orjson.dumps(event, option=_JSON_OPTIONS), event
    except orjson.JSONEncodeError:
        # Captured events only get here with invalid unicode (lone surrogates), which
        # snapshot() leaves for the writer; events appended to a store directly may hold
        # anything. Repair rather than lose the event: the repaired copy is what gets
        # stored and indexed.
        plain = event.to_dict()
        timestamp = plain.pop("timestamp")
        # Convert only: captured payloads were already cut to size once.
        safe = snapshot(plain, max_string=_NO_LIMIT, max_items=_NO_LIMIT)
        fixed = AuditEvent(timestamp=timestamp, **sanitize_strings(safe))
        return orjson.dumps(fixed, option=_JSON_OPTIONS), fixed


def decode_event(payload: bytes | str) -> AuditEvent:
    """Rebuild an :class:`AuditEvent` from stored canonical JSON."""
    raw = orjson.loads(payload)
    raw["timestamp"] = parse_ts(raw["timestamp"])
    return AuditEvent(**raw)


@dataclass(slots=True)
class PreparedRow:
    """An event ready to append: encoded, salted and digested, awaiting its seq."""

    columns: tuple[Any, ...]  # values in COLUMNS order
    payload: bytes
    salt: bytes
    digest: bytes


def _metrics(event: AuditEvent) -> tuple[str | None, float | None, int | None, float | None]:
    data = event.data if isinstance(event.data, dict) else {}
    status = data.get("status")
    duration = data.get("duration_ms")
    tokens: Any = None
    cost: Any = None
    if event.kind == "llm_call":
        usage = data.get("usage")
        if isinstance(usage, dict):
            tokens = usage.get("total")
        cost = data.get("cost")
    return (
        status if isinstance(status, str) else None,
        _number(duration),
        int(tokens) if _number(tokens) is not None and abs(tokens) < _INT_COLUMN else None,
        _number(cost),
    )


_INT_COLUMN = 2**63  # SQLite INTEGER and PostgreSQL bigint


def _number(value: Any) -> float | None:
    """A finite number for a metric column, else None (the payload keeps the original)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    # + 0.0 turns -0.0 into 0.0: databases store it that way, and the chain must match.
    return number + 0.0 if math.isfinite(number) else None


def prepare(event: AuditEvent) -> PreparedRow:
    """Encode and digest one event (the part of sealing that needs no chain head)."""
    payload, event = _encode(event)
    salt = os.urandom(SALT_BYTES)
    columns: tuple[Any, ...] = (
        event.event_id,
        format_ts(event.timestamp),
        event.kind,
        event.phase,
        event.level,
        event.name,
        event.session_id,
        event.user_id,
        event.trace_id,
        event.span_id,
        event.parent_span_id,
        *_metrics(event),
    )
    if any(c.__class__ is str and "\x00" in c for c in columns):
        # NUL fits no database text column everywhere (PostgreSQL refuses it, SQLite's
        # length() stops at it); the payload keeps it, escaped. The chain covers the
        # stored column values, so the ledger verifies and copies between stores.
        columns = tuple(c.replace("\x00", "\ufffd") if isinstance(c, str) else c for c in columns)
    return PreparedRow(columns, payload, salt, hashlib.sha256(salt + payload).digest())


def unique_rows(rows: Sequence[PreparedRow]) -> list[PreparedRow]:
    """Drop rows whose event id appeared earlier in ``rows`` (appends are idempotent)."""
    seen: set[str] = set()
    out = []
    for row in rows:
        event_id = row.columns[0]
        if event_id not in seen:
            seen.add(event_id)
            out.append(row)
    return out


def header(seq: int, columns: Sequence[Any]) -> bytes:
    """Return the bytes of a row's sequence number and columns that the chain covers."""
    # Each text is length-prefixed and NULL is "-": no value can pass for another
    # (NULL for "", or content shifted across a separator into a neighbouring column).
    texts = ["-" if v is None else f"{len(v)}:{v}" for v in columns[:TEXT_COLUMNS]]
    numbers = [_text(v) for v in columns[TEXT_COLUMNS:]]
    return f"{seq}{_SEP}{_SEP.join(texts)}{_SEP}{_SEP.join(numbers)}".encode(
        "utf-8", "surrogatepass"
    )


def header_sql(ts_text_sql: str = "ts") -> str:
    """Return the SQL expression that joins a row's text columns in header form (one
    string per row keeps verification C-level); ``ts_text_sql`` gives ``ts`` as text."""
    exprs = [ts_text_sql if c == "ts" else c for c in COLUMNS[:TEXT_COLUMNS]]
    return f" || '{_SEP}' || ".join(
        f"coalesce(length({x}) || ':' || {x}, '-')" for x in exprs
    )


def _text(v: Any) -> str:
    # floats by repr so they round-trip exactly; the chain must not depend on formatting
    return "" if v is None else repr(v) if v.__class__ is float else str(v)


def link(prev: bytes, seq: int, columns: Sequence[Any], digest: bytes) -> bytes:
    """Return the chain value of row ``seq`` given the previous row's chain value."""
    return hashlib.sha256(prev + header(seq, columns) + digest).digest()


@dataclass(slots=True)
class SealedRow:
    """A prepared row with its place in the chain."""

    seq: int
    row: PreparedRow
    chain: bytes


def seal(rows: Sequence[PreparedRow], head_seq: int, head_chain: bytes) -> list[SealedRow]:
    """Chain ``rows`` after the head (``head_seq``, ``head_chain``)."""
    sealed = []
    prev = head_chain
    seq = head_seq
    for row in rows:
        seq += 1
        prev = link(prev, seq, row.columns, row.digest)
        sealed.append(SealedRow(seq, row, prev))
    return sealed


@dataclass(slots=True)
class VerifyReport:
    """Outcome of :func:`verify_rows`: ``ok`` and, if not, where and why it broke."""

    ok: bool
    checked: int
    head_seq: int
    first_bad_seq: int | None = None
    reason: str | None = None
    erased: int = 0
    head_chain: str | None = None  # hex chain value of the verified head (to anchor)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head_seq": self.head_seq,
            "head_chain": self.head_chain,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "erased": self.erased,
        }


def verify_rows(
    rows: Iterable[Sequence[Any]],
    head_seq: int,
    head_chain: bytes,
    anchor: tuple[int, bytes] | None = None,
) -> VerifyReport:
    """Recompute digests and the chain over ``rows`` (in seq order) against the head.

    Each row is ``(seq, texts, *numbers, payload, salt, digest, chain)``: ``texts`` is
    the text columns (the first :data:`TEXT_COLUMNS`; ``ts`` as :func:`format_ts` writes
    it) already joined in header form by the database — each ``LENGTH:VALUE`` or ``-``
    for NULL, separated by ``\x1f`` (see :func:`header_sql`) — and ``numbers`` the other
    columns;
    ``payload``/``salt`` are None once erased. Reports the first sequence number at
    which the stored trail stops matching: a changed payload or column (digest or chain
    mismatch), a deleted row (gap), an inserted or reordered row (chain mismatch), or a
    truncated tail (head mismatch).

    ``anchor`` is a ``(seq, chain)`` pair kept outside the ledger (from an earlier
    ``verify``): the chain must pass through it, which also catches a trail rewritten
    consistently from some row onward.
    """
    prev = GENESIS
    expected = 1
    checked = erased = 0
    sha256 = hashlib.sha256
    sep = _SEP
    text_of = _text
    for r in rows:
        seq = r[0]
        if seq != expected:
            bad = min(seq, expected)
            what = "missing" if seq > expected else "duplicated or out of order"
            return VerifyReport(False, checked, head_seq, bad, f"row {bad} is {what}")
        payload = r[_PAYLOAD]
        salt = r[_SALT]
        digest = bytes(r[_DIGEST])
        if payload is None and salt is None:
            erased += 1
        elif payload is None or salt is None:  # erasure clears both, never one
            return VerifyReport(
                False, checked, head_seq, seq, f"row {seq} has a payload without its salt "
                "or a salt without its payload (only erasure may clear them, both at once)"
            )
        else:
            if payload.__class__ is str:
                payload = payload.encode("utf-8", "surrogatepass")
            if sha256(bytes(salt) + payload).digest() != digest:
                return VerifyReport(
                    False,
                    checked,
                    head_seq,
                    seq,
                    f"payload of row {seq} does not match its digest",
                )
        text = (
            f"{seq}{sep}{r[1]}{sep}{text_of(r[_NUMBERS])}"
            f"{sep}{text_of(r[_NUMBERS + 1])}{sep}{text_of(r[_NUMBERS + 2])}"
        ).encode("utf-8", "surrogatepass")
        prev = sha256(prev + text + digest).digest()
        if prev != bytes(r[_CHAIN]):
            return VerifyReport(
                False,
                checked,
                head_seq,
                seq,
                f"chain breaks at row {seq} (row altered, inserted or reordered)",
            )
        if anchor is not None and seq == anchor[0] and prev != anchor[1]:
            return VerifyReport(
                False,
                checked,
                head_seq,
                seq,
                f"row {seq} does not match the anchored chain value: the trail up to it "
                "was rewritten",
            )
        checked += 1
        expected += 1
    last = expected - 1
    if anchor is not None and last < anchor[0]:
        return VerifyReport(
            False,
            checked,
            head_seq,
            last + 1,
            f"the ledger ends at row {last}, before the anchored row {anchor[0]}",
        )
    if last != head_seq or prev != (head_chain if head_seq else GENESIS):
        bad = min(last, head_seq) + 1
        return VerifyReport(
            False,
            checked,
            head_seq,
            bad,
            f"ledger head says {head_seq} rows but the chain ends at {last} "
            "(rows removed or added at the end)",
        )
    return VerifyReport(True, checked, head_seq, erased=erased, head_chain=prev.hex())
