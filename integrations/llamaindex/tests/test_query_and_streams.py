"""Query engines over a VectorStoreIndex, streaming, abandoned streams and LLM failures."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import pytest
from li_agents import ChatOnlyLLM, check_tree
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import ChatResponse
from llama_index.core.chat_engine import (
    CondensePlusContextChatEngine,
    ContextChatEngine,
    SimpleChatEngine,
)
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import (
    ChatMessage,
    CompletionResponse,
    CustomLLM,
    LLMMetadata,
    MockFunctionCallingLLM,
    MockLLM,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.postprocessor import StructuredLLMRerank
from tracevault_llamaindex.instrument import Installed
from tracevault_llamaindex.testing import ScriptedReActLLM

import tracevault
from tracevault.schema import AuditEvent
from tracevault.testing import Capture

DOCS = [
    Document(text="Paris is the capital of France.", id_="france"),
    Document(text="Berlin is the capital of Germany.", id_="germany"),
    Document(text="Rome is the capital of Italy.", id_="italy"),
]


def _index() -> VectorStoreIndex:
    return VectorStoreIndex.from_documents(DOCS, embed_model=MockEmbedding(embed_dim=8))


# A root query's steps, up to the end of its retrieval.
_RETRIEVED = [
    ("chain", "start", "query"), ("input", "point", "query"),
    ("retrieval", "start", "retrieve"),
    ("chain", "start", "embedding"), ("chain", "end", "embedding"),
    ("retrieval", "end", "retrieve"),
]


def _trace_of(events: list[AuditEvent], kind: str, name: str) -> list[AuditEvent]:
    root = next(e for e in events if e.kind == kind and e.name == name and e.phase == "start")
    return [e for e in events if e.trace_id == root.trace_id]


def test_query_engine(cap: Capture, instrumented: Installed) -> None:
    engine = _index().as_query_engine(llm=MockLLM(max_tokens=6), similarity_top_k=2)
    response = engine.query("What is the capital of France?")
    events = cap.events()
    check_tree(events)
    trace = _trace_of(events, "chain", "query")
    assert [(e.kind, e.phase, e.name) for e in trace] == [
        *_RETRIEVED,
        ("chain", "start", "synthesize"),
        ("llm_call", "start", "unknown"), ("llm_call", "end", "unknown"),
        ("chain", "end", "synthesize"),
        ("chain", "end", "query"), ("output", "point", "final_answer"),
    ]
    query, retrieval_end = trace[0], trace[5]
    assert trace[1].data == {"type": "query", "content": "What is the capital of France?"}
    assert retrieval_end.parent_span_id == query.span_id
    assert retrieval_end.data["query"] == "What is the capital of France?"
    docs = retrieval_end.data["documents"]
    assert len(docs) == 2
    assert {d["content"] for d in docs} <= {d.text for d in DOCS}
    assert all(isinstance(d["score"], float) and d["id"] for d in docs)
    synth = trace[6]
    assert synth.parent_span_id == query.span_id
    llm_start = trace[7]
    assert llm_start.parent_span_id == synth.span_id
    assert "Paris is the capital of France." in llm_start.data["prompt"] or any(
        d["content"] in llm_start.data["prompt"] for d in docs)
    assert trace[-1].data["content"] == str(response) == trace[8].data["response"]
    # building the index embedded the documents in a trace of its own
    index_trace = [e for e in events if e.trace_id != query.trace_id]
    assert [(e.kind, e.name) for e in index_trace] == [("chain", "embedding")] * 2
    assert index_trace[1].data["outputs"] == {"chunks": 3, "dimensions": 8}


class _Judge(CustomLLM):
    """A reranking model: of the documents it is shown, the second is the relevant one."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="gpt-4o-mini")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=json.dumps({"documents": [
            {"document_number": 2, "relevance": 9}, {"document_number": 1, "relevance": 4}]}))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError


def test_a_reranked_query_records_the_rerank_step(
    cap: Capture, instrumented: Installed
) -> None:
    rerank = StructuredLLMRerank(llm=_Judge(), top_n=1, choice_batch_size=5)
    engine = _index().as_query_engine(llm=MockLLM(max_tokens=6), similarity_top_k=2,
                                      node_postprocessors=[rerank])
    engine.query("What is the capital of France?")
    events = cap.events()
    check_tree(events)
    trace = _trace_of(events, "chain", "query")
    assert [(e.kind, e.phase, e.name) for e in trace] == [
        *_RETRIEVED,
        ("retrieval", "start", "rerank"),
        ("llm_call", "start", "gpt-4o-mini"), ("llm_call", "end", "gpt-4o-mini"),
        ("retrieval", "end", "rerank"),
        ("chain", "start", "synthesize"),
        ("llm_call", "start", "unknown"), ("llm_call", "end", "unknown"),
        ("chain", "end", "synthesize"),
        ("chain", "end", "query"), ("output", "point", "final_answer"),
    ]
    query, retrieved, rerank_start, judge, rerank_end = (trace[0], trace[5], trace[6],
                                                         trace[7], trace[9])
    assert rerank_start.parent_span_id == query.span_id
    assert rerank_start.data == {"query": "What is the capital of France?",
                                 "model": "gpt-4o-mini", "top_n": 1, "candidates": 2}
    assert judge.parent_span_id == rerank_start.span_id  # the model call that ranked them
    assert rerank_end.span_id == rerank_start.span_id
    # The judge's pick: the second document it was shown, with its relevance as score.
    second = retrieved.data["documents"][1]
    assert rerank_end.data["documents"] == [{**second, "score": 9.0}]


def test_streaming_query_engine_is_one_tree(cap: Capture, instrumented: Installed) -> None:
    llm = ScriptedReActLLM(thought="Paris is the capital of France.", action="none")
    engine = _index().as_query_engine(llm=llm, similarity_top_k=2, streaming=True)
    response = engine.query("What is the capital of France?")
    text = "".join(response.response_gen)  # the LLM runs only now, after query returned
    events = cap.events()
    check_tree(events)
    trace = _trace_of(events, "chain", "query")
    assert [(e.kind, e.phase, e.name) for e in trace] == [
        *_RETRIEVED,
        ("chain", "start", "synthesize"),
        ("chain", "end", "synthesize"), ("chain", "end", "query"),  # they return a stream
        ("llm_call", "start", "gpt-4o-mini"), ("llm_call", "end", "gpt-4o-mini"),
        ("output", "point", "final_answer"),
    ]
    query, synth = trace[0], trace[6]
    assert trace[8].data["outputs"] == {"response": None}
    llm_start, llm_end, output = trace[-3:]
    assert llm_start.parent_span_id == synth.span_id  # hung under the step that streamed
    assert llm_end.data["streamed"] is True and llm_end.data["time_to_first_token_ms"] >= 0
    assert llm_end.data["response"] == text
    assert llm_end.data["usage"] == {"input": 120, "output": 30, "total": 150}
    assert output.parent_span_id == query.span_id and output.data["content"] == text


async def test_abandoned_stream_is_marked(cap: Capture, instrumented: Installed) -> None:
    llm = ScriptedReActLLM(thought="one two three four five six seven")
    stream = await llm.astream_chat([ChatMessage(role="user", content="hi")])
    first = await stream.__anext__()
    assert first.delta
    await stream.aclose()  # the consumer stops reading
    gc.collect()
    events = cap.events()
    check_tree(events)
    assert [(e.kind, e.phase) for e in events] == [("llm_call", "start"), ("llm_call", "end")]
    end = events[1]
    assert end.level == "warning"
    assert end.data["status"] == "abandoned" and end.data["streamed"] is True
    assert end.data["reason"] == "the consumer stopped reading"
    assert end.data["response"] == first.message.content  # what had arrived
    assert "usage" not in end.data


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
async def test_a_stream_read_in_part_then_dropped_is_abandoned_not_an_error(
    cap: Capture, instrumented: Installed, asynchronous: bool
) -> None:
    # `for chunk in stream: break` and nothing closes the stream: it is collected, and
    # CPython clears its weak references before the GeneratorExit reaches the wrapper.
    llm = ScriptedReActLLM(thought="one two three four five six seven")
    messages = [ChatMessage(role="user", content="hi")]
    if asynchronous:
        chunk = await anext(aiter(await llm.astream_chat(messages)))
    else:
        chunk = next(iter(llm.stream_chat(messages)))
    partial = chunk.message.content
    del chunk
    gc.collect()
    events = cap.events()
    check_tree(events)
    assert [(e.kind, e.phase) for e in events] == [("llm_call", "start"), ("llm_call", "end")]
    end = events[1]
    assert end.level == "warning" and end.data["status"] == "abandoned"
    assert end.data["reason"] == "the consumer stopped reading"
    assert end.data["response"] == partial and partial
    assert end.data["time_to_first_token_ms"] >= 0


def test_streams_of_many_short_lived_models_leave_no_state(
    cap: Capture, instrumented: Installed
) -> None:
    for i in range(50):
        text = "".join(c.delta or "" for c in MockLLM(max_tokens=3).stream_complete(f"q{i}"))
        assert text
    rec = instrumented.recorder
    assert (rec.lazy, rec.llm, rec.streams, rec.spans, rec.dups) == ({}, {}, {}, {}, {})
    assert len([e for e in cap.events() if e.kind == "llm_call" and e.phase == "end"]) == 50


def test_unread_stream_is_marked_when_collected(cap: Capture, instrumented: Installed) -> None:
    llm = MockLLM(max_tokens=4)
    stream = llm.stream_complete("never read")
    del stream
    gc.collect()
    events = cap.events()
    assert [(e.kind, e.phase) for e in events] == [("llm_call", "start"), ("llm_call", "end")]
    assert events[1].data["status"] == "abandoned"
    assert events[1].data["reason"] == "stream never read"


def test_unread_chat_streams_leave_no_state(cap: Capture, instrumented: Installed) -> None:
    # stream_chat calls stream_complete inside (a nested duplicate of the same call) and
    # returns at once: read never, the inner call reports no end of its own.
    llm = MockLLM(max_tokens=4)
    for _ in range(3):
        stream = llm.stream_chat([ChatMessage(role="user", content="hi")])
        del stream
        gc.collect()
    rec = instrumented.recorder
    assert (rec.lazy, rec.llm, rec.spans, rec.dups) == ({}, {}, {}, {})
    ends = [e for e in cap.events() if e.kind == "llm_call" and e.phase == "end"]
    assert [e.data["reason"] for e in ends] == ["stream never read"] * 3


async def test_llm_failure_is_one_error(cap: Capture, instrumented: Installed) -> None:
    def broken(messages: Any, **kwargs: Any) -> ChatMessage:
        raise ConnectionError("model endpoint unreachable")

    agent = FunctionAgent(tools=[], llm=MockFunctionCallingLLM(response_generator=broken),
                          streaming=False)
    with pytest.raises(Exception, match="unreachable"):
        await agent.run(user_msg="hello")
    events = cap.events()
    check_tree(events)
    assert [(e.kind, e.phase) for e in events] == [
        ("agent", "start"), ("input", "point"), ("llm_call", "start"), ("llm_call", "end"),
        ("error", "point"), ("agent", "end"),
    ]
    llm_end, error, run_end = events[3], events[4], events[5]
    assert llm_end.data["status"] == "error" and llm_end.level == "error"
    assert error.data["type"] == "ConnectionError" and "recovery_action" not in error.data
    assert error.span_id == llm_end.span_id
    assert run_end.data["status"] == "error" and run_end.level == "error"


def test_a_call_with_the_same_prompt_beside_an_unread_stream_is_its_own_call(
    cap: Capture, instrumented: Installed
) -> None:
    llm = MockLLM(max_tokens=5)
    stream = llm.stream_complete("what is my balance")  # lazy: its real call comes later
    answer = llm.complete("what is my balance")  # a separate call, not the nested one
    chunks = list(stream)
    calls = [e for e in cap.events() if e.kind == "llm_call"]
    assert [(e.phase, e.data.get("status")) for e in calls if e.phase == "end"] == [
        ("end", "success"),
        ("end", "success"),
    ]
    assert len({e.span_id for e in calls}) == 2
    responses = sorted(e.data["response"] for e in calls if e.phase == "end")
    assert responses == sorted([answer.text, chunks[-1].text])


class _Stalls(ChatOnlyLLM):
    """Streams one chunk, then waits for the next one until cancelled."""

    @llm_chat_callback()
    async def astream_chat(self, messages: Any, **kwargs: Any) -> Any:
        async def chunks() -> Any:
            yield ChatResponse(message=ChatMessage(role="assistant", content="Hel"),
                               delta="Hel")
            await asyncio.wait_for(asyncio.Event().wait(), timeout=60)  # the network
            yield ChatResponse(message=ChatMessage(role="assistant", content="Hello"),
                               delta="lo")
        return chunks()


async def test_a_stream_cancelled_while_it_waits_is_cancelled_not_failed(
    cap: Capture, instrumented: Installed
) -> None:
    first_chunk = asyncio.Event()

    async def read() -> None:
        stream = await _Stalls().astream_chat([ChatMessage(role="user", content="hi")])
        async for _chunk in stream:
            first_chunk.set()

    task = asyncio.create_task(read())
    await asyncio.wait_for(first_chunk.wait(), timeout=60)
    task.cancel()  # while the stream waits for its next chunk
    with pytest.raises(asyncio.CancelledError):
        await task
    events = cap.events()
    check_tree(events)
    assert [(e.kind, e.phase) for e in events] == [("llm_call", "start"), ("llm_call", "end")]
    end = events[1]
    assert end.level == "warning" and end.data["status"] == "cancelled"
    assert end.data["response"] == "Hel"  # what had arrived


def _engines() -> dict[str, Any]:
    retriever = _index().as_retriever(similarity_top_k=1)
    return {
        "simple": SimpleChatEngine.from_defaults(llm=MockLLM(max_tokens=4)),
        "context": ContextChatEngine.from_defaults(retriever, llm=MockLLM(max_tokens=4)),
        "condense_plus_context": CondensePlusContextChatEngine.from_defaults(
            retriever, llm=MockLLM(max_tokens=4)),
    }


@pytest.mark.parametrize("engine", ["simple", "context", "condense_plus_context"])
@pytest.mark.parametrize("how", ["chat", "achat", "stream_chat", "astream_chat"])
async def test_a_chat_engine_turn_is_a_tree_with_its_message_and_answer(
    cap: Capture, instrumented: Installed, engine: str, how: str
) -> None:
    chat_engine = _engines()[engine]
    question = "What is the capital of France?"
    if how == "chat":
        answer = str(chat_engine.chat(question))
    elif how == "achat":
        answer = str(await chat_engine.achat(question))
    elif how == "stream_chat":
        answer = "".join(chat_engine.stream_chat(question).response_gen)
    else:
        streamed = await chat_engine.astream_chat(question)
        answer = "".join([token async for token in streamed.async_response_gen()])
    events = _trace_of(cap.events(), "chain", "chat")  # building the index is another
    check_tree(events)
    turn = events[0]
    assert (turn.kind, turn.phase, turn.parent_span_id) == ("chain", "start", None)
    assert all(e.parent_span_id is not None for e in events if e.span_id != turn.span_id)
    message = [e for e in events if e.kind == "input"]
    assert [(e.data, e.parent_span_id) for e in message] == [
        ({"type": "user_message", "content": question}, turn.span_id)]
    output = [e for e in events if e.kind == "output"]
    assert len(output) == 1 and output[0].parent_span_id == turn.span_id
    answered = [e for e in events if e.kind == "llm_call" and e.phase == "end"][-1]
    assert output[0].data["content"] == answered.data["response"]
    if not how.startswith(("stream", "astream")):
        assert output[0].data["content"] == answer


class _Words(CustomLLM):
    """Streams "the answer is 42" word by word."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="gpt-4o-mini")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        return CompletionResponse(text="the answer is 42")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        def words() -> Any:
            text = ""
            for word in ["the ", "answer ", "is ", "42"]:
                text += word
                yield CompletionResponse(text=text, delta=word)
        return words()


@pytest.mark.parametrize("mode", ["compact", "refine", "tree_summarize", "simple_summarize"])
def test_every_streaming_response_mode_records_its_answer(
    cap: Capture, instrumented: Installed, mode: str
) -> None:
    # tree_summarize and simple_summarize open their model call before query() returns.
    engine = _index().as_query_engine(llm=_Words(), streaming=True, response_mode=mode)
    answer = "".join(engine.query("What is the capital of France?").response_gen)
    events = _trace_of(cap.events(), "chain", "query")
    check_tree(events)
    outputs = [e for e in events if e.kind == "output"]
    assert [e.data["content"] for e in outputs] == [answer] == ["the answer is 42"]
    assert outputs[0].parent_span_id == events[0].span_id


def test_a_stream_read_in_another_context_keeps_the_session_of_its_query(
    cap: Capture, instrumented: Installed
) -> None:
    engine = _index().as_query_engine(llm=_Words(), streaming=True)
    with tracevault.context(session_id="alice-session", user_id="alice"):
        response = engine.query("What is the capital of France?")
    with tracevault.context(session_id="bob-session", user_id="bob"):  # the server reads it
        "".join(response.response_gen)
    events = _trace_of(cap.events(), "chain", "query")
    assert {e.kind for e in events} >= {"llm_call", "output"}
    assert {(e.session_id, e.user_id) for e in events} == {("alice-session", "alice")}
