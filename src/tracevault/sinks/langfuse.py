"""Langfuse sink, through the official ``langfuse`` SDK (v5, OpenTelemetry based).

Configured by Langfuse's own variables: ``LANGFUSE_PUBLIC_KEY``, ``LANGFUSE_SECRET_KEY``,
``LANGFUSE_BASE_URL`` (or ``LANGFUSE_HOST``), ``LANGFUSE_TIMEOUT``,
``LANGFUSE_TRACING_ENVIRONMENT``, ``LANGFUSE_RELEASE`` (``pip install 'tracevault[langfuse]'``).

Each tracevault trace (one agent run) becomes one Langfuse trace with the run's
``user_id``, ``session_id``, tags and the root step's name. Steps become observations
typed as Langfuse expects: ``agent``, ``chain``, ``tool``, ``generation`` (model,
parameters, usage, cost, time to first token), ``retriever`` and ``event`` (inputs,
reasoning, outputs, errors, custom events), with levels and status messages for
failures, their real start and end times, and the tree preserved.

The SDK is given a **private** ``TracerProvider``: it never installs or uses the
application's global one. Observation and trace ids derive from tracevault ids, so a
batch sent again updates the same observations instead of duplicating them. The SDK
keeps one client per public key in a process; an application that also uses Langfuse
with the same key should create its own client *after* tracevault starts forwarding,
or use a separate key for tracevault.
"""

from __future__ import annotations

import atexit
import base64
import os
import threading
from collections.abc import Sequence
from typing import Any

import langfuse as langfuse_sdk
from langfuse import (
    Langfuse,
    LangfuseAgent,
    LangfuseChain,
    LangfuseEvent,
    LangfuseGeneration,
    LangfuseRetriever,
    LangfuseTool,
    propagate_attributes,
)
from opentelemetry import context as context_api
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    set_span_in_context,
)

from tracevault.sinks.base import (
    Batch,
    PermanentError,
    SinkError,
    TransientError,
    converting,
    http_failure,
)
from tracevault.sinks.http import ResponseRecorder
from tracevault.sinks.otel import MAX_REQUEST_SIZE, PresetIds, private_tracer_provider, unsent
from tracevault.sinks.payload import (
    base_metadata,
    cost_usd,
    inputs_of,
    model_of,
    outputs_of,
    usage_of,
)
from tracevault.sinks.tree import (
    Node,
    SpanIndex,
    epoch_ns,
    milliseconds,
    nodes,
    otel_span_id,
    otel_trace_id,
)

# The SDK's tracer scope: the Langfuse span processor treats spans of this scope (and
# this public key) as its own.
SCOPE = "langfuse-sdk"
LEVELS = {"trace": "DEBUG", "debug": "DEBUG", "info": "DEFAULT", "warning": "WARNING",
          "error": "ERROR"}
OBSERVATION: dict[str, Any] = {
    "agent": LangfuseAgent,
    "chain": LangfuseChain,
    "tool_call": LangfuseTool,
    "llm_call": LangfuseGeneration,
    "retrieval": LangfuseRetriever,
}
_FLUSH_EVERY = 512  # below the span processor's queue (2048), so nothing is dropped


class _Tracking(SpanExporter):
    """Wraps the OTLP exporter and remembers which spans were accepted, and why spans
    were never sent when they themselves are the reason (see :func:`otel.unsent`)."""

    def __init__(self, inner: SpanExporter, max_request_size: int) -> None:
        self.inner = inner
        self.max_request_size = max_request_size
        self._lock = threading.Lock()
        self.accepted: set[int] = set()
        self.failed = 0
        self.unsent: PermanentError | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        # Checked here: the SDK exports in chunks, and only this chunk can tell.
        unsendable = None if result is SpanExportResult.SUCCESS else unsent(
            spans, self.max_request_size)
        with self._lock:
            if result is SpanExportResult.SUCCESS:
                self.accepted.update(s.context.span_id for s in spans if s.context)
            else:
                self.failed += 1
                self.unsent = self.unsent or unsendable
        return result

    def begin(self) -> None:
        with self._lock:
            self.accepted.clear()
            self.failed = 0
            self.unsent = None

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


class _Runtime:
    """One Langfuse client with its private provider, shared per public key (the SDK
    itself keeps one client per key in a process)."""

    def __init__(self, public_key: str, secret_key: str, base_url: str, timeout: int,
                 max_request_size: int) -> None:
        self.public_key = public_key
        self.base_url = base_url
        self.responses = ResponseRecorder()
        auth = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode("ascii")
        # The headers and endpoint the SDK's default exporter uses; we build the
        # exporter ourselves only to learn whether each export was accepted.
        exporter = OTLPSpanExporter(
            endpoint=f"{base_url}/api/public/otel/v1/traces",
            headers={
                "Authorization": f"Basic {auth}",
                "x-langfuse-sdk-name": "python",
                "x-langfuse-sdk-version": langfuse_sdk.__version__,
                "x-langfuse-public-key": public_key,
                "x-langfuse-ingestion-version": "4",
            },
            timeout=timeout,
            compression=Compression.Gzip,
            session=self.responses.session(),
            max_request_size=max_request_size,
        )
        self.tracking = _Tracking(exporter, max_request_size)
        self.ids = PresetIds()
        self.provider: TracerProvider = private_tracer_provider(self.ids)
        self.client = Langfuse(
            public_key=public_key, secret_key=secret_key, base_url=base_url, timeout=timeout,
            tracer_provider=self.provider, span_exporter=self.tracking,
            should_export_span=lambda span: True, flush_at=_FLUSH_EVERY,
        )
        self.tracer = self.provider.get_tracer(SCOPE, langfuse_sdk.__version__,
                                               attributes={"public_key": public_key})
        self.lock = threading.Lock()
        # The SDK flushes from an exit hook of its own, without a bound: against a
        # receiver that does not answer its exporter retries for the whole timeout.
        # tracevault's exit flushes and shuts this sink down within
        # TRACEVAULT_FORWARD_EXIT_TIMEOUT instead (LangfuseSink.shutdown); nothing is
        # lost, the cursor only moves past what Langfuse accepted. Only when the SDK's
        # resources are ours: an application's client of the same key keeps its hook.
        resources = getattr(self.client, "_resources", None)
        if getattr(resources, "tracer_provider", None) is self.provider:
            atexit.unregister(resources.shutdown)  # type: ignore[union-attr]


_runtimes: dict[str, _Runtime] = {}
_runtimes_lock = threading.Lock()


def _runtime(public_key: str, secret_key: str, base_url: str, timeout: int,
             max_request_size: int) -> _Runtime:
    with _runtimes_lock:
        runtime = _runtimes.get(public_key)
        if runtime is None:
            runtime = _runtimes[public_key] = _Runtime(public_key, secret_key, base_url, timeout,
                                                       max_request_size)
        elif runtime.base_url != base_url:
            raise SinkError(f"Langfuse public key {public_key} is already used with "
                            f"{runtime.base_url}; the SDK allows one client per key")
        return runtime


class LangfuseSink:
    """Exports finished steps as Langfuse observations, one trace per agent run.

    ``timeout`` and ``max_request_size`` (bytes of one OTLP request; larger batches are
    split by the forwarder) belong to the client shared per public key: the first sink
    created for a key sets them.
    """

    def __init__(
        self,
        *,
        name: str = "langfuse",
        public_key: str | None = None,
        secret_key: str | None = None,
        base_url: str | None = None,
        timeout: int | None = None,
        max_request_size: int = MAX_REQUEST_SIZE,
    ) -> None:
        public_key = public_key or os.environ.get("LANGFUSE_PUBLIC_KEY")
        secret_key = secret_key or os.environ.get("LANGFUSE_SECRET_KEY")
        if not public_key or not secret_key:
            raise SinkError("the Langfuse sink needs LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY")
        base = (base_url or os.environ.get("LANGFUSE_BASE_URL") or os.environ.get("LANGFUSE_HOST")
                or "https://cloud.langfuse.com").rstrip("/")
        seconds = timeout or int(os.environ.get("LANGFUSE_TIMEOUT") or 10)
        self.name = name
        self._rt = _runtime(public_key, secret_key, base, seconds, max_request_size)
        self.client = self._rt.client

    def export(self, batch: Batch) -> None:
        with converting():
            todo = nodes(batch.events, batch.spans)
        if not todo:
            return
        rt = self._rt
        with rt.lock:
            rt.tracking.begin()
            rt.responses.clear()
            expected: set[int] = set()
            for i, node in enumerate(todo, 1):
                with converting():
                    expected.add(self._observe(node, batch.spans))
                if i % _FLUSH_EVERY == 0:
                    self.client.flush()
            self.client.flush()
            missing = expected - rt.tracking.accepted
            failed = rt.tracking.failed
            unsendable = rt.tracking.unsent
        if not missing:
            return
        if unsendable is not None:
            raise unsendable
        status, retry_after = rt.responses.outcome()
        if retry_after is not None or failed or status:
            message = (f"Langfuse ingestion failed (HTTP {status})" if status else
                       "Langfuse ingestion failed (receiver unreachable)")
            raise http_failure(message, status, retry_after)
        raise TransientError(
            f"{len(missing)} observations never reached the Langfuse exporter: the "
            "application probably created a Langfuse client with the same public key "
            "before tracevault (the SDK keeps one client per key)")

    def _observe(self, node: Node, spans: SpanIndex) -> int:
        fields = self._fields(node)  # first, so odd event data fails before a span starts
        rt = self._rt
        trace_id = otel_trace_id(node.trace_id)
        span_id = otel_span_id(node.node_id)
        first = node.first
        ancestors = spans.ancestors(first)
        root = ancestors[0] if ancestors else (first if node.kind in ("agent", "chain")
                                               and not node.parent_id else None)
        with propagate_attributes(
            user_id=first.user_id or None,
            session_id=first.session_id or None,
            tags=[str(t) for t in first.tags] or None,
            trace_name=root.name if root is not None and root.name else None,
        ):
            parent = INVALID_SPAN
            if node.parent_id:
                parent = NonRecordingSpan(SpanContext(
                    trace_id, otel_span_id(node.parent_id), is_remote=False,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED)))
            context = set_span_in_context(parent, context_api.get_current())
            rt.ids.preset(trace_id, span_id)
            span = rt.tracer.start_span(node.name, context=context,
                                        start_time=epoch_ns(node.start_time))
        OBSERVATION.get(node.kind, LangfuseEvent)(otel_span=span, langfuse_client=self.client,
                                                  **fields)
        span.end(end_time=epoch_ns(node.end_time))
        return span_id

    @classmethod
    def _fields(cls, node: Node) -> dict[str, Any]:
        """Return the observation's fields for ``node`` (whatever shape its data has)."""
        data = node.data
        error = node.error
        level = "ERROR" if error else LEVELS.get(node.level, "DEFAULT")
        fields: dict[str, Any] = {
            "input": inputs_of(node), "output": outputs_of(node),
            "metadata": cls._metadata(node), "level": level, "status_message": error,
        }
        if node.kind == "llm_call":
            usage = usage_of(data)
            details = {k: v for k, v in {
                "input": usage.get("input"), "output": usage.get("output"),
                "total": usage.get("total"), "input_cached_tokens": usage.get("cached"),
                "input_cache_creation_tokens": usage.get("cache_write"),
                "output_reasoning_tokens": usage.get("reasoning")}.items() if v is not None}
            cost = cost_usd(data)
            params = data.get("parameters")
            if not isinstance(params, dict):
                params = {}
            ttft = milliseconds(data.get("time_to_first_token_ms"))
            fields.update(
                model=model_of(node),
                model_parameters={k: v for k, v in params.items()
                                  if isinstance(v, (str, int, float, bool))} or None,
                usage_details=details or None,
                cost_details={"total": cost} if cost is not None else None,
                completion_start_time=node.start_time + ttft if ttft is not None else None,
            )
        return fields

    @staticmethod
    def _metadata(node: Node) -> dict[str, Any]:
        meta = base_metadata(node)
        for key in ("status", "duration_ms", "tool_call_id", "finish_reason", "provider",
                    "source", "type"):
            value = node.data.get(key)
            if value is not None and key not in meta:
                meta[key] = value
        return meta

    def shutdown(self) -> None:
        # The client is shared per key and only flushed here: another sink of the same
        # key may follow. Its threads are daemons and end with the process.
        self.client.flush()


def from_env(name: str = "langfuse") -> LangfuseSink:
    """Build the sink from ``LANGFUSE_*`` variables."""
    return LangfuseSink(name=name)
