"""The caller's-thread half of capture: build an event and hand it to the pipeline.

:func:`emit` is the one entry point every producer uses (the core API and the
framework handlers). On the caller's thread it only checks the level, enriches the
event from the ambient :mod:`tracevault.context`, snapshots the payload into JSON-safe
data and enqueues. It never raises into the caller, except a :class:`DurabilityError`
in strict mode, where raising is the point.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from time import perf_counter, time_ns
from typing import Any
from uuid import UUID

from tracevault.config import Settings
from tracevault.context import Scope, current_scope, current_span
from tracevault.context import _scope as _scope_var
from tracevault.context import _span as _span_var
from tracevault.forks import FORK_GATE
from tracevault.ids import uuid7
from tracevault.pipeline import Appender, DurabilityError, Middleware, Pipeline
from tracevault.replay import Later, Replay, replaying
from tracevault.schema import KINDS, LEVEL_RANK, PHASES
from tracevault.snapshot import Deferred, freeze, thaw
from tracevault.store.erasures import CAPTURED_ERASURE_NAME, ERASURE

log = logging.getLogger("tracevault")

_lock = threading.RLock()
_pipeline: Pipeline | None = None
_settings: Settings | None = None
_min_rank = LEVEL_RANK["debug"]
_capture_errors = 0
_renamed = 0  # captured events named like an erasure record (see _not_a_record)
# What a forked child rebuilds: the store URL, the middleware, and whether a writer
# process wrote (the child then starts its own, through new_pipeline).
_recipe: tuple[str, list[Middleware], bool] | None = None
_KINDS = frozenset(KINDS)
_PHASES = frozenset(PHASES)
_middleware_factory: list[Any] = []  # callables (Settings) -> list[Middleware]
_orphans: list[Later] = []  # a forked child's copy of what the parent had yet to run


def register_default_middleware(factory: Any) -> None:
    """Register ``factory(settings) -> list[Middleware]`` to run before user middleware.

    The redaction package uses this so every pipeline redacts by default.
    """
    if factory not in _middleware_factory:
        _middleware_factory.append(factory)


def default_middleware(settings: Settings) -> list[Middleware]:
    """Return the built-in middleware for ``settings`` (redaction first)."""
    # Imported late (a cycle), and by whichever thread records first: a fork waits for
    # the import to finish (see tracevault.forks).
    with FORK_GATE:
        import tracevault.redaction  # noqa: F401  (registers the Redactor)

    steps: list[Middleware] = []
    for factory in _middleware_factory:
        steps.extend(factory(settings))
    return steps


def settings() -> Settings:
    """Return the active settings (read from the environment on first use).

    A bad ``TRACEVAULT_*`` value is logged and the defaults are used: capturing must
    not raise into the agent over a typo in the environment. A callback the writer
    runs (:func:`later`) sees the settings in force when it was queued.
    """
    global _settings, _min_rank
    replay = replaying()
    if replay is not None:
        return replay.settings
    if _settings is None:
        with _lock:
            if _settings is None:
                loaded = Settings.from_env(on_error=lambda msg: log.error("tracevault: %s", msg))
                _min_rank = LEVEL_RANK[loaded.level]
                _settings = loaded
    return _settings


def get_pipeline() -> Pipeline:
    """Return the active pipeline, starting one from the environment if needed."""
    pipeline = _pipeline
    if pipeline is not None:
        return pipeline
    with _lock:
        if _pipeline is None:
            s = settings()
            # After fork, the child rebuilds what the parent had configured (the same
            # ledger and middleware), not a pipeline from the environment.
            if _recipe is not None:
                store, steps, by_process = _recipe
                # A writer process of its own if the parent had one.
                child = (new_pipeline(s, store) if by_process
                         else _build_pipeline(s, store, steps))
                _carry_over(child, _orphans)  # first in its queue, before anyone sees it
                install(child, s)
            else:
                install(new_pipeline(s, s.store), s)
        assert _pipeline is not None
        return _pipeline


def _carry_over(pipeline: Pipeline, orphans: list[Later]) -> None:
    # Callbacks the parent queued before fork() that its writer had not handled yet:
    # the parent records their events; the child's writer runs them first for what
    # they tell the handlers (runs started: a tool that forked, say), keeping nothing.
    for item in orphans:
        pipeline.submit(Later((_state_only, item[1], item[2], item[3], item[4], item[5],
                                item)))
    orphans.clear()


def _state_only(item: Later) -> None:
    item.run()  # what it records stays in its own replay, which nobody reads


SIDECAR_LINGER = 0.025  # seconds the writer waits to hand a burst over as one batch


def new_pipeline(
    settings: Settings,
    store: Appender | str,
    middleware: Sequence[Middleware] = (),
    *,
    owns_store: bool | None = None,
) -> Pipeline:
    """Build a pipeline for ``settings`` writing to ``store``, with the built-in
    middleware (redaction) before ``middleware``.

    With ``settings.writer == "process"`` the ledger is written by a child process
    (:mod:`tracevault.sidecar`), which needs the store as a URL and can only run the
    built-in middleware; otherwise, or if the settings cannot be sent to a child, the
    background thread of this process writes, and a warning says why.
    """
    steps = [*default_middleware(settings), *middleware]
    tuning: dict[str, Any] = {}
    if settings.writer == "process":
        reason = None
        if middleware:
            reason = "custom middleware runs in this process"
        elif not isinstance(store, str):
            reason = "the store was given as an object, not a URL"
        else:
            with FORK_GATE:
                from tracevault.sidecar import SidecarStore

            try:
                store = SidecarStore(settings, steps)
                owns_store = True
                # Every wake-up of the writer thread takes the GIL back from the agent,
                # which costs an asyncio loop (it never lets go of the GIL by itself) a
                # forced switch. This thread only hands batches over (a few µs of GIL
                # per event), so a long batch stalls nobody: it always lingers the
                # full 25 ms (LlamaIndex agent, per event: +90 µs at 10 ms, about none
                # at 25 ms) rather than stopping at a burst.
                tuning["linger"] = SIDECAR_LINGER
                tuning["burst"] = settings.batch_size
            except TypeError as exc:
                reason = f"its settings cannot be sent to another process ({exc})"
        if reason is not None:
            log.warning("tracevault: writing the ledger from a thread of this process, not "
                        "a separate one: %s", reason)
    return _build_pipeline(settings, store, steps, owns_store=owns_store, **tuning)


def _build_pipeline(
    settings: Settings, store: Appender | str, steps: list[Middleware], **tuning: Any
) -> Pipeline:
    """The pipeline of ``settings`` with exactly the middleware ``steps``."""
    return Pipeline(
        store,
        middleware=steps,
        queue_size=settings.queue_size,
        batch_size=settings.batch_size,
        block_timeout=settings.block_timeout,
        **tuning,
    )


def current_pipeline() -> Pipeline | None:
    """Return the active pipeline without starting one."""
    return _pipeline


def install(pipeline: Pipeline | None, new_settings: Settings | None) -> Pipeline | None:
    """Make ``pipeline`` the active one; return the one it replaces (not shut down)."""
    global _pipeline, _settings, _min_rank
    with _lock:
        old, _pipeline = _pipeline, pipeline
        if new_settings is not None:
            _settings = new_settings
            _min_rank = LEVEL_RANK[new_settings.level]
    _forwarders_follow(pipeline, new_settings)
    return old


def _forwarders_follow(pipeline: Pipeline | None, new_settings: Settings | None) -> None:
    # Hook for tracevault.sinks: when sinks are configured (TRACEVAULT_SINKS or
    # configure(sinks=...)), forwarders start and stop with the active pipeline. The
    # sinks package is imported only then; it builds everything on its own thread.
    wanted = os.environ.get("TRACEVAULT_SINKS") or (
        new_settings is not None and "sinks" in new_settings.extra
    )
    if not wanted and "tracevault.sinks.registry" not in sys.modules:
        return
    try:
        with FORK_GATE:
            from tracevault.sinks.registry import pipeline_installed

        pipeline_installed(pipeline, new_settings)
    except Exception as exc:  # never break capture because forwarding is misconfigured
        log.error("tracevault: sinks not started: %s", exc)


def is_enabled_for(level: str) -> bool:
    """Return whether events at ``level`` are recorded (use it to skip costly payloads)."""
    if _settings is None:
        settings()
    return LEVEL_RANK[level] >= _rank_in_force(replaying())


def _rank_in_force(replay: Replay | None) -> int:
    # A callback the writer runs is filtered by the level it was captured under.
    return _min_rank if replay is None else LEVEL_RANK[replay.settings.level]


SLOW_TOOL = "slow_tool_call"


def slow_tool_warning(tool_name: str, duration_ms: float) -> dict[str, Any] | None:
    """Return the data of a ``slow_tool_call`` warning (a ``custom`` event at level
    ``warning``) when a tool took longer than ``slow_tool_ms``; ``None`` otherwise.

    Every producer records slow tools the same way; each emits the returned data with
    its own ids.
    """
    threshold = settings().slow_tool_ms
    if duration_ms <= threshold:
        return None
    payload = {"tool_name": tool_name, "duration_ms": duration_ms, "threshold_ms": threshold}
    return {"name": SLOW_TOOL, "payload": payload}


def capture_errors() -> int:
    """Return how many captures failed inside tracevault (each was logged)."""
    return _capture_errors


def emit(
    kind: str,
    *,
    phase: str = "point",
    level: str = "info",
    name: str | None = None,
    data: Any = None,
    framework: str = "manual",
    session_id: str | None = None,
    user_id: str | None = None,
    trace_id: str | None = None,
    span_id: str | UUID | None = None,
    parent_span_id: str | UUID | None = None,
    tags: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
    timestamp: datetime | None = None,
    durable: bool = False,
    owned: bool = False,
    keep: bool = False,
) -> bool:
    """Record one event; return whether it was queued (``False``: its level is filtered
    out, or capturing failed and was logged). A ``durable`` event is never filtered,
    nor one with ``keep=True`` (the end of a step whose start was recorded).

    Session, user, metadata and tags not given here come from the enclosing
    :func:`tracevault.context`; trace and parent come from the current span when
    ``trace_id`` is not given. Span ids may be given as a run's ``UUID``: the writer
    turns them into strings. ``data`` and ``metadata`` are copied (frozen) here, so
    callers may pass live objects; ``owned=True`` skips copying ``data`` when the caller
    built it from plain JSON values (str, int, finite float, bool, None, dicts and
    lists of them) and keeps no reference to change it; a
    :class:`~tracevault.snapshot.Deferred` ``data`` is made by the writer. With
    ``durable=True`` this returns only once the event is in the ledger and raises
    :class:`DurabilityError` if it cannot be made so.
    """
    if trace_id is None:
        ref = current_span()
        if ref is not None:
            trace_id = ref.trace_id
            if parent_span_id is None:
                parent_span_id = ref.span_id
    return record(kind, phase, level, name, data, framework, session_id, user_id, trace_id,
                  span_id, parent_span_id, metadata, tags, timestamp, durable, owned, keep)


def _not_a_record(name: str) -> str:
    global _renamed
    _renamed += 1
    if _renamed <= 10:
        log.warning("tracevault: a captured event may not be named %r (the name of an "
                    "erasure record); it is recorded as %r", name, CAPTURED_ERASURE_NAME)
    return CAPTURED_ERASURE_NAME


def record(
    kind: str,
    phase: str,
    level: str,
    name: str | None,
    data: Any,
    framework: str,
    session_id: str | None,
    user_id: str | None,
    trace_id: str | None,
    span_id: str | UUID | None,
    parent_span_id: str | UUID | None,
    metadata: dict[str, Any] | None = None,
    tags: Sequence[str] | None = None,
    timestamp: datetime | None = None,
    durable: bool = False,
    owned: bool = False,
    keep: bool = False,
) -> bool:
    """:func:`emit` for producers that place their events themselves (framework
    handlers): arguments by position, and no current span looked up. ``keep=True``
    records the event whatever its level: the end of a step whose start was recorded
    (a strict-mode intent is, whatever the level)."""
    global _capture_errors
    # Runs inside every framework callback, where none of this code is in cache: plain
    # lookups, positional arguments, and at most one copy.
    try:
        if _settings is None:
            settings()  # the first event: TRACEVAULT_LEVEL applies to it too
        replay = replaying()
        if LEVEL_RANK[level] < _rank_in_force(replay) and not (durable or keep):
            return False
        if kind not in _KINDS or phase not in _PHASES:
            raise ValueError(f"unknown event kind {kind!r} or phase {phase!r}")
        if name == ERASURE and kind == "custom":  # only an erasure writes its record
            name = _not_a_record(name)
        if data is None:
            payload: Any = {}
        elif owned or data.__class__ is Deferred:
            payload = data
        else:
            # The schema's data is an object.
            payload = freeze(data if isinstance(data, dict) else {"value": data})
        scope = current_scope()
        if metadata is not None and not isinstance(metadata, dict):
            metadata = {"value": metadata}
        if metadata:
            meta = freeze({**scope.metadata, **metadata} if scope.metadata else metadata)
        else:
            meta = freeze(scope.metadata) if scope.metadata else {}
        # In AuditEvent field order (pipeline.event_of builds the event on the writer).
        # The writer also gives it its id, in queue order (pipeline.settled): a uuid7
        # here cost 1.4 µs inside an agent run. Only a durable event gets its id now,
        # for the error that names it, and one a deferred callback records (already on
        # the writer, in queue order: settling it again would copy the tuple).
        item = (
            replay.new_id() if replay is not None else uuid7() if durable else None,
            timestamp or (time_ns() if replay is None else replay.time_ns),
            kind,
            phase,
            level,
            name,
            session_id if session_id is not None else scope.session_id,
            user_id if user_id is not None else scope.user_id,
            trace_id,
            span_id,
            parent_span_id,
            framework,
            [*scope.tags, *tags] if tags else list(scope.tags),
            meta,
            payload,
        )
        if replay is not None:  # a callback the writer runs (later): it takes the events
            replay.items.append(item)
            return True
        pipeline = _pipeline if _pipeline is not None else get_pipeline()
        if durable:
            pipeline.submit_durable(item, settings().strict_timeout)
        else:
            pipeline.submit(item)
        return True
    except DurabilityError:
        raise
    except Exception as exc:  # never break the agent; count and say so once per kind
        _capture_errors += 1
        if _capture_errors <= 10:
            log.error("tracevault: could not capture a %s event: %r", kind, exc, exc_info=True)
        return False


def later(fn: Callable[..., object], *args: Any, durable: bool = False) -> None:
    """Have the ledger writer run ``fn(*args)`` in this callback's place, in queue
    order, with this :func:`tracevault.context` and current span and at this time (see
    :mod:`tracevault.replay`); whatever it records is recorded as if captured now.

    For framework handlers: ``args`` must be what the caller copied of objects that may
    change after the callback returns. ``durable=True`` (strict mode) returns only once
    what ``fn`` recorded is in the ledger, and raises :class:`DurabilityError` if it
    cannot be made so. Never raises otherwise.
    """
    global _capture_errors
    try:
        pipeline = _pipeline if _pipeline is not None else get_pipeline()
        scope = _scope_var.get()
        if scope.metadata:  # the caller may change its values: copied as they are now
            scope = Scope(scope.session_id, scope.user_id, thaw(freeze(scope.metadata)),
                          scope.tags)
        item = Later((fn, scope, _span_var.get(), time_ns(), perf_counter(),
                      _settings or settings(), *args))
        if durable:
            pipeline.submit_durable(item, settings().strict_timeout)
        else:
            pipeline.submit(item)
    except DurabilityError:
        raise
    except Exception as exc:  # never break the agent
        _capture_errors += 1
        if _capture_errors <= 10:
            log.error("tracevault: could not capture a callback: %r", exc, exc_info=True)


def reset() -> Pipeline | None:
    """Forget the active pipeline and settings (the next capture starts again from the
    environment); return the pipeline, not shut down."""
    global _settings, _recipe, _min_rank
    with _lock:
        old = install(None, None)
        _settings = None
        _recipe = None
        _min_rank = LEVEL_RANK["debug"]
        return old


def _reset_after_fork() -> None:
    # The writer thread does not survive fork(); the child starts its own pipeline on
    # first use, with the parent's ledger and middleware, instead of queueing into a
    # dead one.
    global _pipeline, _lock, _recipe
    if _pipeline is not None:
        _recipe = (_pipeline.store_url, list(_pipeline.middleware),
                   _pipeline.store_applies_middleware)
        _orphans[:] = _pipeline.queued_callbacks()
    _pipeline = None
    _lock = threading.RLock()


os.register_at_fork(after_in_child=_reset_after_fork)
