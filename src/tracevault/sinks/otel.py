"""OpenTelemetry sink: spans and metrics over OTLP/HTTP, following the GenAI conventions.

Uses the official ``opentelemetry-sdk`` and ``opentelemetry-exporter-otlp-proto-http``
(``pip install 'tracevault[otel]'``), configured by the standard
``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, timeout, compression, TLS),
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``. This is how Datadog, New Relic,
Elastic, Jaeger, Grafana Tempo or Phoenix receive tracevault data.

The sink owns a **private** ``TracerProvider`` and ``MeterProvider``; the application's
global providers are never read or replaced. Each finished step becomes one span with
the step's own start and end time and ids derived from tracevault ids (so a batch sent
twice yields the same spans):

* ``agent`` -> ``invoke_agent {name}``; ``llm_call`` -> ``chat {model}`` (kind CLIENT);
  ``tool_call`` -> ``execute_tool {name}``; ``retrieval`` -> ``retrieval {name}``;
  ``chain`` keeps its name; point events (input, reasoning, output, error, custom) are
  zero-length spans named ``{kind} {name}`` under the step that produced them;
* ``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
  ``gen_ai.usage.input_tokens``/``output_tokens``, ``gen_ai.response.finish_reasons``,
  ``gen_ai.tool.name``, ``gen_ai.tool.call.id``, ``gen_ai.agent.name``,
  ``gen_ai.conversation.id`` (the session) and ``user.id``;
* message, tool and retrieval content (``gen_ai.input.messages``,
  ``gen_ai.output.messages``, ``gen_ai.tool.call.arguments``/``result``, ...) only when
  ``TRACEVAULT_OTEL_CAPTURE_CONTENT=true`` (or ``capture_content=True``);
* metrics ``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration``,
  ``tracevault.tool.calls`` and ``tracevault.errors``. Metrics are cumulative, so an
  export that fails is caught up by the next one; after a crash the same events may be
  counted twice (spans are deduplicated by id, counters cannot be).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)

from tracevault.config import env_flag
from tracevault.sinks.base import (
    Batch,
    ConversionError,
    PermanentError,
    TransientError,
    converting,
    http_failure,
)
from tracevault.sinks.http import ResponseRecorder
from tracevault.sinks.payload import cost_usd, inputs_of, model_of, outputs_of, usage_of
from tracevault.sinks.tree import Node, epoch_ns, nodes, otel_span_id, otel_trace_id

log = logging.getLogger("tracevault.sinks")

SCOPE = "tracevault"
# The OTLP exporters' default (the OTLP specification's recommended limit): a larger
# request is dropped by the exporter before it is sent.
MAX_REQUEST_SIZE = 64 * 1024 * 1024
AttrValue = str | bool | int | float | Sequence[str] | Sequence[int] | Sequence[float]


class PresetIds(IdGenerator):
    """Hands out the ids the sink decided for the span being started (per thread)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def preset(self, trace_id: int, span_id: int) -> None:
        self._local.trace_id = trace_id
        self._local.span_id = span_id

    def generate_trace_id(self) -> int:
        return int(self._local.trace_id)

    def generate_span_id(self) -> int:
        return int(self._local.span_id)


class _Collect(SpanProcessor):
    """Keeps ended spans so the sink can export them itself and see the result."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


_METRICS_LAST_EXPORT_S = 2.0


def private_tracer_provider(ids: IdGenerator) -> TracerProvider:
    """A TracerProvider of our own: every span sampled, ids from ``ids``, never global.

    It has no exit hook of its own (the SDK's would wait, unbounded, for a batch
    processor retrying a receiver that does not answer): the sink shuts it down,
    within the budget tracevault's exit gives the sinks."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "tracevault"}))
    return TracerProvider(resource=resource, sampler=ALWAYS_ON, id_generator=ids,
                          shutdown_on_exit=False)


def unsent(spans: Sequence[ReadableSpan], max_request_size: int) -> PermanentError | None:
    """Return why an OTLP exporter that failed on ``spans`` never sent them, when the
    spans themselves are the reason: they cannot be encoded, or their request is over
    ``max_request_size`` bytes. Either fails the same way every time, like an HTTP 413.
    ``None`` when the spans could have been sent (the receiver did not answer)."""
    try:
        with converting():
            size = encode_spans(spans).ByteSize()
    except ConversionError as exc:
        return exc
    if 0 < max_request_size < size:
        return PermanentError(f"OTLP request of {size} bytes is over the exporter's "
                              f"max_request_size of {max_request_size} bytes")
    return None


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str).decode()


class OTelSink:
    """Exports finished steps as OTLP spans (and GenAI metrics) to a collector."""

    def __init__(
        self,
        *,
        name: str = "otlp",
        endpoint: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        capture_content: bool | None = None,
        metrics: bool = True,
        span_exporter: SpanExporter | None = None,
        metric_exporter: MetricExporter | None = None,
        max_request_size: int = MAX_REQUEST_SIZE,
    ) -> None:
        self.name = name
        self.max_request_size = max_request_size
        self.capture_content = (
            env_flag("TRACEVAULT_OTEL_CAPTURE_CONTENT")
            if capture_content is None
            else capture_content
        )
        base = endpoint.rstrip("/") if endpoint else None
        self.responses = ResponseRecorder()
        self._exporter = span_exporter or OTLPSpanExporter(
            endpoint=f"{base}/v1/traces" if base else None, headers=headers, timeout=timeout,
            session=self.responses.session(), max_request_size=max_request_size,
        )
        self._ids = PresetIds()
        self._collect = _Collect()
        self._provider = private_tracer_provider(self._ids)
        self._provider.add_span_processor(self._collect)
        self._tracer = self._provider.get_tracer(SCOPE)
        self._meters: MeterProvider | None = None
        self._metrics_due = threading.Event()
        self._metrics_thread: threading.Thread | None = None
        self._closing = False
        if metrics:
            exporter = metric_exporter or OTLPMetricExporter(
                endpoint=f"{base}/v1/metrics" if base else None, headers=headers, timeout=timeout,
            )
            reader = PeriodicExportingMetricReader(exporter, export_interval_millis=math.inf)
            self._meters = MeterProvider(metric_readers=[reader], resource=self._provider.resource,
                                         shutdown_on_exit=False)  # as the tracer provider
            meter = self._meters.get_meter(SCOPE)
            self._tokens = meter.create_histogram(
                "gen_ai.client.token.usage", unit="{token}",
                description="Tokens used by model calls, by gen_ai.token.type")
            self._duration = meter.create_histogram(
                "gen_ai.client.operation.duration", unit="s",
                description="Duration of GenAI operations (model, tool and agent calls)")
            self._tool_calls = meter.create_counter(
                "tracevault.tool.calls", unit="{call}", description="Tool calls by tool and status")
            self._errors = meter.create_counter(
                "tracevault.errors", unit="{error}", description="Failed steps and error events")
        self._lock = threading.Lock()

    # --- building spans ---------------------------------------------------------------

    def spans_for(self, batch: Batch) -> list[ReadableSpan]:
        """Return the OTel spans for the steps that finish in ``batch`` (no I/O)."""
        with self._lock:
            self._collect.spans = []
            for node in nodes(batch.events, batch.spans):
                self._start_and_end(node)
            spans, self._collect.spans = self._collect.spans, []
        return spans

    def _start_and_end(self, node: Node) -> None:
        trace_id = otel_trace_id(node.trace_id)
        self._ids.preset(trace_id, otel_span_id(node.node_id))
        context = Context()
        if node.parent_id:
            parent = SpanContext(trace_id, otel_span_id(node.parent_id), is_remote=False,
                                 trace_flags=TraceFlags(TraceFlags.SAMPLED))
            context = set_span_in_context(NonRecordingSpan(parent), context)
        name, kind, attributes = self.describe(node)
        span = self._tracer.start_span(name, context=context, kind=kind, attributes=attributes,
                                       start_time=epoch_ns(node.start_time))
        error = node.error
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
            span.set_attribute("error.type", error.split(":", 1)[0])
        span.end(end_time=epoch_ns(node.end_time))

    def describe(self, node: Node) -> tuple[str, SpanKind, dict[str, AttrValue]]:
        """Return the span name, kind and attributes for ``node``."""
        first = node.first
        attrs: dict[str, AttrValue] = {
            "tracevault.kind": node.kind,
            "tracevault.level": node.level,
            "tracevault.event_ids": list(node.event_ids),
            "tracevault.framework": node.end.framework,
        }
        if node.end.trace_id:
            attrs["tracevault.trace_id"] = node.end.trace_id
        if first.session_id:
            attrs["gen_ai.conversation.id"] = first.session_id
            attrs["session.id"] = first.session_id
        if first.user_id:
            attrs["user.id"] = first.user_id
        if first.tags:
            attrs["tracevault.tags"] = [str(t) for t in first.tags]
        data = node.data
        kind, name = node.kind, node.name
        content = self.capture_content
        if kind == "agent":
            attrs.update({"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name})
            self._content(attrs, content, "tracevault.inputs", inputs_of(node))
            self._content(attrs, content, "tracevault.outputs", outputs_of(node))
            return f"invoke_agent {name}", SpanKind.INTERNAL, attrs
        if kind == "llm_call":
            model = model_of(node) or "unknown"
            attrs.update({"gen_ai.operation.name": "chat", "gen_ai.request.model": model,
                          "gen_ai.response.model": model})
            if isinstance(data.get("provider"), str):
                attrs["gen_ai.provider.name"] = data["provider"]
            usage = usage_of(data)
            if "input" in usage:
                attrs["gen_ai.usage.input_tokens"] = usage["input"]
            if "output" in usage:
                attrs["gen_ai.usage.output_tokens"] = usage["output"]
            if "cached" in usage:
                attrs["gen_ai.usage.cache_read.input_tokens"] = usage["cached"]
            if "cache_write" in usage:
                attrs["gen_ai.usage.cache_creation.input_tokens"] = usage["cache_write"]
            if isinstance(data.get("finish_reason"), str):
                attrs["gen_ai.response.finish_reasons"] = [data["finish_reason"]]
            params = data.get("parameters")
            if isinstance(params, dict):
                for key in ("temperature", "top_p", "max_tokens", "seed"):
                    value = params.get(key)
                    if isinstance(value, float) or (  # OTLP integers are 64-bit
                            isinstance(value, int) and not isinstance(value, bool)
                            and -(2**63) <= value < 2**63):
                        attrs[f"gen_ai.request.{key}"] = value
            cost = cost_usd(data)
            if cost is not None:
                attrs["tracevault.cost_usd"] = cost
            self._content(attrs, content, "gen_ai.input.messages", inputs_of(node))
            self._content(attrs, content, "gen_ai.output.messages", outputs_of(node))
            return f"chat {model}", SpanKind.CLIENT, attrs
        if kind == "tool_call":
            attrs.update({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
                          "gen_ai.tool.type": "function"})
            if data.get("tool_call_id"):
                attrs["gen_ai.tool.call.id"] = str(data["tool_call_id"])
            if isinstance(data.get("status"), str):
                attrs["tracevault.tool.status"] = data["status"]
            self._content(attrs, content, "gen_ai.tool.call.arguments", inputs_of(node))
            self._content(attrs, content, "gen_ai.tool.call.result", outputs_of(node))
            return f"execute_tool {name}", SpanKind.INTERNAL, attrs
        if kind == "retrieval":
            attrs["gen_ai.operation.name"] = "retrieval"
            docs = data.get("documents")
            if isinstance(docs, list):
                attrs["tracevault.retrieval.documents"] = len(docs)
            self._content(attrs, content, "tracevault.retrieval.query", inputs_of(node))
            self._content(attrs, content, "tracevault.retrieval.results", outputs_of(node))
            return f"retrieval {name}", SpanKind.INTERNAL, attrs
        if kind == "chain":
            self._content(attrs, content, "tracevault.inputs", inputs_of(node))
            self._content(attrs, content, "tracevault.outputs", outputs_of(node))
            return name, SpanKind.INTERNAL, attrs
        self._content(attrs, content, "tracevault.content",
                      inputs_of(node) if kind == "input" else outputs_of(node))
        label = f"{kind} {node.end.name}" if node.end.name and node.end.name != kind else kind
        return label, SpanKind.INTERNAL, attrs

    @staticmethod
    def _content(attrs: dict[str, AttrValue], enabled: bool, key: str, value: Any) -> None:
        if enabled and value is not None:
            attrs[key] = value if isinstance(value, str) else _json(value)

    # --- delivery ---------------------------------------------------------------------

    def export(self, batch: Batch) -> None:
        # Everything is converted before anything is sent or counted: a batch that fails
        # to convert is halved and sent again, and its metrics must not count twice.
        with converting():
            spans = self.spans_for(batch)
            points = self._metric_points(batch)
        if spans:
            self.responses.clear()
            result = self._exporter.export(spans)
            if result is not SpanExportResult.SUCCESS:
                status, retry_after = self.responses.outcome()
                if status:
                    raise http_failure(f"OTLP span export failed (HTTP {status})", status,
                                       retry_after)
                raise unsent(spans, self.max_request_size) or TransientError(
                    "OTLP span export failed (receiver unreachable)")
        if points:
            for record, value, attributes in points:
                record(value, attributes)
            self._metrics_due.set()
            sender = self._metrics_thread
            if sender is None or not sender.is_alive():  # not started, or lost in a fork
                sender = threading.Thread(
                    target=self._send_metrics, name=f"tracevault-metrics-{self.name}",
                    daemon=True)
                try:
                    sender.start()
                except RuntimeError:  # no new threads during interpreter exit (3.12.0-1)
                    if self._meters is not None:
                        self._meters.force_flush(timeout_millis=2_000)
                    return
                self._metrics_thread = sender

    def _send_metrics(self) -> None:
        """Export the metrics after each batch that added to them, off the delivery
        thread: a metrics endpoint that does not answer (the exporter retries for
        seconds) must not hold up the spans. Batches that arrive meanwhile are folded
        into the next export (cumulative temporality carries every count)."""
        assert self._meters is not None
        while True:
            self._metrics_due.wait()
            self._metrics_due.clear()
            closing = self._closing  # read after clear(): a later shutdown sets it again
            if not self._meters.force_flush(timeout_millis=10_000):
                log.debug("tracevault: OTLP metric export failed; the next one catches up")
            if closing:
                return

    def _metric_points(self, batch: Batch) -> list[tuple[Callable[..., None], float,
                                                         dict[str, AttrValue]]]:
        """The measurements a batch adds to the metrics: ``(record, value, attributes)``
        each, recorded once its spans are sent."""
        points: list[tuple[Callable[..., None], float, dict[str, AttrValue]]] = []
        if self._meters is None:
            return points
        for node in nodes(batch.events, batch.spans):
            op = {"llm_call": "chat", "tool_call": "execute_tool",
                  "agent": "invoke_agent"}.get(node.kind)
            error = node.error
            if op is not None and node.is_span:
                attrs: dict[str, AttrValue] = {"gen_ai.operation.name": op}
                if node.kind == "llm_call":
                    attrs["gen_ai.request.model"] = model_of(node) or "unknown"
                    if isinstance(node.data.get("provider"), str):
                        attrs["gen_ai.provider.name"] = node.data["provider"]
                    usage = usage_of(node.data)
                    for token_type in ("input", "output"):
                        if token_type in usage:
                            points.append((self._tokens.record, usage[token_type],
                                           {**attrs, "gen_ai.token.type": token_type}))
                if node.kind == "tool_call":
                    attrs["gen_ai.tool.name"] = node.name
                if error is not None:
                    attrs["error.type"] = error.split(":", 1)[0]
                seconds = (node.end_time - node.start_time).total_seconds()
                points.append((self._duration.record, max(seconds, 0.0), attrs))
            if node.kind == "tool_call" and node.is_span:
                points.append((self._tool_calls.add, 1, {
                    "gen_ai.tool.name": node.name, "status": "error" if error else "success"}))
            if error is not None and (node.kind == "error" or node.is_span):
                points.append((self._errors.add, 1, {"tracevault.kind": node.kind}))
        return points

    def shutdown(self) -> None:
        self._closing = True
        self._metrics_due.set()  # the sender's last export carries every count
        try:
            self._exporter.shutdown()
        finally:
            if self._metrics_thread is not None:
                # A moment for the last export; then the meters' shutdown stops the
                # exporter, which ends a retry against an endpoint that is down.
                self._metrics_thread.join(_METRICS_LAST_EXPORT_S)
            if self._meters is not None:
                self._meters.shutdown(timeout_millis=5_000)
            self._provider.shutdown()


def from_env(name: str = "otlp") -> OTelSink:
    """Build the sink from ``OTEL_EXPORTER_OTLP_*`` (read by the exporters themselves)."""
    metrics = os.environ.get("TRACEVAULT_OTEL_METRICS", "true").strip().lower() not in (
        "0", "false", "no", "off")
    return OTelSink(name=name, metrics=metrics)


__all__ = ["MAX_REQUEST_SIZE", "OTelSink", "PresetIds", "from_env", "private_tracer_provider",
           "unsent"]
