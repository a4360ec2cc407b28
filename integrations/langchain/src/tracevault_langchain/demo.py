"""``tracevault demo`` with LangGraph: a real agent, a scripted model, no keys, no network.

The agent gets a question that needs two tools. The model calls both at once; the
clock tool times out, its error goes back to the model, which calls it again and then
answers. Everything is recorded through :class:`TracevaultCallbackHandler`.
"""

from __future__ import annotations

import warnings
from datetime import datetime, timezone
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.tools import BaseTool, tool

from tracevault_langchain.handler import TracevaultCallbackHandler
from tracevault_langchain.testing import ScriptedChatModel, ai, tool_call

QUESTION = "What's the weather in Paris, and what time is it there?"
ANSWER = "It is sunny and 21 °C in Paris, and the local time there is 14:05."


class ClockTimeout(TimeoutError):
    """The scripted time service does not answer the first time."""


def _tools() -> list[BaseTool]:
    calls = {"clock": 0}

    @tool
    def get_weather(city: str) -> dict[str, Any]:
        """Return the current weather in a city."""
        return {"city": city, "forecast": "sunny", "temperature_c": 21}

    @tool
    def get_local_time(city: str) -> str:
        """Return the local time in a city."""
        calls["clock"] += 1
        if calls["clock"] == 1:
            raise ClockTimeout(f"time service did not answer for {city!r} within 2s")
        return "14:05"

    return [get_weather, get_local_time]


def _model() -> ScriptedChatModel:
    return ScriptedChatModel(messages=iter([
        ai("The user wants two facts: I need the weather tool and the clock tool.",
           tool_calls=[tool_call("get_weather", {"city": "Paris"}, "call_weather"),
                       tool_call("get_local_time", {"city": "Paris"}, "call_clock")],
           input_tokens=182, output_tokens=41),
        ai("The clock service timed out; I will ask it once more.",
           tool_calls=[tool_call("get_local_time", {"city": "Paris"}, "call_clock_2")],
           input_tokens=260, output_tokens=30),
        ai(ANSWER, input_tokens=301, output_tokens=24),
    ]))


def build_agent() -> Any:
    """Return the demo agent: ``create_agent`` if installed, else LangGraph's prebuilt one."""
    tools = _tools()
    try:
        from langchain.agents import create_agent
        from langchain.agents.middleware import ToolErrorMiddleware
    except ImportError:
        from langgraph.prebuilt import ToolNode, create_react_agent

        with warnings.catch_warnings():  # deprecated in favour of create_agent
            warnings.simplefilter("ignore")
            return create_react_agent(_model(), ToolNode(tools, handle_tool_errors=True))

    def on_error(exc: Exception, request: Any) -> str:
        return f"{request.tool_call['name']} failed: {type(exc).__name__}: {exc}"

    return create_agent(_model(), tools, middleware=[ToolErrorMiddleware(on_error)],
                        name="weather-agent")


def run_demo(session_id: str | None = None, user_id: str = "demo-user") -> str:
    """Run the demo agent once, recorded; return its session id (the caller flushes)."""
    try:
        agent = build_agent()
    except ImportError:  # no LangGraph: the framework-free demo still shows the ledger
        from tracevault.demo import run_demo as core_demo

        return core_demo(session_id, user_id)
    session_id = session_id or "demo-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    agent.invoke(
        {"messages": [HumanMessage(QUESTION)]},
        config={
            "callbacks": [TracevaultCallbackHandler()],
            "metadata": {"session_id": session_id, "user_id": user_id, "source": "cli-demo"},
        },
    )
    return session_id
