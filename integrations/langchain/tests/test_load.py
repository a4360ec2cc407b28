"""Concurrency and bounded memory: no lost or duplicated events, no run state left over."""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from uuid import uuid4

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from lc_agents import get_weather, lc_agent, weather_model
from lc_tree import check_tree
from tracevault_langchain import TracevaultCallbackHandler
from tracevault_langchain.runs import RUNS, RunTable
from tracevault_langchain.testing import ScriptedChatModel, ai

from tracevault.schema import AuditEvent
from tracevault.testing import Capture, capture_events

EVENTS_PER_RUN = 17  # see test_agents.test_create_agent_exact_sequence_with_graph_nodes


def _by_trace(events: list[AuditEvent]) -> dict[str | None, list[AuditEvent]]:
    traces: dict[str | None, list[AuditEvent]] = {}
    for ev in events:
        traces.setdefault(ev.trace_id, []).append(ev)
    return traces


def _check_runs(events: list[AuditEvent], cities: list[str]) -> None:
    assert len({e.event_id for e in events}) == len(events), "duplicated events"
    traces = _by_trace(events)
    assert len(traces) == len(cities)
    seen: Counter[str] = Counter()
    for trace_events in traces.values():
        assert len(trace_events) == EVENTS_PER_RUN, "lost or duplicated events"
        check_tree(trace_events)
        city = next(e for e in trace_events if e.kind == "input").data["content"]
        output = next(e for e in trace_events if e.kind == "output").data
        assert output["content"] == f"It is sunny in {city}.", "runs got mixed up"
        assert output["tokens_used"] == 280
        tool = next(e for e in trace_events if e.kind == "tool_call" and e.phase == "end")
        assert tool.data["result"] == f"sunny in {city}"
        assert {e.session_id for e in trace_events} == {f"s-{city}"}
        seen[city] += 1
    assert seen == Counter(cities)


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_a_thousand_concurrent_ainvokes(tmp_path: Path, writer: str) -> None:
    agent = lc_agent(weather_model(), [get_weather])
    handler = TracevaultCallbackHandler()  # one instance shared by every run
    cities = [f"city{i}" for i in range(1000)]

    async def one(city: str) -> None:
        await agent.ainvoke({"messages": [HumanMessage(city)]},
                            {"callbacks": [handler], "metadata": {"session_id": f"s-{city}"}})

    with capture_events(tmp_path, writer=writer) as cap:
        await asyncio.gather(*(one(c) for c in cities))
        assert len(RUNS.lineage) == 0  # the agent's side
        _check_runs(cap.events(), cities)
        assert len(RUNS) == 0  # the writer's side, once it has handled every callback
        stats = cap.pipeline.stats()
        assert stats.written == 1000 * EVENTS_PER_RUN
        assert stats.dropped == 0 and stats.dead_lettered == 0
        assert cap.store.verify().ok


def test_one_handler_from_many_threads(cap: Capture) -> None:
    agent = lc_agent(weather_model(), [get_weather])
    handler = TracevaultCallbackHandler()
    cities = [f"town{i}" for i in range(200)]

    def one(city: str) -> None:
        agent.invoke({"messages": [HumanMessage(city)]},
                     {"callbacks": [handler], "metadata": {"session_id": f"s-{city}"}})

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, cities))
    _check_runs(cap.events(), cities)


def test_run_state_stays_flat_over_ten_thousand_runs(tmp_path: Path) -> None:
    model = ScriptedChatModel(respond=lambda _m: ai("ok", input_tokens=2, output_tokens=1))
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | model
    handler = TracevaultCallbackHandler()
    high_water = 0
    # level=info: graph-step events are skipped, their run state is still tracked
    with capture_events(tmp_path, level="info") as cap:
        for i in range(10_000):
            if i % 3 == 2:  # some streamed, some abandoned mid-stream
                for _chunk in chain.stream({"q": str(i)}, {"callbacks": [handler]}):
                    break
            else:
                chain.invoke({"q": str(i)}, {"callbacks": [handler]})
            high_water = max(high_water, len(RUNS.lineage))
        cap.flush()  # the writer has handled every callback
        assert len(RUNS) == 0 and len(RUNS.lineage) == 0, "per-run state was not evicted"
        assert high_water == 0, "state is dropped as soon as each run ends"
        assert RUNS.evicted == 0
        abandoned = len(range(2, 10_000, 3))
        assert len(cap.events(kinds=["output"])) == 10_000 - abandoned
        ends = [e.data["status"] for e in cap.events(kinds=["agent"]) if e.phase == "end"]
        assert len(ends) == 10_000 and ends.count("abandoned") == abandoned


def test_runs_that_never_end_are_evicted_oldest_first(cap: Capture) -> None:
    table = RunTable(max_open=3)
    handler = TracevaultCallbackHandler(runs=table)
    ids = [uuid4() for _ in range(5)]
    for run_id in ids:  # five runs start; none ever ends (a generator nobody closes)
        handler.on_chain_start(None, {"q": 1}, run_id=run_id, name="stuck")
    assert len(table.lineage) == 3  # the agent's side forgets the oldest too
    cap.flush()  # the writer has handled the callbacks
    assert len(table) == 3 and table.evicted == 2
    assert table.get(ids[0]) is None and table.get(ids[1]) is None
    assert table.get(ids[4]) is not None
    handler.on_chain_end({}, run_id=ids[0])  # the evicted run's late end is ignored
    evictions = [e for e in cap.events() if e.name == "tracevault.run_evicted"]
    assert [e.trace_id for e in evictions] == [str(ids[0]), str(ids[1])]
    assert evictions[0].data["type"] == "tracevault.RunStateEvicted"
    for run_id in ids[2:]:
        handler.on_chain_end({}, run_id=run_id)
    cap.flush()
    assert len(table) == 0 and len(table.lineage) == 0
