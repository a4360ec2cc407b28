"""Helpers for tests (yours and ours): record into a throw-away ledger and read it back.

from tracevault.testing import capture_events

with capture_events(tmp_path) as cap:
    agent.invoke(...)
    events = cap.events()          # flushes, then reads the ledger
    assert [e.kind for e in events][:2] == ["input", "llm_call"]
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import tracevault
from tracevault.pipeline import Pipeline
from tracevault.render import Run, build_runs
from tracevault.schema import AuditEvent
from tracevault.store import Store, StoredEvent, open_store


class Capture:
    """A configured pipeline writing to a private ledger, with read-back helpers."""

    def __init__(self, pipeline: Pipeline, store: Store) -> None:
        self.pipeline = pipeline
        self.store = store

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until everything captured so far is in the ledger (fail loudly if not)."""
        if not self.pipeline.flush(timeout):
            raise AssertionError(f"tracevault did not flush in {timeout}s: {self.pipeline.stats()}")

    def stored(self, **filters: Any) -> list[StoredEvent]:
        """Flush, then return stored events (``Store.events`` filters) with their seq."""
        self.flush()
        return list(self.store.events(**filters))

    def events(self, **filters: Any) -> list[AuditEvent]:
        """Flush, then return the stored events in ledger order."""
        return [s.event for s in self.stored(**filters)]

    def kinds(self, **filters: Any) -> list[tuple[str, str, str | None]]:
        """Return ``(kind, phase, name)`` of every stored event, in order."""
        return [(e.kind, e.phase, e.name) for e in self.events(**filters)]

    def runs(self, **filters: Any) -> list[Run]:
        """Return the stored events linked into run trees."""
        return build_runs(self.stored(**filters))


@contextmanager
def capture_events(location: str | os.PathLike[str], **settings: Any) -> Iterator[Capture]:
    """Record into a fresh SQLite ledger in directory ``location`` (or at a store URL).

    Any :func:`tracevault.configure` keyword may be given. The pipeline is shut down and
    the previous configuration is not restored (the next capture starts from the
    environment), so tests stay independent.
    """
    text = os.fspath(location)
    url = text if "://" in text else f"sqlite:///{os.path.join(text, 'ledger.db')}"
    pipeline = tracevault.configure(store=url, **settings)
    store = open_store(url)
    try:
        yield Capture(pipeline, store)
    finally:
        tracevault.shutdown()
        store.close()
