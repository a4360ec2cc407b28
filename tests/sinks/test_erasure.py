"""Erasure reaches the sinks: what a forwarder sends is what the ledger holds when it
sends, even for span starts it saw before the session was erased."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

import tracevault
from tracevault.sinks.base import Forwarder, Sink, TransientError
from tracevault.sinks.langfuse import LangfuseSink
from tracevault.sinks.langsmith import LangSmithSink
from tracevault.sinks.otel import OTelSink
from tracevault.testing import capture_events

SECRET = "Jane Q. Customer"
SINKS = ["langfuse", "otlp", "langsmith"]


def _sink(kind: str, url: str) -> Sink:
    if kind == "otlp":  # content on, so tool parameters would be sent
        return OTelSink(endpoint=url, timeout=1, metrics=False, capture_content=True)
    if kind == "langfuse":  # a fresh key: the SDK keeps one client per key
        return LangfuseSink(public_key=f"pk-lf-{uuid.uuid4().hex[:8]}", secret_key="sk-lf-test",
                            base_url=url, timeout=1)
    return LangSmithSink(api_url=url, api_key="lsv2-test", project="audit", timeout_ms=1000)


def _record() -> None:
    """Seq 1 agent start, 2 tool start, 3 tool end, 4 agent end; SECRET in every payload."""
    log = tracevault.AuditLogger(session_id="gdpr", tags=[SECRET])
    with log.span("agent", kind="agent", inputs={"customer": SECRET}), \
            log.tool_call("lookup", {"customer": SECRET}) as call:
        call.result = {"ok": True}


def _erase(tmp_path: Path) -> None:
    """Erase the session as a GDPR request does: payload and salt go, an erasure record
    (seq 5) says so, the chain verifies."""
    assert tracevault.erase(session_id="gdpr", store=f"sqlite:///{tmp_path / 'ledger.db'}") == 4


@pytest.mark.parametrize("kind", SINKS)
def test_a_session_erased_during_an_outage_is_not_sent_when_the_receiver_returns(
        tmp_path: Path, make_receiver: Any, unused_port: int, kind: str) -> None:
    with capture_events(tmp_path) as cap:
        _record()
        cap.flush()
        forwarder = Forwarder(cap.store, _sink(kind, f"http://127.0.0.1:{unused_port}"))
        with pytest.raises(TransientError):  # receiver down; the attempt saw every start
            forwarder.deliver_next()
        _erase(tmp_path)
        assert cap.store.verify().ok
        receiver = make_receiver(port=unused_port)
        assert forwarder.deliver_next() == 5  # the four steps and the erasure's record
        forwarder.shutdown()
    text = receiver.body_text()
    assert "lookup" in text  # the steps arrive, their erased content does not
    assert SECRET not in text


@pytest.mark.parametrize("kind", SINKS)
def test_an_end_sent_after_erasure_carries_none_of_its_starts_erased_data(
        tmp_path: Path, receiver: Any, kind: str) -> None:
    with capture_events(tmp_path) as cap:
        _record()
        cap.flush()
        forwarder = Forwarder(cap.store, _sink(kind, receiver.url), batch_size=3)
        assert forwarder.deliver_next() == 3  # the agent's start goes out before erasure
        before = len(receiver.received.bodies)
        _erase(tmp_path)
        assert forwarder.deliver_next() == 2  # the agent's end, after it, and the record
        forwarder.shutdown()
    after = b"\n".join(receiver.received.bodies[before:]).decode("utf-8", "replace")
    assert after and SECRET not in after
