"""``TracevaultCallbackHandler``: every LangChain and LangGraph callback, as audit events.

Pass it like any callback handler::

    from tracevault_langchain import TracevaultCallbackHandler

    agent.invoke({"messages": [...]}, config={"callbacks": [TracevaultCallbackHandler()]})

One instance serves ``invoke``, ``stream``, ``batch``, their async forms,
``astream_events`` and LangGraph graphs, from any thread. It is called inline
(``run_inline``), does no I/O (events are queued for the background ledger writer),
keeps bounded per-run state and never raises into the agent, except in strict mode,
where a tool whose intent cannot be made durable does not run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from langchain_core.messages import BaseMessage, ToolMessage
from langchain_core.outputs import LLMResult

from tracevault import capture
from tracevault.context import SpanRef, swap_span
from tracevault.pipeline import DurabilityError
from tracevault.pricing import cost_of
from tracevault_langchain import convert
from tracevault_langchain.recorder import (
    Recorder,
    error_summary,
    is_cancellation,
    is_control_flow,
)
from tracevault_langchain.runs import RunState, RunTable

if TYPE_CHECKING:
    from langchain_core.documents import Document
    from langchain_core.outputs import ChatGenerationChunk, GenerationChunk
    from tenacity import RetryCallState

try:  # LangGraph sends interrupt/resume only to subclasses of its handler
    from langgraph.callbacks import GraphCallbackHandler as _Base
except ImportError:  # pragma: no cover - langgraph is optional
    from langchain_core.callbacks import BaseCallbackHandler as _Base  # type: ignore[assignment]

log = logging.getLogger("tracevault.langchain")

_failures = 0
_NOT_PARAMETERS = frozenset({"tools", "functions", "messages", "respond", "_type", "stop"})


def _failed(callback: str, exc: Exception) -> None:
    """Count and log a recording problem instead of letting it reach the agent; only a
    strict-mode :class:`DurabilityError` goes through (the tool must not run).

    Each callback catches inline rather than through a decorator: a wrapper re-packing
    LangChain's keyword arguments cost ~0.7 µs on every callback.
    """
    global _failures
    if isinstance(exc, DurabilityError):
        raise exc
    _failures += 1
    if _failures <= 10:
        log.error("tracevault: %s failed: %r", callback, exc, exc_info=exc)


def handler_failures() -> int:
    """Return how many callbacks failed inside tracevault (each swallowed and logged)."""
    return _failures


class TracevaultCallbackHandler(_Base):
    """Records LangChain/LangGraph runs into the tracevault ledger.

    ``session_id``/``user_id`` apply when a run's config metadata names none
    (``session_id``, ``thread_id`` or ``conversation_id``; ``user_id``); otherwise the
    enclosing :func:`tracevault.context` applies. ``strict=True`` (default: the
    ``TRACEVAULT_STRICT`` setting) makes each tool call's intent durable before the
    tool runs, and a tool whose intent cannot be recorded fails instead of running.
    """

    run_inline = True  # called in order on the caller's thread/loop, no executor hop

    def __init__(
        self,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        strict: bool | None = None,
        runs: RunTable | None = None,
    ) -> None:
        super().__init__()
        self._rec = Recorder(session_id, user_id, strict, runs)
        self._muted = False

    # The callback manager re-raises a handler's exception only when raise_error is set:
    # that is how a non-durable tool intent aborts the tool in strict mode.
    @property
    def raise_error(self) -> bool:
        return self._rec.is_strict()

    @raise_error.setter
    def raise_error(self, value: bool) -> None:
        self._rec.strict = value

    def mute(self, muted: bool = True) -> None:
        """Stop (or resume) recording with this handler; the framework skips it meanwhile."""
        self._muted = muted

    @property
    def ignore_llm(self) -> bool:
        return self._muted

    @property
    def ignore_chat_model(self) -> bool:
        return self._muted

    @property
    def ignore_chain(self) -> bool:
        return self._muted

    @property
    def ignore_agent(self) -> bool:
        return self._muted

    @property
    def ignore_retriever(self) -> bool:
        return self._muted

    @property
    def ignore_retry(self) -> bool:
        return self._muted

    @property
    def ignore_custom_event(self) -> bool:
        return self._muted

    @property
    def session_id(self) -> str | None:
        return self._rec.session_id

    @property
    def user_id(self) -> str | None:
        return self._rec.user_id

    # --- chains and graph nodes ---------------------------------------------------------

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: dict[str, Any] | Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            name = kwargs.get("name") or (serialized or {}).get("name") or "chain"
            st = self._rec.open("chain", name, run_id, parent_run_id, metadata, tags)
            if st is None or st.span is None:
                return
            meta = metadata or {}
            if st.is_root:
                st.kind = "agent"
                extra = convert.user_metadata(meta)
                self._rec.emit(st, "agent", "start", {}, metadata=extra or None)
                if _deferred(inputs, kwargs):
                    st.defers_inputs = True  # .stream(): the real inputs arrive on end
                    st.extra = extra
                else:
                    self._input(st, inputs, extra)
                return
            data: dict[str, Any] = {}
            if "langgraph_node" in meta:
                data["node"] = meta["langgraph_node"]
                data["step"] = meta.get("langgraph_step")
            if capture.is_enabled_for("trace") and not _deferred(inputs, kwargs):
                data["inputs"] = inputs
            self._rec.emit(st, "chain", "start", data, level="debug")
        except Exception as exc:
            _failed("on_chain_start", exc)

    def on_chain_end(
        self,
        outputs: dict[str, Any] | Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            st = self._rec.close(run_id)
            if st is None or st.span is None:
                return
            data: dict[str, Any] = {"status": "success", "duration_ms": _ms(st.started)}
            if st.is_root:
                if st.defers_inputs:
                    self._input(st, kwargs.get("inputs"), st.extra)
                self._output(st, outputs)
                self._rec.emit(st, "agent", "end", data)
                return
            if capture.is_enabled_for("trace"):
                data["outputs"] = outputs
            self._rec.emit(st, "chain", "end", data, level="debug")
        except Exception as exc:
            _failed("on_chain_end", exc)

    def on_chain_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            st = self._rec.close(run_id)
            if st is None:
                return
            if st.is_root and st.defers_inputs and kwargs.get("inputs") is not None:
                self._input(st, kwargs["inputs"], st.extra)
            self._end_failed(st, error)
        except Exception as exc:
            _failed("on_chain_error", exc)

    def _end_failed(self, st: RunState, error: BaseException) -> None:
        data: dict[str, Any] = {"duration_ms": _ms(st.started)}
        if is_control_flow(error):
            data["status"] = "interrupted"
            level = "info"
        elif is_cancellation(error):
            data["status"] = "cancelled"
            data["reason"] = f"{type(error).__name__}: the caller stopped the run"
            level = "warning"
        else:
            data["status"] = "error"
            data["error"] = error_summary(error)
            level = "error"
            self._rec.error(st, error)
        if st.span is not None:
            self._rec.emit(st, st.kind, "end", data, level=level)

    def _input(self, st: RunState, inputs: Any, extra: dict[str, Any] | None) -> None:
        kind, content = convert.input_view(inputs)
        data: dict[str, Any] = {"type": kind, "content": content}
        for key in ("source", "ip_address"):
            if extra and isinstance(extra.get(key), str):
                data[key] = extra[key]
        self._rec.emit(st, "input", "point", data, name=kind, point=True,
                       metadata=extra or None)

    def _output(self, st: RunState, outputs: Any) -> None:
        trace = st.trace
        data: dict[str, Any] = {"type": "final_answer", "content": convert.output_view(outputs),
                                "tokens_used": trace.tokens}
        if trace.model:
            data["model"] = trace.model
        if trace.cost is not None:
            data["cost"] = trace.cost
        self._rec.emit(st, "output", "point", data, name="final_answer", point=True)

    # --- models -------------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            st = self._model_start(serialized, run_id, parent_run_id, tags, metadata, kwargs,
                                   {"messages": convert.messages_view(messages)})
            if st is None:
                return
            if st.is_root:
                self._input(st, messages[0] if messages else None, None)
            if st.trace.failed_tools:
                ids = [m.tool_call_id for batch in messages for m in batch
                       if isinstance(m, ToolMessage)]
                self._rec.recoveries(st, ids)
        except Exception as exc:
            _failed("on_chat_model_start", exc)

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            prompt: dict[str, Any] = {"prompt": prompts[0]} if len(prompts) == 1 else {
                "prompt": prompts}
            st = self._model_start(serialized, run_id, parent_run_id, tags, metadata, kwargs,
                                   prompt)
            if st is not None and st.is_root:
                self._input(st, prompts[0] if len(prompts) == 1 else prompts, None)
        except Exception as exc:
            _failed("on_llm_start", exc)

    def _model_start(
        self,
        serialized: dict[str, Any] | None,
        run_id: UUID,
        parent_run_id: UUID | None,
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
        kwargs: dict[str, Any],
        prompt: dict[str, Any],
    ) -> RunState | None:
        meta = metadata or {}
        params: dict[str, Any] = kwargs.get("invocation_params") or {}
        model = (meta.get("ls_model_name") or params.get("model") or params.get("model_name")
                 or kwargs.get("name") or (serialized or {}).get("name") or "llm")
        st = self._rec.open("llm_call", str(model), run_id, parent_run_id, metadata, tags)
        if st is None:
            return None
        st.model = str(model)
        data: dict[str, Any] = {"model": st.model}
        provider = meta.get("ls_provider") or params.get("_type")
        if provider:
            data["provider"] = provider
        data["parameters"] = {k: v for k, v in params.items() if k not in _NOT_PARAMETERS}
        if params.get("stop") or meta.get("ls_stop"):
            data["parameters"]["stop"] = params.get("stop") or meta.get("ls_stop")
        data.update(prompt)
        tools = params.get("tools") or params.get("functions")
        if tools:
            data["tools"] = tools
        self._rec.emit(st, "llm_call", "start", data)
        return st

    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            st = self._rec.runs.get(run_id)
            if st is not None and st.first_token is None:
                st.first_token = time.perf_counter()
        except Exception as exc:
            _failed("on_llm_new_token", exc)

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            st = self._rec.close(run_id)
            if st is None:
                return
            data, usage, message = convert.result_view(response)
            model = st.model or data.get("model") or "llm"
            data["model"] = model
            cost = None
            if usage is not None:
                data["usage"] = usage
                cost = cost_of(model, usage.get("input"), usage.get("output"), usage.get("cached"))
                if cost is not None:
                    data["cost"] = cost
            if st.first_token is not None:
                data["time_to_first_token_ms"] = (st.first_token - st.started) * 1000
            data["duration_ms"] = _ms(st.started)
            data["status"] = "success"
            self._rec.emit(st, "llm_call", "end", data, name=model)
            st.trace.add_usage(model, (usage or {}).get("total", 0), cost)
            thought = convert.reasoning_of(message)
            if thought is not None:
                reasoning: dict[str, Any] = {"thought": thought}
                plan = convert.plan_of(message) if getattr(message, "tool_calls", None) else None
                if plan:
                    reasoning["plan"] = plan
                self._rec.emit(st, "reasoning", "point", reasoning, name=model, point=True)
            if st.is_root:
                self._output(st, response)
        except Exception as exc:
            _failed("on_llm_end", exc)

    def on_llm_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            st = self._rec.close(run_id)
            if st is not None:
                self._end_failed(st, error)
        except Exception as exc:
            _failed("on_llm_error", exc)

    # --- tools --------------------------------------------------------------------------

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
            st = self._rec.open("tool_call", name, run_id, parent_run_id, metadata, tags)
            if st is None:
                return
            st.tool_call_id = kwargs.get("tool_call_id")
            data: dict[str, Any] = {"tool_name": name,
                                    "parameters": convert.tool_arguments(input_str, inputs),
                                    "status": "pending"}
            if st.tool_call_id:
                data["tool_call_id"] = st.tool_call_id
            strict = self._rec.is_strict()
            try:
                # In strict mode the intent is in the ledger before the tool may run.
                self._rec.emit(st, "tool_call", "start", data, durable=strict)
            except DurabilityError:
                self._rec.close(run_id)  # the tool will not run: no end callback follows
                raise
            if st.is_root:
                self._input(st, data["parameters"], convert.user_metadata(metadata))
            if st.span is not None:
                # The tool body runs between this callback and its end: make the tool the
                # current span so code it calls (a LlamaIndex query engine, AuditLogger
                # events) lands under it in the same tree.
                st.ambient = (swap_span(SpanRef(st.trace.trace_id, st.span)),)
        except Exception as exc:
            _failed("on_tool_start", exc)

    def on_tool_end(
        self,
        output: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            st = self._rec.close(run_id)
            if st is None:
                return
            _restore_ambient(st)
            result, status, artifact = convert.tool_result(output)
            duration = _ms(st.started)
            data: dict[str, Any] = {"tool_name": st.name, "result": result, "status": status,
                                    "duration_ms": duration}
            if st.tool_call_id:
                data["tool_call_id"] = st.tool_call_id
            if artifact is not None:
                data["artifact"] = artifact
            failed = status == "error"
            self._rec.emit(st, "tool_call", "end", data, level="error" if failed else "info")
            if failed:  # the tool handled its own exception and returned the error text
                message = result if isinstance(result, str) else str(result)
                self._rec.emit_on(st, "error", {"type": "ToolError", "message": message,
                                                "where": st.name}, level="error")
                self._rec.tool_failed(st, "ToolError", message)
            self._rec.warn_if_slow(st, duration)
            if st.is_root:
                self._output(st, result)
        except Exception as exc:
            _failed("on_tool_end", exc)

    def on_tool_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            st = self._rec.close(run_id)
            if st is None:
                return
            _restore_ambient(st)
            duration = _ms(st.started)
            summary = error_summary(error)
            data: dict[str, Any] = {"tool_name": st.name, "status": "error",
                                    "duration_ms": duration, "error": summary}
            if st.tool_call_id:
                data["tool_call_id"] = st.tool_call_id
            self._rec.emit(st, "tool_call", "end", data, level="error")
            if not is_cancellation(error) and not is_control_flow(error):
                self._rec.error(st, error)
                self._rec.tool_failed(st, summary["type"], summary["message"])
            self._rec.warn_if_slow(st, duration)
        except Exception as exc:
            _failed("on_tool_error", exc)

    # --- retrievers ---------------------------------------------------------------------

    def on_retriever_start(
        self,
        serialized: dict[str, Any],
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            name = kwargs.get("name") or (serialized or {}).get("name") or "retriever"
            st = self._rec.open("retrieval", name, run_id, parent_run_id, metadata, tags)
            if st is None:
                return
            st.query = query
            self._rec.emit(st, "retrieval", "start", {"query": query})
            if st.is_root:
                self._input(st, query, convert.user_metadata(metadata))
        except Exception as exc:
            _failed("on_retriever_start", exc)

    def on_retriever_end(
        self,
        documents: Sequence[Document],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            st = self._rec.close(run_id)
            if st is None:
                return
            docs = convert.documents_view(documents)
            self._rec.emit(st, "retrieval", "end", {"query": st.query, "documents": docs,
                                                     "duration_ms": _ms(st.started),
                                                     "status": "success"})
            if st.is_root:
                self._output(st, docs)
        except Exception as exc:
            _failed("on_retriever_end", exc)

    def on_retriever_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            st = self._rec.close(run_id)
            if st is not None:
                self._end_failed(st, error)
        except Exception as exc:
            _failed("on_retriever_error", exc)

    # --- retries, custom events, legacy agents, graph lifecycle -------------------------

    def on_retry(
        self,
        retry_state: RetryCallState,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            st = self._rec.mine(run_id)
            outcome = retry_state.outcome
            if st is None or outcome is None or not outcome.failed:
                return
            exc = outcome.exception()
            if exc is not None:
                self._rec.retried(st, exc, retry_state.attempt_number)
        except Exception as exc:
            _failed("on_retry", exc)

    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            st = self._rec.mine(run_id)
            if st is not None:
                self._rec.emit(st, "custom", "point", {"name": name, "payload": data}, name=name,
                               point=True)
        except Exception as exc:
            _failed("on_custom_event", exc)

    def on_agent_action(
        self,
        action: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            st = self._rec.mine(run_id)
            log_text = getattr(action, "log", None)
            if st is not None and isinstance(log_text, str) and log_text.strip():
                plan = [f"{getattr(action, 'tool', '?')}({getattr(action, 'tool_input', '')})"]
                self._rec.emit(st, "reasoning", "point", {"thought": log_text, "plan": plan},
                               point=True)
        except Exception as exc:
            _failed("on_agent_action", exc)

    def on_interrupt(self, event: Any) -> None:
        try:
            self._lifecycle("interrupt", event, {
                "interrupts": [{"value": getattr(i, "value", i), "id": getattr(i, "id", None)}
                               for i in getattr(event, "interrupts", ())],
            })
        except Exception as exc:
            _failed("on_interrupt", exc)

    def on_resume(self, event: Any) -> None:
        try:
            self._lifecycle("resume", event, {})
        except Exception as exc:
            _failed("on_resume", exc)

    def _lifecycle(self, name: str, event: Any, payload: dict[str, Any]) -> None:
        st = self._rec.mine(getattr(event, "run_id", None))
        if st is None:
            return
        payload.update(status=getattr(event, "status", None),
                       checkpoint_id=getattr(event, "checkpoint_id", None),
                       checkpoint_ns=list(getattr(event, "checkpoint_ns", ()) or ()))
        self._rec.emit(st, "custom", "point", {"name": name, "payload": payload}, name=name,
                       point=True)


def _deferred(inputs: Any, kwargs: dict[str, Any]) -> bool:
    # Streaming runs start with a placeholder and report their real inputs on end.
    return bool(kwargs.get("defers_inputs")) or (
        "defers_inputs" in kwargs and inputs == {"input": ""}
    )


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _restore_ambient(st: RunState) -> None:
    if st.ambient is not None:
        swap_span(st.ambient[0])
        st.ambient = None
