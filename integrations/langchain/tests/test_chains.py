"""Chains, retrievers, subgraphs, threads, abandoned streams, retries and interrupts."""

from __future__ import annotations

import asyncio
import gc
import operator
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.callbacks import (
    CallbackManagerForLLMRun,
    CallbackManagerForRetrieverRun,
    dispatch_custom_event,
)
from langchain_core.documents import Document
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig, RunnableLambda, RunnablePassthrough
from langchain_core.runnables.config import ContextThreadPoolExecutor
from langchain_core.tools import InjectedToolCallId
from langchain_core.tools import tool as lc_tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Command, RetryPolicy, interrupt
from lc_agents import get_weather, lc_agent, react_agent, weather_model
from lc_tree import check_tree, kinds, parent_of
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_none,
)
from tracevault_langchain import TracevaultCallbackHandler
from tracevault_langchain.testing import ScriptedChatModel, ai, tool_call

from tracevault.pricing import cost_of
from tracevault.schema import AuditEvent
from tracevault.testing import Capture, capture_events


def _cfg(**kwargs: Any) -> RunnableConfig:
    return {"callbacks": [TracevaultCallbackHandler()], **kwargs}  # type: ignore[typeddict-item]


def _answer_model(text: str = "one two three", n: int = 10) -> ScriptedChatModel:
    return ScriptedChatModel(respond=lambda _m: ai(text, input_tokens=12, output_tokens=3))


def _counting_chain() -> Any:
    prompt = ChatPromptTemplate.from_messages([("human", "{q}")])
    return prompt | _answer_model() | StrOutputParser()


class Docs(BaseRetriever):
    """A retriever over two fixed documents."""

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return [
            Document("Paris is the capital of France.", id="d1",
                     metadata={"source": "atlas", "score": 0.92}),
            Document(f"Nothing else about {query}.", metadata={"source": "notes"}),
        ]


def test_retriever_chain(cap: Capture) -> None:
    prompt = ChatPromptTemplate.from_messages([("human", "{context}\n\n{question}")])
    chain = ({"context": Docs(), "question": RunnablePassthrough()} | prompt
             | _answer_model("Paris.") | StrOutputParser())
    assert chain.invoke("capital of France?", _cfg()) == "Paris."
    events = cap.events()
    starts = check_tree(events)
    assert kinds(events, steps=False) == [
        ("agent", "start", "RunnableSequence"),
        ("input", "point", "user_message"),
        ("retrieval", "start", "Docs"),
        ("retrieval", "end", "Docs"),
        ("llm_call", "start", "gpt-4o-mini"),
        ("llm_call", "end", "gpt-4o-mini"),
        ("output", "point", "final_answer"),
        ("agent", "end", "RunnableSequence"),
    ]
    start = next(e for e in events if e.kind == "retrieval" and e.phase == "start")
    assert start.data == {"query": "capital of France?"}
    assert parent_of(start, starts).name == "RunnableParallel<context,question>"
    end = next(e for e in events if e.kind == "retrieval" and e.phase == "end")
    assert end.data["documents"] == [
        {"id": "d1", "content": "Paris is the capital of France.",
         "metadata": {"source": "atlas", "score": 0.92}, "score": 0.92},
        {"content": "Nothing else about capital of France?.", "metadata": {"source": "notes"}},
    ]
    assert end.data["duration_ms"] >= 0
    output = next(e for e in events if e.kind == "output")
    assert output.data["content"] == "Paris."
    assert output.data["tokens_used"] == 15


def test_failing_retriever_is_an_error(cap: Capture) -> None:
    class Down(BaseRetriever):
        def _get_relevant_documents(
            self, query: str, *, run_manager: CallbackManagerForRetrieverRun
        ) -> list[Document]:
            raise ConnectionError("index offline")

    chain = Down() | RunnableLambda(lambda docs: len(docs))
    with pytest.raises(ConnectionError):
        chain.invoke("q", _cfg())
    events = cap.events()
    check_tree(events)
    errors = [e for e in events if e.kind == "error"]
    assert [(e.data["type"], e.data["where"]) for e in errors] == [("ConnectionError", "Down")]
    end = next(e for e in events if e.kind == "retrieval" and e.phase == "end")
    assert end.data["status"] == "error" and end.level == "error"
    assert events[-1].data["status"] == "error"


class State(TypedDict):
    log: Annotated[list[str], operator.add]


def _subgraph(name: str, model: ScriptedChatModel) -> Any:
    def think(state: State) -> dict[str, list[str]]:
        reply = model.invoke([HumanMessage(name)])
        return {"log": [f"{name}:{reply.content}"]}

    sub = StateGraph(State)
    sub.add_node("think", think)
    sub.add_edge(START, "think")
    sub.add_edge("think", END)
    return sub.compile(name=name)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_parallel_subgraphs_keep_their_parents(cap: Capture, mode: str) -> None:
    model = _answer_model("ok")
    graph = StateGraph(State)
    graph.add_node("left", _subgraph("left", model))
    graph.add_node("right", _subgraph("right", model))
    graph.add_edge(START, "left")
    graph.add_edge(START, "right")
    graph.add_edge("left", END)
    graph.add_edge("right", END)
    app = graph.compile()
    if mode == "sync":
        out = app.invoke({"log": []}, _cfg())
    else:
        out = await app.ainvoke({"log": []}, _cfg())
    assert sorted(out["log"]) == ["left:ok", "right:ok"]
    events = cap.events()
    starts = check_tree(events)
    root = events[0]
    llm_starts = [e for e in events if e.kind == "llm_call" and e.phase == "start"]
    assert len(llm_starts) == 2
    for llm in llm_starts:
        think = parent_of(llm, starts)
        assert think.name == "think"
        subgraph = parent_of(think, starts)
        assert subgraph.name == llm.data["messages"][0]["content"], "each call under its branch"
        node = parent_of(subgraph, starts)
        assert node.name == subgraph.name
        assert node.parent_span_id == root.span_id
    assert next(e for e in events if e.kind == "output").data["tokens_used"] == 30


def test_context_thread_pool_executor_keeps_the_tree(cap: Capture) -> None:
    model = _answer_model("x")

    def fan_out(cities: list[str]) -> list[str]:
        with ContextThreadPoolExecutor(max_workers=4) as pool:
            return [str(r.content) for r in pool.map(lambda c: model.invoke(c), cities)]

    chain = RunnableLambda(fan_out)
    assert chain.invoke(["a", "b", "c", "d"], _cfg()) == ["x"] * 4
    events = cap.events()
    check_tree(events)
    root = events[0]
    llm_starts = [e for e in events if e.kind == "llm_call" and e.phase == "start"]
    assert len(llm_starts) == 4
    assert {e.parent_span_id for e in llm_starts} == {root.span_id}
    assert {e.trace_id for e in events} == {root.span_id}


def test_stream_records_deferred_inputs_and_output(cap: Capture) -> None:
    chain = _counting_chain()
    assert "".join(chain.stream({"q": "count"}, _cfg())) == "one two three"
    events = cap.events()
    check_tree(events)
    assert kinds(events, steps=False) == [
        ("agent", "start", "RunnableSequence"),
        ("llm_call", "start", "gpt-4o-mini"),
        ("llm_call", "end", "gpt-4o-mini"),
        ("input", "point", "chain_input"),
        ("output", "point", "final_answer"),
        ("agent", "end", "RunnableSequence"),
    ]
    assert next(e for e in events if e.kind == "input").data["content"] == "count"
    end = next(e for e in events if e.kind == "llm_call" and e.phase == "end")
    assert end.data["usage"] == {"input": 12, "output": 3, "total": 15}
    assert end.data["time_to_first_token_ms"] <= end.data["duration_ms"]


def test_abandoned_sync_stream_ends_every_run(cap: Capture) -> None:
    chain = _counting_chain()
    for _chunk in chain.stream({"q": "count"}, _cfg()):
        break
    events = cap.events()
    check_tree(events)  # every started run ended, although the consumer walked away
    assert not [e for e in events if e.kind in ("error", "output")]
    # LangChain ends the abandoned run as if it had finished, before its steps end.
    root_end = next(e for e in events if e.kind == "agent" and e.phase == "end")
    assert root_end.data["status"] == "abandoned" and root_end.level == "warning"


async def test_abandoned_async_stream_is_abandoned_not_failed(cap: Capture) -> None:
    chain = _counting_chain()
    stream = chain.astream({"q": "count"}, _cfg())
    async for _chunk in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    # The inner generators are closed by the loop's finalizer hook once collected; run
    # that now instead of waiting for it.
    gc.collect()
    await asyncio.get_running_loop().shutdown_asyncgens()
    events = cap.events()
    check_tree(events)
    assert not [e for e in events if e.kind == "error"]
    ends = {e.kind: e.data for e in events if e.phase == "end"}
    assert ends["agent"]["status"] == "abandoned"
    assert ends["llm_call"]["status"] == "abandoned"


def test_abandoned_agent_stream(cap: Capture) -> None:
    agent = lc_agent(weather_model(), [get_weather])
    for _chunk in agent.stream({"messages": [HumanMessage("Paris")]}, _cfg(),
                               stream_mode="messages"):
        break
    events = cap.events()
    check_tree(events)
    assert events[-1].kind == "agent" and events[-1].data["status"] == "abandoned"
    assert not [e for e in events if e.kind == "error"]


def test_model_error_is_recorded_once_with_the_failing_model(cap: Capture) -> None:
    def fail(_messages: list[BaseMessage]) -> AIMessage:
        raise RuntimeError("rate limited")

    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | ScriptedChatModel(respond=fail)
    with pytest.raises(RuntimeError):
        chain.invoke({"q": "hi"}, _cfg())
    events = cap.events()
    check_tree(events)
    errors = [e for e in events if e.kind == "error"]
    assert len(errors) == 1
    assert errors[0].data["where"] == "gpt-4o-mini"
    assert errors[0].data["message"] == "rate limited"
    llm_end = next(e for e in events if e.kind == "llm_call" and e.phase == "end")
    assert errors[0].span_id == llm_end.span_id
    assert llm_end.data["status"] == "error"
    assert events[-1].data["status"] == "error"


def test_a_runnable_called_again_for_another_input_is_no_retry(cap: Capture) -> None:
    def score(x: int) -> int:
        if x == 2:
            raise ValueError(f"cannot score {x}")
        return x * 10

    scorer = RunnableLambda(score, name="score")

    def score_all(items: list[int], config: RunnableConfig) -> list[Any]:
        return scorer.batch(items, {**config, "max_concurrency": 1}, return_exceptions=True)

    results = RunnableLambda(score_all, name="score_all").invoke([1, 2, 3], _cfg())
    assert results[0] == 10 and isinstance(results[1], ValueError) and results[2] == 30
    events = cap.events()
    check_tree(events)
    assert [e.data["message"] for e in events if e.kind == "error"] == ["cannot score 2"]
    # Not retried: handled by the run that called it, which carried on.
    assert [e.data["payload"]["recovery_action"] for e in events
            if e.name == "error_recovered"] == ["handled in score_all; the run continued"]


class _DropsMidStream(ScriptedChatModel):
    """Streams four words, then the connection drops."""

    def _stream(self, messages: Any, stop: Any = None, run_manager: Any = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        for word in ["The ", "transfer ", "was ", "approved"]:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=word))
            if run_manager is not None:
                run_manager.on_llm_new_token(word, chunk=chunk)
            yield chunk
        raise ConnectionError("stream reset by peer")


def test_a_fallback_that_answers_recovers_the_failure(cap: Capture) -> None:
    class Down(ScriptedChatModel):
        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("provider down")

    backup = ScriptedChatModel(respond=lambda _m: ai("fallback answer"))
    chain = (ChatPromptTemplate.from_messages([("user", "{q}")])
             | Down(model_name="gpt-4o").with_fallbacks([backup]) | StrOutputParser())
    assert chain.invoke({"q": "hi"}, _cfg()) == "fallback answer"
    events = cap.events()
    check_tree(events)
    error = next(e for e in events if e.kind == "error")
    recovered = next(e for e in events if e.name == "error_recovered")
    assert recovered.span_id == error.span_id
    assert recovered.data["payload"]["message"] == "provider down"
    # LangChain runs the fallbacks' models under the sequence, not under the fallbacks.
    assert recovered.data["payload"]["recovery_action"].startswith("handled in Runnable")
    assert events.index(error) < events.index(recovered) < len(events) - 1


def test_a_stream_that_fails_or_is_abandoned_keeps_what_the_model_said(cap: Capture) -> None:
    with pytest.raises(ConnectionError):
        for _chunk in _DropsMidStream().stream("did it go through?", _cfg()):
            pass
    model = ScriptedChatModel(respond=lambda _m: ai("Yes the transfer was approved",
                                                    input_tokens=9, output_tokens=5))
    for i, _chunk in enumerate(model.stream("status?", _cfg())):
        if i == 2:
            break
    gc.collect()
    failed, abandoned = [e for e in cap.events() if e.kind == "llm_call" and e.phase == "end"]
    assert failed.level == "error" and failed.data["status"] == "error"
    assert failed.data["error"] == {"type": "ConnectionError", "message": "stream reset by peer"}
    assert failed.data["response"] == "The transfer was approved"
    assert 0 <= failed.data["time_to_first_token_ms"] <= failed.data["duration_ms"]
    assert abandoned.level == "warning" and abandoned.data["status"] == "abandoned"
    assert abandoned.data["response"] == "Yes the"  # the chunks read before the break
    assert "error" not in abandoned.data


async def test_a_run_that_leaves_work_running_has_still_answered(cap: Capture) -> None:
    release = asyncio.Event()

    async def summarize(q: str) -> str:
        await release.wait()  # still running when the root run ends
        return "summary"

    summarizer = RunnableLambda(summarize, name="summarize")
    tasks: list[asyncio.Task[Any]] = []

    async def answer(q: str, config: RunnableConfig) -> str:
        tasks.append(asyncio.create_task(summarizer.ainvoke(q, config)))
        await asyncio.sleep(0)  # the background run starts
        return "the answer"

    assert await RunnableLambda(answer, name="agent").ainvoke("q", _cfg()) == "the answer"
    release.set()
    await asyncio.gather(*tasks)
    events = cap.events()
    root_end = next(e for e in events if e.kind == "agent" and e.phase == "end")
    assert root_end.data["status"] == "success"  # not taken for an abandoned stream
    assert next(e for e in events if e.kind == "output").data["content"] == "the answer"


def test_at_level_info_a_handled_failure_still_has_its_recovery(tmp_path: Path) -> None:
    def score(x: int) -> int:
        if x == 2:
            raise ValueError("cannot score 2")
        return x

    scorer = RunnableLambda(score, name="score")

    def score_all(items: list[int], config: RunnableConfig) -> list[Any]:
        return scorer.batch(items, config, return_exceptions=True)

    with capture_events(tmp_path, level="info") as cap:
        RunnableLambda(score_all, name="score_all").invoke([1, 2, 3], _cfg())
        events = cap.events()
    check_tree(events)
    assert [e.data["payload"]["recovery_action"] for e in events
            if e.name == "error_recovered"] == ["handled in score_all; the run continued"]


def test_a_parent_graph_update_without_a_goto_is_no_hand_off() -> None:
    from langgraph.errors import ParentCommand
    from tracevault_langchain.base import failure_of

    update = ParentCommand(Command(graph=Command.PARENT, update={"x": 1}))
    assert failure_of(update).status != "handed_off"
    assert failure_of(ParentCommand(Command(graph=Command.PARENT, goto="b"))).status == "handed_off"


@pytest.mark.parametrize("level", ["debug", "info"])
def test_retry_records_each_failure_and_the_recovery(tmp_path: Path, level: str) -> None:
    # At info the retried chain step is not recorded itself: its failures and their
    # recovery still are, at the nearest recorded run.
    attempts = {"n": 0}

    def flaky(x: int) -> int:
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise ConnectionError(f"attempt {attempts['n']} failed")
        return x * 2

    chain = RunnableLambda(lambda x: x) | RunnableLambda(flaky).with_retry(
        stop_after_attempt=3, wait_exponential_jitter=False)
    with capture_events(tmp_path, level=level) as cap:
        assert chain.invoke(21, _cfg()) == 42
        events = cap.events()
    check_tree(events)
    errors = [e.data["message"] for e in events if e.kind == "error"]
    assert errors == ["attempt 1 failed", "attempt 2 failed"]
    recovered = [e.data["payload"] for e in events if e.name == "error_recovered"]
    assert [r["recovery_action"] for r in recovered] == ["retried (attempt 2)",
                                                        "retried (attempt 3)"]
    assert events[-1].data["status"] == "success"


def test_custom_events_hang_under_their_run(cap: Capture) -> None:
    def work(x: int, config: RunnableConfig) -> int:
        dispatch_custom_event("progress", {"done": 1, "of": 2}, config=config)
        return x

    RunnableLambda(work).invoke(5, _cfg())
    events = cap.events()
    check_tree(events)
    custom = next(e for e in events if e.kind == "custom")
    assert (custom.name, custom.data) == ("progress", {"name": "progress",
                                                       "payload": {"done": 1, "of": 2}})
    assert custom.parent_span_id == events[0].span_id


def test_interrupt_and_resume_are_control_flow(cap: Capture) -> None:
    def ask(state: State) -> dict[str, list[str]]:
        answer = interrupt("approve the transfer?")
        return {"log": [f"approved={answer}"]}

    graph = StateGraph(State)
    graph.add_node("ask", ask)
    graph.add_edge(START, "ask")
    graph.add_edge("ask", END)
    app = graph.compile(checkpointer=InMemorySaver())
    config = _cfg(configurable={"thread_id": "thread-7"})
    first = app.invoke({"log": []}, config)
    assert "__interrupt__" in first
    assert app.invoke(Command(resume="yes"), config)["log"] == ["approved=yes"]
    events = cap.events()
    check_tree(events)
    assert not [e for e in events if e.kind == "error"]
    assert {e.session_id for e in events} == {"thread-7"}
    paused, resumed = _by_trace(events).values()
    stop = next(e for e in paused if e.name == "interrupt")
    assert stop.data["payload"]["interrupts"][0]["value"] == "approve the transfer?"
    node = next(e for e in paused if e.kind == "chain" and e.phase == "end")
    assert node.data["status"] == "interrupted"
    # The paused run gave no answer: it ends interrupted, with no output event.
    assert paused[-1].kind == "agent" and paused[-1].data["status"] == "interrupted"
    assert not [e for e in paused if e.kind == "output"]
    assert resumed[-1].data["status"] == "success"
    assert [e.kind for e in resumed if e.kind == "output"] == ["output"]
    go = next(e for e in resumed if e.kind == "input")
    assert go.data == {"type": "resume", "content": "yes"}
    assert any(e.name == "resume" for e in resumed)


def test_a_resume_deep_in_subgraphs_is_recorded_once(cap: Capture) -> None:
    # LangGraph reports the resume once per graph level it goes down (here three): one
    # interrupt, one resume.
    def ask(state: State) -> dict[str, list[str]]:
        return {"log": [f"approved={interrupt('approve?')}"]}

    inner = StateGraph(State)
    inner.add_node("ask", ask)
    inner.add_edge(START, "ask")
    middle = StateGraph(State)
    middle.add_node("inner", inner.compile())
    middle.add_edge(START, "inner")
    outer = StateGraph(State)
    outer.add_node("middle", middle.compile())
    outer.add_edge(START, "middle")
    app = outer.compile(checkpointer=InMemorySaver())
    config = _cfg(configurable={"thread_id": "deep"})
    app.invoke({"log": []}, config)
    assert app.invoke(Command(resume="yes"), config)["log"] == ["approved=yes"]
    events = cap.events()
    check_tree(events)
    paused, resumed = _by_trace(events).values()
    assert [e.name for e in paused if e.kind == "custom"] == ["interrupt"]
    resumes = [e for e in resumed if e.kind == "custom"]
    assert [e.name for e in resumes] == ["resume"]
    assert resumes[0].data["payload"]["checkpoint_ns"] == []  # the outer graph's
    assert resumed[-1].data["status"] == "success"


def _by_trace(events: list[AuditEvent]) -> dict[str | None, list[AuditEvent]]:
    runs: dict[str | None, list[AuditEvent]] = {}
    for ev in events:
        runs.setdefault(ev.trace_id, []).append(ev)
    return runs


def test_a_hand_off_to_another_agent_is_no_interrupt(cap: Capture) -> None:
    @lc_tool
    def transfer_to_b(tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:  # type: ignore[type-arg]
        """Hand the conversation to agent b."""
        return Command(graph=Command.PARENT, goto="b", update={
            "messages": [ToolMessage("Transferred to b", tool_call_id=tool_call_id)]})

    a = react_agent(ScriptedChatModel(messages=iter([
        ai("Handing off.", tool_calls=[tool_call("transfer_to_b", {}, "h1")])])),
        [transfer_to_b], name="a")
    b = react_agent(ScriptedChatModel(messages=iter([ai("B answers: 42")])), [], name="b")
    graph = StateGraph(MessagesState)
    graph.add_node("a", a, destinations=("b",))
    graph.add_node("b", b)
    graph.add_edge(START, "a")
    graph.compile().invoke({"messages": [HumanMessage("question?")]}, _cfg())
    events = cap.events()
    check_tree(events)
    handoffs = [e for e in events if e.name == "handoff"]
    assert [e.data for e in handoffs] == [{"name": "handoff", "payload": {"goto": "b"}}]
    stopped = [e for e in events if e.phase == "end" and e.data["status"] != "success"]
    assert stopped and {e.data["status"] for e in stopped} == {"handed_off"}
    assert {e.name for e in stopped} == {"tools", "a"}
    assert not [e for e in events if e.kind == "error"]
    assert next(e for e in events if e.kind == "output").data["content"] == "B answers: 42"
    assert events[-1].data["status"] == "success"


def test_an_edit_of_a_threads_state_is_no_agent_run(cap: Capture) -> None:
    agent = react_agent(weather_model(), [get_weather], checkpointer=InMemorySaver())
    config: RunnableConfig = {**_cfg(), "configurable": {"thread_id": "t1"}}
    agent.invoke({"messages": [HumanMessage("Paris")]}, config)
    before = len(cap.events())
    agent.update_state(config, {"messages": [AIMessage("An edited answer.")]}, as_node="agent")
    events = cap.events()[before:]
    check_tree(events)
    assert not [e for e in events if e.kind in ("agent", "input", "output")]
    update = next(e for e in events if e.name == "state_update")
    assert update.data["payload"]["messages"][0]["content"] == "An edited answer."
    assert update.session_id == "t1"


def test_direct_model_call_is_a_root_with_input_and_output(cap: Capture) -> None:
    model = _answer_model("hello")
    model.invoke("hi there", _cfg())
    events = cap.events()
    check_tree(events)
    assert kinds(events) == [
        ("llm_call", "start", "gpt-4o-mini"),
        ("input", "point", "user_message"),
        ("llm_call", "end", "gpt-4o-mini"),
        ("output", "point", "final_answer"),
    ]
    out = events[-1].data
    assert out["content"] == "hello"
    assert out["cost"] == pytest.approx(cost_of("gpt-4o-mini", 12, 3))


class FlakyModel(ScriptedChatModel):
    """A provider client that retries overloaded calls and reports each retry."""

    failures: int = 2

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None,
                  **kwargs: Any) -> ChatResult:
        def report(state: RetryCallState) -> None:
            if run_manager is not None:
                run_manager.on_retry(state)

        for attempt in Retrying(stop=stop_after_attempt(3), wait=wait_none(), reraise=True,
                                retry=retry_if_exception_type(ConnectionError),
                                before_sleep=report):
            with attempt:
                if self.failures:
                    self.failures -= 1
                    raise ConnectionError(f"overloaded ({self.failures} more)")
        return super()._generate(messages, stop, run_manager, **kwargs)


def test_model_retries_are_errors_with_their_recovery(cap: Capture) -> None:
    model = FlakyModel(respond=lambda _m: ai("fine", input_tokens=5, output_tokens=1))
    assert model.invoke("hi", _cfg()).content == "fine"
    events = cap.events()
    check_tree(events)
    errors = [e for e in events if e.kind == "error"]
    assert [(e.level, e.data["message"], e.data["recovery_action"]) for e in errors] == [
        ("warning", "overloaded (1 more)", "retried (attempt 2)"),
        ("warning", "overloaded (0 more)", "retried (attempt 3)"),
    ]
    llm_end = next(e for e in events if e.kind == "llm_call" and e.phase == "end")
    assert {e.span_id for e in errors} == {llm_end.span_id}
    assert llm_end.data["status"] == "success"


def test_text_completion_model_records_its_prompt(cap: Capture) -> None:
    llm = FakeListLLM(responses=["42"])
    chain = PromptTemplate.from_template("What is {x}?") | llm
    assert chain.invoke({"x": "6*7"}, _cfg()) == "42"
    events = cap.events()
    check_tree(events)
    start = next(e for e in events if e.kind == "llm_call" and e.phase == "start")
    assert start.data["prompt"] == "What is 6*7?"
    end = next(e for e in events if e.kind == "llm_call" and e.phase == "end")
    assert end.data["response"] == "42"
    assert next(e for e in events if e.kind == "output").data["content"] == "42"


def test_slow_tool_yields_a_warning(tmp_path: Path) -> None:
    @lc_tool
    def crawl(url: str) -> str:
        """Fetch a page."""
        return f"page {url}"

    with capture_events(tmp_path, slow_tool_ms=0.0) as slow:
        crawl.invoke({"url": "https://example.test"},
                     config={"callbacks": [TracevaultCallbackHandler()]})
        events = slow.events()
    warning = next(e for e in events if e.level == "warning")
    tool_end = next(e for e in events if e.kind == "tool_call" and e.phase == "end")
    assert warning.name == "slow_tool_call" and warning.kind == "custom"
    assert warning.data["payload"]["tool_name"] == "crawl"
    assert warning.data["payload"]["duration_ms"] == tool_end.data["duration_ms"]
    assert warning.data["payload"]["threshold_ms"] == 0.0


def test_every_failure_is_recorded_even_when_exception_ids_are_reused(cap: Capture) -> None:
    @lc_tool
    def flaky(x: int) -> str:
        """Always fails."""
        raise ValueError(f"boom {x}")

    def body(_: Any, config: RunnableConfig) -> int:
        caught = 0
        for i in range(60):  # each exception is freed before the next: ids get reused
            try:
                flaky.invoke({"x": i}, config=config)
            except ValueError:
                caught += 1
        return caught

    assert RunnableLambda(body).invoke("go", config=_cfg()) == 60
    events = cap.events()
    messages = [e.data["message"] for e in events if e.kind == "error"]
    assert messages == [f"boom {i}" for i in range(60)]
    assert sum(1 for e in events if e.kind == "tool_call" and e.phase == "end") == 60


def test_one_exception_failing_a_whole_batch_is_one_error_in_each_run(cap: Capture) -> None:
    # A retry wrapper's batch re-raises an error it does not retry for every input: the
    # same exception object fails three runs, and bubbles up two levels in each.
    def step(x: int) -> int:
        if x == 1:
            raise ValueError("bad input 1")
        return x

    chain = RunnableLambda(lambda x: x) | RunnableLambda(step).with_retry(
        stop_after_attempt=2, wait_exponential_jitter=False,
        retry_if_exception_type=(ConnectionError,))
    results = chain.batch([1, 2, 3], _cfg(), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    events = cap.events()
    check_tree(events)
    errors: dict[str | None, list[str]] = {}
    for e in events:
        if e.kind == "error":
            errors.setdefault(e.trace_id, []).append(e.data["message"])
    assert sorted(errors.values()) == [["bad input 1"]] * 3


async def test_a_tool_stopped_by_cancellation_or_an_interrupt_has_not_failed(
    cap: Capture,
) -> None:
    started = asyncio.Event()

    @lc_tool
    async def slow(x: int) -> str:
        """Wait until cancelled."""
        started.set()
        await asyncio.wait_for(asyncio.Event().wait(), timeout=60)  # bounded all the same
        return "late"

    @lc_tool
    def approve(x: int) -> str:
        """Needs a human's approval."""
        return str(interrupt("ok?"))

    def calls(name: str) -> Any:
        def script(messages: list[BaseMessage]) -> AIMessage:
            if not any(m.type == "tool" for m in messages):
                return ai("", tool_calls=[tool_call(name, {"x": 1}, "c1")])
            return ai("done")
        return script

    cancelled = react_agent(ScriptedChatModel(respond=calls("slow")), [slow])
    task = asyncio.create_task(cancelled.ainvoke({"messages": [HumanMessage("go")]}, _cfg()))
    await asyncio.wait_for(started.wait(), timeout=60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    paused = react_agent(ScriptedChatModel(respond=calls("approve")), [approve],
                         checkpointer=InMemorySaver())
    paused.invoke({"messages": [HumanMessage("go")]},
                  _cfg(configurable={"thread_id": "t-1"}))
    events = cap.events()
    check_tree(events)
    assert not [e for e in events if e.kind == "error"]
    ends = [(e.name, e.data["status"], e.level) for e in events
            if e.kind == "tool_call" and e.phase == "end"]
    assert ends == [("slow", "cancelled", "warning"), ("approve", "interrupted", "info")]
    assert not [e for e in events if e.kind == "tool_call" and "error" in e.data]
    roots = [e.data["status"] for e in events if e.kind == "agent" and e.phase == "end"]
    assert roots == ["cancelled", "interrupted"]


def test_a_graph_nodes_retry_policy_recovers_each_failed_attempt(cap: Capture) -> None:
    attempts = {"n": 0}

    def flaky(state: State) -> dict[str, list[str]]:
        attempts["n"] += 1
        if attempts["n"] < 3:
            raise ConnectionError(f"node attempt {attempts['n']} failed")
        return {"log": ["ok"]}

    graph = StateGraph(State)
    graph.add_node("flaky", flaky, retry_policy=RetryPolicy(
        max_attempts=3, initial_interval=0.001, jitter=False, retry_on=ConnectionError))
    graph.add_edge(START, "flaky")
    graph.add_edge("flaky", END)
    assert graph.compile().invoke({"log": []}, _cfg())["log"] == ["ok"]
    events = cap.events()
    check_tree(events)
    errors = [e for e in events if e.kind == "error"]
    assert [e.data["message"] for e in errors] == ["node attempt 1 failed",
                                                   "node attempt 2 failed"]
    recovered = [e for e in events if e.name == "error_recovered"]
    assert [(r.span_id, r.data["payload"]["message"], r.data["payload"]["recovery_action"])
            for r in recovered] == [(e.span_id, e.data["message"], "retried") for e in errors]
    assert events[-1].data["status"] == "success"
