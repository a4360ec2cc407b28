"""The JSON-lines sink: date partitions, rotation, crash recovery, logging mode."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

import tracevault
from tracevault.schema import AuditEvent
from tracevault.sinks import jsonl
from tracevault.sinks.base import Batch, Forwarder, SinkError
from tracevault.sinks.jsonl import DEFAULT_MAX_BYTES, JsonlSink, encode_line, from_env
from tracevault.sinks.tree import SpanIndex
from tracevault.store import StoredEvent
from tracevault.testing import capture_events

DAY = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


def _lines(directory) -> list[dict]:
    out = []
    for path in sorted(directory.glob("*.jsonl")):
        out.extend(json.loads(line) for line in path.read_text().splitlines())
    return out


def _ledger(ledger: str, n: int, *, days: int = 1) -> list[StoredEvent]:
    """Stored events seq 1..n of a ledger, without a store (ids name the ledger),
    spread over ``days`` date partitions in turn."""
    return [StoredEvent(seq, AuditEvent(event_id=f"{ledger}-{seq}", kind="custom",
                                        timestamp=DAY.replace(day=1 + seq % days),
                                        data={"i": seq}))
            for seq in range(1, n + 1)]


def _forward(sink: JsonlSink, events: list[StoredEvent], batch_size: int) -> None:
    """What a forwarder from cursor 0 does: export the events batch by batch."""
    for i in range(0, len(events), batch_size):
        sink.export(Batch(events[i:i + batch_size], SpanIndex(None)))


def test_files_partitioned_by_event_date_with_seq(tmp_path):
    days = [datetime(2026, 3, d, 12, tzinfo=timezone.utc) for d in (1, 1, 2)]
    with capture_events(tmp_path) as cap:
        for i, day in enumerate(days):
            tracevault.capture.emit("custom", name=f"e{i}", data={"i": i}, timestamp=day)
        cap.flush()
        out = tmp_path / "out"
        assert Forwarder(cap.store, JsonlSink(directory=out)).drain_once().ok
        ids = [e.event_id for e in cap.events()]
    assert sorted(p.name for p in out.glob("*.jsonl")) == [
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
    files = sorted(out.glob("*.jsonl"))
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
        (path,) = out.glob("*.jsonl")
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


@pytest.mark.parametrize("days", [1, 2])
def test_restart_with_smaller_batches_skips_what_is_on_disk(tmp_path, days):
    events = _ledger("a", 30, days=days)
    _forward(JsonlSink(directory=tmp_path), events, 30)
    # re-sent from an older cursor in batches that end below the files' last line
    _forward(JsonlSink(directory=tmp_path), events, 4)
    assert sorted(line["seq"] for line in _lines(tmp_path)) == list(range(1, 31))
    assert len(list(tmp_path.glob("*.jsonl"))) == days


@pytest.mark.parametrize("old", [3, 20], ids=["old-ledger-shorter", "old-ledger-longer"])
def test_lines_of_another_ledger_do_not_hide_this_ledgers_events(tmp_path, old):
    # e.g. the ledger file was replaced: its successor starts again at seq 1
    _forward(JsonlSink(directory=tmp_path), _ledger("old", old), 50)
    _forward(JsonlSink(directory=tmp_path), _ledger("new", 7), 50)
    _forward(JsonlSink(directory=tmp_path), _ledger("new", 7), 3)  # and a re-send
    ids = [line["event_id"] for line in _lines(tmp_path)]
    assert ids == [f"old-{i}" for i in range(1, old + 1)] + [f"new-{i}" for i in range(1, 8)]
    # the old ledger's forwarder goes on from its cursor: its next events are written too
    _forward(JsonlSink(directory=tmp_path), _ledger("old", old + 2)[old:], 50)
    assert Counter(line["event_id"] for line in _lines(tmp_path)) == Counter(
        [f"old-{i}" for i in range(1, old + 3)] + [f"new-{i}" for i in range(1, 8)])


@pytest.mark.parametrize("torn", [False, True], ids=["complete", "torn"])
def test_crash_recovery_with_a_last_line_over_one_megabyte(tmp_path, torn):
    events = _ledger("a", 2)
    events[1].event.data = {"chunks": ["\u00e9" * 200_000 for _ in range(4)]}  # 1.6 MB
    _forward(JsonlSink(directory=tmp_path), events, 2)
    (path,) = tmp_path.glob("*.jsonl")
    size = path.stat().st_size
    assert size > 1_500_000
    if torn:
        with open(path, "r+b") as fh:
            fh.truncate(size - 100)
    _forward(JsonlSink(directory=tmp_path), events, 2)  # the cursor was never saved
    assert [line["seq"] for line in _lines(tmp_path)] == [1, 2]
    assert path.stat().st_size == size


@pytest.mark.parametrize("days", [1, 2])
def test_two_writers_on_one_directory_write_each_event_once(tmp_path, days):
    events = _ledger("a", 600, days=days)
    start = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def forwarder(batch_size: int) -> None:
        try:
            sink = JsonlSink(directory=tmp_path, max_bytes=8192)  # rotates as well
            start.wait()
            _forward(sink, events, batch_size)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=forwarder, args=(n,)) for n in (20, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and not any(t.is_alive() for t in threads)
    seqs = Counter(line["seq"] for line in _lines(tmp_path))  # every line parses
    assert sorted(seqs) == list(range(1, 601))
    assert [seq for seq, n in seqs.items() if n > 1] == []


@pytest.mark.parametrize(("value", "expected"), [
    ("4096", 4096), ("100MB", 100_000_000), ("50 MiB", 50 * 2**20), ("1GiB", 2**30),
    ("2kb", 2000), ("lots", DEFAULT_MAX_BYTES), ("10", DEFAULT_MAX_BYTES),
    ("-5", DEFAULT_MAX_BYTES), ("", DEFAULT_MAX_BYTES),
])
def test_max_bytes_from_the_environment(tmp_path, monkeypatch, caplog, value, expected):
    monkeypatch.setenv("TRACEVAULT_JSONL_DIR", str(tmp_path))
    monkeypatch.setenv("TRACEVAULT_JSONL_MAX_BYTES", value)
    with caplog.at_level(logging.WARNING, logger="tracevault.sinks"):
        assert from_env().max_bytes == expected
    warned = any("TRACEVAULT_JSONL_MAX_BYTES" in r.getMessage() for r in caplog.records)
    assert warned == (value != "" and expected == DEFAULT_MAX_BYTES)


MIDNIGHT = datetime(2026, 3, 1, 23, 59, 59, tzinfo=timezone.utc)


def _stamped(stamps: list[datetime], ledger: str = "a") -> list[StoredEvent]:
    """Stored events seq 1..n of a ledger with the given timestamps."""
    return [StoredEvent(seq, AuditEvent(event_id=f"{ledger}-{seq}", kind="custom",
                                        timestamp=stamp, data={"i": seq}))
            for seq, stamp in enumerate(stamps, 1)]


def _assert_each_once(directory, n: int) -> None:
    assert Counter(line["seq"] for line in _lines(directory)) == Counter(range(1, n + 1))


def _restarts(directory, events: list[StoredEvent], batch_size: int) -> None:
    """A forwarder restarted before every batch (each one a fresh sink)."""
    for i in range(0, len(events), batch_size):
        JsonlSink(directory=directory).export(
            Batch(events[i:i + batch_size], SpanIndex(None)))


@pytest.mark.parametrize(("first", "again"), [(10, 1), (10, 3), (1, 1), (3, 10), (4, 7)])
def test_resent_batches_spanning_two_dates_are_written_once(tmp_path, first, again):
    # a batch's events alternate between two day files (events around midnight)
    events = _stamped([MIDNIGHT + timedelta(seconds=i % 2) for i in range(10)])
    _restarts(tmp_path, events, first)
    _restarts(tmp_path, events, again)  # the cursor was never saved: all re-sent
    _assert_each_once(tmp_path, 10)
    assert len(list(tmp_path.glob("*.jsonl"))) == 2


def test_batch_size_one_restarts_across_two_days(tmp_path):
    events = _stamped([MIDNIGHT + timedelta(seconds=i % 2) for i in range(10)])
    for end in range(1, 11):  # after each batch of one, a restart re-sends the last two
        _restarts(tmp_path, events[end - 1:end], 1)
        _restarts(tmp_path, events[max(0, end - 2):end], 1)
    _assert_each_once(tmp_path, 10)


def test_a_late_timestamp_at_midnight_is_not_written_twice(tmp_path):
    # seq 6 was stamped before seq 5 (threads): it goes back to the earlier day's file
    stamps = ([MIDNIGHT - timedelta(seconds=1)] * 4
              + [MIDNIGHT + timedelta(seconds=2), MIDNIGHT]
              + [MIDNIGHT + timedelta(seconds=3)] * 4)
    events = _stamped(stamps)
    _restarts(tmp_path, events, 10)
    for size in (3, 1, 4):
        _restarts(tmp_path, events, size)
    _assert_each_once(tmp_path, 10)


def test_a_batch_partly_on_disk_after_a_crash_writes_exactly_the_rest(tmp_path):
    events = _stamped([MIDNIGHT + timedelta(seconds=i % 2) for i in range(10)])
    _restarts(tmp_path, events, 10)
    early, late = sorted(tmp_path.glob("*.jsonl"))
    # the crash came after seq 1..6 were written: drop 7 and 9 (early day) and 8 and 10
    # (late day), leaving half of seq 7's line
    for path in (early, late):
        kept = path.read_bytes().splitlines(keepends=True)[:3]
        path.write_bytes(b"".join(kept))
    with open(early, "ab") as fh:
        fh.write(encode_line(events[6])[:20])
    _restarts(tmp_path, events, 1)
    _assert_each_once(tmp_path, 10)
    assert [line["seq"] for line in _lines(tmp_path)] == [1, 3, 5, 7, 9, 2, 4, 6, 8, 10]


def test_another_ledgers_lines_at_the_same_seqs_on_both_dates_do_not_hide_events(tmp_path):
    stamps = [MIDNIGHT + timedelta(seconds=i % 2) for i in range(6)]
    _restarts(tmp_path, _stamped(stamps, "old"), 6)
    events = _stamped(stamps, "new")
    _restarts(tmp_path, events[:3], 3)
    _restarts(tmp_path, events, 2)  # a re-send: new-1..3 skipped, new-4..6 written
    assert Counter(line["event_id"] for line in _lines(tmp_path)) == Counter(
        [f"old-{i}" for i in range(1, 7)] + [f"new-{i}" for i in range(1, 7)])


def test_a_resend_finds_its_events_in_every_part_of_a_day(tmp_path):
    events = _stamped([MIDNIGHT + timedelta(seconds=i // 20) for i in range(40)])
    for event in events:
        event.event.data = {"pad": "x" * 300}
    sink = JsonlSink(directory=tmp_path, max_bytes=1024)
    _forward(sink, events, 40)
    assert len(list(tmp_path.glob("*.jsonl"))) > 6
    for size in (40, 9, 1):
        _forward(JsonlSink(directory=tmp_path, max_bytes=1024), events, size)
    _assert_each_once(tmp_path, 40)


def test_past_the_scan_limit_a_batch_is_written_again_never_lost(tmp_path, monkeypatch):
    events = _ledger("a", 20)
    _forward(JsonlSink(directory=tmp_path), events, 20)
    monkeypatch.setattr(jsonl, "_SCAN_LIMIT", 1)  # only the last line is looked at
    _forward(JsonlSink(directory=tmp_path), events, 20)
    seqs = Counter(line["seq"] for line in _lines(tmp_path))
    assert sorted(seqs) == list(range(1, 21)) and seqs[20] == 1
