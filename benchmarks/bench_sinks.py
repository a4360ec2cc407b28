"""Forwarding cost: the caller's thread with and without forwarders, and events/s per sink.

1. Capture cost on the caller's thread: the time of ``AuditLogger`` calls (capture only,
   no flush inside the timed loop) with no sinks, then with the JSON-lines and OTLP
   forwarders running in the background against a local receiver.
2. Delivery rate: a ledger of recorded agent runs drained by one forwarder per sink
   (``Forwarder.drain_once``) against a local HTTP receiver on 127.0.0.1 that reads the
   request and answers 200 (so the figure is the sink's own cost: mapping, the SDK,
   encoding, HTTP), and to JSON-lines files.

Run: ``.venv/bin/python benchmarks/bench_sinks.py`` (writes results/sinks.json).
"""

from __future__ import annotations

import argparse
import http.server
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from harness import machine, write_results

import tracevault
from tracevault.sinks import registry
from tracevault.sinks.base import Forwarder, Sink
from tracevault.store import open_store


class Sink200(http.server.BaseHTTPRequestHandler):
    """Reads each request and answers 200 (``/info`` for the LangSmith client)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(b'{"batch_ingest_config": {"use_multipart_endpoint": true}}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._reply(b"{}")


def serve() -> tuple[http.server.ThreadingHTTPServer, str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink200)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


def agent_run(i: int) -> None:
    """One agent run of 20 events (spans, model and tool calls, retrieval, output)."""
    log = tracevault.AuditLogger(session_id=f"bench-{i % 50}", user_id=f"user-{i % 7}")
    with log.span("support-agent", kind="agent", inputs={"question": f"question {i}"}):
        log.log_input(f"What is the weather in city {i}?", source="web")
        log.log_reasoning("Look up the weather, then answer.", plan=["get_weather", "answer"])
        with log.span("plan", kind="chain"):
            log.log_llm_call("gpt-4o-mini", provider="openai",
                             messages=[{"role": "user", "content": f"weather {i}"}],
                             response="calling get_weather", usage={"input": 120, "output": 30},
                             duration_ms=300.0)
        for tool in ("get_weather", "get_time"):
            with log.tool_call(tool, {"city": f"city {i}"}) as call:
                call.result = {"ok": True, "value": i}
        log.log_retrieval("weather", [{"id": f"doc-{i}", "content": "Sunny", "score": 0.9}])
        log.log_llm_call("gpt-4o-mini", provider="openai", response="It is sunny.",
                         usage={"input": 200, "output": 20}, duration_ms=200.0)
        log.log_output("It is sunny.")


def capture_cost(tmp: str, sinks: list[Any], runs: int) -> float:
    """Return µs per captured event on the caller's thread (capture only)."""
    url = f"sqlite:///{tmp}/capture-{uuid.uuid4().hex[:6]}.db?synchronous=normal"
    tracevault.configure(store=url, sinks=sinks)
    group = registry.active()
    if group is not None:
        group.wait_ready(60)
    agent_run(0)
    tracevault.flush(60)
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(runs):
            agent_run(i)
        samples.append((time.perf_counter() - start) / (runs * 20))
        tracevault.flush(120)  # outside the timed loop: the background keeps up
    if group is not None:
        group.force_flush(120)
    tracevault.shutdown()
    return statistics.median(samples) * 1e6


def delivery_rate(ledger: str, make: Callable[[], Sink], batch_size: int) -> float:
    store = open_store(ledger)
    total = store.head()[0]
    sink = make()
    forwarder = Forwarder(store, sink, batch_size=batch_size)
    start = time.perf_counter()
    report = forwarder.drain_once(timeout=600)
    elapsed = time.perf_counter() - start
    forwarder.shutdown()
    store.close()
    if not report.ok or report.delivered != total:
        raise RuntimeError(f"{sink.name}: {report}")
    return total / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=250, help="agent runs per measurement")
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    os.environ.pop("TRACEVAULT_SINKS", None)
    httpd, url = serve()
    from tracevault.sinks.jsonl import JsonlSink
    from tracevault.sinks.langfuse import LangfuseSink
    from tracevault.sinks.langsmith import LangSmithSink
    from tracevault.sinks.otel import OTelSink

    with tempfile.TemporaryDirectory() as tmp:
        no_sinks = capture_cost(tmp, [], args.runs)
        with_sinks = capture_cost(tmp, [
            JsonlSink(directory=f"{tmp}/jsonl-capture"),
            OTelSink(endpoint=url, metrics=True),
        ], args.runs)

        ledger = f"sqlite:///{tmp}/ledger.db?synchronous=normal"
        tracevault.configure(store=ledger, sinks=[])
        for i in range(args.runs * 4):
            agent_run(i)
        tracevault.shutdown()
        makers: dict[str, Callable[[], Sink]] = {
            "jsonl (file)": lambda: JsonlSink(directory=f"{tmp}/jsonl"),
            "otlp": lambda: OTelSink(endpoint=url, metrics=True),
            "langfuse": lambda: LangfuseSink(public_key=f"pk-{uuid.uuid4().hex[:6]}",
                                             secret_key="sk", base_url=url),
            "langsmith (multipart)": lambda: LangSmithSink(api_url=url, api_key="k"),
        }
        rates = {name: round(delivery_rate(ledger, make, args.batch_size))
                 for name, make in makers.items()}
    httpd.shutdown()

    results = {
        "machine": machine(),
        "capture_us_per_event_no_sinks": round(no_sinks, 2),
        "capture_us_per_event_with_jsonl_and_otlp_forwarding": round(with_sinks, 2),
        "delivery_events_per_s": rates,
        "events_in_ledger": args.runs * 4 * 20,
        "batch_size": args.batch_size,
    }
    m = results["machine"]
    print(f"machine: {m['cpu']} ({m['cores']} cores), Python {m['python']}")
    print(f"capture on the caller's thread: {no_sinks:.2f} µs/event without sinks, "
          f"{with_sinks:.2f} µs/event with JSONL + OTLP forwarders running")
    for name, rate in rates.items():
        print(f"delivery {name}: {rate} events/s")
    write_results("sinks", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
