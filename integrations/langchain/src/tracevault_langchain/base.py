"""What every group of callbacks of :class:`~tracevault_langchain.TracevaultCallbackHandler`
shares: the recorder, the switches LangChain reads, failure handling, and the input,
output and failed-run events."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from tracevault import callback_wire
from tracevault.capture import later
from tracevault.pipeline import DurabilityError
from tracevault.replay import clock
from tracevault.schema import level_for
from tracevault.snapshot import describe_exception, freeze, make_data, thaw
from tracevault_langchain import convert
from tracevault_langchain.recorder import Recorder, error_summary, handoff_target, stop_status
from tracevault_langchain.runs import RUNS, RunState, RunTable, Trace

try:  # LangGraph sends interrupt/resume only to subclasses of its handler
    from langgraph.callbacks import GraphCallbackHandler as _Base
except ImportError:  # pragma: no cover - langgraph is optional
    from langchain_core.callbacks import BaseCallbackHandler as _Base  # type: ignore[assignment]

log = logging.getLogger("tracevault.langchain")

_failures = 0
_SWITCHES = ("ignore_llm", "ignore_chat_model", "ignore_chain", "ignore_agent",
             "ignore_retriever", "ignore_retry", "ignore_custom_event")


def _replica_state(handler: HandlerBase) -> tuple[Any, ...]:
    rec = handler._rec
    return rec.session_id, rec.user_id, rec.strict


def _make_replica(cls: type[HandlerBase], token: int, state: tuple[Any, ...]) -> HandlerBase:
    session_id, user_id, strict = state
    replica = cls.__new__(cls)
    HandlerBase.__init__(replica, session_id=session_id, user_id=user_id, strict=strict)
    # Runs are the handler's by this mark (not the replica's id()): a replica made again
    # for the same handler, after the writer process dropped it, still owns them.
    replica._rec.owner = -token
    return replica


def _update_replica(replica: HandlerBase, state: tuple[Any, ...]) -> None:
    rec = replica._rec
    rec.session_id, rec.user_id, rec.strict = state[:3]


def recording_failed(callback: str, exc: Exception) -> None:
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


class HandlerBase(_Base):
    """The handler's state and the helpers its callback groups use."""

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
        # With the writer in another process, this handler's deferred callbacks are
        # interpreted there, by a replica of it (see tracevault.callback_wire) — unless
        # it keeps a run table of its own: that table is where it is.
        if runs is not None and runs is not RUNS:
            callback_wire.keep_here("a handler keeps a run table of its own")
        else:
            callback_wire.replicable(type(self), _replica_state, _make_replica,
                                     _update_replica)

    # The callback manager re-raises a handler's exception only when raise_error is set:
    # that is how a non-durable tool intent aborts the tool in strict mode.
    @property
    def raise_error(self) -> bool:
        return self._rec.is_strict()

    @raise_error.setter
    def raise_error(self, value: bool) -> None:
        self._rec.strict = value

    # LangChain reads these on every callback: plain attributes, not properties (a
    # property is a Python call each time). mute() sets them on the instance.
    ignore_llm = False
    ignore_chat_model = False
    ignore_chain = False
    ignore_agent = False
    ignore_retriever = False
    ignore_retry = False
    ignore_custom_event = False

    def mute(self, muted: bool = True) -> None:
        """Stop (or resume) recording with this handler; the framework skips it meanwhile."""
        for switch in _SWITCHES:
            setattr(self, switch, muted)

    @property
    def muted(self) -> bool:
        """Whether :meth:`mute` stopped this handler."""
        return self.ignore_chain

    @property
    def session_id(self) -> str | None:
        return self._rec.session_id

    @property
    def user_id(self) -> str | None:
        return self._rec.user_id

    def _close_failed(self, callback: str, run_id: UUID, error: BaseException) -> None:
        """The whole of an ``on_*_error`` callback whose run needs nothing more than its
        failed end (retriever runs): the caller's half."""
        try:
            self._rec.runs.lineage.end(run_id)
            later(self._run_failed, run_id, failure_of(error), None)
        except Exception as exc:
            recording_failed(callback, exc)

    def _run_failed(self, run_id: UUID, failure: Failure, inputs: Any) -> None:
        # On the writer: the failed end of a run (and its input, if a stream only
        # reported it now).
        st = self._rec.close(run_id)
        if st is None:
            return
        if inputs is not None and st.is_root and st.defers_inputs:
            self._input(st, inputs, st.extra)
        self._end_failed(st, failure)

    def _end_failed(self, st: RunState, failure: Failure) -> None:
        data: dict[str, Any] = {"duration_ms": ms_since(st.started), **failure.ending}
        if failure.status == "error":
            self._rec.error(st, failure.error, described=failure.described)
        elif failure.status == "handed_off":
            self._rec.handed_off(st, failure.error, failure.goto)
        if st.span is not None:
            self._rec.emit(st, st.kind, "end", data, level=level_for(failure.status),
                           owned=True)

    def _input(self, st: RunState, copied: Any, extra: dict[str, Any] | None) -> None:
        """Record a root run's input from its copy (:func:`input_copy`)."""
        kind, content = copied
        data: dict[str, Any] = {"type": kind, "content": thaw(content)}
        for key in ("source", "ip_address"):
            if extra and isinstance(extra.get(key), str):
                data[key] = extra[key]
        self._rec.emit(st, "input", "point", data, name=kind, point=True,
                       metadata=extra or None, owned=True)

    def _output(self, st: RunState, answer: Any) -> None:
        """Record a root run's final answer from its copy (:func:`output_copy`)."""
        # The run's tokens and cost were added up as each model call's end was recorded
        # (models._end_data), before this callback in queue order.
        self._rec.emit(st, "output", "point", make_data(_output_data, answer, st.trace),
                       name="final_answer", point=True, owned=True)


def tags_and_metadata(tags: list[str] | None, metadata: dict[str, Any] | None
                      ) -> tuple[list[str] | None, dict[str, Any] | None]:
    """A start callback's tags and metadata as they are now (shallow copies): LangGraph
    changes the metadata dict it passed once the callback returns."""
    return (list(tags) if tags else tags), (dict(metadata) if metadata else metadata)


def input_copy(inputs: Any) -> tuple[str, Any]:
    """What a root run's input event records, copied on the caller's thread: the
    user's message (or what else came in) with inline media replaced by digests."""
    kind, content = convert.input_view(inputs)
    return kind, freeze(convert.without_media(content))


def output_copy(outputs: Any) -> Any:
    """What a root run's output event records, copied on the caller's thread: its final
    answer, and the structured response of an agent with a ``response_format``."""
    structured = outputs.get("structured_response") if isinstance(outputs, Mapping) else None
    return freeze([convert.output_view(outputs), structured])


@dataclass(frozen=True, slots=True)
class Failure:
    """How an exception stopped a run, read when the callback came: an exception
    changes as it goes on up (LangGraph adds notes, code may change its ``args``, its
    traceback grows), and the writer records the run's end later."""

    error: BaseException  # itself, for telling one failure from another
    status: str  # see recorder.stop_status
    ending: dict[str, Any]  # the fields the run's end records: status, error or reason
    described: dict[str, Any] | None  # type, message and stack trace (failures only)
    goto: Any = None  # where a hand-off sends control (recorder.handoff_target)


def _shipped_failure(failure: Failure) -> tuple[Any, ...]:
    # To the writer process: the exception as an ErrorRef (see tracevault.callback_wire).
    return Failure, (callback_wire.ErrorRef.of(failure.error), failure.status,
                     failure.ending, failure.described, failure.goto)


callback_wire.reduce_with(Failure, _shipped_failure)


def failure_of(error: BaseException) -> Failure:
    """Return how ``error`` stopped a run: its status, the fields an end records for it
    (``status`` and the ``error`` summary, or the ``reason`` it was cancelled) and, for
    a failure, its description with the stack trace (the ``error`` event)."""
    status = stop_status(error)
    ending: dict[str, Any] = {"status": status}
    described = None
    if status == "abandoned":
        ending["reason"] = "the consumer stopped reading"
    elif status == "cancelled":
        message = str(error) or "the run was cancelled"
        ending["reason"] = f"{type(error).__name__}: {message}"
    elif status == "interrupted":
        summary = error_summary(error)
        ending["reason"] = f"{summary['type']}: {summary['message']}"
    goto = None
    if status == "handed_off":
        goto = handoff_target(error)
        ending["reason"] = f"handed off to {goto}"
    elif status == "error":
        described = describe_exception(error)
        ending["error"] = {"type": described["type"], "message": described["message"]}
    return Failure(error, status, ending, described, goto)


def retried_failure(error: BaseException) -> Failure:
    """A failure a retry follows, read when the callback came (as :func:`failure_of`)."""
    return Failure(error, "error", {}, describe_exception(error))


def ms_since(started: float) -> float:
    """Milliseconds from ``started`` (a ``time.perf_counter()`` reading) to the
    callback being handled (see :func:`tracevault.replay.clock`)."""
    return (clock() - started) * 1000


def _output_data(answer: list[Any], trace: Trace) -> dict[str, Any]:
    # Read on the writer from the copied answer (tracevault.snapshot.make_data).
    content, structured = answer
    data: dict[str, Any] = {"type": "final_answer", "content": content,
                            "tokens_used": trace.tokens}
    if structured is not None:
        data["structured"] = structured
    if trace.model:
        data["model"] = trace.model
    if trace.cost is not None:
        data["cost"] = trace.cost
    if trace.unpriced_tokens:  # the cost, if any, leaves these out
        data["unpriced_tokens"] = trace.unpriced_tokens
    return data
