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

from typing import Any
from uuid import UUID

from tracevault import capture
from tracevault.capture import later
from tracevault.context import SpanRef, swap_span
from tracevault.pipeline import DurabilityError
from tracevault.schema import level_for
from tracevault.snapshot import freeze, thaw
from tracevault_langchain import convert
from tracevault_langchain.base import (
    Failure,
    failure_of,
    handler_failures,
    input_copy,
    ms_since,
    output_copy,
    recording_failed,
    tags_and_metadata,
)
from tracevault_langchain.control import ControlCallbacks
from tracevault_langchain.models import ModelCallbacks
from tracevault_langchain.recorder import HIDDEN_TAG
from tracevault_langchain.retrievers import RetrieverCallbacks
from tracevault_langchain.runs import Seen

__all__ = ["TracevaultCallbackHandler", "handler_failures"]


class TracevaultCallbackHandler(ModelCallbacks, RetrieverCallbacks, ControlCallbacks):
    """Records LangChain/LangGraph runs into the tracevault ledger.

    ``session_id``/``user_id`` apply when a run's config metadata names none
    (``session_id``, ``thread_id`` or ``conversation_id``; ``user_id``); otherwise the
    enclosing :func:`tracevault.context` applies. ``strict=True`` (default: the
    ``TRACEVAULT_STRICT`` setting) makes each tool call's intent durable before the
    tool runs, and a tool whose intent cannot be recorded fails instead of running.
    """

    # Each callback is split in two. The method LangChain calls runs on the agent's
    # thread: it copies what the event needs of objects that change after it returns,
    # keeps the little the caller's thread needs itself (runs.Lineage), and hands the
    # rest to the ledger writer (tracevault.capture.later), which runs the method named
    # with a leading underscore in its place, in order, with this tracevault.context.

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
            seen = self._rec.runs.lineage.start(run_id, parent_run_id)
            name = kwargs.get("name") or (serialized or {}).get("name") or "chain"
            deferred = _deferred(inputs, kwargs)
            copied = None
            if seen.root:
                if name == _UPDATE_STATE:
                    copied = freeze(inputs)
                elif not deferred:
                    copied = input_copy(inputs)
            elif not deferred and capture.is_enabled_for("trace"):
                copied = freeze(inputs)
            later(self._chain_start, name, copied, deferred, run_id, parent_run_id,
                  *tags_and_metadata(tags, metadata))
        except Exception as exc:
            recording_failed("on_chain_start", exc)

    def _chain_start(self, name: str, copied: Any, deferred: bool, run_id: UUID,
                     parent_run_id: UUID | None, tags: list[str] | None,
                     metadata: dict[str, Any] | None) -> None:
        try:
            st = self._rec.open("chain", name, run_id, parent_run_id, metadata, tags)
            if st is None or st.span is None:
                return
            meta = metadata or {}
            if st.is_root and name == _UPDATE_STATE:
                # graph.update_state(): a person (or code) edits a thread's state; the
                # agent does not run, so no input and no answer, just what was written.
                self._rec.emit(st, "chain", "start", {}, owned=True)
                self._rec.emit(st, "custom", "point",
                               {"name": "state_update", "payload": thaw(copied)},
                               name="state_update", point=True)
                return
            if st.is_root:
                st.kind = "agent"
                extra = convert.user_metadata(meta)
                self._rec.emit(st, "agent", "start", {}, metadata=extra or None, owned=True)
                if deferred:
                    st.defers_inputs = True  # .stream(): the real inputs arrive on end
                    st.extra = extra
                elif copied is not None:
                    self._input(st, copied, extra)
                return
            data: dict[str, Any] = {}
            if "langgraph_node" in meta:
                data["node"] = meta["langgraph_node"]
                data["step"] = meta.get("langgraph_step")
            if copied is not None:
                data["inputs"] = thaw(copied)
            self._rec.emit(st, "chain", "start", data, level="debug", owned=copied is None)
        except Exception as exc:
            recording_failed("on_chain_start", exc)

    def on_chain_end(
        self,
        outputs: dict[str, Any] | Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            seen = self._rec.runs.lineage.end(run_id)
            inputs = answer = None
            if seen is not None and seen.root:
                if kwargs.get("inputs") is not None:
                    inputs = input_copy(kwargs["inputs"])
                answer = output_copy(outputs)
            elif capture.is_enabled_for("trace"):
                answer = freeze(outputs)
            later(self._chain_end, run_id, inputs, answer)
        except Exception as exc:
            recording_failed("on_chain_end", exc)

    def _chain_end(self, run_id: UUID, inputs: Any, answer: Any) -> None:
        try:
            st = self._rec.close(run_id)
            if st is None:
                return
            if st.trace.failed_under:  # failures inside it: it handled them (recorded or
                self._rec.settle(st, run_id)  # not, the recovery hangs where it can)
            if st.span is None:
                return
            data: dict[str, Any] = {"status": "success", "duration_ms": ms_since(st.started)}
            if st.is_root and st.kind == "agent":
                if st.defers_inputs and inputs is not None:
                    self._input(st, inputs, st.extra)
                if st.interrupted:  # paused at interrupt(): no answer yet, a resume follows
                    data["status"] = "interrupted"
                elif st.defers_inputs and st.trace.open:
                    # Steps of the run still open: the consumer stopped reading a sync
                    # stream, which LangChain ends as if it had finished (its steps end
                    # after it).
                    data["status"] = "abandoned"
                    data["reason"] = "the consumer stopped reading"
                elif answer is not None:
                    self._output(st, answer)
                self._rec.emit(st, "agent", "end", data, level=level_for(data["status"]),
                               owned=True)
                return
            if answer is not None and not st.is_root:
                data["outputs"] = thaw(answer)
            self._rec.emit(st, "chain", "end", data, level="debug", owned=True)
        except Exception as exc:
            recording_failed("on_chain_end", exc)

    def on_chain_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            seen = self._rec.runs.lineage.end(run_id)
            inputs = None
            if seen is not None and seen.root and kwargs.get("inputs") is not None:
                inputs = input_copy(kwargs["inputs"])
            later(self._run_failed, run_id, failure_of(error), inputs)
        except Exception as exc:
            recording_failed("on_chain_error", exc)

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
            lineage = self._rec.runs.lineage
            seen = lineage.start(run_id, parent_run_id)
            parameters = freeze(convert.tool_arguments(input_str, inputs))
            strict = self._rec.is_strict()
            try:
                # In strict mode the intent is in the ledger before the tool may run.
                later(self._tool_start,
                      (serialized or {}).get("name") or kwargs.get("name") or "tool",
                      parameters, run_id, parent_run_id, *tags_and_metadata(tags, metadata),
                      kwargs.get("tool_call_id"), strict, durable=strict)
            except DurabilityError as exc:
                lineage.end(run_id)  # the tool will not run: no end callback follows
                later(self._tool_not_run, run_id, str(exc))
                raise
            if (seen.ambient is None and capture.is_enabled_for("info")
                    and not (tags and HIDDEN_TAG in tags)):
                # The tool body runs between this callback and its end: make the tool the
                # current span so code it calls (a LlamaIndex query engine, AuditLogger
                # events) lands under it in the same tree.
                seen.ambient = (swap_span(SpanRef(str(seen.trace), str(run_id))),)
        except Exception as exc:
            recording_failed("on_tool_start", exc)

    def _tool_start(self, name: str, parameters: Any, run_id: UUID,
                    parent_run_id: UUID | None, tags: list[str] | None,
                    metadata: dict[str, Any] | None, tool_call_id: str | None,
                    strict: bool) -> None:
        try:
            st = self._rec.open("tool_call", name, run_id, parent_run_id, metadata, tags)
            if st is None:
                return
            st.tool_call_id = tool_call_id
            if st.tool_call_id and st.trace.failed_tools:  # the same call again: a retry
                self._rec.recoveries(st, [st.tool_call_id], "retried", parent=st.parent_span)
            data: dict[str, Any] = {"tool_name": name, "parameters": thaw(parameters),
                                    "status": "pending"}
            if st.tool_call_id:
                data["tool_call_id"] = st.tool_call_id
            self._rec.emit(st, "tool_call", "start", data, durable=strict, owned=True)
            if st.is_root:
                self._input(st, input_copy(data["parameters"]), convert.user_metadata(metadata))
        except Exception as exc:
            recording_failed("on_tool_start", exc)

    def _tool_not_run(self, run_id: UUID, reason: str) -> None:
        # Strict mode refused the tool (its intent could not be made durable): its end
        # says so, once the ledger takes it, rather than leaving the intent "pending".
        try:
            st = self._rec.close(run_id)
            if st is None or st.span is None:
                return
            data: dict[str, Any] = {"tool_name": st.name, "status": "not_run",
                                    "reason": reason}
            if st.tool_call_id:
                data["tool_call_id"] = st.tool_call_id
            self._rec.emit(st, "tool_call", "end", data, level="error", owned=True)
        except Exception as exc:
            recording_failed("on_tool_start", exc)

    def on_tool_end(
        self,
        output: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            seen = self._rec.runs.lineage.end(run_id)
            _restore_ambient(seen)
            result, status, artifact = convert.tool_result(output)
            answer = output_copy(result) if seen is not None and seen.root else None
            later(self._tool_end, run_id, freeze([result, artifact]), status, answer)
        except Exception as exc:
            recording_failed("on_tool_end", exc)

    def _tool_end(self, run_id: UUID, copied: Any, status: str, answer: Any) -> None:
        try:
            st = self._rec.close(run_id)
            if st is None:
                return
            if st.trace.failed_under:  # failures inside it (an agent it ran): handled
                self._rec.settle(st, run_id)
            result, artifact = thaw(copied)
            duration = ms_since(st.started)
            data: dict[str, Any] = {"tool_name": st.name, "result": result, "status": status,
                                    "duration_ms": duration}
            if st.tool_call_id:
                data["tool_call_id"] = st.tool_call_id
            if artifact is not None:
                data["artifact"] = artifact
            failed = status == "error"
            self._rec.emit(st, "tool_call", "end", data, level="error" if failed else "info",
                           owned=True)
            if failed:  # the tool handled its own exception and returned the error text
                message = result if isinstance(result, str) else str(result)
                self._rec.emit_on(st, "error", {"type": "ToolError", "message": message,
                                                "where": st.name}, level="error")
                self._rec.tool_failed(st, "ToolError", message)
            self._rec.warn_if_slow(st, duration)
            if st.is_root and answer is not None:
                self._output(st, answer)
        except Exception as exc:
            recording_failed("on_tool_end", exc)

    def on_tool_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            _restore_ambient(self._rec.runs.lineage.end(run_id))
            later(self._tool_error, run_id, failure_of(error))
        except Exception as exc:
            recording_failed("on_tool_error", exc)

    def _tool_error(self, run_id: UUID, failure: Failure) -> None:
        try:
            st = self._rec.close(run_id)
            if st is None:
                return
            duration = ms_since(st.started)
            # An interrupt() or a cancelled run is no failure: a reason, not an error
            # (forwarders read an "error" as one).
            status, ending = failure.status, failure.ending
            data: dict[str, Any] = {"tool_name": st.name, "duration_ms": duration, **ending}
            if st.tool_call_id:
                data["tool_call_id"] = st.tool_call_id
            self._rec.emit(st, "tool_call", "end", data, level=level_for(status), owned=True)
            if status == "error":
                self._rec.error(st, failure.error, described=failure.described)
                self._rec.tool_failed(st, ending["error"]["type"], ending["error"]["message"])
            elif status == "handed_off":
                self._rec.handed_off(st, failure.error, failure.goto)
            self._rec.warn_if_slow(st, duration)
        except Exception as exc:
            recording_failed("on_tool_error", exc)


_UPDATE_STATE = "LangGraphUpdateState"  # the root run of graph.update_state()


def _deferred(inputs: Any, kwargs: dict[str, Any]) -> bool:
    # Streaming runs start with a placeholder and report their real inputs on end.
    return bool(kwargs.get("defers_inputs")) or (
        "defers_inputs" in kwargs and inputs == {"input": ""}
    )


def _restore_ambient(seen: Seen | None) -> None:
    # The tool's end: the span that was current before it is current again.
    if seen is not None and seen.ambient is not None:
        swap_span(seen.ambient[0])
        seen.ambient = None
