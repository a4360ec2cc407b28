"""The common audit schema: one event shape for every framework.

An :class:`AuditEvent` is what every handler produces and what every store and sink
consumes. The envelope (ids, time, session, tree links, kind, phase, level, name) is the
same for all kinds; ``data`` holds the kind-specific payload described by the
``*Data`` TypedDicts below.

The event is a slotted stdlib dataclass rather than a ``pydantic.BaseModel`` on purpose:
events are built on the caller's thread inside framework callbacks, where a dataclass
costs ~0.5 µs and ``BaseModel.model_construct`` ~4.5 µs. Pydantic v2 still owns the
schema: :data:`EVENT_ADAPTER` validates events read back from a store and
:func:`event_json_schema` produces the JSON Schema that ``tracevault schema`` prints.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import TypeAdapter
from typing_extensions import TypedDict

SCHEMA_VERSION = 1

Kind = Literal[
    "input",
    "reasoning",
    "llm_call",
    "tool_call",
    "retrieval",
    "output",
    "error",
    "agent",
    "chain",
    "custom",
]
Phase = Literal["start", "end", "point"]
Level = Literal["trace", "debug", "info", "warning", "error"]
Framework = Literal["langchain", "llamaindex", "manual"]

KINDS: tuple[str, ...] = get_args(Kind)
PHASES: tuple[str, ...] = get_args(Phase)
LEVELS: tuple[str, ...] = get_args(Level)
LEVEL_RANK: dict[str, int] = {name: rank for rank, name in enumerate(LEVELS)}
# The level of a step's end by its status: a failure is an error; work that stopped
# without failing and without finishing (cancelled, abandoned) a warning; the rest
# (success, interrupted: waiting for input) info.
_STATUS_LEVEL = {"error": "error", "cancelled": "warning", "abandoned": "warning"}


def level_for(status: str) -> str:
    """Return the level an end with ``status`` is recorded at (every framework alike)."""
    return _STATUS_LEVEL.get(status, "info")


def level_rank(level: str) -> int:
    """Return the numeric rank of a level name; raise ``ValueError`` naming the choices."""
    try:
        return LEVEL_RANK[level.lower()]
    except KeyError:
        raise ValueError(f"unknown level {level!r}; choose one of {', '.join(LEVELS)}") from None


@dataclasses.dataclass(slots=True)
class AuditEvent:
    """One record of the audit trail.

    ``trace_id`` names the root run the event belongs to, ``span_id`` the step that
    produced it and ``parent_span_id`` the step that step runs under; a start and its end
    share a ``span_id``. Ids are opaque strings (framework run ids are kept as they come).
    ``data`` is JSON-safe by the time an event reaches middleware or a store.
    """

    event_id: str
    timestamp: datetime
    kind: Kind
    phase: Phase = "point"
    level: Level = "info"
    name: str | None = None
    session_id: str | None = None
    user_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    framework: Framework = "manual"
    tags: list[str] = dataclasses.field(default_factory=list)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Return the event as a plain dict (``timestamp`` stays a ``datetime``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# --- kind-specific payloads (documented shapes of ``AuditEvent.data``) -------------------


class TokenUsage(TypedDict, total=False):
    input: int
    output: int
    total: int
    cached: int  # read from the prompt cache (part of input)
    cache_write: int  # written to the prompt cache (part of input)
    reasoning: int


class InputData(TypedDict, total=False):
    type: str  # user_message, system, api_request, ...
    content: Any
    source: str
    ip_address: str


class ReasoningData(TypedDict, total=False):
    thought: str
    plan: list[str]
    confidence: float


class LLMCallData(TypedDict, total=False):
    model: str
    provider: str
    parameters: dict[str, Any]
    messages: list[Any]
    prompt: str
    tools: list[Any]
    response: Any
    tool_calls: list[Any]
    finish_reason: str
    usage: TokenUsage
    cost: float
    time_to_first_token_ms: float
    duration_ms: float
    status: str


class ToolCallData(TypedDict, total=False):
    tool_name: str
    parameters: Any
    result: Any
    # cancelled: its task was cancelled; interrupted: it waits for input (a human's
    # answer) and is called again once that arrives; abandoned: recording stopped
    # while it ran; handed_off: it passed control to another agent. None of them is a
    # failure. not_run: strict mode refused it (its intent could not be made durable).
    status: Literal["pending", "success", "error", "cancelled", "interrupted", "abandoned",
                    "handed_off", "not_run"]
    duration_ms: float
    tool_call_id: str


class RetrievedDocument(TypedDict, total=False):
    id: str
    content: str
    score: float
    metadata: dict[str, Any]


class RetrievalData(TypedDict, total=False):
    query: str
    documents: list[RetrievedDocument]
    duration_ms: float


class OutputData(TypedDict, total=False):
    type: str  # final_answer, message, ...
    content: Any
    tokens_used: int
    model: str
    cost: float


class ErrorData(TypedDict, total=False):
    type: str
    message: str
    stack_trace: str
    where: str
    recovery_action: str


class StepData(TypedDict, total=False):
    """Structural ``agent`` / ``chain`` steps: inputs at start, outputs at end."""

    inputs: Any
    outputs: Any
    status: str
    duration_ms: float


class CustomData(TypedDict, total=False):
    name: str
    payload: Any


KIND_DATA: dict[str, type] = {
    "input": InputData,
    "reasoning": ReasoningData,
    "llm_call": LLMCallData,
    "tool_call": ToolCallData,
    "retrieval": RetrievalData,
    "output": OutputData,
    "error": ErrorData,
    "agent": StepData,
    "chain": StepData,
    "custom": CustomData,
}

EVENT_ADAPTER: TypeAdapter[AuditEvent] = TypeAdapter(AuditEvent)
_DATA_ADAPTERS: dict[str, TypeAdapter[Any]] = {k: TypeAdapter(t) for k, t in KIND_DATA.items()}


def validate_event(raw: dict[str, Any] | AuditEvent) -> AuditEvent:
    """Validate an event (or its dict form) against the schema, including its ``data``.

    Raises ``pydantic.ValidationError`` with the failing field paths on bad input.
    """
    event = EVENT_ADAPTER.validate_python(raw.to_dict() if isinstance(raw, AuditEvent) else raw)
    _DATA_ADAPTERS[event.kind].validate_python(event.data)
    return event


def event_json_schema() -> dict[str, Any]:
    """Return the JSON Schema of :class:`AuditEvent`, with ``data`` typed per ``kind``."""
    schema = EVENT_ADAPTER.json_schema()
    defs = schema.setdefault("$defs", {})
    branches = []
    for kind, adapter in _DATA_ADAPTERS.items():
        sub = adapter.json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        title = sub.get("title", kind)
        defs[title] = sub
        branches.append(
            {
                "if": {"properties": {"kind": {"const": kind}}},
                "then": {"properties": {"data": {"$ref": f"#/$defs/{title}"}}},
            }
        )
    schema["allOf"] = branches
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "tracevault AuditEvent"
    return schema
