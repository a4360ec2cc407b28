"""Ambient audit context: who the session and user are, and which span is current.

Both live in ``contextvars``, so they follow the code through threads started with a
copied context, ``asyncio`` tasks (each task copies the context it was created in) and
nested calls, and a ``with`` block never leaks into a sibling task.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Scope:
    """Session, user, metadata and tags that events captured inside it inherit."""

    session_id: str | None = None
    user_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SpanRef:
    """The current position in the run tree: events captured here are its children."""

    trace_id: str
    span_id: str


_EMPTY_SCOPE = Scope()
_scope: contextvars.ContextVar[Scope] = contextvars.ContextVar(
    "tracevault_scope", default=_EMPTY_SCOPE
)
_span: contextvars.ContextVar[SpanRef | None] = contextvars.ContextVar(
    "tracevault_span", default=None
)


def current_scope() -> Scope:
    """Return the innermost active :func:`context` (an empty scope outside any)."""
    return _scope.get()


def current_span() -> SpanRef | None:
    """Return the span that newly captured events should hang under, if any."""
    return _span.get()


@contextmanager
def context(
    session_id: str | None = None,
    user_id: str | None = None,
    *,
    tags: list[str] | tuple[str, ...] = (),
    **metadata: Any,
) -> Iterator[Scope]:
    """Attach a session, a user and metadata to every event captured inside the block.

    Nested blocks inherit the outer values and override what they set::

        with tracevault.context(session_id="chat-42", user_id="alice", source="web"):
            agent.invoke(...)
    """
    outer = _scope.get()
    scope = Scope(
        session_id=session_id if session_id is not None else outer.session_id,
        user_id=user_id if user_id is not None else outer.user_id,
        metadata={**outer.metadata, **metadata} if metadata else outer.metadata,
        tags=outer.tags + tuple(t for t in tags if t not in outer.tags),
    )
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


def swap_span(ref: SpanRef | None) -> SpanRef | None:
    """Make ``ref`` the current span in this context; return the span it replaces.

    For callback-style integrations that cannot wrap the code they observe in a
    ``with`` block: call it in the start callback, and again with the returned value
    in the end callback, so code running in between (e.g. another framework called
    from inside a tool) records its events as children of ``ref``.
    """
    previous = _span.get()
    _span.set(ref)
    return previous


@contextmanager
def use_span(
    ref: SpanRef, *, session_id: str | None = None, user_id: str | None = None
) -> Iterator[SpanRef]:
    """Make ``ref`` the current span for the block (events inside become its children).

    ``session_id``/``user_id``, when given, are the block's session and user as well: a
    step's children, whichever framework records them, belong to its session.
    """
    token = _span.set(ref)
    scope_token = None
    if session_id is not None or user_id is not None:
        outer = _scope.get()
        scope_token = _scope.set(Scope(
            session_id if session_id is not None else outer.session_id,
            user_id if user_id is not None else outer.user_id,
            outer.metadata, outer.tags))
    try:
        yield ref
    finally:
        if scope_token is not None:
            _scope.reset(scope_token)
        _span.reset(token)
