"""Fixtures shared by the core tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import tracevault
from tracevault.testing import Capture, capture_events


@pytest.fixture()
def cap(tmp_path: Path) -> Iterator[Capture]:
    """A pipeline recording into a fresh SQLite ledger in ``tmp_path``."""
    with capture_events(tmp_path) as capture:
        yield capture


@pytest.fixture(autouse=True)
def _no_leftover_pipeline() -> Iterator[None]:
    """Each test starts and ends with no active pipeline."""
    tracevault.shutdown()
    yield
    tracevault.shutdown()
