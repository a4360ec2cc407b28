"""What the agent's thread hands the ledger writer (tracevault.capture.later): copies
taken when each callback came, its time, its context, and an error's stack as it was."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from lc_agents import lc_agent
from tracevault_langchain import TracevaultCallbackHandler
from tracevault_langchain.testing import ScriptedChatModel, ai, tool_call

import tracevault
from tracevault import capture
from tracevault.store import open_store
from tracevault.testing import Capture


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
