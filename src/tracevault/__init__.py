"""tracevault: a tamper-evident audit trail for LLM agents.

The public surface: :class:`AuditLogger`, :func:`context`, :func:`configure`,
:func:`flush`, :func:`shutdown`, :func:`erase`, :func:`open_store`, and the schema
types.
"""

from __future__ import annotations

from tracevault.api import (
    AuditLogger,
    configure,
    erase,
    flush,
    shutdown,
    stats,
    tool_call,
)
from tracevault.context import context
from tracevault.pipeline import DurabilityError, Middleware, PipelineStats
from tracevault.schema import AuditEvent, event_json_schema, validate_event
from tracevault.store import Store, StoreError, open_store
from tracevault.toolcall import ToolCall

__version__ = "0.1.0"

__all__ = [
    "AuditEvent",
    "AuditLogger",
    "DurabilityError",
    "Middleware",
    "PipelineStats",
    "Store",
    "StoreError",
    "ToolCall",
    "__version__",
    "configure",
    "context",
    "erase",
    "event_json_schema",
    "flush",
    "open_store",
    "shutdown",
    "stats",
    "tool_call",
    "validate_event",
]
