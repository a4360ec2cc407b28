"""The capture pipeline: nothing lost, nothing raised, back-pressure, fail-closed."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import tracevault
from tracevault import capture, replay
from tracevault.pipeline import DurabilityError, Pipeline, dead_letter_events, event_of
from tracevault.schema import AuditEvent
from tracevault.snapshot import Deferred, freeze, freeze_raw
from tracevault.store import StoreError, open_store
from tracevault.store.sqlite import SQLiteStore
from tracevault.testing import Capture, capture_events


@contextlib.contextmanager
def _active(pipeline: Pipeline) -> Iterator[Pipeline]:
    """Make ``pipeline`` the one capture writes to; shut it down afterwards."""
    capture.install(pipeline, None)
    try:
        yield pipeline
    finally:
        capture.reset()
        pipeline.shutdown()


class FlakyStore(SQLiteStore):
    """A real SQLite ledger whose appends fail while ``healthy`` is clear; ``failed`` is
    set once one has failed."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.healthy = threading.Event()
        self.healthy.set()
        self.failed = threading.Event()
        self.failures = 0

    def append(self, events: Sequence[AuditEvent]) -> int:
        if not self.healthy.is_set():
            self.failures += 1
            self.failed.set()
            raise StoreError("simulated outage")
        return super().append(events)


class Weird:
    def __init__(self) -> None:
        self.me = self


def test_bad_inputs_never_raise_and_all_land(cap: Capture) -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    payloads = [
        Weird(),
        b"\x00\xffbytes",
        {1, 2, 3},
        ValueError("an exception as a payload"),
        cyclic,
        {"nan": math.nan, "inf": math.inf},
        "lone surrogate \ud800 here",
        "m" * (8 * 1024 * 1024),
        {"\udc80key": "value"},
        object(),
    ]
    log = tracevault.AuditLogger(session_id="bad-\ud800-inputs", user_id="u")
    for p in payloads:
        log.log_tool_call("weird", p, result=p)
        log.log_input(p)
    events = cap.events()
    assert len(events) == 3 * len(payloads)
    assert cap.store.verify().ok
    big = [
        e
        for e in events
        if e.kind == "input"
        and isinstance(e.data["content"], str)
        and "chars in original" in e.data["content"]
    ]
    assert len(big) == 1 and "8388608 chars in original" in big[0].data["content"]
    assert {e.session_id for e in events} == {"bad-\ufffd-inputs"}
    assert cap.pipeline.stats().written == len(events)


def test_threads_all_land_in_one_chain(cap: Capture) -> None:
    def work(n: int) -> None:
        log = tracevault.AuditLogger(session_id=f"thread-{n}")
        for i in range(10_000):
            log.log_event("tick", {"i": i})

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cap.flush()
    assert cap.store.count() == 80_000
    report = cap.store.verify()
    assert report.ok and report.checked == 80_000
    sessions = {s.session_id: s.events for s in cap.store.sessions()}
    assert sessions == {f"thread-{n}": 10_000 for n in range(8)}
    # Ids are given by the writer, in the order events reach the ledger.
    ids = [e.event.event_id for e in cap.store.events()]
    assert ids == sorted(ids) and len(set(ids)) == 80_000


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_run_uuids_become_span_ids_on_the_writer(tmp_path: Path, writer: str) -> None:
    # Framework handlers pass a run's UUID as its span id and their own plain payloads
    # uncopied (owned): both arrive in the ledger as if given as strings and copies.
    span, parent = uuid.uuid4(), uuid.uuid4()
    with capture_events(tmp_path, writer=writer) as cap:
        capture.emit("custom", data={"n": 1, "ok": True}, owned=True, session_id="u",
                     trace_id="t", span_id=span, parent_span_id=parent)
        (event,) = cap.events(session_id="u")
    assert (event.span_id, event.parent_span_id) == (str(span), str(parent))
    assert event.data == {"n": 1, "ok": True}


def test_a_batch_sent_again_keeps_its_event_ids(tmp_path: Path) -> None:
    # A store that redacts itself (the writer process) takes the queued items as they
    # are. If it fails after storing them, the same items are sent again: their ids,
    # given by the writer, must not change, or the retry would store them twice.
    class CommitsThenFails:
        applies_middleware = True

        def __init__(self) -> None:
            self.url, self.attempts = "memory://", []

        def append(self, events: Sequence[Any]) -> int:
            self.attempts.append([event[0] for event in events])
            if len(self.attempts) == 1:
                raise StoreError("the writer died before it answered")
            return len(events)

        def close(self) -> None:
            pass

    made: list[int] = []

    def make(raw: dict[str, Any], i: int) -> dict[str, Any]:
        made.append(i)
        return {**raw, "made": i}

    store = CommitsThenFails()
    pipeline = Pipeline(store)
    with _active(pipeline):
        for i in range(5):
            capture.emit("custom", data={"i": i})
        capture.emit("custom", data=Deferred(make, freeze({"x": 1}), 5))
        assert pipeline.flush(30)
    first, second = store.attempts
    assert first == second and len(set(first)) == 6 and None not in first
    assert made == [5]  # deferred data is made once, not once per attempt


def test_a_full_burst_is_written_without_lingering(tmp_path: Path) -> None:
    # The writer lingers after the first event of a burst so the burst becomes one
    # transaction, but stops lingering once a full burst is queued: with an hour's
    # linger, the events must still reach the ledger without a flush.
    written = threading.Event()

    class Signalling(SQLiteStore):
        def append(self, events: Sequence[AuditEvent]) -> int:
            seq = super().append(events)
            if seq >= 5:
                written.set()
            return seq

    store = Signalling(str(tmp_path / "burst.db"))
    pipeline = Pipeline(store, linger=3600, burst=5)
    with _active(pipeline):
        for i in range(5):
            capture.emit("custom", data={"i": i})
        assert written.wait(30)
        assert [e.event.data["i"] for e in store.events()] == list(range(5))
    store.close()


def test_a_queue_smaller_than_a_burst_is_written_when_full(tmp_path: Path) -> None:
    # A 4-event queue never holds a 64-event burst: a full queue must end the linger,
    # or every 4 events would wait for it (here an hour).
    store = SQLiteStore(str(tmp_path / "small.db"))
    pipeline = Pipeline(store, linger=3600, queue_size=4)
    with _active(pipeline):
        submitting = threading.Thread(
            target=lambda: [capture.emit("custom", data={"i": i}) for i in range(20)])
        submitting.start()
        submitting.join(60)
        assert not submitting.is_alive()
        assert pipeline.flush(60)
        assert [e.event.data["i"] for e in store.events()] == list(range(20))
    store.close()


class GatedStore(SQLiteStore):
    """A real SQLite ledger whose appends wait for ``gate``; records batch sizes."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def append(self, events: Sequence[AuditEvent]) -> int:
        self.entered.set()
        self.gate.wait(60)
        self.batches.append(len(events))
        return super().append(events)


def _queued(pipeline: Pipeline, n: int) -> bool:
    """Wait (bounded) until ``n`` items, flush markers included, wait in the queue."""
    done = threading.Event()
    for _ in range(6000):
        if len(pipeline._queue) >= n:
            return True
        done.wait(0.01)
    return False


def _event(i: int) -> AuditEvent:
    return AuditEvent(event_id=f"id-{i}", timestamp=datetime.now(timezone.utc),
                      kind="custom", data={"i": i})


def _balanced(stats: tracevault.PipelineStats) -> bool:
    """Whether every captured event is accounted for (see PipelineStats)."""
    return stats.captured == (stats.written + stats.filtered + stats.pending + stats.dropped
                              + stats.dead_lettered)


def test_flushes_waiting_together_write_at_once_in_large_batches(tmp_path: Path) -> None:
    # While the writer is busy, 300 events and two flushes queue up. With an hour's
    # linger and 4-event bursts, both flushes must still return, and the backlog goes
    # in one batch (up to batch_size), not in bursts with a linger between flushes.
    store = GatedStore(str(tmp_path / "flushes.db"))
    pipeline = Pipeline(store, linger=3600, burst=4, batch_size=1000)
    capture.install(pipeline, None)
    results: dict[str, bool] = {}
    try:
        capture.emit("custom", data={"i": -1})
        first = threading.Thread(target=lambda: results.update(first=pipeline.flush(60)))
        first.start()
        assert store.entered.wait(60)  # the writer holds the first event and marker
        for i in range(300):
            capture.emit("custom", data={"i": i})
        flushes = [threading.Thread(target=lambda k=k: results.update({k: pipeline.flush(60)}))
                   for k in ("a", "b")]
        for thread in flushes:
            thread.start()
        assert _queued(pipeline, 302)  # 300 events and two markers behind the busy batch
        store.gate.set()
        for thread in (first, *flushes):
            thread.join(90)
        assert results == {"first": True, "a": True, "b": True}
        assert store.batches == [1, 300]
        assert [e.event.data["i"] for e in store.events()] == list(range(-1, 300))
    finally:
        store.gate.set()
        capture.reset()
        pipeline.shutdown()
        store.close()


def test_deferred_data_is_made_on_the_writer_in_queue_order(cap: Capture) -> None:
    # Handlers leave reading framework objects to the writer (snapshot.Deferred); each
    # event's data is made once, in the order the events were queued, and a make that
    # fails keeps what was captured instead of losing the event.
    totals: list[int] = []

    def add(raw: dict[str, Any], _: None) -> dict[str, Any]:
        totals.append(raw["n"])
        return {"n": raw["n"]}

    def total(raw: dict[str, Any], _: None) -> dict[str, Any]:
        return {"total": sum(totals)}

    def broken(raw: dict[str, Any], _: None) -> dict[str, Any]:
        raise ValueError("cannot read this")

    live = {"n": 1}
    capture.emit("custom", name="a", data=Deferred(add, freeze_raw(live)), session_id="d")
    live["n"] = 100  # copied when emitted: the change is not recorded
    capture.emit("custom", name="b", data=Deferred(add, freeze_raw({"n": 2})), session_id="d")
    capture.emit("custom", name="sum", data=Deferred(total, None), session_id="d")
    capture.emit("custom", name="bad", data=Deferred(broken, freeze_raw({"n": 3})),
                 session_id="d")
    events = {e.name: e.data for e in cap.events(session_id="d")}
    assert events["a"] == {"n": 1} and events["sum"] == {"total": 3}
    assert events["bad"]["raw"] == {"n": 3}
    assert events["bad"]["capture_error"] == "ValueError: cannot read this"


def test_a_deferred_callback_runs_on_the_writer_as_the_caller_would_have(
    cap: Capture,
) -> None:
    # capture.later: the writer runs the callback in its place in the queue, in a copy
    # of the caller's context, and what it records is timestamped when it was queued.
    ran_on: list[threading.Thread] = []
    queued_at: list[float] = []

    def callback(n: int) -> None:
        ran_on.append(threading.current_thread())
        capture.emit("custom", name=f"deferred-{n}", data={"n": n})
        capture.emit("custom", name=f"deferred-{n}-again")

    def broken() -> None:
        raise RuntimeError("a bug in a handler")

    with tracevault.context(session_id="later", user_id="ana"):
        capture.emit("custom", name="before")
        capture.later(callback, 1)
        queued_at.append(datetime.now(timezone.utc).timestamp())
        capture.later(broken)  # logged and counted; the writer goes on
        capture.emit("custom", name="between")
    capture.later(callback, 2)  # outside the context: no session
    events = cap.events()
    assert [e.name for e in events] == [
        "before", "deferred-1", "deferred-1-again", "between", "deferred-2", "deferred-2-again"]
    assert [e.session_id for e in events] == ["later"] * 4 + [None, None]
    assert {e.user_id for e in events[:4]} == {"ana"}
    assert events[1].timestamp.timestamp() <= queued_at[0]  # not when the writer ran
    assert threading.current_thread() not in ran_on and len(ran_on) == 2
    assert replay.failures() >= 1


def test_deferred_callbacks_still_queued_at_shutdown_are_dead_lettered(tmp_path: Path) -> None:
    store = FlakyStore(str(tmp_path / "down.db"))
    store.healthy.clear()
    path = str(tmp_path / "dead.jsonl")
    pipeline = Pipeline(store, dead_letter_path=path)
    with _active(pipeline):
        capture.later(lambda: capture.emit("custom", name="made late", data={"x": 1}))
        stats = pipeline.shutdown(timeout=0.3)
    assert stats.dead_lettered == 1
    assert [e.name for e in dead_letter_events(path)] == ["made late"]


def test_asyncio_tasks_all_land_with_their_own_context(cap: Capture) -> None:
    async def task(n: int) -> None:
        with tracevault.context(session_id=f"task-{n % 10}", user_id=f"user-{n}"):
            await asyncio.sleep(0)  # interleave the tasks
            tracevault.AuditLogger().log_input(f"hello from {n}")

    async def main() -> None:
        await asyncio.gather(*(task(n) for n in range(1000)))

    asyncio.run(main())
    events = cap.events()
    assert len(events) == 1000
    for e in events:
        n = int(e.data["content"].rsplit(" ", 1)[1])
        assert e.user_id == f"user-{n}" and e.session_id == f"task-{n % 10}"
    assert cap.store.verify().ok


def test_store_outage_applies_back_pressure_and_loses_nothing(tmp_path: Path) -> None:
    store = FlakyStore(str(tmp_path / "flaky.db"))
    store.healthy.clear()
    tracevault.configure(store=store, queue_size=10, batch_size=5)
    done = threading.Event()

    def produce() -> None:
        log = tracevault.AuditLogger(session_id="bp")
        for i in range(200):
            log.log_event("e", i)
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    # The producer cannot finish: the queue is full and the store is down.
    assert not done.wait(0.3)
    assert not tracevault.flush(0.2)
    store.healthy.set()
    producer.join()
    assert tracevault.flush(30)
    stats = tracevault.stats()
    assert stats is not None
    assert stats.written == 200 and stats.dropped == 0 and stats.write_errors >= 1
    assert store.count() == 200 and store.verify().ok
    assert [e.event.data["payload"] for e in store.events()] == list(range(200))


def test_block_timeout_drops_are_counted_and_recorded(tmp_path: Path) -> None:
    store = FlakyStore(str(tmp_path / "flaky.db"))
    store.healthy.clear()
    tracevault.configure(store=store, queue_size=5, batch_size=5, block_timeout=0.01)
    log = tracevault.AuditLogger(session_id="drops")
    for i in range(40):
        log.log_event("e", i)
    stats = tracevault.stats()
    assert stats is not None and stats.dropped > 0
    dropped = stats.dropped
    store.healthy.set()
    assert tracevault.flush(30)
    gaps = [e.event for e in store.events() if e.event.name == "tracevault.queue_full"]
    assert len(gaps) == 1
    assert gaps[0].data["message"].startswith(f"{dropped} events were not recorded")
    assert store.count() == 40 - dropped + 1
    stats = tracevault.stats()  # the gap record counts as captured, and written
    assert stats is not None and (stats.captured, stats.written) == (41, 40 - dropped + 1)
    assert _balanced(stats)


def test_drops_at_a_shutdown_with_the_ledger_down_leave_a_gap_record_in_the_dead_letter_file(
    tmp_path: Path,
) -> None:
    # The ledger is down and the queue full: events are dropped (block_timeout) after
    # the writer took its batch, so no batch it wrote carries the gap record. Shutdown
    # dead-letters what is left: the gap record must go with it, and the stats must
    # still account for every event (captured used to shrink by what was queued).
    store = FlakyStore(str(tmp_path / "down.db"))
    store.healthy.clear()
    path = str(tmp_path / "dead.jsonl")
    # An hour's linger: the writer takes its batch only once the queue holds a burst.
    pipeline = Pipeline(store, queue_size=2, block_timeout=0.01, linger=3600,
                        dead_letter_path=path)
    for i in range(2):
        pipeline.submit(_event(i))
    assert store.failed.wait(60)  # the writer holds events 0 and 1 and retries
    for i in range(2, 7):  # 2 and 3 fill the queue; 4, 5 and 6 find no room
        pipeline.submit(_event(i))
    before = pipeline.stats()
    assert (before.captured, before.pending, before.dropped) == (7, 4, 3)
    assert _balanced(before)
    after = pipeline.shutdown(timeout=0.2)
    saved = dead_letter_events(path)
    assert [e.event_id for e in saved[:4]] == ["id-0", "id-1", "id-2", "id-3"]
    [gap] = saved[4:]
    assert gap.name == "tracevault.queue_full"
    assert gap.data["message"].startswith("3 events were not recorded")
    # The gap record counts as captured, and as dead-lettered with the events.
    assert (after.captured, after.written, after.dead_lettered, after.dropped,
            after.pending) == (8, 0, 5, 3, 0)
    assert _balanced(after) and after.captured >= before.captured
    store.close()


def test_queued_callbacks_count_as_pending_until_they_have_run(tmp_path: Path) -> None:
    # A framework handler's callbacks wait in the queue as Later items until the writer
    # runs them: until then they are still to be written, one each, whatever number of
    # events they will record (here two, and none).
    store = GatedStore(str(tmp_path / "gated.db"))
    pipeline = Pipeline(store)

    def two(n: int) -> None:
        capture.emit("custom", name=f"cb-{n}")
        capture.emit("custom", name=f"cb-{n}-again")

    with _active(pipeline):
        try:
            capture.emit("custom", name="first")
            assert store.entered.wait(60)  # the writer is inside append with "first"
            for n in range(3):
                capture.later(two, n)
            capture.later(lambda: None)  # records nothing
            queued = pipeline.stats()
            assert (queued.captured, queued.pending, queued.written) == (5, 5, 0)
            assert _balanced(queued)
        finally:
            store.gate.set()
        assert pipeline.flush(60)
        done = pipeline.stats()
    # Each callback now counts as what it recorded; the one that recorded none as filtered.
    assert (done.captured, done.written, done.filtered, done.pending) == (8, 7, 1, 0)
    assert _balanced(done) and done.captured >= queued.captured
    assert [e.event.name for e in store.events()] == [
        "first", "cb-0", "cb-0-again", "cb-1", "cb-1-again", "cb-2", "cb-2-again"]
    store.close()


def test_failing_middleware_withholds_the_payload(tmp_path: Path) -> None:
    def explode(event: AuditEvent) -> AuditEvent:
        if event.kind == "input":
            raise RuntimeError("detector crashed")
        return event

    url = f"sqlite:///{tmp_path / 'm.db'}"
    tracevault.configure(store=url, middleware=[explode])
    log = tracevault.AuditLogger(session_id="mw")
    log.log_input("my card is 4111 1111 1111 1111", source="web", secret_meta="x")
    log.log_output("fine")
    assert tracevault.flush(10)
    events = [s.event for s in open_store(url).events()]
    assert [e.kind for e in events] == ["input", "output"]
    assert events[0].data == {
        "withheld": True,
        "reason": "test_failing_middleware_withholds_the_payload.<locals>.explode failed: "
        "RuntimeError",
    }
    assert events[0].metadata == {} and events[0].name is None
    assert events[1].data["content"] == "fine"
    assert b"4111" not in (tmp_path / "m.db").read_bytes()
    stats = tracevault.stats()
    assert stats is not None and stats.withheld == 1


def test_a_middleware_that_returns_no_event_withholds_and_the_writer_goes_on(
    tmp_path: Path,
) -> None:
    # It returned the event's dict: the writer thread died on it, and every later event
    # was lost (and shutdown() raised into the caller).
    def by_mistake(event: AuditEvent) -> Any:
        return event.to_dict() if event.kind == "output" else event

    url = f"sqlite:///{tmp_path / 'm.db'}"
    tracevault.configure(store=url, middleware=[by_mistake])
    log = tracevault.AuditLogger(session_id="mw")
    log.log_output("the answer is 4111 1111 1111 1111")
    assert tracevault.flush(10)
    for i in range(3):
        log.log_input(f"later {i}")
    assert tracevault.flush(10)
    stats = tracevault.shutdown()
    events = [s.event for s in open_store(url).events()]
    assert [e.kind for e in events] == ["output", "input", "input", "input"]
    assert events[0].data["withheld"] is True and "TypeError" in events[0].data["reason"]
    assert stats is not None and (stats.withheld, stats.written) == (1, 4)


def test_bytes_payloads_are_redacted_as_text_or_kept_as_a_digest(tmp_path: Path) -> None:
    # Bytes were stored as base64, which redaction cannot read: an HTTP body with an
    # email address and an API key reached the ledger whole.
    body = b'{"owner": "jane.doe@example.com", "key": "sk-proj-AbCdEf0123456789XyZaBcDeF"}'
    url = f"sqlite:///{tmp_path / 'b.db'}"
    tracevault.configure(store=url)
    log = tracevault.AuditLogger(session_id="bytes")
    log.log_tool_call("fetch", {"url": "https://example.com"}, result=body, duration_ms=1.0)
    log.log_tool_call("download", {}, result=b"\x89PNG\x00\xff" + bytes(range(256)))
    assert tracevault.flush(10)
    tracevault.shutdown()
    ends = [s.event for s in open_store(url).events() if s.event.phase == "end"]
    text = ends[0].data["result"]
    assert (text["$bytes"], text["size"]) == ("utf-8", len(body))
    assert "[EMAIL]" in text["text"] and "jane.doe" not in text["text"]
    binary = ends[1].data["result"]
    assert binary["$bytes"] == "sha256" and len(binary["sha256"]) == 64
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("b.db*"))  # the WAL too
    assert b"jane.doe" not in raw and b"AbCdEf0123456789" not in raw


def test_middleware_may_drop_or_replace_events(tmp_path: Path) -> None:
    def only_errors_and_tag(event: AuditEvent) -> AuditEvent | None:
        if event.kind == "custom":
            return None
        event.tags.append("seen")
        return event

    with capture_events(
        tmp_path, middleware=[only_errors_and_tag]
    ) as cap:
        log = tracevault.AuditLogger(session_id="mw2")
        log.log_event("noise")
        log.log_error("real problem")
        events = cap.events()
        assert [(e.kind, e.tags) for e in events] == [("error", ["seen"])]
        assert cap.pipeline.stats().filtered == 1


def test_level_filter(tmp_path: Path) -> None:
    with capture_events(tmp_path, level="info") as cap:
        log = tracevault.AuditLogger(session_id="lv")
        with log.span("retrieve", kind="chain"):  # chain steps are debug-level
            log.log_input("hi")
        with log.span("planner"):  # agent steps are info: a run keeps its root
            log.log_reasoning("plan")
        log.log_event("chatter", level="debug")
        log.log_error("bad")
        kinds = [(e.kind, e.phase) for e in cap.events()]
        assert kinds == [
            ("input", "point"),
            ("agent", "start"),
            ("reasoning", "point"),
            ("agent", "end"),
            ("error", "point"),
        ]
    with pytest.raises(ValueError, match="unknown level 'loud'"):
        tracevault.configure(store=f"sqlite:///{tmp_path / 'x.db'}", level="loud")


def test_shutdown_dead_letters_what_cannot_be_written(tmp_path: Path) -> None:
    store = FlakyStore(str(tmp_path / "down.db"))
    store.healthy.clear()
    path = str(tmp_path / "dead.jsonl")
    pipeline = Pipeline(store, dead_letter_path=path)
    events = [
        AuditEvent(
            event_id=f"id-{i}",
            timestamp=datetime.now(timezone.utc),
            kind="custom",
            data={"i": i},
        )
        for i in range(5)
    ]
    for e in events:
        pipeline.submit(e)
    stats = pipeline.shutdown(timeout=0.3)
    assert stats.dead_lettered == 5 and stats.written == 0
    saved = dead_letter_events(path)
    assert [e.event_id for e in saved] == [e.event_id for e in events]
    # The saved events can be appended once the store is back.
    store.healthy.set()
    store.append(saved)
    assert store.verify().ok and store.count() == 5


def test_events_a_store_rejects_are_dead_lettered_once(tmp_path: Path) -> None:
    # Not an outage (StoreError) but every event rejected: each is dead-lettered alone,
    # and the shutdown that follows must not dead-letter them a second time.
    class Rejecting:
        url = "rejecting://"

        def append(self, events: Sequence[Any]) -> int:
            raise OSError("this store takes nothing")

        def close(self) -> None:
            pass

    path = str(tmp_path / "dead.jsonl")
    pipeline = Pipeline(Rejecting(), dead_letter_path=path)
    with _active(pipeline):
        for i in range(5):
            capture.emit("custom", name=f"e{i}")
        stats = pipeline.shutdown(timeout=1)  # its flush fails: they are not in the ledger
    assert stats.dead_lettered == 5 and stats.written == 0
    assert [e.name for e in dead_letter_events(path)] == [f"e{i}" for i in range(5)]


def test_a_flush_is_not_durable_when_an_event_of_its_batch_was_dead_lettered(
    tmp_path: Path,
) -> None:
    # The store rejects one event (dead-lettered) and then fails once as a whole before
    # the rest is written: the retry succeeds, but the batch is not all in the ledger.
    class Picky:
        url = "picky://"

        def __init__(self) -> None:
            self.failed_once = False
            self.names: list[str | None] = []

        def append(self, events: Sequence[Any]) -> int:
            names = [event_of(e).name for e in events]
            if "poison" in names:
                raise ValueError("cannot take this one")
            if names == ["after"] and not self.failed_once:
                self.failed_once = True
                raise StoreError("a blip")
            self.names += names
            return len(names)

        def close(self) -> None:
            pass

    store = Picky()
    pipeline = Pipeline(store, dead_letter_path=str(tmp_path / "dead.jsonl"), linger=5.0)
    with _active(pipeline):
        for name in ("before", "poison", "after"):
            capture.emit("custom", name=name)
        assert not pipeline.flush(10)  # one batch: "poison" is not in the ledger
        assert store.names == ["before", "after"] and pipeline.stats().dead_lettered == 1


def test_strict_mode_stops_the_tool_when_intent_is_not_durable(tmp_path: Path) -> None:
    store = FlakyStore(str(tmp_path / "strict.db"))
    store.healthy.clear()
    tracevault.configure(store=store, strict=True, strict_timeout=0.3)
    ran: list[int] = []
    log = tracevault.AuditLogger(session_id="strict")
    with pytest.raises(DurabilityError, match="simulated outage"), log.tool_call("transfer_money"):
        ran.append(1)
    assert ran == []
    store.healthy.set()
    with log.tool_call("transfer_money", {"amount": 5}) as call:
        ran.append(2)
        call.result = "ok"
    assert ran == [2]
    assert tracevault.flush(10)
    # The refused call's intent reached the ledger once it was back, with an end that
    # says the tool did not run (not "pending" for good).
    calls = [e.event for e in store.events() if e.event.kind == "tool_call"]
    assert [(e.phase, e.data["status"]) for e in calls] == [
        ("start", "pending"), ("end", "not_run"), ("start", "pending"), ("end", "success")]
    assert "simulated outage" in calls[1].data["reason"] and calls[1].level == "error"
    assert calls[1].span_id == calls[0].span_id


def test_unwritable_and_corrupt_stores_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="check that the file and its directory exist"):
        tracevault.configure(store=f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="corrupt or not a tracevault ledger"):
        tracevault.configure(store=f"sqlite:///{corrupt}")
    with pytest.raises(StoreError, match="unknown store URL scheme"):
        tracevault.configure(store="mysql://nope")


def test_a_killed_process_keeps_a_valid_chain(tmp_path: Path) -> None:
    db = tmp_path / "killed.db"
    script = textwrap.dedent(
        f"""
        import sys, tracevault
        tracevault.configure(store="sqlite:///{db}")
        log = tracevault.AuditLogger(session_id="killed")
        for i in range(1_000_000):
            log.log_event("e", {{"i": i, "pad": "x" * 200}})
            if i % 500 == 499:
                assert tracevault.flush(30)
                print(i + 1, flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    durable = 0
    for line in proc.stdout:
        durable = int(line)
        if durable >= 3000:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    store = open_store(f"sqlite:///{db}")
    report = store.verify()
    assert report.ok, report
    assert store.count() >= durable
    seen = [e.event.data["payload"]["i"] for e in store.events()]
    assert seen == list(range(len(seen)))  # a prefix: nothing missing in the middle


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_forked_child_records_through_its_own_writer(cap: Capture) -> None:
    tracevault.AuditLogger(session_id="parent").log_event("before fork")
    cap.flush()
    pid = os.fork()
    if pid == 0:  # child: the parent's writer thread does not exist here
        code = 1
        try:
            tracevault.AuditLogger(session_id="child").log_event("in child")
            code = 0 if tracevault.flush(30) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(s.session_id or "" for s in cap.store.sessions()) == ["child", "parent"]
    assert cap.store.verify().ok


def test_capture_errors_are_counted_not_raised(cap: Capture) -> None:
    before = capture.capture_errors()
    assert capture.emit("custom", level="not-a-level") is False
    assert capture.capture_errors() == before + 1


def test_dead_letters_are_redacted_too(tmp_path: Path) -> None:
    store = FlakyStore(str(tmp_path / "down.db"))
    store.healthy.clear()
    path = tmp_path / "dead.jsonl"
    from tracevault.redaction import Redactor

    pipeline = Pipeline(store, middleware=[Redactor()], dead_letter_path=str(path))
    log = tracevault.AuditLogger(session_id="dl")
    capture.install(pipeline, None)
    try:
        for _ in range(3):
            log.log_input("reach me at carol.dead@example.org")
        stats = pipeline.shutdown(timeout=0.3)
    finally:
        capture.install(None, None)
    assert stats.dead_lettered == 3
    text = path.read_text()
    assert "carol.dead@example.org" not in text and text.count("[EMAIL]") == 3


def test_what_a_stuck_store_was_never_handed_is_dead_lettered_at_shutdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store is stuck inside an append (a writer process retrying its ledger, a dead
    # peer): that batch may yet commit and stays alone, but what waits behind it in the
    # queue must not be lost when the process exits.
    monkeypatch.setattr("tracevault.pipeline._STOP_WAIT", 0.2)
    store = GatedStore(str(tmp_path / "stuck.db"))
    path = str(tmp_path / "dead.jsonl")
    pipeline = Pipeline(store, dead_letter_path=path)
    pipeline.submit(_event(0))
    assert store.entered.wait(60)  # the writer is inside append with event 0
    for i in range(1, 4):
        pipeline.submit(_event(i))
    stats = pipeline.shutdown(timeout=0.2)
    # Event 0 is still being written; the others count as dead-lettered, not gone.
    assert (stats.captured, stats.dead_lettered, stats.pending) == (4, 3, 1)
    assert _balanced(stats)
    assert [e.event_id for e in dead_letter_events(path)] == ["id-1", "id-2", "id-3"]
    store.gate.set()  # the stuck append completes after all: event 0 is in the ledger
    pipeline._thread.join(60)
    assert [e.event.event_id for e in store.events()] == ["id-0"]
    store.close()


def test_an_event_the_store_rejects_is_dead_lettered_and_the_rest_written(
    tmp_path: Path,
) -> None:
    class Picky(SQLiteStore):
        def append(self, events: Sequence[AuditEvent]) -> int:
            if any(e.data.get("poison") for e in events):
                raise TypeError("cannot encode this event")
            return super().append(events)

    store = Picky(str(tmp_path / "picky.db"))
    dead = tmp_path / "dead.jsonl"
    pipeline = Pipeline(store, dead_letter_path=str(dead))
    with _active(pipeline):
        log = tracevault.AuditLogger(session_id="poison")
        log.log_event("a")
        log.emit("custom", {"poison": True, "name": "bad"})
        log.log_event("b")
        assert not pipeline.flush(10)  # one event is not durable...
        log.log_event("c")
        assert pipeline.flush(10)  # ...and the writer carries on
    names = [e.event.data.get("name") for e in store.events()]
    assert names == ["a", "b", "c"]
    assert dead.read_text().count('"poison":true') == 1
    assert pipeline.stats().dead_lettered == 1


def test_a_middleware_bug_does_not_stop_the_writer(tmp_path: Path) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("and its message is broken too")

    def flaky(event: AuditEvent) -> AuditEvent:
        if event.data.get("name") == "boom":
            raise Unprintable()
        return event

    with capture_events(
        tmp_path, middleware=[flaky]
    ) as cap:
        log = tracevault.AuditLogger(session_id="bug")
        log.log_event("boom")
        log.log_event("after")
        events = cap.events()
        assert [e.data.get("name", e.data.get("withheld")) for e in events] == [True, "after"]
        assert cap.pipeline._thread.is_alive()


def test_ids_do_not_follow_the_users_random_seed() -> None:
    import random

    from tracevault.ids import new_span_id, new_trace_id, uuid7

    random.seed(1234)
    first = (new_trace_id(), new_span_id(), uuid7()[-12:])
    random.seed(1234)
    second = (new_trace_id(), new_span_id(), uuid7()[-12:])
    assert first[0] != second[0] and first[1] != second[1] and first[2] != second[2]


@pytest.fixture()
def from_env(cap: Capture, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``from_env(LEVEL="error")``: capture starts afresh from the environment, with
    those ``TRACEVAULT_*`` values and ``cap``'s ledger as the store."""
    def start(**values: str) -> None:
        capture.reset()
        monkeypatch.setenv("TRACEVAULT_STORE", cap.store.url)
        for name, value in values.items():
            monkeypatch.setenv(f"TRACEVAULT_{name}", value)
    return start


def test_a_bad_environment_value_does_not_raise_into_the_caller(
    cap: Capture, from_env: Any
) -> None:
    from_env(LEVEL="verbose")
    log = tracevault.AuditLogger(session_id="env")
    with log.tool_call("t") as call:  # reads the settings: must not raise
        call.result = 1
    assert capture.settings().level == "debug"  # the defaults, and an error was logged
    assert tracevault.flush(10)
    assert [e.event.phase for e in cap.store.events(session_id="env")] == ["start", "end"]


@pytest.mark.parametrize("value", ["-5", "nan", "inf"])
def test_a_slow_tool_threshold_out_of_range_keeps_its_default(
    cap: Capture, from_env: Any, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    from_env(SLOW_TOOL_MS=value)
    with tracevault.AuditLogger(session_id="env").tool_call("t") as call:
        call.result = 1
    assert capture.settings().slow_tool_ms == 10_000.0
    assert f"TRACEVAULT_SLOW_TOOL_MS={value!r}" in caplog.text
    assert tracevault.flush(10)
    assert [e.event.phase for e in cap.store.events(session_id="env")] == ["start", "end"]


def test_a_misspelt_redaction_policy_is_logged_and_the_default_one_applies(
    cap: Capture, from_env: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from_env(REDACT="stric")
    failures = capture.capture_errors()
    tracevault.AuditLogger(session_id="env").log_event("mail me at jane.doe@example.com")
    assert tracevault.flush(10)
    [stored] = [e.event for e in cap.store.events(session_id="env")]
    assert "jane.doe@example.com" not in str(stored.data)  # redacted, by the default policy
    assert "TRACEVAULT_REDACT='stric' is not a redaction policy" in caplog.text
    assert capture.capture_errors() == failures


def test_the_level_in_the_environment_applies_to_the_first_event(
    cap: Capture, from_env: Any
) -> None:
    from_env(LEVEL="error")
    assert capture.emit("custom", level="info", name="first", session_id="lvl") is False
    assert capture.emit("error", level="error", name="second", session_id="lvl") is True
    assert tracevault.flush(10)
    assert [e.event.name for e in cap.store.events(session_id="lvl")] == ["second"]


def test_configure_closes_the_store_it_opened(tmp_path: Path) -> None:
    pipeline = tracevault.configure(store=f"sqlite:///{tmp_path / 'a.db'}")
    store = pipeline._ensure_store()
    tracevault.configure(store=f"sqlite:///{tmp_path / 'b.db'}")
    with pytest.raises(StoreError, match="closed"):
        store.count()


def _child_records(i: int) -> None:
    # Runs in a multiprocessing child, which leaves through os._exit: no flush here.
    log = tracevault.AuditLogger(session_id=f"child-{i}")
    log.log_input(f"hello from child {i}")
    with log.tool_call("add", {"a": i}) as call:
        call.result = i + 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
@pytest.mark.parametrize(("writer", "start"), [("thread", "fork"), ("process", "fork"),
                                               ("thread", "spawn"), ("process", "forkserver")])
def test_multiprocessing_children_write_what_they_captured_before_exiting(
    tmp_path: Path, writer: str, start: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fork child inherits the configured pipeline; a spawn or forkserver child starts
    # afresh and knows only the environment, which configure() set.
    import multiprocessing

    monkeypatch.chdir(tmp_path)  # a child that missed the settings writes here instead
    monkeypatch.delenv("TRACEVAULT_STORE", raising=False)
    url = f"sqlite:///{tmp_path / 'mp.db'}"
    tracevault.configure(store=url, writer=writer)
    tracevault.AuditLogger(session_id="parent").log_input("parent")
    children = [multiprocessing.get_context(start).Process(target=_child_records, args=(i,))
                for i in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    assert [c.exitcode for c in children] == [0, 0, 0]
    assert tracevault.flush(30)
    store = open_store(url)
    try:
        sessions = sorted(s.session_id for s in store.sessions())
        assert sessions == ["child-0", "child-1", "child-2", "parent"]
        assert store.count() == 1 + 3 * 3 and store.verify().ok
    finally:
        store.close()
    assert not (tmp_path / "tracevault.db").exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_forked_child_keeps_the_configured_ledger_and_middleware(tmp_path: Path) -> None:
    def mask(event: AuditEvent) -> AuditEvent:
        event.data = {"masked": True}
        return event

    store = SQLiteStore(str(tmp_path / "fork.db"))
    tracevault.configure(store=store, middleware=[mask])
    tracevault.AuditLogger(session_id="parent").log_event("secret in parent")
    assert tracevault.flush(10)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            tracevault.AuditLogger(session_id="child").log_event("secret in child")
            code = 0 if tracevault.flush(30) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [e.event.data for e in store.events()] == [{"masked": True}] * 2
    assert not (tmp_path / "tracevault.db").exists()


def test_events_neither_written_nor_dead_lettered_count_as_dropped(tmp_path: Path) -> None:
    store = FlakyStore(str(tmp_path / "down.db"))
    store.healthy.clear()  # the ledger stays down
    pipeline = Pipeline(store, dead_letter_path=str(tmp_path / "no-such-dir" / "dead.jsonl"))
    for i in range(3):
        pipeline.submit(AuditEvent(event_id=f"e{i}", timestamp=datetime.now(timezone.utc),
                                   kind="custom"))
    assert pipeline.flush(0.2) is False
    stats = pipeline.shutdown(timeout=0.5)
    # Nothing could be written and the dead-letter file could not be opened: lost, and
    # counted so (they used to be counted as dead-lettered).
    assert (stats.dead_lettered, stats.dropped, stats.written) == (0, 3, 0)
    assert stats.captured == 3


def test_a_writer_shutdown_gave_up_on_takes_nothing_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shutdown empties the queue itself when the writer is stuck in a store call; once
    # the call returns, the writer must not take what is left at the same time: two
    # threads would run framework callbacks at once, and out of order.
    monkeypatch.setattr("tracevault.pipeline._STOP_WAIT", 0.2)
    store = GatedStore(str(tmp_path / "stuck.db"))
    path = str(tmp_path / "dead.jsonl")
    pipeline = Pipeline(store, dead_letter_path=path)
    first_running, finish_first = threading.Event(), threading.Event()
    ran: list[tuple[str, str]] = []

    def first() -> None:
        ran.append(("first", threading.current_thread().name))
        first_running.set()
        finish_first.wait(60)
        capture.emit("custom", name="first")

    def second() -> None:
        ran.append(("second", threading.current_thread().name))
        capture.emit("custom", name="second")

    with _active(pipeline):
        pipeline.submit(_event(0))
        assert store.entered.wait(60)  # the writer is inside append with event 0
        capture.later(first)
        capture.later(second)
        stopping = threading.Thread(target=pipeline.shutdown, kwargs={"timeout": 0.2},
                                    name="stopping")
        stopping.start()
        assert first_running.wait(60)  # shutdown runs the first callback ...
        store.gate.set()  # ... when the stuck append returns
        pipeline._thread.join(60)
        assert not pipeline._thread.is_alive()
        finish_first.set()
        stopping.join(60)
    assert ran == [("first", "stopping"), ("second", "stopping")]
    assert [e.name for e in dead_letter_events(path)] == ["first", "second"]
    assert [e.event.event_id for e in store.events()] == ["id-0"]
    store.close()
