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
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    """An event ready to append: encoded, salted and digested, awaiting its seq.

    ``tail`` is what the chain hashes after the previous chain value and the row's seq
    (the rest of :func:`header`, then ``digest``); it is computed once here, outside
    any store lock, and left empty by callers that build rows themselves.
    """

    columns: tuple[Any, ...]  # values in COLUMNS order
    payload: bytes
    salt: bytes
    digest: bytes
    tail: bytes = b""


def _metrics(event: AuditEvent) -> tuple[str | None, float | None, int | None, float | None]:
    data = event.data
    if data.__class__ is not dict:
        data = data if isinstance(data, dict) else {}
    status = data.get("status")
    tokens: Any = None
    cost: Any = None
    if event.kind == "llm_call":
        usage = data.get("usage")
        if isinstance(usage, dict):
            tokens = usage.get("total")
        cost = data.get("cost")
    return (
        status if isinstance(status, str) else None,
        _number(data.get("duration_ms")),
        int(tokens) if tokens is not None and _number(tokens) is not None
        and abs(tokens) < _INT_COLUMN else None,
        None if cost is None else _number(cost),
    )


_INT_COLUMN = 2**63  # SQLite INTEGER and PostgreSQL bigint
METRICS = ("status", "duration_ms", "tokens", "cost")  # the columns of _metrics


def erased_data(metrics: Sequence[Any]) -> dict[str, Any]:
    """The data of an erased event: ``{"erased": true}`` and the metrics its row keeps
    (``metrics``: status, duration, tokens and cost, ``None`` where it has none)."""
    data: dict[str, Any] = {"erased": True}
    for key, value in zip(METRICS, metrics, strict=True):
        if value is not None:
            data[key] = value
    return data


def erased_event(event: AuditEvent) -> AuditEvent:
    """``event`` as the ledger keeps it once erased (for copies kept outside it, such as
    dead-letter files): ids, kind, name, time and metrics; no data, metadata or tags."""
    return AuditEvent(event.event_id, event.timestamp, event.kind, event.phase, event.level,
                      event.name, event.session_id, event.user_id, event.trace_id,
                      event.span_id, event.parent_span_id, event.framework,
                      data=erased_data(_metrics(event)))


def _number(value: Any) -> float | None:
    """A finite number for a metric column, else None (the payload keeps the original)."""
    if value.__class__ is float:  # the common case, without the checks below
        # + 0.0 turns -0.0 into 0.0: databases store it that way, and the chain must match.
        return value + 0.0 if math.isfinite(value) else None
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number + 0.0 if math.isfinite(number) else None


def _format_ts_fast(ts: datetime) -> str:
    # orjson writes the same text as format_ts() ~4x faster, but drops the fraction
    # when it is zero and keeps other offsets: only exact UTC with microseconds here.
    if ts.tzinfo is timezone.utc and ts.microsecond and ts.__class__ is datetime:
        return orjson.dumps(ts, option=orjson.OPT_UTC_Z)[1:-1].decode()
    return format_ts(ts)


def prepare(event: AuditEvent) -> PreparedRow:
    """Encode and digest one event (the part of sealing that needs no chain head)."""
    return _prepare(event, salts(1))


def prepare_rows(events: Sequence[AuditEvent]) -> list[PreparedRow]:
    """:func:`prepare` every event of a batch, each with its own 16 bytes of salt."""
    pool = salts(len(events))
    return [
        _prepare(event, pool[i : i + SALT_BYTES])
        for i, event in zip(range(0, len(pool), SALT_BYTES), events, strict=True)
    ]


_SALT_POOL = 4_096 * SALT_BYTES
_salt_lock = threading.Lock()
_salt_pool = b""
_salt_at = 0


def salts(count: int) -> bytes:
    """Return ``count`` fresh salts, concatenated (``SALT_BYTES`` each).

    They come from ``os.urandom``, read 4,096 salts at a time: the system call lets go
    of the GIL, and taking it back from a busy agent thread costs that thread far more
    than the call (see :class:`tracevault.pipeline.Pipeline`). A forked child drops
    what it inherited, so no two processes ever use the same salt.
    """
    global _salt_pool, _salt_at
    size = count * SALT_BYTES
    with _salt_lock:
        if _salt_at + size > len(_salt_pool):
            _salt_pool, _salt_at = os.urandom(max(size, _SALT_POOL)), 0
        out = _salt_pool[_salt_at : _salt_at + size]
        _salt_at += size
    return out


# CPython's hashlib lets go of the GIL to hash 2,048 bytes or more in one call. On the
# ledger writer's thread that is a hand-over like those Pipeline avoids: the agent's
# thread takes the GIL, the writer waits until it is given back (0.4-1.4 ms per call
# while an agent computes) and the agent then loses it again. sha256_digest() feeds
# larger inputs in pieces below that size, holding the GIL throughout.
_HELD_CHUNK = 2_047


def sha256_digest(data: bytes) -> bytes:
    """Return the SHA-256 digest of ``data`` without letting go of the GIL."""
    if len(data) <= _HELD_CHUNK:
        return hashlib.sha256(data).digest()
    h = hashlib.sha256()
    view = memoryview(data)
    for start in range(0, len(data), _HELD_CHUNK):
        h.update(view[start : start + _HELD_CHUNK])
    return h.digest()


def _forget_salts() -> None:
    global _salt_lock, _salt_pool, _salt_at
    # Another thread may have held the lock at the fork: the child starts with a new one.
    _salt_lock = threading.Lock()
    _salt_pool, _salt_at = b"", 0


os.register_at_fork(after_in_child=_forget_salts)


def _prepare(event: AuditEvent, salt: bytes) -> PreparedRow:
    payload, event = _encode(event)
    # orjson's output keeps its whole working buffer allocated; a batch of rows held
    # until the insert would take fresh memory (page faults) for every event. A tight
    # copy costs far less (see snapshot.freeze for the same effect on the queue).
    payload = bytes(memoryview(payload))
    columns: tuple[Any, ...] = (
        event.event_id,
        _format_ts_fast(event.timestamp),
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
    # Every text column is a string of the payload, where orjson writes NUL as \u0000:
    # without that sequence no column can hold one (the search is C-speed).
    if payload.find(b"\\u0000") >= 0 and any(c.__class__ is str and "\x00" in c for c in columns):
        # NUL fits no database text column everywhere (PostgreSQL refuses it, SQLite's
        # length() stops at it); the payload keeps it, escaped. The chain covers the
        # stored column values, so the ledger verifies and copies between stores.
        columns = tuple(c.replace("\x00", "\ufffd") if isinstance(c, str) else c for c in columns)
    digest = sha256_digest(salt + payload)
    return PreparedRow(columns, payload, salt, digest, _tail(columns) + digest)


def stored_text(value: str) -> str:
    """``value`` as a text column holds it (lone surrogates and NUL replaced, as
    :func:`prepare` stores them): what a query by an id the application used compares."""
    return str(sanitize_strings(value)).replace("\x00", "\ufffd")


def _tail(columns: Sequence[Any]) -> bytes:
    """:func:`header` without the seq: ``header(seq, c) == b"%d" % seq + _tail(c)``."""
    # One f-string rather than a list of pieces and two joins: this runs for every
    # event, and the pieces cost more than the hashing.
    (e, ts, kind, phase, level, name, session, user, trace, span, parent, status,
     duration, tokens, cost) = columns
    s = _SEP
    return (
        f"{s}{'-' if e is None else f'{len(e)}:{e}'}"
        f"{s}{'-' if ts is None else f'{len(ts)}:{ts}'}"
        f"{s}{'-' if kind is None else f'{len(kind)}:{kind}'}"
        f"{s}{'-' if phase is None else f'{len(phase)}:{phase}'}"
        f"{s}{'-' if level is None else f'{len(level)}:{level}'}"
        f"{s}{'-' if name is None else f'{len(name)}:{name}'}"
        f"{s}{'-' if session is None else f'{len(session)}:{session}'}"
        f"{s}{'-' if user is None else f'{len(user)}:{user}'}"
        f"{s}{'-' if trace is None else f'{len(trace)}:{trace}'}"
        f"{s}{'-' if span is None else f'{len(span)}:{span}'}"
        f"{s}{'-' if parent is None else f'{len(parent)}:{parent}'}"
        f"{s}{'-' if status is None else f'{len(status)}:{status}'}"
        f"{s}{_text(duration)}{s}{_text(tokens)}{s}{_text(cost)}"
    ).encode("utf-8", "surrogatepass")


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


def header_sql(ts_text_sql: str = "ts", *, dynamic_types: bool = False) -> str:
    """Return the SQL expression that joins a row's text columns in header form (one
    string per row keeps verification C-level); ``ts_text_sql`` gives ``ts`` as text.

    With ``dynamic_types`` (SQLite, where any column can hold any type) a column that
    holds a BLOB gives ``blob``, which no stored text can produce: the same bytes as
    a BLOB concatenate to the same text, yet no longer match a query by value, so a
    session retyped that way would drop out of ``sessions`` and ``show`` unseen.
    """
    exprs = [ts_text_sql if c == "ts" else c for c in COLUMNS[:TEXT_COLUMNS]]
    part = "coalesce(length({x}) || ':' || {x}, '-')"
    if dynamic_types:
        part = f"CASE typeof({{x}}) WHEN 'blob' THEN 'blob' ELSE {part} END"
    return f" || '{_SEP}' || ".join(part.format(x=x) for x in exprs)


def header_columns(text: str) -> list[str | None] | None:
    """Split the text columns :func:`header_sql` joined back into values (``None``
    for NULL); ``None`` if ``text`` is not in that form."""
    out: list[str | None] = []
    i, end = 0, len(text)
    while i <= end:
        if text.startswith("-", i):
            out.append(None)
            i += 1
        else:
            colon = text.find(":", i)
            if colon < 0 or not text[i:colon].isdigit():
                return None
            start = colon + 1
            i = start + int(text[i:colon])
            if i > end:
                return None
            out.append(text[start:i])
        if i == end:
            return out
        if text[i] != _SEP:
            return None
        i += 1
    return out


def _text(v: Any) -> str:
    # floats by repr so they round-trip exactly; the chain must not depend on formatting
    return "" if v is None else repr(v) if v.__class__ is float else str(v)


def link(prev: bytes, seq: int, columns: Sequence[Any], digest: bytes) -> bytes:
    """Return the chain value of row ``seq`` given the previous row's chain value."""
    return sha256_digest(prev + header(seq, columns) + digest)


@dataclass(slots=True)
class SealedRow:
    """A prepared row with its place in the chain."""

    seq: int
    row: PreparedRow
    chain: bytes


def _chained(
    rows: Sequence[PreparedRow], head_seq: int, head_chain: bytes
) -> Iterator[tuple[int, PreparedRow, bytes]]:
    prev = head_chain
    seq = head_seq
    for row in rows:
        seq += 1
        # header(seq) + digest == seq digits + tail (ASCII digits encode to themselves)
        tail = row.tail or _tail(row.columns) + row.digest
        prev = sha256_digest(prev + b"%d" % seq + tail)
        yield seq, row, prev


def seal(rows: Sequence[PreparedRow], head_seq: int, head_chain: bytes) -> list[SealedRow]:
    """Chain ``rows`` after the head (``head_seq``, ``head_chain``)."""
    return [SealedRow(seq, row, chain) for seq, row, chain in _chained(rows, head_seq, head_chain)]


def sealed_values(
    rows: Sequence[PreparedRow], head_seq: int, head_chain: bytes
) -> list[tuple[Any, ...]]:
    """Chain ``rows`` after the head and return each as the values of a stored row:
    ``(seq, *columns, payload text, salt, digest, chain)`` (what stores insert)."""
    return [
        (seq, *row.columns, row.payload.decode(), row.salt, row.digest, chain)
        for seq, row, chain in _chained(rows, head_seq, head_chain)
    ]


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
    erasures: int = 0  # erasure records in the trail (see tracevault.store.erasures)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head_seq": self.head_seq,
            "head_chain": self.head_chain,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "erased": self.erased,
            "erasures": self.erasures,
        }


def verify_rows(
    rows: Iterable[Sequence[Any]],
    head_seq: int,
    head_chain: bytes,
    anchor: tuple[int, bytes] | None = None,
    recorded: Callable[[int, str], bool] | None = None,
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

    ``recorded(seq, texts)`` says whether an erased row is covered by an erasure
    record (:class:`tracevault.store.erasures.ErasureIndex`); an erased row it refuses is
    reported. Without it, erased rows are only counted.
    """
    prev = GENESIS
    expected = 1
    checked = erased = 0
    sha256 = hashlib.sha256
    sep = _SEP
    seq = expected
    try:
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
            d, t, c = r[_NUMBERS], r[_NUMBERS + 1], r[_NUMBERS + 2]  # duration, tokens, cost
            # _text() inlined: this loop runs once per stored row
            text = (
                f"{seq}{sep}{r[1]}"
                f"{sep}{'' if d is None else repr(d) if d.__class__ is float else d}"
                f"{sep}{'' if t is None else repr(t) if t.__class__ is float else t}"
                f"{sep}{'' if c is None else repr(c) if c.__class__ is float else c}"
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
            if payload is None and recorded is not None and not recorded(seq, r[1]):
                # (after the chain: a row altered besides is reported as such)
                return VerifyReport(
                    False, checked, head_seq, seq, f"row {seq} was erased, but no erasure "
                    "record after it covers it (payload and salt were cleared other than by "
                    "`tracevault erase`)"
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
    except TypeError:  # a salt, digest or chain stored as text, a payload as a number
        return VerifyReport(
            False, checked, head_seq, seq, f"row {seq} holds a payload, salt, digest or "
            "chain value of another type than tracevault stores"
        )
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
