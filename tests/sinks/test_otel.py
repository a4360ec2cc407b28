"""The OpenTelemetry sink against a local OTLP receiver, through the real SDK exporter."""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics.export import MetricExportResult

from tracevault.sinks.base import Forwarder
from tracevault.sinks.otel import OTelSink
from tracevault.testing import capture_events


def _deliver(tmp_path: Any, receiver: Any, agent_run: Any, **sink_kwargs: Any) -> str:
    with capture_events(tmp_path) as cap:
        trace_id = agent_run()
        cap.flush()
        sink = OTelSink(endpoint=receiver.url, **sink_kwargs)
        forwarder = Forwarder(cap.store, sink, batch_size=5)
        report = forwarder.drain_once(timeout=30)
        forwarder.shutdown()
        assert report.ok, report
        assert report.cursor == cap.store.head()[0]
    return str(trace_id)


def test_spans_follow_genai_conventions_and_keep_the_tree(tmp_path, receiver, agent_run):
    trace_id = _deliver(tmp_path, receiver, agent_run)
    spans = receiver.unique_spans()
    by_name = {s.name: s for s in spans.values()}
    assert {s.trace_id for s in spans.values()} == {trace_id}
    agent = by_name["invoke_agent support-agent"]
    chat = by_name["chat gpt-4o-mini"]
    tool = by_name["execute_tool get_weather"]
    failed = by_name["execute_tool book_flight"]
    plan = by_name["plan"]
    assert agent.parent_span_id == ""
    assert plan.parent_span_id == agent.span_id and chat.parent_span_id == plan.span_id
    assert tool.parent_span_id == agent.span_id
    assert agent.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert agent.attributes["gen_ai.agent.name"] == "support-agent"
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert chat.attributes["gen_ai.provider.name"] == "openai"
    assert chat.attributes["gen_ai.usage.input_tokens"] == 120
    assert chat.attributes["gen_ai.usage.output_tokens"] == 30
    assert chat.attributes["gen_ai.usage.cache_read.input_tokens"] == 64
    assert chat.attributes["gen_ai.usage.cache_creation.input_tokens"] == 16
    assert chat.attributes["gen_ai.request.temperature"] == 0.2
    assert chat.kind == otel_trace.SpanKind.CLIENT.value + 1  # proto enum is offset by one
    assert tool.attributes["gen_ai.tool.name"] == "get_weather"
    assert tool.attributes["gen_ai.tool.call.id"] == "call_1"
    assert failed.status_code == 2 and "no seats left" in failed.status_message
    error_event = next(s for s in spans.values() if s.attributes["tracevault.kind"] == "error")
    assert error_event.parent_span_id == failed.span_id
    for span in spans.values():
        assert span.attributes["gen_ai.conversation.id"] == "chat-7"
        assert span.attributes["user.id"] == "alice"
        assert span.end_ns >= span.start_ns > 0
        assert span.resource["service.name"] == "tracevault"
    assert agent.start_ns <= tool.start_ns <= tool.end_ns <= agent.end_ns
    # a model call logged after the fact starts duration_ms before its record
    assert chat.end_ns - chat.start_ns == 420_000_000
    # content is off by default
    assert not any(k.startswith("gen_ai.input") or k.startswith("gen_ai.tool.call.arg")
                   for s in spans.values() for k in s.attributes)
    assert "Weather in Paris" not in receiver.body_text()


def test_content_only_when_opted_in(tmp_path, receiver, agent_run):
    _deliver(tmp_path, receiver, agent_run, capture_content=True)
    by_name = {s.name: s for s in receiver.unique_spans().values()}
    assert "Weather in Paris?" in by_name["chat gpt-4o-mini"].attributes["gen_ai.input.messages"]
    assert '"city":"Paris"' in by_name["execute_tool get_weather"].attributes[
        "gen_ai.tool.call.arguments"]


def test_metrics_token_usage_duration_tools_errors(tmp_path, receiver, agent_run):
    _deliver(tmp_path, receiver, agent_run)
    metrics = receiver.received.metrics
    usage = metrics["gen_ai.client.token.usage"][-1]
    points = {
        {kv.key: kv.value.string_value for kv in p.attributes}["gen_ai.token.type"]: p.sum
        for p in usage.histogram.data_points
    }
    assert points == {"input": 120, "output": 30}
    assert "gen_ai.client.operation.duration" in metrics
    tools = metrics["tracevault.tool.calls"][-1].sum.data_points
    assert sum(p.as_int for p in tools) == 2
    errors = metrics["tracevault.errors"][-1].sum.data_points
    assert sum(p.as_int for p in errors) >= 2  # the failed tool and its error event


def test_a_metrics_endpoint_that_hangs_does_not_hold_up_the_spans(tmp_path, receiver, agent_run):
    class Hanging(OTLPMetricExporter):
        """The real exporter behind a receiver that takes the request and does not answer."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.asked = threading.Event()
            self.answer = threading.Event()

        def export(self, metrics_data: Any, timeout_millis: float = 10_000,
                   **kwargs: Any) -> MetricExportResult:
            self.asked.set()
            self.answer.wait()
            return super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)

    exporter = Hanging(endpoint=f"{receiver.url}/v1/metrics")
    watchdog = threading.Timer(30, exporter.answer.set)
    with capture_events(tmp_path) as cap:
        agent_run()
        cap.flush()
        forwarder = Forwarder(cap.store, OTelSink(endpoint=receiver.url, metric_exporter=exporter),
                              batch_size=5)
        watchdog.start()
        try:
            report = forwarder.drain_once(timeout=30)
            assert exporter.asked.wait(30)
            assert not exporter.answer.is_set()  # every span went out while metrics hung
            assert report.ok and report.cursor == cap.store.head()[0]
            assert "execute_tool book_flight" in {s.name for s in receiver.unique_spans().values()}
        finally:
            watchdog.cancel()
            exporter.answer.set()
            forwarder.shutdown()
    tools = receiver.received.metrics["tracevault.tool.calls"][-1].sum.data_points
    assert sum(p.as_int for p in tools) == 2  # every batch counted once it answered


def test_never_touches_the_global_tracer_provider(tmp_path, receiver, agent_run):
    before = otel_trace.get_tracer_provider()
    _deliver(tmp_path, receiver, agent_run)
    assert otel_trace.get_tracer_provider() is before


def test_redelivery_produces_the_same_span_ids(tmp_path, receiver, agent_run):
    with capture_events(tmp_path) as cap:
        agent_run()
        cap.flush()
        for name in ("a", "b"):  # two cursors: the whole ledger is sent twice
            forwarder = Forwarder(cap.store, OTelSink(name=name, endpoint=receiver.url),
                                  batch_size=3)
            assert forwarder.drain_once(timeout=30).ok
            forwarder.shutdown()
    spans = receiver.spans()
    unique = receiver.unique_spans()
    assert len(spans) == 2 * len(unique)
    first, second = spans[: len(unique)], spans[len(unique):]
    assert sorted((s.span_id, s.name, s.start_ns, s.end_ns) for s in first) == sorted(
        (s.span_id, s.name, s.start_ns, s.end_ns) for s in second)
