"""Assertions on the shape of recorded runs: one trace per root, exact parent links."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tracevault.schema import AuditEvent


def check_tree(events: Sequence[AuditEvent]) -> dict[str, AuditEvent]:
    """Assert ``events`` form well-formed trees; return each span's start event.

    Every event carries its root run's trace id; every start has exactly one end with
    the same span; every parent is a span of the same trace that started earlier; a
    root run (no parent) is the trace id itself.
    """
    starts: dict[str, AuditEvent] = {}
    ends: Counter[str] = Counter()
    for ev in events:
        assert ev.framework == "langchain", ev
        assert ev.trace_id, ev
        assert ev.span_id is None or ev.span_id != ev.parent_span_id, f"its own parent: {ev}"
        if ev.parent_span_id is not None:
            parent = starts.get(ev.parent_span_id)
            assert parent is not None, f"parent of {ev.kind} {ev.name} not started before it"
            assert parent.trace_id == ev.trace_id, f"{ev.kind} {ev.name} crosses traces"
        if ev.phase == "start":
            assert ev.span_id and ev.span_id not in starts, f"span started twice: {ev}"
            starts[ev.span_id] = ev
            if ev.parent_span_id is None:
                assert ev.trace_id == ev.span_id, "a root's trace id is its run id"
        elif ev.phase == "end":
            assert ev.span_id in starts, f"end without start: {ev.kind} {ev.name}"
            ends[ev.span_id] += 1
    for span, start in starts.items():
        assert ends[span] == 1, f"{start.kind} {start.name} ended {ends[span]} times"
    return starts


def parent_of(ev: AuditEvent, starts: dict[str, AuditEvent]) -> AuditEvent:
    """Return the start event of ``ev``'s parent span."""
    assert ev.parent_span_id is not None, f"{ev.kind} {ev.name} has no parent"
    return starts[ev.parent_span_id]


def kinds(events: Sequence[AuditEvent], *, steps: bool = True) -> list[tuple[str, str, str | None]]:
    """Return ``(kind, phase, name)`` per event; ``steps=False`` drops ``chain`` steps."""
    return [(e.kind, e.phase, e.name) for e in events if steps or e.kind != "chain"]


def tree(events: Sequence[AuditEvent]) -> list[tuple[str, str, str | None, str | None]]:
    """Return ``(kind, phase, name, parent's name)`` per event of a tree that passes
    :func:`check_tree`: the tree as recorded, ids aside."""
    starts = check_tree(events)
    return [(e.kind, e.phase, e.name,
             None if e.parent_span_id is None else starts[e.parent_span_id].name)
            for e in events]
