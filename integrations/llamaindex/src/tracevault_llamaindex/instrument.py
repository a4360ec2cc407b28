"""Attach tracevault to LlamaIndex's root instrumentation dispatcher, once.

LlamaIndex's ``Dispatcher.add_*_handler`` does not deduplicate, so :func:`instrument`
keeps the handlers it added and does nothing the second time (except change the
default session and user it is given). :func:`uninstrument` removes exactly those handler objects,
leaving the dispatcher's lists as they were before.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from llama_index_instrumentation import get_dispatcher

from tracevault_llamaindex.events import TracevaultEventHandler
from tracevault_llamaindex.spans import TracevaultSpanHandler
from tracevault_llamaindex.state import Recorder

_lock = threading.Lock()
UNINSTRUMENTED = "tracevault_llamaindex.uninstrument() was called while it ran"


@dataclass(frozen=True)
class Installed:
    """The handlers :func:`instrument` attached, and their shared state."""

    recorder: Recorder
    span_handler: TracevaultSpanHandler
    event_handler: TracevaultEventHandler


_installed: Installed | None = None


class _Keep:
    """The default of :func:`instrument`'s arguments: keep what is set."""

    def __repr__(self) -> str:
        return "<keep>"


_KEEP: Any = _Keep()


def instrument(session_id: str | None = _KEEP, user_id: str | None = _KEEP) -> Installed:
    """Record every LlamaIndex agent, workflow, query engine and LLM call in this process.

    Adds one span handler and one event handler to the root dispatcher; calling it again
    does not add more, and only changes the defaults it is given (``None`` clears one).
    ``session_id`` and ``user_id`` are defaults: a ``tracevault.context(...)`` around a
    run overrides them, and LlamaIndex ``instrument_tags({"session_id": ..., "user_id":
    ...})`` overrides both.
    """
    global _installed
    with _lock:
        if _installed is not None:
            if session_id is not _KEEP:
                _installed.recorder.session_id = session_id
            if user_id is not _KEEP:
                _installed.recorder.user_id = user_id
            return _installed
        recorder = Recorder(None if session_id is _KEEP else session_id,
                            None if user_id is _KEEP else user_id)
        installed = Installed(
            recorder, TracevaultSpanHandler(recorder), TracevaultEventHandler(recorder)
        )
        dispatcher = get_dispatcher()
        dispatcher.add_span_handler(installed.span_handler)
        dispatcher.add_event_handler(installed.event_handler)
        _installed = installed
        return installed


def uninstrument() -> None:
    """Remove the handlers :func:`instrument` added (a no-op when not instrumented)."""
    global _installed
    with _lock:
        installed, _installed = _installed, None
        if installed is None:
            return
        dispatcher = get_dispatcher()
        dispatcher.span_handlers = [
            h for h in dispatcher.span_handlers if h is not installed.span_handler
        ]
        dispatcher.event_handlers = [
            h for h in dispatcher.event_handlers if h is not installed.event_handler
        ]
        # Runs in flight will not report their ends to us any more: end what they had
        # open now, so the trail has no step without its end.
        installed.span_handler.abandon_open(UNINSTRUMENTED)


def is_instrumented() -> bool:
    """Return whether :func:`instrument` is in effect."""
    return _installed is not None


def handler_errors() -> int:
    """Return how many times our handlers failed internally (each was caught and logged)."""
    installed = _installed
    return installed.recorder.errors if installed is not None else 0
