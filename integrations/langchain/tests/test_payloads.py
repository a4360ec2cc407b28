"""Payloads that are not JSON are recorded faithfully; tool calls and usage survive."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import uuid
from typing import Any

import numpy as np
import pytest
from langchain_core.callbacks import dispatch_custom_event
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tools import tool
from lc_agents import get_weather, lc_agent, weather_model
from lc_tree import check_tree
from pydantic import BaseModel
from tracevault_langchain import TracevaultCallbackHandler, convert
from tracevault_langchain.testing import ScriptedChatModel, ai, tool_call

from tracevault.pricing import cost_of
from tracevault.testing import Capture


class Order(BaseModel):
    id: int
    items: list[str]


@dataclasses.dataclass
class Point:
    x: float
    y: float


def _cfg() -> RunnableConfig:
    return {"callbacks": [TracevaultCallbackHandler()]}


def _message_with_calls() -> AIMessage:
    return AIMessage(
        "thinking out loud",
        tool_calls=[tool_call("lookup", {"q": "x"}, "t1")],
        usage_metadata={"input_tokens": 7, "output_tokens": 2, "total_tokens": 9},
    )


def test_rich_tool_arguments_and_results(cap: Capture) -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    key = uuid.UUID("12345678-1234-5678-1234-567812345678")

    @tool
    def inspect(order: Order, values: Any) -> dict[str, Any]:
        """Return everything, untouched."""
        return {"order": order, "point": Point(1.5, -2.0), "array": np.arange(3),
                "scalar": np.float32(0.5), "when": when, "id": key, "raw": b"\x00\xff",
                "tags": {"b", "a"}, "error": ValueError("bad input"),
                "nan": float("nan"), "values": values}

    inspect.invoke({"order": Order(id=7, items=["tea"]), "values": np.array([[1, 2], [3, 4]])},
                   _cfg())
    events = cap.events()
    check_tree(events)
    start, end = (e for e in events if e.kind == "tool_call")
    assert start.data["parameters"]["order"] == {"id": 7, "items": ["tea"]}
    assert start.data["parameters"]["values"] == [[1, 2], [3, 4]]
    result = end.data["result"]
    assert result["order"] == {"id": 7, "items": ["tea"]}
    assert result["point"] == {"x": 1.5, "y": -2.0}
    assert result["array"] == [0, 1, 2]
    assert result["scalar"] == 0.5
    assert result["when"] == "2026-01-02T03:04:05+00:00"
    assert result["id"] == str(key)
    assert result["raw"] == {"$bytes": "sha256", "sha256": hashlib.sha256(b"\x00\xff").hexdigest(),
                             "size": 2}
    assert result["tags"] == ["a", "b"]
    assert result["error"]["type"] == "ValueError"
    assert result["error"]["message"] == "bad input"
    assert result["nan"] == "NaN"


def test_messages_llmresult_documents_and_cycles_in_custom_payloads(cap: Capture) -> None:
    cyclic: dict[str, Any] = {"name": "loop"}
    cyclic["self"] = cyclic
    result = LLMResult(generations=[[ChatGeneration(message=_message_with_calls())]])

    def work(_: Any, config: RunnableConfig) -> str:
        dispatch_custom_event("payload", {
            "message": _message_with_calls(), "result": result,
            "document": Document("text", metadata={"page": 3}), "cyclic": cyclic,
        }, config=config)
        return "done"

    RunnableLambda(work).invoke(None, _cfg())
    payload = next(e for e in cap.events() if e.kind == "custom").data["payload"]
    message = payload["message"]
    assert message["tool_calls"][0]["name"] == "lookup"
    assert message["usage_metadata"]["total_tokens"] == 9
    generation = payload["result"]["generations"][0][0]["message"]
    assert generation["tool_calls"][0]["args"] == {"q": "x"}, "model_dump dropped tool calls"
    assert generation["usage_metadata"]["input_tokens"] == 7, "model_dump dropped usage"
    assert payload["document"]["page_content"] == "text"
    assert payload["document"]["metadata"] == {"page": 3}
    assert payload["cyclic"]["self"] == "<cycle: dict>"


def test_live_messages_are_copied_when_recorded(cap: Capture) -> None:
    history = [HumanMessage("first")]
    model = ScriptedChatModel(respond=lambda _m: ai("ok", input_tokens=1, output_tokens=1))
    model.invoke(history, _cfg())
    history[0].content = "changed afterwards"  # agents mutate messages after callbacks
    start = next(e for e in cap.events() if e.kind == "llm_call" and e.phase == "start")
    assert start.data["messages"] == [{"type": "human", "content": "first",
                                       **({"id": history[0].id} if history[0].id else {})}]


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "Paris"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Paris"}],
    "Paris",
], ids=["dict", "system-then-user", "string"])
def test_openai_style_input_messages_are_the_users_message(
    cap: Capture, messages: Any
) -> None:
    lc_agent(weather_model(), [get_weather]).invoke(
        {"messages": messages}, {"callbacks": [TracevaultCallbackHandler()]})
    start = next(e for e in cap.events() if e.kind == "input")
    assert start.data == {"type": "user_message", "content": "Paris"}


def test_message_views_keep_tool_calls_status_and_artifacts() -> None:
    views = convert.messages_view([[
        HumanMessage("q", id="h1"),
        _message_with_calls(),
        ToolMessage("oops", tool_call_id="t1", status="error", artifact={"raw": 1}),
        ("user", "shorthand"),
    ]])
    assert views[0] == {"type": "human", "content": "q", "id": "h1"}
    assert views[1]["tool_calls"] == [{"name": "lookup", "args": {"q": "x"}, "id": "t1",
                                       "type": "tool_call"}]
    assert views[1]["usage_metadata"]["output_tokens"] == 2
    assert views[2] == {"type": "tool", "content": "oops", "tool_call_id": "t1",
                        "status": "error", "artifact": {"raw": 1}}
    assert views[3] == {"type": "user", "content": "shorthand"}


def test_cached_and_reasoning_tokens_are_priced_when_streaming(cap: Capture) -> None:
    reply = ai("4", input_tokens=1000, output_tokens=300, cached_tokens=800,
               reasoning_tokens=250)
    model = ScriptedChatModel(respond=lambda _m: reply, model_name="o4-mini")
    assert "".join(str(c.content) for c in model.stream("2+2?", _cfg())) == "4"
    end = next(e for e in cap.events() if e.kind == "llm_call" and e.phase == "end")
    assert end.data["usage"] == {"input": 1000, "output": 300, "total": 1300,
                                 "cached": 800, "reasoning": 250}
    assert end.data["cost"] == pytest.approx(cost_of("o4-mini", 1000, 300, 800))
    assert end.data["cost"] < (cost_of("o4-mini", 1000, 300) or 0), "cached input is cheaper"


def test_user_prices_apply_and_unknown_models_have_no_cost(cap: Capture) -> None:
    from tracevault.pricing import set_price

    set_price("house-model-v1", input=10.0, output=20.0)
    priced = ScriptedChatModel(respond=lambda _m: ai("a", input_tokens=100, output_tokens=10),
                               model_name="house-model-v1")
    unknown = ScriptedChatModel(respond=lambda _m: ai("b", input_tokens=100, output_tokens=10),
                                model_name="mystery-7b")
    priced.invoke("x", _cfg())
    unknown.invoke("y", _cfg())
    ends = [e for e in cap.events() if e.kind == "llm_call" and e.phase == "end"]
    assert ends[0].data["cost"] == pytest.approx(100 * 10e-6 + 10 * 20e-6)
    assert "cost" not in ends[1].data
    assert ends[1].data["usage"]["total"] == 110
    outputs = [e.data for e in cap.events() if e.kind == "output"]
    assert "unpriced_tokens" not in outputs[0]
    assert outputs[1]["unpriced_tokens"] == 110 and "cost" not in outputs[1]


def test_reasoning_blocks_are_recorded_as_reasoning(cap: Capture) -> None:
    reply = AIMessage(
        content=[{"type": "reasoning", "reasoning": "The user wants a sum."},
                 {"type": "text", "text": "Calling the adder."}],
        tool_calls=[tool_call("add", {"a": 1, "b": 2}, "r1")],
    )
    model = ScriptedChatModel(respond=lambda _m: reply)
    model.invoke("1+2", _cfg())
    reasoning = next(e for e in cap.events() if e.kind == "reasoning")
    assert reasoning.data == {"thought": "The user wants a sum.\nCalling the adder.",
                              "plan": ['add({"a": 1, "b": 2})']}


def test_plain_answer_without_tool_calls_is_not_reasoning() -> None:
    assert convert.reasoning_of(AIMessage("just an answer")) is None
    assert convert.reasoning_of(
        AIMessage("", additional_kwargs={"reasoning_content": "hidden chain"})
    ) == "hidden chain"


@pytest.mark.parametrize("message", [
    AIMessage("", additional_kwargs={"reasoning": {  # OpenAI Responses API, output v0
        "type": "reasoning", "id": "rs_1",
        "summary": [{"type": "summary_text", "text": "First look it up."}]}}),
    AIMessage([{"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAAA",  # v1
                "summary": [{"type": "summary_text", "text": "First look it up."}]}]),
    AIMessage([{"type": "reasoning_content",  # Bedrock Converse
                "reasoning_content": {"text": "First look it up.", "signature": "x"}}]),
    AIMessage([{"type": "thinking", "thinking": "First look it up.", "signature": "x"}]),
], ids=["openai-v0", "openai-v1", "bedrock", "anthropic"])
def test_each_providers_reasoning_is_read(message: AIMessage) -> None:
    assert convert.reasoning_of(message) == "First look it up."


def test_a_thinking_models_answer_is_its_text_and_a_refusal_is_kept(cap: Capture) -> None:
    thinking = AIMessage([{"type": "thinking", "thinking": "Greet back.", "signature": "s" * 900},
                          {"type": "text", "text": "Hello! "}, {"type": "text", "text": "Hi."}])
    ScriptedChatModel(respond=lambda _m: thinking).invoke("hello", _cfg())
    refusal = AIMessage("", additional_kwargs={"refusal": "I can't help with that."})
    ScriptedChatModel(respond=lambda _m: refusal).invoke("how to pick a lock", _cfg())
    events = cap.events()
    answers = [e.data["content"] for e in events if e.kind == "output"]
    assert answers == ["Hello! Hi.", ""]
    refused = [e for e in events if e.kind == "llm_call" and e.phase == "end"][1]
    assert refused.data["refusal"] == "I can't help with that."
    assert [e.data["thought"] for e in events if e.kind == "reasoning"] == ["Greet back."]


def test_inline_media_is_recorded_as_a_digest_not_its_bytes(cap: Capture) -> None:
    image = base64.b64encode(bytes(range(256)) * 2_000).decode()
    question = HumanMessage([
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                     "data": image}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ])
    model = ScriptedChatModel(respond=lambda _m: ai("Bytes.", input_tokens=5, output_tokens=1))
    model.invoke([question], _cfg())
    events = cap.events()
    assert image[:100] not in json.dumps([e.data for e in events])
    ref = {"base64_chars": len(image), "sha256": hashlib.sha256(image.encode()).hexdigest()}
    start = next(e for e in events if e.kind == "llm_call" and e.phase == "start")
    content = start.data["messages"][0]["content"]
    assert content[1] == {"type": "image_url", "media": {"mime": "image/png", **ref}}
    assert content[2] == {"type": "image", "media": {"mime": "image/jpeg", **ref}}
    assert content[3] == question.content[3]  # a link is kept as it is
    assert next(e for e in events if e.kind == "input").data["content"] == content
    assert question.content[1]["image_url"]["url"].endswith(image)  # the caller's is intact


def test_a_list_given_as_the_input_is_data_and_in_messages_is_messages() -> None:
    files = ["contract-A.pdf", "contract-B.pdf", "contract-C.pdf"]
    assert convert.input_view(files) == ("chain_input", files)
    assert convert.input_view({"messages": ["hi", "again"]}) == ("user_message", "again")
    assert convert.input_view([HumanMessage("hello"), AIMessage("hi")]) == (
        "user_message", "hello")
    assert convert.input_view([("user", "question?")]) == ("user_message", "question?")


def test_a_chain_over_a_list_records_the_whole_list_as_its_input(cap: Capture) -> None:
    files = ["contract-A.pdf", "contract-B.pdf", "contract-C.pdf"]
    assert RunnableLambda(lambda xs: len(xs)).invoke(files, _cfg()) == 3
    came_in = next(e for e in cap.events() if e.kind == "input")
    assert came_in.data == {"type": "chain_input", "content": files}


def test_what_comes_into_a_resumed_or_commanded_graph() -> None:
    from langgraph.types import Command

    assert convert.input_view(None) == ("resume", None)  # on from a breakpoint
    assert convert.input_view(Command(resume={"ok": True})) == ("resume", {"ok": True})
    assert convert.input_view(Command(update={"n": 1}, goto="b")) == (
        "command", {"update": {"n": 1}, "goto": "b"})


def _generation(usage: dict[str, int] | None, **metadata: Any) -> ChatGeneration:
    message = AIMessage("ok", response_metadata=metadata)
    if usage is not None:
        message.usage_metadata = {"input_tokens": usage["in"], "output_tokens": usage["out"],
                                  "total_tokens": usage["in"] + usage["out"]}
    return ChatGeneration(message=message)


def test_usage_of_n_choices_counts_once_per_prompt() -> None:
    # OpenAI's clients put the whole response's usage on each of its n choices.
    one_prompt = LLMResult(generations=[[_generation({"in": 100, "out": 30})] * 3])
    assert convert.result_view(one_prompt)[1] == {"input": 100, "output": 30, "total": 130}
    two_prompts = LLMResult(generations=[[_generation({"in": 100, "out": 30})] * 2,
                                         [_generation({"in": 10, "out": 5})]])
    assert convert.result_view(two_prompts)[1] == {"input": 110, "output": 35, "total": 145}


def test_legacy_token_usage_keeps_cached_and_reasoning_tokens() -> None:
    openai = LLMResult(generations=[[_generation(None)]], llm_output={"token_usage": {
        "prompt_tokens": 2000, "completion_tokens": 300, "total_tokens": 2300,
        "prompt_tokens_details": {"cached_tokens": 1500},
        "completion_tokens_details": {"reasoning_tokens": 100}}})
    assert convert.result_view(openai)[1] == {"input": 2000, "output": 300, "total": 2300,
                                              "cached": 1500, "reasoning": 100}
    # Anthropic's input_tokens leave out the tokens read from and written to the cache.
    anthropic = LLMResult(generations=[[_generation(None)]], llm_output={"usage": {
        "input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 2000,
        "cache_creation_input_tokens": 300}})
    assert convert.result_view(anthropic)[1] == {"input": 2400, "output": 50, "total": 2450,
                                                 "cached": 2000, "cache_write": 300}


def test_tokens_written_to_the_prompt_cache_are_counted_and_priced(cap: Capture) -> None:
    reply = ai("ok")
    reply.usage_metadata = {"input_tokens": 101_000, "output_tokens": 10, "total_tokens": 101_010,
                            "input_token_details": {"cache_creation": 100_000}}
    model = ScriptedChatModel(respond=lambda _m: reply, model_name="claude-sonnet-4-20250514")
    model.invoke("a long document", _cfg())
    end = next(e for e in cap.events() if e.kind == "llm_call" and e.phase == "end")
    assert end.data["usage"]["cache_write"] == 100_000
    # Anthropic bills cache writes at 1.25x input: $3.75 per million for Sonnet 4.
    assert end.data["cost"] == pytest.approx((1_000 * 3.0 + 100_000 * 3.75 + 10 * 15.0) / 1e6)


@pytest.mark.parametrize("metadata", [{"done_reason": "stop"}, {"stopReason": "stop"},
                                      {"stop_reason": "stop"}, {"finish_reason": "stop"}],
                         ids=["ollama", "bedrock", "anthropic", "openai"])
def test_finish_reason_of_each_provider(metadata: dict[str, str]) -> None:
    assert convert.generation_view(_generation(None, **metadata))["finish_reason"] == "stop"


def test_the_first_token_is_the_first_chunk_with_content(cap: Capture) -> None:
    handler = TracevaultCallbackHandler()
    run = uuid.uuid4()
    handler.on_chat_model_start({}, [[HumanMessage("hi")]], run_id=run,
                                metadata={"ls_model_name": "claude-3-5-sonnet"})
    handler.on_llm_new_token("", run_id=run)  # a stream opening with metadata only
    seen = handler._rec.runs.lineage.get(run)  # timed on the agent's thread
    assert seen is not None and seen.first_token is None
    handler.on_llm_new_token("It", run_id=run)
    assert seen.first_token is not None
    handler.on_llm_error(RuntimeError("stop"), run_id=run)
    assert handler._rec.runs.lineage.get(run) is None
    cap.flush()
    assert handler._rec.runs.get(run) is None


def test_a_call_is_priced_as_the_model_the_provider_names(cap: Capture) -> None:
    # An Azure deployment name has no price; the response names the model it runs.
    reply = ai("ok", input_tokens=100, output_tokens=20)
    reply.response_metadata["model_name"] = "gpt-4o-2024-08-06"
    model = ScriptedChatModel(messages=iter([reply]), model_name="prod-chat")
    model.invoke("hi", {"callbacks": [TracevaultCallbackHandler()]})
    end = next(e for e in cap.events() if e.kind == "llm_call" and e.phase == "end")
    assert end.data["model"] == "gpt-4o-2024-08-06"
    assert end.data["cost"] == pytest.approx(cost_of("gpt-4o-2024-08-06", 100, 20))
