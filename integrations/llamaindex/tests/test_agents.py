"""Real LlamaIndex agents driven by scripted models, recorded into a real ledger."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from li_agents import (
    ADD,
    ScriptedCodeActLLM,
    TimesOutOnce,
    add,
    check_tree,
    code_act_agent,
    function_agent,
    kinds,
    one,
    react_agent,
)
from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent, ReActAgent
from llama_index.core.base.llms.types import ImageBlock, TextBlock, ToolCallBlock
from llama_index.core.llms import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CustomLLM,
    LLMMetadata,
    MockFunctionCallingLLM,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.tools import FunctionTool
from llama_index.core.tools.types import AsyncBaseTool, ToolMetadata, ToolOutput
from llama_index.core.workflow import (
    Context,
    HumanResponseEvent,
    InputRequiredEvent,
    StartEvent,
    StopEvent,
    Workflow,
    step,
)
from tracevault_llamaindex.instrument import Installed
from tracevault_llamaindex.testing import tool_then_answer
from workflows.errors import WorkflowCancelledByUser

import tracevault
from tracevault.snapshot import MAX_STRING, truncate_string
from tracevault.testing import Capture, capture_events

FUNCTION_AGENT_KINDS = [
    "agent", "input", "llm_call", "llm_call", "reasoning",
    "tool_call", "tool_call", "tool_call", "tool_call", "error",
    "llm_call", "llm_call", "output", "agent",
]


@pytest.mark.parametrize("streaming", [False, True])
async def test_function_agent_two_tools_one_failing(
    cap: Capture, instrumented: Installed, streaming: bool
) -> None:
    result = await function_agent(streaming).run(user_msg="What is 2 + 3?")
    assert str(result) == "The sum is 5."
    events = cap.events()
    assert [e.kind for e in events] == FUNCTION_AGENT_KINDS
    check_tree(events)

    run = events[0]
    assert (run.kind, run.phase, run.name, run.parent_span_id) == ("agent", "start", "Agent", None)
    assert {e.trace_id for e in events} == {run.span_id}
    assert all(e.framework == "llamaindex" for e in events)
    assert one(events, "input").data == {"type": "user_message", "content": "What is 2 + 3?"}

    first_start, first_end = events[2], events[3]
    assert first_start.span_id == first_end.span_id and first_start.parent_span_id == run.span_id
    assert first_start.data["messages"] == [{"role": "user", "content": "What is 2 + 3?"}]
    assert [t["name"] for t in first_start.data["tools"]] == ["add", "fail"]
    assert first_start.data["tools"][0]["parameters"]["required"] == ["a", "b"]
    assert first_end.data["tool_calls"] == [
        {"id": "call-0-add", "name": "add", "arguments": {"a": 2, "b": 3}},
        {"id": "call-1-fail", "name": "fail", "arguments": {"x": "y"}},
    ]
    assert first_end.data["status"] == "success"
    assert first_end.data.get("streamed", False) is streaming
    if streaming:
        assert first_end.data["time_to_first_token_ms"] >= 0
    assert one(events, "reasoning").data["thought"] == (
        "I will add the numbers and try the other tool.")

    add_start = one(events, "tool_call", "start", tool_name="add")
    add_end = one(events, "tool_call", "end", tool_name="add")
    assert add_start.data == {"tool_name": "add", "parameters": {"a": 2, "b": 3},
                              "status": "pending", "tool_call_id": "call-0-add"}
    assert add_end.span_id == add_start.span_id and add_end.parent_span_id == run.span_id
    assert (add_end.data["result"], add_end.data["status"], add_end.data["is_error"]) == (
        "5", "success", False)
    assert events.index(add_start) < events.index(add_end)
    assert add_end.data["duration_ms"] >= 0

    fail_start = one(events, "tool_call", "start", tool_name="fail")
    fail_end = one(events, "tool_call", "end", tool_name="fail")
    assert fail_start.data["parameters"] == {"x": "y"}
    assert fail_end.data["status"] == "error" and fail_end.data["is_error"] is True
    assert "cannot handle y" in fail_end.data["result"]
    error = one(events, "error")
    assert error.span_id == fail_start.span_id and error.parent_span_id == run.span_id
    assert error.data["type"] == "RuntimeError" and error.data["message"] == "cannot handle y"
    assert error.data["where"] == "fail"
    assert "returned to the agent" in error.data["recovery_action"]
    assert "Traceback" in error.data["stack_trace"]

    second = [e for e in events if e.kind == "llm_call"][2:]
    assert second[0].data["messages"][-1]["role"] == "tool"
    assert second[1].data["response"] == "The sum is 5."
    assert one(events, "output").data["content"] == "The sum is 5."
    assert events[-1].data["status"] == "success"


def _echo_agent() -> FunctionAgent:
    return FunctionAgent(tools=[ADD], llm=MockFunctionCallingLLM(
        response_generator=lambda messages, **kw: ChatMessage(role="assistant", content="ok")))


async def test_a_long_chat_history_keeps_its_latest_user_message(
    cap: Capture, instrumented: Installed
) -> None:
    history = [ChatMessage(role=role, content=f"old {role} #{i}")
               for i in range(150) for role in ("user", "assistant")]
    await _echo_agent().run(chat_history=[
        *history, ChatMessage(role="user", content="LATEST: transfer $5000")])
    events = cap.events()
    assert one(events, "input").data["content"] == "LATEST: transfer $5000"
    kept = events[0].data["inputs"]["chat_history"]  # the first and the last messages
    assert kept[0]["content"] == "old user #0" and kept[-1]["content"] == "LATEST: transfer $5000"
    assert "301 items in original" in kept[100]


async def test_a_run_given_only_its_chat_history_records_its_last_user_message(
    cap: Capture, instrumented: Installed
) -> None:
    picture = ImageBlock(url="https://example.com/cat.png")
    await _echo_agent().run(chat_history=[
        ChatMessage(role="user", content="earlier question"),
        ChatMessage(role="assistant", content="earlier answer"),
        ChatMessage(role="user", blocks=[TextBlock(text="what is this?"), picture]),
        ChatMessage(role="assistant", content="a trailing assistant turn"),
    ])
    events = cap.events()
    check_tree(events)
    assert kinds(events)[:2] == [("agent", "start"), ("input", "point")]
    assert events[1].data == {
        "type": "user_message", "content": "what is this?",
        "attachments": [{"type": "image", "url": "https://example.com/cat.png"}]}


async def test_a_user_message_with_attachments_keeps_them_in_its_input(
    cap: Capture, instrumented: Installed
) -> None:
    await _echo_agent().run(user_msg=ChatMessage(role="user", blocks=[
        TextBlock(text="describe this"), ImageBlock(url="https://example.com/cat.png"),
        ImageBlock(image=b"\x89PNG raw bytes"), TextBlock(text="and be brief")]))
    events = cap.events()
    check_tree(events)
    # The text as content; the images by where they live, never their bytes.
    assert one(events, "input").data == {
        "type": "user_message", "content": "describe this\nand be brief",
        "attachments": [{"type": "image", "url": "https://example.com/cat.png"},
                        {"type": "image"}]}


@pytest.mark.parametrize("streaming", [False, True])
async def test_react_agent(cap: Capture, instrumented: Installed, streaming: bool) -> None:
    result = await react_agent(streaming).run(user_msg="Add 2 and 3")
    assert str(result) == "It is 5."
    events = cap.events()
    assert [e.kind for e in events] == [
        "agent", "input", "llm_call", "llm_call", "reasoning", "tool_call", "tool_call",
        "llm_call", "llm_call", "reasoning", "output", "agent",
    ]
    check_tree(events)
    # CustomLLM nests chat -> complete (and astream_chat -> stream_chat -> stream_complete):
    # one record per actual call.
    calls = [e for e in events if e.kind == "llm_call"]
    assert len({e.span_id for e in calls}) == 2
    end = calls[1]
    assert end.data["model"] == "gpt-4o-mini"
    assert end.data["usage"] == {"input": 120, "output": 30, "total": 150}
    assert end.data["cost"] == pytest.approx((120 * 0.15 + 30 * 0.60) / 1e6)
    assert end.data["response"].startswith("Thought: I need to add 2 and 3.")
    if streaming:
        assert end.data["streamed"] is True and end.data["time_to_first_token_ms"] >= 0
    thoughts = [e.data for e in events if e.kind == "reasoning"]
    assert thoughts[0]["thought"] == "I need to add 2 and 3."
    assert thoughts[0]["action"] == "add" and thoughts[0]["action_input"] == {"a": 2, "b": 3}
    assert thoughts[1] == {"thought": "I can answer without using any more tools.",
                           "answer": "It is 5.", "source": "react"}
    tool_end = one(events, "tool_call", "end")
    assert tool_end.data["result"] == "5" and tool_end.data["status"] == "success"
    assert one(events, "tool_call", "start").data["parameters"] == {"a": 2, "b": 3}


@pytest.mark.parametrize("streaming", [False, True])
async def test_code_act_agent(cap: Capture, instrumented: Installed, streaming: bool) -> None:
    assert str(await code_act_agent(streaming).run(user_msg="Add 2 and 3")).strip() == (
        "The sum is 5.")
    events = cap.events()
    assert [(e.kind, e.phase) for e in events] == [
        ("agent", "start"), ("input", "point"), ("llm_call", "start"), ("llm_call", "end"),
        ("reasoning", "point"), ("tool_call", "start"), ("tool_call", "end"),
        ("llm_call", "start"), ("llm_call", "end"), ("output", "point"), ("agent", "end"),
    ]
    check_tree(events)
    run = events[0]
    assert run.name == "code_act_agent" and run.parent_span_id is None
    assert events[1].data["content"] == "Add 2 and 3"
    # The model writes its code in its text: the words before it are its reasoning.
    first_end = events[3]
    assert first_end.data["response"].startswith("I will add the two numbers with the tool.")
    assert "<execute>" in first_end.data["response"]
    thought = events[4]
    assert thought.data == {"thought": "I will add the two numbers with the tool.",
                            "source": "text before tool calls"}
    assert thought.parent_span_id == first_end.parent_span_id == run.span_id
    # ... and the code it asked for runs as the agent's "execute" tool.
    start, end = events[5], events[6]
    assert start.name == "execute" and start.parent_span_id == run.span_id
    assert start.data["parameters"] == {"code": "print(add(2, 3))"}
    assert (end.data["result"], end.data["is_error"], end.data["status"]) == (
        "5", False, "success")
    assert end.data["tool_call_id"] == start.data["tool_call_id"]
    assert len({e.span_id for e in events if e.kind == "llm_call"}) == 2
    if streaming:
        assert all(e.data["streamed"] for e in events if e.kind == "llm_call" and e.phase == "end")
    assert events[-2].data["content"].strip() == "The sum is 5."


async def test_a_code_act_agent_in_an_agent_workflow_keeps_its_reasoning(
    cap: Capture, instrumented: Installed
) -> None:
    agent = code_act_agent()
    workflow = AgentWorkflow(agents=[agent], root_agent=agent.name)
    assert str(await workflow.run(user_msg="Add 2 and 3")).strip() == "The sum is 5."
    events = cap.events()
    check_tree(events)
    turn = next(e for e in events
                if (e.kind, e.phase, e.name) == ("agent", "start", "code_act_agent"))
    thought = one(events, "reasoning")
    assert thought.data["thought"] == "I will add the two numbers with the tool."
    assert thought.parent_span_id == turn.span_id
    assert one(events, "tool_call", "start").data["parameters"] == {"code": "print(add(2, 3))"}


class _AnswersWithoutThought(CustomLLM):
    """A ReAct model that ignores the format: its whole reply is the answer."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="gpt-4o-mini", is_chat_model=False)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text="It is 5.")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        yield CompletionResponse(text="It is 5.", delta="It is 5.")


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_react_thought_the_parser_made_up_is_marked_as_implicit(
    cap: Capture, instrumented: Installed, streaming: bool
) -> None:
    agent = ReActAgent(tools=[ADD], llm=_AnswersWithoutThought(), streaming=streaming)
    assert str(await agent.run(user_msg="Add 2 and 3")) == "It is 5."
    events = cap.events()
    check_tree(events)
    # LlamaIndex's words, not the model's: said so, and kept apart from the model's.
    thought = one(events, "reasoning").data
    assert thought["implicit"] is True and thought["source"] == "react_parser"
    assert thought["thought"].startswith("(Implicit)") and thought["answer"] == "It is 5."


def _tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> ChatMessage:
    return ChatMessage(role="assistant", blocks=[ToolCallBlock(
        tool_call_id=call_id, tool_name=name, tool_kwargs=arguments)])


async def test_agent_workflow_hand_off(cap: Capture, instrumented: Installed) -> None:
    def lookup(city: str) -> str:
        """Look up the weather of a city."""
        return f"sunny in {city}"

    router = FunctionAgent(
        name="router", description="Routes requests.", streaming=False,
        llm=MockFunctionCallingLLM(response_generator=tool_then_answer(
            [("handoff", {"to_agent": "weather", "reason": "needs the weather"})], "unused")),
        can_handoff_to=["weather"])

    def weather_reply(messages: Any, **kwargs: Any) -> Any:
        # After the hand-off: look the weather up once, then answer.
        done = any(m.role == "tool" and "sunny" in (m.content or "") for m in messages)
        if done:
            return ChatMessage(role="assistant", content="It is sunny in Paris.")
        return _tool_call("w1", "lookup", {"city": "Paris"})

    weather = FunctionAgent(
        name="weather", description="Knows the weather.", streaming=False,
        llm=MockFunctionCallingLLM(response_generator=weather_reply),
        tools=[FunctionTool.from_defaults(lookup)])
    workflow = AgentWorkflow(agents=[router, weather], root_agent="router")
    result = await workflow.run(user_msg="Weather in Paris?")
    assert "sunny in Paris" in str(result)

    events = cap.events()
    check_tree(events)
    run = events[0]
    assert (run.kind, run.name) == ("agent", "AgentWorkflow")
    turns = [e for e in events if e.kind == "agent" and e.phase == "start" and e is not run]
    assert [t.name for t in turns] == ["router", "weather"]
    assert all(t.parent_span_id == run.span_id for t in turns)
    router_turn, weather_turn = (t.span_id for t in turns)
    handoff = one(events, "tool_call", "start", tool_name="handoff")
    assert handoff.parent_span_id == router_turn
    assert handoff.data["parameters"] == {"to_agent": "weather", "reason": "needs the weather"}
    lookup_end = one(events, "tool_call", "end", tool_name="lookup")
    assert lookup_end.parent_span_id == weather_turn
    assert lookup_end.data["result"] == "sunny in Paris"
    llm_parents = [e.parent_span_id for e in events if e.kind == "llm_call" and e.phase == "start"]
    assert llm_parents[0] == router_turn and set(llm_parents[1:]) == {weather_turn}
    # the router's turn ends before the weather agent's starts
    names = [(e.kind, e.phase, e.name) for e in events if e.kind == "agent"]
    assert names == [("agent", "start", "AgentWorkflow"), ("agent", "start", "router"),
                     ("agent", "end", "router"), ("agent", "start", "weather"),
                     ("agent", "end", "weather"), ("agent", "end", "AgentWorkflow")]
    output = one(events, "output")
    assert output.data["agent"] == "weather" and output.parent_span_id == run.span_id


async def test_agent_workflow_with_three_agents_and_two_hand_offs(
    cap: Capture, instrumented: Installed
) -> None:
    def lookup(city: str) -> str:
        """Look up the weather of a city."""
        return f"sunny in {city}"

    def weather_reply(messages: Any, **kwargs: Any) -> Any:
        if any(m.role == "tool" and "sunny" in (m.content or "") for m in messages):
            return _tool_call("w2", "handoff", {"to_agent": "writer", "reason": "write it up"})
        return _tool_call("w1", "lookup", {"city": "Paris"})

    router = FunctionAgent(
        name="router", description="Routes requests.", streaming=False,
        llm=MockFunctionCallingLLM(response_generator=lambda messages, **kw: _tool_call(
            "r1", "handoff", {"to_agent": "weather", "reason": "needs the weather"})),
        can_handoff_to=["weather"])
    weather = FunctionAgent(
        name="weather", description="Knows the weather.", streaming=False,
        llm=MockFunctionCallingLLM(response_generator=weather_reply),
        tools=[FunctionTool.from_defaults(lookup)], can_handoff_to=["writer"])
    writer = FunctionAgent(
        name="writer", description="Writes answers.", streaming=False,
        llm=MockFunctionCallingLLM(response_generator=lambda messages, **kw: ChatMessage(
            role="assistant", content="It is sunny in Paris.")))
    workflow = AgentWorkflow(agents=[router, weather, writer], root_agent="router")
    assert str(await workflow.run(user_msg="Weather in Paris?")) == "It is sunny in Paris."

    events = cap.events()
    check_tree(events)
    assert [(e.kind, e.phase, e.name) for e in events if e.kind != "llm_call"] == [
        ("agent", "start", "AgentWorkflow"), ("input", "point", "user_message"),
        ("agent", "start", "router"),
        ("tool_call", "start", "handoff"), ("tool_call", "end", "handoff"),
        ("agent", "end", "router"),
        ("agent", "start", "weather"),
        ("tool_call", "start", "lookup"), ("tool_call", "end", "lookup"),
        ("tool_call", "start", "handoff"), ("tool_call", "end", "handoff"),
        ("agent", "end", "weather"),
        ("agent", "start", "writer"), ("agent", "end", "writer"),
        ("output", "point", "final_answer"), ("agent", "end", "AgentWorkflow"),
    ]
    run = events[0]
    turns = {e.name: e.span_id for e in events
             if e.kind == "agent" and e.phase == "start" and e is not run}
    assert all(e.parent_span_id == run.span_id for e in events
               if e.kind == "agent" and e.span_id in turns.values())
    # Each model call and tool call hangs under the turn of the agent that made it.
    calls_by_turn = [(e.kind, e.phase, e.parent_span_id) for e in events
                     if e.kind in ("llm_call", "tool_call") and e.phase == "start"]
    assert calls_by_turn == [
        ("llm_call", "start", turns["router"]), ("tool_call", "start", turns["router"]),
        ("llm_call", "start", turns["weather"]), ("tool_call", "start", turns["weather"]),
        ("llm_call", "start", turns["weather"]), ("tool_call", "start", turns["weather"]),
        ("llm_call", "start", turns["writer"]),
    ]
    handoffs = [e for e in events if e.kind == "tool_call" and e.name == "handoff"]
    assert [e.data["parameters"] for e in handoffs if e.phase == "start"] == [
        {"to_agent": "weather", "reason": "needs the weather"},
        {"to_agent": "writer", "reason": "write it up"}]
    ends = [e.data for e in handoffs if e.phase == "end"]
    assert [d["status"] for d in ends] == ["success", "success"]
    assert ends[0]["result"].startswith("Agent weather is now handling the request")
    assert ends[1]["result"].startswith("Agent writer is now handling the request")
    assert [d["tool_call_id"] for d in ends] == ["r1", "w2"]
    lookup_end = one(events, "tool_call", "end", tool_name="lookup")
    assert (lookup_end.data["result"], lookup_end.data["tool_call_id"]) == ("sunny in Paris", "w1")
    output = one(events, "output")
    assert output.data["agent"] == "writer" and output.data["content"] == "It is sunny in Paris."


async def test_a_failed_agent_turn_ends_at_the_level_of_its_status(
    cap: Capture, instrumented: Installed
) -> None:
    def down(messages: Any, **kwargs: Any) -> Any:
        raise ConnectionError("provider down")

    broken = FunctionAgent(name="broken", description="Fails.", streaming=False,
                           llm=MockFunctionCallingLLM(response_generator=down))
    with pytest.raises(Exception, match="down"):
        await AgentWorkflow(agents=[broken], root_agent="broken").run(user_msg="hi")
    ends = [e for e in cap.events() if e.kind == "agent" and e.phase == "end"]
    assert [(e.name, e.data["status"], e.level) for e in ends] == [
        ("broken", "error", "error"), ("AgentWorkflow", "error", "error")]


async def test_a_tool_with_one_parameter_named_input_records_it_by_name(
    cap: Capture, instrumented: Installed
) -> None:
    def shout(input: str) -> str:
        """Upper-case the input."""
        return input.upper()

    agent = FunctionAgent(tools=[FunctionTool.from_defaults(shout)], streaming=False,
                          llm=MockFunctionCallingLLM(response_generator=tool_then_answer(
                              [("shout", {"input": "abc"})], "ABC")))
    await agent.run(user_msg="shout abc")
    start = one(cap.events(), "tool_call", "start")
    assert start.data["parameters"] == {"input": "abc"}


async def test_two_tool_calls_failing_with_one_exception_object_are_two_errors(
    cap: Capture, instrumented: Installed
) -> None:
    failed_request: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    failed_request.set_exception(ConnectionError("upstream down"))

    async def fetch(url: str) -> str:
        """Fetch a page (both calls await the one request in flight)."""
        return await failed_request

    agent = FunctionAgent(tools=[FunctionTool.from_defaults(fetch)], streaming=False,
                          llm=MockFunctionCallingLLM(response_generator=tool_then_answer(
                              [("fetch", {"url": "x"}), ("fetch", {"url": "x"})], "down")))
    await agent.run(user_msg="fetch twice")
    events = cap.events()
    check_tree(events)
    failed = [e.span_id for e in events if e.kind == "tool_call" and e.phase == "end"]
    errors = [e for e in events if e.kind == "error"]
    assert sorted(e.span_id for e in errors) == sorted(failed) and len(set(failed)) == 2
    assert all(e.data["message"] == "upstream down" for e in errors)


async def test_200_concurrent_runs_on_one_loop(cap: Capture, instrumented: Installed) -> None:
    llm = MockFunctionCallingLLM(response_generator=tool_then_answer(
        lambda user: [("add", {"a": int(user.split()[1]), "b": 1})],
        lambda user: f"done {user.split()[1]}"))
    agent = FunctionAgent(tools=[ADD], llm=llm, streaming=False)

    async def one_run(i: int) -> str:
        with tracevault.context(session_id=f"session-{i}", user_id=f"user-{i % 7}"):
            return str(await agent.run(user_msg=f"add {i} and 1"))

    results = await asyncio.gather(*(one_run(i) for i in range(200)))
    assert results == [f"done {i}" for i in range(200)]

    events = cap.events()
    check_tree(events)
    by_trace: dict[str | None, list[Any]] = {}
    for event in events:
        by_trace.setdefault(event.trace_id, []).append(event)
    assert len(by_trace) == 200
    seen_sessions = set()
    for trace in by_trace.values():
        assert [e.kind for e in trace] == [
            "agent", "input", "llm_call", "llm_call", "tool_call", "tool_call",
            "llm_call", "llm_call", "output", "agent"]
        i = int(trace[1].data["content"].split()[1])
        assert {e.session_id for e in trace} == {f"session-{i}"}
        assert {e.user_id for e in trace} == {f"user-{i % 7}"}
        start = next(e for e in trace if e.kind == "tool_call" and e.phase == "start")
        end = next(e for e in trace if e.kind == "tool_call" and e.phase == "end")
        assert start.data["parameters"] == {"a": i, "b": 1}
        assert end.data["result"] == str(add(i, 1))
        assert trace[-2].data["content"] == f"done {i}"
        seen_sessions.add(trace[0].session_id)
    assert len(seen_sessions) == 200
    assert len(events) == 2000


async def test_slow_tool_yields_a_warning(tmp_path: Path, instrumented: Installed) -> None:
    with capture_events(tmp_path, slow_tool_ms=0.0) as slow:
        await function_agent().run(user_msg="What is 2 + 3?")
        events = slow.events()
    warnings = [e for e in events if e.level == "warning" and e.name == "slow_tool_call"]
    ends = {e.span_id: e for e in events if e.kind == "tool_call" and e.phase == "end"}
    assert sorted(w.data["payload"]["tool_name"] for w in warnings) == ["add", "fail"]
    for w in warnings:
        assert w.kind == "custom" and w.data["payload"]["threshold_ms"] == 0.0
        assert w.data["payload"]["duration_ms"] == ends[w.span_id].data["duration_ms"]


async def test_payloads_are_copied_when_captured_and_keep_what_json_cannot_hold(
    cap: Capture, instrumented: Installed
) -> None:
    # The handlers queue the copies payloads.py makes, with no second copy on the way:
    # a tool that changes its arguments afterwards, and numbers JSON has no form for,
    # must still be recorded as they were when the tool started.
    def collect(values: list[float], scale: float) -> int:
        """Collect values."""
        values.append(99.0)
        return len(values)

    llm = MockFunctionCallingLLM(response_generator=tool_then_answer(
        [("collect", {"values": [1.5], "scale": float("nan")})], "done"))
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(collect)], llm=llm)
    await agent.run(user_msg="collect")
    start, end = (e for e in cap.events() if e.kind == "tool_call")
    assert start.data["parameters"] == {"values": [1.5], "scale": "NaN"}
    assert end.data["result"] == "2"


async def test_a_tool_that_runs_an_agent_with_a_tool_of_its_own_name_records_both(
    cap: Capture, instrumented: Installed
) -> None:
    def web_search(q: str) -> str:
        return f"results for {q}"

    inner = FunctionAgent(
        name="researcher", streaming=False,
        tools=[FunctionTool.from_defaults(web_search, name="search", description="web")],
        llm=MockFunctionCallingLLM(response_generator=tool_then_answer(
            [("search", {"q": "paris weather"})], "sunny")))

    async def delegate(q: str) -> str:
        return str(await inner.run(user_msg=q))

    outer = FunctionAgent(
        name="boss", streaming=False,
        tools=[FunctionTool.from_defaults(async_fn=delegate, name="search",
                                          description="delegated search")],
        llm=MockFunctionCallingLLM(response_generator=tool_then_answer(
            [("search", {"q": "weather in paris"})], "it is sunny")))
    assert str(await outer.run(user_msg="weather?")) == "it is sunny"
    events = cap.events()
    check_tree(events)
    starts = [e for e in events if e.kind == "tool_call" and e.phase == "start"]
    assert [(e.name, e.data["parameters"]) for e in starts] == [
        ("search", {"q": "weather in paris"}), ("search", {"q": "paris weather"})]
    ends = {e.span_id: e for e in events if e.kind == "tool_call" and e.phase == "end"}
    assert ends[starts[0].span_id].data["result"] == "sunny"
    assert ends[starts[1].span_id].data["result"] == "results for paris weather"
    inner_run = next(e for e in events if e.kind == "agent" and e.name == "researcher")
    assert inner_run.phase == "start" and inner_run.parent_span_id == starts[0].span_id
    assert {e.trace_id for e in events} == {events[0].span_id}


async def test_tool_arguments_by_keyword_whatever_the_name_of_its_kwargs(
    cap: Capture, instrumented: Installed
) -> None:
    class Lookup(AsyncBaseTool):
        @property
        def metadata(self) -> ToolMetadata:
            return ToolMetadata(name="lookup", description="Look a key up.")

        def call(self, input: Any = None, **options: Any) -> ToolOutput:
            return ToolOutput(content=f"found {options}", tool_name="lookup",
                              raw_input=options, raw_output=None)

        async def acall(self, input: Any = None, **options: Any) -> ToolOutput:
            return self.call(input, **options)

    agent = FunctionAgent(tools=[Lookup()], streaming=False, llm=MockFunctionCallingLLM(
        response_generator=tool_then_answer([("lookup", {"key": "k", "n": 2})], "done")))
    await agent.run(user_msg="look k up")
    start = one(cap.events(), "tool_call", "start")
    assert start.data["parameters"] == {"key": "k", "n": 2}


async def test_a_huge_tool_argument_is_cut_like_any_captured_string(
    cap: Capture, instrumented: Installed
) -> None:
    big = "z" * (MAX_STRING + 1000)

    def keep(blob: str) -> int:
        """Keep a blob."""
        return len(blob)

    agent = FunctionAgent(tools=[FunctionTool.from_defaults(keep)], streaming=False,
                          llm=MockFunctionCallingLLM(response_generator=tool_then_answer(
                              [("keep", {"blob": big})], "kept")))
    await agent.run(user_msg="keep it")
    events = cap.events()
    cut = truncate_string(big)
    assert len(cut) < len(big) and cut.startswith("z" * 1000)
    assert one(events, "tool_call", "start").data["parameters"] == {"blob": cut}
    call_end = next(e for e in events if e.kind == "llm_call" and e.data.get("tool_calls"))
    assert call_end.data["tool_calls"][0]["arguments"] == {"blob": cut}
    assert one(events, "tool_call", "end").data["result"] == str(MAX_STRING + 1000)


async def test_a_code_act_thought_longer_than_a_captured_string_is_kept_and_cut(
    cap: Capture, instrumented: Installed
) -> None:
    agent = code_act_agent()
    thought = "w" * (MAX_STRING + 1000)
    assert isinstance(agent.llm, ScriptedCodeActLLM)
    agent.llm.thought = thought  # the code comes after the length strings are cut to
    assert str(await agent.run(user_msg="Add 2 and 3")).strip() == "The sum is 5."
    cut = truncate_string(thought)
    assert len(cut) < len(thought)
    assert one(cap.events(), "reasoning").data == {"thought": cut,
                                                   "source": "text before tool calls"}


class _Recovers(Workflow):
    @step
    async def go(self, ev: StartEvent) -> StopEvent:
        llm = TimesOutOnce()
        with contextlib.suppress(TimeoutError):  # the step handles it: no tool involved
            await llm.acomplete("a")
        return StopEvent(result=(await llm.acomplete("b")).text)


async def test_an_error_a_workflow_step_handles_is_recorded_before_the_run_ends(
    cap: Capture, instrumented: Installed
) -> None:
    assert await _Recovers(timeout=10).run() == "ok b"
    events = cap.events()
    check_tree(events)
    assert [(e.kind, e.phase) for e in events] == [
        ("agent", "start"), ("llm_call", "start"), ("llm_call", "end"),
        ("llm_call", "start"), ("llm_call", "end"), ("error", "point"),
        ("output", "point"), ("agent", "end"),
    ]
    error = events[5]
    assert error.level == "warning" and error.data["type"] == "TimeoutError"
    assert error.data["recovery_action"] == "handled in go; the run continued"
    assert events[-1].data["status"] == "success"


@pytest.mark.parametrize("how", ["cancel", "cancel_run"])
@pytest.mark.filterwarnings("ignore:WorkflowHandler.cancel:DeprecationWarning")  # still used
async def test_a_cancelled_run_is_cancelled_not_failed_nor_answered(
    cap: Capture, instrumented: Installed, how: str
) -> None:
    started = asyncio.Event()

    async def wait_for_ever(n: int) -> str:
        """Wait until cancelled."""
        started.set()
        await asyncio.wait_for(asyncio.Event().wait(), timeout=60)  # bounded all the same
        return "never"

    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(async_fn=wait_for_ever)], streaming=False,
        llm=MockFunctionCallingLLM(response_generator=tool_then_answer(
            [("wait_for_ever", {"n": 1})], "unused")))
    handler = agent.run(user_msg="go")
    await asyncio.wait_for(started.wait(), timeout=60)
    if how == "cancel":
        handler.cancel()  # the run's task
    else:
        await handler.cancel_run()  # the workflow's own way: it ends the run with no result
    with pytest.raises((asyncio.CancelledError, WorkflowCancelledByUser)):
        await handler
    events = cap.events()
    check_tree(events)
    assert [(e.kind, e.phase) for e in events] == [
        ("agent", "start"), ("input", "point"), ("llm_call", "start"), ("llm_call", "end"),
        ("tool_call", "start"), ("tool_call", "end"), ("agent", "end"),
    ]
    tool_end, run_end = events[5], events[6]
    assert tool_end.data["status"] == "cancelled" and tool_end.data["is_error"] is False
    assert tool_end.level == "warning"
    assert run_end.data["status"] == "cancelled" and run_end.level == "warning"


class _AsksFirst(Workflow):
    @step
    async def ask(self, ev: StartEvent) -> InputRequiredEvent:
        return InputRequiredEvent(prefix="approve?")

    @step
    async def done(self, ev: HumanResponseEvent) -> StopEvent:
        return StopEvent(result=f"got {ev.response}")


async def test_a_run_cancelled_while_no_step_runs_is_cancelled_not_answered(
    cap: Capture, instrumented: Installed
) -> None:
    handler = _AsksFirst(timeout=60).run()
    async for event in handler.stream_events():
        if isinstance(event, InputRequiredEvent):
            break  # waiting for a person: no step runs when the run is cancelled
    await handler.cancel_run()
    with pytest.raises(WorkflowCancelledByUser):
        await handler
    events = cap.events()
    check_tree(events)
    assert [(e.kind, e.phase) for e in events] == [("agent", "start"), ("agent", "end")]
    assert events[1].data["status"] == "cancelled" and events[1].level == "warning"


@pytest.mark.filterwarnings("ignore:WorkflowHandler.cancel:DeprecationWarning")
async def test_a_run_cancelled_while_its_model_streams_is_cancelled_not_answered(
    cap: Capture, instrumented: Installed
) -> None:
    streaming = asyncio.Event()

    class Endless(MockFunctionCallingLLM):
        @llm_chat_callback()
        async def astream_chat(self, messages: Any, **kwargs: Any) -> Any:
            async def words() -> Any:
                for i in range(10_000):  # bounded, though cancelled long before
                    streaming.set()
                    yield ChatResponse(message=ChatMessage(role="assistant", content=f"w{i}"),
                                       delta=f"w{i} ")
                    await asyncio.sleep(0)
            return words()

    handler = FunctionAgent(tools=[], llm=Endless()).run(user_msg="talk")
    await asyncio.wait_for(streaming.wait(), timeout=60)
    await handler.cancel_run()
    with pytest.raises((asyncio.CancelledError, WorkflowCancelledByUser)):
        await handler
    events = cap.events()
    check_tree(events)
    assert not [e for e in events if e.kind in ("output", "error")]
    call_end, run_end = [e for e in events if e.phase == "end"]
    assert call_end.data["status"] == "cancelled" and call_end.data["response"]
    assert run_end.data["status"] == "cancelled" and run_end.level == "warning"


async def test_a_tool_waiting_for_a_human_is_interrupted_then_called_again(
    cap: Capture, instrumented: Installed
) -> None:
    async def confirm(ctx: Context, action: str) -> str:
        """Ask a human."""
        answer = await ctx.wait_for_event(
            HumanResponseEvent, waiter_id="confirm",
            waiter_event=InputRequiredEvent(prefix=f"ok to {action}?"))
        return f"human said {answer.response}"

    # LlamaIndex finds the Context parameter by its annotation object, and this module's
    # annotations are strings (from __future__ import annotations).
    confirm.__annotations__["ctx"] = Context
    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(async_fn=confirm)], streaming=False,
        llm=MockFunctionCallingLLM(response_generator=tool_then_answer(
            [("confirm", {"action": "delete"})], "deleted")))
    handler = agent.run(user_msg="delete it")
    async for event in handler.stream_events():
        if isinstance(event, InputRequiredEvent):
            handler.ctx.send_event(HumanResponseEvent(response="yes"))
    assert str(await handler) == "deleted"
    events = cap.events()
    check_tree(events)
    assert "error" not in [e.kind for e in events], [e.data for e in events if e.kind == "error"]
    ends = [e for e in events if e.kind == "tool_call" and e.phase == "end"]
    # The workflow runs the tool again once the answer arrives: two calls, one per run.
    assert [(e.data["status"], e.level, e.data["tool_call_id"]) for e in ends] == [
        ("interrupted", "info", "call-0-confirm"), ("success", "info", "call-0-confirm")]
    assert ends[1].data["result"] == "human said yes"
    assert events[-1].data["status"] == "success"


async def _wait_for_ever(n: int) -> str:
    """Wait until cancelled."""
    await asyncio.wait_for(asyncio.Event().wait(), timeout=60)  # bounded all the same
    return "never"


async def test_at_level_trace_a_step_stopped_without_failing_says_how(
    tmp_path: Path, instrumented: Installed
) -> None:
    # The workflow catches a step's cancellation, or its wait for a human, inside the
    # step: its span ends as if it had returned, yet the step did not succeed.
    async def confirm(ctx: Context, action: str) -> str:
        """Ask a human."""
        answer = await ctx.wait_for_event(
            HumanResponseEvent, waiter_id="confirm",
            waiter_event=InputRequiredEvent(prefix=f"ok to {action}?"))
        return f"human said {answer.response}"

    confirm.__annotations__["ctx"] = Context  # (see the test of a tool waiting for a human)
    with capture_events(tmp_path, level="trace") as cap:
        waiting = FunctionAgent(
            tools=[FunctionTool.from_defaults(async_fn=confirm)], streaming=False,
            llm=MockFunctionCallingLLM(response_generator=tool_then_answer(
                [("confirm", {"action": "delete"})], "deleted")))
        handler = waiting.run(user_msg="delete it")
        async for event in handler.stream_events():
            if isinstance(event, InputRequiredEvent):
                handler.ctx.send_event(HumanResponseEvent(response="yes"))
        assert str(await handler) == "deleted"
        stuck = FunctionAgent(
            tools=[FunctionTool.from_defaults(async_fn=_wait_for_ever)], streaming=False,
            llm=MockFunctionCallingLLM(response_generator=tool_then_answer(
                [("_wait_for_ever", {"n": 1})], "unused")), timeout=0.5)
        with pytest.raises(Exception, match="timed out"):
            await stuck.run(user_msg="go")
        events = cap.events()
    check_tree(events)
    calls = [(e.trace_id, e.data["status"]) for e in events
             if e.kind == "chain" and e.phase == "end" and e.name == "call_tool"]
    first, second = (e.trace_id for e in events if e.kind == "agent" and e.phase == "start")
    assert [status for trace, status in calls if trace == first] == ["interrupted", "success"]
    assert [status for trace, status in calls if trace == second] == ["cancelled"]
