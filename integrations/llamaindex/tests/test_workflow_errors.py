"""Failures in workflows: nested runs that fail."""

from __future__ import annotations

from pathlib import Path

import pytest
from li_agents import check_tree
from llama_index.core.workflow import StartEvent, StopEvent, Workflow, step
from tracevault_llamaindex.instrument import Installed

from tracevault.schema import AuditEvent
from tracevault.testing import capture_events


class _Inner(Workflow):
    @step
    async def only(self, ev: StartEvent) -> StopEvent:
        raise ValueError("inner boom")


class _Outer(Workflow):
    @step
    async def call_inner(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=await _Inner(timeout=10).run())


def _shape(events: list[AuditEvent]) -> list[tuple[str, str, str | None]]:
    return [(e.kind, e.phase, e.name) for e in events]


@pytest.mark.parametrize("level", ["debug", "trace"])
async def test_a_nested_run_that_fails_records_its_error_before_its_end(
    tmp_path: Path, instrumented: Installed, level: str
) -> None:
    with capture_events(tmp_path, level=level) as cap:
        with pytest.raises(ValueError, match="inner boom"):
            await _Outer(timeout=10).run()
        events = cap.events()
    check_tree(events)
    errors = [e for e in events if e.kind == "error"]
    assert len(errors) == 1  # one failure, however many runs and steps it crossed
    error = errors[0]
    shape = _shape(events)
    inner_start = events[shape.index(("agent", "start", "_Inner"))]
    assert error.parent_span_id == inner_start.span_id
    assert shape.index(("error", "point", "ValueError")) < shape.index(
        ("agent", "end", "_Inner"))
    assert error.level == "error" and "recovery_action" not in error.data
    if level == "trace":  # the failed step ended first; the error names it
        assert shape[1:6] == [
            ("chain", "start", "call_inner"), ("agent", "start", "_Inner"),
            ("chain", "start", "only"), ("chain", "end", "only"),
            ("error", "point", "ValueError")]
        assert error.span_id == events[4].span_id
    assert {e.data["status"] for e in events if e.phase == "end"} == {"error"}
