"""What only the PostgreSQL ledger has: partitions, migrations, JSONB, reconnection,
lost commit acknowledgements, tampering through ``psql``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest

from tracevault.cli import main
from tracevault.schema import AuditEvent
from tracevault.store import StoreError, open_store

try:
    import psycopg
except ImportError:  # pragma: no cover - the test extra installs it
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        raise  # in CI these tests must run, never skip
    pytest.skip("needs psycopg (pip install 'tracevault[postgres]')", allow_module_level=True)

from tracevault.store.postgres import PostgresStore
from tracevault.store.postgres_schema import MIGRATIONS, SCHEMA_VERSION


def _events(n: int, start: datetime | None = None, step: timedelta = timedelta(seconds=1),
            prefix: str = "e") -> list[AuditEvent]:  # fmt: skip
    t0 = start or datetime(2026, 3, 1, tzinfo=timezone.utc)
    return [
        AuditEvent(
            event_id=f"{prefix}{i}", timestamp=t0 + i * step, kind="tool_call", phase="end",
            name="lookup" if i % 2 else "search", session_id=f"s{i % 3}",
            data={"tool_name": "lookup" if i % 2 else "search", "i": i, "status": "success"},
        )
        for i in range(n)
    ]  # fmt: skip


def _sql(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query.encode(), params)
        return cur.fetchall() if cur.description else []


@pytest.fixture()
def store(pg_url: str) -> Iterator[PostgresStore]:
    opened = PostgresStore(pg_url)
    yield opened
    opened.close()


# --- partitions ---------------------------------------------------------------------------


def test_events_land_in_monthly_partitions(store: PostgresStore, pg_url: str) -> None:
    store.append(_events(90, datetime(2025, 12, 15, tzinfo=timezone.utc), timedelta(days=1)))
    parts = _sql(
        pg_url,
        "SELECT c.relname, count(e.*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "LEFT JOIN events e ON e.tableoid = c.oid "
        "WHERE i.inhparent = 'events'::regclass GROUP BY c.relname ORDER BY c.relname",
    )
    assert parts == [
        ("events_p202512", 17), ("events_p202601", 31), ("events_p202602", 28),
        ("events_p202603", 14),
    ]  # fmt: skip
    # A query for one month only reads that month's partition.
    plan = "\n".join(
        r[0]
        for r in _sql(
            pg_url,
            "EXPLAIN SELECT count(*) FROM events "
            "WHERE ts >= '2026-02-01T00:00:00Z' AND ts < '2026-03-01T00:00:00Z'",
        )
    )
    assert "events_p202602" in plan and "events_p202601" not in plan
    assert store.verify().ok
    # Dropping a partition (retention done behind the ledger's back) is detected.
    _sql(pg_url, "DROP TABLE events_p202601")
    report = store.verify()
    assert not report.ok and report.first_bad_seq == 18 and "missing" in (report.reason or "")


def _run_writers(url: str, script: str, writers: int = 4) -> None:
    """Run ``script`` (argv: the ledger URL, the writer's number) in ``writers``
    processes at once; each must succeed."""
    procs = [subprocess.Popen([sys.executable, "-c", script, url, str(w)])
             for w in range(writers)]
    assert [p.wait(timeout=120) for p in procs] == [0] * writers


def test_a_new_month_is_created_once_by_concurrent_writers(pg_url: str) -> None:
    """Processes start writing into months that have no partition yet, at once."""
    script = (
        "import sys; from datetime import datetime, timedelta, timezone\n"
        "from tracevault.schema import AuditEvent; from tracevault.store import open_store\n"
        "s = open_store(sys.argv[1]); w = int(sys.argv[2])\n"
        "for m in range(1, 7):\n"
        "    t = datetime(2024, m, 1, tzinfo=timezone.utc)\n"
        "    s.append([AuditEvent(event_id=f'{w}-{m}-{i}', timestamp=t + timedelta(hours=i),"
        " kind='custom') for i in range(20)])\n"
    )
    _run_writers(pg_url, script)
    store = open_store(pg_url)
    assert store.count() == 4 * 6 * 20 and store.verify().ok
    assert len(_partitions(pg_url)) == 6


def _partitions(url: str) -> list[str]:
    rows = _sql(
        url,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'events'::regclass ORDER BY c.relname",
    )
    return [r[0] for r in rows]


def _truncates_refused(pg_server: Any, url: str, tables: list[str]) -> list[str]:
    """Truncate each table through ``psql`` as an operator would, triggers enabled;
    return those where it was refused as append-only (one transaction each)."""
    db = url.rsplit("/", 1)[1]
    refused = []
    for table in tables:
        done = pg_server.psql(db, f"TRUNCATE {table}")
        if done.returncode != 0 and "append-only" in done.stderr:
            refused.append(table)
    return refused


def test_truncating_a_partition_directly_is_refused(
    store: PostgresStore, pg_server: Any, pg_url: str
) -> None:
    """PostgreSQL fires the parent's TRUNCATE trigger only for ``TRUNCATE events``."""
    store.append(_events(40, datetime(2026, 10, 20, tzinfo=timezone.utc), timedelta(days=1)))
    parts = _partitions(pg_url)
    assert parts == ["events_p202610", "events_p202611"]
    assert _truncates_refused(pg_server, pg_url, ["events", *parts]) == ["events", *parts]
    assert store.count() == 40 and store.verify().ok


def test_partitions_of_an_older_ledger_are_protected_by_processes_opening_it_at_once(
    pg_server: Any, pg_url: str
) -> None:
    """Partitions made before each got its TRUNCATE trigger get it when the ledger is
    opened, once, while other processes open the ledger and append into them."""
    with PostgresStore(pg_url) as store:
        store.append(_events(60, datetime(2026, 1, 20, tzinfo=timezone.utc), timedelta(days=1)))
    parts = _partitions(pg_url)
    assert len(parts) == 3
    for table in parts:  # as an older tracevault left them
        _sql(pg_url, f"DROP TRIGGER IF EXISTS partition_no_truncate ON {table}")
    script = (
        "import sys; from datetime import datetime, timedelta, timezone\n"
        "from tracevault.schema import AuditEvent; from tracevault.store import open_store\n"
        "s = open_store(sys.argv[1]); w = sys.argv[2]\n"
        "t = datetime(2026, 1, 25, tzinfo=timezone.utc)\n"
        "s.append([AuditEvent(event_id=f'{w}-{i}', timestamp=t + timedelta(days=i),"
        " kind='custom') for i in range(40)])\n"
        "s.close()\n"
    )
    _run_writers(pg_url, script)
    triggers = _sql(
        pg_url,
        "SELECT c.relname, count(t.*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "LEFT JOIN pg_trigger t ON t.tgrelid = c.oid AND NOT t.tgisinternal "
        "AND t.tgtype & 32 <> 0 "  # TRIGGER_TYPE_TRUNCATE
        "WHERE i.inhparent = 'events'::regclass GROUP BY c.relname ORDER BY c.relname",
    )
    assert triggers == [(table, 1) for table in parts]
    assert _truncates_refused(pg_server, pg_url, parts) == parts
    with PostgresStore(pg_url) as store:
        assert store.count() == 60 + 4 * 40 and store.verify().ok


def test_a_reader_that_cannot_add_triggers_still_opens_an_older_ledger(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with PostgresStore(pg_url) as store:
        store.append(_events(5))
    _sql(pg_url, "DROP TRIGGER partition_no_truncate ON events_p202603")
    role = f"reader_{uuid.uuid4().hex[:8]}"
    _sql(pg_url, f"CREATE ROLE {role} LOGIN")
    _sql(pg_url, f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    reader_url = pg_url.replace("://tracevault@", f"://{role}@")
    with PostgresStore(reader_url, create=False) as reader:
        assert reader.count() == 5 and reader.verify().ok
    assert "cannot add the trigger refusing TRUNCATE" in caplog.text
    with PostgresStore(pg_url):  # the owner's next open adds it
        pass
    found = _sql(pg_url, "SELECT count(*) FROM pg_trigger WHERE tgname = 'partition_no_truncate'")
    assert found == [(1,)]


# --- migrations ---------------------------------------------------------------------------


def test_schema_is_created_on_first_use_and_reopening_is_a_no_op(pg_url: str) -> None:
    first = PostgresStore(pg_url)
    assert first.schema_version() == SCHEMA_VERSION
    first.append(_events(5))
    again = PostgresStore(pg_url)
    assert again.schema_version() == SCHEMA_VERSION and again.count() == 5
    tables = {r[0] for r in _sql(pg_url, "SELECT tablename FROM pg_tables")}
    assert {"events", "ledger_head", "meta", "sink_cursors", "sink_errors"} <= tables


def test_an_older_ledger_is_migrated_and_keeps_verifying(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a ledger at version 1
        conn.execute(MIGRATIONS[0][1].encode())
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    assert not _sql(pg_url, "SELECT 1 FROM pg_indexes WHERE indexname = 'events_tool'")
    store = PostgresStore(pg_url)
    assert store.schema_version() == 2
    assert _sql(pg_url, "SELECT 1 FROM pg_indexes WHERE indexname = 'events_tool'") == [(1,)]
    store.append(_events(10))
    assert store.verify().ok


def test_processes_opening_a_new_database_at_once_migrate_it_once(pg_url: str) -> None:
    script = "import sys; from tracevault.store import open_store; open_store(sys.argv[1]).close()"
    procs = [subprocess.Popen([sys.executable, "-c", script, pg_url]) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    assert _sql(pg_url, "SELECT value FROM meta") == [(str(SCHEMA_VERSION),)]
    assert _sql(pg_url, "SELECT seq FROM ledger_head") == [(0,)]


def test_a_newer_schema_or_no_ledger_is_a_clear_error(pg_url: str) -> None:
    with pytest.raises(StoreError, match="no tracevault ledger"):
        PostgresStore(pg_url, create=False)
    PostgresStore(pg_url).close()
    _sql(pg_url, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer than this tracevault understands"):
        PostgresStore(pg_url)


def test_a_schema_of_its_own(pg_url: str) -> None:
    store = open_store(pg_url + "?schema=audit")
    store.append(_events(3))
    assert _sql(pg_url, "SELECT count(*) FROM audit.events") == [(3,)]
    assert not _sql(pg_url, "SELECT 1 FROM pg_tables WHERE schemaname = 'public'")


def test_a_schema_name_that_needs_quoting(pg_url: str) -> None:
    """Names PostgreSQL would fold to lower case or not parse unquoted; "TraceVault" and
    "tracevault" are two schemas, so two ledgers."""
    names = ["TraceVault", "tracevault", "a b", 'x"y.z', "Ünï-code"]
    for n, name in enumerate(names, 1):
        with PostgresStore(f"{pg_url}?schema={quote(name)}") as store:
            store.append(_events(n, prefix=f"{name}-"))
            store.append(_events(1, datetime(2026, 4, 1, tzinfo=timezone.utc), prefix="new"))
    for n, name in enumerate(names, 1):
        with PostgresStore(f"{pg_url}?schema={quote(name)}", create=False) as store:
            assert store.count() == n + 1 and store.verify().ok
        quoted = '"' + name.replace('"', '""') + '"'
        assert _sql(pg_url, f"SELECT count(*) FROM {quoted}.events") == [(n + 1,)]
        assert _sql(pg_url, f"SELECT count(*) FROM {quoted}.events_p202604") == [(1,)]
    assert not _sql(pg_url, "SELECT 1 FROM pg_tables WHERE schemaname = 'public'")
    with pytest.raises(StoreError, match=r"schema=\$user cannot be used"):
        open_store(f"{pg_url}?schema=$user")


# --- JSONB --------------------------------------------------------------------------------


def test_payload_keeps_the_digested_bytes_and_doc_is_queryable(
    store: PostgresStore, pg_url: str
) -> None:
    events = _events(20)
    awkward = ["a\x00b", "\\u0000 is text", "\\\x00", "\x00\x00", "\\\\u0000", "ünï 🐢"]
    events[0].data["texts"] = awkward
    store.append(events)
    for payload, salt, digest in _sql(pg_url, "SELECT payload, salt, digest FROM events"):
        assert hashlib.sha256(bytes(salt) + payload.encode()).digest() == bytes(digest)
    query = """SELECT count(*) FROM events WHERE doc @> '{"data": {"tool_name": "lookup"}}'"""
    assert _sql(pg_url, query) == [(10,)]
    (texts,) = _sql(pg_url, "SELECT doc -> 'data' -> 'texts' FROM events WHERE seq = 1")[0]
    assert texts == [t.replace("\x00", "\u2400") for t in awkward]  # NUL reads as ␀ there
    assert next(store.events(limit=1)).event.data["texts"] == awkward  # exact in the ledger
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT count(*) FROM events "
                "WHERE kind = 'tool_call' AND doc -> 'data' ->> 'tool_name' = 'lookup'"
            )
        )
    assert re.search(r"Index Scan using events_p202603_expr_ts_idx", plan), plan


# --- connections --------------------------------------------------------------------------


def test_an_unreachable_database_is_a_clear_error_without_the_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with pytest.raises(StoreError) as err:
        open_store(f"postgresql://me:s3cret@127.0.0.1:{port}/db")
    assert f"cannot connect to PostgreSQL ledger 127.0.0.1:{port}/db" in str(err.value)
    assert "s3cret" not in str(err.value)


def test_reads_and_writes_survive_a_server_restart(pg_server: Any, pg_url: str) -> None:
    store = PostgresStore(pg_url)
    store.append(_events(10))
    assert store.count() == 10  # both the writer and a read connection are pooled now
    pg_server.stop()
    try:
        with pytest.raises(StoreError, match="cannot connect"):
            store.append(_events(5, prefix="down"))
        with pytest.raises(StoreError, match="cannot connect"):
            store.count()
    finally:
        pg_server.start()
    assert store.append(_events(5, prefix="up")) == 15  # reconnects by itself
    assert store.count() == 15 and store.verify().ok


class CommitCutter:
    """A TCP proxy in front of PostgreSQL that cuts one connection at a commit (a
    ``COMMIT``, or the one-statement append, its own transaction): before forwarding it
    (the server rolls back) or after the server answered (the server committed, the
    client never hears so)."""

    COMMITS = (b"COMMIT", b"WITH moved AS")

    def __init__(self, port: int) -> None:
        self.target = port
        self.mode: str | None = None
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            swallow = threading.Event()
            threading.Thread(target=self._up, args=(client, server, swallow), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, swallow), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, swallow: threading.Event) -> None:
        while data := self._recv(client):
            if self.mode and any(commit in data for commit in self.COMMITS):
                mode, self.mode = self.mode, None
                self.cuts += 1
                if mode == "before":
                    self._close(client, server)
                    return
                swallow.set()  # the answer to this COMMIT never reaches the client
            server.sendall(data)
        self._close(client, server)

    def _down(self, server: socket.socket, client: socket.socket, swallow: threading.Event) -> None:
        while data := self._recv(server):
            if swallow.is_set():
                self._close(client, server)
                return
            client.sendall(data)
        self._close(client, server)

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@pytest.mark.parametrize("mode", ["before", "after"])
@pytest.mark.parametrize("warm", [True, False], ids=["pooled", "fresh"])
def test_a_cut_commit_is_written_exactly_once(
    pg_server: Any, pg_url: str, mode: str, warm: bool
) -> None:
    PostgresStore(pg_url).close()  # create the schema directly
    proxy = CommitCutter(pg_server.port)
    store = PostgresStore(pg_url.replace(f":{pg_server.port}/", f":{proxy.port}/"))
    if warm:
        store.append(_events(10, prefix="warm"))
    base = store.count()
    batch = _events(100)
    proxy.mode = mode
    if warm:
        # A pooled connection that breaks is retried at once on a fresh one.
        assert store.append(batch) == base + 100
    else:
        with pytest.raises(StoreError, match="connection lost"):
            store.append(batch)
        # The writer retries the same batch; it is stored once whether or not the
        # lost commit went through.
        assert store.append(batch) == base + 100
    assert proxy.cuts == 1
    assert store.count() == base + 100 and store.verify().ok
    assert [e.event.event_id for e in store.events(after_seq=base)] == [e.event_id for e in batch]
    proxy.listener.close()
    store.close()


# --- concurrency and tampering ------------------------------------------------------------


def _count_locking(stores: list[PostgresStore], monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record, per append that locks the head, the index of the store that made it."""
    locked: list[int] = []

    def counted(n: int, append_tx: Any) -> Any:
        def locking_append(conn: Any, rows: Any) -> int:
            locked.append(n)
            return int(append_tx(conn, rows))
        return locking_append

    for n, store in enumerate(stores):
        monkeypatch.setattr(store, "_append_tx", counted(n, store._append_tx))
    return locked


def test_two_writers_taking_turns_keep_one_chain(pg_url: str) -> None:
    # A store chains a batch after the head it last wrote, in one statement that writes
    # nothing if the head has moved since: the other store's appends must be noticed
    # (the store then locks the head and chains after it), never chained over.
    stores = [PostgresStore(pg_url), PostgresStore(pg_url)]
    expected = []
    for turn in range(24):
        batch = _events(turn % 4 + 1, prefix=f"t{turn}-")
        expected += [e.event_id for e in batch]
        stores[turn % 3 % 2].append(batch)  # 0 1 0 0 1 0 0 1 ...: sometimes twice in a row
    # The same batch again, then with new events: all skipped, then only the new ones.
    assert stores[0].append(batch) == len(expected)
    stores[0].append([*batch, *_events(3, prefix="late-")])
    expected += ["late-0", "late-1", "late-2"]
    read = list(stores[1].events())
    assert [e.seq for e in read] == list(range(1, len(expected) + 1))
    assert [e.event.event_id for e in read] == expected
    assert stores[1].verify().ok and stores[0].head() == stores[1].head()
    for store in stores:
        store.close()


def test_a_lone_writer_appends_in_one_statement_and_backs_off_when_others_write(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone, other = PostgresStore(pg_url), PostgresStore(pg_url)
    locked = _count_locking([alone, other], monkeypatch)
    for turn in range(5):
        alone.append(_events(3, prefix=f"a{turn}-"))
    assert locked == [0]  # only the first append, which did not know the head, locked it
    # Another writer moves the head: the next statement finds it moved and writes
    # nothing, so that append locks the head; after a miss the next one locks at once.
    other.append(_events(2, prefix="b-"))
    for turn in range(3):
        alone.append(_events(3, prefix=f"c{turn}-"))
    assert locked == [0, 1, 0, 0]
    # A batch larger than a statement's share, or reaching into a month with no
    # partition yet, locks the head too.
    alone.append(_events(200, prefix="big-"))
    alone.append(_events(2, start=datetime(2026, 4, 30, 23, 59, 59, tzinfo=timezone.utc),
                         prefix="may-"))
    assert locked == [0, 1, 0, 0, 0, 0]
    alone.append(_events(2, prefix="d-"))
    assert locked == [0, 1, 0, 0, 0, 0]
    assert alone.count() == 15 + 2 + 9 + 200 + 2 + 2 and other.verify().ok
    alone.close()
    other.close()


def test_verify_during_appends_sees_one_consistent_snapshot(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    script = (
        "import sys; from datetime import datetime, timezone\n"
        "from tracevault.schema import AuditEvent; from tracevault.store import open_store\n"
        "s = open_store(sys.argv[1])\n"
        "for b in range(200):\n"
        "    s.append([AuditEvent(event_id=f'{b}-{i}', timestamp=datetime.now(timezone.utc),"
        " kind='custom') for i in range(50)])\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, pg_url])
    reports: list[Any] = []
    while writer.poll() is None and len(reports) < 200:
        reports.append(store.verify())
    assert writer.wait(timeout=120) == 0
    assert all(r.ok for r in reports), [r for r in reports if not r.ok][:1]
    final = store.verify()
    assert final.ok and final.checked == 10_000


def test_tampering_through_psql_is_detected(
    pg_server: Any, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = PostgresStore(pg_url)
    store.append(_events(50))
    db = pg_url.rsplit("/", 1)[1]
    refused = pg_server.psql(db, "UPDATE events SET name = 'x' WHERE seq = 9")
    assert refused.returncode != 0 and "append-only" in refused.stderr
    attack = pg_server.psql(
        db,
        "ALTER TABLE events DISABLE TRIGGER USER; "
        "UPDATE events SET payload = replace(payload, '\"i\":9,', '\"i\":90,') WHERE seq = 10; "
        "ALTER TABLE events ENABLE TRIGGER USER;",
    )
    assert attack.returncode == 0, attack.stderr
    assert main(["verify", "--store", pg_url]) == 1
    assert "first bad event #10: payload of row 10 does not match its digest" in (
        capsys.readouterr().out
    )
