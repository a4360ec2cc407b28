"""The run tree as tracing backends see it, rebuilt from ledger events.

tracevault records a step as two events (``start`` and ``end`` sharing a ``span_id``)
and everything else as ``point`` events. Tracing backends want one node per step with
a start and an end time, a parent and stable ids. This module holds what every tree
sink shares:

* :class:`SpanIndex` finds a span's start event by ``(trace_id, span_id)``: its structure
  from the batches already seen or from the ledger, its payload from the ledger as it
  is when the end is sent (so an erased session stays erased);
* :func:`nodes` turns a batch into finished :class:`Node` s (an end paired with its
  start, or a point event);
* deterministic id derivation (:func:`otel_trace_id`, :func:`otel_span_id`,
  :func:`run_uuid`), so that sending a batch again produces the same ids and receivers
  that upsert by id see each step once.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from tracevault.schema import LEVEL_RANK, AuditEvent
from tracevault.store import Store, StoredEvent

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_MAX_DEPTH = 256
# Starts whose payload one query reads at most: below SQLite's oldest limit of 999
# parameters per statement.
_READ_CHUNK = 500


class SpanIndex:
    """Span starts by trace, for pairing ends with starts and for ancestry.

    A trace is either absent (unknown) or complete: it is loaded from the ledger in one
    query on first lookup, then kept current from every batch the forwarder observes.
    At most ``max_traces`` traces are held (least recently used are forgotten and
    reloaded when needed), so memory stays bounded however long a process runs.

    Only a start's structure is kept (ids, kind, level, name, time: the indexed columns,
    which erasure leaves in the ledger), never its payload. A session can be erased
    after its starts were seen, and a sink must send what the ledger holds when it
    sends: so :meth:`observe` reads, for each batch, the current version of the starts
    the batch's ends pair with, by sequence number, in one query. (Refreshing whole
    traces on every batch instead would re-read every event of a long run on every
    poll; structure can be kept, erasure never changes it.)
    """

    def __init__(self, store: Store, *, max_traces: int = 2_000) -> None:
        self._store = store
        self._max = max_traces
        self._traces: OrderedDict[str, dict[str, StoredEvent]] = OrderedDict()
        self._paired: dict[tuple[str, str], AuditEvent] = {}

    def observe(self, events: Sequence[StoredEvent]) -> None:
        """Get ready to send ``events``: record their span starts, and read from the
        ledger, as it is now, the start each of their ends pairs with (see
        :meth:`paired_start`). Call it again before sending a batch again."""
        for stored in events:
            e = stored.event
            if e.phase == "start" and e.span_id and e.trace_id and e.trace_id in self._traces:
                self._traces[e.trace_id].setdefault(e.span_id, _structure(stored))
        in_batch = {stored.seq: stored.event for stored in events}
        paired: dict[tuple[str, str], AuditEvent] = {}
        wanted: dict[int, tuple[str, str]] = {}
        for stored in events:
            e = stored.event
            if e.phase != "end" or not e.trace_id or not e.span_id:
                continue
            start = self._trace(e.trace_id).get(e.span_id)
            if start is None:
                continue
            if start.seq in in_batch:  # read with the batch, just now
                paired[(e.trace_id, e.span_id)] = in_batch[start.seq]
            else:
                wanted[start.seq] = (e.trace_id, e.span_id)
        seqs = sorted(wanted)
        for i in range(0, len(seqs), _READ_CHUNK):
            for stored in self._store.events(seqs=seqs[i:i + _READ_CHUNK]):
                paired[wanted[stored.seq]] = stored.event
        self._paired = paired

    def paired_start(self, end: AuditEvent) -> AuditEvent | None:
        """Return the start of span ``end`` ends, payload included, as the ledger held it
        when the batch holding ``end`` was observed; ``None`` if never recorded."""
        if not end.trace_id or not end.span_id:
            return None
        return self._paired.get((end.trace_id, end.span_id))

    def _trace(self, trace_id: str) -> dict[str, StoredEvent]:
        spans = self._traces.get(trace_id)
        if spans is not None:
            self._traces.move_to_end(trace_id)
            return spans
        spans = {}
        for stored in self._store.events(trace_id=trace_id):
            e = stored.event
            if e.phase == "start" and e.span_id:
                spans.setdefault(e.span_id, _structure(stored))
        self._traces[trace_id] = spans
        while len(self._traces) > self._max:
            self._traces.popitem(last=False)
        return spans

    def start_of(self, trace_id: str | None, span_id: str | None) -> AuditEvent | None:
        """Return the structure of span ``span_id``'s start in ``trace_id``, if recorded:
        its indexed columns only, with an empty payload."""
        if not trace_id or not span_id:
            return None
        start = self._trace(trace_id).get(span_id)
        return start.event if start is not None else None

    def ancestors(self, event: AuditEvent) -> list[AuditEvent]:
        """Return the start events above ``event``'s node, root first.

        The chain stops at the first parent whose start was never recorded (filtered by
        level, or from a framework run that emitted no start), which then counts as
        the root.
        """
        chain: list[AuditEvent] = []
        seen: set[str] = set()
        parent = parent_of(event, self)
        while parent and parent not in seen and len(chain) < _MAX_DEPTH:
            seen.add(parent)
            start = self.start_of(event.trace_id, parent)
            if start is None:
                break
            chain.append(start)
            parent = start.parent_span_id
        chain.reverse()
        return chain


def _structure(stored: StoredEvent) -> StoredEvent:
    """Return ``stored`` without its payload: the indexed columns, as erasure leaves them."""
    e = stored.event
    return StoredEvent(stored.seq, AuditEvent(
        event_id=e.event_id, timestamp=e.timestamp, kind=e.kind, phase=e.phase,
        level=e.level, name=e.name, session_id=e.session_id, user_id=e.user_id,
        trace_id=e.trace_id, span_id=e.span_id, parent_span_id=e.parent_span_id))


def parent_of(event: AuditEvent, spans: SpanIndex) -> str | None:
    """Return the span id a node hangs under.

    A span's parent is its ``parent_span_id``. A point event produced *by* a span (an
    error or a slow-tool warning carrying the tool's ``span_id``) hangs under that
    span; other point events under their ``parent_span_id``.
    """
    if event.phase == "point" and event.span_id and spans.start_of(event.trace_id, event.span_id):
        return event.span_id
    return event.parent_span_id


@dataclass(slots=True)
class Node:
    """One finished step: a span (start + end events) or a point event.

    ``node_id`` is the span id for spans and the event id for point events and for
    ends whose start was never recorded. ``start`` is ``None`` for a point event.
    """

    node_id: str
    trace_id: str
    parent_id: str | None
    start_time: datetime
    end_time: datetime
    start: AuditEvent | None
    end: AuditEvent
    event_ids: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.end.kind

    @property
    def name(self) -> str:
        return self.end.name or (self.start.name if self.start else None) or self.end.kind

    @property
    def first(self) -> AuditEvent:
        return self.start or self.end

    @property
    def level(self) -> str:
        if self.start is None or LEVEL_RANK[self.end.level] >= LEVEL_RANK[self.start.level]:
            return self.end.level
        return self.start.level

    @property
    def data(self) -> dict[str, Any]:
        """The start's data overlaid with the end's (the end knows the outcome)."""
        if self.start is None:
            return self.end.data
        return {**self.start.data, **self.end.data}

    @property
    def is_span(self) -> bool:
        return self.end.phase != "point"

    @property
    def error(self) -> str | None:
        """``"Type: message"`` when this step failed, else ``None``."""
        data = self.data
        if self.kind == "error":
            return _error_text(data) or "error"
        nested = data.get("error")
        if isinstance(nested, dict):
            return _error_text(nested) or "error"
        if data.get("status") == "error" or self.end.level == "error":
            return str(nested) if nested else "error"
        return None


def _error_text(data: dict[str, Any]) -> str | None:
    kind, message = data.get("type"), data.get("message")
    if kind and message:
        return f"{kind}: {message}"
    return str(message or kind) if (message or kind) else None


def nodes(events: Sequence[StoredEvent], spans: SpanIndex) -> list[Node]:
    """Return the steps that finish in ``events``, in ledger order.

    A ``start`` yields nothing by itself (its node is emitted with its end, whose batch
    may come later); an ``end`` is paired with its start through ``spans`` (which has
    observed ``events``); an end without a recorded start starts ``duration_ms`` before
    it (or at it).
    """
    out: list[Node] = []
    for stored in events:
        e = stored.event
        if e.phase == "start":
            continue
        trace = e.trace_id or e.event_id
        if e.phase == "end":
            start = spans.paired_start(e)
            if start is not None:
                out.append(Node(e.span_id or e.event_id, trace, start.parent_span_id,
                                start.timestamp, max(e.timestamp, start.timestamp), start, e,
                                [start.event_id, e.event_id]))
                continue
            began = e.timestamp - duration_of(e.data)
            out.append(Node(e.span_id or e.event_id, trace, e.parent_span_id, began,
                            e.timestamp, None, e, [e.event_id]))
            continue
        out.append(Node(e.event_id, trace, parent_of(e, spans), e.timestamp, e.timestamp,
                        None, e, [e.event_id]))
    return out


def milliseconds(value: Any) -> timedelta | None:
    """Return a recorded duration in milliseconds as a timedelta; ``None`` when it is not
    a number or not plausible (negative, or a day or more: a unit mistake)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 86_400_000:
        return timedelta(milliseconds=value)
    return None


def duration_of(data: dict[str, Any]) -> timedelta:
    """Return ``data["duration_ms"]`` as a timedelta (zero when absent or absurd)."""
    return milliseconds(data.get("duration_ms")) or timedelta(0)


# --- ids ----------------------------------------------------------------------------------


def _digest(prefix: str, value: str, size: int) -> int:
    raw = hashlib.sha256(f"{prefix}:{value}".encode("utf-8", "surrogatepass")).digest()[:size]
    return int.from_bytes(raw, "big") or 1


def otel_trace_id(trace_id: str) -> int:
    """Return the 128-bit OpenTelemetry trace id for a tracevault trace id.

    tracevault's own trace ids are already 32 hex digits and are kept, so spans join
    any OpenTelemetry trace that uses the same id; other ids (UUIDs from frameworks,
    free text) are hashed.
    """
    text = trace_id.lower()
    if _HEX32.match(text) and int(text, 16):
        return int(text, 16)
    try:
        return uuid.UUID(trace_id).int or _digest("trace", trace_id, 16)
    except ValueError:
        return _digest("trace", trace_id, 16)


def otel_span_id(node_id: str) -> int:
    """Return the 64-bit OpenTelemetry span id for a span id or event id."""
    text = node_id.lower()
    if _HEX16.match(text) and int(text, 16):
        return int(text, 16)
    return _digest("span", node_id, 8)


def run_uuid(node_id: str, start: datetime) -> uuid.UUID:
    """Return a deterministic UUIDv7 for a node: its start time, then a hash of its id.

    Time-ordered like the run ids LangSmith generates, yet the same on every delivery.
    """
    ms = max(0, (start - _EPOCH) // timedelta(milliseconds=1)) & 0xFFFFFFFFFFFF
    rand = _digest("run", node_id, 10)
    value = ms << 80 | 0x7 << 76 | ((rand >> 64) & 0xFFF) << 64 | 0b10 << 62
    value |= rand & 0x3FFFFFFFFFFFFFFF
    return uuid.UUID(int=value)


def epoch_ns(ts: datetime) -> int:
    """Return ``ts`` as integer nanoseconds since the epoch (exact to the microsecond)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ((ts - _EPOCH) // timedelta(microseconds=1)) * 1000
