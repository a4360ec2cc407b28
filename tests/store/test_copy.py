"""`tracevault copy`: a trail moves SQLite -> PostgreSQL -> SQLite exactly and verifies."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import tracevault
from tracevault.cli import main
from tracevault.store import StoreError, open_store
from tracevault.store.copy import copy_trail, source_rows


def _record(url: str, sessions: int = 3, calls: int = 40) -> None:
    tracevault.configure(store=url)
    for s in range(sessions):
        log = tracevault.AuditLogger(session_id=f"s{s}", user_id="alice")
        for i in range(calls):
            log.log_tool_call("lookup", {"i": i}, result=f"r{i}", duration_ms=0.5 + i)
        log.log_llm_call("gpt-x", usage={"input": 3, "output": 4, "total": 7}, cost=0.125)
    assert tracevault.flush(30)
    tracevault.shutdown()


def _rows(url: str) -> list[tuple[Any, ...]]:
    store = open_store(url)
    try:
        return list(source_rows(store, 0, store.head()[0]))
    finally:
        store.close()


def test_round_trip_sqlite_postgres_sqlite(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first = f"sqlite:///{tmp_path / 'first.db'}"
    back = f"sqlite:///{tmp_path / 'back.db'}"
    _record(first)
    # An erased payload travels as erased, with the record of its erasure (#244).
    assert open_store(first).erase(seqs=[3], reason="test") == 1

    assert main(["copy", "--from", first, "--to", pg_url, "--batch", "50"]) == 0
    out = capsys.readouterr().out
    assert "copied 244 events (#1..#244)" in out and "OK: 244 events verified" in out
    assert main(["copy", "--from", pg_url, "--to", back, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["copied"] == 244 and report["verify"]["ok"]
    assert (report["verify"]["erased"], report["verify"]["erasures"]) == (1, 1)

    original = _rows(first)
    assert _rows(pg_url) == original == _rows(back)  # seq, columns, payload, salt, digest, chain
    assert open_store(back).head() == open_store(first).head()
    assert main(["verify", "--store", pg_url]) == 0 and main(["verify", "--store", back]) == 0
    # and the copy is a working ledger: queries agree, appends continue the chain
    pg = open_store(pg_url)
    assert [s.to_dict() for s in pg.sessions()] == [
        s.to_dict() for s in open_store(first).sessions()
    ]
    _record(pg_url, sessions=1, calls=1)
    assert pg.verify().ok and pg.count() == 247


def test_copy_resumes_and_refuses_a_different_trail(tmp_path: Path, pg_url: str) -> None:
    src = f"sqlite:///{tmp_path / 'src.db'}"
    _record(src, sessions=1)
    assert copy_trail(open_store(src), open_store(pg_url)).copied == 81
    _record(src, sessions=1, calls=5)
    resumed = copy_trail(open_store(src), open_store(pg_url), batch=4)
    assert (resumed.copied, resumed.first_seq, resumed.last_seq) == (11, 82, 92)
    assert resumed.verify.ok and _rows(pg_url) == _rows(src)
    assert copy_trail(open_store(src), open_store(pg_url)).copied == 0  # nothing new

    other = f"sqlite:///{tmp_path / 'other.db'}"
    _record(other, sessions=1, calls=1)
    with pytest.raises(StoreError, match="different trail"):
        copy_trail(open_store(other), open_store(pg_url))


def test_a_later_copy_carries_the_sources_erasures(tmp_path: Path, pg_url: str) -> None:
    src = f"sqlite:///{tmp_path / 'src.db'}"
    _record(src, sessions=2, calls=3)  # s0: #1-7, s1: #8-14
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    for target in (pg_url, archive):
        assert copy_trail(open_store(src), open_store(target)).copied == 14
    assert tracevault.erase(session_id="s1", store=src) == 7  # its record is #15
    _record(src, sessions=1, calls=1)  # and something new to copy
    for target in (pg_url, archive):
        report = copy_trail(open_store(src), open_store(target))
        assert (report.erased, report.copied) == (7, 4) and report.verify.ok
        assert report.verify.erased == 7 and _rows(target) == _rows(src)
    assert copy_trail(open_store(src), open_store(archive)).erased == 0  # carried once
    # Payload and salt cleared with SQL, no erasure record: the source no longer
    # verifies, and the copy keeps the content rather than lose it too.
    attacker = sqlite3.connect(tmp_path / "src.db", isolation_level=None)
    attacker.execute("UPDATE events SET payload = NULL, salt = NULL WHERE seq = 3")
    attacker.close()
    assert "no erasure record" in (open_store(src).verify().reason or "")
    assert copy_trail(open_store(src), open_store(archive)).erased == 0
    assert open_store(archive).verify().ok
    assert not next(open_store(archive).events(seqs=[3])).event.data.get("erased")
    # A payload cleared without its salt is tampering, not an erasure: not carried over.
    attacker = sqlite3.connect(tmp_path / "src.db", isolation_level=None)
    attacker.execute("DROP TRIGGER events_no_update")
    attacker.execute("UPDATE events SET payload = NULL WHERE seq = 2")
    attacker.close()
    assert copy_trail(open_store(src), open_store(archive)).erased == 0
    assert open_store(archive).verify().ok and not open_store(src).verify().ok


def test_an_erasure_made_during_a_copy_arrives_with_its_record(tmp_path: Path) -> None:
    src = f"sqlite:///{tmp_path / 'src.db'}"
    _record(src, sessions=2, calls=3)  # s0: #1-7, s1: #8-14
    source = open_store(src)
    read_head = source.head
    heads: list[tuple[int, bytes]] = []

    def head_then_erase() -> tuple[int, bytes]:
        # The copy has read the head; an erasure lands before it reads the rows.
        heads.append(read_head())
        if len(heads) == 1:
            assert tracevault.erase(session_id="s1", store=src) == 7  # record: #15
        return heads[-1]

    source.head = head_then_erase  # type: ignore[method-assign]
    archive = f"sqlite:///{tmp_path / 'archive.db'}"
    report = copy_trail(source, open_store(archive))
    # The rows arrived erased; the copy went on to the head that holds their record.
    assert report.verify.ok and (report.copied, report.head_seq) == (15, 15)
    assert report.verify.erased == 7 and _rows(archive) == _rows(src)


def test_content_cleared_by_sql_in_a_live_source_is_copied_once(tmp_path: Path) -> None:
    src = f"sqlite:///{tmp_path / 'src.db'}"
    _record(src, sessions=1, calls=3)  # #1-7
    with closing(sqlite3.connect(tmp_path / "src.db", isolation_level=None)) as conn:
        conn.execute("UPDATE events SET payload = NULL, salt = NULL WHERE seq = 2")
    source = open_store(src)
    read_head = source.head
    agent = tracevault.AuditLogger(session_id="live")

    def head_while_appending() -> tuple[int, bytes]:
        head = read_head()
        tracevault.configure(store=src)
        agent.log_input("meanwhile")  # the source keeps growing
        assert tracevault.flush(10)
        tracevault.shutdown()
        return head

    source.head = head_while_appending  # type: ignore[method-assign]
    report = copy_trail(source, open_store(f"sqlite:///{tmp_path / 'archive.db'}"))
    # Tampering carried over as it is, in one pass: no erasure raced this copy.
    assert (report.copied, report.head_seq) == (7, 7)
    assert not report.verify.ok and report.verify.first_bad_seq == 2


def test_tampering_is_carried_over_not_laundered(tmp_path: Path, pg_url: str) -> None:
    src = f"sqlite:///{tmp_path / 'src.db'}"
    _record(src, sessions=1, calls=10)
    conn = sqlite3.connect(tmp_path / "src.db", isolation_level=None)
    conn.execute("DROP TRIGGER events_no_delete")
    conn.execute("DELETE FROM events WHERE seq >= 20")  # cut the tail
    report = copy_trail(open_store(src), open_store(pg_url))
    assert not report.verify.ok and report.verify.first_bad_seq == 20
    assert open_store(pg_url).verify().reason == open_store(src).verify().reason


def test_postgres_to_sqlite_with_partitions_and_awkward_rows(tmp_path: Path, pg_url: str) -> None:
    from datetime import datetime, timezone

    from tracevault.schema import AuditEvent

    store = open_store(pg_url)
    store.append(
        [
            AuditEvent(event_id=f"e{m}", timestamp=datetime(2025, m, 28, tzinfo=timezone.utc),
                       kind="custom", data={"m": m, "nul": "a\x00b", "f": 0.1 + 0.2})
            for m in range(1, 13)
        ]
    )  # fmt: skip
    import psycopg

    back = f"sqlite:///{tmp_path / 'back.db'}"
    assert main(["copy", "--store", pg_url, "--to", back]) == 0
    assert _rows(back) == _rows(pg_url) and open_store(back).verify().ok
    with psycopg.connect(pg_url) as conn:
        parts = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'events'::regclass"
        ).fetchone()
    assert parts == (12,)


def test_copy_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    assert main(["copy", "--from", missing, "--to", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert "no tracevault ledger" in capsys.readouterr().err
    assert main(["copy", "--from", missing, "--to", missing]) == 2
    assert "same ledger" in capsys.readouterr().err
    source = f"sqlite:///{tmp_path / 'source.db'}"
    _record(source, sessions=1, calls=2)
    target = tmp_path / "never.db"
    assert main(["copy", "--from", source, "--to", f"sqlite:///{target}", "--batch", "0"]) == 2
    assert "--batch must be at least 1 (got 0)" in capsys.readouterr().err
    assert not target.exists()  # refused before anything was created
    app = tmp_path / "app.db"
    with sqlite3.connect(app) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
    conn.close()
    before = app.read_bytes()
    assert main(["copy", "--from", source, "--to", f"sqlite:///{app}"]) == 2
    err = capsys.readouterr().err
    assert "is another database (tables customers): a ledger needs a file of its own" in err
    assert app.read_bytes() == before and not Path(f"{app}-wal").exists()


def test_a_copied_cut_tail_stays_visible_to_a_store_that_appends_on(tmp_path: Path) -> None:
    # A store chains small batches after the head it last wrote. A copy that moves its
    # head past rows that are gone (a source whose tail was cut) must not be overwritten
    # by the next append, which would make the cut tail vanish.
    from datetime import datetime, timezone

    from tracevault.ids import uuid7
    from tracevault.schema import AuditEvent
    from tracevault.store.sqlite import SQLiteStore

    def events(n: int) -> list[AuditEvent]:
        now = datetime.now(timezone.utc)
        return [AuditEvent(event_id=uuid7(), timestamp=now, kind="custom", data={"i": i})
                for i in range(n)]

    target = SQLiteStore(str(tmp_path / "target.db"))
    target.append(events(10))  # the target remembers head #10
    source = SQLiteStore(str(tmp_path / "source.db"))
    copy_trail(target, source)
    source.append(events(5))
    raw = sqlite3.connect(source.path, isolation_level=None)
    raw.execute("DROP TRIGGER events_no_delete")
    raw.execute("DELETE FROM events WHERE seq > 10")  # cut the source's tail
    raw.close()
    assert not copy_trail(source, target).verify.ok
    target.append(events(1))
    report = target.verify()
    assert not report.ok and target.head()[0] == 16
    for store in (source, target):
        store.close()
