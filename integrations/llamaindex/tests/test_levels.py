"""TRACEVAULT_LEVEL above a step's start: the step is not recorded at all (no end), and
what ran inside it hangs under its nearest recorded ancestor (or has no parent)."""

from __future__ import annotations

from pathlib import Path

import pytest
from li_agents import DownLLM, check_tree, function_agent
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from tracevault_llamaindex.instrument import Installed

from tracevault.schema import AuditEvent
from tracevault.testing import capture_events


def _shape(events: list[AuditEvent]) -> list[tuple[str, str, str | None]]:
    return [(e.kind, e.phase, e.level) for e in events]


@pytest.mark.parametrize("level", ["info", "warning"])
def test_a_failed_query_records_only_steps_whose_start_passed_the_level(
    tmp_path: Path, instrumented: Installed, level: str
) -> None:
    index = VectorStoreIndex.from_documents([Document(text="Paris is in France.")],
                                            embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(llm=DownLLM())
    with capture_events(tmp_path, level=level) as cap:
        with pytest.raises(ConnectionError):
            engine.query("capital?")
        events = cap.events()
    check_tree(events)  # query and synthesize (debug) ended with an error: no end either
    error = events[-1]
    assert error.kind == "error" and error.data["message"] == "provider down"
    assert error.parent_span_id is None  # no recorded step above the model call
    if level == "info":
        assert _shape(events) == [
            ("input", "point", "info"),
            ("retrieval", "start", "info"), ("retrieval", "end", "info"),
            ("llm_call", "start", "info"), ("llm_call", "end", "error"),
            ("error", "point", "error"),
        ]
        assert all(e.parent_span_id is None for e in events)
        assert error.span_id == events[3].span_id  # the recorded call that failed
    else:
        assert _shape(events) == [("error", "point", "error")]
        assert error.span_id is None  # the call it failed was not recorded


@pytest.mark.parametrize("level", ["info", "warning"])
async def test_an_agent_whose_tool_fails_records_only_steps_whose_start_passed_the_level(
    tmp_path: Path, instrumented: Installed, level: str
) -> None:
    with capture_events(tmp_path, level=level) as cap:
        await function_agent().run(user_msg="What is 2 + 3?")
        events = cap.events()
    check_tree(events)
    if level == "warning":
        # Neither the run nor the tool call (info) is recorded: the recovered failure is.
        assert _shape(events) == [("error", "point", "warning")]
        error = events[0]
        assert error.parent_span_id is None and error.span_id is None
    else:
        run, error = events[0], next(e for e in events if e.kind == "error")
        assert (run.kind, run.phase) == ("agent", "start")
        tool_end = next(e for e in events if e.kind == "tool_call" and e.phase == "end"
                        and e.data["status"] == "error")
        assert error.span_id == tool_end.span_id and error.parent_span_id == run.span_id
    assert error.data["recovery_action"].startswith("the error was returned to the agent")


async def test_a_strict_intent_below_the_level_is_recorded_with_its_end(
    tmp_path: Path, instrumented: Installed
) -> None:
    with capture_events(tmp_path, level="error", strict=True) as cap:
        await function_agent().run(user_msg="What is 2 + 3?")
        events = cap.events()
    check_tree(events)
    calls = [(e.name, e.phase, e.data["status"]) for e in events if e.kind == "tool_call"]
    # The two calls run concurrently: each one's intent, then its outcome.
    for name, outcome in (("add", "success"), ("fail", "error")):
        assert [c for c in calls if c[0] == name] == [(name, "start", "pending"),
                                                      (name, "end", outcome)]
