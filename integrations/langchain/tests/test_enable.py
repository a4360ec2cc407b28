"""Enabling: auto-enable in a fresh process, one handler per process, and strict mode."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import AsyncCallbackManager, CallbackManager
from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from lc_agents import AGENT_SEQUENCE, AGENTS, get_weather, lc_agent, weather_model
from lc_tree import check_tree, kinds, tree
from tracevault_langchain import TracevaultCallbackHandler, autoenable, convert
from tracevault_langchain.handler import handler_failures
from tracevault_langchain.testing import ScriptedChatModel, ai, tool_call

from tracevault import capture
from tracevault.pipeline import DurabilityError, Pipeline
from tracevault.schema import LEVEL_RANK, AuditEvent
from tracevault.store import StoreError, open_store
from tracevault.store.sqlite import SQLiteStore
from tracevault.testing import Capture

# An unmodified LangGraph program: it never imports tracevault.
PROGRAM = textwrap.dedent(
    """
    import sys
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_core.tools import tool

    class Model(GenericFakeChatModel):
        def bind_tools(self, tools, **kwargs):
            return self

    @tool
    def lookup(city: str) -> str:
        '''Look a city up.'''
        return f"{city} is lovely"

    model = Model(messages=iter([
        AIMessage("", tool_calls=[{"name": "lookup", "args": {"city": "Oslo"}, "id": "k1"}]),
        AIMessage("Oslo is lovely."),
    ]))
    agent = create_agent(model, [lookup])
    callbacks = []
    if "--explicit" in sys.argv:  # the user also passes a handler of their own
        from tracevault_langchain import TracevaultCallbackHandler
        callbacks = [TracevaultCallbackHandler()]
    if "--manager" in sys.argv:  # ... in a CallbackManager: child runs do not inherit it
        from langchain_core.callbacks import CallbackManager
        callbacks = CallbackManager(callbacks)
    agent.invoke({"messages": [HumanMessage("Tell me about Oslo")]},
                 {"callbacks": callbacks, "metadata": {"session_id": "auto-1"}})
    print("imported before run:", sorted(m for m in sys.modules if m == "tracevault"))
    """
)


def _run_program(tmp_path: Path, *args: str, enabled: bool = True) -> list[AuditEvent]:
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    db = tmp_path / "auto.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEVAULT_")}
    env["TRACEVAULT_STORE"] = f"sqlite:///{db}"
    if enabled:
        env["TRACEVAULT_ENABLED"] = "true"
    done = subprocess.run([sys.executable, str(script), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    if not db.exists():
        return []
    store = open_store(f"sqlite:///{db}")
    try:
        return [s.event for s in store.events()]
    finally:
        store.close()


PROGRAM_SEQUENCE = [
    ("agent", "start"), ("input", "point"),
    ("llm_call", "start"), ("llm_call", "end"),
    ("tool_call", "start"), ("tool_call", "end"),
    ("llm_call", "start"), ("llm_call", "end"),
    ("output", "point"), ("agent", "end"),
]


def test_auto_enable_records_an_unmodified_program(tmp_path: Path) -> None:
    events = _run_program(tmp_path)
    check_tree(events)
    assert [(e.kind, e.phase) for e in events if e.kind not in ("chain",)] == PROGRAM_SEQUENCE
    assert {e.session_id for e in events} == {"auto-1"}
    tool_end = next(e for e in events if e.kind == "tool_call" and e.phase == "end")
    assert tool_end.data["result"] == "Oslo is lovely"


@pytest.mark.parametrize("args", [("--explicit",), ("--explicit", "--manager")],
                         ids=["list", "manager"])
def test_auto_enable_with_an_explicit_handler_records_each_event_once(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    events = _run_program(tmp_path, *args)
    check_tree(events)  # a span started twice would fail here
    assert [(e.kind, e.phase) for e in events if e.kind not in ("chain",)] == PROGRAM_SEQUENCE
    assert {e.trace_id for e in events} == {events[0].span_id}


def test_without_the_variable_nothing_is_recorded(tmp_path: Path) -> None:
    assert _run_program(tmp_path, enabled=False) == []


@pytest.fixture()
def enabled() -> Iterator[TracevaultCallbackHandler]:
    handler = autoenable.enable()
    yield handler
    autoenable.disable()


def test_enable_is_idempotent_and_needs_no_callbacks(
    cap: Capture, enabled: TracevaultCallbackHandler
) -> None:
    assert autoenable.enable() is enabled
    assert autoenable.installed_handler() is enabled
    agent = lc_agent(weather_model(), [get_weather])
    agent.invoke({"messages": [HumanMessage("Paris")]})
    # an inner runnable given its own handler: each run is still recorded once
    inner = TracevaultCallbackHandler()
    agent.invoke({"messages": [HumanMessage("Lyon")]},
                 {"callbacks": [inner], "metadata": {"session_id": "explicit"}})
    events = cap.events()
    check_tree(events)
    assert len({e.trace_id for e in events}) == 2
    assert len([e for e in events if e.kind == "output"]) == 2
    autoenable.disable()
    assert autoenable.installed_handler() is None
    agent.invoke({"messages": [HumanMessage("Nice")]})
    assert len(cap.events()) == len(events), "a disabled handler records nothing"


# A user's own handler as config={"callbacks": ...} takes it: a CallbackManager's
# handlers= reach only the run it is given to, its inheritable_handlers= and a list
# reach child runs too.
USER_CALLBACKS: dict[str, Callable[[TracevaultCallbackHandler], Any]] = {
    "manager": lambda h: CallbackManager([h]),
    "async-manager": lambda h: AsyncCallbackManager([h]),
    "inheritable-manager": lambda h: CallbackManager(handlers=[h], inheritable_handlers=[h]),
    "list": lambda h: [h],
}


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("callbacks", USER_CALLBACKS.values(), ids=USER_CALLBACKS.keys())
@pytest.mark.parametrize("build", AGENTS.values(), ids=AGENTS.keys())
async def test_auto_enable_and_a_user_handler_record_the_same_tree_once(
    cap: Capture, enabled: TracevaultCallbackHandler, build: Callable[..., Any],
    callbacks: Callable[[TracevaultCallbackHandler], Any], mode: str,
) -> None:
    agent = build(weather_model(), [get_weather])
    inputs = {"messages": [HumanMessage("Paris")]}
    for config in ({}, {"callbacks": callbacks(TracevaultCallbackHandler(session_id="mine"))}):
        if mode == "sync":
            agent.invoke(inputs, config)
        else:
            await agent.ainvoke(inputs, config)
    events = cap.events()
    roots = [e for e in events if e.parent_span_id is None and e.phase == "start"]
    assert len(roots) == 2, "one root per run"
    assert [(r.kind, r.trace_id) for r in roots] == [("agent", r.span_id) for r in roots]
    alone, with_user = ([e for e in events if e.trace_id == r.span_id] for r in roots)
    assert len(alone) + len(with_user) == len(events)
    assert kinds(with_user, steps=False) == AGENT_SEQUENCE
    # the same steps under the same parents as with the process-wide handler alone
    assert tree(with_user) == tree(alone)
    # the user's handler records the run it was given; the steps under it follow it
    assert {e.session_id for e in with_user} == {"mine"}


def test_auto_enable_and_a_user_handler_on_an_inner_runnable_record_one_tree(
    cap: Capture, enabled: TracevaultCallbackHandler
) -> None:
    agent = lc_agent(weather_model(), [get_weather]).with_config(
        callbacks=[TracevaultCallbackHandler(session_id="inner")])
    outer = RunnableLambda(lambda inputs: agent.invoke(inputs), name="outer")
    outer.invoke({"messages": [HumanMessage("Paris")]})
    events = cap.events()
    root = events[0]
    assert {e.trace_id for e in events} == {root.span_id}
    assert tree(events) == [
        ("agent", "start", "outer", None),
        ("input", "point", "user_message", "outer"),
        ("chain", "start", "LangGraph", "outer"),
        ("chain", "start", "model", "LangGraph"),
        ("llm_call", "start", "gpt-4o-mini", "model"),
        ("llm_call", "end", "gpt-4o-mini", "model"),
        ("reasoning", "point", "gpt-4o-mini", "gpt-4o-mini"),
        ("chain", "end", "model", "LangGraph"),
        ("chain", "start", "tools", "LangGraph"),
        ("tool_call", "start", "get_weather", "tools"),
        ("tool_call", "end", "get_weather", "tools"),
        ("chain", "end", "tools", "LangGraph"),
        ("chain", "start", "model", "LangGraph"),
        ("llm_call", "start", "gpt-4o-mini", "model"),
        ("llm_call", "end", "gpt-4o-mini", "model"),
        ("chain", "end", "model", "LangGraph"),
        ("chain", "end", "LangGraph", "outer"),
        ("output", "point", "final_answer", "outer"),
        ("agent", "end", "outer", None),
    ]
    # the process-wide handler saw the outer run start first: it records the whole tree
    assert {e.session_id for e in events} == {None}


# --- strict mode ----------------------------------------------------------------------


class BrokenStore(SQLiteStore):
    """A ledger whose disk refuses every write."""

    def append(self, events: Sequence[AuditEvent]) -> int:
        raise StoreError("disk full")


@pytest.fixture()
def broken_ledger(tmp_path: Path) -> Iterator[None]:
    pipeline = Pipeline(BrokenStore(str(tmp_path / "ledger.db")),
                        dead_letter_path=str(tmp_path / "dead.jsonl"))
    settings = dataclasses.replace(capture.settings(), strict_timeout=0.3)
    capture.install(pipeline, settings)
    yield
    capture.install(None, None)
    pipeline.shutdown(timeout=0.3)


def _charge_tool() -> tuple[Any, list[int]]:
    charged: list[int] = []

    @tool
    def charge(amount: int) -> str:
        """Charge the customer's card."""
        charged.append(amount)
        return "charged"

    return charge, charged


def test_strict_tool_does_not_run_when_its_intent_is_not_durable(broken_ledger: None) -> None:
    charge, charged = _charge_tool()
    with pytest.raises(DurabilityError):
        charge.invoke({"amount": 40}, {"callbacks": [TracevaultCallbackHandler(strict=True)]})
    assert charged == []


def test_a_strict_tool_that_did_not_run_says_so_in_its_end(tmp_path: Path) -> None:
    from tracevault.pipeline import dead_letter_events

    dead = tmp_path / "dead.jsonl"
    pipeline = Pipeline(BrokenStore(str(tmp_path / "ledger.db")), dead_letter_path=str(dead))
    capture.install(pipeline, dataclasses.replace(capture.settings(), strict_timeout=0.3))
    try:
        charge, charged = _charge_tool()
        with pytest.raises(DurabilityError):
            charge.invoke({"amount": 40}, {"callbacks": [TracevaultCallbackHandler(strict=True)]})
    finally:
        capture.install(None, None)
        pipeline.shutdown(timeout=5)
    assert charged == []
    events = [e for e in dead_letter_events(str(dead)) if e.kind == "tool_call"]
    assert [(e.phase, e.data["status"]) for e in events] == [
        ("start", "pending"), ("end", "not_run")]
    assert events[1].span_id == events[0].span_id and events[1].level == "error"


def test_strict_setting_aborts_an_agent_tool_call(
    broken_ledger: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # TRACEVAULT_STRICT=true / configure(strict=True): handlers without strict= follow it
    monkeypatch.setattr(capture, "_settings",
                        dataclasses.replace(capture.settings(), strict=True))
    charge, charged = _charge_tool()
    model = ScriptedChatModel(messages=iter([
        ai("", tool_calls=[tool_call("charge", {"amount": 5}, "p1")])]))
    agent = create_agent(model, [charge])
    with pytest.raises(DurabilityError):
        agent.invoke({"messages": [HumanMessage("pay")]},
                     {"callbacks": [TracevaultCallbackHandler()]})
    assert charged == []


def _level_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # As TRACEVAULT_LEVEL=error would set it, for the pipeline the test already runs.
    at_error = dataclasses.replace(capture.settings(), level="error")
    monkeypatch.setattr(capture, "_settings", at_error)
    monkeypatch.setattr(capture, "_min_rank", LEVEL_RANK["error"])


def test_strict_intents_are_recorded_whatever_the_level(
    broken_ledger: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _level_error(monkeypatch)
    charge, charged = _charge_tool()
    with pytest.raises(DurabilityError):
        charge.invoke({"amount": 40}, {"callbacks": [TracevaultCallbackHandler(strict=True)]})
    assert charged == []


def test_a_strict_intent_below_the_level_is_recorded_with_its_end(
    cap: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    _level_error(monkeypatch)
    charge, charged = _charge_tool()
    charge.invoke({"amount": 2}, {"callbacks": [TracevaultCallbackHandler(strict=True)]})
    assert charged == [2]
    assert [(e.phase, e.data["status"]) for e in cap.events()] == [
        ("start", "pending"), ("end", "success")]


def test_without_strict_a_broken_ledger_never_stops_the_tool(broken_ledger: None) -> None:
    charge, charged = _charge_tool()
    assert charge.invoke({"amount": 3}, {"callbacks": [TracevaultCallbackHandler()]}) == "charged"
    assert charged == [3]


def test_strict_intent_is_in_the_ledger_before_the_tool_runs(cap: Capture) -> None:
    seen: list[list[str]] = []

    @tool
    def transfer(amount: int) -> str:
        """Move money."""
        seen.append([e.event.data.get("status") for e in cap.store.events(kinds=["tool_call"])])
        return "ok"

    transfer.invoke({"amount": 1}, {"callbacks": [TracevaultCallbackHandler(strict=True)]})
    assert seen == [["pending"]], "the tool saw its own intent in the ledger"
    assert [e.data["status"] for e in cap.events() if e.kind == "tool_call"] == [
        "pending", "success"]


def test_a_recording_bug_never_reaches_the_agent_even_in_strict_mode(
    cap: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # strict=True makes LangChain re-raise handler exceptions: only DurabilityError may.
    def broken(_message: object) -> None:
        raise RuntimeError("bug in tracevault")

    monkeypatch.setattr(convert, "reasoning_of", broken)
    before = handler_failures()
    charge, charged = _charge_tool()
    model = ScriptedChatModel(messages=iter([
        ai("", tool_calls=[tool_call("charge", {"amount": 7}, "p1")]), ai("done")]))
    agent = create_agent(model, [charge])
    result = agent.invoke({"messages": [HumanMessage("pay")]},
                          {"callbacks": [TracevaultCallbackHandler(strict=True)]})
    assert result["messages"][-1].content == "done" and charged == [7]
    kinds = [(e.kind, e.phase) for e in cap.events()]
    assert handler_failures() == before + 2  # both model calls' ends
    assert ("tool_call", "start") in kinds and ("tool_call", "end") in kinds
    assert ("reasoning", "point") not in kinds
