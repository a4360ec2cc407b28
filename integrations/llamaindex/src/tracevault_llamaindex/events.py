"""The event handler: LLM calls, queries, retrieval, synthesis, embeddings, reranks.

Each LlamaIndex event carries the id of the span it was fired in. A start/end pair
(query, retrieval, synthesis, embedding, rerank) turns that span into a recorded step,
so whatever runs inside it (the retriever inside a query, the LLM inside synthesis)
hangs under it in the tree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llama_index.core.instrumentation.event_handlers import BaseEventHandler

from tracevault_llamaindex import llm, payloads
from tracevault_llamaindex.state import (
    STEP,
    Recorder,
    Span,
    elapsed_ms,
    interruption,
    is_root,
)

Handler = Callable[[Recorder, Any], None]


def _span(rec: Recorder, event: Any) -> Span | None:
    span_id = event.span_id
    return rec.spans.get(span_id) if span_id else None


def _step_start(rec: Recorder, event: Any, kind: str, name: str, data: dict[str, Any],
                level: str = "debug", owned: bool = True) -> Span | None:
    """Start an event-derived step in the event's span; return the span (``None`` if
    unknown or already in a step). A step filtered out by level stays unrecorded: no
    ``step``, and its children keep the span's inherited anchor."""
    span = _span(rec, event)
    if span is None or span.step is not None:
        return None
    if rec.emit(kind, span, phase="start", level=level, name=name, data=data,
                span_id=span.id, parent=span.parent_anchor, owned=owned):
        span.step = (kind, name)
        span.anchor = span.id
        span.recorded = True
    return span


def _step_end(rec: Recorder, event: Any, kind: str,
              data_of: Callable[[Any], dict[str, Any]], level: str = "debug") -> Span | None:
    """End the recorded step of ``kind`` in the event's span, with ``data_of(event)``
    (read only for a recorded step); return the event's span, recorded or not."""
    span = _span(rec, event)
    if span is None:
        return None
    step = span.step
    if step is None or step[0] != kind:
        return span
    span.step = None
    span.recorded = False  # its end is recorded now: nothing left to end on exit or drop
    data = data_of(event)
    data["status"] = "success"
    data["duration_ms"] = elapsed_ms(span.started)
    rec.emit(kind, span, phase="end", level=level, name=step[1], data=data,
             span_id=span.id, parent=span.parent_anchor)
    return span


def _query_start(rec: Recorder, event: Any) -> None:
    query = payloads.text_of(event.query)
    span = _step_start(rec, event, "chain", "query", {"inputs": {"query": query}})
    if span is not None and is_root(span):
        rec.emit("input", span, name="query", data={"type": "query", "content": query},
                 parent=span.anchor)


def _query_end(rec: Recorder, event: Any) -> None:
    response = event.response
    text = payloads.text_of(response)
    span = _step_end(rec, event, "chain", lambda _: {"outputs": {"response": text}})
    if span is None or not is_root(span):
        return
    gen = getattr(response, "response_gen", None) or getattr(
        response, "async_response_gen", None)
    if gen is not None:  # the answer is streamed later: the LLM call's end records it
        rec.stream_answer(span, gen)
        return
    rec.emit("output", span, name="final_answer",
             data={"type": "final_answer", "content": text}, parent=span.anchor)


def _retrieval_start(rec: Recorder, event: Any) -> None:
    query = payloads.text_of(event.str_or_query_bundle)
    _step_start(rec, event, "retrieval", "retrieve", {"query": query}, level="info")


def _retrieval_data(event: Any) -> dict[str, Any]:
    return {"query": payloads.text_of(event.str_or_query_bundle),
            "documents": payloads.documents(event.nodes)}


def _retrieval_end(rec: Recorder, event: Any) -> None:
    _step_end(rec, event, "retrieval", _retrieval_data, level="info")


def _synthesize_start(rec: Recorder, event: Any) -> None:
    _step_start(rec, event, "chain", "synthesize",
                {"inputs": {"query": payloads.text_of(event.query)}})


def _synthesize_data(event: Any) -> dict[str, Any]:
    return {"outputs": {"response": payloads.text_of(event.response)}}


def _synthesize_end(rec: Recorder, event: Any) -> None:
    _step_end(rec, event, "chain", _synthesize_data)


def _embedding_start(rec: Recorder, event: Any) -> None:
    model = event.model_dict
    name = model.get("model_name") if isinstance(model, dict) else None
    _step_start(rec, event, "chain", "embedding", {"inputs": {
        "model": name, "provider": model.get("class_name") if isinstance(model, dict) else None,
    }}, owned=False)  # values read from the model's dict as they are


def _embedding_data(event: Any) -> dict[str, Any]:
    vectors = event.embeddings
    first = vectors[0] if vectors else None
    return {"outputs": {"chunks": len(event.chunks),
                        "dimensions": len(first) if first is not None else None}}


def _embedding_end(rec: Recorder, event: Any) -> None:
    _step_end(rec, event, "chain", _embedding_data)


def _rerank_start(rec: Recorder, event: Any) -> None:
    _step_start(rec, event, "retrieval", "rerank", {
        "query": payloads.text_of(event.query),
        "model": event.model_name,
        "top_n": event.top_n,
        "candidates": len(event.nodes),
    }, level="info")


def _rerank_data(event: Any) -> dict[str, Any]:
    return {"documents": payloads.documents(event.nodes)}


def _rerank_end(rec: Recorder, event: Any) -> None:
    _step_end(rec, event, "retrieval", _rerank_data, level="info")


def _exception(rec: Recorder, event: Any) -> None:
    exc = event.exception
    if llm.exception(rec, event.span_id, exc):
        return
    if isinstance(exc, GeneratorExit) or interruption(exc) is not None:
        return  # a consumer that stopped reading, a cancellation, a wait: no failure
    _record_error(rec, event, exc)


def _span_cancelled(rec: Recorder, event: Any) -> None:
    # Sent from inside a workflow step whose task was cancelled, just before its span
    # ends as if the step had returned.
    span = rec.spans.get(event.span_id) if event.span_id else None
    if span is not None and span.role == STEP:
        span.stopped = "cancelled"


def _stream_chat_error(rec: Recorder, event: Any) -> None:
    _record_error(rec, event, event.exception)


def _record_error(rec: Recorder, event: Any, exc: BaseException) -> None:
    span_id = event.span_id
    span = rec.spans.get(span_id) if span_id else None
    if span is None and span_id:
        span = rec.closed(span_id)
    if span is None:
        return
    entry = rec.new_error(span, exc, span.name, span.id if span.recorded else None)
    if entry is not None:
        rec.emit_error(entry)


_HANDLERS: dict[str, Handler] = {
    "LLMChatStartEvent": lambda rec, ev: llm.start(rec, ev, True),
    "LLMCompletionStartEvent": lambda rec, ev: llm.start(rec, ev, False),
    "LLMChatInProgressEvent": llm.progress,
    "LLMCompletionInProgressEvent": llm.progress,
    "LLMChatEndEvent": llm.end,
    "LLMCompletionEndEvent": llm.end,
    "ExceptionEvent": _exception,
    "StreamChatErrorEvent": _stream_chat_error,
    "QueryStartEvent": _query_start,
    "QueryEndEvent": _query_end,
    "RetrievalStartEvent": _retrieval_start,
    "RetrievalEndEvent": _retrieval_end,
    "SynthesizeStartEvent": _synthesize_start,
    "SynthesizeEndEvent": _synthesize_end,
    "EmbeddingStartEvent": _embedding_start,
    "EmbeddingEndEvent": _embedding_end,
    "SparseEmbeddingStartEvent": _embedding_start,
    "SparseEmbeddingEndEvent": _embedding_end,
    "ReRankStartEvent": _rerank_start,
    "ReRankEndEvent": _rerank_end,
    "SpanCancelledEvent": _span_cancelled,
}
_by_type: dict[type, Handler | None] = {}


def _handler_for(cls: type) -> Handler | None:
    # Subclasses of the known events (user or integration events) are handled like
    # their base; resolved once per class.
    for base in cls.__mro__:
        found = _HANDLERS.get(base.__name__)
        if found is not None:
            return found
    return None


class TracevaultEventHandler(BaseEventHandler):
    """Records LLM calls and retrieval steps from LlamaIndex events (never raises)."""

    _rec: Recorder  # a plain instance attribute: pydantic's private-attribute lookup is slow

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        object.__setattr__(self, "_rec", recorder)

    @classmethod
    def class_name(cls) -> str:
        return "TracevaultEventHandler"

    def handle(self, event: Any, **kwargs: Any) -> None:
        try:
            cls = type(event)
            try:
                handler = _by_type[cls]
            except KeyError:
                handler = _by_type[cls] = _handler_for(cls)
            if handler is not None:
                handler(self._rec, event)
        except Exception as exc:
            self._rec.failed(f"handle({type(event).__name__})", exc)
