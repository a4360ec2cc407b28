"""Plain-data views of LangChain payloads: messages, model results, documents, tool output.

Callback payloads are live objects that agents mutate after the callback returns, and
``LLMResult.model_dump()`` silently drops ``tool_calls`` and ``usage_metadata`` (it
serialises by declared type). These functions read the fields explicitly, so what is
recorded is what the model said, and the result is handed to ``tracevault.capture.emit``
which snapshots the rest into JSON-safe data on the caller's thread.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, Generation, LLMResult

# Metadata keys LangChain and LangGraph add on their own; the rest is the user's.
_INTERNAL_PREFIXES = ("langgraph_", "ls_", "lc_", "checkpoint_", "__")
_INTERNAL_KEYS = frozenset({"checkpoint_ns", "versions", "thread_ts"})
# One encoder for every plan: json.dumps(default=...) builds a new one per call.
_PLAN_ENCODER = json.JSONEncoder(default=str)


def user_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the metadata the caller passed in ``config["metadata"]`` (framework keys dropped)."""
    if not metadata:
        return {}
    return {
        k: v
        for k, v in metadata.items()
        if not k.startswith(_INTERNAL_PREFIXES) and k not in _INTERNAL_KEYS
    }


def message_view(message: Any) -> Any:
    """Return a message as ``{type, content, ...}`` keeping tool calls, ids and status."""
    if isinstance(message, BaseMessage):
        out: dict[str, Any] = {"type": message.type, "content": message.content}
        if message.name:
            out["name"] = message.name
        if message.id:
            out["id"] = message.id
        if isinstance(message, AIMessage):
            if message.tool_calls:
                out["tool_calls"] = [dict(c) for c in message.tool_calls]
            if message.invalid_tool_calls:
                out["invalid_tool_calls"] = [dict(c) for c in message.invalid_tool_calls]
            if message.usage_metadata:
                out["usage_metadata"] = dict(message.usage_metadata)
        elif isinstance(message, ToolMessage):
            out["tool_call_id"] = message.tool_call_id
            out["status"] = message.status
            if message.artifact is not None:
                out["artifact"] = message.artifact
        if message.additional_kwargs:
            out["additional_kwargs"] = message.additional_kwargs
        return out
    if isinstance(message, tuple) and len(message) == 2:  # ("user", "hi") shorthand
        return {"type": message[0], "content": message[1]}
    return message


def messages_view(batches: Sequence[Sequence[Any]]) -> list[Any]:
    """Return the prompt messages of a chat model start (one list per prompt in the batch)."""
    views = [[message_view(m) for m in batch] for batch in batches]
    return views[0] if len(views) == 1 else views


def usage_of(message: Any) -> dict[str, int] | None:
    """Return ``{input, output, total, cached, reasoning}`` from ``usage_metadata``."""
    usage = getattr(message, "usage_metadata", None)
    if not usage:
        return None
    inp = int(usage.get("input_tokens") or 0)
    out = int(usage.get("output_tokens") or 0)
    result = {"input": inp, "output": out, "total": int(usage.get("total_tokens") or inp + out)}
    cached = (usage.get("input_token_details") or {}).get("cache_read")
    if cached:
        result["cached"] = int(cached)
    reasoning = (usage.get("output_token_details") or {}).get("reasoning")
    if reasoning:
        result["reasoning"] = int(reasoning)
    return result


def _legacy_usage(llm_output: Mapping[str, Any] | None) -> dict[str, int] | None:
    # Providers that predate usage_metadata report OpenAI-style counts in llm_output.
    raw = (llm_output or {}).get("token_usage") or (llm_output or {}).get("usage")
    if not isinstance(raw, Mapping):
        return None
    inp = raw.get("prompt_tokens", raw.get("input_tokens"))
    out = raw.get("completion_tokens", raw.get("output_tokens"))
    if not isinstance(inp, int) and not isinstance(out, int):
        return None
    inp, out = int(inp or 0), int(out or 0)
    return {"input": inp, "output": out, "total": int(raw.get("total_tokens") or inp + out)}


def add_usage(total: dict[str, int] | None, more: dict[str, int] | None) -> dict[str, int] | None:
    """Return the field-wise sum of two usage dicts (``None`` when both are missing)."""
    if more is None:
        return total
    if total is None:
        return dict(more)
    return {k: total.get(k, 0) + more.get(k, 0) for k in {*total, *more}}


def generation_view(generation: Generation) -> dict[str, Any]:
    """Return one generation's response, tool calls and finish reason."""
    info = generation.generation_info or {}
    out: dict[str, Any] = {}
    if isinstance(generation, ChatGeneration):
        message = generation.message
        out["response"] = message.content
        meta = message.response_metadata or {}
        if isinstance(message, AIMessage):
            if message.tool_calls:
                out["tool_calls"] = [dict(c) for c in message.tool_calls]
            if message.invalid_tool_calls:
                out["invalid_tool_calls"] = [dict(c) for c in message.invalid_tool_calls]
        if message.id:
            out["message_id"] = message.id
        reason = info.get("finish_reason") or meta.get("finish_reason") or meta.get("stop_reason")
        model = meta.get("model_name") or meta.get("model")
        if model:
            out["model"] = model
    else:
        out["response"] = generation.text
        reason = info.get("finish_reason")
    if reason:
        out["finish_reason"] = reason
    return out


def result_view(response: LLMResult) -> tuple[dict[str, Any], dict[str, int] | None, Any]:
    """Return (data for the ``llm_call`` end, summed usage, the first response message)."""
    flat = [g for batch in response.generations for g in batch]
    usage: dict[str, int] | None = None
    for g in flat:
        usage = add_usage(usage, usage_of(getattr(g, "message", None)))
    if usage is None:
        usage = _legacy_usage(response.llm_output)
    data: dict[str, Any] = generation_view(flat[0]) if flat else {}
    if len(flat) > 1:
        data["generations"] = [generation_view(g) for g in flat]
    first = getattr(flat[0], "message", None) if flat else None
    return data, usage, first


def reasoning_of(message: Any) -> str | None:
    """Return the thought a model stated alongside its tool calls, if any.

    Explicit reasoning (``reasoning``/``thinking`` content blocks, ``reasoning_content``)
    counts always; plain assistant text counts when the message also calls tools.
    """
    if not isinstance(message, AIMessage):
        return None
    parts: list[str] = []
    text: list[str] = []
    content = message.content
    if isinstance(content, str):
        text.append(content)
    else:
        for block in content:
            if isinstance(block, str):
                text.append(block)
            elif isinstance(block, dict):
                kind = block.get("type")
                if kind in ("reasoning", "thinking"):
                    value = block.get("reasoning") or block.get("thinking") or block.get("text")
                    if isinstance(value, str):
                        parts.append(value)
                elif kind == "text" and isinstance(block.get("text"), str):
                    text.append(block["text"])
    extra = message.additional_kwargs.get("reasoning_content")
    if isinstance(extra, str):
        parts.append(extra)
    if message.tool_calls:
        parts.extend(t for t in text if t.strip())
    thought = "\n".join(p for p in parts if p.strip())
    return thought or None


def plan_of(message: AIMessage) -> list[str]:
    """Return the tool calls a message makes as ``name(args)`` strings."""
    encode = _PLAN_ENCODER.encode
    return [f"{c['name']}({encode(c.get('args'))})" for c in message.tool_calls]


def documents_view(documents: Sequence[Any]) -> list[dict[str, Any]]:
    """Return retrieved documents as ``{id, content, score, metadata}``."""
    out = []
    for doc in documents:
        if isinstance(doc, Document):
            item: dict[str, Any] = {"content": doc.page_content, "metadata": dict(doc.metadata)}
            if doc.id:
                item["id"] = doc.id
            score = doc.metadata.get("score", doc.metadata.get("relevance_score"))
            if isinstance(score, (int, float)):
                item["score"] = float(score)
            out.append(item)
        else:
            out.append({"content": doc})
    return out


def tool_arguments(input_str: str, inputs: Any) -> Any:
    """Return a tool's arguments: the structured ``inputs`` or the parsed input string."""
    if inputs is not None:
        return inputs
    try:
        return json.loads(input_str)
    except (TypeError, ValueError):
        return input_str


def tool_result(output: Any) -> tuple[Any, str, Any]:
    """Return (result, status, artifact) of a tool's output (a ``ToolMessage`` or raw)."""
    if isinstance(output, ToolMessage):
        return output.content, output.status, output.artifact
    update = getattr(output, "update", None)  # a LangGraph Command returned by the tool
    if update is not None and type(output).__name__ == "Command":
        return {"command": update}, "success", None
    return output, "success", None


def _last_message(messages: Sequence[Any], types: tuple[str, ...]) -> Any:
    for message in reversed(messages):
        view = message_view(message)
        if isinstance(view, dict) and view.get("type") in types:
            return view
        if isinstance(view, str) and "human" in types:
            return {"type": "human", "content": view}
    return None


def input_view(inputs: Any) -> tuple[str, Any]:
    """Return (type, content) of what came into a root run: the user's message if any."""
    if isinstance(inputs, str):
        return "user_message", inputs
    messages = inputs.get("messages") if isinstance(inputs, Mapping) else inputs
    if isinstance(messages, (list, tuple)) and messages:
        last = _last_message(messages, ("human", "user"))
        if last is not None:
            return "user_message", last["content"]
    resume = getattr(inputs, "resume", None)
    if resume is not None and type(inputs).__name__ == "Command":
        return "resume", resume
    if isinstance(inputs, BaseMessage):
        return "user_message", inputs.content
    if isinstance(inputs, Mapping) and len(inputs) == 1:
        return "chain_input", next(iter(inputs.values()))
    return "chain_input", inputs


def output_view(outputs: Any) -> Any:
    """Return the final answer of a root run: the last assistant message's content if any."""
    if isinstance(outputs, str):
        return outputs
    if isinstance(outputs, BaseMessage):
        return outputs.content
    if isinstance(outputs, Mapping):
        messages = outputs.get("messages")
        if isinstance(messages, (list, tuple)) and messages:
            last = _last_message(messages, ("ai", "assistant"))
            if last is not None:
                return last["content"]
        for key in ("output", "answer", "result"):
            if key in outputs:
                return outputs[key]
    if isinstance(outputs, LLMResult):
        data, _, _ = result_view(outputs)
        return data.get("response")
    return outputs
