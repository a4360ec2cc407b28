"""Scripted agents and tools shared by the tests (no network, no keys)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool, ToolException, tool
from tracevault_langchain.testing import ScriptedChatModel, ai, tool_call


@tool
def get_weather(city: str) -> str:
    """Return the weather in a city."""
    return f"sunny in {city}"


@tool
def get_time(city: str) -> str:
    """Return the local time in a city."""
    return f"14:05 in {city}"


@tool
def broken_clock(city: str) -> str:
    """A clock that always fails."""
    raise TimeoutError(f"clock for {city} did not answer")


def _picky_clock(city: str) -> str:
    raise ToolException(f"no clock in {city}")


picky_clock = StructuredTool.from_function(
    _picky_clock, name="picky_clock", description="A clock that reports its own failure.",
    handle_tool_error=True,
)


def weather_script(messages: Sequence[BaseMessage]) -> AIMessage:
    """Ask for the weather once, then answer: a function of the conversation, so it is
    safe for any number of concurrent runs."""
    tool_results = [m for m in messages if isinstance(m, ToolMessage)]
    if not tool_results:
        city = str(messages[-1].content)
        return ai("Let me look that up.",
                  tool_calls=[tool_call("get_weather", {"city": city}, f"call-{city}")],
                  input_tokens=100, output_tokens=20)
    return ai(f"It is {tool_results[-1].content}.", input_tokens=150, output_tokens=10)


def weather_model() -> ScriptedChatModel:
    return ScriptedChatModel(respond=weather_script)


# What a weather_model agent run records: model steps and tools in order, no graph nodes.
AGENT_SEQUENCE = [
    ("agent", "start", "LangGraph"),
    ("input", "point", "user_message"),
    ("llm_call", "start", "gpt-4o-mini"),
    ("llm_call", "end", "gpt-4o-mini"),
    ("reasoning", "point", "gpt-4o-mini"),
    ("tool_call", "start", "get_weather"),
    ("tool_call", "end", "get_weather"),
    ("llm_call", "start", "gpt-4o-mini"),
    ("llm_call", "end", "gpt-4o-mini"),
    ("output", "point", "final_answer"),
    ("agent", "end", "LangGraph"),
]


def two_tools_then_answer(first: str = "get_weather", second: str = "get_time") -> list[AIMessage]:
    """One response calling two tools in parallel, then a final answer."""
    return [
        ai("I need both facts.",
           tool_calls=[tool_call(first, {"city": "Paris"}, "c1"),
                       tool_call(second, {"city": "Paris"}, "c2")],
           input_tokens=120, output_tokens=30),
        ai("Done.", input_tokens=200, output_tokens=8),
    ]


def react_agent(model: ScriptedChatModel, tools: list[BaseTool], **kwargs: Any) -> Any:
    """LangGraph's prebuilt ReAct agent (deprecated upstream, still widely used)."""
    from langgraph.prebuilt import ToolNode, create_react_agent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_react_agent(model, ToolNode(tools, handle_tool_errors=True), **kwargs)


def lc_agent(model: ScriptedChatModel, tools: list[BaseTool], **kwargs: Any) -> Any:
    """``langchain.agents.create_agent`` with tool errors returned to the model."""
    from langchain.agents import create_agent
    from langchain.agents.middleware import ToolErrorMiddleware

    def on_error(exc: Exception, request: Any) -> str:
        return f"error: {exc}"

    return create_agent(model, tools, middleware=[ToolErrorMiddleware(on_error)], **kwargs)


AGENTS: dict[str, Callable[..., Any]] = {
    "create_agent": lc_agent, "create_react_agent": react_agent,
}
