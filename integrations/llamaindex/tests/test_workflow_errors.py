"""Failures in workflows: nested runs that fail, and steps retried by their retry policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from li_agents import FAIL, TimesOutOnce, check_tree, kinds
from llama_index.core.workflow import StartEvent, StopEvent, Workflow, step
from tracevault_llamaindex.instrument import Installed
from workflows.retry_policy import retry_policy, stop_after_attempt, wait_fixed

from tracevault.schema import AuditEvent
from tracevault.testing import Capture, capture_events


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


_attempts: list[int] = []


class _Flaky(Workflow):
    """Fails on its first attempts, as many as the test asks; retried twice at most."""

    fail_times = 1

    @step(retry_policy=retry_policy(wait=wait_fixed(0), stop=stop_after_attempt(3)))
    async def flaky(self, ev: StartEvent) -> StopEvent:
        _attempts.append(1)
        if len(_attempts) <= self.fail_times:
            raise RuntimeError(f"attempt {len(_attempts)} failed")
        return StopEvent(result="ok")


@pytest.mark.parametrize("fail_times", [2, 3])
async def test_a_step_retried_by_its_retry_policy_records_each_retried_failure_as_recovered(
    tmp_path: Path, instrumented: Installed, fail_times: int
) -> None:
    _attempts.clear()
    flow = _Flaky(timeout=10)
    flow.fail_times = fail_times
    with capture_events(tmp_path, level="trace") as cap:
        if fail_times == 3:  # attempts exhausted
            with pytest.raises(RuntimeError, match="attempt 3 failed"):
                await flow.run()
        else:
            assert await flow.run() == "ok"
        events = cap.events()
    check_tree(events)
    errors = [e for e in events if e.kind == "error"]
    assert [e.data["message"] for e in errors] == [
        f"attempt {n} failed" for n in range(1, fail_times + 1)]
    for n, error in enumerate(errors[:2], start=2):
        assert error.level == "warning"
        assert error.data["recovery_action"] == (
            f"retried by the retry policy of step flaky (attempt {n})")
    # Recorded when the step is retried: before the attempt that retries it starts.
    attempts = [e for e in events if (e.kind, e.phase, e.name) == ("chain", "start", "flaky")]
    assert len(attempts) == 3
    for error, retry in zip(errors[:2], attempts[1:], strict=True):
        assert events.index(error) < events.index(retry)
    if fail_times == 3:
        last = errors[-1]
        assert last.level == "error" and "recovery_action" not in last.data
        assert events[-1].data["status"] == "error"
    else:
        assert kinds(events)[-2:] == [("output", "point"), ("agent", "end")]
        assert events[-1].data["status"] == "success"


class _RetriesItsModel(Workflow):
    llm: TimesOutOnce

    @step(retry_policy=retry_policy(wait=wait_fixed(0), stop=stop_after_attempt(2)))
    async def ask(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=(await self.llm.acomplete("a")).text)


async def test_a_step_retried_after_its_model_call_failed_records_that_failure_as_retried(
    cap: Capture, instrumented: Installed
) -> None:
    flow = _RetriesItsModel(timeout=10)
    flow.llm = TimesOutOnce()
    assert await flow.run() == "ok a"
    events = cap.events()
    check_tree(events)
    assert kinds(events) == [
        ("agent", "start"), ("llm_call", "start"), ("llm_call", "end"), ("error", "point"),
        ("llm_call", "start"), ("llm_call", "end"), ("output", "point"), ("agent", "end")]
    error = events[3]
    assert error.data["type"] == "TimeoutError" and error.level == "warning"
    assert error.span_id == events[1].span_id  # the failed call
    assert error.data["recovery_action"] == "retried by the retry policy of step ask (attempt 2)"


class _CatchesTool(Workflow):
    @step
    async def work(self, ev: StartEvent) -> StopEvent:
        try:
            await FAIL.acall(x="q")
        except RuntimeError:
            return StopEvent(result="caught")
        return StopEvent(result="not raised")


async def test_a_tool_error_a_plain_workflow_step_catches_is_handled_there(
    cap: Capture, instrumented: Installed
) -> None:
    # No agent to return it to: the step handled it (an agent's step would show the
    # error to its model as the tool's result).
    assert await _CatchesTool(timeout=10).run() == "caught"
    events = cap.events()
    check_tree(events)
    errors = [e for e in events if e.kind == "error"]
    assert [e.data["recovery_action"] for e in errors] == ["handled in work; the run continued"]
