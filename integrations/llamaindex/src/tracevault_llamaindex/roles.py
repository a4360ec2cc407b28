"""What a LlamaIndex span is to the audit trail, decided once per class where possible.

The span handler calls these for every span: the role of an instrumented method (run,
tool, LLM call, ReAct parser or transparent), which fields of a step's input event it
reads, whether a span returned a stream, and the arguments a tool was called with.
Per-class answers are cached, so a span of a known class costs dictionary lookups.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

from tracevault_llamaindex import payloads
from tracevault_llamaindex.state import CHAT, LLM, OTHER, PARSER, RUN, TOOL, WRAPPER

_LLM_METHODS = frozenset(
    {"chat", "achat", "stream_chat", "astream_chat", "complete", "acomplete",
     "stream_complete", "astream_complete"}
)
_TOOL_METHODS = frozenset({"call", "acall", "__call__"})
_CHAT_METHODS = frozenset({"chat", "achat", "stream_chat", "astream_chat"})
_STREAMING_RESPONSES = frozenset({"StreamingResponse", "AsyncStreamingResponse"})
# Generators and async generators cannot be subclassed: their exact types identify them.
STREAM_TYPES = frozenset({types.GeneratorType, types.AsyncGeneratorType})
# type of instance -> method name -> role; filled on first sight of each pair.
ROLES: dict[type, dict[str, int]] = {}


def classify(instance: Any, method: str) -> int:
    """Return the role of ``instance.method``'s span (``RUN``, ``TOOL``, ``LLM``,
    ``WRAPPER``, ``CHAT``, ``PARSER`` or ``OTHER``), resolved once per class and
    method."""
    cls = type(instance)
    by_method = ROLES.get(cls)
    if by_method is None:
        by_method = ROLES[cls] = {}
    role = by_method.get(method)
    if role is None:
        role = by_method[method] = _role_of(instance, method)
    return role


def _role_of(instance: Any, method: str) -> int:
    from llama_index.core.agent.react.output_parser import ReActOutputParser
    from llama_index.core.base.llms.base import BaseLLM
    from llama_index.core.chat_engine.types import BaseChatEngine
    from llama_index.core.llms.structured_llm import StructuredLLM
    from llama_index.core.tools.types import BaseTool
    from workflows.workflow import Workflow

    if method == "run" and isinstance(instance, Workflow):
        return RUN
    if method in _TOOL_METHODS and isinstance(instance, BaseTool):
        return TOOL
    if method in _LLM_METHODS and isinstance(instance, BaseLLM):
        return WRAPPER if isinstance(instance, StructuredLLM) else LLM
    if method in _CHAT_METHODS and isinstance(instance, BaseChatEngine):
        return CHAT
    if method == "parse" and isinstance(instance, ReActOutputParser):
        return PARSER
    return OTHER


# What a step argument's type tells: 0 not a workflow event, else EVENT plus which
# of the fields we read it declares. Resolved once per type.
EVENT, HAS_TOOL_ID, HAS_AGENT = 1, 2, 4
SHAPES: dict[type, int] = {}
_MAX_SHAPES = 1_024


def event_shape(cls: type) -> int:
    """Return what a step argument of type ``cls`` offers (see ``EVENT`` above)."""
    shape = SHAPES.get(cls)
    if shape is None:
        from workflows.events import Event

        shape = 0
        if issubclass(cls, Event):
            fields = cls.model_fields
            shape = (EVENT | (HAS_TOOL_ID if "tool_id" in fields else 0)
                     | (HAS_AGENT if "current_agent_name" in fields else 0))
        if len(SHAPES) >= _MAX_SHAPES:
            SHAPES.clear()
        SHAPES[cls] = shape
    return shape


# Start-event fields not copied into an agent's inputs: the memory is the whole
# conversation store (converting it only to drop it would cost every run).
NOT_INPUTS = frozenset({"memory"})
_agent_types: tuple[type, type, type] | None = None


def agent_classes() -> tuple[type, type, type]:
    """Return ``(BaseWorkflowAgent, AgentWorkflow, CodeActAgent)``, imported on first
    use."""
    global _agent_types
    if _agent_types is None:
        from llama_index.core.agent.workflow import (
            AgentWorkflow,
            BaseWorkflowAgent,
            CodeActAgent,
        )

        _agent_types = (BaseWorkflowAgent, AgentWorkflow, CodeActAgent)
    return _agent_types


def runs_code_act(instance: Any) -> bool:
    """Whether a workflow run is a ``CodeActAgent``'s, or an agents' workflow with one:
    its model writes the code it runs in its text (``<execute>…</execute>``), not as
    tool calls."""
    code_act = agent_classes()[2]
    if isinstance(instance, code_act):
        return True
    agents = getattr(instance, "agents", None)
    return isinstance(agents, dict) and any(
        isinstance(agent, code_act) for agent in agents.values())


_step_state: Any = None  # workflows' context variable of the running step (False: none)


def retried_failure() -> tuple[BaseException, int] | None:
    """For a workflow step starting again because its retry policy retries a failed
    attempt: return ``(the exception that attempt raised, this attempt's number)``;
    ``None`` on a first attempt (or with a ``workflows`` that does not say)."""
    global _step_state
    if _step_state is None:
        try:
            from workflows.runtime.types.results import StepWorkerStateContextVar
        except ImportError:
            _step_state = False
        else:
            _step_state = StepWorkerStateContextVar
    if _step_state is False:
        return None
    retry = getattr(_step_state.get(None), "retry", None)
    number = getattr(retry, "retry_number", 0)
    failure = getattr(retry, "last_exception", None)
    if not number or not isinstance(failure, BaseException):
        return None
    return failure, number + 1


def stream_of(result: Any) -> Any:
    """Return the generator a span returned (itself, or a streaming response's), if any."""
    cls = type(result)
    if cls in STREAM_TYPES:
        return result
    if cls.__name__ in _STREAMING_RESPONSES:
        gen = getattr(result, "response_gen", None) or getattr(
            result, "async_response_gen", None)
        if type(gen) in STREAM_TYPES:
            return gen
    return None


def chat_stream_of(result: Any) -> Any:
    """Return the stream of a chat engine's streamed answer (a
    ``StreamingAgentChatResponse``), or ``None`` for an answer already made."""
    return getattr(result, "chat_stream", None) or getattr(result, "achat_stream", None)


def tool_parameters(tool: Any, bound_args: inspect.BoundArguments) -> dict[str, Any]:
    """Return the arguments a tool was called with, without injected workflow context."""
    args = bound_args.arguments
    params: dict[str, Any] = {}
    skip = getattr(tool, "ctx_param_name", None)
    signature = bound_args.signature.parameters
    for key, value in args.items():
        if key == "self":
            continue
        kind = signature[key].kind if key in signature else None
        if kind is inspect.Parameter.VAR_KEYWORD and isinstance(value, dict):
            for k, v in value.items():  # **kwargs, whatever its name: the named arguments
                if k != skip and type(v).__name__ != "Context":
                    params[k] = payloads.plain(v)
        elif kind is inspect.Parameter.VAR_POSITIONAL and isinstance(value, tuple):
            if value:
                params["args"] = payloads.plain(value)
        elif key != skip and type(value).__name__ != "Context":
            params[key] = payloads.plain(value)
    return params
