"""The JSON-lines sink: date partitions, rotation, crash recovery, logging mode."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import pytest

import tracevault
from tracevault.sinks.base import Forwarder, SinkError
from tracevault.sinks.jsonl import JsonlSink
from tracevault.testing import capture_events


def _lines(directory) -> list[dict]:
    out = []
    for path in sorted(directory.iterdir()):
        out.extend(json.loads(line) for line in path.read_text().splitlines())
    return out


def test_files_partitioned_by_event_date_with_seq(tmp_path):
    days = [datetime(2026, 3, d, 12, tzinfo=timezone.utc) for d in (1, 1, 2)]
    with capture_events(tmp_path) as cap:
        for i, day in enumerate(days):
            tracevault.capture.emit("custom", name=f"e{i}", data={"i": i}, timestamp=day)
        cap.flush()
        out = tmp_path / "out"
        assert Forwarder(cap.store, JsonlSink(directory=out)).drain_once().ok
        ids = [e.event_id for e in cap.events()]
    assert sorted(p.name for p in out.iterdir()) == [
        "tracevault-2026-03-01.jsonl", "tracevault-2026-03-02.jsonl"]
    lines = _lines(out)
    assert [line["event_id"] for line in lines] == ids
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert lines[0]["timestamp"] == "2026-03-01T12:00:00Z" and lines[0]["data"] == {"i": 0}


def test_rotates_past_max_bytes(tmp_path):
    with capture_events(tmp_path) as cap:
        log = tracevault.AuditLogger()
        for i in range(60):
            log.log_event("big", "x" * 100 + str(i))
        cap.flush()
        out = tmp_path / "out"
        sink = JsonlSink(directory=out, max_bytes=2048)
        assert Forwarder(cap.store, sink, batch_size=7).drain_once().ok
        sink.shutdown()
    files = sorted(out.iterdir())
    assert len(files) > 3
    assert all(p.stat().st_size < 2048 + 1024 for p in files)
    assert len(_lines(out)) == 60


def test_restart_after_a_crash_skips_what_is_on_disk_and_cuts_a_torn_line(tmp_path):
    with capture_events(tmp_path) as cap:
        log = tracevault.AuditLogger()
        for i in range(10):
            log.log_event("e", i)
        cap.flush()
        out = tmp_path / "out"
        sink = JsonlSink(directory=out)
        assert Forwarder(cap.store, sink).drain_once().ok
        sink.shutdown()
        (path,) = out.iterdir()
        with open(path, "ab") as fh:
            fh.write(b'{"seq": 11, "event_id": "torn')  # a crash mid-line
        # the cursor was never saved (crash before set_cursor): everything is re-sent
        again = JsonlSink(name="jsonl-2", directory=out)
        assert Forwarder(cap.store, again).drain_once().ok
        again.shutdown()
    lines = _lines(out)
    assert [line["seq"] for line in lines] == list(range(1, 11))


def test_logging_mode_writes_structured_records(tmp_path, caplog):
    with capture_events(tmp_path) as cap:
        log = tracevault.AuditLogger(session_id="s")
        log.log_input("hello")
        log.log_error(ValueError("bad"))
        cap.flush()
        with caplog.at_level(logging.DEBUG, logger="audit.trail"):
            assert Forwarder(cap.store, JsonlSink(logger="audit.trail")).drain_once().ok
    records = [r for r in caplog.records if r.name == "audit.trail"]
    assert [r.levelno for r in records] == [logging.INFO, logging.ERROR]
    assert json.loads(records[0].getMessage())["kind"] == "input"
    assert records[1].tracevault["data"]["type"] == "ValueError"  # type: ignore[attr-defined]


def test_needs_exactly_one_destination(tmp_path):
    with pytest.raises(SinkError):
        JsonlSink()
    with pytest.raises(SinkError):
        JsonlSink(directory=tmp_path, logger="x")
