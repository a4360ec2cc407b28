"""What the agent's thread hands the ledger writer (tracevault.capture.later): copies
taken when each callback came, its time, its context, and an error's stack as it was."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from langgraph.graph import END, START, StateGraph
from lc_agents import lc_agent
from pydantic import BaseModel
from tracevault_langchain import TracevaultCallbackHandler
from tracevault_langchain.testing import ScriptedChatModel, ai, tool_call

import tracevault
from tracevault import capture
from tracevault.context import current_span
from tracevault.store import open_store
from tracevault.testing import Capture, capture_events


class _HeldStore:
    """A real SQLite ledger whose writer is held in its first append until released,
    so every callback after that is handled by the writer well after it came."""

    def __init__(self, url: str) -> None:
        self.store = open_store(url)
        self.url = url
        self.entered = threading.Event()
        self.release = threading.Event()

    def append(self, events: Sequence[Any]) -> int:
        self.entered.set()
        self.release.wait(30)
        return int(self.store.append(events))

    def close(self) -> None:
        self.store.close()


@pytest.fixture()
def held(tmp_path: Path) -> Iterator[tuple[_HeldStore, Capture]]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = _HeldStore(url)
    reader = open_store(url)
    try:
        cap = Capture(tracevault.configure(store=store), reader)
        capture.emit("custom", data={"name": "first"})  # the writer takes it and waits
        assert store.entered.wait(30)
        yield store, cap
    finally:
        store.release.set()
        tracevault.shutdown()
        store.close()
        reader.close()


def _agent(seen: list[float]) -> Any:
    @tool
    def lookup(city: str, tags: list[str]) -> list[str]:
        """Look a city up."""
        seen.append(time.time())
        return tags

    model = ScriptedChatModel(messages=iter([
        ai("", tool_calls=[tool_call("lookup", {"city": "Paris", "tags": ["a"]}, "c1")]),
        ai("done"),
    ]))
    return lc_agent(model, [lookup])


def test_events_carry_the_time_their_callback_came_not_when_the_writer_ran(
    held: tuple[_HeldStore, Capture]
) -> None:
    store, cap = held
    inside: list[float] = []
    _agent(inside).invoke({"messages": [HumanMessage("hi")]},
                              {"callbacks": [TracevaultCallbackHandler()]})
    after_run = time.time()
    store.release.set()
    start, end = [e for e in cap.events() if e.kind == "tool_call"]
    assert start.timestamp.timestamp() <= inside[0] <= end.timestamp.timestamp() <= after_run


def test_what_changes_after_a_callback_is_recorded_as_it_was(
    held: tuple[_HeldStore, Capture]
) -> None:
    store, cap = held
    messages = [HumanMessage([{"type": "text", "text": "what is on in Paris?"}])]
    result = _agent([]).invoke({"messages": messages},
                                   {"callbacks": [TracevaultCallbackHandler()]})
    # The caller goes on changing what it passed and got back before the writer runs.
    messages[0].content[0]["text"] = "something else"  # type: ignore[index]
    result["messages"][-1].content = "changed afterwards"
    store.release.set()
    events = cap.events()
    assert next(e for e in events if e.kind == "input").data["content"] == [
        {"type": "text", "text": "what is on in Paris?"}]
    assert next(e for e in events if e.kind == "output").data["content"] == "done"
    start = next(e for e in events if e.kind == "tool_call" and e.phase == "start")
    assert start.data["parameters"] == {"city": "Paris", "tags": ["a"]}


def test_an_error_is_recorded_with_the_stack_it_had_when_its_run_failed(cap: Capture) -> None:
    handler = TracevaultCallbackHandler()
    run = uuid.uuid4()
    handler.on_tool_start({"name": "t"}, "x", run_id=run)

    def failing_tool_body() -> None:
        raise ValueError("boom")

    def tool_runner() -> None:
        try:
            failing_tool_body()
        except ValueError as exc:
            handler.on_tool_error(exc, run_id=run)
            raise  # it goes on up: its traceback grows by the frames it passes

    with pytest.raises(ValueError):
        tool_runner()
    error = next(e for e in cap.events() if e.kind == "error")
    stack = error.data["stack_trace"]
    assert "failing_tool_body" in stack and "tool_runner" in stack
    assert "test_an_error_is_recorded_with_the_stack" not in stack


class _S(TypedDict):
    x: int


def test_an_exception_changed_after_its_run_failed_is_recorded_as_it_was(cap: Capture) -> None:
    # LangGraph adds a note to the exception after the node's error callback, and the
    # caller may change it after the run; the writer describes it later.
    def node(_state: _S) -> _S:
        raise ValueError("node failed")

    graph = StateGraph(_S)
    graph.add_node("n", node)
    graph.add_edge(START, "n")
    graph.add_edge("n", END)
    with pytest.raises(ValueError) as caught:
        graph.compile().invoke({"x": 1}, {"callbacks": [TracevaultCallbackHandler()]})
    caught.value.args = ("changed by the caller after the run",)
    events = cap.events()
    error = next(e for e in events if e.kind == "error")
    assert error.data["message"] == "node failed"
    assert "During task with name" not in error.data["stack_trace"]
    ends = [e.data["error"] for e in events if e.phase == "end"]
    assert ends and all(end == {"type": "ValueError", "message": "node failed"} for end in ends)


def test_two_handlers_on_one_tool_leave_no_span_current(cap: Capture) -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    handlers = [TracevaultCallbackHandler(), TracevaultCallbackHandler()]
    assert add.invoke({"a": 1, "b": 2}, {"callbacks": handlers}) == 3
    assert current_span() is None  # nothing captured afterwards hangs under the tool
    assert [(e.kind, e.phase) for e in cap.events()] == [
        ("tool_call", "start"), ("input", "point"), ("tool_call", "end"), ("output", "point")]


def test_a_run_is_filtered_by_the_level_it_was_captured_under(tmp_path: Path) -> None:
    # The writer handles the callbacks after the caller has moved on: reconfiguring
    # right after the run must not apply the new level to it.
    first = f"sqlite:///{tmp_path / 'first.db'}"
    tracevault.configure(store=first, level="debug")
    _agent([]).invoke({"messages": [HumanMessage("hi")]},
                      {"callbacks": [TracevaultCallbackHandler()]})
    tracevault.configure(store=f"sqlite:///{tmp_path / 'second.db'}", level="warning")
    tracevault.shutdown()
    store = open_store(first)
    try:
        kinds = [(s.event.kind, s.event.phase) for s in store.events()]
    finally:
        store.close()
    assert kinds[:2] == [("agent", "start"), ("input", "point")]
    assert ("tool_call", "end") in kinds and kinds[-1] == ("agent", "end")


class _Verdict(BaseModel):
    result: str
    confidence: float


def test_a_tool_run_alone_answers_with_what_it_returned(cap: Capture) -> None:
    @tool
    def judge(case: str) -> _Verdict:
        """Judge a case."""
        return _Verdict(result="approve", confidence=0.9)

    @tool
    def say(text: str) -> AIMessage:
        """Say something."""
        return AIMessage(f"said {text}")

    judge.invoke({"case": "a"}, {"callbacks": [TracevaultCallbackHandler()]})
    say.invoke({"text": "b"}, {"callbacks": [TracevaultCallbackHandler()]})
    answers = [e.data["content"] for e in cap.events() if e.kind == "output"]
    assert answers == [{"result": "approve", "confidence": 0.9}, "said b"]


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_run_in_a_process_forked_inside_a_tool_hangs_under_the_tool(
    tmp_path: Path, writer: str
) -> None:
    # When the tool forks, its start may still wait in the parent's queue: the child's
    # writer learns of it first, so what runs in the child hangs under the tool. A
    # writer process has interpreted the tool's start where the child cannot see it: the
    # run hangs under the tool, in its trace, as the top of what the child records.
    sub = RunnableLambda(lambda x: x * 2, name="sub_in_child")

    @tool
    def forker(x: int) -> int:
        """Fork a worker."""
        pid = os.fork()
        if pid == 0:
            try:
                sub.invoke(x)  # the tool's callbacks and parent run come with the context
                tracevault.flush(30)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        return x

    with capture_events(tmp_path, writer=writer) as cap:
        forker.invoke({"x": 3}, {"callbacks": [TracevaultCallbackHandler()]})
        events = cap.events()
    tool_start = next(e for e in events if e.kind == "tool_call" and e.phase == "start")
    sub_start = next(e for e in events if e.name == "sub_in_child" and e.phase == "start")
    assert sub_start.kind == ("chain" if writer == "thread" else "agent")
    assert (sub_start.trace_id, sub_start.parent_span_id) == (tool_start.trace_id,
                                                              tool_start.span_id)


def test_metadata_changed_after_a_start_is_recorded_as_it_was(
    held: tuple[_HeldStore, Capture]
) -> None:
    store, cap = held
    handler = TracevaultCallbackHandler()
    info = {"step": 1}
    config_metadata = {"session_id": "s1"}
    run = uuid.uuid4()
    with tracevault.context(user_id="ana", info=info):
        handler.on_chain_start({"name": "agent"}, {"input": "hi"}, run_id=run,
                               metadata=config_metadata)
        info["step"] = 2  # the caller's objects change before the writer runs
        config_metadata["session_id"] = "changed"
        handler.on_chain_end({"output": "x"}, run_id=run)
    store.release.set()
    start = next(e for e in cap.events() if e.kind == "agent" and e.phase == "start")
    assert (start.session_id, start.user_id) == ("s1", "ana")
    assert start.metadata["info"] == {"step": 1}
