"""Chat model and LLM callbacks: ``llm_call`` start and end, reasoning, first token."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from uuid import UUID

from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult

from tracevault.capture import later
from tracevault.pricing import billed_model, usage_cost
from tracevault.schema import level_for
from tracevault.snapshot import freeze_raw, make_data, thaw
from tracevault_langchain import convert
from tracevault_langchain.base import (
    Failure,
    HandlerBase,
    failure_of,
    input_copy,
    ms_since,
    output_copy,
    recording_failed,
    tags_and_metadata,
)
from tracevault_langchain.runs import RunState, Trace

if TYPE_CHECKING:
    from langchain_core.outputs import ChatGenerationChunk, GenerationChunk

_NOT_PARAMETERS = frozenset({"tools", "functions", "messages", "respond", "_type", "stop"})


class ModelCallbacks(HandlerBase):
    """Records chat model and LLM runs."""

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
            seen = self._rec.runs.lineage.start(run_id, parent_run_id)
            prompt = convert.prompt_without_media(messages)
            copied = input_copy(prompt[0] if prompt else None) if seen.root else None
            later(self._model_start, serialized, run_id, parent_run_id,
                  *tags_and_metadata(tags, metadata), kwargs,
                  _prompt_copy(kwargs, metadata, prompt, True), copied)
        except Exception as exc:
            recording_failed("on_chat_model_start", exc)

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
            seen = self._rec.runs.lineage.start(run_id, parent_run_id)
            copied = None
            if seen.root:
                copied = input_copy(prompts[0] if len(prompts) == 1 else prompts)
            later(self._model_start, serialized, run_id, parent_run_id,
                  *tags_and_metadata(tags, metadata), kwargs,
                  _prompt_copy(kwargs, metadata, prompts, False), copied)
        except Exception as exc:
            recording_failed("on_llm_start", exc)

    def _model_start(
        self,
        serialized: dict[str, Any] | None,
        run_id: UUID,
        parent_run_id: UUID | None,
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
        kwargs: dict[str, Any],
        raw: Any,
        copied: Any,
    ) -> None:
        try:
            meta = metadata or {}
            params: dict[str, Any] = kwargs.get("invocation_params") or {}
            model = (meta.get("ls_model_name") or params.get("model") or params.get("model_name")
                     or kwargs.get("name") or (serialized or {}).get("name") or "llm")
            st = self._rec.open("llm_call", str(model), run_id, parent_run_id, metadata, tags)
            if st is None:
                return
            st.model = str(model)
            provider = meta.get("ls_provider") or params.get("_type")
            # On the writer already: the request's data is read from the copy now.
            copy = thaw(raw)
            self._rec.emit(st, "llm_call", "start",
                           make_data(_start_data, copy, (st.model, provider)), owned=True)
            if st.is_root and copied is not None:
                self._input(st, copied, None)
            if st.trace.failed_tools:  # were their errors shown to the model now?
                prompt = copy[2]
                if isinstance(prompt, list):
                    ids = [m.get("tool_call_id") for batch in prompt for m in batch
                           if isinstance(m, dict) and m.get("type") in convert.TOOL_TYPES]
                    self._rec.recoveries(st, [i for i in ids if isinstance(i, str)])
        except Exception as exc:
            recording_failed("on_chat_model_start", exc)

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
            seen = self._rec.runs.lineage.get(run_id)
            # The first chunk that carries something: a stream may open with chunks of
            # metadata only (Anthropic's message_start).
            if seen is not None and seen.first_token is None and (token or _calls_tools(chunk)):
                seen.first_token = time.perf_counter()
        except Exception as exc:
            recording_failed("on_llm_new_token", exc)

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
            seen = self._rec.runs.lineage.end(run_id)
            # The result is copied whole; the writer reads it (_end_data), adds up the
            # run's tokens and cost there, and the output event reads them after it.
            raw = freeze_raw((response.generations, response.llm_output))
            answer = output_copy(response) if seen is not None and seen.root else None
            later(self._llm_end, run_id, raw, None if seen is None else seen.first_token,
                  answer)
        except Exception as exc:
            recording_failed("on_llm_end", exc)

    def _llm_end(self, run_id: UUID, raw: Any, first_token: float | None,
                 answer: Any) -> None:
        try:
            st = self._rec.close(run_id)
            if st is None:
                return
            st.first_token = first_token
            copy = thaw(raw)
            self._model_end(st, copy, None)
            thought = convert.reasoning_of(convert.first_message(_result(copy)))
            if thought is not None:
                self._rec.emit(st, "reasoning", "point", make_data(_reasoning_data, copy, thought),
                               name=st.model or "llm", point=True, owned=True)
            if st.is_root and answer is not None:
                self._output(st, answer)
        except Exception as exc:
            recording_failed("on_llm_end", exc)

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
            seen = self._rec.runs.lineage.end(run_id)
            response = kwargs.get("response")
            first_token = None if seen is None else seen.first_token
            if first_token is None or not isinstance(response, LLMResult):
                later(self._run_failed, run_id, failure_of(error), None)
                return
            # A stream that failed or was abandoned midway: LangChain hands over what
            # the model had said by then, which the end records (with its usage).
            raw = freeze_raw((response.generations, response.llm_output))
            later(self._llm_error, run_id, failure_of(error), raw, first_token)
        except Exception as exc:
            recording_failed("on_llm_error", exc)

    def _llm_error(self, run_id: UUID, failure: Failure, raw: Any, first_token: float) -> None:
        try:
            st = self._rec.close(run_id)
            if st is None:
                return
            st.first_token = first_token
            if failure.status == "error":
                self._rec.error(st, failure.error, described=failure.described)
            self._model_end(st, raw, failure.ending)
        except Exception as exc:
            recording_failed("on_llm_error", exc)

    def _model_end(self, st: RunState, raw: Any, ending: dict[str, Any] | None) -> None:
        """Emit the ``llm_call`` end of the response copied as ``raw`` (``ending``: how
        a failed or abandoned call stopped, with what it had answered by then)."""
        if st.span is None:  # its start was not recorded: neither is its end, nor its usage
            return
        model = st.model or "llm"
        first_token = None
        if st.first_token is not None:
            first_token = (st.first_token - st.started) * 1000
        timing = (model, first_token, ms_since(st.started), st.trace, ending)
        level = level_for(ending["status"]) if ending is not None else "info"
        self._rec.emit(st, "llm_call", "end", make_data(_end_data, raw, timing), name=model,
                       level=level, owned=True)


def _prompt_copy(kwargs: dict[str, Any], metadata: dict[str, Any] | None, prompt: Any,
                 chat: bool) -> Any:
    """The copy of a model call's request the writer reads (_start_data): its
    parameters, offered tools and messages (or prompts)."""
    params: dict[str, Any] = kwargs.get("invocation_params") or {}
    parameters = {k: v for k, v in params.items() if k not in _NOT_PARAMETERS}
    stop = params.get("stop") or (metadata or {}).get("ls_stop")
    if stop:
        parameters["stop"] = stop
    tools = params.get("tools") or params.get("functions")
    return freeze_raw((parameters, tools, prompt, chat))


def _calls_tools(chunk: Any) -> bool:
    message = getattr(chunk, "message", None)
    return bool(getattr(message, "tool_call_chunks", None))


# --- read on the writer from the copies above (tracevault.snapshot.make_data) ---------


def _start_data(raw: list[Any], context: tuple[str, Any]) -> dict[str, Any]:
    parameters, tools, prompt, chat = raw
    model, provider = context
    data: dict[str, Any] = {"model": model}
    if provider:
        data["provider"] = provider
    data["parameters"] = parameters
    if chat:
        data["messages"] = convert.messages_view(prompt)
    else:
        data["prompt"] = prompt[0] if len(prompt) == 1 else prompt
    if tools:
        data["tools"] = tools
    return data


def _result(raw: list[Any]) -> dict[str, Any]:
    # What on_llm_end copied of the LLMResult (not its run info), as its fields.
    return {"generations": raw[0], "llm_output": raw[1]}


def _end_data(raw: list[Any], context: tuple[str, float | None, float, Trace,
                                             dict[str, Any] | None]) -> dict[str, Any]:
    named, first_token, duration, trace, ending = context
    data, usage = convert.result_view(_result(raw))
    # The provider's own name for the model, when it is more precise or priced.
    model = billed_model(named, data.get("model")) or named
    data["model"] = model
    cost = None
    if usage is not None:
        data["usage"] = usage
        cost = usage_cost(model, usage)
        if cost is not None:
            data["cost"] = cost
    if first_token is not None:
        data["time_to_first_token_ms"] = first_token
    data["duration_ms"] = duration
    data["status"] = "success"
    if ending is not None:
        data.update(ending)
    trace.add_usage(model, (usage or {}).get("total", 0), cost)
    return data


def _reasoning_data(raw: list[Any], thought: str) -> dict[str, Any]:
    data: dict[str, Any] = {"thought": thought}
    message = convert.first_message(_result(raw))
    if message is not None and message.get("tool_calls"):
        data["plan"] = convert.plan_of(message)
    return data
