"""Entry point for ``TRACEVAULT_ENABLED=true``: instrument LlamaIndex with no code change."""

from __future__ import annotations

from tracevault_llamaindex.instrument import instrument


def enable() -> None:
    """Instrument LlamaIndex process-wide (idempotent)."""
    instrument()
