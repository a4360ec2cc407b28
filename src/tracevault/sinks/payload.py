"""What a step's input, output, usage and cost are, for every kind of event.

Tree sinks (Langfuse, LangSmith, OpenTelemetry) all need the same answers; they only
differ in the field names they put them under.
"""

from __future__ import annotations

from typing import Any

from tracevault.pricing import usage_cost
from tracevault.sinks.tree import Node


def inputs_of(node: Node) -> Any:
    """Return what went into the step (``None`` when the kind has no input)."""
    data = node.data
    kind = node.kind
    if kind in ("agent", "chain"):
        return data.get("inputs")
    if kind == "tool_call":
        return data.get("parameters")
    if kind == "llm_call":
        if data.get("messages") is not None:
            return data["messages"]
        return data.get("prompt")
    if kind == "retrieval":
        return data.get("query")
    if kind == "input":
        return data.get("content")
    return None


def outputs_of(node: Node) -> Any:
    """Return what came out of the step (``None`` when the kind has no output)."""
    data = node.data
    kind = node.kind
    if kind in ("agent", "chain"):
        return data.get("outputs")
    if kind == "tool_call":
        return data.get("result")
    if kind == "llm_call":
        response = data.get("response")
        if data.get("tool_calls"):
            return {"content": response, "tool_calls": data["tool_calls"]}
        return response
    if kind == "retrieval":
        return data.get("documents")
    if kind == "output":
        return data.get("content")
    if kind == "reasoning":
        return {k: data[k] for k in ("thought", "plan", "confidence") if k in data}
    if kind == "custom":
        return data.get("payload")
    if kind == "error":
        return {k: data[k] for k in ("type", "message", "where", "recovery_action") if k in data}
    return None


def usage_of(data: dict[str, Any]) -> dict[str, int]:
    """Return token counts (input, output, total, cached, cache_write, reasoning) that are
    present, as 64-bit integers (other values are left out)."""
    raw = data.get("usage")
    if not isinstance(raw, dict):
        return {}
    out: dict[str, int] = {}
    for key in ("input", "output", "total", "cached", "cache_write", "reasoning"):
        value = raw.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 2**63:
            out[key] = int(value)
    if "total" not in out and ("input" in out or "output" in out):
        out["total"] = out.get("input", 0) + out.get("output", 0)
    return out


def cost_usd(data: dict[str, Any]) -> float | None:
    """Return the recorded cost, else the cost from the shared price table, else None."""
    recorded = data.get("cost")
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
        return float(recorded)
    usage = usage_of(data)
    if not usage:
        return None
    model = data.get("model")
    return usage_cost(model if isinstance(model, str) else None, usage)


def model_of(node: Node) -> str | None:
    """Return the model name of an ``llm_call`` (the event name as a fallback)."""
    model = node.data.get("model")
    if isinstance(model, str) and model:
        return model
    return node.name if node.kind == "llm_call" else None


def base_metadata(node: Node) -> dict[str, Any]:
    """Metadata every sink attaches: tracevault ids, kind, session, user, framework."""
    first = node.first
    meta: dict[str, Any] = dict(first.metadata)
    if node.end.metadata and node.end is not first:
        meta.update(node.end.metadata)
    meta.update({
        "tracevault_kind": node.kind,
        "tracevault_event_ids": list(node.event_ids),
        "tracevault_trace_id": node.end.trace_id,
        "framework": node.end.framework,
    })
    if node.end.span_id:
        meta["tracevault_span_id"] = node.end.span_id
    if first.session_id:
        meta["session_id"] = first.session_id
    if first.user_id:
        meta["user_id"] = first.user_id
    return meta
