"""The background half of capture: queue -> middleware chain -> ledger.

The caller's thread only appends a finished :class:`AuditEvent` to an in-memory queue
(:meth:`Pipeline.submit`). One writer thread drains the queue in batches, runs the
middleware chain (redaction first) and appends each batch to the store in one
transaction. Nothing is dropped silently:

* the queue is bounded; a full queue makes ``submit`` wait for room (back-pressure).
  Only with a ``block_timeout`` may an event be given up, and then it is counted and a
  gap record naming the number lost is written;
* a failing store is retried with exponential backoff for as long as it takes;
  ``flush(timeout)`` reports whether everything before it became durable, and at
  shutdown whatever still cannot be written goes to a dead-letter JSON-lines file;
* a middleware that raises does not let the raw event through: its data and metadata
  are withheld and the reason is recorded instead (fail closed).
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

import orjson

from tracevault import dead_letters
from tracevault.callback_wire import shippable
from tracevault.ids import uuid7
from tracevault.ledger import encode_event
from tracevault.replay import Later
from tracevault.schema import AuditEvent
from tracevault.snapshot import Deferred, make_data, snapshot, thaw
from tracevault.store import StoreError, open_store

log = logging.getLogger("tracevault")


class Middleware(Protocol):
    """A step between capture and the ledger, run on the writer thread.

    Return the event (the same object, changed, or a new one) to keep it, or ``None``
    to drop it on purpose (counted as ``filtered``). Raising withholds the event's
    payload: it is stored with a marker and the reason, never raw.
    """

    def __call__(self, event: AuditEvent, /) -> AuditEvent | None: ...


class Appender(Protocol):
    """What the writer needs of a store: every :class:`~tracevault.store.Store` is one,
    and so is :class:`tracevault.sidecar.SidecarStore`, which only appends."""

    url: str

    def append(self, events: Sequence[Any], /) -> int:
        """Append AuditEvents (or, for a store that ``applies_middleware``, the items
        :func:`tracevault.capture.emit` queued, turned into events by :func:`event_of`)."""
        ...

    def close(self) -> None: ...


# What capture.emit queues: an event's fields in AuditEvent order, with the time as Unix
# nanoseconds (or the datetime the caller gave), the event id still None (the writer
# gives it, see settled) and span ids possibly UUIDs. The writer thread turns it into an
# AuditEvent (event_of), so the caller's thread does not build the dataclass; a store
# that applies the middleware itself (tracevault.sidecar) takes it settled but as it is.
Captured = tuple[Any, ...]
Item = AuditEvent | Captured
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_STOP_WAIT = 5.0  # seconds shutdown waits for a writer whose flush timed out


def timestamp_of(ts: datetime | int) -> datetime:
    """Return the time of a captured item (Unix nanoseconds, or a datetime as given)."""
    return ts if isinstance(ts, datetime) else _EPOCH + timedelta(microseconds=ts // 1000)


def settled(item: Item) -> Item:
    """Return ``item`` with what the caller left to the writer: its event id, and its
    data if deferred (see :class:`~tracevault.snapshot.Deferred`). Each item is settled
    once, as it leaves the queue, so a batch sent again after a failure keeps its ids
    (appends are idempotent by id) and deferred data is made once, in queue order."""
    if item.__class__ is not tuple:
        return item
    if item[14].__class__ is Deferred:
        return (item[0] or uuid7(), *item[1:14], _made(item[14]))
    if item[0] is None:
        return (uuid7(), *item[1:])
    return item


def event_of(item: Item) -> AuditEvent:
    """Return the event a queued item stands for (settling it first if needed)."""
    if item.__class__ is AuditEvent:
        return item
    (event_id, ts, kind, phase, level, name, session, user, trace, span, parent, framework,
     tags, metadata, data) = item  # type: ignore[misc]
    if data.__class__ is Deferred:
        data = _made(data)
    return AuditEvent(event_id or uuid7(), timestamp_of(ts), kind, phase, level, name,
                      session, user, trace, _span_str(span), _span_str(parent), framework,
                      tags, metadata, data)


def _id_of(item: Item) -> str | None:
    return item.event_id if isinstance(item, AuditEvent) else item[0]


def _made(deferred: Deferred) -> Any:
    return make_data(deferred.make, deferred.raw, deferred.context)


def _span_str(span: Any) -> str | None:
    # Handlers may pass a run's UUID: its string is made here, off the caller's thread.
    return span if span is None or span.__class__ is str else str(span)


WITHHELD_ID = "[WITHHELD]"  # a session or user id withheld with its event's payload


class DurabilityError(RuntimeError):
    """An event that had to be durable before continuing (strict mode) is not."""


@dataclass(slots=True)
class PipelineStats:
    """Counters of one pipeline. In every snapshot
    ``captured == written + filtered + pending + dropped + dead_lettered``, and
    ``captured`` never decreases.

    ``captured`` counts the events captured and the gap records the pipeline adds for
    events it had to drop (written or dead-lettered like the others). ``pending`` is
    what is still to be written: queued, or in the batch being written. A framework
    callback queued for the writer (:class:`~tracevault.replay.Later`) counts as one
    event, in ``captured`` and ``pending`` (or ``dropped``, if given up), until the
    writer has run it: how many events it records is known only then. From then on it
    counts as the events it recorded, or as one ``filtered`` if it recorded none (below
    the level, say). ``withheld`` events are written (with their payload withheld) and
    so are also counted in ``written``; ``dropped`` includes events that could reach
    neither the ledger nor the dead-letter file.
    """

    captured: int
    written: int
    filtered: int
    withheld: int
    dropped: int
    dead_lettered: int
    write_errors: int
    pending: int
    last_error: str | None


class _Marker:
    """A queue item that is signalled once everything queued before it is handled."""

    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = True


_live: weakref.WeakSet[Pipeline] = weakref.WeakSet()


class Pipeline:
    """Owns the queue, the writer thread and the store of one configuration.

    The writer lingers up to ``linger`` seconds after the first event of a burst so that
    a burst becomes one transaction; ``flush()``, or ``burst`` events waiting, cut the
    wait short. A batch holds at most ``burst`` events, or ``batch_size`` while a flush
    or shutdown waits.

    Each time the writer lets go of the GIL (waiting, a system call, an SQLite statement
    step) and takes it back from a busy agent thread, that thread loses far more than
    the writer's work (about 0.25 ms on the 2-vCPU VM of the README's figures, against
    12–20 µs of work per event). So a batch has as few of those hand-overs as possible,
    and fewer, larger batches are cheaper; but the writer holds the GIL through a
    batch's middleware and encoding, so a large batch stalls the agent for as long.
    25 ms and 64 events keep both small (see the README).
    """

    def __init__(
        self,
        store: Appender | str,
        *,
        middleware: Sequence[Middleware] = (),
        queue_size: int = 100_000,
        batch_size: int = 4_096,
        block_timeout: float | None = None,
        dead_letter_path: str | None = None,
        linger: float = 0.025,
        burst: int = 64,
        owns_store: bool | None = None,
    ) -> None:
        self._store: Appender | None = store if not isinstance(store, str) else None
        self._store_url = store if isinstance(store, str) else store.url
        # A store opened from a URL (here or by configure()) is closed at shutdown.
        self._owns_store = isinstance(store, str) if owns_store is None else owns_store
        self.middleware: list[Middleware] = list(middleware)
        self._queue: deque[Item | Later | _Marker] = deque()
        self._maxsize = queue_size
        self._batch_size = batch_size
        self._block_timeout = block_timeout
        self._dead_letter_path = dead_letter_path or dead_letters.default_path()
        self._wake = threading.Event()
        # Set by flush()/shutdown(): write now rather than linger for a fuller batch.
        self._urgent = threading.Event()
        self._linger = linger
        if burst < 1 or batch_size < 1:
            raise ValueError("burst and batch_size must be at least 1")
        # A queue smaller than a burst would never fill one: each batch would linger.
        self._burst = min(burst, batch_size, queue_size)
        self._flushes = 0  # flush() calls whose marker the writer has not reached yet
        self._flush_lock = threading.Lock()
        self._shutdown_lock = threading.Lock()
        self._space = threading.Condition(threading.Lock())
        self._waiting = 0
        self._stop = threading.Event()
        self._closed = False
        # Items leave the queue and are counted in _received in one step (see stats()).
        self._moving = threading.Lock()
        self._received = 0  # what left the queue, and gap records (see PipelineStats)
        self._written = 0
        self._filtered = 0
        self._withheld = 0
        self._dropped = 0
        self._unreported_drops = 0
        self._unreported_callbacks = 0  # of those, deferred callbacks (see replay)
        self._dead_lettered = 0
        self._lost = 0  # could reach neither the ledger nor the dead-letter file
        self._write_errors = 0
        self._last_error: str | None = None
        self._pending: list[Item] = []  # taken from the queue, not yet durable
        # Set when shutdown gave up waiting for the writer and empties the queue itself:
        # the writer takes nothing more, so no two threads run deferred callbacks at once.
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name="tracevault-writer", daemon=True)
        self._thread.start()
        _live.add(self)
        _shut_down_before_multiprocessing_exits()

    @property
    def store_url(self) -> str:
        return self._store_url

    @property
    def dead_letter_path(self) -> str:
        """The file events that cannot reach the ledger are saved to (see shutdown)."""
        return self._dead_letter_path

    # --- caller side ------------------------------------------------------------------

    def submit(self, event: Item | Later) -> None:
        """Queue ``event`` (or what :func:`tracevault.capture.emit` captured, or a
        callback the writer runs: :class:`~tracevault.replay.Later`) for the ledger.
        Waits only when the queue is full."""
        if self._closed:  # e.g. a daemon thread still capturing after interpreter exit began
            self._dropped += 1
            if self._dropped <= 10:
                log.error("tracevault: an event was captured after shutdown and is lost")
            return
        if len(self._queue) >= self._maxsize and not self._wait_for_room():
            self._dropped += 1  # only with block_timeout; reported as a gap record
            self._unreported_drops += 1
            if event.__class__ is Later:
                self._unreported_callbacks += 1
            return
        queue = self._queue
        queue.append(event)
        if not self._wake.is_set():
            self._wake.set()
        elif len(queue) >= self._burst and not self._urgent.is_set():
            # A full burst: write it now rather than linger on (">=": a submit on
            # another thread may have stepped past the exact count).
            self._urgent.set()

    def submit_durable(self, event: Item | Later, timeout: float) -> None:
        """Queue ``event`` and return once it (or what it records) is in the ledger;
        raise otherwise."""
        self.submit(event)
        if not self.flush(timeout):
            what = "a callback's events" if isinstance(event, Later) else f"event {_id_of(event)}"
            raise DurabilityError(
                f"tracevault could not make {what} durable in "
                f"{timeout:g}s: "
                f"{self._current_error() or 'the ledger writer is behind'}"
            )

    def _wait_for_room(self) -> bool:
        deadline = None if self._block_timeout is None else time.monotonic() + self._block_timeout
        with self._space:
            self._waiting += 1
            try:
                while len(self._queue) >= self._maxsize and not self._closed:
                    self._wake.set()
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._space.wait(remaining if remaining is not None else 1.0)
            finally:
                self._waiting -= 1
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event submitted before this call is durable (or dropped on
        purpose by middleware). Return ``False`` if that did not happen in ``timeout``."""
        if not self._thread.is_alive():
            return not self._queue and not self._pending
        if threading.current_thread() is self._thread:
            return False  # called from middleware: waiting for ourselves would deadlock
        marker = _Marker()
        with self._flush_lock:
            self._flushes += 1
        self._queue.append(marker)
        self._urgent.set()
        self._wake.set()
        return marker.done.wait(timeout) and marker.ok

    def stats(self) -> PipelineStats:
        """Return a snapshot of the counters (cheap; any thread): what is still
        ``pending`` is what was captured and is not yet written, filtered or lost."""
        # A store that runs the middleware itself (tracevault.sidecar) counts what it
        # filtered and withheld; the filtered ones were handed over but not written.
        redacting_store = self._store if self.store_applies_middleware else None
        filtered_there = getattr(redacting_store, "filtered", 0)
        # Deferred callbacks the store ran (a writer process interprets them): each was
        # counted as one event written, and stands for the events it recorded, or for
        # one filtered if it recorded none.
        ran, made, empty = getattr(redacting_store, "callback_counts", (0, 0, 0))
        # What is done is read before what came in: an event is captured before it is
        # written, filtered or lost, so none is counted done and not captured.
        written = self._written + made - ran - filtered_there
        filtered = self._filtered + filtered_there + empty
        dropped = self._dropped  # on both sides of the sum: read once
        lost = self._lost
        dead_lettered = self._dead_lettered
        with self._moving:
            queue, received = list(self._queue), self._received
        captured = (received + made - ran + empty + dropped
                    + sum(1 for item in queue if item.__class__ is not _Marker))
        return PipelineStats(
            captured=captured,
            written=written,
            filtered=filtered,
            withheld=self._withheld + getattr(redacting_store, "withheld", 0),
            dropped=dropped + lost,
            dead_lettered=dead_lettered,
            write_errors=self._write_errors + getattr(self._store, "write_errors", 0),
            pending=captured - written - filtered - dropped - lost - dead_lettered,
            last_error=self._current_error(),
        )

    def queued_callbacks(self) -> list[Later]:
        """The deferred callbacks still queued (for a forked child: see
        :func:`tracevault.capture.get_pipeline`)."""
        return [item for item in list(self._queue) if item.__class__ is Later]

    def _current_error(self) -> str | None:
        # The writer's own, else the one a writer process reports while it retries.
        return self._last_error or getattr(self._store, "last_error", None)

    def shutdown(self, timeout: float | None = 30.0) -> PipelineStats:
        """Flush, stop the writer and close the store it opened. Idempotent.

        Events that still cannot be written after ``timeout`` are appended to the
        dead-letter file (one JSON event per line) and counted as ``dead_lettered``.
        """
        # One shutdown at a time: a second caller (another thread, atexit) returns only
        # once the first has written or dead-lettered everything.
        with self._shutdown_lock:
            if not self._closed:
                self._shut_down(timeout)
        return self.stats()

    def _shut_down(self, timeout: float | None) -> None:
        flushed = self.flush(timeout)
        self._closed = True
        self._stop.set()
        self._urgent.set()
        self._wake.set()
        with self._space:
            self._space.notify_all()
        self._thread.join(timeout if flushed else _STOP_WAIT)
        if self._thread.is_alive():
            # Still inside a store call (a long lock wait, a dead TCP peer, a writer
            # process retrying its ledger): that batch may yet commit, so neither
            # dead-letter it nor close the store under it. What was never handed over
            # goes to the dead-letter file now, or it would be lost at exit.
            with self._moving:
                self._abandoned = True
            queued = self._take_queued()
            log.error("tracevault: the ledger writer did not stop in time; %d events are "
                      "still being written, %d queued ones are dead-lettered",
                      len(self._pending), len(queued))
            self._dead_letter(queued)
        else:
            self._dead_letter_rest()
            if self._owns_store and self._store is not None:
                self._store.close()
        _live.discard(self)

    # --- writer side ------------------------------------------------------------------

    def _run(self) -> None:
        queue = self._queue
        behind = False  # the last batch was full: what waits is written without lingering
        while True:
            if self._abandoned:  # shutdown empties the queue itself
                return
            if not queue:
                if self._stop.is_set():
                    return
                self._wake.clear()
                if not queue:
                    self._wake.wait(0.5)
                continue
            # Someone waits in flush() or shutdown(): write what is queued at once, in
            # batches as large as allowed. Otherwise a batch is one burst, so the GIL
            # is never held for long (see the class).
            waited_for = self._flushes or self._stop.is_set()
            if (not behind and not waited_for and len(queue) < self._burst
                    and not self._urgent.is_set()):
                # Events of one agent step arrive in bursts: lingering turns a burst
                # into one batch and one transaction instead of one per event.
                self._urgent.wait(self._linger)
            self._urgent.clear()
            # A store that applies the middleware itself takes the items as they are.
            raw = self.store_applies_middleware
            # A writer process interprets the callbacks it can (tracevault.callback_wire).
            ships = getattr(self._store, "interprets_callbacks", False)
            batch: list[Item | Later] = []
            markers: list[_Marker] = []
            limit = self._batch_size if waited_for else self._burst
            # A flush marker ends the batch: everything queued before it is in the batch.
            while queue and len(batch) < limit and not markers and not self._abandoned:
                for item in self._take(limit - len(batch), writer=True):
                    if item.__class__ is _Marker:  # (always the last one taken)
                        markers.append(item)
                        with self._flush_lock:
                            self._flushes -= 1
                    elif item.__class__ is Later:  # a callback: its events, in place
                        if ships and shippable(item):
                            batch.append(item)
                            continue
                        for made in self._run_later(item):
                            batch.append(settled(made) if raw else event_of(made))
                    else:
                        batch.append(settled(item) if raw else event_of(item))  # type: ignore[arg-type]
            behind = len(batch) >= limit  # (a deferred callback may add several)
            if self._waiting:
                with self._space:
                    self._space.notify_all()
            try:
                ok = self._process(batch)
            except Exception as exc:  # a bug must not stop the writer: save and go on
                log.critical("tracevault: writer failed on a batch: %r", exc, exc_info=True)
                self._last_error = f"writer failed: {type(exc).__name__}"
                # Pending events went through middleware; if it never ran, nothing of the
                # batch may reach the dead-letter file unredacted.
                reason = f"the ledger writer failed before redaction ({type(exc).__name__})"
                self._dead_letter(self._pending or [
                    _withhold(event_of(e), reason) for e in self._interpreted(batch)])
                self._pending = []
                ok = False
            for marker in markers:
                marker.ok = ok
                marker.done.set()
            if not ok and self._stop.is_set():  # stopping: shutdown dead-letters the rest
                return

    @property
    def store_applies_middleware(self) -> bool:
        """Whether the store runs the middleware itself: the writer process does
        (:mod:`tracevault.sidecar`), so this pipeline hands events over unredacted."""
        return bool(getattr(self._store, "applies_middleware", False))

    def _process(self, batch: list[Item]) -> bool:
        events: list[Item]
        if self.store_applies_middleware:
            # The store's own writer process redacts (tracevault.sidecar): this thread
            # only hands the batch over, holding the GIL as little as possible.
            events = batch
        else:
            events = [e for e in (self._apply_middleware(event_of(ev)) for ev in batch)
                      if e is not None]
        events.extend(self._gap_records())
        self._pending = events
        ok = self._write(events)
        if ok:  # on failure (only when stopping) shutdown dead-letters what is pending
            self._pending = []
        return ok

    def _apply_middleware(self, event: AuditEvent) -> AuditEvent | None:
        result, outcome = apply_middleware(self.middleware, event)
        if outcome == "withheld":
            self._withheld += 1
        elif outcome == "filtered":
            self._filtered += 1
        return result

    def _gap_records(self) -> list[AuditEvent]:
        """Return a gap record for the events dropped since the last one, if any (it
        counts as captured: see PipelineStats)."""
        with self._moving:  # (the writer and a shutdown may both be here)
            lost, self._unreported_drops = self._unreported_drops, 0
            callbacks, self._unreported_callbacks = self._unreported_callbacks, 0
            if lost:
                self._received += 1
        if not lost:
            return []
        what = f"{lost} events were not recorded"
        if callbacks:  # a framework callback queued for the writer makes one or more events
            what = (f"{lost - callbacks} events and the events of {callbacks} framework "
                    "callbacks were not recorded")
        return [AuditEvent(
            event_id=uuid7(),
            timestamp=datetime.now(timezone.utc),
            kind="error",
            level="error",
            name="tracevault.queue_full",
            data={
                "type": "tracevault.EventsDropped",
                "message": f"{what}: the capture queue stayed full longer than "
                f"block_timeout={self._block_timeout}s",
                "where": "tracevault.pipeline",
            },
        )]

    def _kept_out(self) -> int:
        """How many events went to the dead-letter file or were lost so far."""
        return self._dead_lettered + self._lost

    def _write(self, events: list[Item]) -> bool:
        """Write ``events``, retrying; return whether all of them are in the ledger
        (``False`` if any had to be dead-lettered, or when stopping)."""
        if not events:
            return True
        delay = 0.05
        kept_out_before = self._kept_out()
        while True:
            try:
                store = self._ensure_store()
                store.append(events)
                self._written += len(events)
                if self._last_error is not None:
                    log.warning("tracevault: ledger writes recovered")
                    self._last_error = None
                return self._kept_out() == kept_out_before
            except Exception as exc:  # keep the events; back off; try again
                self._write_errors += 1
                if not isinstance(exc, StoreError) and self._store is not None:
                    # Not the store being unavailable but an event it cannot take: find
                    # it, save it to the dead-letter file, and write the rest.
                    events = self._without_poison(events)
                    # What is left to write: the rest is written or dead-lettered, and a
                    # shutdown must not dead-letter it again.
                    self._pending = events
                    if not events:  # durable only if none had to be dead-lettered
                        return self._kept_out() == kept_out_before
                message = (
                    str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"
                )
                if message != self._last_error:
                    log.error("tracevault: cannot write to the ledger, retrying: %s", message)
                self._last_error = message
                # Back off, but a flush() (someone waiting, e.g. a strict-mode tool) or
                # shutdown cuts the wait short and gets an immediate retry.
                self._urgent.wait(delay * (0.5 + random.random()))
                self._urgent.clear()
                if self._stop.is_set():
                    return False
                delay = min(delay * 2, 5.0)

    def _without_poison(self, events: list[Item]) -> list[Item]:
        """Return the events the store accepts one by one (``[]`` once all are handled);
        events it rejects with a non-store error go to the dead-letter file."""
        assert self._store is not None
        rest = list(events)
        while rest:
            event = rest[0]
            try:
                self._store.append([event])
            except StoreError:
                return rest  # the store itself is failing now: retry what is left
            except Exception as exc:
                log.error("tracevault: event %s cannot be stored (%s); dead-lettered",
                          event_of(event).event_id, type(exc).__name__)
                self._dead_letter([event])
            else:
                self._written += 1
            rest.pop(0)
        return rest

    def _ensure_store(self) -> Appender:
        if self._store is None:
            self._store = open_store(self._store_url)
        return self._store

    def _dead_letter_rest(self) -> None:
        rest: list[Item] = list(self._pending)  # through middleware (see _dead_letter)
        self._pending = []
        self._dead_letter(rest + self._take_queued())

    def _take(self, room: int, *, writer: bool = False) -> list[Item | Later | _Marker]:
        """Remove up to ``room`` items from the queue (``[]`` if it is empty, or for the
        ``writer`` once shutdown has taken over) and count them as received in the same
        step, so that stats() sees each either queued or received. Stops after a flush
        marker, and after a callback: the writer runs it before it takes what follows."""
        taken: list[Item | Later | _Marker] = []
        queue = self._queue
        with self._moving:
            while queue and len(taken) < room and not (writer and self._abandoned):
                item = queue.popleft()
                taken.append(item)
                if item.__class__ is _Marker:
                    self._received += len(taken) - 1
                    return taken
                if item.__class__ is Later:
                    break
            self._received += len(taken)
        return taken

    def _run_later(self, item: Later) -> list[Item]:
        """Run a callback taken from the queue and return what it recorded; counted
        as one event until now, it counts from now on as those events (or as one
        filtered if it recorded none: see PipelineStats)."""
        made = item.run()
        with self._moving:  # (the writer and a shutdown may both be counting)
            if made:
                self._received += len(made) - 1
            else:
                self._filtered += 1
        return made

    def _take_queued(self) -> list[Item]:
        """Empty the queue (a writer still running may take some) and return its events
        for the dead-letter file, releasing flush() callers; with a gap record for drops
        none has reported yet, since the writer will not write one now."""
        rest: list[Item] = []
        while taken := self._take(len(self._queue)):
            for item in taken:
                if isinstance(item, _Marker):  # release flush() callers: not durable
                    item.ok = False
                    item.done.set()
                    with self._flush_lock:
                        self._flushes -= 1
                    continue
                for made in self._run_later(item) if isinstance(item, Later) else (item,):
                    if self.store_applies_middleware:
                        rest.append(made)  # _dead_letter redacts these with the pending ones
                    else:  # redact before anything touches the disk
                        processed = self._apply_middleware(event_of(made))
                        if processed is not None:
                            rest.append(processed)
        rest.extend(self._gap_records())
        return rest

    def _interpreted(self, items: Sequence[Item | Later]) -> list[Item]:
        """``items`` with the callbacks handed to a writer process but never written
        run here instead (for the dead-letter file)."""
        return interpret(items, self._run_later)[0]

    def _dead_letter(self, items: Sequence[Item | Later]) -> None:
        rest = [event_of(item) for item in self._interpreted(items)]
        if rest and self.store_applies_middleware:
            # Events meant for a store that redacts them itself have not been redacted
            # here yet, and nothing reaches the disk unredacted.
            rest = [e for e in (self._apply_middleware(ev) for ev in rest) if e is not None]
        if not rest:
            return
        try:
            dead_letters.append(self._dead_letter_path, [_dead_letter_line(e) for e in rest])
            self._dead_lettered += len(rest)
            log.error(
                "tracevault: %d events could not reach the ledger and were saved to %s",
                len(rest),
                self._dead_letter_path,
            )
        except OSError as exc:
            self._lost += len(rest)  # counted as dropped: nothing of them was kept
            log.critical("tracevault: %d events lost, dead-letter file failed: %s", len(rest), exc)


def apply_middleware(
    steps: Sequence[Middleware], event: AuditEvent
) -> tuple[AuditEvent | None, str]:
    """Thaw ``event`` and pass it through ``steps``; never raises.

    Returns the event to keep (``None`` if a step dropped it) and what happened:
    ``"kept"``, ``"filtered"`` or ``"withheld"`` (a step raised, or returned something
    that is not an event: the payload is replaced by a marker, never kept raw).
    """
    _thaw(event)
    current: AuditEvent | None = event
    for step in steps:
        try:
            current = step(current)  # type: ignore[arg-type]
            if current is not None and not isinstance(current, AuditEvent):
                # (an event's dict, say): what the writer cannot store must not stop it
                raise TypeError(f"returned {type(current).__name__}, not an AuditEvent or None")
        except Exception as exc:
            # The stored reason names the step and the error type only: an exception
            # message may quote the very data that was to be redacted.
            log.error("tracevault: middleware %s failed; payload withheld: %r", _name(step), exc)
            # A step that redacts the ids (a strict redactor) may not have run on them.
            hide_ids = any(getattr(s, "redacts_ids", False) for s in steps)
            return (_withhold(event, f"{_name(step)} failed: {type(exc).__name__}", hide_ids),
                    "withheld")
        if current is None:
            return None, "filtered"
    return current, "kept"


def _dead_letter_line(event: AuditEvent) -> bytes:
    try:
        return encode_event(event) + b"\n"
    except Exception:  # whatever broke the writer may break encoding too: keep the rest
        plain = snapshot({**event.to_dict(), "data": {"withheld": True}, "metadata": {}})
        return orjson.dumps(plain) + b"\n"


def _thaw(event: AuditEvent) -> AuditEvent:
    # Payloads arrive frozen from the caller's thread (see snapshot.freeze).
    event.data = thaw(event.data)
    event.metadata = thaw(event.metadata)
    return event


def _withhold(event: AuditEvent, reason: str, hide_ids: bool = False) -> AuditEvent:
    withheld = replace(
        event,
        name=None,  # names, tags and metadata are free text too: withheld with the payload
        metadata={},
        tags=[],
        data={"withheld": True, "reason": reason},
    )
    if hide_ids:  # the policy redacts them, and redaction did not happen
        withheld.session_id = WITHHELD_ID if event.session_id is not None else None
        withheld.user_id = WITHHELD_ID if event.user_id is not None else None
    return withheld


def _name(step: Callable[..., object]) -> str:
    return getattr(step, "__qualname__", None) or type(step).__name__


def _shutdown_all() -> None:
    for pipeline in list(_live):
        try:
            pipeline.shutdown(timeout=10.0)
        except Exception as exc:  # at exit, report and carry on with the others
            log.error("tracevault: shutdown failed: %s", exc)


atexit.register(_shutdown_all)
# A forked child must not shut down (and dead-letter) its parent's pipelines at exit.
os.register_at_fork(after_in_child=_live.clear)
_finalizer_pid = 0  # the process whose multiprocessing exit shuts the pipelines down


def _shut_down_before_multiprocessing_exits() -> None:
    # A multiprocessing child leaves through os._exit: atexit never runs there, and a
    # daemon writer thread would die with its queue full. multiprocessing runs its own
    # exit finalizers first (registered here, in the child: it clears the parent's).
    global _finalizer_pid
    util = sys.modules.get("multiprocessing.util")
    if util is None or _finalizer_pid == os.getpid():
        return
    _finalizer_pid = os.getpid()
    util.Finalize(None, _shutdown_all, exitpriority=10)


def interpret(items: Sequence[Item | Later], run: Callable[[Later], list[Item]]
              ) -> tuple[list[Item], tuple[int, int, int]]:
    """``items`` with each deferred callback replaced by what ``run`` makes it record;
    and how many callbacks ran, the events they made, and how many made none (what
    PipelineStats counts a callback as: see ``SidecarStore.callback_counts``)."""
    out: list[Item] = []
    ran = made = empty = 0
    for item in items:
        if item.__class__ is Later:
            recorded = run(item)
            ran += 1
            made += len(recorded)
            empty += not recorded
            out.extend(recorded)
        else:
            out.append(item)
    return out, (ran, made, empty)


def dead_letter_events(path: str) -> list[AuditEvent]:
    """Read the events a pipeline saved to a dead-letter file (to re-append them):
    :func:`tracevault.dead_letters.read`, under the name it had first."""
    return dead_letters.read(path)
