"""Token usage, finish reason and model of LLM calls, in each provider's own shape."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from li_agents import ChatOnlyLLM, check_tree
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ImageBlock,
    LLMMetadata,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.llms import MockFunctionCallingLLM
from llama_index.core.llms.callbacks import llm_chat_callback
from pydantic import BaseModel
from tracevault_llamaindex import usage
from tracevault_llamaindex.instrument import Installed

from tracevault.pricing import cost_of
from tracevault.testing import Capture


def _response(raw: Any, **extra: Any) -> ChatResponse:
    return ChatResponse(message=ChatMessage(role="assistant", content="ok"), raw=raw,
                        additional_kwargs=extra)


@pytest.mark.parametrize(("raw", "expected"), [
    # Anthropic: input_tokens leave out the cache reads and writes.
    ({"usage": {"input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 2000,
                "cache_creation_input_tokens": 300}},
     {"input": 2400, "output": 50, "total": 2450, "cached": 2000, "cache_write": 300}),
    # Gemini: thinking is billed as output but counted apart.
    ({"usage_metadata": {"prompt_token_count": 1000, "candidates_token_count": 100,
                         "thoughts_token_count": 400, "total_token_count": 1500,
                         "cached_content_token_count": 600}},
     {"input": 1000, "output": 500, "total": 1500, "cached": 600, "reasoning": 400}),
    ({"usage": {"inputTokens": 700, "outputTokens": 70, "totalTokens": 770}},  # Bedrock
     {"input": 700, "output": 70, "total": 770}),
    # Bedrock Converse's inputTokens leave out the cache reads and writes too.
    ({"usage": {"inputTokens": 100, "outputTokens": 50, "totalTokens": 3150,
                "cacheReadInputTokens": 2000, "cacheWriteInputTokens": 1000}},
     {"input": 3100, "output": 50, "total": 3150, "cached": 2000, "cache_write": 1000}),
    ({"prompt_eval_count": 30, "eval_count": 12, "done_reason": "stop"},  # Ollama
     {"input": 30, "output": 12, "total": 42}),
    ({"usage": {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200,
                "prompt_tokens_details": {"cached_tokens": 400},
                "completion_tokens_details": {"reasoning_tokens": 50}}},  # OpenAI
     {"input": 1000, "output": 200, "total": 1200, "cached": 400, "reasoning": 50}),
], ids=["anthropic", "gemini", "bedrock", "bedrock-cache", "ollama", "openai"])
def test_usage_in_each_providers_raw_response(raw: Any, expected: dict[str, int]) -> None:
    assert usage.token_usage(_response(raw)) == expected


def test_gemini_thinking_is_output_also_when_copied_to_completion_tokens() -> None:
    # LlamaIndex's google-genai integration copies the counts to additional_kwargs,
    # without the thinking, which stays in the raw usage.
    raw = {"usage_metadata": {"prompt_token_count": 1000, "candidates_token_count": 100,
                              "thoughts_token_count": 400, "total_token_count": 1500}}
    counted = _response(raw, prompt_tokens=1000, completion_tokens=100, total_tokens=1500)
    assert usage.token_usage(counted) == {"input": 1000, "output": 500, "total": 1500,
                                          "reasoning": 400}


@pytest.mark.parametrize("raw", [
    {"choices": [{"finish_reason": "stop"}]}, {"stop_reason": "stop"},
    {"stopReason": "stop"}, {"done_reason": "stop"},
    {"type": "message_delta", "delta": {"stop_reason": "stop"}},
], ids=["openai", "anthropic", "bedrock", "ollama", "anthropic-stream"])
def test_finish_reason_in_each_providers_raw_response(raw: Any) -> None:
    assert usage.finish_reason_of(_response(raw)) == "stop"


class _Deployment(ChatOnlyLLM):
    """An Azure-style deployment name, streaming OpenAI-shaped chunks: the finish
    reason comes in the chunk before the last, which holds only the usage."""

    model_name: str = "prod-chat"

    @llm_chat_callback()
    def stream_chat(self, messages: Any, **kwargs: Any) -> Any:
        base = {"model": "gpt-4o-mini-2024-07-18"}
        chunks = [
            ChatResponse(message=ChatMessage(role="assistant", content="Hel"), delta="Hel",
                         raw={**base, "choices": [{"finish_reason": None}]}),
            ChatResponse(message=ChatMessage(role="assistant", content="Hello"), delta="lo",
                         raw={**base, "choices": [{"finish_reason": "stop"}]}),
            ChatResponse(message=ChatMessage(role="assistant", content="Hello"), delta="",
                         raw={**base, "choices": [], "usage": {
                             "prompt_tokens": 500, "completion_tokens": 20,
                             "total_tokens": 520}}),
        ]
        yield from chunks  # a generator, as LlamaIndex's callback wrapper expects


def test_a_streamed_call_keeps_its_finish_reason_and_the_model_that_answered(
    cap: Capture, instrumented: Installed
) -> None:
    text = "".join(c.delta or "" for c in _Deployment().stream_chat(
        [ChatMessage(role="user", content="hi")]))
    assert text == "Hello"
    start, end = [e for e in cap.events() if e.kind == "llm_call"]
    assert start.data["model"] == "prod-chat"  # what the call was made with
    assert end.data["model"] == "gpt-4o-mini-2024-07-18"  # what answered, and is priced
    assert end.data["finish_reason"] == "stop"
    assert end.data["usage"] == {"input": 500, "output": 20, "total": 520}
    assert end.data["cost"] == pytest.approx(cost_of("gpt-4o-mini", 500, 20))


class _Thinker(ChatOnlyLLM):
    """Answers with its thinking, a sentence and a tool call, in blocks."""

    @llm_chat_callback()
    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        return ChatResponse(message=ChatMessage(role="assistant", blocks=[
            ThinkingBlock(content="The image shows a cat; look it up."),
            TextBlock(text="Let me look that up."),
            ToolCallBlock(tool_call_id="c1", tool_name="lookup", tool_kwargs={"q": "cat"}),
        ]), raw={"usage": {"input_tokens": 1200, "output_tokens": 30}})


def test_a_calls_attachments_thinking_and_tool_calls_are_recorded_as_sent(
    cap: Capture, instrumented: Installed
) -> None:
    image = b"\x89PNG" + bytes(range(256)) * 64
    inline = base64.b64encode(image[::-1]).decode()
    question = ChatMessage(role="user", blocks=[
        TextBlock(text="What is this?"),
        ImageBlock(image=image, image_mimetype="image/png"),
        ImageBlock(url="https://example.com/cat.png"),
        ImageBlock(url=f"data:image/png;base64,{inline}"),
    ])
    _Thinker().chat([question])
    question.blocks[0].text = "changed afterwards"  # messages live on in the agent's memory
    events = cap.events()
    start, end = [e for e in events if e.kind == "llm_call"]
    assert start.data["messages"] == [{
        "role": "user", "content": "What is this?",
        "attachments": [{"type": "image"},
                        {"type": "image", "url": "https://example.com/cat.png"},
                        {"type": "image", "media": {
                            "mime": "image/png", "base64_chars": len(inline),
                            "sha256": hashlib.sha256(inline.encode()).hexdigest()}}],
    }]
    assert "iVBO" not in str(start.data)  # the image's bytes are not copied
    assert inline[:64] not in str(start.data)
    assert end.data["response"] == "Let me look that up."
    assert end.data["tool_calls"] == [{"id": "c1", "name": "lookup", "arguments": {"q": "cat"}}]
    assert end.data["usage"] == {"input": 1200, "output": 30, "total": 1230}
    thoughts = {e.name: e.data for e in events if e.kind == "reasoning"}
    assert thoughts == {
        "thinking": {"thought": "The image shows a cat; look it up.", "source": "thinking"},
        "thought": {"thought": "Let me look that up.", "source": "text before tool calls"},
    }
    assert all(e.parent_span_id == start.parent_span_id for e in events
               if e.kind == "reasoning")


class _StreamsItsThinking(ChatOnlyLLM):
    """Streams its thinking as deltas (as LlamaIndex's Anthropic and Gemini models
    report it: ``additional_kwargs["thinking_delta"]``), then its answer."""

    @llm_chat_callback()
    def stream_chat(self, messages: Any, **kwargs: Any) -> Any:
        chunks = [("Two and three ", ""), ("make five.", ""), ("", "It is "), ("", "5.")]
        text = ""
        for thinking, delta in chunks:
            text += delta
            extra = {"thinking_delta": thinking} if thinking else {}
            yield ChatResponse(message=ChatMessage(role="assistant", content=text),
                               delta=delta, additional_kwargs=extra)


def test_streamed_thinking_deltas_are_one_reasoning_event(
    cap: Capture, instrumented: Installed
) -> None:
    chunks = list(_StreamsItsThinking().stream_chat([ChatMessage(role="user", content="2+3?")]))
    assert chunks[-1].message.content == "It is 5."
    events = cap.events()
    assert [(e.kind, e.phase) for e in events] == [
        ("llm_call", "start"), ("llm_call", "end"), ("reasoning", "point")]
    start, end, thinking = events
    assert end.data["response"] == "It is 5." and end.data["streamed"] is True
    assert (thinking.name, thinking.data) == (
        "thinking", {"thought": "Two and three make five.", "source": "thinking"})
    assert thinking.parent_span_id == start.parent_span_id


class _Answer(BaseModel):
    value: int


_USAGE = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050}


class _Structured(MockFunctionCallingLLM):
    """Answers a structured-output request with the tool call that fills ``_Answer``,
    anything else with text; OpenAI-shaped usage in ``raw``."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="gpt-4o-mini", is_function_calling_model=True,
                           is_chat_model=True)

    @llm_chat_callback()
    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        raw = {"model": "gpt-4o-mini-2024-07-18", "usage": _USAGE}
        if kwargs.get("tools"):
            return ChatResponse(message=ChatMessage(role="assistant", blocks=[ToolCallBlock(
                tool_call_id="s1", tool_name="_Answer", tool_kwargs={"value": 42})]), raw=raw)
        return ChatResponse(message=ChatMessage(role="assistant", content="It is 42."), raw=raw)

    @llm_chat_callback()
    async def achat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        return self.chat(messages, **kwargs)


def _priced_call(events: list[Any]) -> None:
    # One call per request actually made, named after the model that made it, priced.
    end = [e for e in events if e.kind == "llm_call" and e.phase == "end"][-1]
    assert end.data["model"] == "gpt-4o-mini-2024-07-18"
    assert end.data["usage"] == {"input": 1000, "output": 50, "total": 1050}
    assert end.data["cost"] == pytest.approx(cost_of("gpt-4o-mini", 1000, 50))
    assert "structured_llm" not in str([e.data.get("provider") for e in events])


async def test_a_structured_llm_records_the_call_it_makes_with_its_usage(
    cap: Capture, instrumented: Installed
) -> None:
    structured = _Structured().as_structured_llm(_Answer)
    question = [ChatMessage(role="user", content="the answer?")]
    assert structured.chat(question).raw == _Answer(value=42)
    assert (await structured.achat(question)).raw == _Answer(value=42)
    events = cap.events()
    check_tree(events)
    calls = [e for e in events if e.kind == "llm_call"]
    assert [e.phase for e in calls] == ["start", "end"] * 2  # the wrapper is transparent
    _priced_call(events)


async def test_an_agents_structured_output_call_is_priced(
    cap: Capture, instrumented: Installed
) -> None:
    agent = FunctionAgent(tools=[], llm=_Structured(), output_cls=_Answer, streaming=False)
    result = await agent.run(user_msg="the answer?")
    assert result.structured_response == {"value": 42}
    events = cap.events()
    check_tree(events)
    run = events[0]
    calls = [e for e in events if e.kind == "llm_call" and e.phase == "end"]
    assert len(calls) == 2 and all(e.parent_span_id == run.span_id for e in calls)
    _priced_call(events)


class _Fallback(ChatOnlyLLM):
    """A model whose chat asks another model object (a fallback, a router)."""

    model_name: str = "router"

    @llm_chat_callback()
    def chat(self, messages: Any, **kwargs: Any) -> ChatResponse:
        return _Deployment().chat(messages)


def test_a_model_that_calls_another_model_records_both_calls(
    cap: Capture, instrumented: Installed
) -> None:
    _Fallback().chat([ChatMessage(role="user", content="hi")])
    events = cap.events()
    check_tree(events)
    outer, inner = (e for e in events if e.kind == "llm_call" and e.phase == "start")
    assert (outer.data["model"], inner.data["model"]) == ("router", "prod-chat")
    assert inner.parent_span_id == outer.span_id
