"""Fixtures for the LangChain/LangGraph integration tests: a fresh ledger per test,
scripted agents, and a check that no per-run state outlives any test."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tracevault_langchain.runs import RUNS

import tracevault
from tracevault import callback_wire
from tracevault.testing import Capture, capture_events

# The shared helpers (lc_agents, lc_tree) sit next to the tests; pytest's importlib mode
# does not put this directory on sys.path by itself.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture()
def cap(tmp_path: Path) -> Iterator[Capture]:
    """A pipeline recording into a fresh SQLite ledger in ``tmp_path``."""
    with capture_events(tmp_path) as capture:
        yield capture


@pytest.fixture(autouse=True)
def _runs_evicted() -> Iterator[None]:
    """Every test starts and ends with no open run state and no active pipeline."""
    tracevault.shutdown()
    RUNS.clear()
    # A test's handler that had to stay in this process (callback_wire.keep_here) must
    # not keep the next test's callbacks here too.
    callback_wire._kept_here = False
    yield
    gc.collect()  # abandoned generators end their runs when collected
    tracevault.flush(30.0)  # the ledger writer has handled every callback
    leftover = max(len(RUNS), len(RUNS.lineage))
    RUNS.clear()
    tracevault.shutdown()
    assert leftover == 0, f"{leftover} runs still open after the test"
