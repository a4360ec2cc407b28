"""Delivery guarantees end to end, with the real SDKs and local receivers.

"Exactly once by id" here means: delivery is at-least-once (a batch whose
acknowledgement was lost is sent again), every id a sink sends is derived from
tracevault ids, and the receiver keeps one record per id (as Langfuse, LangSmith and
OTLP backends upsert). The tests assert that, after deduplication by id, the receiver
holds every event of the ledger, none twice and nothing else, and that a re-sent
record is identical to the first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

import tracevault
from tracevault.sinks import registry
from tracevault.sinks.base import Sink
from tracevault.testing import capture_events


def _otlp(url: str) -> Sink:
    from tracevault.sinks.otel import OTelSink

    return OTelSink(endpoint=url, timeout=1, metrics=False, capture_content=True)


def _langfuse(url: str) -> Sink:
    from tracevault.sinks.langfuse import LangfuseSink

    return LangfuseSink(public_key=f"pk-lf-{uuid.uuid4().hex[:8]}", secret_key="sk-lf",
                        base_url=url, timeout=1)


def _langsmith(url: str) -> Sink:
    from tracevault.sinks.langsmith import LangSmithSink

    return LangSmithSink(api_url=url, api_key="lsv2-test", timeout_ms=2000)


def _span_ids(receiver: Any) -> tuple[list[str], set[str]]:
    """(raw delivered event ids, event ids after dedup by span id) from OTLP spans."""
    raw: list[str] = []
    for span in receiver.spans():
        raw.extend(_event_ids_of_span(span))
    unique: set[str] = set()
    for span in receiver.unique_spans().values():
        unique.update(_event_ids_of_span(span))
    return raw, unique


def _event_ids_of_span(span: Any) -> list[str]:
    if "tracevault.event_ids" in span.attributes:
        return list(span.attributes["tracevault.event_ids"])
    return list(json.loads(span.attributes["langfuse.observation.metadata.tracevault_event_ids"]))


def _run_ids(receiver: Any) -> tuple[list[str], set[str]]:
    raw: list[str] = []
    with receiver.lock:
        records = list(receiver.received.runs_post) + list(receiver.received.runs_patch)
    for run in records:
        raw.extend(run["extra"]["metadata"]["tracevault_event_ids"])
    unique: set[str] = set()
    for run in receiver.runs().values():
        unique.update(run["extra"]["metadata"]["tracevault_event_ids"])
    return raw, unique


SINKS: dict[str, tuple[Callable[[str], Sink], Callable[[Any], tuple[list[str], set[str]]]]] = {
    "otlp": (_otlp, _span_ids),
    "langfuse": (_langfuse, _span_ids),
    "langsmith": (_langsmith, _run_ids),
}


def _ledger_ids(cap: Any) -> set[str]:
    return {e.event_id for e in cap.events()}


@pytest.mark.parametrize("kind", sorted(SINKS))
def test_outage_then_recovery_delivers_every_event_once(
    tmp_path, monkeypatch, make_receiver, unused_port, agent_run, kind
):
    make_sink, delivered_ids = SINKS[kind]
    url = f"http://127.0.0.1:{unused_port}"
    monkeypatch.setenv("TRACEVAULT_FORWARD_MAX_BACKOFF", "0.2")
    with capture_events(tmp_path, sinks=[make_sink(url)]) as cap:
        group = registry.active()
        assert group is not None and group.wait_ready(30)
        (forwarder,) = group.forwarders
        # receiver down: runs go on, the ledger grows, the forwarder reports the failure
        agent_run(session_id="s1")
        cap.flush()
        deadline = time.monotonic() + 60
        while forwarder.failures == 0 and time.monotonic() < deadline:
            forwarder.force_flush(timeout=0.1)
        assert forwarder.failures > 0 and forwarder.last_error
        first = cap.store.count()
        agent_run(session_id="s2")
        cap.flush()
        assert cap.store.count() > first
        stats = tracevault.stats()
        assert stats is not None and stats.dropped == 0 and stats.pending == 0
        row = {c.name: c for c in cap.store.sink_cursors()}[forwarder.name]
        assert row.last_error and row.seq < cap.store.head()[0]
        # receiver back: everything arrives, once per id
        receiver = make_receiver(port=unused_port)
        assert forwarder.force_flush(timeout=60)
        raw, unique = delivered_ids(receiver)
        ledger = _ledger_ids(cap)
        assert {c.name: c for c in cap.store.sink_cursors()}[forwarder.name].last_error is None
    assert unique == ledger
    assert sorted(raw) == sorted(set(raw)), "no event was delivered twice"


FORWARD = [sys.executable, "-m", "tracevault.cli", "forward", "--timeout", "60",
           "--batch-size", "10"]


@pytest.mark.parametrize("kind", ["otlp", "langsmith"])
def test_killed_mid_delivery_then_restarted_delivers_every_event_once(
    tmp_path, make_receiver, agent_run, kind
):
    receiver = make_receiver()
    url = f"sqlite:///{tmp_path}/ledger.db"
    with capture_events(url) as cap:
        for i in range(5):
            agent_run(session_id=f"s{i}")
        ledger = _ledger_ids(cap)
    env = {**os.environ, "TRACEVAULT_SINKS": kind, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
           "TRACEVAULT_OTEL_METRICS": "false", "LANGSMITH_ENDPOINT": receiver.url,
           "LANGSMITH_API_KEY": "lsv2-test", "TRACEVAULT_FORWARD_EXIT_TIMEOUT": "0"}
    receiver.hold_after = 3  # the 4th request is received, then never answered
    first = subprocess.Popen([*FORWARD, "--store", url], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert receiver.held.wait(60), "the forwarder never reached the 4th batch"
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    receiver.hold_after = None
    receiver.release.set()
    second = subprocess.run([*FORWARD, "--store", url], env=env, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    raw, unique = (_span_ids if kind == "otlp" else _run_ids)(receiver)
    assert unique == ledger
    assert len(raw) > len(set(raw)), "the unacknowledged batch was sent again"
    with capture_events(url) as cap:
        assert cap.store.get_cursor(kind) == cap.store.head()[0]


def test_no_raw_canary_reaches_any_sink(tmp_path, make_receiver, agent_run):
    """The default pipeline redacts before the ledger; sinks only read the ledger."""
    pytest.importorskip("tracevault.redaction")
    from tracevault.sinks.jsonl import JsonlSink

    email, key = "canary.person@example.org", "sk-live-CANARY0123456789abcdefABCDEF"
    receivers = {k: make_receiver() for k in SINKS}
    sinks = [make(receivers[k].url) for k, (make, _) in SINKS.items()]
    sinks.append(JsonlSink(directory=tmp_path / "jsonl"))
    with capture_events(tmp_path, sinks=sinks) as cap:
        log = tracevault.AuditLogger(session_id="canary", user_id="u1")
        with log.span("agent", kind="agent", inputs={"mail": email}):
            log.log_input(f"contact me at {email}, my key is {key}")
            log.log_llm_call("gpt-4o-mini", messages=[{"role": "user", "content": email}],
                             response=f"noted {key}", usage={"input": 5, "output": 2})
            with log.tool_call("send_mail", {"to": email, "api_key": key}) as call:
                call.result = f"sent to {email}"
        assert registry.flush(60)
        stored = "\n".join(json.dumps(e.to_dict(), default=str) for e in cap.events())
    assert "[EMAIL]" in stored and email not in stored  # redacted in the ledger itself
    texts = {k: r.body_text() for k, r in receivers.items()}
    texts["jsonl"] = "\n".join(p.read_text() for p in (tmp_path / "jsonl").iterdir())
    for name, text in texts.items():
        assert "[EMAIL]" in text or "EMAIL" in text, f"{name} received no redacted payload"
        assert email not in text and key not in text, f"raw canary reached {name}"
