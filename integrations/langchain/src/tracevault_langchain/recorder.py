"""How runs become audit events: tree placement, session resolution and emit helpers.

:class:`Recorder` holds the logic shared by every callback of
:class:`~tracevault_langchain.TracevaultCallbackHandler`: it opens and closes run state
in the shared :data:`~tracevault_langchain.runs.RUNS` table, decides the trace, span and
parent of each event, and calls :func:`tracevault.capture.emit` (the only way events
leave this package). It never does I/O: ``emit`` only snapshots and enqueues.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from tracevault import capture
from tracevault.context import current_scope, current_span
from tracevault.replay import clock
from tracevault.snapshot import describe_exception
from tracevault_langchain.runs import RUNS, FailedTool, RunState, RunTable, SpanId, Trace

log = logging.getLogger("tracevault.langchain")

FRAMEWORK = "langchain"
HIDDEN_TAG = "langsmith:hidden"  # LangGraph's internal plumbing runs
_RETRY_TAG = "retry:attempt:"  # RunnableRetry tags every attempt after the first
_CANCELLED = (GeneratorExit, asyncio.CancelledError, KeyboardInterrupt)
# LangGraph signals interrupts and hand-offs by raising these: control flow, not errors.
_CONTROL_FLOW = frozenset({"GraphBubbleUp", "GraphInterrupt", "NodeInterrupt", "ParentCommand"})


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` means the consumer stopped (abandoned stream, cancelled task)."""
    return isinstance(exc, _CANCELLED)


def is_control_flow(exc: BaseException) -> bool:
    """Whether ``exc`` is a LangGraph interrupt or command rather than a failure."""
    return any(cls.__name__ in _CONTROL_FLOW for cls in type(exc).__mro__)


def stop_status(exc: BaseException) -> str:
    """The status of a run ``exc`` ended: ``handed_off`` (a LangGraph ``Command`` to
    the parent graph: a hand-off to another agent), ``interrupted`` (a LangGraph
    interrupt), ``abandoned`` (the consumer stopped reading its stream), ``cancelled``
    (its task was cancelled) or ``error`` (a failure)."""
    if is_control_flow(exc):
        return "handed_off" if handoff_target(exc) is not None else "interrupted"
    if isinstance(exc, GeneratorExit):
        return "abandoned"  # a stream closed before its end
    return "cancelled" if is_cancellation(exc) else "error"


def handoff_target(exc: BaseException) -> Any:
    """Where a LangGraph ``ParentCommand`` sends control (a node name, or a list of
    them); ``None`` for any other exception."""
    if not any(cls.__name__ == "ParentCommand" for cls in type(exc).__mro__):
        return None
    command = exc.args[0] if exc.args else None
    goto = getattr(command, "goto", None)
    targets = [getattr(g, "node", g) for g in (goto if isinstance(goto, (list, tuple))
                                               else [goto])]
    names = [str(t) for t in targets if t is not None]
    return names[0] if len(names) == 1 else (names or None)  # none: an update, no hand-off


def error_summary(exc: BaseException) -> dict[str, str]:
    """Return the type and message of an exception (the stack goes in ``error`` events)."""
    data = describe_exception(exc)
    return {"type": data["type"], "message": data["message"]}


class Recorder:
    """Run bookkeeping and event emission for one handler (state lives in ``RUNS``)."""

    def __init__(
        self,
        session_id: str | None,
        user_id: str | None,
        strict: bool | None,
        runs: RunTable | None = None,
    ) -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.strict = strict
        self.runs = runs if runs is not None else RUNS
        self.owner = id(self)
        self.unmatched = 0  # end callbacks for runs this handler did not record

    def is_strict(self) -> bool:
        """Whether tool intents must be durable (the handler's setting, else the config)."""
        return self.strict if self.strict is not None else capture.settings().strict

    # --- opening and closing runs -----------------------------------------------------

    def open(
        self,
        kind: str,
        name: str,
        run_id: UUID,
        parent_run_id: UUID | None,
        metadata: Mapping[str, Any] | None,
        tags: list[str] | None,
    ) -> RunState | None:
        """Start tracking a run; ``None`` if another handler already records it."""
        # Runs on every start callback: plain lookups, no generators or helpers.
        runs = self.runs
        parent = runs.get(parent_run_id) if parent_run_id is not None else None
        session = user = None
        if metadata:
            session = (metadata.get("session_id") or metadata.get("thread_id")
                       or metadata.get("conversation_id"))
            if session is not None and session.__class__ is not str:
                session = str(session)
            user = metadata.get("user_id")
            if user is not None and user.__class__ is not str:
                user = str(user)
        if parent is not None:
            session = session or self.session_id or parent.session_id
            user = user or self.user_id or parent.user_id
            trace, parent_span, is_root = parent.trace, parent.child_span, False
        else:
            session = session or self.session_id
            user = user or self.user_id
            ambient = current_span()
            if ambient is not None and (parent_run_id is None
                                        or ambient.span_id == str(parent_run_id)):
                # Inside an AuditLogger span, or a tool run this handler never saw (in a
                # process forked inside the tool): join its trace.
                trace, parent_span = Trace(ambient.trace_id, run_id), ambient.span_id
            else:
                # The top of what this handler sees; a parent it never saw keeps its id.
                trace = Trace(str(run_id), run_id)
                parent_span = parent_run_id
            is_root = True
        if session is None or user is None:
            scope = current_scope()
            session = session or scope.session_id
            user = user or scope.user_id
        # Steps that are not recorded (LangGraph plumbing, or chain steps below the
        # level) pass their children up to the nearest recorded ancestor.
        hidden = not is_root and (
            (tags is not None and HIDDEN_TAG in tags)
            or (kind == "chain" and not capture.is_enabled_for("debug"))
        )
        state = RunState(
            self.owner, kind, name, None if hidden else run_id, parent_span, trace,
            session, user, is_root, None if parent_run_id is None else parent_run_id.int,
            clock(), key=run_id.int,
        )
        claimed, evicted = runs.claim(run_id, state)
        for old in evicted:
            self._report_evicted(old)
        if not claimed:
            return None
        if tags:
            for tag in tags:
                if tag.startswith(_RETRY_TAG):  # RunnableRetry: recovers the last attempt
                    self._retry_started(state, tag[len(_RETRY_TAG):])
                    return state
        if (kind == "chain" and state.trace.last_failure and metadata
                and metadata.get("langgraph_node") == name):
            # A graph node that failed starting again under the same parent: its
            # RetryPolicy (a failed node otherwise ends the graph). Only node runs: the
            # same tool twice in one tools node, or a runnable called again for another
            # input, is another call, not a retry.
            self._retry_started(state, None)
        return state

    def _retry_started(self, state: RunState, attempt: str | None) -> None:
        failed = state.trace.take_last_failure(state.parent_span, state.name)
        if failed is None:
            return
        payload: dict[str, Any] = {"type": failed.error_type, "message": failed.message,
                                   "where": failed.name, "recovery_action": "retried"}
        if attempt is not None:
            payload["attempt"] = int(attempt) - 1 if attempt.isdigit() else attempt
            payload["recovery_action"] = f"retried (attempt {attempt})"
        self.recovered(state, failed.span, payload, parent=state.parent_span)

    def close(self, run_id: UUID) -> RunState | None:
        """Stop tracking a run and return its state (``None`` if not recorded here)."""
        state = self.runs.pop(run_id, self.owner)
        if state is None:
            self.unmatched += 1
        return state

    def mine(self, run_id: UUID | None) -> RunState | None:
        """Return the open run if this handler records it."""
        if run_id is None:
            return None
        state = self.runs.get(run_id)
        return state if state is not None and state.owner == self.owner else None

    # --- emitting -----------------------------------------------------------------------

    def emit(
        self,
        state: RunState,
        kind: str,
        phase: str,
        data: dict[str, Any],
        *,
        level: str = "info",
        name: str | None = None,
        point: bool = False,
        metadata: dict[str, Any] | None = None,
        durable: bool = False,
        owned: bool = False,
    ) -> None:
        """Emit an event of ``state``'s run (its start/end), or a point inside it.

        ``owned=True``: ``data`` holds only plain values built here, queued uncopied
        (see :func:`tracevault.capture.emit`). A run whose start is not recorded (below
        the level) is not recorded at all: no end, and what happens inside it hangs
        under its nearest recorded ancestor.
        """
        if point:
            span, parent = None, state.child_span
        else:
            span, parent = state.span, state.parent_span
            if span is None:
                return
        # The end of a recorded start is recorded whatever its level (a strict-mode
        # intent is recorded whatever the level).
        kept = capture.record(kind, phase, level, name if name is not None else state.name,
                              data, FRAMEWORK, state.session_id, state.user_id,
                              state.trace.trace_id, span, parent, metadata, None, None,
                              durable, owned, phase == "end")
        if not kept and phase == "start":
            state.span = None

    def emit_on(self, state: RunState, kind: str, data: dict[str, Any], *, level: str,
                name: str | None = None) -> None:
        """Emit a point event that belongs to ``state``'s run itself (errors, warnings);
        ``data`` holds only strings and numbers built here (queued uncopied)."""
        capture.record(kind, "point", level, name if name is not None else state.name, data,
                       FRAMEWORK, state.session_id, state.user_id, state.trace.trace_id,
                       state.child_span, state.parent_span if state.span is not None else None,
                       owned=True)

    def error(
        self,
        state: RunState,
        exc: BaseException,
        *,
        where: str | None = None,
        recovery_action: str | None = None,
        level: str = "error",
        described: dict[str, Any] | None = None,
    ) -> bool:
        """Record ``exc`` as an ``error`` event once per trace (errors bubble up).

        Returns False if ``exc`` was already recorded in this trace.
        """
        if not state.trace.first_report(exc, self.runs.lineage_of(state)):
            return False
        # ``described``: the exception as it was when its run failed (base.failure_of).
        data: dict[str, Any] = dict(described) if described else describe_exception(exc)
        data["where"] = where or state.name
        if recovery_action is not None:
            data["recovery_action"] = recovery_action
        self.emit_on(state, "error", data, level=level)
        # Where the error was recorded (a hidden run: its nearest recorded ancestor).
        # A failed tool call's recovery is its error shown to the model (recoveries),
        # one being retried already has its own.
        failed = FailedTool(state.child_span, data["where"], data["type"], data["message"])
        carries_on = state.tool_call_id is None and recovery_action is None
        state.trace.run_failed(state.parent_span, state.name, failed,
                               state.parent_key if carries_on else None)
        return True

    def settle(self, state: RunState, run_id: UUID) -> None:
        """Record that failures inside ``state``'s run were handled: it succeeded."""
        for failed in state.trace.take_failed_under(run_id.int):
            self.recovered(state, failed.span, {
                "type": failed.error_type, "message": failed.message, "where": failed.name,
                "recovery_action": f"handled in {state.name}; the run continued",
            })

    def handed_off(self, state: RunState, exc: BaseException, goto: Any) -> None:
        """Record a hand-off (a LangGraph ``Command`` to the parent graph: ``exc``, to
        ``goto``) once per trace, where it was made: a ``custom`` event named
        ``handoff`` with its ``goto``."""
        if state.trace.first_report(exc, self.runs.lineage_of(state)):
            self.emit_on(state, "custom", {"name": "handoff", "payload": {"goto": goto}},
                         level="info", name="handoff")

    def tool_failed(self, state: RunState, error_type: str, message: str) -> None:
        """Remember a failed tool call so its recovery can be recorded later."""
        if state.tool_call_id:
            state.trace.tool_failed(
                state.tool_call_id, FailedTool(state.span, state.name, error_type, message)
            )

    def recoveries(self, state: RunState, tool_call_ids: list[str],
                   action: str = "the tool's error was returned to the model, which "
                   "carried on", parent: SpanId | None = None) -> None:
        """Record that failed tool calls' errors were handed back to the model (or how
        else they were recovered from: ``action``)."""
        for call_id, failed in state.trace.take_failed(tool_call_ids):
            self.recovered(state, failed.span, {
                "type": failed.error_type,
                "message": failed.message,
                "where": failed.name,
                "tool_call_id": call_id,
                "recovery_action": action,
            }, parent=parent)

    def retried(self, state: RunState, exc: BaseException, attempt: int,
                described: dict[str, Any] | None = None) -> None:
        """Record that ``state``'s run failed with ``exc`` (``described``: as it was
        then) and is being tried again."""
        action = f"retried (attempt {attempt + 1})"
        if self.error(state, exc, recovery_action=action, level="warning", described=described):
            return  # the failure surfaced only here: one error event says it all
        summary = ({"type": described["type"], "message": described["message"]}
                   if described else error_summary(exc))
        self.recovered(state, state.child_span, {**summary, "where": state.name,
                                                 "attempt": attempt, "recovery_action": action},
                       parent=state.parent_span)

    def recovered(self, state: RunState, span: SpanId | None, payload: dict[str, Any],
                  parent: SpanId | None = None) -> None:
        """Record how the run carried on after an error already recorded at ``span``.

        A ``custom`` event named ``error_recovered`` rather than a second ``error``, so
        each failure is counted once. ``payload`` holds only strings and numbers.
        """
        if parent is None:
            parent = state.child_span
        if span is not None and span == parent:
            span = None  # the failed run was not recorded: a point under its parent
        capture.record("custom", "point", "warning", "error_recovered",
                       {"name": "error_recovered", "payload": payload}, FRAMEWORK,
                       state.session_id, state.user_id, state.trace.trace_id, span,
                       parent, owned=True)

    def warn_if_slow(self, state: RunState, duration_ms: float) -> None:
        """Record a ``slow_tool_call`` warning like the core ``AuditLogger`` does."""
        warning = capture.slow_tool_warning(state.name, duration_ms)
        if warning is not None:
            self.emit_on(state, "custom", warning, level="warning", name=capture.SLOW_TOOL)

    def _report_evicted(self, state: RunState) -> None:
        log.warning(
            "tracevault: %d runs open at once; the oldest (%s %r) was evicted and its end "
            "will not be recorded", self.runs.max_open, state.kind, state.name,
        )
        self.emit_on(state, "error", {
            "type": "tracevault.RunStateEvicted",
            "message": f"more than {self.runs.max_open} runs were open at once; this run's "
            "state was evicted and its end will not be recorded",
            "where": state.name,
        }, level="warning", name="tracevault.run_evicted")
