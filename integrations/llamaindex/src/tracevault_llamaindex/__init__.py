"""tracevault for LlamaIndex: an audit trail of agents, workflows and query engines.

    import tracevault_llamaindex

    tracevault_llamaindex.instrument(session_id="chat-42", user_id="alice")
    await agent.run("What is 2 + 3?")      # FunctionAgent, ReActAgent, AgentWorkflow, ...

Every run is recorded as ``agent`` steps with the user's ``input``, each ``llm_call``,
``reasoning``, ``tool_call`` (intent, then outcome), ``retrieval``, the final ``output``
and any ``error``, in one tree per run.
"""

from __future__ import annotations

from tracevault_llamaindex.callbacks import TracevaultCallbackHandler
from tracevault_llamaindex.events import TracevaultEventHandler
from tracevault_llamaindex.instrument import (
    handler_errors,
    instrument,
    is_instrumented,
    uninstrument,
)
from tracevault_llamaindex.spans import TracevaultSpanHandler

__all__ = [
    "TracevaultCallbackHandler",
    "TracevaultEventHandler",
    "TracevaultSpanHandler",
    "handler_errors",
    "instrument",
    "is_instrumented",
    "uninstrument",
]
