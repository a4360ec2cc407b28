"""A LangChain agent whose tool queries a LlamaIndex engine: one session, one tree."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.tools import tool
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from tracevault_langchain import TracevaultCallbackHandler
from tracevault_langchain.testing import ScriptedChatModel, ai, tool_call
from tracevault_llamaindex.instrument import Installed

import tracevault
from tracevault.testing import Capture, capture_events

DOCS = [
    Document(text="Paris is the capital of France.", id_="france"),
    Document(text="Rome is the capital of Italy.", id_="italy"),
]


def _agent() -> Any:
    engine = VectorStoreIndex.from_documents(
        DOCS, embed_model=MockEmbedding(embed_dim=8)
    ).as_query_engine(llm=MockLLM(max_tokens=6), similarity_top_k=1)

    @tool
    def lookup(question: str) -> str:
        """Answer a question from the document index."""
        return str(engine.query(question))

    model = ScriptedChatModel(
        messages=iter(
            [
                ai(
                    tool_calls=[tool_call("lookup", {"question": "capital of France?"}, "c1")],
                    input_tokens=20,
                    output_tokens=5,
                ),
                ai("Paris.", input_tokens=30, output_tokens=2),
            ]
        )
    )
    return create_agent(model, [lookup])


@pytest.mark.parametrize("mode", ["invoke", "ainvoke"])
def test_llamaindex_inside_a_langchain_tool_joins_the_tree(
    cap: Capture, instrumented: Installed, mode: str
) -> None:
    agent = _agent()
    config: Any = {"callbacks": [TracevaultCallbackHandler()]}
    request = {"messages": [("user", "What is the capital of France?")]}
    with tracevault.context(session_id="mixed-frameworks", user_id="ada"):
        if mode == "invoke":
            agent.invoke(request, config=config)
        else:
            asyncio.run(agent.ainvoke(request, config=config))
    everything = cap.events()
    root = next(e for e in everything if e.kind == "agent" and e.phase == "start")
    events = [e for e in everything if e.trace_id == root.trace_id]
    # Only building the index (embedding the documents, before the run) is elsewhere.
    assert {e.name for e in everything if e not in events} == {"embedding"}
    assert {e.framework for e in events} == {"langchain", "llamaindex"}
    assert {e.session_id for e in events} == {"mixed-frameworks"}
    assert {e.user_id for e in events} == {"ada"}
    spans = {e.span_id for e in events if e.span_id}
    orphans = [e for e in events if e.parent_span_id and e.parent_span_id not in spans]
    assert orphans == []
    lc_tool = next(e for e in events if e.kind == "tool_call" and e.phase == "start")
    li_root = next(e for e in events if e.framework == "llamaindex" and e.name == "query")
    assert li_root.parent_span_id == lc_tool.span_id
    # The query's retrieval and synthesis hang below the LangChain tool.
    by_span = {e.span_id: e for e in events if e.span_id}
    retrieval = next(e for e in events if e.kind == "retrieval" and e.phase == "end")
    ancestors = []
    node = retrieval
    while node.parent_span_id:
        node = by_span[node.parent_span_id]
        ancestors.append(node.span_id)
    assert lc_tool.span_id in ancestors
    tool_end = next(e for e in events if e.kind == "tool_call" and e.phase == "end")
    answer = next(
        e
        for e in events
        if e.framework == "llamaindex" and e.kind == "llm_call" and e.phase == "end"
    )
    assert tool_end.data["status"] == "success"
    assert tool_end.data["result"] == answer.data["response"]


async def test_what_a_llamaindex_tool_runs_hangs_under_its_call(
    cap: Capture, instrumented: Installed
) -> None:
    from langchain_core.runnables import RunnableLambda
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.llms import MockFunctionCallingLLM
    from llama_index.core.tools import FunctionTool
    from tracevault_llamaindex.testing import tool_then_answer

    chain = RunnableLambda(lambda text: text.upper())
    log = tracevault.AuditLogger()

    async def shout(text: str) -> str:
        """Shout, through a LangChain runnable."""
        log.log_reasoning("about to shout")
        result: str = await chain.ainvoke(text, {"callbacks": [TracevaultCallbackHandler()]})
        return result

    agent = FunctionAgent(tools=[FunctionTool.from_defaults(shout)], streaming=False,
                          llm=MockFunctionCallingLLM(response_generator=tool_then_answer(
                              [("shout", {"text": "hi"})], "HI")))
    with tracevault.context(session_id="one"):
        await agent.run(user_msg="shout hi")
        log.log_reasoning("after the run")  # the tool's span is current no more
    events = cap.events()
    call = next(e for e in events if e.kind == "tool_call" and e.phase == "start")
    assert {e.trace_id for e in events[:-1]} == {call.trace_id}
    inside = [e for e in events if e.framework != "llamaindex"][:-1]
    assert [(e.framework, e.kind, e.phase) for e in inside] == [
        ("manual", "reasoning", "point"), ("langchain", "agent", "start"),
        ("langchain", "input", "point"), ("langchain", "output", "point"),
        ("langchain", "agent", "end")]
    tops = [e for e in inside if e.kind in ("reasoning", "agent")]
    assert {e.parent_span_id for e in tops} == {call.span_id}
    after = events[-1]
    assert after.data["thought"] == "after the run" and after.parent_span_id is None
    assert {e.session_id for e in events} == {"one"}


async def test_a_llamaindex_run_inside_a_logger_tool_call_is_in_its_session(
    cap: Capture, instrumented: Installed
) -> None:
    from li_agents import function_agent

    log = tracevault.AuditLogger(session_id="chat-42", user_id="alice")
    with log.tool_call("delegate", {"q": "2+3"}) as call:
        call.result = str(await function_agent().run(user_msg="2+3"))
    events = cap.events()
    assert {(e.session_id, e.user_id) for e in events} == {("chat-42", "alice")}
    assert {e.trace_id for e in events} == {log.trace_id}
    run = next(e for e in events if e.framework == "llamaindex")
    assert run.parent_span_id == events[0].span_id  # under the logger's tool call


class _OfflineLLM(MockLLM):
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise RuntimeError("index offline")


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_an_error_crossing_from_llamaindex_into_langchain_is_recorded_once(
    tmp_path: Any, instrumented: Installed, writer: str
) -> None:
    # Raised inside the LlamaIndex query, it fails the LangChain tool too: one failure,
    # recorded where it happened — also when a writer process interprets LangChain's
    # callbacks (the exception's marks travel with it).
    engine = VectorStoreIndex.from_documents(
        DOCS, embed_model=MockEmbedding(embed_dim=8)
    ).as_query_engine(llm=_OfflineLLM(), similarity_top_k=1)

    @tool
    def lookup(question: str) -> str:
        """Answer a question from the document index."""
        return str(engine.query(question))

    with capture_events(tmp_path, writer=writer) as cap:
        with pytest.raises(RuntimeError, match="index offline"):
            lookup.invoke({"question": "capital?"}, {"callbacks": [TracevaultCallbackHandler()]})
        events = cap.events()
    errors = [e for e in events if e.kind == "error"]
    assert [(e.framework, e.data["message"]) for e in errors] == [
        ("llamaindex", "index offline")]
    tool_end = next(e for e in events if e.kind == "tool_call" and e.phase == "end")
    assert tool_end.data["status"] == "error"
