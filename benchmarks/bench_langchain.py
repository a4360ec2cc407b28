"""Overhead of recording a LangGraph agent with tracevault, against the alternatives.

One run of the workload is ``langchain.agents.create_agent`` with a scripted model: two
model calls and one tool call (17 events when fully recorded). It is invoked
``--runs`` times, one after another, under each configuration (the configurations take
turns in ``--rounds`` rounds, so drift of the machine affects them alike):

* ``none``      no callbacks at all;
* ``noop``      a handler that does nothing (the cost of LangChain's callback system);
* ``noop_busy`` the no-op handler while another process keeps the second core busy: a
  control, showing what concurrent work elsewhere on the machine does to the latency
  tail with no tracevault involved (the writer thread and process are such work);
* ``append``    a handler that only appends its raw arguments to a deque: the floor any
  recording handler starts from (LangChain calling it with its arguments);
* ``tv_parked`` TracevaultCallbackHandler with the ledger writer parked: what recording
  costs the agent's own thread (handler + snapshot + enqueue);
* ``tracevault`` TracevaultCallbackHandler, full capture into a SQLite ledger (the
  writer thread redacts, seals and writes concurrently, sharing the GIL and the CPUs);
* ``tv_process`` the same with ``writer="process"``: a child process redacts, seals and
  writes, so only handing batches over shares the agent's GIL;
* ``langfuse``  Langfuse's own LangChain handler, exporting to a local HTTP server
  on 127.0.0.1 that accepts and counts what arrives (no network).

With ``--model-ms`` each model call also waits that long (idle, as for a real model's
network round trip), which is when a writer thread gets the GIL without taking it from
the agent. With ``--prompt-kb`` the agent has a system prompt of that size, as real
agents do, so each model call's recorded messages are larger. With ``--postgres`` the
recording configurations write a PostgreSQL ledger (a throwaway server, started here
unless ``--postgres URL`` names one) instead of SQLite.

For each it prints median and p99 invoke latency; the per-event overhead is
``(median(tracevault) - median(noop)) / events per run``. Writing the ledger happens on
tracevault's background thread and is timed separately (flush after the runs).

    .venv/bin/python benchmarks/bench_langchain.py --runs 2000
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

from harness import (
    CountingSink,
    GatedStore,
    local_sink,
    machine,
    new_database,
    postgres_server,
    write_results,
)
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.callbacks import GraphCallbackHandler
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


class AppendHandler(GraphCallbackHandler):
    """Appends each callback's raw arguments to a bounded deque and does nothing else:
    the least any recording handler costs (a method call with LangChain's arguments)."""

    run_inline = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: collections.deque[Any] = collections.deque(maxlen=10_000)

    def on_chain_start(self, serialized: Any, inputs: Any, **kwargs: Any) -> None:
        self.seen.append((inputs, kwargs))

    def on_chain_end(self, outputs: Any, **kwargs: Any) -> None:
        self.seen.append((outputs, kwargs))

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.seen.append((messages, kwargs))

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.seen.append((response, kwargs))

    def on_tool_start(self, serialized: Any, input_str: str, **kwargs: Any) -> None:
        self.seen.append((input_str, kwargs))

    def on_tool_end(self, output: Any, **kwargs: Any) -> None:
        self.seen.append((output, kwargs))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _measure(invoke: Callable[[], Any], runs: int, warmup: int, settle: bool = False
             ) -> tuple[list[float], list[float], float]:
    """Return each run's wall-clock and agent-thread CPU time (µs), and the CPU time of
    the whole process over the runs (µs; the writer thread's included, not a writer
    process's). CPU times do not count the moments the VM ran something else, which
    wall-clock time on a shared machine does. ``settle``: after the warm-up, wait until
    the ledger writer has written it (a writer process starts, and imports what it
    interprets callbacks with, on the first batch): the runs measure the steady state."""
    for _ in range(warmup):
        invoke()
    if settle:
        tracevault.flush(120)
    wall, cpu = [], []
    process0 = time.process_time()
    for _ in range(runs):
        c0 = time.thread_time()
        t0 = time.perf_counter()
        invoke()
        t1 = time.perf_counter()
        cpu.append((time.thread_time() - c0) * 1e6)
        wall.append((t1 - t0) * 1e6)
    return wall, cpu, (time.process_time() - process0) * 1e6


def _cell(value: float | None) -> str:
    return "" if value is None else format(value, ".1f")


def _busy_core() -> subprocess.Popen[bytes]:
    """Start a process that keeps one core busy (bounded: it stops by itself)."""
    loop = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end: pass"
    return subprocess.Popen([sys.executable, "-c", loop])


def _langfuse_handler() -> tuple[Any, Callable[[], None], Callable[[], None]] | None:
    try:
        from langfuse import Langfuse
        from langfuse.langchain import CallbackHandler
    except ImportError:
        return None
    server = local_sink()
    client = Langfuse(public_key="pk-lf-bench", secret_key="sk-lf-bench",
                      host=f"http://127.0.0.1:{server.server_address[1]}")

    def close() -> None:
        client.flush()
        client.shutdown()
        server.shutdown()

    return CallbackHandler(public_key="pk-lf-bench"), close, client.flush


CONFIGS = ("none", "noop", "noop_busy", "append", "tv_parked", "tracevault", "tv_process",
           "langfuse")
RECORDING = ("tv_parked", "tracevault", "tv_process")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="invokes per configuration")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5,
                        help="the configurations take turns, this many times")
    parser.add_argument("--only", nargs="*", default=None, help="configurations to run")
    parser.add_argument("--model-ms", type=float, default=0.0,
                        help="time each model call waits, as a real model's network "
                        "round trip does (default 0: the agent never waits)")
    parser.add_argument("--prompt-kb", type=float, default=0.0,
                        help="size of the agent's system prompt (default 0: none)")
    parser.add_argument("--postgres", nargs="?", const="", default=None, metavar="URL",
                        help="write the ledger to PostgreSQL (default: a throwaway server)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.postgres is None:
        return run(args, None)
    with postgres_server(args.postgres or None) as url:
        return run(args, url)


def run(args: argparse.Namespace, postgres: str | None) -> int:
    """Measure every configuration; ``postgres``: the admin URL of the ledger's server."""

    def respond(messages: list[BaseMessage]) -> Any:
        if args.model_ms:
            time.sleep(args.model_ms / 1000)  # an idle wait, like a network call
        return _script(messages)

    prompt = None
    if args.prompt_kb:
        size = int(args.prompt_kb * 1024)
        rule = "Answer about the weather only, citing the tool's result. "
        prompt = (rule * (1 + size // len(rule)))[:size]
    agent = create_agent(ScriptedChatModel(respond=respond), [get_weather], system_prompt=prompt)
    inputs = {"messages": [HumanMessage("Paris")]}
    tmp = tempfile.mkdtemp()
    handler = TracevaultCallbackHandler()
    callbacks: dict[str, list[Any]] = {
        "none": [], "noop": [NoopHandler()], "noop_busy": [NoopHandler()],
        "append": [AppendHandler()], **{name: [handler] for name in RECORDING},
    }
    langfuse = _langfuse_handler()
    if langfuse is not None:
        callbacks["langfuse"] = [langfuse[0]]
    names = [n for n in CONFIGS if n in callbacks and (not args.only or n in args.only)]
    runs, warmup = max(1, args.runs // args.rounds), args.warmup // args.rounds

    latencies: dict[str, list[float]] = {name: [] for name in names}
    agent_cpu: dict[str, list[float]] = {name: [] for name in names}
    process_cpu: dict[str, float] = dict.fromkeys(names, 0.0)
    drains: dict[str, list[float]] = {name: [] for name in names}
    events: dict[str, int] = dict.fromkeys(names, 0)
    # The configurations take turns, so a machine that speeds up or slows down over the
    # minutes of a measurement affects them alike.
    for round_no in range(args.rounds):
        for name in names:
            config = {"callbacks": callbacks[name], "metadata": {"session_id": "bench"}}
            gated = busy = None
            db = f"sqlite:///{os.path.join(tmp, f'{name}-{round_no}.db')}"
            if postgres is not None and name in ("tracevault", "tv_process"):
                db = new_database(postgres, f"bench_{name}_{round_no}")
            if name == "tv_parked":
                gated = GatedStore(open_store(db))
                tracevault.configure(store=gated, queue_size=(runs + warmup) * 20)
            elif name == "tracevault":
                tracevault.configure(store=db)
            elif name == "tv_process":
                tracevault.configure(store=db, writer="process")
            elif name == "noop_busy":
                busy = _busy_core()
            wall, cpu, process = _measure(
                lambda c=config: agent.invoke(inputs, c),  # type: ignore[misc,call-overload]
                runs, warmup, settle=name in ("tracevault", "tv_process"))
            latencies[name] += wall
            agent_cpu[name] += cpu
            process_cpu[name] += process
            t0 = time.perf_counter()
            if gated is not None:
                gated.gate.set()
            if name in RECORDING:
                stats = tracevault.shutdown()
                events[name] += stats.written if stats is not None else 0
            elif name == "langfuse" and langfuse is not None:
                langfuse[2]()
            if busy is not None:
                busy.kill()
                busy.wait()
            drains[name].append((time.perf_counter() - t0) * 1000)
    if langfuse is not None:
        langfuse[1]()

    results: dict[str, dict[str, float]] = {}
    per_run_events = None
    for name in names:
        lat = latencies[name]
        median = statistics.median(lat)
        p99 = _percentile(lat, 0.99)
        results[name] = {"median_us": median, "p99_us": p99, "p99_over_median": p99 / median,
                         "drain_after_runs_ms": statistics.median(drains[name]),
                         "agent_cpu_us": statistics.median(agent_cpu[name]),
                         "process_cpu_us": process_cpu[name] / (runs * args.rounds)}
        if name in RECORDING:
            per_run_events = events[name] / ((runs + warmup) * args.rounds)
            results[name]["events_per_run"] = per_run_events
    if "noop" in results and per_run_events:
        for name in ("append", *RECORDING, "langfuse"):
            if name in results:
                delta = results[name]["median_us"] - results["noop"]["median_us"]
                # Langfuse records the same run: compare per tracevault event.
                results[name]["per_event_over_noop_us"] = delta / per_run_events
                for key in ("agent_cpu_us", "process_cpu_us"):
                    more = results[name][key] - results["noop"][key]
                    results[name][key.replace("_us", "_per_event_us")] = more / per_run_events
    host = {**machine(), "runs": runs * args.rounds, "warmup": warmup * args.rounds,
            "rounds": args.rounds, "model_ms": args.model_ms, "prompt_kb": args.prompt_kb,
            "ledger": "postgresql" if postgres is not None else "sqlite"}
    label = "langchain" + ("-model-wait" if args.model_ms else "") + (
        "-prompt" if args.prompt_kb else "") + ("-postgres" if postgres is not None else "")
    write_results(label, {"machine": host, "results": results})
    if args.json:
        print(json.dumps({"machine": host, "results": results}, indent=2))
        return 0
    print(f"python {host['python']} on {host['platform']}, {host['cores']} CPUs, "
          f"{host['runs']} runs per configuration in {args.rounds} rounds, "
          f"{args.model_ms:g} ms per model call, {args.prompt_kb:g} KB system prompt, "
          f"{host['ledger']} ledger")
    print(f"{'config':<12}{'median µs':>12}{'p99 µs':>12}{'p99/med':>9}{'drain ms':>10}"
          f"{'ev/run':>8}{'µs/event':>10}{'agent CPU':>11}{'proc. CPU':>11}")
    print(f"{'':<62}{'(over no-op, per event)':>32}")
    if "langfuse" in results:
        print(f"langfuse exported {CountingSink.requests} requests, "
              f"{CountingSink.received} bytes to the local server")
    for name, r in results.items():
        per_event = r.get("per_event_over_noop_us")
        ev = r.get("events_per_run")
        print(f"{name:<12}{r['median_us']:>12.0f}{r['p99_us']:>12.0f}"
              f"{r['p99_over_median']:>9.2f}{r['drain_after_runs_ms']:>10.0f}"
              f"{'' if ev is None else format(ev, '.1f'):>8}"
              f"{'' if per_event is None else format(per_event, '.1f'):>10}"
              f"{_cell(r.get('agent_cpu_per_event_us')):>11}"
              f"{_cell(r.get('process_cpu_per_event_us')):>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
