"""LlamaIndex integration overhead: cost per recorded event on a FunctionAgent workload.

Run: ``.venv/bin/python benchmarks/bench_llamaindex.py [--runs N] [--rounds R]``. Each
round runs N FunctionAgent runs (scripted model, one tool call, 10 recorded events per
run) with no handler and then with ``tracevault_llamaindex.instrument()`` recording into a
real SQLite ledger (default middleware included), and reports per recorded event: the
time spent inside the handlers (building and enqueueing events), and the difference in
wall clock and in CPU of the agent's thread (the event loop the handlers run on; the
ledger writer runs on its own thread and competes for the GIL). Medians over the rounds. Writes
``benchmarks/results/llamaindex.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tracevault_llamaindex
from harness import machine, write_results
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.llms import MockFunctionCallingLLM
from llama_index.core.tools import FunctionTool
from tracevault_llamaindex.testing import tool_then_answer

import tracevault
from tracevault.store import open_store

EVENTS_PER_RUN = 10  # agent x2, input, llm_call x4, tool_call x2, output


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def make_agent() -> FunctionAgent:
    llm = MockFunctionCallingLLM(response_generator=tool_then_answer(
        lambda user: [("add", {"a": len(user), "b": 1})], "done"))
    return FunctionAgent(tools=[FunctionTool.from_defaults(add)], llm=llm, streaming=False)


async def workload(agent: FunctionAgent, runs: int) -> tuple[float, float]:
    """Run ``runs`` agent runs one after another; return (wall s, loop-thread CPU s)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for i in range(runs):
        await agent.run(user_msg=f"add {i} and 1")
    return time.perf_counter() - wall, time.thread_time() - cpu


def handler_time(agent: FunctionAgent, runs: int) -> float:
    """Return seconds spent inside the tracevault handlers (emit included) for ``runs``."""
    from tracevault_llamaindex.events import TracevaultEventHandler
    from tracevault_llamaindex.spans import TracevaultSpanHandler

    spent = [0.0]
    originals = []
    for cls, names in ((TracevaultSpanHandler, ("span_enter", "span_exit", "span_drop")),
                       (TracevaultEventHandler, ("handle",))):
        for name in names:
            original = getattr(cls, name)
            originals.append((cls, name, original))

            def timed(self: Any, *args: Any, _f: Any = original, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return _f(self, *args, **kwargs)
                finally:
                    spent[0] += time.perf_counter() - started

            setattr(cls, name, timed)
    try:
        tracevault_llamaindex.instrument()
        asyncio.run(workload(agent, runs))
    finally:
        tracevault_llamaindex.uninstrument()
        for cls, name, original in originals:
            setattr(cls, name, original)
    return spent[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    agent = make_agent()
    asyncio.run(workload(agent, 20))  # warm up imports and caches
    base_wall, base_cpu, on_wall, on_cpu = [], [], [], []
    events = 0
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        for _ in range(args.rounds):
            tracevault_llamaindex.uninstrument()
            wall, cpu = asyncio.run(workload(agent, args.runs))
            base_wall.append(wall)
            base_cpu.append(cpu)
            tracevault.configure(store=url)
            tracevault_llamaindex.instrument()
            wall, cpu = asyncio.run(workload(agent, args.runs))
            on_wall.append(wall)
            on_cpu.append(cpu)
            tracevault_llamaindex.uninstrument()
            tracevault.flush()
        inside = handler_time(agent, args.runs)
        tracevault.flush()
        tracevault.shutdown()
        store = open_store(url)
        events = store.count()
        store.close()
    expected = (args.rounds + 1) * args.runs * EVENTS_PER_RUN
    if events != expected:
        sys.exit(f"recorded {events} events, expected {expected}")
    per_round = args.runs * EVENTS_PER_RUN
    result: dict[str, Any] = {
        "machine": machine(),
        "runs_per_round": args.runs,
        "rounds": args.rounds,
        "events_per_run": EVENTS_PER_RUN,
        "baseline_ms_per_run": statistics.median(base_wall) / args.runs * 1e3,
        "instrumented_ms_per_run": statistics.median(on_wall) / args.runs * 1e3,
        "wall_overhead_us_per_event": (statistics.median(on_wall) - statistics.median(base_wall))
        / per_round * 1e6,
        "inside_handlers_us_per_event": inside / per_round * 1e6,
        "loop_cpu_overhead_us_per_event": (statistics.median(on_cpu) - statistics.median(base_cpu))
        / per_round * 1e6,
    }
    write_results("llamaindex", result)
    for key, value in result.items():
        print(f"{key:34} {value:.2f}" if isinstance(value, float) else f"{key:34} {value}")


if __name__ == "__main__":
    main()
