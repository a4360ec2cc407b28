"""Choosing sinks (TRACEVAULT_SINKS / configure), the capture hook, status and forward."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

import tracevault
from tracevault.cli import main
from tracevault.sinks import registry
from tracevault.sinks.jsonl import JsonlSink
from tracevault.store import open_store
from tracevault.testing import capture_events


def test_parse_names_and_reject_unknown_ones():
    assert registry.parse("otlp, JSONL,langfuse") == ["otlp", "jsonl", "langfuse"]
    with pytest.raises(ValueError, match="choose from"):
        registry.parse("otlp,datadog")


def test_an_alias_and_a_repeat_are_one_sink(monkeypatch):
    assert registry.parse("jsonl,otel, OTLP,jsonl") == ["jsonl", "otlp"]
    monkeypatch.setenv("TRACEVAULT_SINKS", "otel,otlp")
    assert registry.configured() == ["otlp"]
    assert registry.configured({"sinks": ["OTLP", "otel"]}) == ["otlp"]


def _lines(directory):
    return [json.loads(x) for p in directory.iterdir() for x in p.read_text().split("\n") if x]


def test_otel_next_to_otlp_forwards_in_process(tmp_path, monkeypatch, unused_port):
    # Both names built an "otlp" sink, and two sinks under one name stopped every
    # forwarder, jsonl included, with nothing in `tracevault status`.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{unused_port}")
    monkeypatch.setenv("TRACEVAULT_OTEL_METRICS", "false")
    monkeypatch.setenv("TRACEVAULT_FORWARD_EXIT_TIMEOUT", "0")  # the receiver stays down
    monkeypatch.setenv("TRACEVAULT_JSONL_DIR", str(tmp_path / "out"))
    with capture_events(tmp_path, sinks=["jsonl", "otel", "otlp"]) as cap:
        tracevault.AuditLogger().log_input("hi")
        cap.flush()
        group = registry.active()
        assert group is not None and group.wait_ready(30)
        assert not group.errors
        assert [f.name for f in group.forwarders] == ["jsonl", "otlp"]
        assert group.forwarders[0].force_flush(30)
    assert len(_lines(tmp_path / "out")) == 1


def test_sinks_that_cannot_start_are_in_status_and_the_others_run(tmp_path, capsys):
    # An unknown name, and a name two sinks share (one cursor for both): each is
    # refused on its own, kept for `tracevault status`, and the other sink delivers.
    class Closing(JsonlSink):
        closed = False

        def shutdown(self) -> None:
            self.closed = True
            super().shutdown()

    url = f"sqlite:///{tmp_path}/ledger.db"
    shared = [Closing(directory=str(tmp_path / d)) for d in ("a", "b")]
    audit = JsonlSink(name="audit", directory=str(tmp_path / "audit"))
    with capture_events(url, sinks=["datadog", *shared, audit]):
        tracevault.AuditLogger().log_input("hi")
        assert registry.flush(30) is False
        group = registry.active()
        assert group is not None and [f.name for f in group.forwarders] == ["audit"]
        assert [s.closed for s in shared] == [True, True]  # built, refused, released
    assert main(["status", "--store", url, "--json"]) == 0
    rows = {r["sink"]: r for r in json.loads(capsys.readouterr().out)}
    assert "unknown sink 'datadog'" in rows["datadog"]["last_error"]
    assert "two sinks are named jsonl" in rows["jsonl"]["last_error"]
    assert rows["audit"]["lag"] == 0 and rows["audit"]["last_error"] is None
    assert len(_lines(tmp_path / "audit")) == 1


def test_shutdown_delivers_what_was_captured_then_stops_the_forwarders(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEVAULT_JSONL_DIR", str(tmp_path / "out"))
    url = f"sqlite:///{tmp_path}/ledger.db"
    tracevault.configure(store=url, sinks=["jsonl"])
    log = tracevault.AuditLogger()
    for i in range(20):
        log.log_event("e", i)
    tracevault.shutdown()  # no flush before: shutdown() gives the forwarders their chance
    assert registry.active() is None
    assert len(_lines(tmp_path / "out")) == 20


def test_exit_keeps_to_its_budget_when_a_receiver_never_answers(tmp_path, monkeypatch):
    # A sink whose export and shutdown hang, as SDKs retrying against a receiver that
    # accepts connections and never answers do. Exit waits the budget, then leaves it.
    class Hanging(JsonlSink):
        def __init__(self) -> None:
            super().__init__(name="hanging", directory=str(tmp_path / "out"))
            self.answer = threading.Event()
            self.closing = threading.Event()

        def export(self, batch) -> None:
            self.answer.wait()
            super().export(batch)

        def shutdown(self) -> None:
            self.closing.set()
            self.answer.wait()
            super().shutdown()

    sink = Hanging()
    watchdog = threading.Timer(30, sink.answer.set)  # frees a shutdown that waited for it
    monkeypatch.setenv("TRACEVAULT_FORWARD_EXIT_TIMEOUT", "0.2")
    url = f"sqlite:///{tmp_path}/ledger.db"
    tracevault.configure(store=url, sinks=[sink])
    tracevault.AuditLogger().log_input("hi")
    watchdog.start()
    try:
        tracevault.shutdown()
        assert sink.closing.is_set() and not sink.answer.is_set()  # asked, not waited for
    finally:
        watchdog.cancel()
        sink.answer.set()
    store = open_store(url, create=False)
    assert (store.count(), store.get_cursor("hanging")) == (1, 0)  # kept for the next run
    store.close()


def test_env_starts_forwarders_with_the_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEVAULT_SINKS", "jsonl")
    monkeypatch.setenv("TRACEVAULT_JSONL_DIR", str(tmp_path / "out"))
    with capture_events(tmp_path) as cap:
        tracevault.AuditLogger(session_id="s").log_input("hi")
        assert registry.flush(30)
        ids = {e.event_id for e in cap.events()}
    assert registry.active() is None  # shutdown stopped the forwarders
    lines = [json.loads(x) for p in (tmp_path / "out").iterdir() for x in p.read_text().split("\n")
             if x]
    assert {line["event_id"] for line in lines} == ids


def test_configure_sinks_overrides_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACEVAULT_SINKS", "jsonl")
    with capture_events(tmp_path, sinks=[]):
        assert registry.active() is None


def test_a_sink_that_cannot_start_is_reported_and_the_others_run(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LANGFUSE_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("LANGFUSE_SECRET_KEY", raising=False)
    monkeypatch.setenv("TRACEVAULT_JSONL_DIR", str(tmp_path / "out"))
    url = f"sqlite:///{tmp_path}/ledger.db"
    with capture_events(url, sinks=["langfuse", "jsonl"]):
        tracevault.AuditLogger().log_input("hi")
        group = registry.active()
        assert group is not None
        assert registry.flush(30) is False  # langfuse could not start
        assert "LANGFUSE_PUBLIC_KEY" in group.errors["langfuse"]
        assert [f.name for f in group.forwarders] == ["jsonl"]
    assert main(["status", "--store", url, "--json"]) == 0
    rows = {r["sink"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["jsonl"]["lag"] == 0
    assert "LANGFUSE_PUBLIC_KEY" in rows["langfuse"]["last_error"]


def test_forward_drains_once_and_status_shows_cursor_and_lag(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TRACEVAULT_SINKS", raising=False)
    monkeypatch.setenv("TRACEVAULT_JSONL_DIR", str(tmp_path / "out"))
    url = f"sqlite:///{tmp_path}/ledger.db"
    with capture_events(url):
        log = tracevault.AuditLogger()
        for i in range(7):
            log.log_event("e", i)
    assert main(["status", "--store", url, "--sink", "jsonl", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["sink"], row["cursor"], row["lag"]) == ("jsonl", 0, 7)
    assert main(["forward", "--store", url, "--sink", "jsonl"]) == 0
    assert "delivered 7 events" in capsys.readouterr().out
    assert main(["status", "--store", url, "--sink", "jsonl"]) == 0
    text = capsys.readouterr().out
    assert "jsonl" in text and " 7 " in text


def test_forward_exits_1_when_a_sink_stays_down(tmp_path, monkeypatch, capsys, unused_port):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{unused_port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    monkeypatch.setenv("TRACEVAULT_OTEL_METRICS", "false")
    url = f"sqlite:///{tmp_path}/ledger.db"
    with capture_events(url), tracevault.AuditLogger().span("a"):
        pass
    assert main(["forward", "--store", url, "--sink", "otlp", "--timeout", "1"]) == 1
    assert "failed" in capsys.readouterr().err
    assert main(["status", "--store", url, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["lag"] == 2 and "unreachable" in row["last_error"]


def test_forward_without_sinks_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TRACEVAULT_SINKS", raising=False)
    url = f"sqlite:///{tmp_path}/ledger.db"
    with capture_events(url):
        tracevault.AuditLogger().log_input("x")
    assert main(["forward", "--store", url]) == 2
    assert "TRACEVAULT_SINKS" in capsys.readouterr().err


@pytest.mark.parametrize("sink", ["langfuse", "otlp"])
def test_a_script_exits_within_its_budget_while_the_receiver_does_not_answer(
        tmp_path, make_receiver, sink):
    # The receiver takes each request and holds it unanswered; the SDKs would wait for
    # it from exit hooks of their own (their timeout is 120 s here). The process must
    # still leave once its budget is spent, keeping what was not delivered ahead of the
    # sink's cursor. The budget leaves the SDK time to start and send on a loaded
    # machine (with 0.5 s, Langfuse's import alone could spend it: no request went out).
    server = make_receiver()
    server.hold_after = 0
    store = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = {**os.environ, "TRACEVAULT_STORE": store, "TRACEVAULT_SINKS": sink,
           "TRACEVAULT_FORWARD_EXIT_TIMEOUT": "3", "OTEL_EXPORTER_OTLP_ENDPOINT": server.url,
           "OTEL_EXPORTER_OTLP_TIMEOUT": "120", "LANGFUSE_BASE_URL": server.url,
           "LANGFUSE_TIMEOUT": "120", "LANGFUSE_PUBLIC_KEY": "pk-lf-test",
           "LANGFUSE_SECRET_KEY": "sk-lf-test"}
    script = ("import tracevault\n"
              "with tracevault.AuditLogger(session_id='s').span('run'):\n"
              "    pass\n")
    try:
        # Held requests are answered only after a minute: exiting before that is
        # exiting without them.
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                              text=True, timeout=50)
    finally:
        server.release.set()
    assert done.returncode == 0, done.stderr
    assert server.held.is_set()  # a request went out and was never answered
    ledger = open_store(store, create=False)
    assert ledger.count() == 2 and ledger.get_cursor(sink) == 0
    ledger.close()


@pytest.mark.parametrize("sink", ["otlp", "langfuse", "langsmith"])
def test_a_short_script_delivers_before_it_exits(tmp_path, make_receiver, capsys, sink):
    # The sinks are built on a background thread; in a script that exits at once that
    # happens during interpreter exit, where the OpenTelemetry exporters' thread pools
    # could no longer run: nothing reached the receiver.
    server = make_receiver()
    env = {**os.environ, "TRACEVAULT_STORE": f"sqlite:///{tmp_path / 'ledger.db'}",
           "TRACEVAULT_SINKS": sink, "OTEL_EXPORTER_OTLP_ENDPOINT": server.url,
           "LANGFUSE_BASE_URL": server.url, "LANGFUSE_PUBLIC_KEY": "pk-lf-test",
           "LANGFUSE_SECRET_KEY": "sk-lf-test", "LANGSMITH_ENDPOINT": server.url,
           "LANGSMITH_API_KEY": "test"}
    script = ("import tracevault\n"
              "tracevault.AuditLogger(session_id='s').log_input('hi')\n")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert server.received.requests, f"{sink}: nothing delivered ({done.stderr})"
    assert main(["status", "--json", "--store", env["TRACEVAULT_STORE"]]) == 0
    assert json.loads(capsys.readouterr().out)[0]["lag"] == 0


def test_what_threads_record_after_the_main_thread_ends_is_forwarded(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "TRACEVAULT_STORE": f"sqlite:///{tmp_path / 'ledger.db'}",
           "TRACEVAULT_SINKS": "jsonl", "TRACEVAULT_JSONL_DIR": str(out)}
    script = ("import threading, tracevault\n"
              "log = tracevault.AuditLogger(session_id='s')\n"
              "log.log_input('early')\n"
              "go = threading.Event()\n"
              "def late():\n"
              "    go.wait(60)\n"
              "    for i in range(3):\n"
              "        log.log_input(f'late{i}')\n"
              "threading.Thread(target=late).start()\n"  # not a daemon: waited for at exit
              "threading.Timer(0.2, go.set).start()\n")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(x) for p in out.iterdir() for x in p.read_text().split("\n") if x]
    assert sorted(line["data"]["content"] for line in lines) == ["early", "late0", "late1",
                                                                  "late2"]
