"""Process-wide recording with no code change: the ``tracevault.autoenable`` entry point.

:func:`enable` installs one :class:`TracevaultCallbackHandler` for every LangChain and
LangGraph run in the process through ``register_configure_hook``. The hook's context
variable defaults to that single instance (so every thread and task sees the same
handler and no new one is built per run), and the hook is registered with the handler
class, so a run to which the user already passed a ``TracevaultCallbackHandler`` does
not get a second one. Where both still meet (a user handler attached to an inner
runnable), the shared run table records each run once.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar

from tracevault_langchain.handler import TracevaultCallbackHandler

_lock = threading.Lock()
_handler: TracevaultCallbackHandler | None = None
_var: ContextVar[TracevaultCallbackHandler | None] | None = None


def enable() -> TracevaultCallbackHandler:
    """Record every LangChain/LangGraph run in this process; return the handler.

    Idempotent: later calls return the same handler (unmuting it if :func:`disable`
    muted it).
    """
    global _handler, _var
    with _lock:
        if _handler is None:
            from langchain_core.tracers.context import register_configure_hook

            handler = TracevaultCallbackHandler()
            var: ContextVar[TracevaultCallbackHandler | None] = ContextVar(
                "tracevault_langchain_handler", default=handler
            )
            register_configure_hook(var, True, TracevaultCallbackHandler)
            _handler, _var = handler, var
        _handler.mute(False)
        return _handler


def disable() -> None:
    """Stop process-wide recording (LangChain hooks cannot be removed: the handler mutes)."""
    with _lock:
        if _handler is not None:
            _handler.mute(True)


def installed_handler() -> TracevaultCallbackHandler | None:
    """Return the process-wide handler if :func:`enable` was called and not disabled."""
    handler = _handler
    return handler if handler is not None and not handler.muted else None
