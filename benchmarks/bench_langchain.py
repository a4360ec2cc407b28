"""Overhead of recording a LangGraph agent with tracevault, against the alternatives.

One run of the workload is ``langchain.agents.create_agent`` with a scripted model: two
model calls and one tool call (17 events when fully recorded). It is invoked
``--runs`` times, one after another, under each configuration:

* ``none``      no callbacks at all;
* ``noop``      a handler that does nothing (the cost of LangChain's callback system);
* ``tv_parked`` TracevaultCallbackHandler with the ledger writer parked: what recording
  costs the agent's own thread (handler + snapshot + enqueue);
* ``tracevault`` TracevaultCallbackHandler, full capture into a SQLite ledger (the
  writer thread redacts, seals and writes concurrently, sharing the GIL and the CPUs);
* ``tv_process`` the same with ``writer="process"``: a child process redacts, seals and
  writes, so only handing batches over shares the agent's GIL;
* ``langfuse``  Langfuse's own LangChain handler, exporting to a local HTTP server
  on 127.0.0.1 that accepts and counts what arrives (no network).

For each it prints median and p99 invoke latency; the per-event overhead is
``(median(tracevault) - median(noop)) / events per run``. Writing the ledger happens on
tracevault's background thread and is timed separately (flush after the runs).

    .venv/bin/python benchmarks/bench_langchain.py --runs 2000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from harness import GatedStore, machine, write_results
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from tracevault_langchain import TracevaultCallbackHandler
from tracevault_langchain.testing import ScriptedChatModel, ai, tool_call

import tracevault
from tracevault.store import open_store


@tool
def get_weather(city: str) -> str:
    """Return the weather in a city."""
    return f"sunny in {city}"


def _script(messages: list[BaseMessage]) -> Any:
    if not any(isinstance(m, ToolMessage) for m in messages):
        return ai("Let me look.", tool_calls=[tool_call("get_weather", {"city": "Paris"}, "c1")],
                  input_tokens=100, output_tokens=20)
    return ai("It is sunny in Paris.", input_tokens=150, output_tokens=10)


class NoopHandler(BaseCallbackHandler):
    """Receives every callback and does nothing."""

    run_inline = True

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        return None


class _Sink(BaseHTTPRequestHandler):
    requests = 0
    received = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).requests += 1
        type(self).received += len(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def do_GET(self) -> None:
        self.do_POST()

    def log_message(self, *args: Any) -> None:
        return None


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _measure(invoke: Callable[[], Any], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        invoke()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        invoke()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def _langfuse_handler() -> tuple[Any, Callable[[], None]] | None:
    try:
        from langfuse import Langfuse
        from langfuse.langchain import CallbackHandler
    except ImportError:
        return None
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = Langfuse(public_key="pk-lf-bench", secret_key="sk-lf-bench",
                      host=f"http://127.0.0.1:{server.server_address[1]}")

    def close() -> None:
        client.flush()
        client.shutdown()
        server.shutdown()

    return CallbackHandler(public_key="pk-lf-bench"), close


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--only", nargs="*", default=None, help="configurations to run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    agent = create_agent(ScriptedChatModel(respond=_script), [get_weather])
    inputs = {"messages": [HumanMessage("Paris")]}
    tmp = tempfile.mkdtemp()
    gated = GatedStore(open_store(f"sqlite:///{os.path.join(tmp, 'parked.db')}"))
    handler = TracevaultCallbackHandler()
    configs: dict[str, list[Any]] = {
        "none": [], "noop": [NoopHandler()], "tv_parked": [handler], "tracevault": [handler],
        "tv_process": [handler],
    }
    closers: dict[str, Callable[[], None]] = {}
    langfuse = _langfuse_handler()
    if langfuse is not None:
        configs["langfuse"], closers["langfuse"] = [langfuse[0]], langfuse[1]

    results: dict[str, dict[str, float]] = {}
    for name, callbacks in configs.items():
        if args.only and name not in args.only:
            continue
        config = {"callbacks": callbacks, "metadata": {"session_id": "bench"}}
        if name == "tv_parked":
            tracevault.configure(store=gated, queue_size=(args.runs + args.warmup) * 20)
        elif name == "tracevault":
            tracevault.configure(store=f"sqlite:///{os.path.join(tmp, 'bench.db')}")
        elif name == "tv_process":
            tracevault.configure(store=f"sqlite:///{os.path.join(tmp, 'process.db')}",
                                 writer="process")
        before = tracevault.stats()
        lat = _measure(lambda c=config: agent.invoke(inputs, c), args.runs, args.warmup)  # type: ignore[misc]
        t0 = time.perf_counter()
        if name == "tv_parked":
            gated.gate.set()
        if name in ("tv_parked", "tracevault", "tv_process"):
            tracevault.flush()
        elif name in closers:
            closers[name]()
        drain = (time.perf_counter() - t0) * 1000
        after = tracevault.stats()
        events = ((after.written if after else 0) - (before.written if before else 0))
        median = statistics.median(lat)
        p99 = _percentile(lat, 0.99)
        results[name] = {"median_us": median, "p99_us": p99, "p99_over_median": p99 / median,
                         "drain_after_runs_ms": drain,
                         "events_per_run": events / (args.runs + args.warmup)}
    for name in ("tv_parked", "tracevault", "tv_process"):
        if name in results and "noop" in results:
            per_run = results[name]["events_per_run"]
            delta = results[name]["median_us"] - results["noop"]["median_us"]
            results[name]["per_event_over_noop_us"] = delta / per_run
    tracevault.shutdown()
    host = {**machine(), "runs": args.runs, "warmup": args.warmup}
    write_results("langchain", {"machine": host, "results": results})
    if args.json:
        print(json.dumps({"machine": host, "results": results}, indent=2))
        return 0
    print(f"python {host['python']} on {host['platform']}, {host['cores']} CPUs, "
          f"{args.runs} runs after {args.warmup} warm-up")
    print(f"{'config':<12}{'median µs':>12}{'p99 µs':>12}{'p99/med':>9}{'drain ms':>10}"
          f"{'ev/run':>8}{'µs/event':>10}")
    if "langfuse" in results:
        print(f"langfuse exported {_Sink.requests} requests, {_Sink.received} bytes to the "
              "local server")
    for name, r in results.items():
        per_event = r.get("per_event_over_noop_us")
        print(f"{name:<12}{r['median_us']:>12.0f}{r['p99_us']:>12.0f}"
              f"{r['p99_over_median']:>9.2f}{r['drain_after_runs_ms']:>10.0f}"
              f"{r['events_per_run']:>8.1f}"
              f"{'' if per_event is None else format(per_event, '.1f'):>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
