"""A legacy ``CallbackManager`` handler for code paths that still report through it.

    from llama_index.core.callbacks import CallbackManager
    llm.callback_manager = CallbackManager([TracevaultCallbackHandler(session_id="s1")])

Use it *instead of* :func:`tracevault_llamaindex.instrument` for a component, not with
it: LlamaIndex 0.14 reports LLM calls to both systems, so both would record them.
Unlike instrumentation handlers, a ``CallbackManager`` lets handler exceptions break the
LLM call, so every hook here catches everything and only counts failures.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, NamedTuple

from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.callbacks.schema import CBEventType, EventPayload

from tracevault import capture
from tracevault.context import current_scope, current_span
from tracevault.snapshot import describe_exception, first_report
from tracevault_llamaindex import payloads, usage
from tracevault_llamaindex.state import FRAMEWORK

log = logging.getLogger("tracevault.llamaindex")

# event type -> (kind, name, level) of the recorded start/end pair
_STEPS: dict[CBEventType, tuple[str, str, str]] = {
    CBEventType.LLM: ("llm_call", "llm", "info"),
    CBEventType.FUNCTION_CALL: ("tool_call", "tool", "info"),
    CBEventType.RETRIEVE: ("retrieval", "retrieve", "info"),
    CBEventType.RERANKING: ("retrieval", "rerank", "info"),
    CBEventType.QUERY: ("chain", "query", "debug"),
    CBEventType.SYNTHESIZE: ("chain", "synthesize", "debug"),
    CBEventType.EMBEDDING: ("chain", "embedding", "debug"),
    CBEventType.SUB_QUESTION: ("chain", "sub_question", "debug"),
    CBEventType.AGENT_STEP: ("agent", "agent_step", "info"),
}
_MAX_OPEN = 10_000


class _Open(NamedTuple):
    """An event started and not yet ended."""

    trace_id: str
    parent_span: str | None  # what its start hangs under
    started: float
    kind: str
    name: str
    level: str
    session: Any
    user: Any
    model: str | None
    recorded: bool  # its start passed the level filter
    anchor: str | None  # what events inside it hang under: itself if recorded
    owner: tuple[int, int]  # the thread and asyncio task it runs in (see _owner)


def _owner() -> tuple[int, int]:
    """The thread and the asyncio task (0 outside one) of the caller: a call nested in
    another (chat() calling complete()) runs in the same one; calls of concurrent
    requests, which LlamaIndex all reports under the parent "root", do not."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop in this thread
        task = None
    return threading.get_ident(), 0 if task is None else id(task)


class TracevaultCallbackHandler(BaseCallbackHandler):
    """Records LLM, tool, retrieval, query and agent-step callbacks (never raises)."""

    def __init__(self, session_id: str | None = None, user_id: str | None = None) -> None:
        super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])
        self.session_id = session_id
        self.user_id = user_id
        self.errors = 0
        self._open: dict[str, _Open] = {}  # by event id
        # open LLM calls' (parent id, messages, serialized model, owner), by event id
        self._llm_inputs: dict[str, tuple[Any, Any, Any, tuple[int, int]]] = {}
        self._lock = threading.Lock()
        self._reporter = f"legacy-handler-{id(self)}"  # marks exceptions it recorded

    def _failed(self, where: str, exc: BaseException) -> None:
        with self._lock:  # callbacks come from any thread: no count lost to a race
            self.errors += 1
            count = self.errors
        if count <= 10:
            log.error("tracevault: callback handler failed in %s: %r", where, exc, exc_info=True)

    def start_trace(self, trace_id: str | None = None) -> None:
        """Nothing to do: traces are derived from the events' parent links."""

    def end_trace(
        self, trace_id: str | None = None, trace_map: dict[str, list[str]] | None = None
    ) -> None:
        """Nothing to do: every event was recorded when it happened."""

    def on_event_start(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        parent_id: str = "",
        **kwargs: Any,
    ) -> str:
        try:
            self._start(event_type, payload or {}, event_id, parent_id)
        except Exception as exc:
            self._failed("on_event_start", exc)
        return event_id

    def on_event_end(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        **kwargs: Any,
    ) -> None:
        try:
            self._end(event_type, payload or {}, event_id)
        except Exception as exc:
            self._failed("on_event_end", exc)

    # --- mapping ---------------------------------------------------------------------------

    def _start(self, event_type: CBEventType, payload: dict[str, Any], event_id: str,
               parent_id: str) -> None:
        parent = self._open.get(parent_id) if parent_id and parent_id != "root" else None
        parent_span: str | None
        owner = _owner()
        if parent is not None:
            trace_id, parent_span, session, user = (parent.trace_id, parent.anchor,
                                                    parent.session, parent.user)
        else:
            ref = current_span()
            trace_id = ref.trace_id if ref else event_id
            parent_span = ref.span_id if ref else None
            scope = current_scope()
            session = scope.session_id or self.session_id
            user = scope.user_id or self.user_id
        if event_type == CBEventType.EXCEPTION:
            if parent is None:
                # The trace around a failing call reports its exception while the call
                # is still open (chat), or just after its end (completion): it is that
                # call's failure, recorded under it once: the innermost event open in
                # this thread and task, not another request's.
                entry = next((e for e in reversed(list(self._open.values()))
                              if e.owner == owner), None)
                if entry is not None:
                    trace_id, parent_span, session, user = (entry.trace_id, entry.anchor,
                                                            entry.session, entry.user)
            self._error(payload, trace_id, parent_span, session, user)
            return
        step = _STEPS.get(event_type)
        if step is None:
            return
        if step[0] == "llm_call" and self._nested(payload, parent_id, owner):
            return
        kind, name, level = step
        data: dict[str, Any]
        model = None
        if kind == "llm_call":
            serialized = payload.get(EventPayload.SERIALIZED)
            model = usage.model_of(serialized)
            data = {"model": model, "provider": usage.provider_of(serialized)}
            if EventPayload.MESSAGES in payload:
                data["messages"] = payloads.messages(payload[EventPayload.MESSAGES])
            if EventPayload.PROMPT in payload:
                data["prompt"] = payloads.plain(payload[EventPayload.PROMPT])
            name = model or data.get("provider") or name
        elif kind == "tool_call":
            tool = payload.get(EventPayload.TOOL)
            name = str(getattr(tool, "name", None) or name)
            data = {"tool_name": name, "status": "pending",
                    "parameters": payloads.plain(payload.get(EventPayload.FUNCTION_CALL))}
        elif kind == "retrieval":
            data = {"query": payloads.plain(payload.get(EventPayload.QUERY_STR))}
        else:
            data = {"inputs": {k.value if hasattr(k, "value") else str(k): payloads.plain(v)
                               for k, v in payload.items()
                               if k not in (EventPayload.SERIALIZED, EventPayload.EMBEDDINGS)}}
        if len(self._open) >= _MAX_OPEN:
            with self._lock:
                oldest = next(iter(self._open))
                self._open.pop(oldest, None)
                self._llm_inputs.pop(oldest, None)
        if kind == "llm_call":
            self._llm_inputs[event_id] = (parent_id, payload.get(EventPayload.MESSAGES),
                                          payload.get(EventPayload.SERIALIZED), owner)
        started = time.perf_counter()
        recorded = self._emit(kind, "start", level, name, data, trace_id, event_id,
                              parent_span, session, user)
        # A step below the level is not recorded: what happens inside it hangs under
        # its nearest recorded ancestor.
        self._open[event_id] = _Open(trace_id, parent_span, started, kind, name, level,
                                     session, user, model, recorded,
                                     event_id if recorded else parent_span, owner)

    def _nested(self, payload: dict[str, Any], parent_id: str, owner: tuple[int, int]) -> bool:
        # achat() reports its inner chat() (same message list) and CustomLLM.chat() its
        # inner complete() (same model, a prompt instead of messages): one record per call,
        # looked for among the calls open in the same thread and task.
        messages = payload.get(EventPayload.MESSAGES)
        serialized = payload.get(EventPayload.SERIALIZED)
        for other in list(self._llm_inputs.values()):
            if other[0] != parent_id or other[3] != owner:
                continue
            if messages is not None and other[1] is messages:
                return True
            if messages is None and other[1] is not None and other[2] == serialized:
                return True
        return False

    def _end(self, event_type: CBEventType, payload: dict[str, Any], event_id: str) -> None:
        self._llm_inputs.pop(event_id, None)
        entry = self._open.pop(event_id, None)
        if entry is None:
            return
        trace_id, parent_span, started, kind, name, level, session, user, model = entry[:9]
        exc = payload.get(EventPayload.EXCEPTION)
        if not entry.recorded:  # below the level: only a failure, under its anchor
            if exc is not None:
                self._error(payload, trace_id, entry.anchor, session, user)
            return
        data: dict[str, Any] = {
            "status": "error" if exc is not None else "success",
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if kind == "llm_call":
            response = payload.get(EventPayload.RESPONSE) or payload.get(EventPayload.COMPLETION)
            text, calls, _ = payloads.response_parts(response)
            data["response"] = text
            if calls:
                data["tool_calls"] = calls
            counts = usage.token_usage(response)
            if counts:
                data["usage"] = counts
                from tracevault.pricing import usage_cost

                cost = usage_cost(model, counts)
                if cost is not None:
                    data["cost"] = cost
        elif kind == "tool_call":
            output = payload.get(EventPayload.FUNCTION_OUTPUT)
            data["tool_name"] = name
            data["result"] = payloads.plain(output)
            data["is_error"] = exc is not None or bool(getattr(output, "is_error", False))
            if data["is_error"]:
                data["status"] = "error"
        elif kind == "retrieval":
            data["documents"] = payloads.documents(payload.get(EventPayload.NODES))
        else:
            outputs = {k.value if hasattr(k, "value") else str(k): payloads.plain(v)
                       for k, v in payload.items()
                       if k not in (EventPayload.EMBEDDINGS, EventPayload.EXCEPTION)}
            data["outputs"] = outputs
        if exc is not None:
            self._error(payload, trace_id, event_id, session, user)
        self._emit(kind, "end", "error" if exc is not None else level, name, data, trace_id,
                   event_id, parent_span, session, user)

    def _error(self, payload: dict[str, Any], trace_id: str, parent: str | None,
               session: Any, user: Any) -> None:
        exc = payload.get(EventPayload.EXCEPTION)
        if isinstance(exc, BaseException):
            # LlamaIndex reports one failure twice: the failed LLM event's end, and an
            # EXCEPTION event from the trace around it, which may be a trace of its own.
            if first_report(exc, self._reporter) is False:
                return
            data = describe_exception(exc)
        else:
            data = {"type": "Error", "message": str(exc)}
        self._emit("error", "point", "error", data.get("type"), data, trace_id, None, parent,
                   session, user)

    def _emit(self, kind: str, phase: str, level: str, name: str | None, data: dict[str, Any],
              trace_id: str, span_id: str | None, parent: str | None, session: Any,
              user: Any) -> bool:
        return capture.emit(kind, phase=phase, level=level, name=name, data=data,
                            framework=FRAMEWORK, session_id=session, user_id=user,
                            trace_id=trace_id, span_id=span_id, parent_span_id=parent,
                            keep=phase == "end")
