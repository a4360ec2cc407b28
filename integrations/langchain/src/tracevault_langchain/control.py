"""Callbacks of control flow rather than steps: retries, custom events, legacy agent
actions, and LangGraph interrupt and resume."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

from tracevault_langchain.base import HandlerBase, recording_failed

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
            st = self._rec.mine(run_id)
            outcome = retry_state.outcome
            if st is None or outcome is None or not outcome.failed:
                return
            exc = outcome.exception()
            if exc is not None:
                self._rec.retried(st, exc, retry_state.attempt_number)
        except Exception as exc:
            recording_failed("on_retry", exc)

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
            st = self._rec.mine(run_id)
            log_text = getattr(action, "log", None)
            if st is not None and isinstance(log_text, str) and log_text.strip():
                plan = [f"{getattr(action, 'tool', '?')}({getattr(action, 'tool_input', '')})"]
                self._rec.emit(st, "reasoning", "point", {"thought": log_text, "plan": plan},
                               point=True)
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
        st = self._rec.mine(getattr(event, "run_id", None))
        if st is None:
            return
        if name == "interrupt":
            st.interrupted = True  # the run ends paused: no final answer (handler)
        payload.update(status=getattr(event, "status", None),
                       checkpoint_id=getattr(event, "checkpoint_id", None),
                       checkpoint_ns=list(getattr(event, "checkpoint_ns", ()) or ()))
        self._rec.emit(st, "custom", "point", {"name": name, "payload": payload}, name=name,
                       point=True)
