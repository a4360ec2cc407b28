"""Batches a sink cannot deliver as they are: refused in part, too large for one request,
or holding an event the sink cannot convert. None of them stalls the sink: the forwarder
splits the batch, skips the one event at fault with a note, and delivers the rest;
failures of the receiver or the ledger are still retried."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import pytest

import tracevault
from tracevault.sinks import langfuse as langfuse_sink
from tracevault.sinks import langsmith as langsmith_sink
from tracevault.sinks import otel as otel_sink
from tracevault.sinks.base import Batch, Forwarder, Sink, converting
from tracevault.sinks.http import ResponseRecorder
from tracevault.store import StoreError
from tracevault.testing import capture_events


def _otlp(url: str, **kwargs: Any) -> Sink:
    return otel_sink.OTelSink(endpoint=url, timeout=1, metrics=False, capture_content=True,
                              **kwargs)


def _langfuse(url: str, **kwargs: Any) -> Sink:
    return langfuse_sink.LangfuseSink(public_key=f"pk-lf-{uuid.uuid4().hex[:8]}",
                                      secret_key="sk-lf", base_url=url, timeout=1, **kwargs)


def _langsmith(url: str, **kwargs: Any) -> Sink:
    return langsmith_sink.LangSmithSink(api_url=url, api_key="lsv2-test", timeout_ms=2000,
                                        **kwargs)


SINKS = {"otlp": _otlp, "langfuse": _langfuse, "langsmith": _langsmith}


def _delivered_ids(receiver: Any) -> set[str]:
    """Event ids the receiver holds, from spans (OTLP, Langfuse) or runs (LangSmith)."""
    ids: set[str] = set()
    for span in receiver.spans():
        raw = span.attributes.get("tracevault.event_ids") or json.loads(
            span.attributes["langfuse.observation.metadata.tracevault_event_ids"])
        ids.update(raw)
    for run in receiver.runs().values():
        ids.update(run["extra"]["metadata"]["tracevault_event_ids"])
    return ids


def _drain(store: Any, sink: Sink, **kwargs: Any) -> tuple[Forwarder, Any, list[float]]:
    """Drain once; a retry (a pause asked of ``wait``) ends the drain, so a sink that
    would stall shows as a report that is not ok instead of a hanging test."""
    waits: list[float] = []
    forwarder = Forwarder(store, sink, wait=lambda d: waits.append(d) is None, **kwargs)
    report = forwarder.drain_once(timeout=30)
    forwarder.shutdown()
    return forwarder, report, waits


def _seq_of(store: Any, event_id: str) -> int:
    return next(s.seq for s in store.events() if s.event.event_id == event_id)


# --- the forwarder ------------------------------------------------------------------------


class Mapping:
    """A sink that maps each event with ``convert`` (under ``converting``) and keeps it."""

    name = "map"

    def __init__(self, convert: Any) -> None:
        self.convert = convert
        self.seqs: list[int] = []

    def export(self, batch: Batch) -> None:
        with converting():
            mapped = [self.convert(s) for s in batch.events]
        self.seqs.extend(mapped)

    def shutdown(self) -> None:
        pass


def test_an_event_the_sink_cannot_convert_is_skipped_alone(tmp_path):
    def convert(stored: Any) -> int:
        return int(stored.event.data["payload"]["n"]) and stored.seq  # "seven": ValueError

    with capture_events(tmp_path) as cap:
        log = tracevault.AuditLogger(session_id="s")
        for i in range(10):
            log.log_event("step", {"n": "seven" if i == 6 else i + 1})
        cap.flush()
        odd = next(s for s in cap.store.events() if s.event.data["payload"]["n"] == "seven")
        sink = Mapping(convert)
        forwarder, report, waits = _drain(cap.store, sink, batch_size=10)
        assert report.ok and not waits
        assert sink.seqs == [s for s in range(1, 11) if s != odd.seq]
        assert forwarder.skipped == 1
        note = forwarder.last_error or ""
        assert f"event #{odd.seq} ({odd.event.event_id}) not convertible" in note
        assert "ValueError" in note
        (row,) = [c for c in cap.store.sink_cursors() if c.name == "map"]
        assert row.seq == 10 and row.last_error == note


def test_a_ledger_failure_while_converting_is_retried_not_skipped(tmp_path):
    def convert(stored: Any) -> int:
        raise StoreError("ledger unavailable")  # says nothing about the event

    with capture_events(tmp_path) as cap:
        tracevault.AuditLogger(session_id="s").log_event("step", {"n": 1})
        cap.flush()
        forwarder, report, waits = _drain(cap.store, Mapping(convert))
        assert not report.ok and report.cursor == 0 and len(waits) == 1
        assert forwarder.skipped == 0
        assert report.error == "StoreError: ledger unavailable"


def test_one_refused_request_classifies_the_whole_delivery(receiver):
    recorder = ResponseRecorder()
    session = recorder.session()
    url = f"{receiver.url}/ingest"
    receiver.refuse_marker = b"POISON"
    session.post(url, data=b"POISON")  # 400
    session.post(url, data=b"fine")  # 200: does not hide the refusal
    assert recorder.outcome() == (400, None)

    recorder.clear()
    receiver.fail_status, receiver.fail_retry_after, receiver.fail_times = 503, "2", 1
    session.post(url, data=b"fine")  # 503, retry in 2 s
    session.post(url, data=b"fine")  # 200
    assert recorder.outcome() == (503, 2.0)

    recorder.clear()
    receiver.fail_status, receiver.fail_retry_after, receiver.fail_times = 503, "2", 1
    session.post(url, data=b"fine")  # 503 ...
    session.post(url, data=b"POISON")  # ... then a refusal: the payload is at fault
    assert recorder.outcome() == (400, None)
    recorder.clear()
    assert recorder.outcome() == (None, None)


# --- the sinks ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["otlp", "langfuse"])
def test_a_batch_over_the_request_size_limit_is_split_and_an_oversized_event_skipped(
        tmp_path, receiver, kind):
    limit = 60_000
    with capture_events(tmp_path) as cap:
        log = tracevault.AuditLogger(session_id="rag")
        for i in range(12):  # ~8 kB each: together over the limit, alone well under it
            size = 100_000 if i == 5 else 8_000
            log.log_retrieval(f"q{i}", [{"id": f"d{i}", "content": "x" * size}], name="kb")
        cap.flush()
        big = next(s for s in cap.store.events() if s.event.data.get("query") == "q5")
        forwarder, report, waits = _drain(cap.store, SINKS[kind](receiver.url,
                                                                 max_request_size=limit))
        assert report.ok and not waits, report  # never retried, never "unreachable"
        assert forwarder.skipped == 1
        assert f"event #{big.seq} ({big.event.event_id}) refused for good" in (
            forwarder.last_error or "")
        assert "max_request_size" in (forwarder.last_error or "")
        others = {s.event.event_id for s in cap.store.events()} - {big.event.event_id}
        assert _delivered_ids(receiver) == others
        assert receiver.data_requests >= 2  # split in several requests under the limit
        assert all(len(body) <= limit for body in receiver.received.bodies)


def test_langfuse_refusal_in_one_request_is_not_hidden_by_the_next(tmp_path, receiver):
    # Langfuse exports a batch in requests of 512 steps: a refusal of the first must
    # make the batch a refusal although the second request is accepted.
    with capture_events(tmp_path) as cap:
        log = tracevault.AuditLogger(session_id="s")
        for i in range(600):
            log.log_event("POISON" if i == 100 else f"ev{i}", {"i": i})
        cap.flush()
        poison = next(s for s in cap.store.events() if s.event.name == "POISON")
        receiver.refuse_marker = b"POISON"
        forwarder, report, waits = _drain(cap.store, _langfuse(receiver.url), batch_size=1000)
        assert report.ok and not waits, report
        assert forwarder.skipped == 1
        assert f"event #{poison.seq} ({poison.event.event_id}) refused for good" in (
            forwarder.last_error or "")
        others = {s.event.event_id for s in cap.store.events()} - {poison.event.event_id}
        assert _delivered_ids(receiver) == others


@pytest.mark.parametrize("kind", sorted(SINKS))
def test_an_event_a_sink_cannot_convert_is_skipped_and_the_rest_delivered(
        tmp_path, receiver, monkeypatch, kind):
    module = {"otlp": otel_sink, "langfuse": langfuse_sink, "langsmith": langsmith_sink}[kind]
    real = module.outputs_of

    def outputs_of(node: Any) -> Any:
        if node.end.name == "odd":
            raise TypeError("an output of a shape the mapping does not handle")
        return real(node)

    monkeypatch.setattr(module, "outputs_of", outputs_of)
    with capture_events(tmp_path) as cap:
        log = tracevault.AuditLogger(session_id="s")
        with log.span("agent", kind="agent", inputs={"q": "hi"}):
            log.log_event("before", {"i": 1})
            log.log_event("odd", {"i": 2})
            log.log_event("after", {"i": 3})
        cap.flush()
        odd = next(s for s in cap.store.events() if s.event.name == "odd")
        forwarder, report, waits = _drain(cap.store, SINKS[kind](receiver.url))
        assert report.ok and not waits, report
        assert forwarder.skipped == 1
        note = forwarder.last_error or ""
        assert f"event #{odd.seq} ({odd.event.event_id}) not convertible" in note
        assert "TypeError" in note
        others = {s.event.event_id for s in cap.store.events()} - {odd.event.event_id}
        assert _delivered_ids(receiver) == others


@pytest.mark.parametrize("kind", ["otlp", "langfuse"])
def test_odd_values_in_a_model_call_are_left_out_not_fatal(tmp_path, receiver, caplog, kind):
    with capture_events(tmp_path) as cap:
        log = tracevault.AuditLogger(session_id="s")
        log.emit("llm_call", {
            "model": "gpt-4o-mini",
            "time_to_first_token_ms": time.time_ns(),  # nanoseconds by mistake
            "parameters": [["temperature", 0.2]],  # pairs, not a mapping
            "usage": {"input": 1e300, "output": 3},  # not a token count
        }, name="gpt-4o-mini")
        log.emit("llm_call", {"model": "gpt-4o-mini",
                              "parameters": {"temperature": 2**64 - 1, "seed": 7}},
                 name="gpt-4o-mini")
        cap.flush()
        with caplog.at_level(logging.ERROR):
            forwarder, report, waits = _drain(cap.store, SINKS[kind](receiver.url))
        assert report.ok and not waits, report
        assert forwarder.skipped == 0
        assert _delivered_ids(receiver) == {s.event.event_id for s in cap.store.events()}
        assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]
        spans = receiver.spans()
        assert len(spans) == 2
        first, second = sorted(spans, key=lambda s: s.start_ns)
        if kind == "otlp":
            assert "gen_ai.usage.input_tokens" not in first.attributes
            assert first.attributes["gen_ai.usage.output_tokens"] == 3
            assert "gen_ai.request.temperature" not in second.attributes
            assert second.attributes["gen_ai.request.seed"] == 7
        else:
            assert "langfuse.observation.completion_start_time" not in first.attributes
            assert "langfuse.observation.model.parameters" not in first.attributes
