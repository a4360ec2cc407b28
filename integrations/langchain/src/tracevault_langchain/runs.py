"""Bounded, thread-safe state of the runs a handler is recording, keyed by ``run_id``.

LangChain passes ``metadata`` (session, user, model) only to ``*_start`` callbacks and
the tree only as ``parent_run_id``, so each open run keeps what its later callbacks and
its children need. A run's state is added on start and removed on its end or error;
an abandoned stream still ends its runs (with ``GeneratorExit``), possibly after the
parent. Runs that never end (an async generator collected after its loop closed) are
evicted oldest-first once ``max_open`` runs are open, so memory stays bounded.

One table is shared by every handler in the process: the first handler to see a run
start owns it, so a run is recorded once even when two handlers are attached (the
auto-enabled one and one the user passed).
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from tracevault.context import SpanRef, current_span
from tracevault.snapshot import first_report as snapshot_first_report
from tracevault.snapshot import mark_reported

DEFAULT_MAX_OPEN = 50_000
_MAX_TRACKED = 1_000  # per trace: reported exceptions and failed tool calls remembered
# A recorded run's span id is its run_id, kept as the UUID: the ledger writer makes the
# string (str() of a UUID is slow Python code, run twice for every event otherwise).
# Spans that come from outside (an enclosing AuditLogger or LlamaIndex span) are str.
SpanId = str | UUID


@dataclass(slots=True)
class FailedTool:
    """A failed run (a tool call, a retried attempt) whose recovery may follow."""

    span: SpanId | None  # where its error was recorded (None: in no recorded run)
    name: str
    error_type: str
    message: str
    recovered: bool = False  # a recovery was recorded for it


@dataclass(slots=True)
class Trace:
    """What one root run accumulates over its whole tree (updated from many threads)."""

    trace_id: str
    root_run_id: UUID
    lock: threading.Lock = field(default_factory=threading.Lock)
    tokens: int = 0
    cost: float | None = None
    unpriced_tokens: int = 0  # of models the price table lacks: not in ``cost``
    model: str | None = None
    # Exceptions already recorded that could not be marked (see first_report), kept
    # alive so their id() cannot be reused by a later exception, with their reports.
    reported: dict[int, tuple[BaseException, dict[str, list[tuple[str, ...]]]]] = field(
        default_factory=dict)
    failed_tools: dict[str, FailedTool] = field(default_factory=dict)  # by tool_call_id
    # by parent span and name: what a retry (the same runnable again) looks up
    last_failure: dict[tuple[SpanId | None, str], FailedTool] = field(default_factory=dict)
    # Runs of this trace still open (keys in the run table), the root's included.
    open: set[int] = field(default_factory=set)
    # Failures by the key of the run they happened in: settled if that run succeeds.
    failed_under: dict[int, list[FailedTool]] = field(default_factory=dict)
    # LangGraph reports one resume once per graph level it goes down: recorded once.
    resumed: bool = False

    def add_usage(self, model: str | None, tokens: int, cost: float | None) -> None:
        """Add one model call's tokens and cost to the run's totals."""
        with self.lock:
            self.tokens += tokens
            if cost is not None:
                self.cost = (self.cost or 0.0) + cost
            else:
                self.unpriced_tokens += tokens
            if model:
                self.model = model

    def first_report(self, exc: BaseException, lineage: tuple[str, ...]) -> bool:
        """Return True the first time ``exc`` is reported from where it failed in this
        trace (errors bubble up: ``lineage`` is the reporting run's span id and its
        ancestors'); see :func:`tracevault.snapshot.first_report`."""
        with self.lock:
            first = snapshot_first_report(exc, self.trace_id, lineage)
            if first is not None:
                return first
            # An exception that refuses attributes: kept here (alive, so its id() cannot
            # be reused by a later exception).
            known = self.reported.get(id(exc))
            if known is None or known[0] is not exc:
                if len(self.reported) >= _MAX_TRACKED:
                    return True
                known = self.reported[id(exc)] = (exc, {})
            return mark_reported(known[1], self.trace_id, lineage)

    def tool_failed(self, tool_call_id: str, failed: FailedTool) -> None:
        """Remember a failed tool call until the model is shown its error."""
        with self.lock:
            if len(self.failed_tools) < _MAX_TRACKED:
                self.failed_tools[tool_call_id] = failed

    def run_failed(self, parent_span: SpanId | None, name: str, failed: FailedTool,
                   parent_key: int | None) -> None:
        """Remember the last failed run ``name`` under ``parent_span`` (a retry may
        follow: the same runnable again, under the same parent), and under the run it
        happened in (``parent_key``: that run may carry on and succeed)."""
        key = (parent_span, name)
        with self.lock:
            if len(self.last_failure) < _MAX_TRACKED or key in self.last_failure:
                self.last_failure[key] = failed
            if parent_key is not None and len(self.failed_under) < _MAX_TRACKED:
                self.failed_under.setdefault(parent_key, []).append(failed)

    def take_last_failure(self, parent_span: SpanId | None, name: str) -> FailedTool | None:
        """Remove and return the last failed run ``name`` under ``parent_span`` that has
        no recovery yet (the caller records one)."""
        with self.lock:
            failed = self.last_failure.pop((parent_span, name), None)
            if failed is None or failed.recovered:
                return None
            failed.recovered = True
            return failed

    def take_failed_under(self, run_key: int) -> list[FailedTool]:
        """Remove and return the failures inside run ``run_key`` that have no recovery
        yet (the caller records one: the run carried on)."""
        with self.lock:
            failures = [f for f in self.failed_under.pop(run_key, ()) if not f.recovered]
            for failed in failures:
                failed.recovered = True
            return failures

    def take_failed(self, tool_call_ids: list[str]) -> list[tuple[str, FailedTool]]:
        """Remove and return the failed calls among ``tool_call_ids``."""
        with self.lock:
            return [
                (cid, self.failed_tools.pop(cid)) for cid in tool_call_ids
                if cid in self.failed_tools
            ]


@dataclass(slots=True)
class RunState:
    """One open run: where it sits in the tree and what its end callback needs."""

    owner: int  # id() of the handler recording it
    kind: str  # agent, chain, llm_call, tool_call, retrieval
    name: str
    span: SpanId | None  # span id events of this run carry (None: a hidden run)
    parent_span: SpanId | None  # nearest recorded ancestor's span id
    trace: Trace
    session_id: str | None
    user_id: str | None
    is_root: bool
    parent_key: int | None  # the parent run's key in the run table (recorded or not)
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    model: str | None = None
    tool_call_id: str | None = None
    query: str | None = None
    defers_inputs: bool = False
    interrupted: bool = False  # a LangGraph interrupt paused this run
    extra: dict[str, Any] | None = None
    key: int = 0  # its own key in the run table (run_id.int)

    @property
    def child_span(self) -> SpanId | None:
        """The span id children of this run hang under (hidden runs pass through)."""
        return self.span if self.span is not None else self.parent_span


class Seen:
    """What the caller's thread keeps of one open run (see :class:`Lineage`)."""

    __slots__ = ("ambient", "first_token", "root", "trace")

    def __init__(self, trace: SpanId, root: bool) -> None:
        self.trace = trace  # its trace id (a root's run_id, as the UUID)
        self.root = root  # the top of what the handlers see
        self.first_token: float | None = None  # when a model's stream said something
        # The span that was current before this tool made itself current (see handler).
        self.ambient: tuple[SpanRef | None] | None = None


class Lineage:
    """The open runs as the agent's thread sees them, callback by callback.

    The handler decides where a run hangs on the ledger writer (:class:`RunTable`,
    :mod:`tracevault.replay`); the caller's thread keeps only what cannot wait: whether
    a run is a root (its input and answer are copied then), the trace a tool runs in
    (code inside the tool records under it), and the first streamed token's time.
    Both follow the same callbacks in the same order, so they agree on the tree.
    """

    def __init__(self, max_open: int) -> None:
        self.max_open = max_open
        self._seen: dict[int, Seen] = {}

    def start(self, run_id: UUID, parent_run_id: UUID | None) -> Seen:
        """Note that ``run_id`` started; return what is kept of it (what the first
        handler to see it start noted, when several handlers are attached)."""
        seen = self._seen
        known = seen.get(run_id.int)
        if known is not None:
            return known
        parent = seen.get(parent_run_id.int) if parent_run_id is not None else None
        if parent is not None:
            run = Seen(parent.trace, False)
        else:
            ambient = current_span() if parent_run_id is None else None
            run = Seen(run_id if ambient is None else ambient.trace_id, True)
        if len(seen) >= self.max_open:  # runs that never ended: forget the oldest
            # (Another thread may change the dict meanwhile: then next time.)
            with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                del seen[next(iter(seen))]
        seen[run_id.int] = run
        return run

    def get(self, run_id: UUID) -> Seen | None:
        """What is kept of open run ``run_id``."""
        return self._seen.get(run_id.int)

    def end(self, run_id: UUID) -> Seen | None:
        """Forget ``run_id`` (it ended); return what was kept of it."""
        return self._seen.pop(run_id.int, None)

    def __len__(self) -> int:
        return len(self._seen)


class RunTable:
    """Open runs by ``run_id``, bounded in size; only eviction takes a lock.

    Runs are keyed by ``run_id.int``: ``uuid.UUID`` hashes and compares in Python code,
    which every lookup would run (four per run). ``lineage`` is the caller's-thread
    view of the same runs.
    """

    def __init__(self, max_open: int = DEFAULT_MAX_OPEN) -> None:
        self.max_open = max_open
        self._runs: dict[int, RunState] = {}
        self._lock = threading.Lock()
        self.evicted = 0
        self.lineage = Lineage(max_open)

    def __len__(self) -> int:
        return len(self._runs)

    def get(self, run_id: UUID) -> RunState | None:
        """Return the open run ``run_id`` (a dict read: atomic, no lock needed)."""
        return self._runs.get(run_id.int)

    def lineage_of(self, state: RunState) -> tuple[str, ...]:
        """The span ids of ``state``'s run and its open ancestors, nearest first, then
        what the topmost hangs under (another framework's step): where a failure it
        reports came from (see :meth:`Trace.first_report`)."""
        ids = [str(UUID(int=state.key))]
        top, key = state, state.parent_key
        while key is not None and len(ids) < 256:
            ids.append(str(UUID(int=key)))
            parent = self._runs.get(key)
            if parent is None:
                break
            top, key = parent, parent.parent_key
        if key is None and top.parent_span is not None:
            ids.append(str(top.parent_span))
        return tuple(ids)

    def claim(
        self, run_id: UUID, state: RunState
    ) -> tuple[bool, list[RunState] | tuple[()]]:
        """Add ``state`` unless another handler owns ``run_id``.

        Returns whether ``state`` was added and the runs evicted to make room for it.
        """
        runs = self._runs
        key = run_id.int
        if len(runs) < self.max_open:
            # setdefault is one atomic step under the GIL: no lock on the common path.
            current = runs.setdefault(key, state)
            if current is not state:
                if current.owner != state.owner:
                    return False, ()
                runs[key] = state  # the same handler saw this run start again
            state.trace.open.add(key)
            return True, ()
        evicted: list[RunState] = []
        with self._lock:
            owner = runs.get(key)
            if owner is not None and owner.owner != state.owner:
                return False, evicted
            while len(runs) >= self.max_open:
                try:
                    oldest = next(iter(runs))
                except RuntimeError:  # a lock-free insert or pop just changed the dict
                    continue
                old = runs.pop(oldest, None)
                if old is not None:
                    old.trace.open.discard(oldest)
                    evicted.append(old)
            runs[key] = state
            state.trace.open.add(key)
            self.evicted += len(evicted)
        return True, evicted

    def pop(self, run_id: UUID, owner: int) -> RunState | None:
        """Remove and return the run if ``owner`` records it; else leave it alone."""
        key = run_id.int
        state = self._runs.get(key)
        if state is None or state.owner != owner:
            return None
        state = self._runs.pop(key, None)  # atomic: a racing pop gets None
        if state is not None:
            state.trace.open.discard(key)
        return state

    def clear(self) -> None:
        """Forget every open run (tests; after a fork)."""
        with self._lock:
            self._runs.clear()
            self.lineage = Lineage(self.max_open)


RUNS = RunTable()
