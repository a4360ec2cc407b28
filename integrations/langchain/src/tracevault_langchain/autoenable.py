"""Process-wide recording with no code change: the ``tracevault.autoenable`` entry point.

:func:`enable` installs one :class:`TracevaultCallbackHandler` for every LangChain and
LangGraph run in the process through ``register_configure_hook``. The hook's context
variable defaults to that single instance (so every thread and task sees the same
handler and no new one is built per run), and the hook adds it, inherited by child
runs, to every run it is not already on, also one to which the user passed a
``TracevaultCallbackHandler`` of their own. Where both meet, the shared run table
records each run once: the first handler to see a run start owns it.
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
            # No handler class: LangChain would then skip runs that already hold any
            # TracevaultCallbackHandler, even one their children do not inherit (given
            # in a CallbackManager's handlers= only). LangGraph hands a node its
            # parent's child manager without asking the hook again, so such a run's
            # nodes would reach no handler and the models and tools under them (which
            # do ask) would become roots of their own.
            register_configure_hook(var, True)
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
