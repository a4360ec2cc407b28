"""The sink contract and the :class:`Forwarder` that feeds a sink from the ledger.

The split follows the OpenTelemetry SDK: a *sink* is an exporter (I/O only: it turns a
batch of stored events into requests and raises if they were not accepted), and the
*forwarder* is the processor around it (ordering, batching, the background thread,
retries and the lifecycle: :meth:`Forwarder.force_flush`, :meth:`Forwarder.shutdown`).

Delivery is **at-least-once**: the forwarder reads the ledger in sequence order after
the sink's persisted cursor, hands a batch to the sink and moves the cursor past the
batch only once the sink returned. A failure, a crash or a kill between the two means
the batch is sent again, so every sink derives the ids it sends deterministically from
tracevault ids (event, span and trace ids) and receivers that upsert by id see each
event once. Only the ledger is read, and the ledger holds events after redaction, so no
raw payload ever reaches a sink.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from tracevault.sinks.tree import SpanIndex
from tracevault.store import Store, StoredEvent

log = logging.getLogger("tracevault.sinks")


class SinkError(RuntimeError):
    """A sink cannot be configured (missing package, key or endpoint)."""


class TransientError(RuntimeError):
    """A delivery failed in a way worth retrying (network, 5xx, timeout).

    ``retry_after`` (seconds), when the receiver said how long to wait, overrides the
    forwarder's own backoff.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RetryAfter(TransientError):
    """The receiver asked to be called again after ``retry_after`` seconds (429/503)."""

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        super().__init__(message or f"receiver asked to retry after {retry_after:g}s",
                         retry_after=retry_after)


class PermanentError(RuntimeError):
    """The receiver refused this payload for good (HTTP 400, 413, 422), or the exporter
    will never send it (a request over its size limit): sending the same batch again
    cannot succeed. The forwarder splits the batch to find the event it
    refuses, skips that one event (recording why) and delivers the rest."""


class ConversionError(PermanentError):
    """The sink cannot turn an event into what its receiver takes (a value of a shape
    its mapping does not handle). Converting it again fails the same way, so the
    forwarder isolates and skips the event as it does a refused one."""


# What mapping odd event data raises. Anything else raised while mapping (a failed
# ledger read for a span's ancestry, say) says nothing about the event: it is retried.
_CONVERSION_FAILURES = (ArithmeticError, AttributeError, LookupError, TypeError, ValueError)


@contextmanager
def converting() -> Iterator[None]:
    """Wrap a sink's mapping of events (not its requests): a failure that odd event
    data causes there is raised as a :class:`ConversionError`."""
    try:
        yield
    except _CONVERSION_FAILURES as exc:
        raise ConversionError(describe(exc)) from exc


# Statuses that condemn the payload itself. 401/403/404 are configuration (keys,
# endpoint) and 408/429/5xx are the receiver's state: those are retried as they are.
PERMANENT_STATUSES = frozenset({400, 413, 422})


def http_failure(message: str, status: int | None, retry_after: float | None) -> Exception:
    """Return the exception a sink raises for a failed HTTP delivery."""
    if retry_after is not None:
        return RetryAfter(retry_after, message)
    if status in PERMANENT_STATUSES:
        return PermanentError(message)
    return TransientError(message)


@dataclass(slots=True)
class Batch:
    """What a sink receives: stored events in ledger order, plus a span lookup.

    ``spans`` finds the start of any span of a trace (its structure from earlier batches
    or the ledger; the payload of the start an end of this batch pairs with, as the
    ledger holds it now), so a sink can pair an end with its start and rebuild ancestry
    even after a restart.
    """

    events: list[StoredEvent]
    spans: SpanIndex

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0


@runtime_checkable
class Sink(Protocol):
    """An exporter: delivers a batch or raises. Must be idempotent by tracevault id.

    ``name`` keys the persisted cursor, so it must be unique per destination.
    ``export`` runs on the forwarder's thread, never on the agent's.
    """

    name: str

    def export(self, batch: Batch) -> None:
        """Deliver ``batch``; return only once the receiver accepted all of it."""
        ...

    def shutdown(self) -> None:
        """Release clients and connections; idempotent."""
        ...


def deadline_after(timeout: float | None) -> float | None:
    """Return the ``time.monotonic()`` reading ``timeout`` seconds from now (``None``, or
    infinity: no deadline). A timeout that is not a number of seconds, 0 or more (NaN,
    a negative) raises ``ValueError``: a deadline of NaN would never pass."""
    if timeout is None or timeout == math.inf:
        return None
    if not timeout >= 0:
        raise ValueError(f"timeout must be a number of seconds, 0 or more (got {timeout!r})")
    return time.monotonic() + timeout


def time_left(deadline: float | None) -> float | None:
    """Seconds until a :func:`deadline_after` deadline, 0 once it passed (``None``: none)."""
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def backoff_delay(
    attempt: int,
    error: BaseException | None = None,
    *,
    base: float = 0.5,
    cap: float = 60.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Return how long to wait before retry number ``attempt`` (1 = first retry).

    Exponential with equal jitter (half fixed, half random) capped at ``cap``; a
    ``retry_after`` carried by ``error`` wins (capped at one hour), so a receiver that
    asks for a pause gets at least that pause.
    """
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, (int, float)) and retry_after >= 0:
        return min(float(retry_after), 3600.0)
    ceiling = min(cap, base * 2.0 ** max(attempt - 1, 0))
    return ceiling / 2 + rng() * ceiling / 2


@dataclass(slots=True)
class DrainReport:
    """Outcome of :meth:`Forwarder.drain_once`: events delivered, events the sink refused
    for good (skipped: the cursor moved past them), cursor, error if any."""

    sink: str
    delivered: int
    cursor: int
    head: int
    error: str | None
    skipped: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and self.cursor >= self.head


def describe(exc: BaseException) -> str:
    """One line naming an exception, for logs and ``tracevault status``."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


class Forwarder:
    """Feeds one sink from the ledger, in order, from its persisted cursor.

    Use :meth:`start` for a background thread (what ``TRACEVAULT_SINKS`` does), or
    :meth:`drain_once` to deliver what is there now on the calling thread (what
    ``tracevault forward`` does). ``wait`` replaces the pause between retries (tests
    pass a recorder); it returns ``True`` to stop.
    """

    def __init__(
        self,
        store: Store,
        sink: Sink,
        *,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        base_backoff: float = 0.5,
        max_backoff: float = 60.0,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.store = store
        self.sink = sink
        self.name = sink.name
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._wait = wait or self._stop.wait
        self._progress = threading.Condition()
        self._thread: threading.Thread | None = None
        self._cursor: int | None = None
        self._spans = SpanIndex(store)
        self._closed = False
        self.delivered = 0
        self.failures = 0
        self.skipped = 0  # events refused for good or not convertible (PermanentError)
        self._skip_note: str | None = None
        self.last_error: str | None = None
        self._cleared = False

    # --- one step ---------------------------------------------------------------------

    @property
    def cursor(self) -> int:
        """The last sequence number delivered (read from the store on first use)."""
        if self._cursor is None:
            self._cursor = self.store.get_cursor(self.name)
        return self._cursor

    def deliver_next(self) -> int:
        """Send the next batch after the cursor; return how many events it held.

        Raises whatever the sink raised; the cursor then stays where it was.
        """
        events = list(self.store.events(after_seq=self.cursor, limit=self.batch_size))
        if not events:
            self._succeeded()
            return 0
        self._spans.observe(events)
        refused = False
        while True:
            try:
                self.sink.export(Batch(events, self._spans))
                break
            except PermanentError as exc:
                if len(events) > 1:  # halve until the refused event stands alone
                    events = events[: len(events) // 2]
                    continue
                self.skipped += 1
                why = "not convertible" if isinstance(exc, ConversionError) else "refused for good"
                message = (
                    f"event #{events[0].seq} ({events[0].event.event_id}) {why} "
                    f"and skipped for this sink: {describe(exc)}"
                )
                log.error("tracevault: sink %s: %s", self.name, message)
                self._record_error(message)
                self._skip_note = message  # stays in `tracevault status` after recovery
                refused = True
                break
        last = events[-1].seq
        self.store.set_cursor(self.name, last)
        if not refused:
            self._succeeded()
        with self._progress:
            self._cursor = last
            self.delivered += 0 if refused else len(events)
            self._progress.notify_all()
        return len(events)

    def _succeeded(self) -> None:
        """Clear the last error: the sink took a batch, or there was nothing to take
        (a sink that had failed to start, then started, is working again)."""
        stale = self.last_error is not None and self.last_error != self._skip_note
        if stale or not self._cleared:
            # also once per forwarder: an error persisted by an earlier process is stale now
            if self.last_error is not None:
                log.warning("tracevault: sink %s delivers again", self.name)
            self._record_error(self._skip_note)
            self._cleared = True

    def _record_error(self, error: str | None) -> None:
        self.last_error = error
        setter = getattr(self.store, "set_sink_error", None)
        if setter is None:
            return
        try:
            setter(self.name, error)
        except Exception as exc:  # the error is still in memory and in the log
            log.debug("tracevault: cannot persist sink error for %s: %s", self.name, exc)

    def _failed(self, exc: BaseException, attempt: int) -> float:
        self.failures += 1
        message = describe(exc)
        if message != self.last_error:
            log.error("tracevault: sink %s failed, will retry: %s", self.name, message)
            self._record_error(message)
        return backoff_delay(attempt, exc, base=self.base_backoff, cap=self.max_backoff)

    # --- on the calling thread --------------------------------------------------------

    def drain_once(self, timeout: float | None = 60.0) -> DrainReport:
        """Deliver everything up to the current head, retrying until ``timeout``.

        Returns a report; ``report.ok`` is false when the sink still failed at the
        deadline (the cursor then says how far it got).
        """
        deadline = deadline_after(timeout)
        head = self.store.head()[0]
        delivered, skipped = self.delivered, self.skipped
        attempt = 0
        error: str | None = None
        if self.cursor >= head:
            self._succeeded()
        while self.cursor < head:
            try:
                n = self.deliver_next()
            except Exception as exc:
                attempt += 1
                delay = self._failed(exc, attempt)
                error = describe(exc)
                if deadline is not None and time.monotonic() + delay > deadline:
                    break
                if self._wait(delay):
                    break
                continue
            if n == 0:
                break
            attempt = 0
            error = None
        return DrainReport(self.name, self.delivered - delivered, self.cursor, head, error,
                           self.skipped - skipped)

    # --- in the background ------------------------------------------------------------

    def start(self) -> Forwarder:
        """Start the background thread (idempotent); return ``self``."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=self._run, name=f"tracevault-forward-{self.name}", daemon=True
            )
            self._thread.start()
        return self

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                n = self.deliver_next()
            except Exception as exc:
                attempt += 1
                if self._wait(self._failed(exc, attempt)):
                    return
                continue
            attempt = 0
            if n < self.batch_size:  # caught up: poll for new events or a flush request
                self._wake.wait(self.poll_interval)
                self._wake.clear()

    def force_flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything in the ledger now has been delivered; ``False`` on
        timeout (the sink may be down: nothing is lost, delivery continues later)."""
        deadline = deadline_after(timeout)
        target = self.store.head()[0]
        if self._thread is None:
            return self.drain_once(timeout).ok
        self._wake.set()
        with self._progress:
            while self.cursor < target:
                remaining = time_left(deadline)
                if remaining is not None and remaining <= 0:
                    return False
                self._wake.set()
                self._progress.wait(min(remaining, 0.2) if remaining is not None else 0.2)
        return True

    def request_stop(self) -> None:
        """Ask the thread to stop after its current batch, without waiting for it."""
        self._stop.set()
        self._wake.set()

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the thread (after its current batch) and shut the sink down, within
        ``timeout`` seconds in all. Idempotent.

        Does not wait for delivery: call :meth:`force_flush` first for that. What is
        left is delivered by the next forwarder of the same name.
        """
        deadline = deadline_after(timeout)
        if self.stop_thread(timeout):
            shut_down(self.sink, time_left(deadline))

    def stop_thread(self, timeout: float | None = 10.0) -> bool:
        """Stop the thread, waiting up to ``timeout``; ``False`` if already shut down
        (the caller then leaves the sink alone too)."""
        if self._closed:
            return False
        self._closed = True
        self.request_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return True


def shut_down(sink: Sink, timeout: float | None = None) -> None:
    """Shut ``sink`` down (its clients, providers), logging rather than raising a failure.

    With a ``timeout`` the shutdown runs on a daemon thread and is waited for that long
    at most: an SDK flushing to a receiver that does not answer (Langfuse's client,
    OpenTelemetry's exporters retry for many seconds) must not hold up process exit.
    Nothing is lost by leaving it: the cursor only moves past what a receiver accepted.
    """
    shut_down_all([sink], timeout)


def shut_down_all(sinks: Sequence[Sink], timeout: float | None = None) -> None:
    """:func:`shut_down` several sinks at once, all within the same ``timeout``."""

    def close(sink: Sink) -> None:
        try:
            sink.shutdown()
        except Exception as exc:
            log.warning("tracevault: sink %s did not shut down cleanly: %s", sink.name, exc)

    closing: list[tuple[Sink, threading.Thread]] = []
    for sink in sinks:
        if timeout is not None:
            thread = threading.Thread(target=close, args=(sink,), daemon=True,
                                      name=f"tracevault-close-{sink.name}")
            try:
                thread.start()
                closing.append((sink, thread))
                continue
            except RuntimeError:  # no new threads during interpreter exit (3.12.0-1)
                pass
        close(sink)
    deadline = deadline_after(timeout)
    for sink, thread in closing:
        thread.join(time_left(deadline))
        if thread.is_alive():
            log.warning("tracevault: sink %s still shutting down after %.1f s; left behind",
                        sink.name, timeout)
