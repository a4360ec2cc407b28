"""LangSmith-compatible sink, through the official ``langsmith`` SDK ``Client``.

Configured by LangSmith's own variables: ``LANGSMITH_ENDPOINT``, ``LANGSMITH_API_KEY``,
``LANGSMITH_PROJECT``, ``LANGSMITH_WORKSPACE_ID`` (``pip install 'tracevault[langsmith]'``),
so any server that speaks the LangSmith runs API receives the trail.

Runs follow the native protocol: a step's start *creates* its run (name, run_type,
inputs, start time) and its end *updates* it (outputs, error, end time, token usage), so
a step still running, or one whose end never came, shows as open. Point events become
runs of their own that start and end at once. Every run carries ``trace_id``,
``parent_run_id`` and ``dotted_order``, tags, and metadata with the session (also as
``thread_id``), the user, the model (``ls_model_name``, ``ls_provider``) and
``usage_metadata``. Run ids are deterministic UUIDv7s derived from tracevault ids and
start times, so a batch sent again upserts the same runs.

``run_type``: ``llm_call`` -> ``llm``, ``tool_call`` -> ``tool``, ``retrieval`` ->
``retriever``, everything else -> ``chain``. LangSmith needs a single root per trace: a
run whose parent step was never recorded starts a trace of its own, so record agent runs
under one root step (``AuditLogger.span`` or a framework handler) to see one tree.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime
from typing import Any

from langsmith import Client
from langsmith import utils as ls_utils
from urllib3.util.retry import Retry

from tracevault.schema import AuditEvent
from tracevault.sinks.base import Batch, converting, http_failure
from tracevault.sinks.http import ResponseRecorder
from tracevault.sinks.payload import (
    base_metadata,
    cost_usd,
    inputs_of,
    model_of,
    outputs_of,
    usage_of,
)
from tracevault.sinks.tree import Node, SpanIndex, duration_of, parent_of, run_uuid

RUN_TYPES = {"llm_call": "llm", "tool_call": "tool", "retrieval": "retriever"}


def _segment(start: datetime, run_id: Any) -> str:
    return f"{start.strftime('%Y%m%dT%H%M%S%fZ')}{run_id}"


def _wrap(value: Any, key: str) -> dict[str, Any] | None:
    if value is None:
        return None
    return value if isinstance(value, dict) else {key: value}


class LangSmithSink:
    """Sends runs to a LangSmith-compatible server (multipart, or batch when the server
    says it has no multipart endpoint)."""

    def __init__(
        self,
        *,
        name: str = "langsmith",
        api_url: str | None = None,
        api_key: str | None = None,
        project: str | None = None,
        multipart: bool | None = None,
        timeout_ms: int | None = None,
    ) -> None:
        self.name = name
        self.responses = ResponseRecorder()
        self._errors: list[Exception] = []
        self._lock = threading.Lock()
        self.client = Client(
            api_url=api_url,
            api_key=api_key,
            auto_batch_tracing=False,  # we send synchronously and need the outcome
            tracing_mode="langsmith",  # never OpenTelemetry: it would claim the global provider
            tracing_sampling_rate=1.0,  # an audit trail is not sampled
            session=self.responses.session(),
            # No retries inside the SDK: the forwarder backs off and honours Retry-After.
            retry_config=Retry(total=0, raise_on_status=False, raise_on_redirect=False),
            timeout_ms=timeout_ms,
            tracing_error_callback=self._errors.append,
            omit_traced_runtime_info=True,  # the forwarding process is not the agent's
        )
        self.project = project or ls_utils.get_tracer_project() or "default"
        self._multipart = multipart

    # --- mapping ----------------------------------------------------------------------

    def runs_for(self, batch: Batch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Return ``(create, update)`` run dicts for the events in ``batch`` (no I/O)."""
        create: list[dict[str, Any]] = []
        update: list[dict[str, Any]] = []
        for stored in batch.events:
            e = stored.event
            trace = e.trace_id or e.event_id
            if e.phase == "start" and e.span_id:
                node = Node(e.span_id, trace, e.parent_span_id, e.timestamp, e.timestamp,
                            None, e, [e.event_id])
                run = self._base(node, e, batch.spans)
                run.update(inputs=_wrap(inputs_of(node), "input") or {})
                create.append(run)
                continue
            start = batch.spans.paired_start(e) if e.phase == "end" else None
            if start is not None:
                node = Node(e.span_id or e.event_id, trace, start.parent_span_id,
                            start.timestamp, max(e.timestamp, start.timestamp), start, e,
                            [start.event_id, e.event_id])
                run = self._base(node, start, batch.spans)
                run.pop("name"), run.pop("run_type"), run.pop("start_time")
                self._finish(run, node)
                update.append(run)
                continue
            if e.phase == "end":
                began = e.timestamp - duration_of(e.data)
                node = Node(e.span_id or e.event_id, trace, e.parent_span_id, began,
                            e.timestamp, None, e, [e.event_id])
            else:
                node = Node(e.event_id, trace, parent_of(e, batch.spans), e.timestamp,
                            e.timestamp, None, e, [e.event_id])
            run = self._base(node, e, batch.spans)
            run.update(inputs=_wrap(inputs_of(node), "input") or {})
            self._finish(run, node)
            create.append(run)
        return create, update

    def _base(self, node: Node, first: AuditEvent, spans: SpanIndex) -> dict[str, Any]:
        run_id = run_uuid(node.node_id, node.start_time)
        ancestors = spans.ancestors(first) if node.parent_id else []
        chain = [(a.timestamp, run_uuid(a.span_id or a.event_id, a.timestamp))
                 for a in ancestors]
        chain.append((node.start_time, run_id))
        metadata = base_metadata(node)
        if first.session_id:
            metadata["thread_id"] = first.session_id
        model = model_of(node)
        if model:
            metadata["ls_model_name"] = model
            metadata["ls_model_type"] = "chat"
        if isinstance(node.data.get("provider"), str):
            metadata["ls_provider"] = node.data["provider"]
        return {
            "id": str(run_id),
            "name": node.name,
            "run_type": RUN_TYPES.get(node.kind, "chain"),
            "start_time": node.start_time,
            "trace_id": str(chain[0][1]),
            "parent_run_id": str(chain[-2][1]) if len(chain) > 1 else None,
            "dotted_order": ".".join(_segment(ts, rid) for ts, rid in chain),
            "session_name": self.project,
            "tags": [str(t) for t in first.tags],
            "extra": {"metadata": metadata},
        }

    @staticmethod
    def _finish(run: dict[str, Any], node: Node) -> None:
        run["end_time"] = node.end_time
        outputs = _wrap(outputs_of(node), "output") or {}
        usage = usage_of(node.data)
        if usage:
            usage_metadata: dict[str, Any] = {
                "input_tokens": usage.get("input", 0),
                "output_tokens": usage.get("output", 0),
                "total_tokens": usage.get("total", 0),
            }
            details = {name: usage[key] for key, name in (("cached", "cache_read"),
                                                          ("cache_write", "cache_creation"))
                       if key in usage}
            if details:
                usage_metadata["input_token_details"] = details
            if "reasoning" in usage:
                usage_metadata["output_token_details"] = {"reasoning": usage["reasoning"]}
            cost = cost_usd(node.data)
            if cost is not None:
                usage_metadata["total_cost"] = cost
            outputs["usage_metadata"] = usage_metadata
            run["extra"]["metadata"]["usage_metadata"] = usage_metadata
        run["outputs"] = outputs
        error = node.error
        if error is not None:
            run["error"] = error

    # --- delivery ---------------------------------------------------------------------

    def _use_multipart(self) -> bool:
        if self._multipart is None:
            config = self.client.info.batch_ingest_config or {}
            self._multipart = bool(config.get("use_multipart_endpoint", True))
        return self._multipart

    def export(self, batch: Batch) -> None:
        with converting():
            create, update = self.runs_for(batch)
        if not create and not update:
            return
        with self._lock:
            self._errors.clear()
            self.responses.clear()
            if self._use_multipart():
                self.client.multipart_ingest(create=create, update=update)
            else:
                self.client.batch_ingest_runs(create=create, update=update)
            errors = list(self._errors)
        if errors:
            status, retry_after = self.responses.outcome()
            message = f"LangSmith ingestion failed: {type(errors[-1]).__name__}" + (
                f" (HTTP {status})" if status else "")
            raise http_failure(message, status, retry_after)

    def shutdown(self) -> None:
        self.client.session.close()


def from_env(name: str = "langsmith") -> LangSmithSink:
    """Build the sink from ``LANGSMITH_*`` variables (read by the SDK)."""
    multipart = os.environ.get("TRACEVAULT_LANGSMITH_MULTIPART")
    return LangSmithSink(
        name=name,
        multipart=None if multipart is None else multipart.strip().lower() in ("1", "true", "yes"),
    )
