"""The framework-free public API: configure, flush, the AuditLogger and tool calls.

Typical use::

    import tracevault

    log = tracevault.AuditLogger(session_id="chat-42", user_id="alice")
    log.log_input("What is the weather in Paris?", source="web")
    with log.tool_call("get_weather", {"city": "Paris"}) as call:
        call.result = get_weather("Paris")
    log.log_output("It is sunny in Paris.")
    tracevault.flush()
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from tracevault import capture
from tracevault import dead_letters as dead_letter_files
from tracevault.config import Settings, export
from tracevault.context import SpanRef, current_span, use_span
from tracevault.ids import new_span_id, new_trace_id
from tracevault.pipeline import Middleware, Pipeline, PipelineStats
from tracevault.store import Store, StoreError, open_store
from tracevault.toolcall import ToolCall, drop_none, error_data

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("tracevault")


def configure(
    *,
    store: str | Store | None = None,
    level: str | None = None,
    middleware: Sequence[Middleware] | None = None,
    slow_tool_ms: float | None = None,
    queue_size: int | None = None,
    batch_size: int | None = None,
    block_timeout: float | None = None,
    strict: bool | None = None,
    strict_timeout: float | None = None,
    writer: str | None = None,
    **extra: Any,
) -> Pipeline:
    """Start recording with these settings (unset ones come from ``TRACEVAULT_*``).

    Opens the store now, so a bad URL or an unwritable file raises
    :class:`tracevault.StoreError` here rather than being discovered later. The previous
    pipeline, if any, is flushed and shut down. ``middleware`` runs after the built-in
    steps (redaction). ``writer="process"`` moves redaction and ledger writes to a
    child process (see :mod:`tracevault.sidecar`). ``extra`` keywords are kept for
    built-in middleware factories. Returns the new pipeline.

    The settings given here that have a ``TRACEVAULT_*`` variable (``store`` as a URL,
    ``level``, ``slow_tool_ms``, ``strict``, ``writer``) are also set in this process's
    environment, for the processes it starts from now on (a ``spawn`` or
    ``forkserver`` multiprocessing worker, a subprocess) to record into the same
    ledger the same way.
    """
    settings = Settings.from_env(
        store=store if isinstance(store, str) else None,
        level=level.lower() if level else None,
        slow_tool_ms=slow_tool_ms,
        queue_size=queue_size,
        batch_size=batch_size,
        block_timeout=block_timeout,
        strict=strict,
        strict_timeout=strict_timeout,
        writer=writer.lower() if writer else None,
        extra=extra or None,
    )
    if store is not None and not isinstance(store, str):
        target: Store | str = store  # the caller's: configure() does not close it
    elif settings.writer == "process" and not middleware:
        open_store(settings.store).close()  # a bad URL fails here, not in the child
        target = settings.store
    else:
        target = open_store(settings.store)
    pipeline = capture.new_pipeline(
        settings,
        target,
        middleware or (),
        # close what configure() opened (a URL: whatever the pipeline opens), not the caller's
        owns_store=None if isinstance(target, str) else target is not store,
    )
    old = capture.install(pipeline, settings)
    given = {"store": store if isinstance(store, str) else None, "level": level,
             "slow_tool_ms": slow_tool_ms, "strict": strict, "writer": writer}
    export(settings, [name for name, value in given.items() if value is not None])
    if old is not None:
        old.shutdown()
    return pipeline


def flush(timeout: float | None = None) -> bool:
    """Block until everything captured so far is in the ledger; ``False`` on timeout."""
    pipeline = capture.current_pipeline()
    return True if pipeline is None else pipeline.flush(timeout)


def shutdown(timeout: float | None = 30.0) -> PipelineStats | None:
    """Flush and stop recording (the next capture starts again from the environment).

    Running forwarders (``TRACEVAULT_SINKS``) first get the same chance to deliver what
    was captured as at interpreter exit (up to ``TRACEVAULT_FORWARD_EXIT_TIMEOUT``
    seconds), then stop; what is left is delivered by the next run or ``tracevault
    forward``.
    """
    # Forwarders run only once the capture hook imported the registry; importing it
    # here would load the sinks package into every process that never forwards.
    if "tracevault.sinks.registry" in sys.modules:
        from tracevault.sinks.registry import stop

        stop()
    pipeline = capture.reset()
    return None if pipeline is None else pipeline.shutdown(timeout)


def erase(
    *,
    session_id: str | None = None,
    user_id: str | None = None,
    trace_id: str | None = None,
    before: datetime | None = None,
    store: str | Store | None = None,
    timeout: float | None = 60.0,
    reason: str | None = None,
    dead_letters: Iterable[str | Path] | None = None,
) -> int:
    """Erase the content of a session's, a user's or a run's events, or of everything
    recorded ``before`` a time (retention); filters combine with AND. Returns how many
    events were erased in the ledger.

    The same events are erased in dead-letter files (events that could not reach the
    ledger): those in ``dead_letters`` (files, or directories holding
    ``tracevault-dead-letter-*.jsonl`` files; by default the working directory and the
    file the current pipeline dead-letters into).

    The erasure is itself recorded first: a sealed ``tracevault.erasure`` event naming
    what it erases, who asked (login, host, process) and ``reason`` (redacted like any
    recorded text, as the record is never erased); ``verify`` accepts
    an erased event only below such a record.

    What was captured before the call is flushed to the ledger first, so it is erased
    too. ``store`` defaults to the ledger being recorded into (else
    ``TRACEVAULT_STORE``). Payloads and salts are cleared; ids, names, kinds, times and
    metrics stay, and the trail still verifies. Forwarders send nothing of an erased
    payload from then on; what a receiver already got must be erased there.
    """
    if session_id is None and user_id is None and trace_id is None and before is None:
        raise ValueError("erase needs session_id, user_id, trace_id or before")
    pipeline = capture.current_pipeline()
    places = [os.getcwd()] if dead_letters is None else list(dead_letters)
    if dead_letters is None and pipeline is not None and os.path.exists(
            pipeline.dead_letter_path):
        places.append(pipeline.dead_letter_path)
    files = dead_letter_files.files_in(places)  # (before erasing: raises for a bad path)
    from tracevault.redaction.redactor import redact_reason

    reason = redact_reason(reason, capture.settings())
    recording = pipeline.store_url if pipeline is not None else None
    opened = None
    target = (store or recording) if store is None or isinstance(store, str) else store.url
    if pipeline is not None and target == recording and not pipeline.flush(timeout):
        raise StoreError("what was captured did not reach the ledger in time; nothing erased")
    if store is None or isinstance(store, str):
        store = opened = open_store(target or Settings.from_env().store, create=False)
    try:
        erased = store.erase(session_id=session_id, user_id=user_id, trace_id=trace_id,
                             before=before, reason=reason)
    finally:
        if opened is not None:
            opened.close()
    cleared = dead_letter_files.erase(files, session_id=session_id, user_id=user_id,
                                      trace_id=trace_id, before=before)
    if cleared:
        log.info("tracevault: erased the content of %d events in dead-letter files", cleared)
    return erased


def stats() -> PipelineStats | None:
    """Return the active pipeline's counters (captured, written, failed, ...)."""
    pipeline = capture.current_pipeline()
    return None if pipeline is None else pipeline.stats()


class AuditLogger:
    """Records a session's inputs, reasoning, model and tool calls, outputs and errors.

    ``session_id``/``user_id`` default to the enclosing :func:`tracevault.context`.
    Events logged outside any span belong to this logger's trace (one trace per logger
    unless ``trace_id`` is given); inside :meth:`span` or :meth:`tool_call` they become
    children of that step.
    """

    def __init__(
        self,
        session_id: str | None = None,
        user_id: str | None = None,
        *,
        trace_id: str | None = None,
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.trace_id = trace_id or new_trace_id()
        self.tags = list(tags)
        self.metadata = dict(metadata or {})

    # --- plumbing ---------------------------------------------------------------------

    def emit(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        phase: str = "point",
        level: str = "info",
        name: str | None = None,
        span_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        durable: bool = False,
        keep: bool = False,
    ) -> bool:
        """Record one event of any kind in this logger's session and trace; return
        whether it was recorded (``False``: its level is filtered out, or capturing
        failed and was logged). ``keep=True`` records it whatever the level: the end
        of a step whose start was recorded."""
        ref = current_span()
        return capture.emit(
            kind,
            phase=phase,
            level=level,
            name=name,
            data=data,
            session_id=self.session_id,
            user_id=self.user_id,
            trace_id=ref.trace_id if ref else self.trace_id,
            span_id=span_id,
            parent_span_id=ref.span_id if ref else None,
            tags=self.tags,
            metadata={**self.metadata, **metadata} if metadata else self.metadata,
            durable=durable,
            keep=keep,
        )

    # --- the seed's "basic logging" ---------------------------------------------------

    def log_input(
        self,
        content: Any,
        *,
        type: str = "user_message",
        source: str | None = None,
        ip_address: str | None = None,
        **metadata: Any,
    ) -> None:
        """Record what came into the agent (a user message, an API request, ...)."""
        data = drop_none(type=type, content=content, source=source, ip_address=ip_address)
        self.emit("input", data, name=type, metadata=metadata or None)

    def log_reasoning(
        self,
        thought: str,
        *,
        plan: Sequence[str] | None = None,
        confidence: float | None = None,
    ) -> None:
        """Record what the agent thought and planned before acting."""
        data = drop_none(thought=thought, plan=list(plan) if plan else None, confidence=confidence)
        self.emit("reasoning", data)

    def log_llm_call(
        self,
        model: str,
        *,
        provider: str | None = None,
        messages: Any = None,
        prompt: str | None = None,
        parameters: dict[str, Any] | None = None,
        tools: Any = None,
        response: Any = None,
        tool_calls: Any = None,
        finish_reason: str | None = None,
        usage: dict[str, int] | None = None,
        cost: float | None = None,
        duration_ms: float | None = None,
        time_to_first_token_ms: float | None = None,
        status: str = "success",
    ) -> None:
        """Record one completed model call with its tokens and cost."""
        data = drop_none(
            model=model,
            provider=provider,
            messages=messages,
            prompt=prompt,
            parameters=parameters,
            tools=tools,
            response=response,
            tool_calls=tool_calls,
            finish_reason=finish_reason,
            usage=usage,
            cost=cost,
            duration_ms=duration_ms,
            time_to_first_token_ms=time_to_first_token_ms,
            status=status,
        )
        self.emit(
            "llm_call",
            data,
            phase="end",
            name=model,
            level="error" if status == "error" else "info",
        )

    def log_tool_call(
        self,
        tool_name: str,
        parameters: Any = None,
        *,
        result: Any = None,
        status: str = "success",
        duration_ms: float | None = None,
        tool_call_id: str | None = None,
        error: BaseException | str | None = None,
    ) -> None:
        """Record a tool call that already happened: its intent and its outcome."""
        span_id = new_span_id()
        intent = drop_none(
            tool_name=tool_name, parameters=parameters, tool_call_id=tool_call_id, status="pending"
        )
        self.emit("tool_call", intent, phase="start", name=tool_name, span_id=span_id)
        if error is not None:
            status = "error"
        outcome = drop_none(
            tool_name=tool_name,
            result=result,
            status=status,
            duration_ms=duration_ms,
            tool_call_id=tool_call_id,
        )
        if error is not None:
            outcome["error"] = error_data(error, tool_name, None)
        self.emit(
            "tool_call",
            outcome,
            phase="end",
            name=tool_name,
            span_id=span_id,
            level="error" if status == "error" else "info",
        )
        if error is not None:
            self.emit("error", outcome["error"], level="error", name=tool_name, span_id=span_id)
        if duration_ms is not None:
            self._warn_if_slow(tool_name, duration_ms, span_id)

    def log_retrieval(
        self, query: str, documents: Sequence[Any], *, name: str | None = None
    ) -> None:
        """Record a retrieval: the query and the documents (id, content, score, metadata)."""
        self.emit("retrieval", {"query": query, "documents": list(documents)}, name=name)

    def log_output(
        self,
        content: Any,
        *,
        type: str = "final_answer",
        tokens_used: int | None = None,
        model: str | None = None,
        cost: float | None = None,
    ) -> None:
        """Record what the agent answered."""
        data = drop_none(
            type=type, content=content, tokens_used=tokens_used, model=model, cost=cost
        )
        self.emit("output", data, name=type)

    def log_error(
        self,
        error: BaseException | str,
        *,
        where: str | None = None,
        recovery_action: str | None = None,
    ) -> None:
        """Record a failure: type, message, stack trace, where, and how it was handled."""
        self.emit("error", error_data(error, where, recovery_action), level="error", name=where)

    def log_event(self, name: str, payload: Any = None, *, level: str = "info") -> None:
        """Record anything else as a ``custom`` event."""
        self.emit("custom", drop_none(name=name, payload=payload), name=name, level=level)

    # --- steps ------------------------------------------------------------------------

    @contextmanager
    def span(self, name: str, *, kind: str = "agent", inputs: Any = None) -> Iterator[SpanRef]:
        """Record a structural ``agent``/``chain`` step; events inside become its children.

        Agent steps are recorded at ``info`` (they are the roots of a run's tree and must
        survive ``TRACEVAULT_LEVEL=info``); chain steps at ``debug``. A step below
        ``TRACEVAULT_LEVEL`` is not recorded at all (not even a failed end), and what
        runs inside it hangs under the nearest recorded step.
        """
        if kind not in ("agent", "chain"):
            raise ValueError(f"span kind must be 'agent' or 'chain', not {kind!r}")
        level = "info" if kind == "agent" else "debug"
        parent = current_span()
        ref = SpanRef(parent.trace_id if parent else self.trace_id, new_span_id())
        recorded = self.emit(
            kind,
            drop_none(inputs=inputs),
            phase="start",
            name=name,
            span_id=ref.span_id,
            level=level,
        )
        started = time.perf_counter()
        status = "success"
        try:
            with self._inside(ref, recorded):
                yield ref
        except BaseException:
            status = "error"
            raise
        finally:
            if recorded:
                data = {"status": status, "duration_ms": (time.perf_counter() - started) * 1000}
                self.emit(
                    kind,
                    data,
                    phase="end",
                    name=name,
                    span_id=ref.span_id,
                    level="error" if status == "error" else level,
                    keep=True,
                )

    def tool_call(
        self,
        tool_name: str | None = None,
        parameters: Any = None,
        *,
        tool_call_id: str | None = None,
    ) -> ToolCall:
        """Record a tool call around a block or a function.

        As a context manager, set ``call.result``; an exception marks the call failed
        (and is re-raised). As a decorator (``@log.tool_call()``), each call of the
        function is recorded with its bound arguments and return value.
        """
        return ToolCall(self, tool_name, parameters, tool_call_id)

    def _inside(self, ref: SpanRef, recorded: bool) -> AbstractContextManager[SpanRef]:
        """The block of a step of this logger: ``ref`` is the current span, in this
        logger's session. A step that is not in the ledger (below the level) is not: its
        children would point at a parent that never exists (orphans in every sink), so
        they keep the current span instead."""
        if not recorded:
            return nullcontext(ref)
        return use_span(ref, session_id=self.session_id, user_id=self.user_id)

    def _warn_if_slow(self, tool_name: str, duration_ms: float, span_id: str | None) -> None:
        warning = capture.slow_tool_warning(tool_name, duration_ms)
        if warning is not None:
            self.emit("custom", warning, level="warning", name=capture.SLOW_TOOL, span_id=span_id)


def tool_call(
    tool_name: str | None = None,
    parameters: Any = None,
    *,
    tool_call_id: str | None = None,
) -> ToolCall:
    """Record a tool call in the ambient session (see :meth:`AuditLogger.tool_call`)."""
    return ToolCall(AuditLogger(), tool_name, parameters, tool_call_id)
