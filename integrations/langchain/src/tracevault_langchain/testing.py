"""A scripted, tool-calling fake chat model for driving real agents offline.

langchain-core's fake chat models cannot bind tools, and ``GenericFakeChatModel``'s
streaming drops ``tool_calls`` and ``usage_metadata``. :class:`ScriptedChatModel` fixes
both, so ``create_react_agent``, ``create_agent`` and ``stream_mode="messages"`` behave
as they would with a real provider::

    model = ScriptedChatModel(respond=lambda messages: AIMessage("hi", usage_metadata=...))
    agent = create_react_agent(model, [my_tool])

Responses come from ``respond(messages)`` (a function of the conversation, safe for
concurrent runs) or, without it, from the ``messages`` iterator in order. Every response
is a fresh copy, so concurrent runs never share a message object.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

__all__ = ["ScriptedChatModel", "ai", "tool_call"]

_iterator_lock = threading.Lock()


def tool_call(name: str, args: dict[str, Any], call_id: str) -> dict[str, Any]:
    """Return a tool call as an ``AIMessage`` carries it."""
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


def ai(
    content: str = "",
    *,
    tool_calls: Sequence[dict[str, Any]] = (),
    input_tokens: int = 0,
    output_tokens: int = 0,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    finish_reason: str | None = None,
) -> AIMessage:
    """Build a scripted model response with token usage and a finish reason."""
    usage: dict[str, Any] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }
    if cached_tokens:
        usage["input_token_details"] = {"cache_read": cached_tokens}
    if reasoning_tokens:
        usage["output_token_details"] = {"reasoning": reasoning_tokens}
    reason = finish_reason or ("tool_calls" if tool_calls else "stop")
    return AIMessage(
        content=content,
        tool_calls=list(tool_calls),
        usage_metadata=usage,
        response_metadata={"finish_reason": reason},
    )


class ScriptedChatModel(GenericFakeChatModel):
    """A fake chat model that binds tools and streams tool calls and usage faithfully."""

    messages: Iterator[AIMessage | str] = iter(())
    respond: Callable[[list[BaseMessage]], AIMessage | str] | None = None
    model_name: str = "gpt-4o-mini"
    provider: str = "openai"

    @property
    def _llm_type(self) -> str:
        return "scripted-fake-chat-model"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = self.provider
        params["ls_model_name"] = self.model_name
        return params

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer ``tools`` (as OpenAI-format schemas) to the model, like a real provider."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=formatted, **kwargs)

    def _next(self, messages: list[BaseMessage]) -> AIMessage:
        if self.respond is not None:
            out = self.respond(messages)
        else:
            with _iterator_lock:  # iterators are not safe to advance from two threads
                out = next(self.messages)
        message = AIMessage(content=out) if isinstance(out, str) else out.model_copy(deep=True)
        metadata = dict(message.response_metadata)
        metadata.setdefault("model_name", self.model_name)
        metadata.setdefault("finish_reason", "tool_calls" if message.tool_calls else "stop")
        message.response_metadata = metadata
        return message

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._next(messages))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # Answer on the loop: the default would hop to a thread for every call.
        return self._generate(messages, stop=stop, **kwargs)

    def _chunks(self, message: AIMessage) -> list[ChatGenerationChunk]:
        """Split a response into stream chunks; the last one carries calls and usage."""
        content = message.content if isinstance(message.content, str) else ""
        pieces = [p for p in re.split(r"(\s)", content) if p] if content else []
        chunks = [
            ChatGenerationChunk(message=AIMessageChunk(content=p, id=message.id)) for p in pieces
        ]
        last = AIMessageChunk(
            content="",
            id=message.id,
            tool_call_chunks=[
                tool_call_chunk(
                    name=c["name"], args=json.dumps(c["args"]), id=c.get("id"), index=i
                )
                for i, c in enumerate(message.tool_calls)
            ],
            usage_metadata=message.usage_metadata,
            response_metadata=dict(message.response_metadata),
            additional_kwargs=dict(message.additional_kwargs),
            chunk_position="last",
        )
        chunks.append(ChatGenerationChunk(message=last))
        return chunks

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._next(messages)):
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(self._next(messages)):
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
