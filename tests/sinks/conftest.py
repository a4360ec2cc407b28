"""Capture servers on 127.0.0.1 that decode what the sinks' real SDKs send.

One threaded ``http.server`` understands every wire format the sinks use:

* OTLP/HTTP protobuf (``/v1/traces``, ``/v1/metrics`` and Langfuse's
  ``/api/public/otel/v1/traces``), decoded with the ``opentelemetry-proto`` classes;
* the LangSmith runs API: ``GET /info``, ``POST /runs/multipart`` (multipart form with
  ``post.{id}``/``patch.{id}`` parts), ``POST /runs/batch`` and ``POST /runs``;
* gzip, deflate and zstd request bodies.

It can fail on purpose (status + ``Retry-After``), refuse (400) any request whose body
holds a marker, and hold a request until released, for outage and kill tests. Received
spans and runs are stored raw (every delivery) and can be deduplicated by id, the way a
real backend upserts.
"""

from __future__ import annotations

import email.parser
import gzip
import http.server
import json
import socket
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import zstandard
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

OTLP_TRACE_PATHS = ("/v1/traces", "/api/public/otel/v1/traces")


def any_value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which) if which else None


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    scope: str
    resource: dict[str, Any]


@dataclass
class Received:
    spans: list[Span] = field(default_factory=list)
    metrics: dict[str, list[Any]] = field(default_factory=dict)
    runs_post: list[dict[str, Any]] = field(default_factory=list)
    runs_patch: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)


def decode_body(raw: bytes, encoding: str | None) -> bytes:
    encoding = (encoding or "").lower()
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "deflate":
        return zlib.decompress(raw)
    if encoding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    return raw


def parse_multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    message = email.parser.BytesParser().parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    parts: dict[str, bytes] = {}
    for part in message.get_payload():  # type: ignore[union-attr]
        name = part.get_param("name", header="content-disposition")
        parts[str(name)] = part.get_payload(decode=True)
    return parts


Runs = list[dict[str, Any]]


def runs_from_multipart(parts: dict[str, bytes]) -> tuple[Runs, Runs]:
    runs: dict[tuple[str, str], dict[str, Any]] = {}
    for name, payload in parts.items():
        pieces = name.split(".")
        if pieces[0] not in ("post", "patch"):
            continue
        key = (pieces[0], pieces[1])
        run = runs.setdefault(key, {})
        value = json.loads(payload)
        if len(pieces) == 2:
            run.update(value)
        else:
            run[pieces[2]] = value
    posts = [r for (op, _), r in runs.items() if op == "post"]
    patches = [r for (op, _), r in runs.items() if op == "patch"]
    return posts, patches


class CaptureServer:
    """A local receiver; ``url`` is its base URL. Thread-safe; stop with ``close``."""

    def __init__(self, port: int = 0, *, multipart: bool = True) -> None:
        self.received = Received()
        self.multipart = multipart
        self.lock = threading.Lock()
        self.fail_status: int | None = None
        self.fail_retry_after: str | None = None
        self.fail_times = 0
        self.hold_after: int | None = None  # hold the Nth data request (0-based) and later
        self.held = threading.Event()  # set when a request is being held
        self.release = threading.Event()
        self.data_requests = 0
        self.refuse_marker: bytes | None = None  # reply 400 to any body containing it
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path.startswith("/info"):
                    info = {"version": "0.0-test",
                            "batch_ingest_config": {"use_multipart_endpoint": server.multipart}}
                    self._reply(200, json.dumps(info).encode(), "application/json")
                else:
                    self._reply(404, b"{}", "application/json")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with server.lock:
                    index = server.data_requests
                    server.data_requests += 1
                    failing = server.fail_times > 0 and server.fail_status is not None
                    if failing:
                        server.fail_times -= 1
                if failing:
                    retry = server.fail_retry_after
                    headers = {"Retry-After": retry} if retry else {}
                    self._reply(server.fail_status or 503, b"{}", "application/json", headers)
                    return
                body = decode_body(raw, self.headers.get("Content-Encoding"))
                if server.refuse_marker is not None and server.refuse_marker in body:
                    self._reply(400, b'{"error":"refused"}', "application/json")
                    return
                server.record(self.path, dict(self.headers), body)
                if server.hold_after is not None and index >= server.hold_after:
                    server.held.set()
                    server.release.wait(60)
                status = 202 if self.path.startswith("/runs") else 200
                self._reply(status, b"{}", "application/json")

            def do_PATCH(self) -> None:
                self.do_POST()

            def _reply(self, status: int, body: bytes, ctype: str,
                       headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.httpd = Server(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def record(self, path: str, headers: dict[str, str], body: bytes) -> None:
        with self.lock:
            self.received.requests.append(("POST", path, headers))
            self.received.bodies.append(body)
            if path in OTLP_TRACE_PATHS:
                self.received.spans.extend(_spans(body))
            elif path == "/v1/metrics":
                request = ExportMetricsServiceRequest.FromString(body)
                for rm in request.resource_metrics:
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            self.received.metrics.setdefault(metric.name, []).append(metric)
            elif path == "/runs/multipart":
                posts, patches = runs_from_multipart(
                    parse_multipart(body, headers.get("Content-Type", "")))
                self.received.runs_post.extend(posts)
                self.received.runs_patch.extend(patches)
            elif path == "/runs/batch":
                payload = json.loads(body)
                self.received.runs_post.extend(payload.get("post") or [])
                self.received.runs_patch.extend(payload.get("patch") or [])
            elif path == "/runs":
                self.received.runs_post.append(json.loads(body))

    # --- views ------------------------------------------------------------------------

    def spans(self) -> list[Span]:
        with self.lock:
            return list(self.received.spans)

    def unique_spans(self) -> dict[str, Span]:
        """Spans keyed by span id, as a backend that upserts by id keeps them."""
        out: dict[str, Span] = {}
        for span in self.spans():
            out[span.span_id] = span
        return out

    def runs(self) -> dict[str, dict[str, Any]]:
        """LangSmith runs by id: posts merged with their patches (an upsert by id)."""
        with self.lock:
            posts, patches = list(self.received.runs_post), list(self.received.runs_patch)
        runs: dict[str, dict[str, Any]] = {}
        for run in posts:
            runs.setdefault(str(run["id"]), {}).update(run)
        for run in patches:
            changes = {k: v for k, v in run.items() if v is not None}
            runs.setdefault(str(run["id"]), {}).update(changes)
        return runs

    def body_text(self) -> str:
        with self.lock:
            return b"\n".join(self.received.bodies).decode("utf-8", "replace")

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _spans(body: bytes) -> list[Span]:
    request = ExportTraceServiceRequest.FromString(body)
    out: list[Span] = []
    for rs in request.resource_spans:
        resource = {kv.key: any_value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(Span(
                    trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                    parent_span_id=s.parent_span_id.hex(), name=s.name, kind=s.kind,
                    start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano,
                    attributes={kv.key: any_value(kv.value) for kv in s.attributes},
                    status_code=s.status.code, status_message=s.status.message,
                    scope=ss.scope.name, resource=resource,
                ))
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def make_receiver() -> Iterator[Any]:
    """A factory of capture servers (``make_receiver(port=..., multipart=...)``)."""
    servers: list[CaptureServer] = []

    def make(**kwargs: Any) -> CaptureServer:
        servers.append(CaptureServer(**kwargs))
        return servers[-1]

    try:
        yield make
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def receiver() -> Iterator[CaptureServer]:
    server = CaptureServer()
    try:
        yield server
    finally:
        server.close()


# --- an agent run recorded through the core API ------------------------------------------

CANARY_EMAIL = "canary.person@example.org"
CANARY_KEY = "sk-live-CANARY0123456789abcdefABCDEF"


def record_agent_run(session_id: str = "chat-7", user_id: str = "alice") -> str:
    """Record a small agent run with every kind of step; return its trace id."""
    import tracevault

    log = tracevault.AuditLogger(session_id=session_id, user_id=user_id, tags=["sinks-test"])
    with log.span("support-agent", kind="agent", inputs={"question": "Weather in Paris?"}):
        log.log_input("What is the weather in Paris?", source="web")
        log.log_reasoning("I need the weather tool.", plan=["get_weather", "answer"],
                          confidence=0.8)
        with log.span("plan", kind="chain"):
            log.log_llm_call(
                "gpt-4o-mini", provider="openai",
                messages=[{"role": "user", "content": "Weather in Paris?"}],
                response="calling get_weather", finish_reason="tool_calls",
                usage={"input": 120, "output": 30, "total": 150, "cached": 64, "cache_write": 16},
                duration_ms=420.0,
                parameters={"temperature": 0.2},
            )
        with log.tool_call("get_weather", {"city": "Paris"}, tool_call_id="call_1") as call:
            call.result = {"temp_c": 21, "sky": "sunny"}
        log.log_retrieval("paris weather", [{"id": "doc-1", "content": "Sunny", "score": 0.9}],
                          name="kb")
        try:
            with log.tool_call("book_flight", {"to": "Paris"}, tool_call_id="call_2"):
                raise RuntimeError("no seats left")
        except RuntimeError:
            pass
        log.log_output("It is sunny in Paris.")
    return log.trace_id


@pytest.fixture
def agent_run() -> Any:
    return record_agent_run


@pytest.fixture
def unused_port() -> int:
    """A port on 127.0.0.1 where nothing listens (yet)."""
    return free_port()
