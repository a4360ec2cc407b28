"""LlamaIndex integration overhead: cost per recorded event on a FunctionAgent workload.

Run: ``.venv/bin/python benchmarks/bench_llamaindex.py [--runs N] [--rounds R]``. One run
is a FunctionAgent run (scripted model, one tool call, 10 recorded events). Each round
runs a block of N runs under each configuration, in a rotating order so that drift and
other load on the machine fall on all of them alike:

* ``none``    no handler at all;
* ``noop``    a span and an event handler that do nothing (what LlamaIndex's dispatcher
  itself costs per attached handler);
* ``refs``    a span and an event handler that only keep a reference to each
  callback's arguments (the least a handler that records anything does: the floor
  under any design that reads what it records later, on another thread or process);
* ``parked``  ``tracevault_llamaindex.instrument()`` with the ledger writer parked on a
  gated store: what recording costs the agent's own thread (handlers, snapshot, enqueue),
  with no writer competing for the GIL;
* ``full``    ``instrument()`` recording into a real SQLite ledger (default middleware
  included) while the writer redacts, seals and writes on its own thread;
* ``process`` the same with ``writer="process"``: a child process redacts, seals and
  writes (started and warmed before the block), the writer thread only hands over;
* ``langfuse`` the peer: Langfuse's LlamaIndex integration (its client and OpenInference's
  ``LlamaIndexInstrumentor``, as Langfuse documents it) exporting to a local HTTP server
  (skipped when ``langfuse`` or ``openinference-instrumentation-llama-index`` is missing).

Everything is warmed up first (imports, LlamaIndex and tracevault caches), so one-time
costs are not spread over the figures. Reported per recorded event, over ``none``:
the difference in median run latency and in mean run time (the wall clock, GC and
writer stalls included) for each configuration, and in CPU of the agent's thread
(the event loop the handlers run on); the time spent inside the handlers (a separate
timed pass with the writer parked, so the writer's GIL time is not counted in it; the
timing wrappers add about half a microsecond per callback); the writer thread's CPU per
event under ``full`` (Linux); and how many dispatcher callbacks arrive per run.
Writes ``benchmarks/results/llamaindex.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tracevault_llamaindex
from harness import CountingSink, GatedStore, local_sink, machine, write_results
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler
from llama_index.core.llms import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool
from llama_index_instrumentation import get_dispatcher
from tracevault_llamaindex.events import TracevaultEventHandler
from tracevault_llamaindex.spans import TracevaultSpanHandler
from tracevault_llamaindex.state import Recorder
from tracevault_llamaindex.testing import tool_then_answer

import tracevault
from tracevault.store import open_store

EVENTS_PER_RUN = 10  # agent x2, input, llm_call x4, tool_call x2, output
CONFIGS = ("none", "noop", "refs", "parked", "full", "process", "langfuse")
REPLAYS, WARM_UP_REPLAYS = 2_000, 100  # of one run's callbacks (Bench.warm_replay)


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def make_agent(model_ms: float = 0.0) -> FunctionAgent:
    """The benchmark's agent; each model call waits ``model_ms`` first (as a network
    round trip would: the GIL is free meanwhile)."""
    script = tool_then_answer(lambda user: [("add", {"a": len(user), "b": 1})], "done")

    def respond(messages: Any, **kwargs: Any) -> Any:
        if model_ms:
            time.sleep(model_ms / 1000)
        return script(messages, **kwargs)

    llm = MockFunctionCallingLLM(response_generator=respond)
    return FunctionAgent(tools=[FunctionTool.from_defaults(add)], llm=llm, streaming=False)


class NoopSpanHandler(BaseSpanHandler[Any]):
    """Receives every span callback and does nothing."""

    def new_span(self, *args: Any, **kwargs: Any) -> None:
        return None

    def prepare_to_exit_span(self, *args: Any, **kwargs: Any) -> None:
        return None

    def prepare_to_drop_span(self, *args: Any, **kwargs: Any) -> None:
        return None

    def span_enter(self, *args: Any, **kwargs: Any) -> None:
        return None

    def span_exit(self, *args: Any, **kwargs: Any) -> None:
        return None

    def span_drop(self, *args: Any, **kwargs: Any) -> None:
        return None


class NoopEventHandler(BaseEventHandler):
    """Receives every event and does nothing."""

    def handle(self, event: Any, **kwargs: Any) -> None:
        return None


KEPT: list[tuple[str, tuple[Any, ...]]] = []  # (method, arguments) the ``refs`` handlers kept


class RefsSpanHandler(NoopSpanHandler):
    """Keeps a reference to each span callback's arguments (no copy), by method."""

    def span_enter(self, id_: str, bound_args: Any, instance: Any = None,
                   parent_id: str | None = None, tags: Any = None, **kwargs: Any) -> None:
        KEPT.append(("span_enter", (id_, bound_args, instance, parent_id, tags)))

    def span_exit(self, id_: str, bound_args: Any, instance: Any = None,
                  result: Any = None, **kwargs: Any) -> None:
        KEPT.append(("span_exit", (id_, bound_args, instance, result)))

    def span_drop(self, id_: str, bound_args: Any, instance: Any = None,
                  err: BaseException | None = None, **kwargs: Any) -> None:
        KEPT.append(("span_drop", (id_, bound_args, instance, err)))


class RefsEventHandler(BaseEventHandler):
    """Keeps a reference to each event."""

    def handle(self, event: Any, **kwargs: Any) -> None:
        KEPT.append(("handle", (event,)))


async def workload(agent: FunctionAgent, runs: int, offset: int = 0) -> tuple[list[float], float]:
    """Run ``runs`` agent runs one after another; return (per-run seconds, loop CPU s)."""
    latencies = []
    cpu = time.thread_time()
    for i in range(offset, offset + runs):
        started = time.perf_counter()
        await agent.run(user_msg=f"add {i} and 1")
        latencies.append(time.perf_counter() - started)
    return latencies, time.thread_time() - cpu


def _thread_cpu(native_id: int | None) -> float:
    """CPU seconds used so far by thread ``native_id`` of this process (Linux; else 0).

    Read from the scheduler's own sum (nanoseconds, shown in milliseconds): the clock
    ticks of ``stat`` are 10 ms, as much as a block's writer uses in all."""
    if native_id is None:
        return 0.0
    try:
        with open(f"/proc/self/task/{native_id}/sched") as fh:
            for line in fh:
                if line.startswith("se.sum_exec_runtime"):
                    return float(line.partition(":")[2]) / 1e3
    except (OSError, ValueError):
        pass
    try:
        with open(f"/proc/self/task/{native_id}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _writer_id() -> int | None:
    for thread in threading.enumerate():
        if thread.name == "tracevault-writer" and thread.is_alive():
            return thread.native_id
    return None


class Peer:
    """Langfuse's LlamaIndex integration, exporting to a local HTTP server."""

    def __init__(self) -> None:
        from langfuse import Langfuse
        from openinference.instrumentation.llama_index import LlamaIndexInstrumentor

        self.server = local_sink()
        self.client = Langfuse(public_key="pk-lf-bench", secret_key="sk-lf-bench",
                               host=f"http://127.0.0.1:{self.server.server_address[1]}")
        self.instrumentor = LlamaIndexInstrumentor()
        # The client's own tracer provider (its span processor exports to Langfuse).
        resources = self.client._resources
        assert resources is not None, "the Langfuse client has tracing disabled"
        self.provider = resources.tracer_provider

    def attach(self) -> None:
        self.instrumentor.instrument(tracer_provider=self.provider)

    def detach(self) -> None:
        self.instrumentor.uninstrument()
        self.client.flush()

    def close(self) -> None:
        self.client.shutdown()
        self.server.shutdown()


def _peer() -> Peer | None:
    try:
        return Peer()
    except ImportError as exc:
        print(f"skipping langfuse: {exc}", file=sys.stderr)
        return None


class Bench:
    """The agent, the stores and the per-configuration measurements."""

    def __init__(self, tmp: Path, runs: int, rounds: int, model_ms: float = 0.0) -> None:
        self.agent = make_agent(model_ms)
        self.runs = runs
        self.url = f"sqlite:///{tmp / 'bench.db'}"
        self.process_url = f"sqlite:///{tmp / 'process.db'}"
        self.gated = GatedStore(open_store(f"sqlite:///{tmp / 'parked.db'}"))
        self.queue_size = (rounds + 2) * runs * EVENTS_PER_RUN * 2
        self.noop = (NoopSpanHandler(), NoopEventHandler())
        self.peer = _peer()
        self.configs = CONFIGS if self.peer is not None else CONFIGS[:-1]
        self.refs = (RefsSpanHandler(), RefsEventHandler())
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self.means: dict[str, list[float]] = collections.defaultdict(list)
        self.cpu: dict[str, list[float]] = collections.defaultdict(list)
        self.writer_cpu: list[float] = []
        self.offset = 0

    def block(self, config: str, record: bool = True) -> None:
        """Run one block of runs under ``config``; the ledger is flushed outside it."""
        dispatcher = get_dispatcher()
        writer = None
        if config in ("noop", "refs"):
            handlers = self.noop if config == "noop" else self.refs
            dispatcher.add_span_handler(handlers[0])
            dispatcher.add_event_handler(handlers[1])
        elif config == "parked":
            self.gated.gate.clear()
            tracevault.configure(store=self.gated, queue_size=self.queue_size)
            tracevault_llamaindex.instrument()
        elif config == "full":
            tracevault.configure(store=self.url, queue_size=self.queue_size)
            tracevault_llamaindex.instrument()
            writer = _writer_id()
        elif config == "process":
            tracevault.configure(store=self.process_url, queue_size=self.queue_size,
                                 writer="process")
            tracevault.AuditLogger(session_id="warm-up").log_event("start the writer")
            tracevault.flush()  # the child is up before the block is timed
            tracevault_llamaindex.instrument()
        elif config == "langfuse" and self.peer is not None:
            self.peer.attach()
        writer_before = _thread_cpu(writer)
        latencies, cpu = asyncio.run(workload(self.agent, self.runs, self.offset))
        writer_after = _thread_cpu(writer)
        self.offset += self.runs
        if config in ("noop", "refs"):
            dispatcher.span_handlers.remove(handlers[0])
            dispatcher.event_handlers.remove(handlers[1])
            KEPT.clear()
        elif config in ("parked", "full", "process"):
            tracevault_llamaindex.uninstrument()
            self.gated.gate.set()
            tracevault.flush()
        elif config == "langfuse" and self.peer is not None:
            self.peer.detach()
        if record:
            self.latencies[config].extend(latencies)
            self.means[config].append(statistics.fmean(latencies))
            self.cpu[config].append(cpu / self.runs)
            if config == "full":
                self.writer_cpu.append(writer_after - writer_before)

    def warm_replay(self, times: int) -> float:
        """Seconds the handlers take to interpret one run's callbacks with warm caches:
        one run's callbacks (arguments as LlamaIndex passed them) replayed ``times``
        times in a row into fresh handlers, the writer parked. What the handlers' code
        itself costs, apart from running cold between LlamaIndex's own work."""
        dispatcher = get_dispatcher()
        dispatcher.add_span_handler(self.refs[0])
        dispatcher.add_event_handler(self.refs[1])
        asyncio.run(workload(self.agent, 1, self.offset))
        dispatcher.span_handlers.remove(self.refs[0])
        dispatcher.event_handlers.remove(self.refs[1])
        journal = list(KEPT)
        KEPT.clear()
        self.gated.gate.clear()
        tracevault.configure(store=self.gated,
                             queue_size=(times + WARM_UP_REPLAYS) * EVENTS_PER_RUN)

        def replay() -> None:
            recorder = Recorder()
            span_handler = TracevaultSpanHandler(recorder)
            targets: dict[str, Callable[..., None]] = {
                "span_enter": span_handler.span_enter,
                "span_exit": span_handler.span_exit,
                "span_drop": span_handler.span_drop,
                "handle": TracevaultEventHandler(recorder).handle,
            }
            for method, args in journal:
                targets[method](*args)

        try:
            for _ in range(WARM_UP_REPLAYS):
                replay()
            started = time.perf_counter()
            for _ in range(times):
                replay()
            return (time.perf_counter() - started) / times
        finally:
            self.gated.gate.set()
            tracevault.flush()

    def handler_time(self) -> tuple[float, dict[str, float]]:
        """Seconds inside the handlers for one block (writer parked), and callbacks/run."""
        spent = [0.0]
        calls: collections.Counter[str] = collections.Counter()
        originals = []
        for cls, names in ((TracevaultSpanHandler, ("span_enter", "span_exit", "span_drop")),
                           (TracevaultEventHandler, ("handle",))):
            for name in names:
                original = getattr(cls, name)
                originals.append((cls, name, original))

                def timed(self: Any, *args: Any, _f: Any = original, _n: str = name,
                          **kwargs: Any) -> Any:
                    started = time.perf_counter()
                    try:
                        return _f(self, *args, **kwargs)
                    finally:
                        spent[0] += time.perf_counter() - started
                        calls[_n] += 1

                setattr(cls, name, timed)
        try:
            self.gated.gate.clear()
            tracevault.configure(store=self.gated, queue_size=self.queue_size)
            tracevault_llamaindex.instrument()
            asyncio.run(workload(self.agent, self.runs, self.offset))
        finally:
            tracevault_llamaindex.uninstrument()
            for cls, name, original in originals:
                setattr(cls, name, original)
            self.gated.gate.set()
            tracevault.flush()
        return spent[0], {name: n / self.runs for name, n in sorted(calls.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100, help="runs per block")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--model-ms", type=float, default=0.0,
                        help="time each model call waits, as a real model's network round "
                        "trip does (default 0: the agent never waits)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), args.runs, args.rounds, args.model_ms)
        configs = bench.configs
        for config in configs:  # warm up every path once, unrecorded
            bench.block(config, record=False)
        for r in range(args.rounds):
            for config in configs[r % len(configs):] + configs[:r % len(configs)]:
                bench.block(config)
        inside, callbacks = bench.handler_time()
        warm = bench.warm_replay(REPLAYS)
        tracevault.shutdown()
        if bench.peer is not None:
            bench.peer.close()
        store = open_store(bench.url)
        full_events = store.count()
        store.close()
        store = open_store(bench.process_url)
        process_events = store.count()
        store.close()
        parked_events = bench.gated.store.count()
        bench.gated.store.close()
    expected_full = (args.rounds + 1) * args.runs * EVENTS_PER_RUN
    expected_parked = ((args.rounds + 2) * args.runs + REPLAYS + WARM_UP_REPLAYS) * EVENTS_PER_RUN
    expected_process = expected_full + args.rounds + 1  # one warm-up event per block
    if (full_events, parked_events, process_events) != (
        expected_full, expected_parked, expected_process
    ):
        sys.exit(f"recorded {full_events} + {parked_events} + {process_events} events, "
                 f"expected {expected_full} + {expected_parked} + {expected_process}")
    median = {c: statistics.median(bench.latencies[c]) for c in configs}
    mean = {c: statistics.median(bench.means[c]) for c in configs}
    cpu = {c: statistics.median(bench.cpu[c]) for c in configs}
    per_event = 1e6 / EVENTS_PER_RUN
    result: dict[str, Any] = {
        "machine": machine(),
        "runs_per_block": args.runs,
        "rounds": args.rounds,
        "model_ms": args.model_ms,
        "events_per_run": EVENTS_PER_RUN,
        "callbacks_per_run": callbacks,
        "baseline_ms_per_run": mean["none"] * 1e3,
        "instrumented_ms_per_run": mean["full"] * 1e3,
        # The headline: wall clock of full capture over no handler (mean run time, so
        # GC and writer stalls count), and its parts.
        "wall_overhead_us_per_event": (mean["full"] - mean["none"]) * per_event,
        "median_overhead_us_per_event": (median["full"] - median["none"]) * per_event,
        "process_wall_overhead_us_per_event": (mean["process"] - mean["none"]) * per_event,
        "process_median_overhead_us_per_event": (median["process"] - median["none"])
        * per_event,
        "parked_wall_overhead_us_per_event": (mean["parked"] - mean["none"]) * per_event,
        "parked_median_overhead_us_per_event": (median["parked"] - median["none"]) * per_event,
        "noop_handler_overhead_us_per_event": (median["noop"] - median["none"]) * per_event,
        "refs_handler_overhead_us_per_event": (median["refs"] - median["none"]) * per_event,
        "inside_handlers_us_per_event": inside / args.runs * per_event,
        "warm_handlers_us_per_event": warm * per_event,
        "loop_cpu_overhead_us_per_event": (cpu["full"] - cpu["none"]) * per_event,
        "parked_loop_cpu_overhead_us_per_event": (cpu["parked"] - cpu["none"]) * per_event,
        "writer_cpu_us_per_event": statistics.median(bench.writer_cpu) / args.runs * per_event,
    }
    if "langfuse" in median:
        # Per tracevault event: the peer records the same runs (a span per LlamaIndex span).
        result["langfuse_median_overhead_us_per_event"] = (
            (median["langfuse"] - median["none"]) * per_event)
        result["langfuse_wall_overhead_us_per_event"] = (
            (mean["langfuse"] - mean["none"]) * per_event)
        result["langfuse_exported"] = {"requests": CountingSink.requests,
                                       "bytes": CountingSink.received}
    write_results("llamaindex" + ("-model-wait" if args.model_ms else ""), result)
    for key, value in result.items():
        if isinstance(value, float):
            print(f"{key:38} {value:.2f}")
        elif isinstance(value, dict) and key != "machine":
            print(f"{key:38} " + ", ".join(f"{k} {v:g}" for k, v in value.items()))
        else:
            print(f"{key:38} {value}")


if __name__ == "__main__":
    main()
