"""Recording a tool call around a block or a function: :class:`ToolCall`.

:meth:`tracevault.AuditLogger.tool_call` and :func:`tracevault.tool_call` return one. The
intent is recorded on entry (made durable first in strict mode), the outcome on exit
with result, status, duration and, on an exception, an ``error`` event.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from tracevault import capture
from tracevault.context import SpanRef, current_span
from tracevault.ids import new_span_id
from tracevault.pipeline import DurabilityError
from tracevault.snapshot import describe_exception

if TYPE_CHECKING:
    from tracevault.api import AuditLogger

F = TypeVar("F", bound=Callable[..., Any])


def error_data(
    error: BaseException | str,
    where: str | None,
    recovery_action: str | None,
) -> dict[str, Any]:
    """Return the ``data`` of an ``error`` event for an exception or a message."""
    data: dict[str, Any] = (
        describe_exception(error)
        if isinstance(error, BaseException)
        else {"type": "Error", "message": str(error)}
    )
    if where is not None:
        data["where"] = where
    if recovery_action is not None:
        data["recovery_action"] = recovery_action
    return data


def drop_none(**values: Any) -> dict[str, Any]:
    """Return the keyword arguments that are not ``None`` (optional payload fields)."""
    return {k: v for k, v in values.items() if v is not None}


class ToolCall:
    """A tool call being recorded: intent on entry, outcome on exit (see ``tool_call``)."""

    def __init__(
        self,
        logger: AuditLogger,
        tool_name: str | None,
        parameters: Any,
        tool_call_id: str | None,
    ) -> None:
        self.logger = logger
        self.tool_name = tool_name
        self.parameters = parameters
        self.tool_call_id = tool_call_id
        self.result: Any = None
        self.status = "success"
        self.duration_ms: float | None = None
        self._span: SpanRef | None = None
        self._started = 0.0
        self._recorded = False

    def set_result(self, result: Any) -> None:
        """Set what the tool returned (recorded in the outcome)."""
        self.result = result

    def __enter__(self) -> ToolCall:
        name = self.tool_name or "tool"
        parent = current_span()
        self._span = SpanRef(parent.trace_id if parent else self.logger.trace_id, new_span_id())
        intent = drop_none(
            tool_name=name,
            parameters=self.parameters,
            tool_call_id=self.tool_call_id,
            status="pending",
        )
        # In strict mode the intent must be durable before the tool may run.
        try:
            self._recorded = self.logger.emit(
                "tool_call",
                intent,
                phase="start",
                name=name,
                span_id=self._span.span_id,
                durable=capture.settings().strict,
            )
        except DurabilityError as exc:
            # The tool will not run: its end says so once the ledger takes it, rather
            # than leaving the intent (queued all the same) "pending" for good.
            self.status = "not_run"
            self.logger.emit("tool_call", drop_none(tool_name=name, status="not_run",
                                                    reason=str(exc),
                                                    tool_call_id=self.tool_call_id),
                             phase="end", name=name, span_id=self._span.span_id,
                             level="error", keep=True)
            raise
        # What the tool's code records hangs under the call, in the logger's session.
        self._cm = self.logger._inside(self._span, self._recorded)
        self._cm.__enter__()
        self._started = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.duration_ms = (time.perf_counter() - self._started) * 1000
        self._cm.__exit__(None, None, None)
        assert self._span is not None
        name = self.tool_name or "tool"
        outcome = drop_none(
            tool_name=name,
            result=self.result,
            duration_ms=self.duration_ms,
            tool_call_id=self.tool_call_id,
        )
        if exc is not None:
            self.status = "error"
            outcome["error"] = error_data(exc, name, None)
        outcome["status"] = self.status
        level = "error" if self.status == "error" else "info"
        # A call whose intent is below the level has no end either; its error and a
        # slow-call warning are still recorded, as points under the current span.
        span_id = self._span.span_id if self._recorded else None
        if self._recorded:  # (a strict-mode intent is recorded whatever the level)
            self.logger.emit("tool_call", outcome, phase="end", name=name, span_id=span_id,
                             level=level, keep=True)
        if exc is not None:
            self.logger.emit(
                "error",
                error_data(exc, name, None),
                level="error",
                name=name,
                span_id=span_id,
            )
        self.logger._warn_if_slow(name, self.duration_ms, span_id)

    async def __aenter__(self) -> ToolCall:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        name = self.tool_name or func.__name__
        logger, call_id = self.logger, self.tool_call_id
        signature = inspect.signature(func)

        def bound(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            try:
                b = signature.bind(*args, **kwargs)
                b.apply_defaults()
                return dict(b.arguments)
            except TypeError:
                return {"args": list(args), "kwargs": kwargs}

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with ToolCall(logger, name, bound(args, kwargs), call_id) as call:
                    call.result = await func(*args, **kwargs)
                    return call.result

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with ToolCall(logger, name, bound(args, kwargs), call_id) as call:
                call.result = func(*args, **kwargs)
                return call.result

        return cast(F, wrapper)
