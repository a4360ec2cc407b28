"""The Forwarder: order, cursor, retries with backoff, Retry-After, status, restart."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tracevault.sinks.base import (
    Batch,
    Forwarder,
    RetryAfter,
    TransientError,
    backoff_delay,
)
from tracevault.store import open_store
from tracevault.testing import capture_events


class Recording:
    """A sink that keeps what it receives and fails on demand."""

    def __init__(self, name: str = "rec", failures: list[Exception] | None = None) -> None:
        self.name = name
        self.failures = list(failures or [])
        self.batches: list[list[int]] = []
        self.event_ids: list[str] = []
        self.closed = False

    def export(self, batch: Batch) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.batches.append([s.seq for s in batch.events])
        self.event_ids.extend(s.event.event_id for s in batch.events)

    def shutdown(self) -> None:
        self.closed = True


def _record(log: Any, n: int) -> None:
    for i in range(n):
        log.log_event("step", {"i": i})


def test_delivers_in_order_in_batches_and_persists_the_cursor(tmp_path):
    import tracevault

    with capture_events(tmp_path) as cap:
        _record(tracevault.AuditLogger(session_id="s"), 25)
        cap.flush()
        sink = Recording()
        report = Forwarder(cap.store, sink, batch_size=10).drain_once()
        assert report.ok and report.delivered == 25
        assert [len(b) for b in sink.batches] == [10, 10, 5]
        seqs = [s for b in sink.batches for s in b]
        assert seqs == sorted(seqs) == list(range(1, 26))
        assert cap.store.get_cursor("rec") == 25
        # a new forwarder of the same name (a restart) starts after the cursor
        _record(tracevault.AuditLogger(session_id="s"), 3)
        cap.flush()
        again = Recording()
        assert Forwarder(cap.store, again).drain_once().delivered == 3
        assert again.batches == [[26, 27, 28]]


def test_retries_with_backoff_and_honours_retry_after(tmp_path):
    import tracevault

    waits: list[float] = []
    with capture_events(tmp_path) as cap:
        _record(tracevault.AuditLogger(), 4)
        cap.flush()
        sink = Recording(failures=[TransientError("down"), TransientError("down"),
                                   RetryAfter(7.5)])
        forwarder = Forwarder(cap.store, sink, wait=lambda d: waits.append(d) is not None,
                              base_backoff=0.5, max_backoff=60)
        report = forwarder.drain_once(timeout=None)
        assert report.ok and len(sink.event_ids) == 4
        assert waits[2] == 7.5  # the receiver's pause, exactly
        assert 0.25 <= waits[0] <= 0.5 and 0.5 <= waits[1] <= 1.0  # exponential, jittered
        assert forwarder.failures == 3 and forwarder.last_error is None


def test_backoff_is_capped_and_jittered():
    assert backoff_delay(30, base=0.5, cap=60, rng=lambda: 0.0) == 30.0
    assert backoff_delay(30, base=0.5, cap=60, rng=lambda: 1.0) == 60.0
    assert backoff_delay(1, RetryAfter(99999)) == 3600.0


def test_last_error_is_persisted_and_cleared(tmp_path):
    import tracevault

    with capture_events(tmp_path) as cap:
        _record(tracevault.AuditLogger(), 2)
        cap.flush()
        sink = Recording(failures=[TransientError("HTTP 503 from collector")])
        stops = iter([True])
        forwarder = Forwarder(cap.store, sink, wait=lambda d: next(stops, True))
        report = forwarder.drain_once(timeout=None)
        assert not report.ok and report.cursor == 0
        rows = {c.name: c for c in cap.store.sink_cursors()}
        assert rows["rec"].last_error == "TransientError: HTTP 503 from collector"
        assert Forwarder(cap.store, sink).drain_once().ok
        rows = {c.name: c for c in cap.store.sink_cursors()}
        assert rows["rec"].last_error is None and rows["rec"].seq == 2


def test_background_thread_follows_the_ledger_and_force_flush_waits(tmp_path):
    import tracevault

    with capture_events(tmp_path) as cap:
        sink = Recording()
        forwarder = Forwarder(cap.store, sink, batch_size=7, poll_interval=0.05).start()
        log = tracevault.AuditLogger()
        for round_ in range(3):
            _record(log, 10)
            cap.flush()
            assert forwarder.force_flush(timeout=30)
            assert len(sink.event_ids) == 10 * (round_ + 1)
        forwarder.shutdown()
        assert sink.closed
        assert sorted(sink.event_ids) == sorted(e.event_id for e in cap.events())


def test_force_flush_times_out_while_the_sink_is_down(tmp_path):
    import tracevault

    with capture_events(tmp_path) as cap:
        _record(tracevault.AuditLogger(), 3)
        cap.flush()
        gate = threading.Event()
        sink = Recording(failures=[TransientError("down")] * 1000)
        forwarder = Forwarder(cap.store, sink, base_backoff=0.01, max_backoff=0.02,
                              wait=lambda d: gate.wait(d)).start()
        assert forwarder.force_flush(timeout=0.3) is False
        sink.failures.clear()
        assert forwarder.force_flush(timeout=30) is True
        gate.set()
        forwarder.shutdown()
        assert len(sink.event_ids) == 3


def test_a_timeout_that_is_not_a_number_of_seconds_is_refused(tmp_path):
    # A deadline of NaN never passes: against a sink that stays down, drain_once and
    # force_flush would wait for ever.
    import tracevault
    import tracevault.sinks.registry as registry

    with capture_events(tmp_path) as cap:
        _record(tracevault.AuditLogger(), 1)
        cap.flush()
        sink = Recording(failures=[TransientError("down")] * 1000)
        forwarder = Forwarder(cap.store, sink, base_backoff=0.01, max_backoff=0.02)
        for bad in (float("nan"), -1.0):
            with pytest.raises(ValueError, match="timeout"):
                forwarder.drain_once(bad)
            with pytest.raises(ValueError, match="timeout"):
                forwarder.force_flush(bad)
            with pytest.raises(ValueError, match="timeout"):
                registry.flush(bad)
        assert sink.event_ids == []
        forwarder.shutdown()


def test_rejects_a_zero_batch_size(tmp_path):
    store = open_store(f"sqlite:///{tmp_path}/l.db")
    with pytest.raises(ValueError):
        Forwarder(store, Recording(), batch_size=0)
    store.close()


def test_http_failures_are_classified() -> None:
    from tracevault.sinks.base import PermanentError, http_failure

    assert isinstance(http_failure("m", 413, None), PermanentError)
    assert isinstance(http_failure("m", 400, None), PermanentError)
    assert isinstance(http_failure("m", 422, None), PermanentError)
    for status in (401, 403, 404, 408, 500, 503, None):  # configuration or receiver state
        err = http_failure("m", status, None)
        assert isinstance(err, TransientError) and not isinstance(err, PermanentError)
    assert isinstance(http_failure("m", 429, 2.0), RetryAfter)


def test_a_refused_event_is_skipped_alone_and_the_rest_delivered(tmp_path):
    import tracevault
    from tracevault.sinks.base import PermanentError

    class Picky(Recording):
        def export(self, batch: Batch) -> None:
            if any(s.event.data.get("payload", {}).get("i") == 13 for s in batch.events):
                raise PermanentError("HTTP 422: unprocessable")
            super().export(batch)

    with capture_events(tmp_path) as cap:
        _record(tracevault.AuditLogger(session_id="s"), 30)
        cap.flush()
        sink = Picky()
        forwarder = Forwarder(cap.store, sink, batch_size=10)
        report = forwarder.drain_once()
        delivered = [s for b in sink.batches for s in b]
        poison = next(s.seq for s in cap.store.events() if s.event.data["payload"]["i"] == 13)
        assert delivered == [s for s in range(1, 31) if s != poison]
        assert forwarder.skipped == 1 and report.ok
        assert cap.store.get_cursor("rec") == 30
        # The skip stays visible after later batches were delivered fine.
        assert f"event #{poison}" in (forwarder.last_error or "")
        (status,) = [c for c in cap.store.sink_cursors() if c.name == "rec"]
        assert f"event #{poison}" in (status.last_error or "")
        assert forwarder.delivered == 29


def test_finding_nothing_to_deliver_clears_a_stale_error(tmp_path):
    # e.g. `tracevault forward` could not start the sink (bad config) while the ledger
    # was caught up; once it starts, the error is history even with nothing to send.
    import tracevault

    with capture_events(tmp_path) as cap:
        _record(tracevault.AuditLogger(), 2)
        cap.flush()
        assert Forwarder(cap.store, Recording()).drain_once().ok
        cap.store.set_sink_error("rec", "SinkError: not started")
        assert Forwarder(cap.store, Recording()).drain_once().ok  # the CLI's path
        assert {c.name: c for c in cap.store.sink_cursors()}["rec"].last_error is None
        cap.store.set_sink_error("rec", "SinkError: not started")
        assert Forwarder(cap.store, Recording()).deliver_next() == 0  # the thread's path
        assert {c.name: c for c in cap.store.sink_cursors()}["rec"].last_error is None
