"""instrument()/uninstrument(), session precedence, failure isolation, cross-framework
nesting, the legacy CallbackManager handler, the public surface and auto-enable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import tracevault_llamaindex
from li_agents import ADD, FAIL, DownLLM, check_tree, react_agent
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import CompletionResponse, LLMMetadata
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.instrumentation import dispatcher as _dispatcher_module  # noqa: F401
from llama_index.core.instrumentation.dispatcher import instrument_tags
from llama_index.core.llms import (
    ChatMessage,
    CustomLLM,
    MockFunctionCallingLLM,
    MockLLM,
)
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.tools import FunctionTool
from llama_index_instrumentation import get_dispatcher
from tracevault_llamaindex import callbacks, llm, usage
from tracevault_llamaindex.instrument import UNINSTRUMENTED, Installed
from tracevault_llamaindex.testing import tool_then_answer

import tracevault
from tracevault.context import current_span
from tracevault.testing import Capture, capture_events


def test_public_surface() -> None:
    assert sorted(tracevault_llamaindex.__all__) == [
        "TracevaultCallbackHandler", "TracevaultEventHandler", "TracevaultSpanHandler",
        "handler_errors", "instrument", "is_instrumented", "uninstrument",
    ]


def test_uninstrument_restores_the_dispatcher() -> None:
    tracevault_llamaindex.uninstrument()
    dispatcher = get_dispatcher()
    spans_before = list(dispatcher.span_handlers)
    events_before = list(dispatcher.event_handlers)
    first = tracevault_llamaindex.instrument()
    second = tracevault_llamaindex.instrument(session_id="s2")
    assert second is first and tracevault_llamaindex.is_instrumented()
    assert first.recorder.session_id == "s2"  # a second call only updates the defaults
    assert dispatcher.span_handlers == [*spans_before, first.span_handler]
    assert dispatcher.event_handlers == [*events_before, first.event_handler]
    tracevault_llamaindex.uninstrument()
    tracevault_llamaindex.uninstrument()  # idempotent
    assert not tracevault_llamaindex.is_instrumented()
    assert len(dispatcher.span_handlers) == len(spans_before)
    assert all(a is b for a, b in zip(dispatcher.span_handlers, spans_before, strict=True))
    assert all(a is b for a, b in zip(dispatcher.event_handlers, events_before, strict=True))


async def test_instrument_twice_records_once(cap: Capture, instrumented: Installed) -> None:
    assert tracevault_llamaindex.instrument() is instrumented
    await react_agent().run(user_msg="Add 2 and 3")
    events = cap.events()
    check_tree(events)
    assert [e.phase for e in events if e.kind == "llm_call"] == ["start", "end"] * 2
    assert sum(e.kind == "tool_call" for e in events) == 2


async def test_nothing_recorded_after_uninstrument(cap: Capture, instrumented: Installed) -> None:
    tracevault_llamaindex.uninstrument()
    await react_agent().run(user_msg="Add 2 and 3")
    assert cap.events() == []


async def test_uninstrument_during_a_run_ends_what_it_had_open(
    cap: Capture, instrumented: Installed
) -> None:
    def add(a: int, b: int) -> int:
        """Add two integers."""
        tracevault_llamaindex.uninstrument()
        return a + b

    agent = FunctionAgent(tools=[FunctionTool.from_defaults(add)], streaming=False,
                          llm=MockFunctionCallingLLM(response_generator=tool_then_answer(
                              [("add", {"a": 1, "b": 2})], "three")))
    assert str(await agent.run(user_msg="1 + 2?")) == "three"
    events = cap.events()
    check_tree(events)
    assert [(e.kind, e.phase) for e in events] == [
        ("agent", "start"), ("input", "point"), ("llm_call", "start"), ("llm_call", "end"),
        ("tool_call", "start"), ("tool_call", "end"), ("agent", "end"),
    ]
    for end in (events[5], events[6]):
        assert end.level == "warning" and end.data["status"] == "abandoned"
        assert end.data["reason"] == UNINSTRUMENTED
    assert not instrumented.recorder.spans and not instrumented.recorder.llm


def test_uninstrument_inside_a_tool_leaves_no_span_current(
    cap: Capture, instrumented: Installed
) -> None:
    def stop_recording() -> str:
        """Stop recording from inside the tool."""
        tracevault_llamaindex.uninstrument()
        return "stopped"

    assert FunctionTool.from_defaults(stop_recording).call().content == "stopped"
    assert current_span() is None  # the tool's span is gone with it
    tool_end = [e for e in cap.events() if e.kind == "tool_call" and e.phase == "end"]
    assert [e.data["status"] for e in tool_end] == ["abandoned"]


async def test_session_and_user_precedence(cap: Capture, instrumented: Installed) -> None:
    tracevault_llamaindex.instrument(session_id="default-session", user_id="default-user")
    await react_agent().run(user_msg="first")
    with tracevault.context(session_id="context-session"):
        await react_agent().run(user_msg="second")
        with instrument_tags({"session_id": "tag-session", "user_id": "tag-user"}):
            await react_agent().run(user_msg="third")
    events = cap.events()
    by_input = {}
    for event in events:
        by_input.setdefault(event.trace_id, set()).add((event.session_id, event.user_id))
    inputs = {e.data["content"]: e.trace_id for e in events if e.kind == "input"}
    assert by_input[inputs["first"]] == {("default-session", "default-user")}
    assert by_input[inputs["second"]] == {("context-session", "default-user")}
    assert by_input[inputs["third"]] == {("tag-session", "tag-user")}


async def test_instrument_again_changes_only_the_defaults_it_is_given(
    cap: Capture, instrumented: Installed
) -> None:
    tracevault_llamaindex.instrument(session_id="chat-42", user_id="alice")
    tracevault_llamaindex.instrument()  # "idempotent": the defaults stay
    await react_agent().run(user_msg="first")
    tracevault_llamaindex.instrument(session_id=None)  # clears the session only
    await react_agent().run(user_msg="second")
    events = cap.events()
    inputs = {e.data["content"]: e.trace_id for e in events if e.kind == "input"}
    ids = {(e.session_id, e.user_id) for e in events if e.trace_id == inputs["first"]}
    assert ids == {("chat-42", "alice")}
    ids = {(e.session_id, e.user_id) for e in events if e.trace_id == inputs["second"]}
    assert ids == {(None, "alice")}


async def test_handler_failures_never_reach_the_agent(
    cap: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def broken(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        raise ValueError("bug in the handler")

    monkeypatch.setattr(llm, "start", broken)
    tracevault_llamaindex.uninstrument()
    tracevault_llamaindex.instrument()
    try:
        result = await react_agent().run(user_msg="Add 2 and 3")
        assert str(result) == "It is 5."
        assert calls and tracevault_llamaindex.handler_errors() == len(calls)  # all counted
        events = cap.events()
        assert not any(e.kind == "llm_call" for e in events)
        assert sum(e.kind == "tool_call" for e in events) == 2  # the rest still recorded
    finally:
        tracevault_llamaindex.uninstrument()


def test_query_inside_another_frameworks_step_joins_its_tree(
    cap: Capture, instrumented: Installed
) -> None:
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding

    index = VectorStoreIndex.from_documents(
        [Document(text="Paris is in France.")], embed_model=MockEmbedding(embed_dim=4))
    engine = index.as_query_engine(llm=MockLLM(max_tokens=3))
    log = tracevault.AuditLogger(session_id="one-session", user_id="ann")
    with tracevault.context(session_id="one-session", user_id="ann"), log.tool_call(
        "ask_docs", {"question": "Where is Paris?"}
    ) as call:
        call.result = str(engine.query("Where is Paris?"))
    events = [e for e in cap.events() if e.name != "embedding" or e.parent_span_id]
    tool = next(e for e in events if e.kind == "tool_call" and e.phase == "start")
    query = next(e for e in events if e.kind == "chain" and e.name == "query")
    assert query.parent_span_id == tool.span_id
    assert {e.trace_id for e in events} == {tool.trace_id}
    assert {e.session_id for e in events} == {"one-session"}
    assert {e.framework for e in events} == {"manual", "llamaindex"}
    check_tree(events)


def test_legacy_callback_handler(cap: Capture) -> None:
    handler = tracevault_llamaindex.TracevaultCallbackHandler(session_id="legacy", user_id="u")
    model = MockLLM(max_tokens=3, callback_manager=CallbackManager([handler]))
    model.chat([ChatMessage(role="user", content="hello")])
    events = cap.events()
    check_tree(events)
    assert [(e.kind, e.phase) for e in events] == [("llm_call", "start"), ("llm_call", "end")]
    start, end = events
    assert start.data["messages"] == [{"role": "user", "content": "hello"}]
    assert end.data["response"] == "text text text" and end.data["status"] == "success"
    assert {e.session_id for e in events} == {"legacy"}
    assert handler.errors == 0


def test_legacy_handler_records_tool_calls_with_their_results_and_failures(
    cap: Capture,
) -> None:
    handler = tracevault_llamaindex.TracevaultCallbackHandler(session_id="legacy")
    manager = CallbackManager([handler])

    def call(tool: FunctionTool, **arguments: Any) -> None:
        # What the code paths still on the CallbackManager report around a tool call.
        payload = {EventPayload.FUNCTION_CALL: arguments, EventPayload.TOOL: tool.metadata}
        with manager.event(CBEventType.FUNCTION_CALL, payload=payload) as event:
            output = tool(**arguments)
            event.on_end(payload={EventPayload.FUNCTION_OUTPUT: output})

    call(ADD, a=2, b=3)
    with pytest.raises(RuntimeError, match="cannot handle y"):
        call(FAIL, x="y")
    events = cap.events()
    check_tree(events)
    assert [(e.kind, e.phase, e.name) for e in events] == [
        ("tool_call", "start", "add"), ("tool_call", "end", "add"),
        ("tool_call", "start", "fail"), ("error", "point", "RuntimeError"),
        ("tool_call", "end", "fail"),
    ]
    add_start, add_end, fail_start, error, fail_end = events
    assert add_start.data == {"tool_name": "add", "status": "pending",
                              "parameters": {"a": 2, "b": 3}}
    assert (add_end.data["result"], add_end.data["is_error"], add_end.data["status"]) == (
        "5", False, "success")
    assert add_end.data["duration_ms"] >= 0 and add_end.span_id == add_start.span_id
    assert fail_start.data["parameters"] == {"x": "y"}
    assert (fail_end.data["is_error"], fail_end.data["status"], fail_end.level) == (
        True, "error", "error")
    assert error.parent_span_id == fail_start.span_id
    assert error.data["message"] == "cannot handle y"
    assert {e.session_id for e in events} == {"legacy"} and handler.errors == 0


@pytest.mark.parametrize("chat", [False, True], ids=["complete", "chat"])
def test_legacy_handler_records_a_failed_call_once_under_it(cap: Capture, chat: bool) -> None:
    # LlamaIndex reports the failure twice: at the call's end and from the trace around
    # it (before the end for chat, after it for completion).
    handler = tracevault_llamaindex.TracevaultCallbackHandler()
    model = DownLLM(callback_manager=CallbackManager([handler]))
    with pytest.raises(ConnectionError):
        if chat:
            model.chat([ChatMessage(role="user", content="hi")])
        else:
            model.complete("hi")
    events = cap.events()
    check_tree(events)
    assert sorted((e.kind, e.phase) for e in events) == [
        ("error", "point"), ("llm_call", "end"), ("llm_call", "start")]
    start = next(e for e in events if e.kind == "llm_call" and e.phase == "start")
    error = next(e for e in events if e.kind == "error")
    assert error.parent_span_id == start.span_id and error.trace_id == start.trace_id
    assert error.data["type"] == "ConnectionError" and handler.errors == 0


class _MeetingLLM(CustomLLM):
    """A model whose calls wait for each other at ``meeting`` (two requests open at
    once) and fail for a prompt that says so. Its chat() calls complete() inside."""

    meeting: Any = None

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="gpt-4o-mini")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        self.meeting.wait(60)
        if "fail" in prompt:
            raise ConnectionError(f"down for {prompt.split()[-1]}")
        return CompletionResponse(text="ok")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError


def test_legacy_handler_keeps_concurrent_requests_apart(cap: Capture) -> None:
    # Requests in two threads, both reported under the parent "root": one's complete()
    # is no nested call of the other's chat(), and its failure stays in its own session.
    handler = tracevault_llamaindex.TracevaultCallbackHandler()
    model = _MeetingLLM(callback_manager=CallbackManager([handler]),
                        meeting=threading.Barrier(2))

    def chat() -> None:
        with tracevault.context(session_id="chatting"):
            model.chat([ChatMessage(role="user", content="hello")])

    def complete() -> None:
        with tracevault.context(session_id="failing"), pytest.raises(ConnectionError):
            model.complete("fail req-2")

    threads = [threading.Thread(target=chat), threading.Thread(target=complete)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    events = cap.events()
    check_tree(events)
    starts = {e.session_id: e for e in events if e.kind == "llm_call" and e.phase == "start"}
    assert set(starts) == {"chatting", "failing"}  # one each: chat()'s complete() is inside
    assert "messages" in starts["chatting"].data and "prompt" in starts["failing"].data
    [error] = [e for e in events if e.kind == "error"]
    assert error.session_id == "failing" and error.data["message"] == "down for req-2"
    assert error.parent_span_id == starts["failing"].span_id
    assert handler.errors == 0


def test_legacy_handler_below_the_level_hangs_children_under_what_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At level info the query and synthesis steps (debug) are not recorded: the
    # retrieval and the model call under them hang under nothing rather than under them.
    from llama_index.core import Document, Settings, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding

    handler = tracevault_llamaindex.TracevaultCallbackHandler(session_id="docs")
    monkeypatch.setattr(Settings, "callback_manager", CallbackManager([handler]))
    index = VectorStoreIndex.from_documents(
        [Document(text="Paris is in France."), Document(text="Rome is in Italy.")],
        embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(llm=MockLLM(max_tokens=3))
    with capture_events(tmp_path, level="info") as cap:
        engine.query("Where is Paris?")
        events = cap.events()
    check_tree(events)
    assert [(e.kind, e.phase) for e in events] == [
        ("retrieval", "start"), ("retrieval", "end"), ("llm_call", "start"), ("llm_call", "end")]
    assert {e.parent_span_id for e in events if e.phase == "start"} == {None}
    assert handler.errors == 0


def test_legacy_handler_failures_never_break_the_call(
    cap: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise ValueError("bug in the handler")

    monkeypatch.setattr(usage, "model_of", broken)
    handler = callbacks.TracevaultCallbackHandler()
    model = MockLLM(max_tokens=2, callback_manager=CallbackManager([handler]))
    response = model.chat([ChatMessage(role="user", content="hello")])
    assert response.message.content == "text text"
    assert calls and handler.errors == len(calls)
    assert cap.events() == []


@pytest.mark.skipif(
    not Path(tracevault.__file__).with_name("autoenable.py").exists(),
    reason="the core auto-enable mechanism is not installed",
)
def test_auto_enable_without_code_change(tmp_path: Path) -> None:
    db = tmp_path / "auto.db"
    script = textwrap.dedent("""
        import asyncio, json
        import tracevault
        from llama_index.core.agent.workflow import ReActAgent
        from llama_index.core.tools import FunctionTool
        from tracevault_llamaindex.testing import ScriptedReActLLM

        def add(a: int, b: int) -> int:
            "Add two integers."
            return a + b

        async def main():
            agent = ReActAgent(tools=[FunctionTool.from_defaults(add)],
                               llm=ScriptedReActLLM(action_input={"a": 1, "b": 2}))
            await agent.run(user_msg="1 + 2?")

        asyncio.run(main())
        tracevault.flush()
        store = tracevault.open_store(%r)
        print(json.dumps([e.event.kind for e in store.events()]))
    """) % f"sqlite:///{db}"
    env = {**os.environ, "TRACEVAULT_ENABLED": "true", "TRACEVAULT_STORE": f"sqlite:///{db}"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    kinds = json.loads(done.stdout.strip().splitlines()[-1])
    assert kinds == ["agent", "input", "llm_call", "llm_call", "reasoning", "tool_call",
                     "tool_call", "llm_call", "llm_call", "reasoning", "output", "agent"]
