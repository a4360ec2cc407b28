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
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from tracevault.schema import AuditEvent
from tracevault.snapshot import sanitize_strings

GENESIS = bytes(32)
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


def format_ts(ts: datetime) -> str:
    """Return the canonical UTC text form of a timestamp (microseconds, ``Z``)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
        # Invalid unicode (lone surrogates) is the only thing snapshot() leaves for
        # here; repair it rather than lose the event. The repaired copy is what gets
        # stored and indexed.
        plain = event.to_dict()
        timestamp = plain.pop("timestamp")
        fixed = AuditEvent(timestamp=timestamp, **sanitize_strings(plain))
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
    data = event.data
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
        float(duration) if isinstance(duration, (int, float)) else None,
        int(tokens) if isinstance(tokens, (int, float)) else None,
        float(cost) if isinstance(cost, (int, float)) else None,
    )


def prepare(event: AuditEvent) -> PreparedRow:
    """Encode and digest one event (the part of sealing that needs no chain head)."""
    payload, event = _encode(event)
    salt = os.urandom(SALT_BYTES)
    columns = (
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
    return PreparedRow(columns, payload, salt, hashlib.sha256(salt + payload).digest())


def header(seq: int, columns: Sequence[Any]) -> bytes:
    """Return the bytes of a row's sequence number and columns that the chain covers."""
    parts = [str(seq)]
    for value in columns:
        parts.append(
            "" if value is None else repr(value) if isinstance(value, float) else str(value)
        )
    return "\x1f".join(parts).encode("utf-8", "surrogatepass")


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
class StoredRow:
    """A row as read back for verification (``payload``/``salt`` are None if erased)."""

    seq: int
    columns: tuple[Any, ...]
    payload: bytes | None
    salt: bytes | None
    digest: bytes
    chain: bytes


@dataclass(slots=True)
class VerifyReport:
    """Outcome of :func:`verify_rows`: ``ok`` and, if not, where and why it broke."""

    ok: bool
    checked: int
    head_seq: int
    first_bad_seq: int | None = None
    reason: str | None = None
    erased: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head_seq": self.head_seq,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "erased": self.erased,
        }


def verify_rows(rows: Iterable[StoredRow], head_seq: int, head_chain: bytes) -> VerifyReport:
    """Recompute digests and the chain over ``rows`` (in seq order) against the head.

    Reports the first sequence number at which the stored trail stops matching: a
    changed payload or column (digest or chain mismatch), a deleted row (gap), an
    inserted or reordered row (chain mismatch), or a truncated tail (head mismatch).
    """
    prev = GENESIS
    expected = 1
    checked = erased = 0
    sha256 = hashlib.sha256
    for r in rows:
        if r.seq != expected:
            bad = min(r.seq, expected)
            what = "missing" if r.seq > expected else "duplicated or out of order"
            return VerifyReport(False, checked, head_seq, bad, f"row {bad} is {what}")
        if r.payload is None or r.salt is None:
            erased += 1
        elif sha256(r.salt + r.payload).digest() != r.digest:
            return VerifyReport(
                False, checked, head_seq, r.seq, f"payload of row {r.seq} does not match its digest"
            )
        prev = sha256(prev + header(r.seq, r.columns) + r.digest).digest()
        if prev != r.chain:
            return VerifyReport(
                False,
                checked,
                head_seq,
                r.seq,
                f"chain breaks at row {r.seq} (row altered, inserted or reordered)",
            )
        checked += 1
        expected += 1
    last = expected - 1
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
    return VerifyReport(True, checked, head_seq, erased=erased)
