"""Real LangGraph agents driven by a scripted tool-calling model, recorded end to end."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from lc_agents import (
    AGENT_SEQUENCE,
    AGENTS,
    broken_clock,
    get_time,
    get_weather,
    lc_agent,
    picky_clock,
    react_agent,
    two_tools_then_answer,
    weather_model,
)
from lc_tree import check_tree, kinds, parent_of
from tracevault_langchain import TracevaultCallbackHandler
from tracevault_langchain.testing import ScriptedChatModel, ai, tool_call

from tracevault.pricing import cost_of
from tracevault.schema import AuditEvent, validate_event
from tracevault.testing import Capture, capture_events

COST = (cost_of("gpt-4o-mini", 100, 20) or 0) + (cost_of("gpt-4o-mini", 150, 10) or 0)


@pytest.fixture(params=["thread", "process"])
def cap(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Capture]:
    """A fresh ledger, written by a writer thread or by a writer process — which then
    also interprets the handler's callbacks: every run must come out the same."""
    with capture_events(tmp_path, writer=request.param) as capture:
        yield capture


def _config(**metadata: Any) -> dict[str, Any]:
    return {"callbacks": [TracevaultCallbackHandler()],
            "metadata": {"session_id": "s-1", "user_id": "alice", **metadata}}


def _one(events: list[AuditEvent], kind: str, phase: str) -> AuditEvent:
    found = [e for e in events if e.kind == kind and e.phase == phase]
    assert len(found) == 1, [(e.kind, e.phase, e.name) for e in found]
    return found[0]


def _check_weather_run(events: list[AuditEvent], city: str = "Paris") -> dict[str, AuditEvent]:
    """The assertions every recorded weather-agent run must pass."""
    for ev in events:
        validate_event(ev)
    starts = check_tree(events)
    assert kinds(events, steps=False) == AGENT_SEQUENCE
    root = events[0]
    assert {e.trace_id for e in events} == {root.span_id}
    assert {(e.session_id, e.user_id) for e in events} == {("s-1", "alice")}
    # model and tool steps hang under the graph nodes that ran them
    llm_starts = [e for e in events if e.kind == "llm_call" and e.phase == "start"]
    tool_start = _one(events, "tool_call", "start")
    assert tool_start.data == {"tool_name": "get_weather", "parameters": {"city": city},
                               "status": "pending", "tool_call_id": f"call-{city}"}
    assert parent_of(tool_start, starts).name == "tools"
    for ev in llm_starts:
        assert parent_of(ev, starts).kind == "chain"
    first = llm_starts[0].data
    assert first["model"] == "gpt-4o-mini" and first["provider"] == "openai"
    assert first["messages"][-1]["type"] == "human"
    assert first["messages"][-1]["content"] == city
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather"]
    llm_ends = [e for e in events if e.kind == "llm_call" and e.phase == "end"]
    call = llm_ends[0].data
    assert call["tool_calls"] == [{"name": "get_weather", "args": {"city": city},
                                   "id": f"call-{city}", "type": "tool_call"}]
    assert call["finish_reason"] == "tool_calls"
    assert call["usage"] == {"input": 100, "output": 20, "total": 120}
    assert call["cost"] == pytest.approx(cost_of("gpt-4o-mini", 100, 20))
    assert llm_ends[1].data["usage"]["total"] == 160
    assert llm_ends[1].data["response"] == f"It is sunny in {city}."
    reasoning = _one(events, "reasoning", "point")
    assert reasoning.data == {"thought": "Let me look that up.",
                              "plan": [f'get_weather({{"city": "{city}"}})']}
    assert reasoning.parent_span_id == llm_ends[0].span_id
    tool_end = _one(events, "tool_call", "end")
    assert tool_end.data["result"] == f"sunny in {city}"
    assert tool_end.data["status"] == "success"
    output = _one(events, "output", "point")
    assert output.data["content"] == f"It is sunny in {city}."
    assert output.data["tokens_used"] == 280
    assert output.data["cost"] == pytest.approx(COST)
    assert output.data["model"] == "gpt-4o-mini"
    assert output.parent_span_id == root.span_id
    assert _one(events, "input", "point").data["content"] == city
    # durations: every step took time, and no step outlasts the step it ran in
    for ev in events:
        if ev.phase == "end":
            assert ev.data["duration_ms"] >= 0
            parent = starts.get(ev.parent_span_id or "")
            if parent is not None:
                parent_end = next(e for e in events if e.phase == "end"
                                  and e.span_id == parent.span_id)
                assert parent_end.data["duration_ms"] >= ev.data["duration_ms"]
    return starts


@pytest.mark.parametrize("build", AGENTS.values(), ids=AGENTS.keys())
def test_invoke_records_the_whole_run(cap: Capture, build: Callable[..., Any]) -> None:
    agent = build(weather_model(), [get_weather])
    result = agent.invoke({"messages": [HumanMessage("Paris")]}, _config())
    assert result["messages"][-1].content == "It is sunny in Paris."
    _check_weather_run(cap.events())


def test_create_agent_exact_sequence_with_graph_nodes(cap: Capture) -> None:
    agent = lc_agent(weather_model(), [get_weather])
    agent.invoke({"messages": [HumanMessage("Paris")]}, _config())
    assert cap.kinds() == [
        ("agent", "start", "LangGraph"),
        ("input", "point", "user_message"),
        ("chain", "start", "model"),
        ("llm_call", "start", "gpt-4o-mini"),
        ("llm_call", "end", "gpt-4o-mini"),
        ("reasoning", "point", "gpt-4o-mini"),
        ("chain", "end", "model"),
        ("chain", "start", "tools"),
        ("tool_call", "start", "get_weather"),
        ("tool_call", "end", "get_weather"),
        ("chain", "end", "tools"),
        ("chain", "start", "model"),
        ("llm_call", "start", "gpt-4o-mini"),
        ("llm_call", "end", "gpt-4o-mini"),
        ("chain", "end", "model"),
        ("output", "point", "final_answer"),
        ("agent", "end", "LangGraph"),
    ]
    node = next(e for e in cap.events() if e.kind == "chain")
    assert node.data == {"node": "model", "step": 1}


@pytest.mark.parametrize("build", AGENTS.values(), ids=AGENTS.keys())
async def test_ainvoke_records_the_same_run(cap: Capture, build: Callable[..., Any]) -> None:
    agent = build(weather_model(), [get_weather])
    await agent.ainvoke({"messages": [HumanMessage("Paris")]}, _config())
    _check_weather_run(cap.events())


@pytest.mark.parametrize("build", AGENTS.values(), ids=AGENTS.keys())
def test_stream_messages_keeps_tool_calls_usage_and_ttft(
    cap: Capture, build: Callable[..., Any]
) -> None:
    agent = build(weather_model(), [get_weather])
    chunks = [msg for msg, _meta in agent.stream(
        {"messages": [HumanMessage("Paris")]}, _config(), stream_mode="messages")
        if isinstance(msg, AIMessageChunk)]
    assert any(c.tool_call_chunks for c in chunks), "the model streamed its tool call"
    events = cap.events()
    _check_weather_run(events)
    for end in (e for e in events if e.kind == "llm_call" and e.phase == "end"):
        assert 0 <= end.data["time_to_first_token_ms"] <= end.data["duration_ms"]


@pytest.mark.parametrize("build", AGENTS.values(), ids=AGENTS.keys())
async def test_astream_and_astream_events(cap: Capture, build: Callable[..., Any]) -> None:
    agent = build(weather_model(), [get_weather])
    async for _ in agent.astream({"messages": [HumanMessage("Paris")]}, _config(),
                                 stream_mode="messages"):
        pass
    seen = [ev["event"] async for ev in agent.astream_events(
        {"messages": [HumanMessage("Lyon")]}, _config(), version="v2")]
    assert "on_tool_start" in seen
    events = cap.events()
    traces = list(dict.fromkeys(e.trace_id for e in events))
    assert len(traces) == 2
    _check_weather_run([e for e in events if e.trace_id == traces[0]], "Paris")
    _check_weather_run([e for e in events if e.trace_id == traces[1]], "Lyon")


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_parallel_tool_calls_each_under_their_own_node(cap: Capture, mode: str) -> None:
    model = ScriptedChatModel(messages=iter(two_tools_then_answer()))
    agent = react_agent(model, [get_weather, get_time])
    inputs = {"messages": [HumanMessage("weather and time?")]}
    if mode == "sync":
        agent.invoke(inputs, _config())
    else:
        await agent.ainvoke(inputs, _config())
    events = cap.events()
    starts = check_tree(events)
    tool_starts = [e for e in events if e.kind == "tool_call" and e.phase == "start"]
    assert sorted(e.name or "" for e in tool_starts) == ["get_time", "get_weather"]
    nodes = [parent_of(e, starts) for e in tool_starts]
    assert [n.name for n in nodes] == ["tools", "tools"]
    assert nodes[0].span_id != nodes[1].span_id, "each Send runs its own tools node"
    root = events[0]
    assert all(n.parent_span_id == root.span_id for n in nodes)
    results = {e.name: e.data["result"] for e in events
               if e.kind == "tool_call" and e.phase == "end"}
    assert results == {"get_weather": "sunny in Paris", "get_time": "14:05 in Paris"}
    assert _one(events, "output", "point").data["tokens_used"] == 358


@pytest.mark.parametrize("build", AGENTS.values(), ids=AGENTS.keys())
def test_failing_tool_is_an_error_the_agent_recovers_from(
    cap: Capture, build: Callable[..., Any]
) -> None:
    model = ScriptedChatModel(messages=iter(two_tools_then_answer("get_weather", "broken_clock")))
    agent = build(model, [get_weather, broken_clock])
    agent.invoke({"messages": [HumanMessage("weather and time?")]}, _config())
    events = cap.events()
    check_tree(events)
    failed = next(e for e in events if e.kind == "tool_call" and e.phase == "end"
                  and e.name == "broken_clock")
    assert failed.level == "error"
    assert failed.data["status"] == "error"
    assert failed.data["error"] == {"type": "TimeoutError",
                                    "message": "clock for Paris did not answer"}
    error = _one(events, "error", "point")
    assert error.span_id == failed.span_id, "the error sits inside the failed tool call"
    assert error.data["type"] == "TimeoutError"
    assert error.data["where"] == "broken_clock"
    assert "raise TimeoutError" in error.data["stack_trace"]
    recovered = _one(events, "custom", "point")
    assert recovered.name == "error_recovered"
    assert recovered.span_id == failed.span_id
    assert recovered.data["payload"]["tool_call_id"] == "c2"
    assert recovered.data["payload"]["type"] == "TimeoutError"
    assert "returned to the model" in recovered.data["payload"]["recovery_action"]
    # the recovery is noticed when the model is next called with the error in its prompt
    llm_start = max((e for e in events if e.kind == "llm_call" and e.phase == "start"),
                    key=events.index)
    assert events.index(llm_start) < events.index(recovered)
    assert _one(events, "output", "point").data["content"] == "Done."


def test_two_tool_calls_failing_with_one_exception_object_are_two_errors(
    cap: Capture,
) -> None:
    from langchain_core.tools import tool

    shared = ConnectionError("upstream down")  # one failed request both calls awaited

    @tool
    def fetch(city: str) -> str:
        """Fetch a city's page."""
        raise shared

    model = ScriptedChatModel(messages=iter(two_tools_then_answer("fetch", "fetch")))
    lc_agent(model, [fetch]).invoke({"messages": [HumanMessage("pages?")]}, _config())
    events = cap.events()
    check_tree(events)
    failed = [e.span_id for e in events if e.kind == "tool_call" and e.phase == "end"]
    errors = [e for e in events if e.kind == "error"]
    assert [e.span_id for e in errors] == failed and len(set(failed)) == 2
    recovered = [e for e in events if e.name == "error_recovered"]
    assert sorted(e.data["payload"]["tool_call_id"] for e in recovered) == ["c1", "c2"]


def test_tool_that_handles_its_own_error_is_recorded_as_failed(cap: Capture) -> None:
    model = ScriptedChatModel(messages=iter(two_tools_then_answer("get_weather", "picky_clock")))
    agent = lc_agent(model, [get_weather, picky_clock])
    agent.invoke({"messages": [HumanMessage("weather and time?")]}, _config())
    events = cap.events()
    failed = next(e for e in events if e.kind == "tool_call" and e.phase == "end"
                  and e.name == "picky_clock")
    assert failed.data["status"] == "error"
    assert failed.data["result"] == "no clock in Paris"
    error = _one(events, "error", "point")
    assert error.data == {"type": "ToolError", "message": "no clock in Paris",
                          "where": "picky_clock"}
    assert _one(events, "custom", "point").data["payload"]["tool_call_id"] == "c2"


def test_unhandled_tool_error_reaches_the_caller_and_is_recorded_once(cap: Capture) -> None:
    from langchain.agents import create_agent

    model = ScriptedChatModel(messages=iter(two_tools_then_answer("broken_clock", "get_time")))
    agent = create_agent(model, [broken_clock, get_time])
    with pytest.raises(TimeoutError):
        agent.invoke({"messages": [HumanMessage("time?")]}, _config())
    events = cap.events()
    check_tree(events)
    assert [e.data["where"] for e in events if e.kind == "error"] == ["broken_clock"]
    root_end = events[-1]
    assert (root_end.kind, root_end.phase) == ("agent", "end")
    assert root_end.data["status"] == "error"
    assert root_end.data["error"]["type"] == "TimeoutError"
    assert not [e for e in events if e.kind == "output"]


def test_batch_records_one_trace_per_input(cap: Capture) -> None:
    agent = lc_agent(weather_model(), [get_weather])
    cities = ["Paris", "Lyon", "Nice"]
    handler = TracevaultCallbackHandler()
    configs = [{"callbacks": [handler], "metadata": {"session_id": "s-1", "user_id": "alice"}}
               for _ in cities]
    agent.batch([{"messages": [HumanMessage(c)]} for c in cities], configs)
    events = cap.events()
    traces: dict[str | None, list[AuditEvent]] = {}
    for ev in events:
        traces.setdefault(ev.trace_id, []).append(ev)
    assert len(traces) == 3
    answered = set()
    for trace_events in traces.values():
        city = _one(trace_events, "input", "point").data["content"]
        _check_weather_run(trace_events, city)
        answered.add(city)
    assert answered == set(cities)


def test_at_level_info_graph_steps_are_skipped_and_the_tree_stays_whole(tmp_path: Any) -> None:
    from tracevault.testing import capture_events

    with capture_events(tmp_path, level="info") as cap:
        lc_agent(weather_model(), [get_weather]).invoke(
            {"messages": [HumanMessage("Paris")]}, _config())
        events = cap.events()
    starts = check_tree(events)  # no event points at a step that was not recorded
    assert kinds(events) == AGENT_SEQUENCE
    tool = next(e for e in events if e.kind == "tool_call")
    assert parent_of(tool, starts).kind == "agent"


@pytest.mark.parametrize("level", ["warning", "error"])
def test_above_info_only_failures_are_recorded_and_no_end_lacks_its_start(
    tmp_path: Any, level: str
) -> None:
    from tracevault.testing import capture_events

    model = ScriptedChatModel(messages=iter(two_tools_then_answer("get_weather", "broken_clock")))
    with capture_events(tmp_path, level=level) as cap:
        react_agent(model, [get_weather, broken_clock]).invoke(
            {"messages": [HumanMessage("weather and time?")]}, _config())
        events = cap.events()
    check_tree(events)  # no end without its start, no parent that was not recorded
    expected = [("error", "point", "broken_clock")]
    if level == "warning":
        expected.append(("custom", "point", "error_recovered"))
    assert kinds(events) == expected
    error = events[0]
    assert error.data["type"] == "TimeoutError" and error.parent_span_id is None


def test_a_tool_that_answers_directly_is_the_final_answer(cap: Capture) -> None:
    from langchain_core.tools import tool

    @tool(return_direct=True)
    def finish(answer: str) -> str:
        """Give the user the final answer."""
        return f"FINAL: {answer}"

    model = ScriptedChatModel(messages=iter([
        ai("Calling the finisher.", tool_calls=[tool_call("finish", {"answer": "42"}, "c1")])]))
    out = react_agent(model, [finish]).invoke({"messages": [HumanMessage("meaning?")]},
                                              _config())
    assert out["messages"][-1].content == "FINAL: 42"
    assert _one(cap.events(), "output", "point").data["content"] == "FINAL: 42"


def test_a_structured_response_is_part_of_the_final_answer(cap: Capture) -> None:
    from langchain.agents import create_agent
    from langchain.agents.structured_output import ToolStrategy
    from pydantic import BaseModel

    class Weather(BaseModel):
        city: str
        temp_c: float

    model = ScriptedChatModel(messages=iter([ai("", tool_calls=[
        tool_call("Weather", {"city": "Paris", "temp_c": 21.5}, "s1")])]))
    agent = create_agent(model, [], response_format=ToolStrategy(Weather))
    out = agent.invoke({"messages": [HumanMessage("weather in Paris?")]}, _config())
    answer = _one(cap.events(), "output", "point").data
    assert answer["structured"] == out["structured_response"].model_dump() == {
        "city": "Paris", "temp_c": 21.5}
    assert answer["content"] == out["messages"][-1].content


def test_middleware_retries_and_fallbacks_are_recoveries(cap: Capture) -> None:
    from langchain.agents import create_agent
    from langchain.agents.middleware import (
        ModelFallbackMiddleware,
        ModelRetryMiddleware,
        ToolRetryMiddleware,
    )
    from langchain_core.tools import tool

    calls = {"model": 0, "tool": 0}

    def flaky_model(messages: Sequence[BaseMessage]) -> AIMessage:
        calls["model"] += 1
        if calls["model"] == 1:
            raise ConnectionError("rate limited")
        if not any(m.type == "tool" for m in messages):
            return ai("", tool_calls=[tool_call("lookup", {"city": "Oslo"}, "c1")])
        return ai("Oslo is lovely.")

    @tool
    def lookup(city: str) -> str:
        """Look a city up."""
        calls["tool"] += 1
        if calls["tool"] == 1:
            raise ConnectionError("backend flaked")
        return f"{city} is lovely"

    class Down(ScriptedChatModel):
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("primary down")

    retrying = create_agent(ScriptedChatModel(respond=flaky_model), [lookup], middleware=[
        ModelRetryMiddleware(max_retries=2, initial_delay=0, jitter=False),
        ToolRetryMiddleware(max_retries=2, initial_delay=0, jitter=False)])
    assert retrying.invoke({"messages": [HumanMessage("Oslo?")]}, _config())[
        "messages"][-1].content == "Oslo is lovely."
    events = cap.events()
    check_tree(events)
    errors = [(e.name, e.data["message"]) for e in events if e.kind == "error"]
    assert errors == [("gpt-4o-mini", "rate limited"), ("lookup", "backend flaked")]
    recoveries = [e.data["payload"] for e in events if e.name == "error_recovered"]
    assert [(r["message"], r["recovery_action"]) for r in recoveries] == [
        ("rate limited", "handled in model; the run continued"),
        ("backend flaked", "retried")]  # not "returned to the model": it never saw it
    failed_tool = next(e for e in events if e.kind == "tool_call" and e.phase == "end")
    assert next(e for e in events if e.name == "error_recovered"
                and e.data["payload"]["message"] == "backend flaked").span_id == failed_tool.span_id

    calls.update(model=1, tool=1)  # no more flakes: the primary model is down
    falling_back = create_agent(Down(model_name="gpt-4o"), [lookup], middleware=[
        ModelFallbackMiddleware(ScriptedChatModel(respond=flaky_model))])
    falling_back.invoke({"messages": [HumanMessage("Oslo?")]}, _config())
    events = cap.events()[len(events):]
    check_tree(events)
    failures = [e for e in events if e.kind == "error"]
    recovered = [e for e in events if e.name == "error_recovered"]
    assert len(failures) == len(recovered) == 2  # the primary was tried on each turn
    assert {e.data["payload"]["message"] for e in recovered} == {"primary down"}
    assert [e.span_id for e in failures] == [e.span_id for e in recovered]
