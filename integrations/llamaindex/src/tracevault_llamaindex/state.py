"""Per-run state shared by the span and event handlers, and the one way they emit.

The :class:`Recorder` maps LlamaIndex span ids to what tracevault needs to place an
event in the tree (trace, parent, session, user) and keeps the few things that outlive a
span: streaming LLM calls (their span closes before the stream is read), recently
closed spans (so a late child still finds its parent) and generators returned by closed
spans (a lazily started LLM call inside them is hung under the span that returned
them). Everything is bounded and forgotten when a span, call or stream ends.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from llama_index_instrumentation.dispatcher import active_instrument_tags

from tracevault import capture
from tracevault.context import SpanRef, current_scope, current_span
from tracevault.snapshot import Deferred, describe_exception, first_report

log = logging.getLogger("tracevault.llamaindex")

FRAMEWORK = "llamaindex"
MAX_RECENT = 4_096  # closed spans kept for late children (per generation, two kept)
MAX_OPEN_LLM = 10_000  # unfinished LLM calls before the oldest is closed as abandoned
MAX_STREAMS = 4_096  # generators returned by closed spans, awaiting their consumer

# Span roles (what a LlamaIndex span means for the audit trail). WRAPPER: a model that
# delegates to another model object (StructuredLLM), transparent: the inner call is
# the one recorded, with the model, usage and cost of the call actually made. CHAT: a
# chat engine's turn (chat, achat, stream_chat, astream_chat).
OTHER, RUN, STEP, TOOL, LLM, PARSER, WRAPPER, CHAT = range(8)
# Raised by a step that waits for an event (a human's answer: ctx.wait_for_event); the
# workflow runs the step again once it arrives. Control flow, not a failure.
_SUSPENDING = frozenset({"WaitingForEvent"})


def interruption(exc: BaseException) -> str | None:
    """``"cancelled"`` or ``"interrupted"`` (as LangGraph's interrupts are recorded)
    when ``exc`` stops work without a failure (a cancelled task, a step waiting for an
    event); ``None`` for a failure."""
    if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
        return "cancelled"
    if any(cls.__name__ in _SUSPENDING for cls in type(exc).__mro__):
        return "interrupted"
    return None


@dataclass(slots=True)
class RunState:
    """A workflow or agent run: its name and, for multi-agent workflows, the current turn."""

    name: str
    multi: bool
    agent: bool = False  # an agent (or agents' workflow): a tool's error goes back to it
    code_act: bool = False  # a CodeActAgent's (or a workflow with one): code in the text
    turn_id: str | None = None
    turn_agent: str | None = None
    turn_started: float = 0.0
    turn_status: str = "success"


@dataclass(slots=True)
class Span:
    """What tracevault knows about one open (or recently closed) LlamaIndex span."""

    id: str
    name: str
    role: int
    trace_id: str
    parent_anchor: str | None  # tracevault parent of this span's own events
    anchor: str | None  # tracevault span that children hang under
    session_id: str | None
    user_id: str | None
    started: float
    parent: Span | None = None
    instance_key: int = 0
    llm_owner: str | None = None  # the open LLM call this span runs inside
    tool_name: str | None = None  # the nearest enclosing tool (collapses adapters)
    tool_id: str | None = None  # the model's tool call id, from the agent's ToolCall
    output_flag: list[Any] | None = None  # set: a streamed answer is this trace's output
    run: RunState | None = None
    step: tuple[str, str] | None = None  # (kind, name) of an event-derived open step
    recorded: bool = False  # emitted a start event that still needs its end
    pending: list[dict[str, Any]] | None = None  # errors awaiting handled/propagated
    # A tool call's: the tracevault span that was current before its body ran, in a
    # tuple (it may be None), while the tool is the current span.
    ambient: tuple[SpanRef | None] | None = None
    # A workflow step's: "cancelled" or "interrupted" when it stopped without failing.
    # The workflow catches the CancelledError or WaitingForEvent inside the step, whose
    # span then ends as if it had returned.
    stopped: str | None = None


def lineage_of(span: Span) -> tuple[str, ...]:
    """The ids of ``span`` and its ancestors, nearest first, then what the topmost hangs
    under (another framework's step): where a failure it reports came from (see
    :func:`tracevault.snapshot.first_report`)."""
    ids = [span.id]
    top, parent = span, span.parent
    while parent is not None and len(ids) < 256:
        ids.append(parent.id)
        top, parent = parent, parent.parent
    if top.parent_anchor is not None:
        ids.append(top.parent_anchor)
    return tuple(ids)


def is_root(span: Span) -> bool:
    """Whether ``span`` begins a trace of its own (its input and answer are the trace's
    ``input`` and ``output``), not a step inside a run, a stream or another framework's
    step."""
    return span.parent is None and span.parent_anchor is None


@dataclass(slots=True)
class LLMCall:
    """One model call, from its start event to its end (or abandonment)."""

    span_id: str
    trace_id: str
    parent_anchor: str | None
    session_id: str | None
    user_id: str | None
    started: float
    instance_key: int
    inputs_ref: Any
    model: str | None
    provider: str | None
    streaming: bool = False
    first_token: float | None = None
    finish_reason: str | None = None  # seen in a streamed chunk before the last
    last: Any = None
    thinking: list[str] = field(default_factory=list)
    output_flag: list[Any] | None = None
    stream: Any = None  # weak reference to the stream the call returned, if any
    recorded: bool = False  # its start was recorded (not filtered by level): record its end
    code_act: bool = False  # made in a CodeAct run: text before <execute> is reasoning


class Recorder:
    """State and emission shared by the handlers of one :func:`instrument` call."""

    def __init__(self, session_id: str | None = None, user_id: str | None = None) -> None:
        self.session_id = session_id
        self.user_id = user_id
        self.spans: dict[str, Span] = {}
        self.recent: dict[str, Span] = {}  # closed spans, newest generation
        self.older: dict[str, Span] = {}  # the generation before it
        self.llm: dict[str, LLMCall] = {}
        self.dups: dict[str, str] = {}
        self.lazy: dict[int, list[str]] = {}
        self.streams: dict[int, tuple[Any, Span, list[Any]]] = {}
        self.errors = 0
        self.lock = threading.Lock()

    # --- failures inside tracevault ----------------------------------------------------

    def failed(self, where: str, exc: BaseException) -> None:
        """Count a failure of our own handler code (LlamaIndex would hide it)."""
        with self.lock:  # handlers run on any thread: no count lost to a race
            self.errors += 1
            count = self.errors
        if count <= 10:
            log.error("tracevault: LlamaIndex handler failed in %s: %r", where, exc, exc_info=True)

    # --- emission ------------------------------------------------------------------------

    def emit(
        self,
        kind: str,
        owner: Span | LLMCall,
        *,
        phase: str = "point",
        level: str = "info",
        name: str | None = None,
        data: dict[str, Any] | Deferred | None = None,
        span_id: str | None = None,
        parent: str | None = None,
        metadata: dict[str, Any] | None = None,
        durable: bool = False,
        owned: bool = True,
    ) -> bool:
        """Emit one event in ``owner``'s trace, session and user; return whether it was
        recorded (``False``: its level is filtered out, or capturing failed).

        A step whose start was not recorded is not recorded at all (no end; its
        children and errors hang under the nearest recorded ancestor), so callers mark
        a step recorded, and make it the anchor of its children, only on ``True``.

        ``data`` is queued as it is (``owned``): everything this package emits is built
        here, by :mod:`tracevault_llamaindex.payloads` (which copies what it reads) or
        from plain values. Pass ``owned=False`` for data that holds a live object.
        """
        # Callers emit an end only for a recorded start: it is recorded whatever its
        # level (a strict-mode intent is recorded whatever the level).
        return capture.record(kind, phase, level, name, data, FRAMEWORK, owner.session_id,
                              owner.user_id, owner.trace_id, span_id, parent, metadata, None,
                              None, durable, owned, phase == "end")

    # --- identity and placement ------------------------------------------------------------

    def identity(self, tags: dict[str, Any] | None, parent: Span | None) -> tuple[Any, Any]:
        """Return ``(session_id, user_id)``: instrument_tags, then parent or context, then
        the defaults given to :func:`instrument`."""
        session = user = None
        if tags is None:  # e.g. workflow run spans: the tags are only in the context
            tags = active_instrument_tags.get()
        if tags:
            session = tags.get("session_id") or tags.get("tracevault.session_id")
            user = tags.get("user_id") or tags.get("tracevault.user_id")
        if session is None or user is None:
            if parent is not None:
                session = session if session is not None else parent.session_id
                user = user if user is not None else parent.user_id
            else:
                scope = current_scope()
                session = session if session is not None else scope.session_id
                user = user if user is not None else scope.user_id
        return (
            str(session) if session is not None else self.session_id,
            str(user) if user is not None else self.user_id,
        )

    def find_parent(self, parent_id: str | None) -> Span | None:
        """Return the open (or recently closed) span ``parent_id``."""
        if parent_id is None:
            return None
        found = self.spans.get(parent_id)
        return found if found is not None else self.closed(parent_id)

    def closed(self, span_id: str) -> Span | None:
        """Return the recently closed span ``span_id``, if it is still remembered."""
        found = self.recent.get(span_id)
        return found if found is not None else self.older.get(span_id)

    def adopt(self) -> tuple[str, str | None, list[Any] | None, Span | None] | None:
        """For a LlamaIndex root: return ``(trace, parent, output_flag, owner)`` to hang
        it under.

        A root started while a generator returned by a closed span is running belongs to
        that span (``owner``: a streaming response's lazily started LLM call, wherever
        and in whatever context the stream is read); its output flag is the first one
        set on the way out (a chat engine's stream wrapping a synthesizer's). Otherwise
        one started inside a current tracevault span (another framework's step) belongs
        to that.
        """
        if self.streams:
            frame: Any = sys._getframe(1)
            depth = 0
            owner: Span | None = None
            flag: list[Any] | None = None
            while frame is not None and depth < 64:
                entry = self.streams.get(id(frame))
                if entry is not None:
                    gen = entry[0]()
                    if gen is not None and _frame_of(gen) is frame:
                        if owner is None:  # the innermost: the span it hangs under
                            owner, flag = entry[1], entry[2]
                        if entry[2][0]:
                            flag = entry[2]
                            break
                frame = frame.f_back
                depth += 1
            if owner is not None:
                return owner.trace_id, owner.anchor, flag, owner
        ref = current_span()
        if ref is not None:
            return ref.trace_id, ref.span_id, None, None
        return None

    def watch_stream(self, gen: Any, owner: Span) -> list[Any] | None:
        """Remember that ``owner`` returned generator ``gen``; return its output flag."""
        frame = _frame_of(gen)
        if frame is None:
            return None
        key = id(frame)
        entry = self.streams.get(key)
        if entry is not None:
            return entry[2]
        if len(self.streams) >= MAX_STREAMS:
            self.streams.pop(next(iter(self.streams)), None)
        flag: list[Any] = [False, None]  # [the trace's output, its parent span]

        def forget(_: Any, key: int = key, streams: dict[int, Any] = self.streams) -> None:
            streams.pop(key, None)

        try:
            self.streams[key] = (weakref.ref(gen, forget), owner, flag)
        except TypeError:
            return None
        return flag

    def stream_answer(self, span: Span, gen: Any) -> None:
        """``span`` (a trace's root) returned its answer as the stream ``gen``: record
        the streamed text as the trace's ``output`` when the model call streaming it
        ends, whether that call starts lazily inside ``gen`` (flagged through
        :meth:`adopt`) or is already open under ``span`` (tree_summarize, chat engines)."""
        flag = self.watch_stream(gen, span) if gen is not None else None
        if flag is None:
            flag = [False, None]
        flag[0], flag[1] = True, span.anchor
        for call in list(self.llm.values()):
            if (call.streaming and call.trace_id == span.trace_id
                    and not (call.output_flag and call.output_flag[0])
                    and self._descends(call.span_id, span)):
                call.output_flag = flag

    def _descends(self, span_id: str, ancestor: Span) -> bool:
        span = self.spans.get(span_id) or self.closed(span_id)
        depth = 0
        while span is not None and depth < 64:
            if span is ancestor:
                return True
            span, depth = span.parent, depth + 1
        return False

    def close_span(self, span: Span) -> None:
        """Forget an open span, keeping a bounded memory of it for late children.

        Closed spans are kept in two generations of up to ``MAX_RECENT`` each: when the
        newest is full it becomes the older one and the previous older one is dropped.
        A span is thus remembered while fewer than ``MAX_RECENT`` spans closed after it,
        at O(1) per close (evicting one by one from the front of a dict rescans its
        dead slots every time).
        """
        self.spans.pop(span.id, None)
        recent = self.recent
        recent[span.id] = span
        if len(recent) >= MAX_RECENT:
            dropped, self.older, self.recent = self.older, recent, {}
            for old in list(dropped.values()):
                old.parent = None  # let long chains be collected

    # --- errors ---------------------------------------------------------------------------

    def new_error(
        self, span: Span, exc: BaseException, where: str, span_id: str | None
    ) -> dict[str, Any] | None:
        """Return a pending error record for ``exc``, or ``None`` if already recorded.

        The record keeps ``exc`` itself while it is pending: a step retried for it is
        told its failure by that object (see :meth:`recover`).
        """
        if first_report(exc, span.trace_id, lineage_of(span)) is False:
            return None
        data = describe_exception(exc)
        data["where"] = where
        return {"data": data, "owner": span, "span_id": span_id, "parent": span.parent_anchor,
                "exc": exc}

    def emit_error(self, entry: dict[str, Any], recovery: str | None = None) -> None:
        """Record a pending error, with how it was recovered from if it was."""
        data = entry["data"]
        if recovery is not None:
            data["recovery_action"] = recovery
        self.emit(
            "error",
            entry["owner"],
            level="warning" if recovery is not None else "error",
            name=data.get("type"),
            data=data,
            span_id=entry["span_id"],
            parent=entry["parent"],
        )

    def hand_up(self, span: Span, entries: list[dict[str, Any]]) -> None:
        """Pass errors of a failed span to its parent, or record them at a root."""
        parent = span.parent
        if parent is not None and parent.id in self.spans:
            if parent.pending is None:
                parent.pending = []
            parent.pending.extend(entries)
            return
        for entry in entries:
            self.emit_error(entry)

    def recover(self, span: Span, exc: BaseException, recovery: str) -> None:
        """Record now, as recovered by ``recovery``, the error of ``exc`` pending in
        ``span`` (if it is there): the work it failed is being done again."""
        pending = span.pending
        if pending:
            for i, entry in enumerate(pending):
                if entry["exc"] is exc:
                    del pending[i]
                    self.emit_error(entry, recovery)
                    return

    def settle(self, span: Span, recovery: str, tool_recovery: str | None = None) -> None:
        """A span ended normally: the errors below it were handled (``tool_recovery``
        says how, for errors that failed a tool call, if it differs)."""
        pending, span.pending = span.pending, None
        if pending:
            for entry in pending:
                failed_tool = tool_recovery is not None and entry.get("failed_tool", False)
                self.emit_error(entry, tool_recovery if failed_tool else recovery)

    # --- bounded LLM bookkeeping ----------------------------------------------------------

    def open_llm(self, call: LLMCall) -> None:
        """Track a started LLM call, closing the oldest as abandoned past the bound."""
        self.llm[call.span_id] = call
        if len(self.llm) > MAX_OPEN_LLM:
            with self.lock:
                try:
                    oldest = self.llm.pop(next(iter(self.llm)))
                except (KeyError, StopIteration, RuntimeError):
                    return
            if not oldest.recorded:
                return
            self.emit(
                "llm_call",
                oldest,
                phase="end",
                level="warning",
                name=oldest.model or oldest.provider,
                data={"status": "abandoned", "reason": "never finished (evicted)"},
                span_id=oldest.span_id,
                parent=oldest.parent_anchor,
            )


def _frame_of(gen: Any) -> Any:
    return getattr(gen, "gi_frame", None) or getattr(gen, "ag_frame", None)


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (a ``time.perf_counter()`` value)."""
    return round((time.perf_counter() - started) * 1000, 3)
