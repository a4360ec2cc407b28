"""The SQLite ledger: tamper evidence via `tracevault verify`, multi-process appends."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

import tracevault
from tracevault.cli import main
from tracevault.ids import uuid7
from tracevault.ledger import GENESIS
from tracevault.schema import AuditEvent
from tracevault.store import StoreError, open_store
from tracevault.store.copy import copy_trail
from tracevault.store.sqlite import SQLiteStore


def _record(db: Path, n: int = 10) -> None:
    tracevault.configure(store=f"sqlite:///{db}")
    log = tracevault.AuditLogger(session_id="tamper", user_id="alice")
    for i in range(n):
        log.log_tool_call("lookup", {"i": i}, result=f"result {i}", duration_ms=1.0 + i)
    assert tracevault.flush(10)
    tracevault.shutdown()


def _attacker(db: Path) -> sqlite3.Connection:
    """A raw connection with the append-only guards removed, as an attacker would."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("DROP TRIGGER events_no_delete")
    return conn


def _verify(db: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["verify", "--store", f"sqlite:///{db}"])
    return code, capsys.readouterr().out


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    _record(path)
    return path


def test_intact_ledger_verifies(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _verify(db, capsys)
    assert code == 0
    assert out.startswith("OK: 20 events verified, chain intact up to #20")


@pytest.mark.parametrize("seq", [1, 7, 20])
def test_one_changed_payload_byte_is_detected(
    db: Path, seq: int, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = _attacker(db)
    payload = conn.execute("SELECT payload FROM events WHERE seq = ?", (seq,)).fetchone()[0]
    i = payload.index('"tool_name":"lookup"') + len('"tool_name":"l')
    conn.execute(
        "UPDATE events SET payload = ? WHERE seq = ?",
        (payload[:i] + "0" + payload[i + 1 :], seq),
    )
    code, out = _verify(db, capsys)
    assert code == 1
    assert f"first bad event #{seq}: payload of row {seq} does not match its digest" in out


def test_a_changed_indexed_column_is_detected(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _attacker(db).execute("UPDATE events SET user_id = 'mallory' WHERE seq = 5")
    code, out = _verify(db, capsys)
    assert code == 1 and "first bad event #5: chain breaks at row 5" in out


def test_a_column_retyped_as_blob_is_detected(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Same bytes, so the text reads the same, but the row no longer matches its session.
    _attacker(db).execute("UPDATE events SET session_id = CAST(session_id AS BLOB) WHERE seq = 6")
    store = open_store(f"sqlite:///{db}", create=False)
    assert [s.events for s in store.sessions(session_id="tamper")] == [19]
    store.close()
    code, out = _verify(db, capsys)
    assert code == 1 and "first bad event #6: chain breaks at row 6" in out


@pytest.mark.parametrize("column", ["salt", "digest", "chain"])
def test_a_sealing_value_rewritten_as_text_is_tampering_not_a_crash(
    db: Path, column: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _attacker(db).execute(f"UPDATE events SET {column} = hex({column}) WHERE seq = 4")
    code, out = _verify(db, capsys)
    assert code == 1
    assert "first bad event #4: row 4 holds a payload, salt, digest or chain value of " \
        "another type" in out
    with pytest.raises(StoreError, match=r"cannot copy row 4 of .*: its payload, salt"):
        copy_trail(open_store(f"sqlite:///{db}"), open_store(f"sqlite:///{db}.copy"))


def test_a_head_rewritten_as_text_is_tampering(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _attacker(db).execute("UPDATE ledger_head SET chain = hex(chain)")
    code, out = _verify(db, capsys)
    assert code == 1 and "first bad event #21: ledger head says 20 rows" in out


def test_a_deleted_row_is_detected(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _attacker(db).execute("DELETE FROM events WHERE seq = 8")
    code, out = _verify(db, capsys)
    assert code == 1 and "first bad event #8: row 8 is missing" in out


def test_a_deleted_tail_is_detected(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _attacker(db).execute("DELETE FROM events WHERE seq >= 19")
    code, out = _verify(db, capsys)
    assert code == 1 and "first bad event #19: ledger head says 20 rows" in out


def test_an_inserted_row_is_detected(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conn = _attacker(db)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(events)")]
    row = list(conn.execute("SELECT * FROM events WHERE seq = 3").fetchone())
    conn.execute("UPDATE events SET seq = seq + 1000 WHERE seq > 3")  # make room
    conn.execute("UPDATE events SET seq = seq - 999 WHERE seq > 1000")
    row[cols.index("seq")] = 4
    row[cols.index("event_id")] = "forged-event"
    conn.execute(f"INSERT INTO events VALUES ({', '.join('?' for _ in cols)})", row)
    code, out = _verify(db, capsys)
    assert code == 1 and "first bad event #4: chain breaks at row 4" in out


def test_swapped_rows_are_detected(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conn = _attacker(db)
    conn.execute("UPDATE events SET seq = -1 WHERE seq = 10")
    conn.execute("UPDATE events SET seq = 10 WHERE seq = 11")
    conn.execute("UPDATE events SET seq = 11 WHERE seq = -1")
    code, out = _verify(db, capsys)
    assert code == 1 and "first bad event #10: chain breaks at row 10" in out


def test_recomputed_digest_without_the_chain_is_detected(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    conn = _attacker(db)
    salt, payload = conn.execute("SELECT salt, payload FROM events WHERE seq = 12").fetchone()
    forged = payload.replace("result 5", "result X")
    digest = hashlib.sha256(salt + forged.encode()).digest()
    conn.execute("UPDATE events SET payload = ?, digest = ? WHERE seq = 12", (forged, digest))
    code, out = _verify(db, capsys)
    assert code == 1 and "first bad event #12: chain breaks" in out


def test_triggers_keep_the_table_append_only(db: Path) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE events SET name = 'x' WHERE seq = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM events WHERE seq = 1")
    # Clearing payload and salt is the one change the triggers let through, yet done
    # this way, with no erasure record to cover it, verification reports it.
    conn.execute("UPDATE events SET payload = NULL, salt = NULL WHERE seq = 2")
    report = open_store(f"sqlite:///{db}").verify()
    assert not report.ok and report.first_bad_seq == 2
    assert "no erasure record after it covers it" in (report.reason or "")
    erased = next(open_store(f"sqlite:///{db}").events(limit=2, after_seq=1))
    assert erased.event.data == {"erased": True, "status": "success", "duration_ms": 1.0}
    assert erased.event.session_id == "tamper"


def _writer(path: str, worker: int, n: int) -> None:
    store = SQLiteStore(path)
    from datetime import datetime, timezone

    from tracevault.ids import uuid7
    from tracevault.schema import AuditEvent

    for start in range(0, n, 50):
        batch = [
            AuditEvent(
                event_id=uuid7(),
                timestamp=datetime.now(timezone.utc),
                kind="custom",
                session_id=f"worker-{worker}",
                data={"i": i},
            )
            for i in range(start, min(start + 50, n))
        ]
        store.append(batch)
    store.close()


def test_several_processes_keep_one_chain(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    SQLiteStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 1000)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = open_store(f"sqlite:///{path}")
    report = store.verify()
    assert report.ok and report.checked == 4000
    per_worker = {s.session_id: s.events for s in store.sessions()}
    assert per_worker == {f"worker-{w}": 1000 for w in range(4)}
    for w in range(4):  # each worker's events are in its own order
        seen = [e.event.data["i"] for e in store.events(session_id=f"worker-{w}")]
        assert seen == list(range(1000))


def test_appends_are_idempotent_by_event_id(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    from tracevault.ids import uuid7
    from tracevault.schema import AuditEvent

    store = SQLiteStore(str(tmp_path / "idem.db"))
    now = datetime.now(timezone.utc)
    events = [AuditEvent(event_id=uuid7(), timestamp=now, kind="custom") for _ in range(5)]
    assert store.append(events[:3]) == 3
    # A retried batch overlapping what is stored, with an internal duplicate too.
    assert store.append([events[1], events[3], events[3], events[2], events[4]]) == 5
    assert [e.event.event_id for e in store.events()] == [e.event_id for e in events]
    assert store.verify().ok


def test_a_batch_longer_than_one_insert_statement_keeps_its_order(tmp_path: Path) -> None:
    # Rows go in 64 to a statement: a batch across statements, then a retried one that
    # overlaps it, keep one gapless chain in batch order.
    from datetime import datetime, timezone

    from tracevault.ids import uuid7
    from tracevault.schema import AuditEvent

    store = SQLiteStore(str(tmp_path / "long.db"))
    now = datetime.now(timezone.utc)
    events = [AuditEvent(event_id=uuid7(), timestamp=now, kind="custom", data={"i": i})
              for i in range(200)]
    assert store.append(events[:130]) == 130
    assert store.append(events[100:]) == 200  # 30 already stored, 70 new
    read = list(store.events())
    assert [e.seq for e in read] == list(range(1, 201))
    assert [e.event.data["i"] for e in read] == list(range(200))
    assert store.verify().ok
    store.close()


def test_batches_fit_the_parameter_limit_of_an_older_sqlite(tmp_path: Path) -> None:
    # SQLite before 3.32 allows 999 parameters per statement (49 rows): a batch must be
    # split to fit, on the one-statement path and the careful one alike.
    from datetime import datetime, timezone

    from tracevault.ids import uuid7
    from tracevault.schema import AuditEvent

    store = SQLiteStore(str(tmp_path / "limit.db"))
    conn = store._conn()
    if hasattr(conn, "setlimit"):  # Python 3.11+: lower the limit as such a build has it
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    now = datetime.now(timezone.utc)
    events = [AuditEvent(event_id=uuid7(), timestamp=now, kind="custom", data={"i": i})
              for i in range(300)]
    for start, end in ((0, 49), (49, 99), (99, 100), (100, 300)):
        assert store.append(events[start:end]) == end
    read = list(store.events())
    assert [e.event.data["i"] for e in read] == list(range(300))
    assert store.verify().ok
    store.close()


def test_two_writers_taking_turns_keep_one_chain(tmp_path: Path) -> None:
    # Each store chains a small batch after the head it last wrote, without reading it:
    # when the other one appended meanwhile, that must be noticed, never chained over.
    from datetime import datetime, timezone

    from tracevault.ids import uuid7
    from tracevault.schema import AuditEvent

    path = str(tmp_path / "turns.db")
    stores = [SQLiteStore(path), SQLiteStore(path)]
    now = datetime.now(timezone.utc)
    expected = []
    for turn in range(12):
        batch = [AuditEvent(event_id=uuid7(), timestamp=now, kind="custom",
                            data={"turn": turn, "i": i}) for i in range(turn % 4 + 1)]
        expected += [(turn, i) for i in range(len(batch))]
        stores[turn % 3 % 2].append(batch)  # the same store twice in a row, sometimes
    read = list(stores[0].events())
    assert [e.seq for e in read] == list(range(1, len(expected) + 1))
    assert [(e.event.data["turn"], e.event.data["i"]) for e in read] == expected
    assert stores[1].verify().ok and stores[0].head() == stores[1].head()
    for store in stores:
        store.close()


def test_threads_opening_a_fresh_ledger_at_once_all_succeed(tmp_path: Path) -> None:
    # The writer and the forwarders of a short script open a ledger that does not exist
    # yet at the same moment; SQLite refuses a concurrent switch to WAL without waiting.
    import threading

    failures: list[BaseException] = []
    for attempt in range(40):
        path = str(tmp_path / f"fresh{attempt}.db")
        start = threading.Barrier(6)
        opened: list[SQLiteStore] = []

        def open_it(path: str = path, start: threading.Barrier = start,
                    opened: list[SQLiteStore] = opened) -> None:
            start.wait()
            try:
                opened.append(SQLiteStore(path))
            except Exception as exc:
                failures.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for store in opened:
            assert store.head() == (0, GENESIS)
            store.close()
    assert failures == []


def test_odd_metric_values_are_stored_without_breaking_the_append(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    from tracevault.ids import uuid7
    from tracevault.schema import AuditEvent

    store = SQLiteStore(str(tmp_path / "odd.db"))
    now = datetime.now(timezone.utc)
    odd = [float("inf"), float("nan"), 2**70, True, "12"]
    events = [
        AuditEvent(event_id=uuid7(), timestamp=now, kind="llm_call", phase="end",
                   session_id="odd", data={"usage": {"total": v}, "cost": v, "duration_ms": v})
        for v in odd
    ]
    assert store.append(events) == len(odd)
    assert store.verify().ok
    (summary,) = store.sessions(session_id="odd")
    assert (summary.events, summary.tokens, summary.cost) == (5, 0, 0.0)


def test_verify_is_consistent_while_another_process_appends(tmp_path: Path) -> None:
    path = str(tmp_path / "busy.db")
    SQLiteStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    writer = ctx.Process(target=_writer, args=(path, 0, 20_000))
    writer.start()
    store = SQLiteStore(path)
    reports = []
    while writer.is_alive():  # bounded: the writer appends a fixed number of events
        reports.append(store.verify())
    writer.join(120)
    assert writer.exitcode == 0
    assert len(reports) > 10 and all(r.ok for r in reports), [r for r in reports if not r.ok][:1]
    assert store.verify().checked == 20_000


def test_an_anchor_catches_a_consistently_rewritten_trail(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    from tracevault.ledger import COLUMNS, GENESIS, link, verify_rows

    code, out = _verify(db, capsys)
    anchor = out.split("anchor: ", 1)[1].split()[0]
    assert code == 0 and anchor.startswith("20:") and len(anchor) == 3 + 64
    # An attacker rewrites row 8 and re-seals every later row and the head, so the
    # chain alone is consistent again...
    store = SQLiteStore(str(db))  # (opening a store re-creates the guards: open first)
    sql = store._verify_sql()
    conn = _attacker(db)
    salt, payload = conn.execute("SELECT salt, payload FROM events WHERE seq = 8").fetchone()
    forged = payload.replace("result 3", "result Z")
    assert forged != payload
    conn.execute(
        "UPDATE events SET payload = ?, digest = ? WHERE seq = 8",
        (forged, hashlib.sha256(salt + forged.encode()).digest()),
    )
    prev = GENESIS
    raw = f"SELECT seq, {', '.join(COLUMNS)}, digest FROM events ORDER BY seq"
    for row in conn.execute(raw).fetchall():
        prev = link(prev, row[0], row[1:16], bytes(row[16]))
        conn.execute("UPDATE events SET chain = ? WHERE seq = ?", (prev, row[0]))
    conn.execute("UPDATE ledger_head SET chain = ? WHERE id = 1", (prev,))
    assert store.verify().ok  # ...which plain verification cannot tell
    assert verify_rows(conn.execute(sql), 20, prev).ok
    # The anchor kept elsewhere can.
    assert main(["verify", "--store", f"sqlite:///{db}", "--anchor", anchor]) == 1
    assert "row 20 does not match the anchored chain value" in capsys.readouterr().out
    assert main(["verify", "--store", f"sqlite:///{db}", "--anchor", "21:" + "0" * 64]) == 1
    assert "the ledger ends at row 20, before the anchored row 21" in capsys.readouterr().out
    assert main(["verify", "--store", f"sqlite:///{db}", "--anchor", "nonsense"]) == 2


def test_a_payload_kept_with_its_salt_cleared_is_tampering(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = _attacker(db)
    payload = conn.execute("SELECT payload FROM events WHERE seq = 3").fetchone()[0]
    conn.execute(
        "UPDATE events SET payload = ?, salt = NULL WHERE seq = 3",
        (payload.replace('"i":1', '"i":9'),),
    )
    code, out = _verify(db, capsys)
    assert code == 1 and "first bad event #3: row 3 has a payload without its salt" in out


def test_negative_zero_metrics_verify(tmp_path: Path) -> None:
    tracevault.configure(store=f"sqlite:///{tmp_path / 'z.db'}")
    tracevault.AuditLogger(session_id="z").log_llm_call("m", cost=-0.0, duration_ms=-0.0)
    assert tracevault.flush(10)
    tracevault.shutdown()
    assert open_store(f"sqlite:///{tmp_path / 'z.db'}").verify().ok


def test_content_shifted_between_columns_or_null_for_empty_is_detected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tracevault.configure(store=f"sqlite:///{tmp_path / 'shift.db'}")
    log = tracevault.AuditLogger(session_id="c", user_id="")
    log.emit("custom", {"name": "x"}, name="a\x1fb")
    assert tracevault.flush(10)
    tracevault.shutdown()
    db = tmp_path / "shift.db"
    conn = _attacker(db)
    # Move "b" from the end of the name to the front of the session id...
    conn.execute("UPDATE events SET name = 'a', session_id = 'b\x1fc' WHERE seq = 1")
    code, out = _verify(db, capsys)
    assert code == 1 and "chain breaks at row 1" in out
    # ...or swap an empty user id for NULL (opening the store restored the guards).
    conn = _attacker(db)
    conn.execute("UPDATE events SET name = 'a\x1fb', session_id = 'c', user_id = NULL")
    code, out = _verify(db, capsys)
    assert code == 1 and "chain breaks at row 1" in out
    _attacker(db).execute("UPDATE events SET user_id = ''")
    assert _verify(db, capsys)[0] == 0  # the original values verify again


def test_nul_in_an_indexed_column_is_stored_portably(tmp_path: Path) -> None:
    tracevault.configure(store=f"sqlite:///{tmp_path / 'nul.db'}")
    tracevault.AuditLogger(session_id="s\x00x").log_event("n\x00ame")
    assert tracevault.flush(10)
    tracevault.shutdown()
    store = open_store(f"sqlite:///{tmp_path / 'nul.db'}")
    assert store.verify().ok
    (event,) = [e.event for e in store.events()]
    assert event.session_id == "s\x00x"  # the payload keeps it
    assert [s.session_id for s in store.sessions()] == ["s\ufffdx"]  # the column cannot


def test_a_ledger_with_the_former_user_index_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "older.db"
    _record(path, 5)
    conn = sqlite3.connect(path)
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "events_user" not in indexes  # no query reads it, so new ledgers skip it
    assert {"events_session", "events_trace", "events_kind"} <= indexes
    # Ledgers created by earlier versions have it: they open, append and verify as before.
    conn.execute("CREATE INDEX events_user ON events (user_id, ts)")
    conn.commit()
    conn.close()
    _record(path, 5)
    store = SQLiteStore(str(path), create=False)
    try:
        report = store.verify()
        assert report.ok and report.checked == 20  # a tool call is recorded twice
        (summary,) = store.sessions(user_id="alice")
        assert summary.events == 20
        assert len(list(store.events(session_id="tamper"))) == 20
    finally:
        store.close()


@pytest.mark.parametrize("forged", [b"\xff\xfe not utf-8", 12345, 1.5])
def test_a_payload_replaced_by_another_type_is_reported_not_a_crash(
    db: Path, forged: object, capsys: pytest.CaptureFixture[str]
) -> None:
    conn = _attacker(db)
    conn.execute("UPDATE events SET payload = ? WHERE seq = 3", (forged,))
    code, out = _verify(db, capsys)
    assert code == 1
    assert "first bad event #3: payload of row 3 does not match its digest" in out


_CLOSE_WHILE_IN_USE = """
import sys, threading
from datetime import datetime, timezone
from tracevault.ids import uuid7
from tracevault.schema import AuditEvent
from tracevault.store.base import StoreError
from tracevault.store.sqlite import SQLiteStore

now = datetime.now(timezone.utc)
for round_no in range(30):
    store = SQLiteStore(f"{sys.argv[1]}/ledger{round_no}.db", synchronous="off")
    start = threading.Barrier(4)
    busy = threading.Event()  # the workers are well into their loops: close now
    failures = []

    def use(kind, store=store, start=start, busy=busy, at=round_no % 10 + 1):
        start.wait()
        for i in range(400):
            if i == at:
                busy.set()
            try:
                if kind == 0:
                    store.append([AuditEvent(event_id=uuid7(), timestamp=now, kind="custom",
                                             data={"pad": "x" * 2000}) for _ in range(30)])
                elif kind == 1:
                    list(store.events(limit=200))
                else:
                    store.set_sink_error("sink", f"error {i}")
            except StoreError:
                return  # closed: what every later use says
            except Exception as exc:
                failures.append(repr(exc))
                return

    threads = [threading.Thread(target=use, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    start.wait()
    busy.wait(60)  # a different moment each round
    store.close()
    for t in threads:
        t.join()
    assert not failures, failures
print("ok")
"""


def test_closing_while_other_threads_use_the_store_does_not_crash(tmp_path: Path) -> None:
    # A forwarder still finishing when the process shuts its store down: closing a
    # connection another thread runs a statement on crashed the interpreter.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _CLOSE_WHILE_IN_USE, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr[-2000:]


def _custom(session_id: str) -> AuditEvent:
    return AuditEvent(event_id=uuid7(), timestamp=datetime.now(timezone.utc), kind="custom",
                      session_id=session_id, data={"pad": "x" * 200})


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_child_forked_while_another_thread_appends_writes_the_ledger(tmp_path: Path) -> None:
    # A child forked while a parent thread was inside a statement inherited SQLite's lock
    # state of that moment: its connections waited on locks nobody would release, and
    # what it recorded was lost (a multiprocessing pool started while the writer wrote).
    store = SQLiteStore(str(tmp_path / "fork.db"))
    stop = threading.Event()
    appended = threading.Semaphore(0)

    def append_until_stopped() -> None:
        for _ in range(100_000):
            if stop.is_set():
                return
            store.append([_custom("parent") for _ in range(20)])
            appended.release()

    appender = threading.Thread(target=append_until_stopped)
    appender.start()
    children = []
    try:
        for i in range(12):
            appended.acquire(timeout=60)  # fork while the appender is busy
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    signal.alarm(30)  # a child that cannot write fails instead of hanging
                    SQLiteStore(store.path).append([_custom(f"child-{i}")])
                    store.append([_custom(f"child-{i}-same-store")])
                    code = 0
                finally:
                    os._exit(code)
            children.append(pid)
    finally:
        stop.set()
        appender.join()
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    assert codes == [0] * 12
    sessions = {s.session_id for s in store.sessions()}
    assert {f"child-{i}{tag}" for i in range(12) for tag in ("", "-same-store")} <= sessions
    assert store.verify().ok


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
@pytest.mark.parametrize("reading", [False, True], ids=["idle", "while-streaming"])
def test_a_forked_child_keeps_writing_after_its_parent_closed_the_ledger(
    tmp_path: Path, reading: bool
) -> None:
    # The parent closing its last connection checkpoints the ledger and deletes its
    # write-ahead log once no other process holds a lock on the file. A child that
    # shared its parent's lock bookkeeping held none, and what it appended after that
    # went to the deleted log: reported written, lost.
    store = SQLiteStore(str(tmp_path / "fork.db"))
    store.append([_custom("parent")])
    # A read the parent streams (events()) holds its own connection open at the fork,
    # in the middle of its statement (past the rows it fetched first).
    if reading:
        store.append([_custom("parent") for _ in range(4999)])
    stream = store.events() if reading else iter([])
    next(stream, None)
    child_wrote, parent_closed = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(60)
            store.append([_custom("child-before")])
            os.write(child_wrote[1], b"1")
            os.read(parent_closed[0], 1)
            for _ in range(20):
                store.append([_custom("child-after")])
            code = 0
        finally:
            os._exit(code)
    os.read(child_wrote[0], 1)
    del stream  # (a generator's connection closes when it is freed)
    store.close()
    os.write(parent_closed[1], b"1")
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    with SQLiteStore(store.path, create=False) as reader:
        counts = {s.session_id: s.events for s in reader.sessions()}
        assert counts == {"parent": 5000 if reading else 1, "child-before": 1,
                          "child-after": 20}
        assert reader.verify().ok


def test_erased_content_is_gone_from_the_file_and_its_log(tmp_path: Path) -> None:
    db = tmp_path / "erase.db"
    url = f"sqlite:///{db}"
    tracevault.configure(store=url)
    canary = "passport X1234-CANARY"
    for session in ("keep", "forget"):
        log = tracevault.AuditLogger(session_id=session)
        for i in range(50):
            log.log_tool_call("lookup", {"q": f"{session} {i}"},
                              result=f"{canary} {session} {i} " + "x" * 3000)
    assert tracevault.flush(10)

    def on_disk() -> bytes:
        return b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(db.name))

    assert b"CANARY forget" in on_disk()  # before: in the file or its write-ahead log
    log.log_tool_call("lookup", {"q": "late"}, result=f"{canary} forget late")  # not flushed
    assert tracevault.erase(session_id="forget") == 102  # starts and ends, the late one too
    # Read while the recording process still holds the ledger open (its log too): the
    # content must be gone from the log's earlier frames and the file's free space.
    data = on_disk()
    assert b"CANARY forget" not in data and b"forget 49" not in data
    assert b"CANARY keep 49" in data
    tracevault.shutdown()
    store = open_store(url, create=False)
    assert store.verify().ok and store.verify().erased == 102
    store.close()


def test_an_erasure_does_not_wait_for_a_reader(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    tracevault.configure(store=url)
    log = tracevault.AuditLogger(session_id="gone")
    for i in range(20):
        log.log_input(f"secret {i}")
    assert tracevault.flush(10)
    reader = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    reader.execute("BEGIN")  # a read snapshot held open, as a long `verify` or `copy` does
    assert reader.execute("SELECT count(*) FROM events").fetchone() == (20,)
    done: list[int] = []
    erasing = threading.Thread(target=lambda: done.append(tracevault.erase(session_id="gone")))
    try:
        erasing.start()
        # Bounded: a checkpoint waiting for the reader would wait for its busy timeout
        # (60 s), and the reader lets go only once the erasure returned.
        erasing.join(30)
        assert done == [20]
    finally:
        reader.close()
        erasing.join(60)
        tracevault.shutdown()
    assert "a reader kept the write-ahead log from being emptied" in caplog.text
