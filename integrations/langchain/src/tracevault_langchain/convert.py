"""Plain-data views of LangChain payloads: messages, model results, documents, tool output.

Callback payloads are live objects that agents mutate after the callback returns, and
``LLMResult.model_dump()`` silently drops ``tool_calls`` and ``usage_metadata`` (it
serialises by declared type). These functions read the fields explicitly, so what is
recorded is what the model said. Most run on the caller's thread and hand their result
to ``tracevault.capture.emit``, which snapshots it; the model-call views also run on the
ledger writer, over the fields :func:`tracevault.snapshot.freeze_raw` copied (see
:mod:`tracevault_langchain.models`), which is why they read fields rather than
attributes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.messages import BaseMessage, ToolMessage
from langchain_core.outputs import LLMResult

from tracevault.snapshot import data_url_ref, media_ref

# Metadata keys LangChain and LangGraph add on their own; the rest is the user's.
_INTERNAL_PREFIXES = ("langgraph_", "ls_", "lc_", "checkpoint_", "__")
_INTERNAL_KEYS = frozenset({"checkpoint_ns", "versions", "thread_ts"})
# One encoder for every plan: json.dumps(default=...) builds a new one per call.
_PLAN_ENCODER = json.JSONEncoder(default=str)
# Message types by their ``type`` field (so copies of messages are read like messages).
_AI_TYPES = frozenset({"ai", "AIMessageChunk"})
TOOL_TYPES = frozenset({"tool", "ToolMessageChunk"})


def user_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the metadata the caller passed in ``config["metadata"]`` (framework keys dropped)."""
    if not metadata:
        return {}
    return {
        k: v
        for k, v in metadata.items()
        if not k.startswith(_INTERNAL_PREFIXES) and k not in _INTERNAL_KEYS
    }


def fields_of(value: Any) -> dict[str, Any]:
    """Return a LangChain object's fields: a live pydantic object's ``__dict__``, or the
    dict the ledger writer thawed from its :func:`~tracevault.snapshot.freeze_raw` copy.

    The views below read fields, not attributes, so the same code serves the live
    objects of a callback and their copies on the writer.
    """
    if value.__class__ is dict:
        return value
    return value.__dict__  # type: ignore[no-any-return]


def _message_fields(message: Any) -> dict[str, Any] | None:
    if isinstance(message, BaseMessage):
        return message.__dict__
    # A copied message: every BaseMessage has these fields.
    if message.__class__ is dict and "additional_kwargs" in message and "type" in message:
        return message
    return None


def message_view(message: Any) -> Any:
    """Return a message as ``{type, content, ...}`` keeping tool calls, ids and status."""
    m = _message_fields(message)
    if m is None:
        if isinstance(message, tuple) and len(message) == 2:  # ("user", "hi") shorthand
            return {"type": message[0], "content": message[1]}
        if isinstance(message, Mapping) and "role" in message and "content" in message:
            # An OpenAI-style message dict, which LangChain accepts as input.
            view = {"type": message["role"], "content": message["content"]}
            view.update((k, v) for k, v in message.items() if k not in ("role", "content"))
            return view
        return message
    kind = m["type"]
    out: dict[str, Any] = {"type": kind, "content": m["content"]}
    if m.get("name"):
        out["name"] = m["name"]
    if m.get("id"):
        out["id"] = m["id"]
    if kind in _AI_TYPES:
        _add_tool_calls(out, m)
        if m.get("usage_metadata"):
            out["usage_metadata"] = dict(m["usage_metadata"])
    elif kind in TOOL_TYPES:
        out["tool_call_id"] = m.get("tool_call_id")
        out["status"] = m.get("status")
        if m.get("artifact") is not None:
            out["artifact"] = m["artifact"]
    if m.get("additional_kwargs"):
        out["additional_kwargs"] = m["additional_kwargs"]
    return out


def _add_tool_calls(out: dict[str, Any], message: dict[str, Any]) -> None:
    # An AI message's tool calls, valid and invalid, copied call by call.
    if message.get("tool_calls"):
        out["tool_calls"] = [dict(c) for c in message["tool_calls"]]
    if message.get("invalid_tool_calls"):
        out["invalid_tool_calls"] = [dict(c) for c in message["invalid_tool_calls"]]


# Inline media is recorded as its digest (tracevault.snapshot.media_ref), never its
# bytes: every model call carries the whole conversation.
def _inline_media(block: dict[str, Any]) -> dict[str, Any] | None:
    """The reference that replaces ``block``'s inline bytes, if it has any: OpenAI's
    data URLs, input_audio and file data, LangChain's base64 blocks, Anthropic's base64
    sources."""
    kind = block.get("type")
    if kind == "image_url":
        url = block.get("image_url")
        return data_url_ref(url.get("url") if isinstance(url, dict) else url)
    if kind == "input_audio" and isinstance(block.get("input_audio"), dict):
        audio = block["input_audio"]
        return media_ref(audio["data"], audio.get("format")) if isinstance(
            audio.get("data"), str) else None
    if kind == "file" and isinstance(block.get("file"), dict):
        return data_url_ref(block["file"].get("file_data"))
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64" and isinstance(
            source.get("data"), str):  # Anthropic
        return media_ref(source["data"], source.get("media_type"))
    for key in ("base64", "data"):  # LangChain's standard blocks
        if isinstance(block.get(key), str) and kind in ("image", "audio", "file", "video"):
            return media_ref(block[key], block.get("mime_type"))
    return None


def without_media(content: Any) -> Any:
    """``content`` with each inline media block replaced by ``{"type", "media": ref}``
    (``content`` itself when it has none)."""
    if content.__class__ is not list:
        return content
    out = None
    for i, block in enumerate(content):
        ref = _inline_media(block) if isinstance(block, dict) else None
        if ref is not None:
            if out is None:
                out = list(content)
            out[i] = {"type": block.get("type"), "media": ref}
    return content if out is None else out


def prompt_without_media(batches: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
    """A chat model's prompt with inline media replaced (see :func:`without_media`):
    only messages that hold some are copied."""
    out: list[Sequence[Any]] | None = None
    for b, batch in enumerate(batches):
        for i, message in enumerate(batch):
            content = getattr(message, "content", None)
            if content.__class__ is not list:
                continue
            stripped = without_media(content)
            if stripped is content:
                continue
            if out is None:
                out = [list(x) for x in batches]
            out[b][i] = message.model_copy(update={"content": stripped})  # type: ignore[index]
    return batches if out is None else out


def messages_view(batches: Sequence[Sequence[Any]]) -> list[Any]:
    """Return the prompt messages of a chat model start (one list per prompt in the batch)."""
    views = [[message_view(m) for m in batch] for batch in batches]
    return views[0] if len(views) == 1 else views


def usage_of(message: dict[str, Any] | None) -> dict[str, int] | None:
    """Return ``{input, output, total, cached, cache_write, reasoning}`` from a message's
    ``usage_metadata`` (``message`` as :func:`fields_of` gives it)."""
    usage = message.get("usage_metadata") if message else None
    if not usage:
        return None
    inp = int(usage.get("input_tokens") or 0)
    out = int(usage.get("output_tokens") or 0)
    result = {"input": inp, "output": out, "total": int(usage.get("total_tokens") or inp + out)}
    details = usage.get("input_token_details") or {}
    if details.get("cache_read"):
        result["cached"] = int(details["cache_read"])
    if details.get("cache_creation"):
        result["cache_write"] = int(details["cache_creation"])
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
    cached = (raw.get("prompt_tokens_details") or {}).get("cached_tokens")
    anthropic_cache = [raw.get(k) for k in ("cache_read_input_tokens",
                                            "cache_creation_input_tokens")]
    if "prompt_tokens" not in raw and any(isinstance(c, int) for c in anthropic_cache):
        # Anthropic's input_tokens leave out what was read from or written to the cache.
        inp += sum(c for c in anthropic_cache if isinstance(c, int))
        cached = anthropic_cache[0]
    result = {"input": inp, "output": out, "total": int(raw.get("total_tokens") or inp + out)}
    if isinstance(cached, int) and cached:
        result["cached"] = cached
    if "prompt_tokens" not in raw and isinstance(anthropic_cache[1], int) and anthropic_cache[1]:
        result["cache_write"] = anthropic_cache[1]
    reasoning = (raw.get("completion_tokens_details") or {}).get("reasoning_tokens")
    if isinstance(reasoning, int) and reasoning:
        result["reasoning"] = reasoning
    return result


def add_usage(total: dict[str, int] | None, more: dict[str, int] | None) -> dict[str, int] | None:
    """Return the field-wise sum of two usage dicts (``None`` when both are missing)."""
    if more is None:
        return total
    if total is None:
        return dict(more)
    return {k: total.get(k, 0) + more.get(k, 0) for k in {*total, *more}}


def generation_view(generation: Any) -> dict[str, Any]:
    """Return one generation's response, tool calls and finish reason."""
    g = fields_of(generation)
    info = g.get("generation_info") or {}
    out: dict[str, Any] = {}
    message = g.get("message")
    if message is not None:  # a ChatGeneration
        m = fields_of(message)
        out["response"] = m["content"]
        meta = m.get("response_metadata") or {}
        if m.get("type") in _AI_TYPES:
            _add_tool_calls(out, m)
        if m.get("id"):
            out["message_id"] = m["id"]
        extra = m.get("additional_kwargs") or {}
        for key in ("refusal", "function_call"):  # said outside content and tool_calls
            if extra.get(key):
                out[key] = extra[key]
        reason = (info.get("finish_reason") or meta.get("finish_reason")
                  or meta.get("stop_reason")  # Anthropic
                  or meta.get("done_reason")  # Ollama
                  or meta.get("stopReason"))  # Bedrock Converse
        model = meta.get("model_name") or meta.get("model")
        if model:
            out["model"] = model
    else:
        out["response"] = g.get("text")
        reason = info.get("finish_reason")
    if reason:
        out["finish_reason"] = reason
    return out


def result_view(response: Any) -> tuple[dict[str, Any], dict[str, int] | None]:
    """Return (data for the ``llm_call`` end, summed usage) of an ``LLMResult`` (live,
    or its fields as copied)."""
    r = fields_of(response)
    flat = [g for batch in r["generations"] for g in batch]
    usage: dict[str, int] | None = None
    for batch in r["generations"]:  # one per prompt: their usages add up
        # The n choices of one prompt share one usage: OpenAI's clients put the whole
        # response's counts on every choice's message.
        for g in batch:
            message = fields_of(g).get("message")
            counts = usage_of(fields_of(message) if message is not None else None)
            if counts is not None:
                usage = add_usage(usage, counts)
                break
    if usage is None:
        usage = _legacy_usage(r.get("llm_output"))
    data: dict[str, Any] = generation_view(flat[0]) if flat else {}
    if len(flat) > 1:
        data["generations"] = [generation_view(g) for g in flat]
    return data, usage


def first_message(response: Any) -> Any:
    """Return the first generation's message of an ``LLMResult`` (live or copied), if any."""
    generations = fields_of(response)["generations"]
    if not generations or not generations[0]:
        return None
    return fields_of(generations[0][0]).get("message")


def reasoning_of(message: Any) -> str | None:
    """Return the thought a model stated alongside its tool calls, if any.

    Explicit reasoning (``reasoning``/``thinking`` content blocks, ``reasoning_content``)
    counts always; plain assistant text counts when the message also calls tools.
    """
    m = _message_fields(message)
    if m is None or m["type"] not in _AI_TYPES:
        return None
    parts: list[str] = []
    text: list[str] = []
    content = m["content"]
    if isinstance(content, str):
        text.append(content)
    else:
        for block in content:
            if isinstance(block, str):
                text.append(block)
            elif isinstance(block, dict):
                kind = block.get("type")
                if kind in _REASONING_BLOCKS:
                    parts.append(_reasoning_text(block))
                elif kind == "text" and isinstance(block.get("text"), str):
                    text.append(block["text"])
    extra = m.get("additional_kwargs") or {}
    for key in ("reasoning_content", "reasoning"):  # DeepSeek, vLLM; OpenAI's Responses API
        if extra.get(key):
            parts.append(_reasoning_text(extra[key]))
    if m.get("tool_calls"):
        parts.extend(t for t in text if t.strip())
    thought = "\n".join(p for p in parts if p.strip())
    return thought or None


# Content blocks holding a model's reasoning: Anthropic's thinking, LangChain's standard
# reasoning block and OpenAI's Responses API reasoning item, Bedrock Converse's.
_REASONING_BLOCKS = frozenset({"reasoning", "thinking", "reasoning_content"})


def _reasoning_text(value: Any) -> str:
    """The text of a reasoning block or item, whatever its provider's shape: a string,
    ``reasoning``/``thinking``/``text``, an OpenAI ``summary`` list, Bedrock's
    ``reasoning_content.text``, or a list of any of these."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "\n".join(t for t in (_reasoning_text(v) for v in value) if t)
    if not isinstance(value, dict):
        return ""
    for key in ("reasoning", "thinking", "text"):
        if isinstance(value.get(key), str):
            return str(value[key])
    for key in ("summary", "reasoning_content"):
        if value.get(key):
            return _reasoning_text(value[key])
    return ""


def content_text(content: Any) -> Any:
    """The text of a message's content: itself if a string; the text blocks of a list
    joined (reasoning and other blocks left out); the list as it is if it has none."""
    if not isinstance(content, (list, tuple)):
        return content
    texts: list[str] = []
    for block in content:
        text = block if isinstance(block, str) else (
            block.get("text") if isinstance(block, dict) and block.get("type") == "text"
            else None)
        if isinstance(text, str):
            texts.append(text)
    return "".join(texts) if texts else content


def plan_of(message: Any) -> list[str]:
    """Return the tool calls a message makes as ``name(args)`` strings."""
    encode = _PLAN_ENCODER.encode
    calls = fields_of(message).get("tool_calls") or ()
    return [f"{c['name']}({encode(c.get('args'))})" for c in calls]


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


def _last_message(messages: Sequence[Any], types: tuple[str, ...], *,
                  strings: bool = True) -> Any:
    # ``strings``: a bare string is a human message (as in LangGraph's "messages").
    for message in reversed(messages):
        view = message_view(message)
        if isinstance(view, dict) and view.get("type") in types:
            return view
        if isinstance(view, str) and strings and "human" in types:
            return {"type": "human", "content": view}
    return None


def input_view(inputs: Any) -> tuple[str, Any]:
    """Return (type, content) of what came into a root run: the user's message if any."""
    if isinstance(inputs, str):
        return "user_message", inputs
    messages = inputs.get("messages") if isinstance(inputs, Mapping) else inputs
    if isinstance(messages, str):  # {"messages": "hi"}: LangGraph reads it as one message
        return "user_message", messages
    if isinstance(messages, (list, tuple)) and messages:
        # A list of strings is messages in a "messages" key; given as the whole input
        # (a chain over several documents, a batch of prompts), it is data.
        last = _last_message(messages, ("human", "user"), strings=messages is not inputs)
        if last is not None:
            return "user_message", last["content"]
    if type(inputs).__name__ == "Command":  # LangGraph: resume an interrupt, update state
        resume = getattr(inputs, "resume", None)
        if resume is not None:
            return "resume", resume
        return "command", {k: getattr(inputs, k, None) for k in ("update", "goto")}
    if inputs is None:  # LangGraph: go on from a breakpoint (interrupt_before/after)
        return "resume", None
    if isinstance(inputs, BaseMessage):
        return "user_message", inputs.content
    if isinstance(inputs, Mapping) and len(inputs) == 1:
        return "chain_input", next(iter(inputs.values()))
    return "chain_input", inputs


def output_view(outputs: Any) -> Any:
    """Return the final answer of a root run: the content of the message it ended on (an
    assistant's, or a tool's that answers directly), else of the last assistant message."""
    if isinstance(outputs, str):
        return outputs
    if isinstance(outputs, BaseMessage):
        return content_text(outputs.content)
    if isinstance(outputs, Mapping):
        messages = outputs.get("messages")
        if isinstance(messages, (list, tuple)) and messages:
            # A tool with return_direct ends the run on its ToolMessage.
            last = _last_message(messages[-1:], ("ai", "assistant", "tool"))
            if last is None:
                last = _last_message(messages, ("ai", "assistant"))
            if last is not None:
                return content_text(last["content"])
        for key in ("output", "answer", "result"):
            if key in outputs:
                return outputs[key]
    if isinstance(outputs, LLMResult):
        data, _ = result_view(outputs)
        return content_text(data.get("response"))
    return outputs
