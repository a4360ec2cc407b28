"""Callbacks of control flow rather than steps: retries, custom events, legacy agent
actions, and LangGraph interrupt and resume."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

from tracevault.capture import later
from tracevault.snapshot import freeze, thaw
from tracevault_langchain.base import Failure, HandlerBase, recording_failed, retried_failure

if TYPE_CHECKING:
    from tenacity import RetryCallState


class ControlCallbacks(HandlerBase):
    """Records retries, custom events, agent actions and graph interrupts/resumes."""

    def on_retry(
        self,
        retry_state: RetryCallState,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            # The retry state changes with the next attempt: read it now.
            outcome = retry_state.outcome
            if outcome is None or not outcome.failed:
                return
            exc = outcome.exception()
            if exc is not None:
                later(self._retried, run_id, retried_failure(exc), retry_state.attempt_number)
        except Exception as exc:
            recording_failed("on_retry", exc)

    def _retried(self, run_id: UUID, failure: Failure, attempt: int) -> None:
        st = self._rec.mine(run_id)
        if st is not None:
            self._rec.retried(st, failure.error, attempt, failure.described)

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
            later(self._point, run_id, "custom", name, {"name": name, "payload": freeze(data)})
        except Exception as exc:
            recording_failed("on_custom_event", exc)

    def on_agent_action(
        self,
        action: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            log_text = getattr(action, "log", None)
            if isinstance(log_text, str) and log_text.strip():
                plan = [f"{getattr(action, 'tool', '?')}({getattr(action, 'tool_input', '')})"]
                later(self._point, run_id, "reasoning", None,
                      {"thought": log_text, "plan": plan})
        except Exception as exc:
            recording_failed("on_agent_action", exc)

    def on_interrupt(self, event: Any) -> None:
        try:
            self._lifecycle("interrupt", event, {
                "interrupts": [{"value": getattr(i, "value", i), "id": getattr(i, "id", None)}
                               for i in getattr(event, "interrupts", ())],
            })
        except Exception as exc:
            recording_failed("on_interrupt", exc)

    def on_resume(self, event: Any) -> None:
        try:
            self._lifecycle("resume", event, {})
        except Exception as exc:
            recording_failed("on_resume", exc)

    def _lifecycle(self, name: str, event: Any, payload: dict[str, Any]) -> None:
        payload.update(status=getattr(event, "status", None),
                       checkpoint_id=getattr(event, "checkpoint_id", None),
                       checkpoint_ns=list(getattr(event, "checkpoint_ns", ()) or ()))
        later(self._point, getattr(event, "run_id", None), "custom", name,
              {"name": name, "payload": freeze(payload)})

    def _point(self, run_id: UUID | None, kind: str, name: str | None,
               data: dict[str, Any]) -> None:
        # On the writer: a point event inside the run (a custom event, a stated thought,
        # an interrupt or resume), with its copied payload.
        st = self._rec.mine(run_id)
        if st is None:
            return
        if name == "interrupt":
            st.interrupted = True  # the run ends paused: no final answer (handler)
        elif name == "resume":
            if st.trace.resumed:  # the same resume, reported again by a subgraph
                return
            st.trace.resumed = True
        if "payload" in data:
            data["payload"] = thaw(data["payload"])
        self._rec.emit(st, kind, "point", data, name=name, point=True, owned=True)
