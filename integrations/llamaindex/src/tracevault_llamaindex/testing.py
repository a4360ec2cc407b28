"""Scripted offline models that drive real LlamaIndex agents (tests, demos, benchmarks).

* :func:`tool_then_answer` — a ``response_generator`` for LlamaIndex's own
  ``MockFunctionCallingLLM``: the first turn calls tools, the turn after a tool result
  answers. It decides from the messages alone, so one model serves many concurrent runs.
* :class:`ScriptedReActLLM` — a ``CustomLLM`` that writes ReAct text
  ("Thought/Action/Action Input", then "Thought/Answer") with token counts, streaming
  word by word when asked to stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.llms import CustomLLM
from llama_index.core.llms.callbacks import llm_completion_callback
from pydantic import Field

ToolPlan = Callable[[str], Sequence[tuple[str, dict[str, Any]]]]


def _last_user_text(messages: Sequence[ChatMessage]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message.content or ""
    return ""


def tool_then_answer(
    plan: ToolPlan | Sequence[tuple[str, dict[str, Any]]],
    answer: Callable[[str], str] | str,
    *,
    thought: str | None = None,
) -> Callable[..., ChatMessage]:
    """Return a response generator: call the planned tools, then give the answer.

    ``plan`` is a list of ``(tool_name, arguments)`` or a function of the user's message
    returning one; ``answer`` a string or a function of the user's message. ``thought``
    is assistant text sent along with the tool calls.
    """

    def generate(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
        user = _last_user_text(messages)
        if messages and messages[-1].role == "tool":
            text = answer(user) if callable(answer) else answer
            return ChatMessage(role="assistant", content=text)
        calls = plan(user) if callable(plan) else plan
        blocks: list[Any] = [TextBlock(text=thought)] if thought else []
        for i, (name, args) in enumerate(calls):
            blocks.append(ToolCallBlock(tool_call_id=f"call-{i}-{name}", tool_name=name,
                                        tool_kwargs=dict(args)))
        return ChatMessage(role="assistant", blocks=blocks)

    return generate


class ScriptedReActLLM(CustomLLM):
    """A ReAct model: one tool action, then the answer once it saw an observation."""

    model_name: str = "gpt-4o-mini"
    thought: str = "I need to use a tool."
    action: str = "add"
    action_input: dict[str, Any] = Field(default_factory=dict)
    final_thought: str = "I can answer without using any more tools."
    answer: str = "Done."
    prompt_tokens: int = 120
    completion_tokens: int = 30

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=self.model_name, is_chat_model=False)

    def _text(self, prompt: str) -> str:
        # The ReAct header explains "Observation:" too: look only at the conversation.
        if "Observation:" in prompt.rsplit("## Current Conversation", 1)[-1]:
            return f"Thought: {self.final_thought}\nAnswer: {self.answer}"
        return (f"Thought: {self.thought}\nAction: {self.action}\n"
                f"Action Input: {json.dumps(self.action_input)}")

    def _usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._text(prompt), additional_kwargs=self._usage())

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        text = self._text(prompt)
        usage = self._usage()

        def words() -> Generator[CompletionResponse, None, None]:
            sofar = ""
            pieces = text.split(" ")
            for i, word in enumerate(pieces):
                delta = word if i == len(pieces) - 1 else word + " "
                sofar += delta
                last = i == len(pieces) - 1
                yield CompletionResponse(text=sofar, delta=delta,
                                         additional_kwargs=usage if last else {})

        return words()
