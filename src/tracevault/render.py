"""Terminal rendering of sessions, trees and statistics (used by the CLI and notebooks)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from tracevault.schema import AuditEvent
from tracevault.store.base import SessionSummary, Stats, StoredEvent


@dataclass
class Node:
    """One step of a run tree: a start/end pair, or a single point event."""

    seq: int
    start: AuditEvent | None = None
    end: AuditEvent | None = None
    children: list[Node] = field(default_factory=list)

    @property
    def event(self) -> AuditEvent:
        ev = self.end or self.start
        assert ev is not None
        return ev


@dataclass
class Run:
    """All steps of one trace (one agent run) in a session."""

    trace_id: str | None
    roots: list[Node] = field(default_factory=list)


def build_runs(events: Iterable[StoredEvent]) -> list[Run]:
    """Group events by trace and link them into trees by span and parent span."""
    runs: dict[str | None, Run] = {}
    spans: dict[tuple[str | None, str], Node] = {}
    for stored in events:
        ev = stored.event
        run = runs.setdefault(ev.trace_id, Run(ev.trace_id))
        key = (ev.trace_id, ev.span_id) if ev.span_id else None
        if ev.phase in ("start", "end") and key is not None:
            node = spans.get(key)
            if node is None:
                node = spans[key] = Node(stored.seq)
                _attach(run, spans, ev.trace_id, ev.parent_span_id, node)
            if ev.phase == "start":
                node.start = ev
            else:
                node.end = ev
            continue
        node = Node(stored.seq, start=ev)
        # A point event that names an existing span belongs inside it (e.g. an error
        # raised by a tool); otherwise it hangs under its parent.
        owner = ev.span_id if key is not None and key in spans else ev.parent_span_id
        _attach(run, spans, ev.trace_id, owner, node)
    return list(runs.values())


def _attach(
    run: Run,
    spans: dict[tuple[str | None, str], Node],
    trace_id: str | None,
    parent: str | None,
    node: Node,
) -> None:
    holder = spans.get((trace_id, parent)) if parent else None
    (holder.children if holder is not None else run.roots).append(node)


def short(value: Any, width: int = 80) -> str:
    """Return a one-line, width-limited rendering of any JSON-safe value."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _ms(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return ""
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.1f} ms"


def describe(node: Node, width: int = 80) -> str:
    """Return the one-line description of a tree node."""
    ev = node.event
    start = node.start.data if node.start else {}
    data = {**start, **(node.end.data if node.end else {})}
    kind = ev.kind
    if data.get("withheld"):
        return f"{kind} {ev.name or ''} [payload withheld: {data.get('reason', '')}]"
    if data.get("erased"):
        kept = [str(data["status"])] if data.get("status") else []
        if data.get("tokens") is not None:
            kept.append(f"{data['tokens']} tokens")
        if isinstance(data.get("cost"), (int, float)):
            kept.append(f"${data['cost']:.6f}")
        if data.get("duration_ms") is not None:
            kept.append(_ms(data["duration_ms"]))
        return " · ".join([f"{kind} {ev.name or ''} [payload erased]", *kept])
    if kind == "input":
        return f"input {data.get('type', '')}: {short(data.get('content'), width)}"
    if kind == "output":
        extra = f" · {data['tokens_used']} tokens" if data.get("tokens_used") else ""
        if isinstance(data.get("cost"), (int, float)):
            extra += f" · ${data['cost']:.6f}"
        return f"output: {short(data.get('content'), width)}{extra}"
    if kind == "reasoning":
        plan = f" · plan: {short(data['plan'], width // 2)}" if data.get("plan") else ""
        return f"reasoning: {short(data.get('thought', ''), width)}{plan}"
    if kind == "tool_call":
        status = data.get("status", "pending")
        mark = {"success": "ok", "error": "FAILED", "pending": "no outcome"}.get(status, status)
        params = short(data.get("parameters", ""), width // 2)
        out = f"tool {data.get('tool_name') or ev.name}({params})"
        if status == "error":
            err = _mapping(data.get("error"), "message")
            message = short(err.get("message", data.get("result", "")), width // 2)
            out += f" ✗ {err.get('type', 'error')}: {message}"
        elif "result" in data:
            out += f" → {short(data['result'], width // 2)}"
        return f"{out} · {mark}" + (
            f" · {_ms(data.get('duration_ms'))}" if "duration_ms" in data else ""
        )
    if kind == "llm_call":
        usage = _mapping(data.get("usage"), "total")
        parts = [f"llm {data.get('model') or ev.name or '?'}"]
        if usage:
            parts.append(f"{usage.get('input', 0)}→{usage.get('output', 0)} tokens")
        if isinstance(data.get("cost"), (int, float)):
            parts.append(f"${data['cost']:.6f}")
        if "duration_ms" in data:
            parts.append(_ms(data["duration_ms"]))
        if data.get("finish_reason"):
            parts.append(f"finish={data['finish_reason']}")
        if data.get("status") == "error":
            parts.append("FAILED")
        calls = data.get("tool_calls") if isinstance(data.get("tool_calls"), list) else None
        if calls:
            names = [c.get("name", "?") for c in calls if isinstance(c, dict)]
            parts.append(f"calls {', '.join(names)}")
        elif data.get("response") is not None:
            parts.append(f"→ {short(data['response'], width // 2)}")
        return " · ".join(parts)
    if kind == "retrieval":
        docs = data.get("documents") or []
        return f"retrieval {short(data.get('query', ''), width // 2)} → {len(docs)} documents"
    if kind == "error":
        out = f"error {data.get('type', '')}: {short(data.get('message', ''), width)}"
        if data.get("where"):
            out += f" (in {data['where']})"
        if data.get("recovery_action"):
            out += f" · recovery: {short(data['recovery_action'], width // 2)}"
        return out
    if kind in ("agent", "chain"):
        status = data.get("status")
        tail = f" · {status}" if status else ""
        return f"{kind} {ev.name or ''}{tail}" + (
            f" · {_ms(data['duration_ms'])}" if "duration_ms" in data else ""
        )
    return f"{kind} {ev.name or ''}: {short(data.get('payload', data), width)}"


def _mapping(value: Any, key: str) -> dict[str, Any]:
    # Payloads written through the low-level API may hold a string where a dict is usual.
    if isinstance(value, dict):
        return value
    return {} if value is None else {key: value}


def render_tree(runs: Sequence[Run], *, full: bool = False, width: int = 100) -> str:
    """Render runs as indented trees, one line per step (``full`` adds payloads)."""
    lines: list[str] = []
    for run in runs:
        lines.append(f"run {run.trace_id or '(no trace)'}")
        _render_nodes(run.roots, "", lines, full, width)
    return "\n".join(lines)


def _render_nodes(nodes: list[Node], prefix: str, lines: list[str], full: bool, width: int) -> None:
    for i, node in enumerate(nodes):
        last = i == len(nodes) - 1
        ev = node.event
        when = ev.timestamp.strftime("%H:%M:%S.%f")[:-3]
        lines.append(
            f"{prefix}{'└─ ' if last else '├─ '}{when} #{node.seq} {describe(node, width)}"
        )
        child_prefix = prefix + ("   " if last else "│  ")
        if full:
            for part in (node.start, node.end):
                if part is not None and part.data:
                    dumped = orjson.dumps(part.data, option=orjson.OPT_INDENT_2).decode()
                    for line in f"[{part.phase}] {dumped}".splitlines():
                        lines.append(f"{child_prefix}    {line}")
        _render_nodes(node.children, child_prefix, lines, full, width)


def session_header(summary: SessionSummary) -> str:
    """Return the one-line heading of a session."""
    return (
        f"session {_session_label(summary)} · user {summary.user_id or '-'} · "
        f"{summary.start} → {summary.end} · {summary.runs} runs · {summary.events} events · "
        f"{summary.tool_calls} tool calls · {summary.errors} errors · "
        f"{summary.tokens} tokens · ${summary.cost:.6f}"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render a plain aligned text table."""
    cells = [[str(h) for h in headers], *[["" if v is None else _cell(v) for v in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    out = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


NO_SESSION = "(no session)"  # how runs recorded without a session are listed


def _session_label(summary: SessionSummary) -> str:
    return summary.session_id if summary.session_id is not None else NO_SESSION


def render_sessions(sessions: Sequence[SessionSummary]) -> str:
    """Render the ``tracevault sessions`` table."""
    return table(
        [
            "SESSION",
            "USER",
            "START",
            "END",
            "RUNS",
            "EVENTS",
            "TOOLS",
            "ERRORS",
            "TOKENS",
            "COST $",
        ],
        [
            [
                _session_label(s),
                s.user_id or "-",
                s.start[:19],
                s.end[:19],
                s.runs,
                s.events,
                s.tool_calls,
                s.errors,
                s.tokens,
                s.cost,
            ]
            for s in sessions
        ],
    )


def render_stats(stats: Stats) -> str:
    """Render the three ``tracevault stats`` tables."""
    parts = [
        "Tool usage",
        table(
            ["TOOL", "CALLS", "ERRORS", "ERROR RATE", "AVG MS", "P95 MS"],
            [
                [
                    t.tool,
                    t.calls,
                    t.errors,
                    f"{t.error_rate:.1%}",
                    None if t.avg_ms is None else round(t.avg_ms, 2),
                    None if t.p95_ms is None else round(t.p95_ms, 2),
                ]
                for t in stats.tools
            ],
        ),
        "",
        "Per day (UTC)",
        table(
            ["DAY", "EVENTS", "ERROR EVENTS", "RUNS", "FAILED RUNS", "RUN ERROR RATE"],
            [
                [d.day, d.events, d.errors, d.runs, d.failed_runs, f"{d.error_rate:.1%}"]
                for d in stats.days
            ],
        ),
        "",
        "Models",
        table(
            ["MODEL", "CALLS", "TOKENS", "COST $"],
            [[m.model, m.calls, m.tokens, m.cost] for m in stats.models],
        ),
    ]
    return "\n".join(parts)
