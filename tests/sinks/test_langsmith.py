"""The LangSmith sink through the real SDK client, against a local runs-API receiver."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from opentelemetry import trace as otel_trace

from tracevault.sinks.base import Forwarder
from tracevault.sinks.langsmith import LangSmithSink
from tracevault.testing import capture_events


def _deliver(tmp_path: Any, receiver: Any, agent_run: Any, batch_size: int = 5) -> str:
    with capture_events(tmp_path) as cap:
        trace_id = agent_run()
        cap.flush()
        sink = LangSmithSink(api_url=receiver.url, api_key="lsv2-test", project="audit")
        forwarder = Forwarder(cap.store, sink, batch_size=batch_size)
        report = forwarder.drain_once(timeout=30)
        forwarder.shutdown()
    assert report.ok, report
    return str(trace_id)


@pytest.mark.parametrize("multipart", [True, False], ids=["multipart", "batch"])
def test_runs_tree_types_usage_and_session(tmp_path, agent_run, make_receiver, multipart):
    receiver = make_receiver(multipart=multipart)
    before = otel_trace.get_tracer_provider()
    _deliver(tmp_path, receiver, agent_run)
    assert otel_trace.get_tracer_provider() is before
    paths = {p for _, p, _ in receiver.received.requests}
    assert paths == ({"/runs/multipart"} if multipart else {"/runs/batch"})
    runs = receiver.runs()
    by_name = {r["name"]: r for r in runs.values()}
    agent = by_name["support-agent"]
    plan, llm = by_name["plan"], by_name["gpt-4o-mini"]
    tool, failed, kb = by_name["get_weather"], by_name["book_flight"], by_name["kb"]
    assert agent["parent_run_id"] is None and agent["trace_id"] == agent["id"]
    assert uuid.UUID(agent["id"]).version == 7
    assert plan["parent_run_id"] == agent["id"] and llm["parent_run_id"] == plan["id"]
    assert tool["parent_run_id"] == agent["id"]
    assert {r["trace_id"] for r in runs.values()} == {agent["id"]}
    for run in runs.values():  # dotted_order spells the path from the root
        path = run["dotted_order"].split(".")
        assert path[0].endswith(agent["id"]) and path[-1].endswith(run["id"])
        meta = run["extra"]["metadata"]
        assert meta["session_id"] == "chat-7" and meta["thread_id"] == "chat-7"
        assert meta["user_id"] == "alice"
        assert run["session_name"] == "audit"
        assert "sinks-test" in run["tags"]
        assert run.get("end_time"), run["name"]  # every step finished
    assert (agent["run_type"], plan["run_type"], llm["run_type"], tool["run_type"],
            kb["run_type"]) == ("chain", "chain", "llm", "tool", "retriever")
    assert llm["inputs"]["input"][0]["content"] == "Weather in Paris?"
    usage = llm["extra"]["metadata"]["usage_metadata"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (120, 30, 150)
    assert usage["input_token_details"] == {"cache_read": 64, "cache_creation": 16}
    assert llm["extra"]["metadata"]["ls_model_name"] == "gpt-4o-mini"
    assert llm["extra"]["metadata"]["ls_provider"] == "openai"
    assert tool["inputs"] == {"city": "Paris"} and tool["outputs"]["temp_c"] == 21
    assert "no seats left" in failed["error"]
    assert kb["outputs"]["output"][0]["id"] == "doc-1"


def test_start_creates_and_end_updates_the_same_run(tmp_path, receiver, agent_run):
    _deliver(tmp_path, receiver, agent_run, batch_size=1)  # every event its own request
    posts = {r["id"]: r for r in receiver.received.runs_post}
    patches = receiver.received.runs_patch
    assert patches, "span ends are sent as updates"
    for patch in patches:
        assert patch["id"] in posts  # an update always follows its create
        assert patch["dotted_order"] == posts[patch["id"]]["dotted_order"]
