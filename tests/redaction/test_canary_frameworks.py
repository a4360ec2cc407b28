"""Canaries through the real framework integrations: a LangGraph agent and a LlamaIndex
FunctionAgent, driven by scripted models, with PII and secrets in the user input, tool
arguments, tool results, run metadata and a tool's exception message. Afterwards
neither the SQLite file nor its WAL holds any of them."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from redaction_canaries import assert_absent, ledger_bytes, make_canaries

from tracevault.testing import capture_events


def test_langgraph_agent(tmp_path: Path) -> None:
    pytest.importorskip("tracevault_langchain")
    pytest.importorskip("langgraph")
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langgraph.prebuilt import ToolNode, create_react_agent
    from tracevault_langchain import TracevaultCallbackHandler
    from tracevault_langchain.testing import ScriptedChatModel, ai, tool_call

    c = make_canaries()

    @tool
    def crm_lookup(email: str, card: str) -> str:
        """Look a customer up."""
        return f"found {email}: phone {c['phone']}, iban {c['iban']}, key {c['openai']}"

    @tool
    def charge(iban: str) -> str:
        """Charge an account."""
        raise ValueError(f"declined for {c['email3']} using {c['aws']}")

    def script(messages: Sequence[BaseMessage]) -> AIMessage:
        done = [m for m in messages if isinstance(m, ToolMessage)]
        if not done:
            return ai("Looking up.", tool_calls=[
                tool_call("crm_lookup", {"email": c["email2"], "card": c["card2"]}, "c1"),
                tool_call("charge", {"iban": c["iban"]}, "c2")])
        return ai(f"Done for {c['email']} (ssn {c['ssn']}).")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agent = create_react_agent(ScriptedChatModel(respond=script),
                                   ToolNode([crm_lookup, charge], handle_tool_errors=True))
    with capture_events(tmp_path) as cap:
        agent.invoke(
            {"messages": [HumanMessage(f"I'm {c['email']}, card {c['card']}, ip {c['ip']}")]},
            config={"callbacks": [TracevaultCallbackHandler()],
                    "metadata": {"session_id": "s-lc", "client_ip": c["ip"],
                                 "api_token": c["github"]}},
        )
        events = cap.events()
        assert {e.kind for e in events} >= {"input", "llm_call", "tool_call", "output"}
        assert any(e.metadata.get("redactions") for e in events)
        assert_absent(ledger_bytes(tmp_path), c)
    assert_absent(ledger_bytes(tmp_path), c)


async def test_llamaindex_function_agent(tmp_path: Path) -> None:
    tracevault_llamaindex = pytest.importorskip("tracevault_llamaindex")
    pytest.importorskip("llama_index.core")
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.llms import MockFunctionCallingLLM
    from llama_index.core.tools import FunctionTool
    from tracevault_llamaindex.testing import tool_then_answer

    c = make_canaries()

    def crm_lookup(email: str, card: str) -> str:
        """Look a customer up."""
        return f"found {email}: phone {c['phone']}, iban {c['iban']}, key {c['openai']}"

    def charge(iban: str) -> str:
        """Charge an account."""
        raise ValueError(f"declined for {c['email3']} using {c['aws']}")

    plan: list[tuple[str, dict[str, Any]]] = [
        ("crm_lookup", {"email": c["email2"], "card": c["card2"]}),
        ("charge", {"iban": c["iban"]}),
    ]
    agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(crm_lookup), FunctionTool.from_defaults(charge)],
        llm=MockFunctionCallingLLM(response_generator=tool_then_answer(
            plan, f"Done for {c['email']} (ssn {c['ssn']}).")),
        streaming=False,
    )
    with capture_events(tmp_path) as cap:
        tracevault_llamaindex.uninstrument()
        tracevault_llamaindex.instrument(session_id="s-li")
        try:
            await agent.run(user_msg=f"I'm {c['email']}, card {c['card']}, ip {c['ip']}")
        finally:
            tracevault_llamaindex.uninstrument()
        events = cap.events()
        assert {e.kind for e in events} >= {"input", "llm_call", "tool_call", "output"}
        assert any(e.metadata.get("redactions") for e in events)
        assert_absent(ledger_bytes(tmp_path), c)
    assert_absent(ledger_bytes(tmp_path), c)
