"""Fixtures for the LlamaIndex integration tests: a fresh ledger and a fresh
instrumentation per test, and a check that no per-span state outlives a test."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tracevault_llamaindex
from tracevault_llamaindex.instrument import Installed

import tracevault
from tracevault.testing import Capture, capture_events

# Shared helpers (li_agents) sit next to the tests; importlib mode does not add this
# directory to sys.path by itself.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture()
def cap(tmp_path: Path) -> Iterator[Capture]:
    """A pipeline recording into a fresh SQLite ledger in ``tmp_path``."""
    with capture_events(tmp_path) as capture:
        yield capture


@pytest.fixture()
def instrumented() -> Iterator[Installed]:
    """LlamaIndex instrumented for the test; afterwards no open span or call remains."""
    tracevault_llamaindex.uninstrument()
    installed = tracevault_llamaindex.instrument()
    yield installed
    gc.collect()  # abandoned streams end when collected
    rec = installed.recorder
    tracevault_llamaindex.uninstrument()
    assert rec.errors == 0, f"{rec.errors} handler failures"
    assert not rec.spans, f"open spans left: {list(rec.spans)[:5]}"
    assert not rec.llm, f"open LLM calls left: {list(rec.llm)[:5]}"
    assert not rec.dups, f"nested LLM calls left: {list(rec.dups)[:5]}"


@pytest.fixture(autouse=True)
def _fresh_pipeline() -> Iterator[None]:
    tracevault.shutdown()
    yield
    tracevault.shutdown()
