"""LLM calls: one ``llm_call`` start/end per actual call, streaming or not.

LlamaIndex reports a call as start / in-progress* / end events tagged with the LLM
method's span id. Some LLM classes nest instrumented methods (``achat`` calls ``chat``,
``CustomLLM.chat`` calls ``complete``, ``astream_chat`` lazily starts ``stream_chat``),
so one call arrives as several event streams: only the outermost is recorded and the
nested ones are mapped to it and ignored. Only calls of the same model object fold: a
model whose method calls another model object (a fallback, a router) records both, the
inner call under the outer one. ``StructuredLLM`` (``as_structured_llm``, an agent's
``output_cls``) is transparent instead (role ``WRAPPER``): its events record nothing,
and the call it makes is recorded with that model's name, usage and cost.

A streaming call's span closes before its chunks arrive, so the call lives here until
its end event, its exception (``GeneratorExit`` when the consumer abandons the stream)
or the garbage collection of a stream nobody read.
"""

from __future__ import annotations

import contextlib
import sys
import time
import weakref
from dataclasses import dataclass
from typing import Any

from tracevault.pricing import billed_model, usage_cost
from tracevault.schema import level_for
from tracevault.snapshot import Deferred, freeze_raw
from tracevault_llamaindex import payloads, usage
from tracevault_llamaindex.state import (
    WRAPPER,
    LLMCall,
    Recorder,
    Span,
    elapsed_ms,
    interruption,
)

_TEXT_BEFORE_TOOLS = "text before tool calls"  # the source of such reasoning
_tool_specs: dict[int, tuple[Any, Any]] = {}  # id(tool metadata) -> (metadata, spec)
_MAX_SPECS = 1_024


def _offered_tools(tools: Any) -> list[Any] | None:
    if not tools:
        return None
    out = []
    for tool in tools:
        if isinstance(tool, dict):
            out.append(payloads.plain(tool))
            continue
        meta = getattr(tool, "metadata", None)
        key = id(meta)
        cached = _tool_specs.get(key)
        if cached is not None and cached[0] is meta:
            out.append(cached[1])
            continue
        spec = payloads.tool_spec(tool)
        if len(_tool_specs) >= _MAX_SPECS:
            _tool_specs.clear()
        _tool_specs[key] = (meta, spec)
        out.append(spec)
    return out


def _is_nested(rec: Recorder, span: Span, inputs: Any) -> str | None:
    """Return the outer call of the same model object that ``span``'s call duplicates,
    if any."""
    owner = span.llm_owner
    if owner is not None:
        call = rec.llm.get(owner)
        if call is not None and call.instance_key == span.instance_key:
            return owner
    waiting = rec.lazy.get(span.instance_key)
    if waiting:
        for outer in waiting:
            call = rec.llm.get(outer)
            if (
                call is not None
                and call.first_token is None
                and _same(call.inputs_ref, inputs)
                and _inside_stream(call)
            ):
                return outer
    return None


def _inside_stream(call: LLMCall) -> bool:
    """Whether the code running now is the body of the stream ``call`` returned (a lazy
    stream makes its real call when first read); a call made elsewhere with the same
    prompt is a call of its own."""
    gen = call.stream() if call.stream is not None else None
    if gen is None:
        return call.stream is None  # no weak reference possible: trust the other checks
    target = getattr(gen, "gi_frame", None) or getattr(gen, "ag_frame", None)
    frame: Any = sys._getframe(1)
    for _ in range(128):
        if frame is None:
            return False
        if frame is target:
            return True
        frame = frame.f_back
    return False


def _same(a: Any, b: Any) -> bool:
    # Event fields are re-validated copies: compare the messages they hold, by identity.
    if isinstance(a, str) or isinstance(b, str):
        return bool(a == b)
    try:
        return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=False))
    except TypeError:
        return a is b


def start(rec: Recorder, event: Any, chat: bool) -> None:
    """Handle ``LLMChatStartEvent`` / ``LLMCompletionStartEvent``."""
    span_id = event.span_id
    span = rec.spans.get(span_id) if span_id else None
    if span is None or span.role == WRAPPER:
        return
    inputs = event.messages if chat else event.prompt
    outer = _is_nested(rec, span, inputs)
    if outer is not None:
        rec.dups[span_id] = outer
        span.llm_owner = outer
        return
    model_dict = event.model_dict
    call = LLMCall(
        span_id=span_id,
        trace_id=span.trace_id,
        parent_anchor=span.parent_anchor,
        session_id=span.session_id,
        user_id=span.user_id,
        started=time.perf_counter(),
        instance_key=span.instance_key,
        inputs_ref=inputs,
        model=usage.model_of(model_dict),
        provider=usage.provider_of(model_dict),
    )
    call.output_flag = span.output_flag
    call.code_act = span.run is not None and span.run.code_act
    span.llm_owner = span_id  # tracked even when not recorded: its nested calls fold into it
    rec.open_llm(call)
    extra = event.additional_kwargs
    tools = _offered_tools(extra.get("tools")) if isinstance(extra, dict) else None
    params = usage.parameters_of(model_dict, extra)
    # The messages are copied whole; the writer reads them (_start_data).
    raw = freeze_raw(inputs, payloads.raw_fields) if chat else inputs
    if rec.emit(
        "llm_call",
        call,
        phase="start",
        name=call.model or call.provider,
        data=Deferred(_start_data, raw, (call.model, call.provider, chat, tools, params)),
        span_id=span_id,
        parent=call.parent_anchor,
    ):
        call.recorded = span.recorded = True
        span.anchor = span_id


def progress(rec: Recorder, event: Any) -> None:
    """Handle an in-progress (streamed chunk) event: time to first token, thinking."""
    call = rec.llm.get(event.span_id)
    if call is None:
        return
    response = event.response
    if call.first_token is None:
        call.first_token = time.perf_counter()
        waiting = rec.lazy.get(call.instance_key)
        if waiting and call.span_id in waiting:
            waiting.remove(call.span_id)
            if not waiting:  # one list per model object that streams: do not keep it
                rec.lazy.pop(call.instance_key, None)
    call.last = response
    if call.finish_reason is None and getattr(response, "raw", None) is not None:
        # Some streams say why they stopped in a chunk before the last (OpenAI's last
        # chunk holds only the usage; Anthropic's message_delta).
        call.finish_reason = usage.finish_reason_of(response)
    extra = response.additional_kwargs
    if extra:
        delta = extra.get("thinking_delta")
        if delta:
            call.thinking.append(str(delta))


def streaming(rec: Recorder, span: Span, result: Any) -> None:
    """The LLM method returned a stream: keep the call open until the stream ends."""
    call = rec.llm.get(span.id)
    if call is None:
        return
    call.streaming = True
    rec.lazy.setdefault(call.instance_key, []).append(call.span_id)
    with contextlib.suppress(TypeError):  # objects without weak references
        weakref.finalize(result, _unread, rec, call.span_id)
        call.stream = weakref.ref(result)


def _unread(rec: Recorder, span_id: str) -> None:
    # A stream garbage-collected before it was read to the end. CPython runs this before
    # it closes a started generator, so a stream read in part ends here too, before its
    # GeneratorExit event arrives: what was read is its response.
    try:
        call = rec.llm.get(span_id)
        if call is None:
            return
        if call.first_token is None:
            finish(rec, call, None, status="abandoned", reason="stream never read")
        else:
            finish(rec, call, call.last, status="abandoned",
                   reason="the consumer stopped reading")
    except Exception as exc:
        rec.failed("llm stream finalizer", exc)


def end(rec: Recorder, event: Any) -> None:
    """Handle ``LLMChatEndEvent`` / ``LLMCompletionEndEvent``."""
    span_id = event.span_id
    if rec.dups.pop(span_id, None) is not None:
        return
    call = rec.llm.get(span_id)
    if call is not None:
        finish(rec, call, event.response)


def exception(rec: Recorder, span_id: str | None, exc: BaseException) -> bool:
    """Handle an exception of a (streaming) LLM call; return whether it was one."""
    if span_id is None:
        return False
    if rec.dups.pop(span_id, None) is not None:
        return True
    call = rec.llm.get(span_id)
    if call is None:
        return False
    if isinstance(exc, GeneratorExit):
        finish(rec, call, call.last, status="abandoned", reason="the consumer stopped reading")
    elif interruption(exc) == "cancelled":  # the task reading the stream was cancelled
        finish(rec, call, call.last, status="cancelled", reason=f"{type(exc).__name__}")
    else:
        finish(rec, call, call.last, status="error", exc=exc)
    return True


def finish(
    rec: Recorder,
    call: LLMCall,
    response: Any,
    *,
    status: str = "success",
    reason: str | None = None,
    exc: BaseException | None = None,
) -> None:
    """Emit the call's end (and its reasoning, error and streamed output) and forget it."""
    if rec.llm.pop(call.span_id, None) is None:
        return
    if rec.dups:  # its nested duplicates, which a stream never read does not end
        for inner, outer in list(rec.dups.items()):
            if outer == call.span_id:
                rec.dups.pop(inner, None)
    waiting = rec.lazy.get(call.instance_key)
    if waiting:
        # Another thread may finish a call of the same instance at the same moment: a
        # lost race here must not cost this call its end event.
        with contextlib.suppress(ValueError):
            waiting.remove(call.span_id)
        if not waiting:
            rec.lazy.pop(call.instance_key, None)
    context = _Ending(status, elapsed_ms(call.started), call.model, call.streaming, reason,
                      call.finish_reason)
    if call.streaming and call.first_token is not None:
        context.first_token_ms = round((call.first_token - call.started) * 1000, 3)
    # The response is copied whole; the writer reads it (_end_data and the others below).
    raw = freeze_raw(response, payloads.raw_fields) if response is not None else None
    if call.recorded:  # a call whose start was filtered out records no end
        rec.emit("llm_call", call, phase="end", level=level_for(status),
                 name=call.model or call.provider, data=Deferred(_end_data, raw, context),
                 span_id=call.span_id, parent=call.parent_anchor)
    text, calls, thinking = payloads.response_shape(response)
    streamed_thought = "".join(call.thinking)
    if streamed_thought or thinking:
        rec.emit("reasoning", call, name="thinking",
                 data=Deferred(_thinking_data, raw, streamed_thought),
                 parent=call.parent_anchor)
    if text and calls:
        rec.emit("reasoning", call, name="thought", data=Deferred(_thought_data, raw),
                 parent=call.parent_anchor)
    elif text and call.code_act:
        # Read whole: the code may come after the length a captured string is cut to.
        thought = _before_code(payloads.whole_text(response))
        if thought:
            rec.emit("reasoning", call, name="thought",
                     data={"thought": payloads.text_of(thought), "source": _TEXT_BEFORE_TOOLS},
                     parent=call.parent_anchor)
    if exc is not None:
        owner = rec.spans.get(call.span_id) or rec.closed(call.span_id)
        if owner is not None:
            entry = rec.new_error(owner, exc, owner.name,
                                  call.span_id if call.recorded else None)
            if entry is not None:
                rec.hand_up(owner, [entry])
    flag = call.output_flag
    # Only a streaming call streams the answer (a chat turn's condensing call does not).
    if flag is not None and flag[0] and status == "success" and call.streaming:
        rec.emit("output", call, name="final_answer", data=Deferred(_answer_data, raw, context),
                 parent=flag[1] or call.parent_anchor)


# --- made by the ledger writer, from the copies above (tracevault.snapshot.Deferred) ----


@dataclass(slots=True)
class _Ending:
    """What the caller knows of a call's end: its reading is left to the writer."""

    status: str
    duration_ms: float
    model: str | None  # as the LLM was configured
    streaming: bool
    reason: str | None
    finish_reason: str | None  # seen in a streamed chunk before the last
    first_token_ms: float | None = None


def _start_data(raw: Any, context: tuple[Any, ...]) -> dict[str, Any]:
    model, provider, chat, tools, params = context
    data: dict[str, Any] = {}
    if model:
        data["model"] = model
    if provider:
        data["provider"] = provider
    if chat:
        data["messages"] = payloads.messages(raw)
    else:
        data["prompt"] = raw
    if tools:
        data["tools"] = tools
    if params:
        data["parameters"] = params
    return data


def _end_data(response: Any, end: _Ending) -> dict[str, Any]:
    text, tool_calls, _ = payloads.response_parts(response)
    data: dict[str, Any] = {"status": end.status, "duration_ms": end.duration_ms}
    # The provider's own name for the model, when it is more precise or priced.
    model = billed_model(end.model, usage.model_of(None, response))
    if model:
        data["model"] = model
    if response is not None:
        data["response"] = text
    if tool_calls:
        data["tool_calls"] = tool_calls
    if end.streaming:
        data["streamed"] = True
        if end.first_token_ms is not None:
            data["time_to_first_token_ms"] = end.first_token_ms
    if end.reason:
        data["reason"] = end.reason
    counts = usage.token_usage(response) if response is not None else {}
    if counts:
        data["usage"] = counts
        cost = usage_cost(model, counts)
        if cost is not None:
            data["cost"] = cost
    finish_reason = usage.finish_reason_of(response) or end.finish_reason
    if finish_reason:
        data["finish_reason"] = finish_reason
    return data


def _thinking_data(response: Any, streamed: str) -> dict[str, Any]:
    return {"thought": streamed or payloads.response_parts(response)[2], "source": "thinking"}


def _thought_data(response: Any, _: None) -> dict[str, Any]:
    return {"thought": payloads.response_parts(response)[0], "source": _TEXT_BEFORE_TOOLS}


def _before_code(text: Any) -> str | None:
    """The text a CodeAct model wrote before the code it asks to run (``<execute>``, as
    ``CodeActAgent`` parses it); ``None`` for a reply with no code (its answer)."""
    if not isinstance(text, str) or "<execute>" not in text or "</execute>" not in text:
        return None
    return text.partition("<execute>")[0].strip() or None


def _answer_data(response: Any, end: _Ending) -> dict[str, Any]:
    return {"type": "final_answer", "content": payloads.response_parts(response)[0],
            "model": billed_model(end.model, usage.model_of(None, response))}
