"""Session and user: config metadata, then handler arguments, then tracevault.context."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from lc_agents import get_weather, lc_agent, weather_model
from tracevault_langchain import TracevaultCallbackHandler

import tracevault
from tracevault.testing import Capture


def _who(cap: Capture) -> set[tuple[str | None, str | None]]:
    return {(e.session_id, e.user_id) for e in cap.events()}


def _run(config: dict[str, Any]) -> None:
    lc_agent(weather_model(), [get_weather]).invoke({"messages": [HumanMessage("Paris")]}, config)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"session_id": "meta-s", "user_id": "meta-u"}, ("meta-s", "meta-u")),
        ({"conversation_id": "conv-1"}, ("conv-1", "handler-u")),
        ({"session_id": "meta-s", "thread_id": "ignored"}, ("meta-s", "handler-u")),
        ({}, ("handler-s", "handler-u")),
    ],
)
def test_metadata_beats_handler_arguments_beat_context(
    cap: Capture, metadata: dict[str, Any], expected: tuple[str, str]
) -> None:
    handler = TracevaultCallbackHandler(session_id="handler-s", user_id="handler-u")
    with tracevault.context(session_id="ctx-s", user_id="ctx-u"):
        _run({"callbacks": [handler], "metadata": metadata})
    assert _who(cap) == {expected}


def test_context_applies_when_nothing_else_names_the_session(cap: Capture) -> None:
    with tracevault.context(session_id="ctx-s", user_id="ctx-u", channel="web"):
        _run({"callbacks": [TracevaultCallbackHandler()]})
    events = cap.events()
    assert _who(cap) == {("ctx-s", "ctx-u")}
    assert all(e.metadata.get("channel") == "web" for e in events)


def test_langgraph_thread_id_names_the_session(cap: Capture) -> None:
    from langgraph.checkpoint.memory import InMemorySaver

    agent = lc_agent(weather_model(), [get_weather], checkpointer=InMemorySaver())
    config = {"callbacks": [TracevaultCallbackHandler()],
              "configurable": {"thread_id": "thread-42"}}
    agent.invoke({"messages": [HumanMessage("Paris")]}, config)
    agent.invoke({"messages": [HumanMessage("Lyon")]}, config)
    events = cap.events()
    assert {e.session_id for e in events} == {"thread-42"}
    assert len({e.trace_id for e in events}) == 2, "two runs of one conversation"


def test_source_metadata_lands_on_the_input(cap: Capture) -> None:
    _run({"callbacks": [TracevaultCallbackHandler()],
          "metadata": {"session_id": "s", "source": "mobile-app", "tenant": "acme"}})
    events = cap.events()
    first_input = next(e for e in events if e.kind == "input")
    assert first_input.data == {"type": "user_message", "content": "Paris",
                                "source": "mobile-app"}
    assert first_input.metadata == {"session_id": "s", "source": "mobile-app", "tenant": "acme"}
    assert events[0].metadata["tenant"] == "acme"


def test_runs_inside_an_audit_logger_span_join_its_trace(cap: Capture) -> None:
    log = tracevault.AuditLogger()
    with tracevault.context(session_id="outer"), log.span("checkout", kind="agent") as span:
        _run({"callbacks": [TracevaultCallbackHandler()]})
    events = [e for e in cap.events() if e.framework == "langchain"]
    assert {e.trace_id for e in events} == {span.trace_id}
    assert events[0].parent_span_id == span.span_id, "the agent hangs under the span"
    assert all(e.parent_span_id is not None for e in events)
    assert {e.session_id for e in cap.events()} == {"outer"}
    assert len(cap.runs()) == 1
