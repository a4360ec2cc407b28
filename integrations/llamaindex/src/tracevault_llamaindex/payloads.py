"""Turn live LlamaIndex payloads into small plain-data records.

LlamaIndex hands handlers live objects (chat messages with content blocks, tools,
nodes, workflow events holding the whole run context). The generic
:func:`tracevault.snapshot.snapshot` would walk such objects attribute by attribute, so
these converters pick out what an audit record needs and return plain dicts, lists and
strings. Nothing here raises: a converter that cannot read an object returns a short
description of it instead.

What they return is a fresh copy that holds only JSON values (a NaN or infinity
becomes its name), so the handlers queue it as it is, with no second copy
(``capture.emit(owned=True)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tracevault.snapshot import (
    MAX_STRING,
    data_url_ref,
    json_float,
    model_fields,
    truncate_string,
)

_PRIMITIVES = (str, int, float, bool, type(None))
MAX_REPR = 2_000
MAX_DEPTH = 6
MAX_ITEMS = 200


def short_repr(value: Any, limit: int = MAX_REPR) -> str:
    """Return ``repr(value)`` cut to ``limit`` characters (never raises)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<unrepresentable {type(value).__name__}>"
    return truncate_string(text, limit)


def plain(value: Any, depth: int = 0) -> Any:
    """Return a plain-data view of ``value`` without walking arbitrary objects.

    Primitives, mappings and sequences are copied (bounded); chat messages, nodes,
    tool outputs and pydantic models of known shape are converted; anything else
    becomes a short ``repr``.
    """
    if isinstance(value, _PRIMITIVES):
        if isinstance(value, str):
            return _cut(value)
        return json_float(value) if isinstance(value, float) else value
    if depth >= MAX_DEPTH:
        return short_repr(value, 200)
    if type(value) is dict or isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if i >= MAX_ITEMS:
                out["…"] = f"[{len(value)} items in original]"
                break
            out[k if isinstance(k, str) else short_repr(k, 200)] = plain(v, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        if len(value) <= MAX_ITEMS:
            return [plain(v, depth + 1) for v in value]
        # The first and the last items: in a conversation the latest messages matter.
        head = MAX_ITEMS // 2
        return [*(plain(v, depth + 1) for v in value[:head]),
                f"…[{len(value)} items in original, {len(value) - MAX_ITEMS} left out here]",
                *(plain(v, depth + 1) for v in value[head - MAX_ITEMS:])]
    name = type(value).__name__
    if name == "ChatMessage":
        return message_dict(value)
    if name in ("NodeWithScore",):
        return document(value)
    if name == "ToolOutput":
        return tool_output_content(value)
    if name == "ToolSelection":
        return {
            "id": getattr(value, "tool_id", None),
            "name": getattr(value, "tool_name", None),
            "arguments": plain(getattr(value, "tool_kwargs", None), depth + 1),
        }
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return short_repr(value)


def _cut(text: Any) -> Any:
    # Strings over the core's limit are cut, and say so (as snapshot.freeze does).
    return truncate_string(text) if isinstance(text, str) and len(text) > MAX_STRING else text


def text_of(value: Any) -> Any:
    """Return the text of a message, response, query bundle or string (else ``plain``)."""
    return _cut(_text(value))


def whole_text(value: Any) -> Any:
    """:func:`text_of`, not cut: for finding what a long text holds further on."""
    return _text(value)


def _text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    name = type(value).__name__
    if name == "ChatMessage":
        return value.content
    if name in ("ChatResponse",):
        return value.message.content
    if name in ("CompletionResponse",):
        return value.text
    if name == "QueryBundle":
        return value.query_str
    if name in ("StreamingResponse", "AsyncStreamingResponse"):
        return None  # not produced yet: the streaming LLM call records the text
    if name in ("Response", "PydanticResponse"):
        return str(value.response) if value.response is not None else None
    if name == "AgentOutput":
        return value.response.content
    return plain(value)


def _field(obj: Any, name: str) -> Any:
    # A live LlamaIndex object, or its frozen copy (a dict, see raw_fields).
    return obj.get(name) if type(obj) is dict else getattr(obj, name, None)


_READ_BLOCKS = frozenset({"text", "tool_call", "thinking"})  # what message_dict reads


def _references(block: Any) -> dict[str, Any]:
    # Where an attachment (image, audio, document) lives, never its bytes: a data URL
    # (the bytes themselves) as its digest (tracevault.snapshot.media_ref).
    refs: dict[str, Any] = {}
    if type(block) is dict and "media" in block:  # a copy raw_fields made
        refs["media"] = block["media"]
    for attr in ("url", "path", "title"):
        ref = _field(block, attr)
        if ref:
            media = data_url_ref(ref) if attr == "url" else None
            if media is not None:
                refs["media"] = media
            else:
                refs[attr] = str(ref)
    return refs


def raw_fields(value: Any) -> Any:
    """How :func:`tracevault.snapshot.freeze_raw` copies LlamaIndex objects for the
    writer: models as their fields, attachments (images, audio, documents) as where
    they live, without their bytes (what :func:`message_dict` reads of them)."""
    fields = model_fields(value)
    if type(fields) is dict:
        kind = fields.get("block_type")
        if kind is not None and kind not in _READ_BLOCKS:
            return {"block_type": kind, **_references(value)}
    return fields


def message_dict(message: Any) -> dict[str, Any]:
    """Return ``{"role", "content", ...}`` for a LlamaIndex ``ChatMessage`` (or its
    copy made by :func:`raw_fields`)."""
    try:
        role = _field(message, "role")
        out: dict[str, Any] = {"role": getattr(role, "value", role)}
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        thinking: list[str] = []
        other: list[dict[str, Any]] = []
        for block in _field(message, "blocks"):
            kind = _field(block, "block_type")
            if kind == "text":
                texts.append(_field(block, "text"))
            elif kind == "tool_call":
                calls.append(tool_call_block(block))
            elif kind == "thinking":
                content = _field(block, "content")
                if content:
                    thinking.append(content)
            else:
                other.append({"type": kind or type(block).__name__, **_references(block)})
        out["content"] = _cut("\n".join(texts)) if texts else None
        if calls:
            out["tool_calls"] = calls
        if thinking:
            out["thinking"] = _cut("\n".join(thinking))
        if other:
            out["attachments"] = other
        extra = _field(message, "additional_kwargs")
        if extra:
            if "tool_call_id" in extra:
                out["tool_call_id"] = plain(extra["tool_call_id"])
            if "tool_calls" in extra and not calls:
                out["tool_calls"] = plain(extra["tool_calls"])
            if "name" in extra:
                out["name"] = plain(extra["name"])
        return out
    except Exception:
        return {"role": "unknown", "content": short_repr(message)}


def user_input(message: Any) -> dict[str, Any]:
    """Return the ``input`` data of a user's message as :func:`plain` copied it (a
    string, or a :func:`message_dict`): its text as ``content`` and, for a message with
    attachments, those as ``message_dict`` records them (where they live, no bytes)."""
    data: dict[str, Any] = {"type": "user_message"}
    if type(message) is dict and "role" in message:
        data["content"] = message.get("content")
        attachments = message.get("attachments")
        if attachments:
            data["attachments"] = attachments
    else:
        data["content"] = message
    return data


def last_user_message(history: Any) -> Any:
    """Return the last user message of a chat history as :func:`plain` copied it
    (``None`` if it has none)."""
    if isinstance(history, list):
        for message in reversed(history):
            if type(message) is dict and message.get("role") == "user":
                return message
    return None


def tool_call_block(block: Any) -> dict[str, Any]:
    """Return ``{"id", "name", "arguments"}`` for a ``ToolCallBlock`` (or its copy)."""
    return {
        "id": _field(block, "tool_call_id"),
        "name": _field(block, "tool_name"),
        "arguments": plain(_field(block, "tool_kwargs")),
    }


def _is_message(value: Any) -> bool:
    return type(value).__name__ == "ChatMessage" or (type(value) is dict and "blocks" in value)


def messages(value: Any) -> list[Any]:
    """Convert a sequence of chat messages (or their copies)."""
    if not isinstance(value, Sequence) or isinstance(value, str):
        return [plain(value)]
    return [message_dict(m) if _is_message(m) else plain(m) for m in value]


def response_parts(response: Any) -> tuple[Any, list[dict[str, Any]], str | None]:
    """Return ``(text, tool_calls, thinking)`` of a chat or completion response (or
    its copy)."""
    if response is None:
        return None, [], None
    message = _field(response, "message")
    if message is None:  # CompletionResponse
        return _field(response, "text"), [], None
    data = message_dict(message)
    calls = data.get("tool_calls") or []
    if not isinstance(calls, list):
        calls = [calls]
    return data.get("content"), calls, data.get("thinking")


def response_shape(response: Any) -> tuple[bool, bool, bool]:
    """Whether a live response has text, tool calls and thinking: what decides which
    events its end makes, read without converting it (the writer does that)."""
    message = getattr(response, "message", None)
    if message is None:  # CompletionResponse, or no response
        return bool(getattr(response, "text", None)), False, False
    text = calls = thinking = False
    try:
        for block in message.blocks:
            kind = getattr(block, "block_type", None)
            if kind == "text":
                text = text or bool(block.text)
            elif kind == "tool_call":
                calls = True
            elif kind == "thinking":
                thinking = thinking or bool(block.content)
        extra = message.additional_kwargs
        if not calls and extra:
            calls = bool(extra.get("tool_calls"))
    except Exception:
        return True, False, False  # unreadable: its end records what the writer reads
    return text, calls, thinking


def tool_spec(tool: Any) -> Any:
    """Return ``{"name", "description", "parameters"}`` for an offered tool."""
    metadata = getattr(tool, "metadata", None)
    if metadata is None:
        return plain(tool)
    try:
        parameters = metadata.get_parameters_dict()
    except Exception:
        parameters = None
    return {
        "name": getattr(metadata, "name", None),
        "description": truncate_string(str(getattr(metadata, "description", "") or ""), 4_000),
        "parameters": plain(parameters),
    }


def tool_output_content(output: Any) -> Any:
    """Return what a tool produced: its text content (what the model is shown)."""
    try:
        return _cut(output.content)
    except Exception:
        return short_repr(output)


def document(item: Any) -> dict[str, Any]:
    """Return ``{"id", "content", "score", "metadata"}`` for a node (with or without score)."""
    node = getattr(item, "node", item)
    out: dict[str, Any] = {}
    try:
        out["id"] = node.node_id
    except Exception:
        out["id"] = None
    try:
        out["content"] = truncate_string(node.get_content(), 16_000)
    except Exception:
        out["content"] = short_repr(node)
    score = getattr(item, "score", None)
    if score is not None:
        out["score"] = json_float(float(score))
    meta = getattr(node, "metadata", None)
    if meta:
        out["metadata"] = plain(meta)
    return out


def documents(nodes: Any) -> list[dict[str, Any]]:
    """Convert a list of nodes (``NodeWithScore``) into retrieval documents."""
    if not nodes:
        return []
    return [document(n) for n in list(nodes)[:MAX_ITEMS]]


def event_fields(event: Any, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Return the declared and dynamic fields of a workflow event as plain data, less
    the fields named in ``skip`` (not read at all)."""
    out: dict[str, Any] = {}
    try:
        # __pydantic_fields__, not model_fields: a deprecated class property in pydantic
        # 2.11+, four times slower to look up.
        for name in type(event).__pydantic_fields__:
            if name not in skip:
                out[name] = plain(getattr(event, name, None))
        data = getattr(event, "_data", None)
        if isinstance(data, Mapping):
            for key, value in data.items():
                name = str(key)
                if name not in skip:
                    out[name] = plain(value)
    except Exception:
        return {"event": short_repr(event)}
    return out
