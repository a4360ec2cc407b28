"""Forwarders that feed remote systems from the ledger: Langfuse, LangSmith, OTLP, JSONL.

The vendor modules (:mod:`.langfuse`, :mod:`.langsmith`, :mod:`.otel`) import their SDKs
and are only loaded when used; this package itself only needs the core.
"""

from __future__ import annotations

from tracevault.sinks.base import (
    Batch,
    DrainReport,
    Forwarder,
    RetryAfter,
    Sink,
    SinkError,
    TransientError,
    backoff_delay,
)

__all__ = [
    "Batch",
    "DrainReport",
    "Forwarder",
    "RetryAfter",
    "Sink",
    "SinkError",
    "TransientError",
    "backoff_delay",
]
