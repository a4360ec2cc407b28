"""The `Store` contract, run against both ledgers: SQLite and a real PostgreSQL.

Each test gets an empty ledger of each kind (``backend``); what one backend does, the
other must do identically: reading, sessions, stats, verification, tampering
detection, forwarder cursors, several processes appending at once, the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import tracevault
from tracevault.cli import main
from tracevault.ledger import encode_event
from tracevault.schema import AuditEvent
from tracevault.store import Store, StoreError, open_store
from tracevault.store.erasures import ERASURE
from tracevault.store.sql import SQLStore

T0 = datetime(2026, 1, 31, 23, 0, tzinfo=timezone.utc)  # spans two months and days


@dataclass
class Backend:
    """An empty ledger of one kind, and raw SQL access to it as an attacker would have."""

    kind: str
    url: str

    def open(self) -> Store:
        return open_store(self.url)

    def attack(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run ``sql`` (``?`` placeholders) with the append-only triggers dropped."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.url[len("sqlite:///") :], isolation_level=None)
            try:
                conn.execute("DROP TRIGGER IF EXISTS events_no_update")
                conn.execute("DROP TRIGGER IF EXISTS events_no_delete")
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        import psycopg

        from tracevault.store.postgres import to_pg

        with psycopg.connect(self.url, autocommit=True) as pg:
            pg.execute("DROP TRIGGER IF EXISTS events_no_update ON events")
            pg.execute("DROP TRIGGER IF EXISTS events_no_delete ON events")
            cur = pg.execute(to_pg(sql).encode(), params)
            return cur.fetchall() if cur.description else []


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite:///{tmp_path / 'ledger.db'}")
    return Backend("postgres", request.getfixturevalue("pg_url"))


@pytest.fixture()
def store(backend: Backend) -> Iterator[Store]:
    opened = backend.open()
    yield opened
    opened.close()


def _ev(i: int, kind: str, **fields: Any) -> AuditEvent:
    fields.setdefault("timestamp", T0 + timedelta(minutes=i))
    return AuditEvent(event_id=f"ev-{i:04d}", kind=kind, **fields)


def sample() -> list[AuditEvent]:
    """Two users, three sessions, four runs, tools that succeed and fail, model calls."""
    out: list[AuditEvent] = []
    for run, (session, user) in enumerate(
        [("s-a", "alice"), ("s-a", "alice"), ("s-b", "bob"), ("s-c", "alice")]
    ):
        base = run * 20
        common = {"session_id": session, "user_id": user, "trace_id": f"run-{run}"}
        out.append(_ev(base, "input", phase="point", data={"content": f"question {run}"}, **common))
        for t, (tool, ms, status) in enumerate(
            [("search", 10.0, "success"), ("search", 30.0, "success"), ("calc", 5.0, "error")]
        ):
            span = {"span_id": f"sp-{run}-{t}", **common}
            out.append(
                _ev(base + 1 + 2 * t, "tool_call", phase="start", name=tool,
                    data={"tool_name": tool, "parameters": {"q": t}, "status": "pending"}, **span)
            )  # fmt: skip
            out.append(
                _ev(base + 2 + 2 * t, "tool_call", phase="end", name=tool,
                    data={"tool_name": tool, "result": "r", "status": status,
                          "duration_ms": ms + run}, **span)
            )  # fmt: skip
        out.append(
            _ev(base + 8, "llm_call", phase="end", name="gpt-x",
                data={"model": "gpt-x", "usage": {"input": 7, "output": 3, "total": 10},
                      "cost": 0.25}, **common)
        )  # fmt: skip
        if run == 2:
            out.append(_ev(base + 9, "error", level="error", data={"message": "boom"}, **common))
        out.append(_ev(base + 10, "output", phase="point", data={"content": "answer"}, **common))
    return out


def test_appended_events_read_back_exactly(store: Store) -> None:
    events = sample()
    assert store.head()[0] == 0 and store.count() == 0
    assert store.append(events[:10]) == 10
    assert store.append(events[10:]) == len(events)
    assert store.count() == len(events) and store.head()[0] == len(events)
    read = list(store.events())
    assert [e.seq for e in read] == list(range(1, len(events) + 1))
    assert [encode_event(e.event) for e in read] == [encode_event(e) for e in events]


def test_appends_are_idempotent_by_event_id(store: Store) -> None:
    events = sample()[:6]
    assert store.append(events[:3]) == 3
    # A retried batch overlapping what is stored, with an internal duplicate too.
    assert store.append([events[1], events[3], events[3], events[2], events[4], events[5]]) == 6
    assert store.append(events[:2]) == 6  # all stored already: nothing written
    assert [e.event.event_id for e in store.events()] == [e.event_id for e in events]
    assert store.verify().ok


def test_event_filters(store: Store) -> None:
    events = sample()
    store.append(events)

    def ids(**kw: Any) -> list[str]:
        return [e.event.event_id for e in store.events(**kw)]

    assert ids(session_id="s-b") == [e.event_id for e in events if e.session_id == "s-b"]
    assert ids(trace_id="run-3") == [e.event_id for e in events if e.trace_id == "run-3"]
    assert ids(kinds=["error", "llm_call"]) == [
        e.event_id for e in events if e.kind in ("error", "llm_call")
    ]
    since, until = T0 + timedelta(minutes=20), T0 + timedelta(minutes=40)
    assert ids(since=since, until=until) == [
        e.event_id for e in events if since <= e.timestamp < until
    ]
    assert ids(after_seq=5, limit=3) == [e.event_id for e in events[5:8]]
    assert ids(session_id="nobody") == []


def test_sessions(store: Store) -> None:
    store.append(sample())
    sessions = {s.session_id: s for s in store.sessions()}
    assert [s.session_id for s in store.sessions()] == ["s-c", "s-b", "s-a"]  # latest first
    a = sessions["s-a"]
    assert (a.user_id, a.events, a.runs, a.errors, a.tool_calls, a.tokens) == (
        "alice", 18, 2, 0, 6, 20
    )  # fmt: skip
    assert a.cost == pytest.approx(0.5)
    assert a.start == "2026-01-31T23:00:00.000000Z" and a.end == "2026-01-31T23:30:00.000000Z"
    assert sessions["s-b"].errors == 1
    assert [s.session_id for s in store.sessions(user_id="bob")] == ["s-b"]
    assert [s.session_id for s in store.sessions(limit=1)] == ["s-c"]
    late = store.sessions(since=T0 + timedelta(minutes=60))
    assert [s.session_id for s in late] == ["s-c"]
    # A session several users took part in is each one's.
    store.append([_ev(100, "input", phase="point", session_id="s-a", user_id="carol",
                      trace_id="run-9", data={"content": "me too"})])
    assert [s.session_id for s in store.sessions(user_id="carol")] == ["s-a"]
    assert [s.session_id for s in store.sessions(user_id="alice")] == ["s-a", "s-c"]


def test_stats(store: Store) -> None:
    store.append(sample())
    stats = store.stats()
    tools = {t.tool: t for t in stats.tools}
    assert (tools["search"].calls, tools["search"].errors) == (8, 0)
    assert tools["search"].avg_ms == pytest.approx(21.5)
    assert tools["search"].p95_ms == 33.0
    assert (tools["calc"].calls, tools["calc"].errors, tools["calc"].error_rate) == (4, 4, 1.0)
    assert [(m.model, m.calls, m.tokens) for m in stats.models] == [("gpt-x", 4, 40)]
    assert stats.models[0].cost == pytest.approx(1.0)
    days = {d.day: d for d in stats.days}
    assert sorted(days) == ["2026-01-31", "2026-02-01"]
    assert (days["2026-01-31"].runs, days["2026-01-31"].failed_runs) == (3, 1)
    assert (days["2026-02-01"].runs, days["2026-02-01"].failed_runs) == (1, 0)
    assert sum(d.events for d in stats.days) == len(sample())
    early = store.stats(until=T0 + timedelta(minutes=20))
    assert sum(d.events for d in early.days) == 9


def test_verify_and_erasure(backend: Backend, store: Store) -> None:
    store.append(sample())
    report = store.verify()
    assert report.ok and report.checked == len(sample()) and report.erased == 0
    # Erasure clears payload and salt below a sealed record of itself, and still verifies.
    assert store.erase(seqs=[2], reason="test") == 1
    report = store.verify()
    assert report.ok and (report.checked, report.erased, report.erasures) == (38, 1, 1)
    erased = next(store.events(after_seq=1, limit=1))
    # A tool call's start: the status column stays with the ids
    assert erased.event.data == {"erased": True, "status": "pending"}
    assert erased.event.session_id == "s-a"
    record = next(store.events(after_seq=37)).event
    assert (record.kind, record.level, record.name) == ("custom", "warning", ERASURE)
    assert record.data["payload"]["erases"] == {"seqs": [2]}
    assert record.data["payload"]["reason"] == "test"
    assert set(record.data["payload"]["by"]) == {"user", "host", "pid"}
    # The triggers let the same change through in SQL (so erasure works without a
    # store), but an erasure no record covers is reported: content cannot be wiped
    # unseen.
    sql = "UPDATE events SET payload = NULL, salt = NULL WHERE seq BETWEEN 4 AND 9 OR seq = 12"
    if backend.kind == "sqlite":
        conn = sqlite3.connect(backend.url[len("sqlite:///") :], isolation_level=None)
        conn.execute(sql)
        conn.close()
    else:
        import psycopg

        with psycopg.connect(backend.url, autocommit=True) as pg:
            pg.execute(sql)
    report = store.verify()
    assert not report.ok and report.first_bad_seq == 4
    assert "no erasure record after it covers it" in (report.reason or "")
    # A record cannot be made to cover it after the fact: an erasure that finds nothing
    # left to clear appends no record.
    assert store.erase(seqs=[4]) == 0
    assert store.head()[0] == 38 and store.verify().first_bad_seq == 4
    # What is found erased can be recorded as found (a ledger erased before erasures
    # were recorded): the record says so, and verify accepts those rows again.
    assert isinstance(store, SQLStore)
    assert store.record_found_erasures(reason="found in an audit") == [*range(4, 10), 12]
    report = store.verify()
    assert report.ok and (report.erased, report.erasures) == (8, 2)
    found = next(store.events(after_seq=38)).event
    assert found.name == ERASURE and found.data["payload"]["found"] is True
    assert found.data["payload"]["erases"] == {"seqs": [[4, 9], 12]}
    assert found.data["payload"]["reason"] == "found in an audit"
    assert store.record_found_erasures() == [] and store.head()[0] == 39


def test_an_erasure_record_covers_only_what_it_names_before_it(
    backend: Backend, store: Store
) -> None:
    store.append(sample())
    assert store.erase(session_id="s-a") == 18  # record: #38
    store.append([_ev(901, "input", session_id="s-a", data={"content": "later"})])  # #39
    assert store.verify().ok
    for seq in (39, 19):  # the session after its record; another session
        backend.attack("UPDATE events SET payload = NULL, salt = NULL WHERE seq = ?", (seq,))
        report = store.verify()
        assert report.first_bad_seq == seq
        assert "no erasure record after it covers it" in (report.reason or "")


def test_an_erasure_record_wiped_by_sql_is_reported(backend: Backend, store: Store) -> None:
    store.append(sample())
    assert store.erase(session_id="s-a") == 18  # record: #38
    store.append([_ev(901, "input", session_id="s-a", data={"content": "later"})])  # #39
    assert store.erase(session_id="s-a") == 1  # record: #40, of the same session
    assert store.erase(before=datetime.now(timezone.utc)) == 19  # record: #41
    assert store.verify().ok
    # Later records name #38's session and time, yet a record is never erased: its
    # who and why cleared by SQL is tampering.
    backend.attack("UPDATE events SET payload = NULL, salt = NULL WHERE seq = 38")
    report = store.verify()
    assert report.first_bad_seq == 38 and report.erasures == 2
    assert "no erasure record after it covers it" in (report.reason or "")


def test_erase_clears_content_and_keeps_the_trail_verifiable(store: Store) -> None:
    store.append(sample())  # runs: seq 1-9 and 10-18 (s-a), 19-28 (s-b), 29-37 (s-c)
    with pytest.raises(ValueError, match="never erases the whole ledger"):
        store.erase()
    assert store.erase(session_id="s-a") == 18  # record: #38
    assert store.erase(session_id="s-a") == 0  # erased already: not counted again
    assert store.erase(user_id="bob", trace_id="run-3") == 0  # filters combine with AND
    assert store.head()[0] == 38  # an erasure of nothing leaves no record
    assert store.erase(user_id="alice", trace_id="run-3") == 9  # record: #39
    assert store.erase(seqs=[1, 19, 20, 38]) == 2  # #1 was erased with its session; #40
    with pytest.raises(ValueError, match="in the future"):
        store.erase(before=datetime.now(timezone.utc) + timedelta(minutes=1))
    with pytest.raises(TypeError, match="before must be a datetime"):
        store.erase(before="2026-01-01")  # type: ignore[arg-type]
    # Ids are found as the application wrote them, though a column keeps NUL and lone
    # surrogates replaced.
    odd = "odd\x00id\ud800"
    store.append([_ev(900, "input", session_id=odd, data={"content": "x"})])  # #41
    assert store.erase(session_id=odd) == 1  # record: #42
    # A custom event without a name is erased like any other (only records are kept).
    store.append([_ev(902, "custom", session_id="unnamed", data={"payload": {"x": 1}})])
    assert store.erase(session_id="unnamed") == 1  # #43, record: #44
    report = store.verify()
    assert report.ok and (report.erased, report.erasures) == (31, 5)
    events = {e.seq: e.event for e in store.events()}
    erased = {seq for seq, e in events.items() if e.data.get("erased")}
    assert erased == {*range(1, 21), *range(29, 38), 41, 43}
    # Each erasure is recorded with what it erased; records are never erased (#38 was
    # asked for by sequence number and kept).
    erases = [events[seq].data["payload"]["erases"] for seq in (38, 39, 40, 42)]
    assert erases == [{"session_id": "s-a"}, {"user_id": "alice", "trace_id": "run-3"},
                      {"seqs": [1, 19, 20, 38]}, {"session_id": "odd\ufffdid\ufffd"}]
    assert events[42].session_id == events[41].session_id  # shown with the session
    assert events[21].data["tool_name"] == "search"  # the rest is intact
    # What the columns keep of an outcome stays readable: status, duration, tokens, cost.
    assert events[7].data == {"erased": True, "status": "error", "duration_ms": 5.0}
    assert events[8].data == {"erased": True, "tokens": 10, "cost": 0.25}
    assert events[10].session_id == "s-a" and events[10].kind == "input"  # ids stay
    # Counts, tokens and cost come from the indexed columns, which erasure keeps.
    assert sum(s.tokens for s in store.sessions()) == 40


def test_erase_before_a_time_is_retention_a_few_rows_at_a_time(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tracevault.store.sql as sql

    monkeypatch.setattr(sql, "_ERASE_ROWS", 4)  # several statements, as for a large ledger
    store.append(sample())
    # run 0 is minutes 0-10; run 1 minutes 20-30, its output at 30 not before it
    assert store.erase(before=T0 + timedelta(minutes=30)) == 17
    assert store.erase(before=T0 + timedelta(minutes=30), user_id="bob") == 0
    events = {e.seq: e.event for e in store.events()}
    assert {seq for seq, e in events.items() if e.data.get("erased")} == set(range(1, 18))
    assert store.verify().ok
    # Retention never erases the records of earlier erasures, old as they get.
    assert store.erase(before=datetime.now(timezone.utc)) == 20  # record: #39
    (first, second) = [e for e in store.events(after_seq=37)]
    assert first.event.name == ERASURE and "erased" not in first.event.data
    assert second.event.data["payload"]["erases"]["before"].endswith("Z")
    report = store.verify()
    assert report.ok and (report.erased, report.erasures) == (37, 2)


def test_erase_by_many_sequence_numbers(store: Store) -> None:
    store.append(sample())
    wanted = list(range(2, 1200, 2))  # more than one statement's worth
    assert store.erase(seqs=wanted) == 18
    report = store.verify()
    assert report.ok and (report.erased, report.erasures) == (18, 1)
    assert store.erase(seqs=wanted) == 0 and store.head()[0] == 38


def _tamper_cases() -> list[tuple[str, str, tuple[Any, ...], int, str]]:
    return [
        ("column", "UPDATE events SET user_id = 'mallory' WHERE seq = 5", (), 5, "chain breaks"),
        ("delete", "DELETE FROM events WHERE seq = 8", (), 8, "row 8 is missing"),
        ("tail", "DELETE FROM events WHERE seq >= 35", (), 35, "ledger head says"),
        ("erase-forged", "UPDATE events SET payload = NULL, salt = NULL, digest = ? WHERE seq = 3",
         (b"\x00" * 32,), 3, "chain breaks"),
    ]  # fmt: skip


@pytest.mark.parametrize("case", _tamper_cases(), ids=lambda c: c[0])
def test_tampering_through_sql_is_detected(
    backend: Backend, store: Store, case: tuple[str, str, tuple[Any, ...], int, str]
) -> None:
    store.append(sample())
    _, sql, params, bad, reason = case
    backend.attack(sql, params)
    report = store.verify()
    assert not report.ok
    assert report.first_bad_seq == bad and reason in (report.reason or "")


def test_changed_payload_and_swapped_rows_are_detected(backend: Backend, store: Store) -> None:
    store.append(sample())
    (payload,) = backend.attack("SELECT payload FROM events WHERE seq = 7")[0]
    forged = payload.replace('"r"', '"R"')
    assert forged != payload
    backend.attack("UPDATE events SET payload = ? WHERE seq = 7", (forged,))
    report = store.verify()
    assert report.first_bad_seq == 7 and "does not match its digest" in (report.reason or "")
    backend.attack("UPDATE events SET payload = ? WHERE seq = 7", (payload,))
    assert store.verify().ok  # the original bytes verify again: nothing else was touched
    backend.attack("UPDATE events SET seq = -1 WHERE seq = 10")
    backend.attack("UPDATE events SET seq = 10 WHERE seq = 11")
    backend.attack("UPDATE events SET seq = 11 WHERE seq = -1")
    report = store.verify()
    assert report.first_bad_seq == 10 and "chain breaks" in (report.reason or "")


def test_triggers_refuse_changes(backend: Backend, store: Store) -> None:
    store.append(sample())
    if backend.kind == "sqlite":
        conn = sqlite3.connect(backend.url[len("sqlite:///") :], isolation_level=None)
        errors: tuple[type[Exception], ...] = (sqlite3.Error,)
        run = conn.execute
    else:
        import psycopg

        pg = psycopg.connect(backend.url, autocommit=True)
        errors = (psycopg.Error,)
        run = pg.execute  # type: ignore[assignment]
    for sql in ("UPDATE events SET name = 'x' WHERE seq = 1", "DELETE FROM events WHERE seq = 1"):
        with pytest.raises(errors, match="append-only"):
            run(sql)
    assert store.count() == len(sample()) and store.verify().ok


def test_cursors(store: Store) -> None:
    assert store.get_cursor("otlp") == 0
    store.set_cursor("otlp", 7)
    store.set_cursor("otlp", 3)  # a cursor only moves forward
    store.set_cursor("jsonl", 2)
    assert (store.get_cursor("otlp"), store.get_cursor("jsonl")) == (7, 2)
    store.set_sink_error("otlp", "HTTP 503")
    cursors = {c.name: c for c in store.sink_cursors()}
    assert cursors["otlp"].seq == 7 and cursors["otlp"].last_error == "HTTP 503"
    assert cursors["otlp"].error_at is not None and cursors["jsonl"].last_error is None
    store.set_sink_error("otlp", None)
    assert {c.name: c.last_error for c in store.sink_cursors()} == {"otlp": None, "jsonl": None}


def test_awkward_content_round_trips_and_verifies(store: Store) -> None:
    events = [
        _ev(1, "custom", name="nul\x00name", session_id="s\x00", data={"text": "a\x00b"}),
        _ev(2, "custom", data={"escaped": "\\u0000 is not a NUL", "uni": "żółw 🐢"}),
        _ev(3, "custom", data={"surrogate": "bad \ud800 half", "nan": float("nan")}),
        _ev(4, "custom", data={"big": "x" * 300_000, "deep": [[[[[[[[1]]]]]]]]}),
        _ev(5, "custom", timestamp=datetime(1999, 12, 31, 23, 59, 59, 999999, timezone.utc)),
        _ev(6, "custom", timestamp=datetime(2031, 7, 1, tzinfo=timezone(timedelta(hours=5)))),
        _ev(7, "tool_call", phase="end", data={"duration_ms": 0.1 + 0.2, "status": "success"}),
        _ev(8, "llm_call", phase="end", data={"usage": {"total": 2**40}, "cost": 1e-12}),
    ]
    assert store.append(events) == len(events)
    # The same content again under new ids: appended by a store that wrote last (in
    # PostgreSQL one statement binding arrays, where the first batch went by COPY).
    again = [dataclasses.replace(e, event_id=f"{e.event_id}-again") for e in events]
    assert store.append(again) == 2 * len(events)
    stored = [e.event for e in store.events()]
    for read in (stored[: len(events)], stored[len(events) :]):
        assert read[0].data == {"text": "a\x00b"} and read[0].name == "nul\x00name"
        assert read[1].data == events[1].data
        assert read[2].data["surrogate"] != events[2].data["surrogate"]  # repaired, not lost
        assert len(read[3].data["big"]) == 300_000
        assert read[4].timestamp == events[4].timestamp
        assert read[5].timestamp == datetime(2031, 6, 30, 19, tzinfo=timezone.utc)
        assert read[6].data["duration_ms"] == 0.1 + 0.2
        assert read[7].data["usage"]["total"] == 2**40
    report = store.verify()
    assert report.ok and report.checked == 2 * len(events)


def test_the_pipeline_records_into_the_store(backend: Backend) -> None:
    tracevault.configure(store=backend.url)
    log = tracevault.AuditLogger(session_id="pipe", user_id="ann")
    for i in range(50):
        log.log_tool_call("lookup", {"i": i}, result=i, duration_ms=float(i))
    assert tracevault.flush(30)
    tracevault.shutdown()
    store = backend.open()
    try:
        assert store.count() == 100 and store.verify().ok
        (summary,) = store.sessions()
        assert (summary.session_id, summary.tool_calls) == ("pipe", 50)
    finally:
        store.close()


def test_cli_commands_work_unchanged(
    backend: Backend, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    store.append(sample())
    url = ["--store", backend.url, "--json"]
    assert main(["sessions", *url]) == 0
    assert [s["session_id"] for s in json.loads(capsys.readouterr().out)] == ["s-c", "s-b", "s-a"]
    assert main(["show", "s-b", *url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["session"]["errors"] == 1 and len(shown["events"]) == 10
    assert main(["stats", *url]) == 0
    assert {t["tool"] for t in json.loads(capsys.readouterr().out)["tools"]} == {"search", "calc"}
    assert main(["verify", *url]) == 0
    assert json.loads(capsys.readouterr().out)["checked"] == len(sample())
    assert main(["show", "s-b", "--store", backend.url]) == 0
    assert "calc" in capsys.readouterr().out


_WRITER = """
import sys
from datetime import datetime, timezone
from tracevault.ids import uuid7
from tracevault.schema import AuditEvent
from tracevault.store import open_store

url, worker, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = open_store(url)
for start in range(0, n, batch):
    store.append([
        AuditEvent(event_id=uuid7(), timestamp=datetime.now(timezone.utc), kind="custom",
                   session_id=f"worker-{worker}", data={"i": i})
        for i in range(start, min(start + batch, n))
    ])
store.close()
"""


def test_eight_processes_keep_one_chain(backend: Backend, store: Store) -> None:
    workers, per_worker = 8, 5_000
    args = [str(per_worker), "250"]
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, backend.url, str(w), *args])
        for w in range(workers)
    ]
    for p in procs:
        assert p.wait(timeout=300) == 0
    report = store.verify()
    assert report.ok and report.checked == workers * per_worker == 40_000
    assert store.head()[0] == 40_000
    counts = {s.session_id: s.events for s in store.sessions()}
    assert counts == {f"worker-{w}": per_worker for w in range(workers)}
    for w in (0, workers - 1):  # each worker's events are stored in its own order
        seen = [e.event.data["i"] for e in store.events(session_id=f"worker-{w}")]
        assert seen == list(range(per_worker))


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_the_database_going_away_mid_run_loses_nothing(
    pg_server: Any, pg_url: str, mode: str
) -> None:
    """PostgreSQL stops (cleanly, or as if it crashed) while an agent keeps recording and
    the writer is appending; it comes back; every event is stored once, in order."""
    total, cut_at = 30_000, 10_000
    tracevault.configure(store=pg_url)
    log = tracevault.AuditLogger(session_id="outage")
    halfway, resume = threading.Event(), threading.Event()

    def agent() -> None:
        for i in range(total):
            log.log_event("tick", {"i": i})
            if i == cut_at:
                halfway.set()
            if i == 2 * cut_at:
                resume.wait(120)  # keep part of the run for after the restart

    producer = threading.Thread(target=agent)
    producer.start()
    try:
        assert halfway.wait(60)
        pg_server.stop(mode)
        with pytest.raises(StoreError, match="cannot connect to PostgreSQL ledger"):
            open_store(pg_url)
        assert not tracevault.flush(1)  # nothing can become durable while it is down
        stats = tracevault.stats()
        assert stats is not None and stats.write_errors > 0 and stats.dropped == 0
        assert "PostgreSQL ledger" in (stats.last_error or "")
    finally:
        if not pg_server.running():
            pg_server.start()
        resume.set()
        producer.join(120)
    assert tracevault.flush(120)
    stats = tracevault.shutdown()
    assert stats is not None and stats.written == total and stats.dropped == 0
    store = open_store(pg_url)
    try:
        seen = [e.event.data["payload"]["i"] for e in store.events(session_id="outage")]
        assert seen == list(range(total))  # all of them, once each, in order
        report = store.verify()
        assert report.ok and report.checked == total
    finally:
        store.close()
