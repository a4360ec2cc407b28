"""What the LangChain handler's callbacks cost the agent's thread, without the agent.

``bench_langchain.py`` times whole agent runs, where LangChain's own Python (about
250 µs per event) and a shared VM's drift swamp a handler's few microseconds. This
script records the callbacks of one run of the same agent (14 callbacks, 17 events)
and calls the handler with them again, ``--runs`` times per round (fresh run ids each
time), timing the calls alone: the handler's work on the caller's thread (wall-clock
and thread CPU) and the process's CPU (the writer's included) per event, with the
ledger writer

* ``parked``  held (the writer takes nothing: the caller's share alone),
* ``thread``  running in a thread of this process (the default),
* ``process`` running in a child process (``TRACEVAULT_WRITER=process``).

The calls run back to back, warm in the CPU's caches, so these are lower bounds of what
the same work costs inside an agent run; they compare versions of the handler steadily.

    .venv/bin/python benchmarks/bench_callbacks.py --runs 2000 --rounds 4
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

from bench_langchain import _script, get_weather
from harness import GatedStore, machine, write_results
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langgraph.callbacks import GraphCallbackHandler
from tracevault_langchain import TracevaultCallbackHandler
from tracevault_langchain.testing import ScriptedChatModel

import tracevault
from tracevault.store import open_store

Call = tuple[str, tuple[Any, ...], dict[str, Any]]
CALLBACKS = ("on_chain_start", "on_chain_end", "on_chain_error", "on_chat_model_start",
             "on_llm_start", "on_llm_new_token", "on_llm_end", "on_llm_error", "on_tool_start",
             "on_tool_end", "on_tool_error", "on_retriever_start", "on_retriever_end",
             "on_custom_event", "on_retry")


def record_run() -> list[Call]:
    """The callbacks, with their arguments, of one run of the benchmark agent."""
    calls: list[Call] = []

    class Recording(GraphCallbackHandler):
        run_inline = True

    def keep(name: str) -> Any:
        def method(self: Any, *args: Any, **kwargs: Any) -> None:
            calls.append((name, args, kwargs))
        return method

    for name in CALLBACKS:
        setattr(Recording, name, keep(name))
    agent = create_agent(ScriptedChatModel(respond=_script), [get_weather])
    agent.invoke({"messages": [HumanMessage("Paris")]},
                 {"callbacks": [Recording()], "metadata": {"session_id": "bench"}})
    return calls


def _fresh(calls: list[Call], handler: Any) -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    # The same run again under new run ids (a handler keys its state by run id).
    ids: dict[uuid.UUID, uuid.UUID] = {}
    out = []
    for name, args, kwargs in calls:
        again = dict(kwargs)
        for key in ("run_id", "parent_run_id"):
            if again.get(key) is not None:
                again[key] = ids.setdefault(again[key], uuid.uuid4())
        out.append((getattr(handler, name), args, again))
    return out


def measure(mode: str, calls: list[Call], runs: int, rounds: int, events: int) -> dict[str, float]:
    """Per-event µs of the handler's calls under writer ``mode`` (median of rounds)."""
    tmp = tempfile.mkdtemp()
    url = f"sqlite:///{tmp}/ledger.db"
    gated = None
    if mode == "parked":
        gated = GatedStore(open_store(url))
        tracevault.configure(store=gated, queue_size=(runs * rounds + 1) * events * 2)
    else:
        tracevault.configure(store=url, writer=mode)
    handler = TracevaultCallbackHandler()
    wall, cpu, process = [], [], []
    try:
        for _ in range(rounds):
            batches = [_fresh(calls, handler) for _ in range(runs)]
            gc.collect()
            t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
            for batch in batches:
                for method, args, kwargs in batch:
                    method(*args, **kwargs)
            t1, c1 = time.perf_counter(), time.thread_time()
            if gated is None:
                tracevault.flush()  # the writer's share of these calls counts too
            p1 = time.process_time()
            scale = 1e6 / (runs * events)
            wall.append((t1 - t0) * scale)
            cpu.append((c1 - c0) * scale)
            process.append((p1 - p0) * scale)
    finally:
        if gated is not None:
            gated.gate.set()
        tracevault.shutdown()
    return {"caller_wall_us": statistics.median(wall), "caller_cpu_us": statistics.median(cpu),
            "process_cpu_us": statistics.median(process)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="runs replayed per round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--modes", nargs="*", default=["parked", "thread", "process"])
    args = parser.parse_args(argv)
    calls = record_run()
    events = 17  # what one run records (see bench_langchain)
    results = {mode: measure(mode, calls, args.runs, args.rounds, events)
               for mode in args.modes}
    host = {**machine(), "runs": args.runs, "rounds": args.rounds, "callbacks": len(calls),
            "events_per_run": events}
    write_results("callbacks", {"machine": host, "results": results})
    print(f"python {host['python']}, {host['cores']} CPUs: {len(calls)} callbacks, {events} "
          f"events per run, {args.runs} runs x {args.rounds} rounds (median round)")
    print(f"{'writer':<10}{'caller wall':>13}{'caller CPU':>12}{'process CPU':>13}  µs / event")
    for mode, r in results.items():
        print(f"{mode:<10}{r['caller_wall_us']:>13.1f}{r['caller_cpu_us']:>12.1f}"
              f"{r['process_cpu_us']:>13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
