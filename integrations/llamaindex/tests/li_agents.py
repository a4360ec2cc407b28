"""Tools, agents and tree checks shared by the LlamaIndex integration tests."""

from __future__ import annotations

from collections import Counter
from typing import Any

from llama_index.core.agent.workflow import CodeActAgent, FunctionAgent, ReActAgent
from llama_index.core.base.llms.types import CompletionResponse, LLMMetadata
from llama_index.core.llms import CustomLLM, MockFunctionCallingLLM
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.tools import FunctionTool
from tracevault_llamaindex.testing import ScriptedReActLLM, tool_then_answer

from tracevault.schema import AuditEvent, validate_event


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def fail(x: str) -> str:
    """A tool that always fails."""
    raise RuntimeError(f"cannot handle {x}")


ADD = FunctionTool.from_defaults(add)
FAIL = FunctionTool.from_defaults(fail)


def function_agent(streaming: bool = False) -> FunctionAgent:
    """A FunctionAgent that calls add(2, 3) and fail('y') in one turn, then answers."""
    llm = MockFunctionCallingLLM(response_generator=tool_then_answer(
        [("add", {"a": 2, "b": 3}), ("fail", {"x": "y"})], "The sum is 5.",
        thought="I will add the numbers and try the other tool."))
    return FunctionAgent(tools=[ADD, FAIL], llm=llm, streaming=streaming)


def react_agent(streaming: bool = False) -> ReActAgent:
    """A ReActAgent that calls add(2, 3), then answers."""
    llm = ScriptedReActLLM(thought="I need to add 2 and 3.", action="add",
                           action_input={"a": 2, "b": 3}, answer="It is 5.")
    return ReActAgent(tools=[ADD], llm=llm, streaming=streaming)


class ScriptedCodeActLLM(CustomLLM):
    """A CodeAct model: a sentence and the code to run, then the answer once it saw
    the code's result (streaming word by word when asked to stream)."""

    thought: str = "I will add the two numbers with the tool."
    code: str = "print(add(2, 3))"
    answer: str = "The sum is 5."

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="gpt-4o-mini", is_chat_model=False)

    def _text(self, prompt: str) -> str:
        if "Result of executing the code given" in prompt:
            return self.answer
        return f"{self.thought}\n<execute>\n{self.code}\n</execute>"

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._text(prompt))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        text = self._text(prompt)

        def words() -> Any:
            sofar = ""
            for word in text.split(" "):
                delta = word if not sofar else f" {word}"
                sofar += delta
                yield CompletionResponse(text=sofar, delta=delta)

        return words()


def code_act_agent(streaming: bool = False) -> CodeActAgent:
    """A CodeActAgent that runs ``print(add(2, 3))`` (its executor answers "5"), then
    answers."""

    def execute(code: str) -> str:
        return "5"

    return CodeActAgent(code_execute_fn=execute, tools=[add], llm=ScriptedCodeActLLM(),
                        streaming=streaming)


def kinds(events: list[AuditEvent]) -> list[tuple[str, str]]:
    """Return ``(kind, phase)`` of each event, in ledger order."""
    return [(e.kind, e.phase) for e in events]


def check_tree(events: list[AuditEvent], external_parents: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Assert the events form valid trees: valid schema, unique ids, every start has
    one end, every parent is a recorded step of the same trace (or a given outer one)."""
    for event in events:
        validate_event(event)
        assert event.framework in ("llamaindex", "manual")
    assert len({e.event_id for e in events}) == len(events)
    starts = Counter((e.trace_id, e.span_id) for e in events if e.phase == "start")
    ends = Counter((e.trace_id, e.span_id) for e in events if e.phase == "end")
    assert all(n == 1 for n in starts.values()), "a step started twice"
    assert starts == ends, f"unbalanced steps: {set(starts) ^ set(ends)}"
    steps = {(e.trace_id, e.span_id) for e in events if e.phase == "start"}
    for event in events:
        if event.parent_span_id is not None and event.parent_span_id not in external_parents:
            assert (event.trace_id, event.parent_span_id) in steps, (
                f"{event.kind} {event.name} hangs under an unknown step {event.parent_span_id}")


def one(events: list[AuditEvent], kind: str, phase: str = "point", **data: Any) -> AuditEvent:
    """Return the single event of ``kind``/``phase`` whose data contains ``data``."""
    found = [e for e in events if e.kind == kind and e.phase == phase
             and all(e.data.get(k) == v for k, v in data.items())]
    assert len(found) == 1, f"expected one {kind}/{phase} {data}, found {len(found)}"
    return found[0]


class ChatOnlyLLM(CustomLLM):
    """A scripted chat model: subclasses define the chat methods they script; the
    completion methods CustomLLM requires are never called."""

    model_name: str = "gpt-4o-mini"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=self.model_name, is_chat_model=True)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        return CompletionResponse(text="unused")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError


class TimesOutOnce(CustomLLM):
    """A completion model that times out on its first call, then answers."""

    calls: int = 0

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="gpt-4o-mini")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self.calls += 1
        if self.calls == 1:
            raise TimeoutError("first attempt times out")
        return CompletionResponse(text=f"ok {prompt}")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise NotImplementedError


class DownLLM(CustomLLM):
    """A model whose every call fails with ``ConnectionError("provider down")``."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="gpt-4o-mini")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise ConnectionError("provider down")

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Any:
        raise ConnectionError("provider down")
