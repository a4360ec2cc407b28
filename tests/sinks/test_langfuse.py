"""The Langfuse sink through the real SDK, against a local receiver of its OTLP ingestion."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from opentelemetry import trace as otel_trace

from tracevault.sinks.base import Forwarder
from tracevault.sinks.langfuse import LangfuseSink
from tracevault.testing import capture_events


def _sink(receiver: Any) -> tuple[LangfuseSink, str]:
    # A fresh key per test: the SDK keeps one client per public key in a process.
    public_key = f"pk-lf-{uuid.uuid4().hex[:8]}"
    return LangfuseSink(public_key=public_key, secret_key="sk-lf-test",
                        base_url=receiver.url), public_key


def _deliver(tmp_path: Any, receiver: Any, agent_run: Any) -> tuple[str, str]:
    sink, public_key = _sink(receiver)
    with capture_events(tmp_path) as cap:
        trace_id = agent_run()
        cap.flush()
        forwarder = Forwarder(cap.store, sink, batch_size=6)
        report = forwarder.drain_once(timeout=30)
        forwarder.shutdown()
    assert report.ok, report
    return str(trace_id), public_key


def test_one_trace_typed_observations_and_tree(tmp_path, receiver, agent_run):
    before = otel_trace.get_tracer_provider()
    trace_id, public_key = _deliver(tmp_path, receiver, agent_run)
    assert otel_trace.get_tracer_provider() is before  # the global provider is untouched

    _, path, headers = receiver.received.requests[0]
    assert path == "/api/public/otel/v1/traces"
    auth = {k.lower(): v for k, v in headers.items()}["authorization"]
    assert base64.b64decode(auth.split()[1]).decode() == f"{public_key}:sk-lf-test"

    spans = receiver.unique_spans()
    assert {s.trace_id for s in spans.values()} == {trace_id}
    assert {s.scope for s in spans.values()} == {"langfuse-sdk"}
    types = {s.name: s.attributes["langfuse.observation.type"] for s in spans.values()}
    assert types["support-agent"] == "agent"
    assert types["plan"] == "chain"
    assert types["gpt-4o-mini"] == "generation"
    assert types["get_weather"] == "tool"
    assert types["kb"] == "retriever"
    assert types["user_message"] == "event" and types["final_answer"] == "event"
    by_name = {s.name: s for s in spans.values()}
    agent, plan, gen = by_name["support-agent"], by_name["plan"], by_name["gpt-4o-mini"]
    assert agent.parent_span_id == "" and plan.parent_span_id == agent.span_id
    assert gen.parent_span_id == plan.span_id
    assert by_name["get_weather"].parent_span_id == agent.span_id
    for span in spans.values():
        assert span.attributes["user.id"] == "alice"
        assert span.attributes["session.id"] == "chat-7"
        assert span.attributes["langfuse.trace.name"] == "support-agent"
    assert gen.attributes["langfuse.observation.model.name"] == "gpt-4o-mini"
    usage = json.loads(gen.attributes["langfuse.observation.usage_details"])
    assert usage == {"input": 120, "output": 30, "total": 150, "input_cached_tokens": 64,
                     "input_cache_creation_tokens": 16}
    cost = json.loads(gen.attributes["langfuse.observation.cost_details"])
    assert cost["total"] > 0  # from the shared price table
    failed = by_name["book_flight"]
    assert failed.attributes["langfuse.observation.level"] == "ERROR"
    assert "no seats left" in failed.attributes["langfuse.observation.status_message"]
    assert json.loads(by_name["get_weather"].attributes["langfuse.observation.input"]) == {
        "city": "Paris"}


def test_redelivery_updates_the_same_observations(tmp_path, receiver, agent_run):
    public_key = f"pk-lf-{uuid.uuid4().hex[:8]}"
    with capture_events(tmp_path) as cap:
        agent_run()
        cap.flush()
        for name in ("first", "second"):  # two cursors: the whole ledger is sent twice
            sink = LangfuseSink(name=name, public_key=public_key, secret_key="sk",
                                base_url=receiver.url)
            assert Forwarder(cap.store, sink, batch_size=4).drain_once(timeout=30).ok
    spans = receiver.spans()
    unique = receiver.unique_spans()
    assert len(spans) == 2 * len(unique)
    assert sorted((s.span_id, s.start_ns, s.end_ns) for s in spans[: len(unique)]) == sorted(
        (s.span_id, s.start_ns, s.end_ns) for s in spans[len(unique):])
