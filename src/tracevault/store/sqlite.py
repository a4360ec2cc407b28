"""The embedded default ledger: one SQLite file in WAL mode.

Appends run in ``BEGIN IMMEDIATE`` transactions that read the chain head, insert the
batch and move the head in one step, so several processes writing the same file keep
one consistent chain (SQLite serialises the writers; ``busy_timeout`` makes them wait
instead of failing). Each thread gets its own connection, so readers never block the
background writer. Triggers make the table append-only for ordinary SQL; they are a
guard against accidents, while the hash chain is what detects deliberate tampering.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from tracevault.forks import FORK_GATE
from tracevault.ledger import (
    COLUMNS,
    GENESIS,
    PreparedRow,
    VerifyReport,
    format_ts,
    prepare_rows,
    sealed_values,
    unique_rows,
)
from tracevault.schema import AuditEvent
from tracevault.store.base import StoreError
from tracevault.store.sql import SQLStore, verified

log = logging.getLogger("tracevault")

SCHEMA_VERSION = 1

# Every index costs every insert, so there is one only where a query uses it: sessions
# and session views (events_session), trace trees (events_trace), model and tool stats
# (events_kind). Ledgers created before also have events_user (user_id, ts), which no
# query uses; it is left in place there.
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    ts TEXT NOT NULL,
    kind TEXT NOT NULL,
    phase TEXT NOT NULL,
    level TEXT NOT NULL,
    name TEXT,
    session_id TEXT,
    user_id TEXT,
    trace_id TEXT,
    span_id TEXT,
    parent_span_id TEXT,
    status TEXT,
    duration_ms REAL,
    tokens INTEGER,
    cost REAL,
    payload TEXT,
    salt BLOB,
    digest BLOB NOT NULL,
    chain BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_session ON events (session_id, seq);
CREATE INDEX IF NOT EXISTS events_kind ON events (kind, phase, name);
CREATE INDEX IF NOT EXISTS events_trace ON events (trace_id, seq);
CREATE TABLE IF NOT EXISTS ledger_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    chain BLOB NOT NULL
);
INSERT OR IGNORE INTO ledger_head (id, seq, chain) VALUES (1, 0, zeroblob(32));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sink_cursors (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sink_errors (
    name TEXT PRIMARY KEY,
    error TEXT,
    at TEXT NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'tracevault ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
WHEN NOT (NEW.payload IS NULL AND NEW.salt IS NULL AND NEW.seq = OLD.seq
          AND NEW.digest = OLD.digest AND NEW.chain = OLD.chain)
BEGIN
    SELECT RAISE(ABORT, 'tracevault ledger is append-only (only erasure may clear a payload)');
END;
CREATE TRIGGER IF NOT EXISTS ledger_head_follows AFTER INSERT ON events
BEGIN UPDATE ledger_head SET seq = NEW.seq, chain = NEW.chain WHERE id = 1 AND seq < NEW.seq; END;
"""

_COLUMNS_SQL = f"seq, {', '.join(COLUMNS)}, payload, salt, digest, chain"
_PARAMS_PER_ROW = len(COLUMNS) + 5
_ROW = f"({', '.join('?' for _ in range(_PARAMS_PER_ROW))})"
# Rows per INSERT statement. The sqlite3 module lets go of the GIL for every step of a
# statement, and takes it back from a busy agent thread each time, which costs that
# thread far more than the step (about 0.25 ms on the VM of the README's figures): a
# batch of up to 64 rows is one statement, run as its own transaction (1,281 of the
# 32,766 parameters SQLite allows since 3.32; older builds allow 999: 49 rows).
_ROWS_PER_INSERT = 64
_VARIABLE_LIMIT = getattr(sqlite3, "SQLITE_LIMIT_VARIABLE_NUMBER", 9)


def _rows_per_statement(conn: sqlite3.Connection) -> int:
    """How many rows one INSERT of this connection may hold (the last parameter of a
    guarded insert is the expected head)."""
    getlimit = getattr(conn, "getlimit", None)  # Python 3.11+
    if getlimit is not None:
        limit = int(getlimit(_VARIABLE_LIMIT))
    else:
        limit = 32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
    return max(1, min(_ROWS_PER_INSERT, (limit - 1) // _PARAMS_PER_ROW))


def _insert(rows: int) -> str:
    """The INSERT statement for ``rows`` rows (sqlite3 caches each one prepared)."""
    return f"INSERT INTO events ({_COLUMNS_SQL}) VALUES " + ", ".join([_ROW] * rows)


def _insert_after(rows: int) -> str:
    """The INSERT of ``rows`` rows that inserts nothing unless the head's seq is the
    last parameter: the check and the insert are one statement, one transaction."""
    return (f"INSERT INTO events ({_COLUMNS_SQL}) SELECT * FROM (VALUES "
            + ", ".join([_ROW] * rows)
            + ") WHERE (SELECT seq FROM ledger_head WHERE id = 1) = ?")


_HEAD = "SELECT seq, chain FROM ledger_head WHERE id = 1"


_LEDGER_TABLES = frozenset({"events", "ledger_head", "meta", "sink_cursors", "sink_errors"})
_LEDGER_COLUMNS = frozenset({"seq", *COLUMNS, "payload", "salt", "digest", "chain"})


def _tables(uri: str) -> tuple[set[str], set[str]]:
    """The tables and views of the SQLite file at ``uri`` (opened as given: read-only),
    and the columns of its ``events`` table."""
    with FORK_GATE:
        probe = sqlite3.connect(uri, uri=True)
        try:
            tables = {r[0] for r in probe.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
            columns = {r[1] for r in probe.execute("PRAGMA table_info(events)")}
            return tables, columns
        finally:
            probe.close()


def _head_of(row: tuple[Any, ...] | None) -> tuple[int, bytes]:
    """The (seq, chain) of a ``ledger_head`` row (an empty ledger has none yet)."""
    if not row:
        return 0, GENESIS
    chain = row[1]
    # A chain value rewritten as text matches no chain: verify then reports the head.
    return int(row[0]), bytes(chain) if isinstance(chain, bytes) else str(chain).encode()


def _switch_to_wal(conn: sqlite3.Connection, patience_s: float = 60.0) -> None:
    """Put the file in WAL mode, waiting out other connections that open it at the same
    moment: SQLite answers a journal-mode switch that meets another connection's lock
    with "database is locked" at once, without calling the busy handler, so two threads
    (the writer and the forwarders) opening a fresh ledger together would otherwise fail.
    """
    deadline = time.monotonic() + patience_s
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)  # backoff while the other connection finishes its switch
        pause = min(pause * 2, 0.1)


# --- forks ---------------------------------------------------------------------------
# SQLite keeps, per process, the state of the locks its connections hold on a file, and
# fork() copies that state but not the locks. A child forked while a parent thread is
# inside a statement inherits locks nobody in the child will release: its connections
# wait on them ("database is locked") and its events never reach the ledger. So every
# call into SQLite runs inside the fork gate (tracevault.forks). The child then closes
# the connections it inherited, at rest: left open, they would make its own connections
# share their bookkeeping ("this process holds a shared lock") without holding the real
# locks, and a parent closing its last connection would checkpoint and delete the
# write-ahead log under the child, losing what the child appended after. Closing them
# touches only the child's locks, and the parent's real ones keep that close from
# checkpointing. (SQLite advises against closing a connection in a child; what it warns
# of needs a lock or a transaction held at the fork, which the gate rules out; a read
# the parent was streaming stays open at the fork and is closed in the child too.)

_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()
# Reads under way (streams, verify): their connections, and the cursor of each once
# its query runs (a cursor still in its statement keeps the connection open through a
# close: SQLite closes a connection only once its statements are done).
_STREAMS: dict[sqlite3.Connection, sqlite3.Cursor | None] = {}


def _close_inherited() -> None:
    inherited = [conn for store in list(_STORES) for conn in store._forget_parent()]
    streams = list(_STREAMS.items())
    _STREAMS.clear()
    if FORK_GATE.busy_at_fork:
        # The fork did not wait for a parent thread to leave SQLite: a connection may
        # be inside a call, holding a mutex no thread here will release, and closing it
        # (or letting the collector close it) would hang this process. Kept, unused.
        _ABANDONED.extend(inherited)
        _ABANDONED.extend(item for pair in streams for item in pair if item is not None)
        return
    for conn, cursor in streams:
        if cursor is not None:
            with contextlib.suppress(sqlite3.Error):
                cursor.close()
        inherited.append(conn)
    for conn in inherited:
        with contextlib.suppress(sqlite3.Error):
            conn.close()


_ABANDONED: list[Any] = []  # a forked child's inherited connections it must not close


os.register_at_fork(after_in_child=_close_inherited)


def _read_connection(path: str, **options: Any) -> sqlite3.Connection:
    """Open a connection for one streamed read (closed with :func:`_close_read`)."""
    with FORK_GATE:
        conn: sqlite3.Connection = sqlite3.connect(path, timeout=60.0, **options)
        _STREAMS[conn] = None
    return conn


def _read_query(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
    """Run the query of a read opened with :func:`_read_connection`."""
    with FORK_GATE:
        cursor = _STREAMS[conn] = conn.execute(sql, tuple(params))
    return cursor


def _close_read(conn: sqlite3.Connection) -> None:
    with FORK_GATE:
        _STREAMS.pop(conn, None)
        conn.close()


def _fetch_some(cursor: sqlite3.Cursor) -> list[Any]:
    """The next rows of a streamed query (one call into SQLite, inside the fork gate)."""
    with FORK_GATE:
        return cursor.fetchmany(2000)


class SQLiteStore(SQLStore):
    """A ledger in one SQLite file (created on first use unless ``create=False``)."""

    # Verification hashes the stored UTF-8 bytes: reading them as a blob skips decoding
    # each payload to str and encoding it back.
    payload_sql = "CAST(payload AS BLOB)"
    dynamic_types = True

    def __init__(self, path: str, *, create: bool = True, synchronous: str = "full") -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreError(f"{self.url}: synchronous must be off, normal, full or extra")
        self._synchronous = synchronous.upper()
        if not create and not os.path.exists(path):
            raise StoreError(
                f"no tracevault ledger at {path!r} (run an agent with tracevault first, "
                "or pass --store / set TRACEVAULT_STORE)"
            )
        # How connections open the file: its path, or for a ledger this process may not
        # write (see _check_is_ledger) a read-only URI.
        self._target, self._uri = path, False
        if not create or os.path.exists(path):
            self._check_is_ledger(create)
        self._local = threading.local()
        # Every connection this store opened, with the thread that uses it.
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()
        self._closed = False
        # The head this store last wrote (seq, chain), to chain the next batch after
        # without reading it first; None until known, or when another writer may have
        # appended since.
        self._head: tuple[int, bytes] | None = None
        _STORES.add(self)
        if self._uri:
            return  # read-only: the schema is what it is
        try:
            with FORK_GATE:
                self._conn().executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self.close()
            raise self._error("cannot initialise", exc) from None

    def _forget_parent(self) -> list[sqlite3.Connection]:
        """In a forked child: hand over the connections inherited from the parent (to
        be closed) and start afresh; this process opens its own on first use."""
        inherited = [conn for _, conn in self._all]
        self._local = threading.local()
        self._all = []
        self._lock = threading.Lock()  # a parent thread may have held it at the fork
        self._head = None
        return inherited

    def _check_is_ledger(self, create: bool) -> None:
        """Refuse a file that is not a ledger before touching it: opening one for reading
        (``create=False``) must not turn another application's database, or an empty
        file, into an empty ledger that then verifies; nor may a new ledger (``create``)
        be added to a database holding another application's tables.

        A ledger this process may not write (an archive on read-only media, a file or
        directory without write permission) is read through a read-only URI.
        """
        uri = f"file:{quote(self.path)}?mode=ro"
        writable = create or (os.access(self.path, os.W_OK) and os.access(
            os.path.dirname(os.path.abspath(self.path)), os.W_OK
        ))
        try:
            tables, columns = _tables(uri)
        except sqlite3.Error as exc:
            if writable or os.path.exists(self.path + "-wal"):
                raise self._error("cannot open", exc) from None
            # Reading a WAL-mode file needs its shared-memory index, which SQLite could
            # not create beside a file it may not write. With no write-ahead log there
            # (the last writer closed), the file is all there is: read it as immutable
            # (a writer starting meanwhile would not be seen).
            uri += "&immutable=1"
            try:
                tables, columns = _tables(uri)
            except sqlite3.Error as exc:
                raise self._error("cannot open", exc) from None
        if not writable:
            self._target, self._uri = uri, True
        others = sorted(tables - _LEDGER_TABLES)
        if "events" in tables and not columns >= _LEDGER_COLUMNS:
            others.insert(0, "events")  # an application's own table of that name
        if create and others:
            named = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
            raise StoreError(
                f"{self.path!r} is another database (tables {named}): a ledger needs a "
                "file of its own; nothing was changed in it"
            )
        if not create and not {"events", "ledger_head"} <= tables:
            raise StoreError(f"{self.path!r} is not a tracevault ledger (no events table); "
                             "nothing was changed in it")

    def _error(self, doing: str, exc: BaseException) -> StoreError:
        text = str(exc)
        hint = ""
        if "not a database" in text or "malformed" in text:
            hint = " — the file is corrupt or not a tracevault ledger"
        elif "readonly" in text or "unable to open" in text:
            hint = " — check that the file and its directory exist and are writable"
        elif "locked" in text or "busy" in text:
            hint = " — another process holds the write lock for too long"
        return StoreError(f"{doing} SQLite ledger {self.path!r}: {text}{hint}")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"SQLite ledger {self.path!r} is closed")

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (callers are inside the fork
        gate)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        self._check_open()
        try:
            conn = sqlite3.connect(
                self._target, timeout=60.0, isolation_level=None, check_same_thread=False,
                uri=self._uri,
            )
            if not self._uri:
                _switch_to_wal(conn)
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA busy_timeout=60000")
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from None
        self._local.conn = conn
        with self._lock:
            self._all.append((threading.current_thread(), conn))
        return conn

    # --- SQLStore hooks ---------------------------------------------------------------

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with FORK_GATE:
                return self._conn().execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise self._error("cannot read", exc) from None

    def _stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        self._check_open()
        try:
            # A connection of its own: the caller may interleave other queries while
            # it iterates, and a WAL snapshot keeps the stream consistent. The fork
            # gate is held for each call into SQLite, never across a yield.
            conn = _read_connection(self._target, check_same_thread=False, uri=self._uri)
            try:
                cursor = _read_query(conn, sql, params)
                while rows := _fetch_some(cursor):
                    yield from rows
            finally:
                _close_read(conn)
        except sqlite3.Error as exc:
            raise self._error("cannot read", exc) from None

    def _ts_param(self, ts: datetime) -> Any:
        return format_ts(ts)

    def _ts_text(self, value: Any) -> str:
        return str(value)

    def verify(self, anchor: tuple[int, bytes] | None = None) -> VerifyReport:
        """Verify the head and the rows as of one read snapshot (WAL), so appends by other
        writers during the check cannot look like an extended or broken tail."""
        self._check_open()
        try:
            conn = _read_connection(self._target, isolation_level=None, uri=self._uri)
            try:
                with FORK_GATE:
                    conn.execute("BEGIN")
                    head_seq, head_chain = _head_of(conn.execute(_HEAD).fetchone())
                records = self._erasures_in(_read_query(conn, *self._erasures_query()).fetchall())
                cursor = _read_query(conn, self._verify_sql())

                def rows() -> Iterator[tuple[Any, ...]]:
                    while batch := _fetch_some(cursor):
                        yield from batch

                return verified(rows(), head_seq, head_chain, anchor, records)
            finally:
                _close_read(conn)
        except sqlite3.Error as exc:
            raise self._error("cannot verify", exc) from None

    # --- writing ----------------------------------------------------------------------

    def head(self) -> tuple[int, bytes]:
        rows = self._fetch(_HEAD)
        return _head_of(rows[0] if rows else None)

    def append(self, events: Sequence[AuditEvent]) -> int:
        """Seal and store ``events``; events whose id is already stored are skipped, so
        re-appending a batch (a retry, a dead-letter replay) never duplicates a record."""
        rows = unique_rows(prepare_rows(events))  # encode and hash outside the lock
        try:
            with FORK_GATE:
                try:
                    return self._append_rows(rows)
                except sqlite3.IntegrityError:
                    stored = self._stored_ids([r.columns[0] for r in rows])
                    return self._append_rows([r for r in rows if r.columns[0] not in stored])
        except sqlite3.Error as exc:
            raise self._error("cannot append to", exc) from None

    def _append_rows(self, rows: Sequence[PreparedRow]) -> int:
        conn = self._conn()
        if not rows:
            return _head_of(conn.execute(_HEAD).fetchone())[0]
        per_statement = _rows_per_statement(conn)
        head = self._head
        if head is not None and len(rows) <= per_statement:
            # One statement, its own transaction, chained after the head this store last
            # wrote, and inserting nothing unless that is still the ledger's head (the
            # ledger_head_follows trigger then moves the head row along). Otherwise
            # (another writer appended, a copy moved the head) or if an id is stored
            # already, the careful path below reads the head and writes.
            values = sealed_values(rows, *head)
            params = [v for row in values for v in row]
            params.append(head[0])
            try:
                written = conn.execute(_insert_after(len(values)), params).rowcount
            except sqlite3.IntegrityError:
                written = 0
            if written == len(values):
                self._head = (values[-1][0], values[-1][-1])
                return int(values[-1][0])
            self._head = None
        conn.execute("BEGIN IMMEDIATE")
        try:
            seq, chain = _head_of(conn.execute(_HEAD).fetchone())
            values = sealed_values(rows, seq, chain)
            for start in range(0, len(values), per_statement):
                chunk = values[start : start + per_statement]
                conn.execute(_insert(len(chunk)), [v for row in chunk for v in row])
            seq, chain = values[-1][0], values[-1][-1]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._head = (seq, chain)
        return int(seq)

    def _stored_ids(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            sql = f"SELECT event_id FROM events WHERE event_id IN ({', '.join('?' * len(chunk))})"
            found.update(r[0] for r in self._conn().execute(sql, chunk))
        return found

    def get_cursor(self, name: str) -> int:
        row = self._fetch("SELECT seq FROM sink_cursors WHERE name = ?", (name,))
        return int(row[0][0]) if row else 0

    def set_cursor(self, name: str, seq: int) -> None:
        self._execute(
            "cannot save a cursor in",
            "INSERT INTO sink_cursors (name, seq, updated) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET seq = max(seq, excluded.seq), "
            "updated = excluded.updated",
            (name, seq, format_ts(datetime.now(timezone.utc))),
        )

    def set_sink_error(self, name: str, error: str | None) -> None:
        self._execute(
            "cannot save a sink error in",
            "INSERT INTO sink_errors (name, error, at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET error = excluded.error, at = excluded.at",
            (name, error, format_ts(datetime.now(timezone.utc))),
        )

    def _execute(self, doing: str, sql: str, params: Sequence[Any]) -> None:
        try:
            with FORK_GATE:
                self._conn().execute(sql, tuple(params))
        except sqlite3.Error as exc:
            raise self._error(doing, exc) from None

    def _erase_rows(self, sql: str, params: Sequence[Any]) -> int:
        try:
            with FORK_GATE:
                conn = self._conn()
                # Overwrite the freed bytes with zeros rather than leave them in free space.
                conn.execute("PRAGMA secure_delete = ON")
                return int(conn.execute(sql, tuple(params)).rowcount)
        except sqlite3.Error as exc:
            raise self._error("cannot erase in", exc) from None

    def _erased(self) -> None:
        """Move the pages out of the write-ahead log, whose earlier frames still hold the
        erased content, and truncate it. Without waiting: a checkpoint that waits for
        readers holds off every writer meanwhile."""
        try:
            with FORK_GATE:
                conn = self._conn()
                conn.execute("PRAGMA busy_timeout = 0")
                try:
                    busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                finally:
                    conn.execute("PRAGMA busy_timeout = 60000")
        except sqlite3.Error as exc:
            raise self._error("cannot erase in", exc) from None
        if busy:
            log.warning("tracevault: %s: a reader kept the write-ahead log from being "
                        "emptied after the erasure; its earlier pages go at the next "
                        "checkpoint", self.path)

    def close(self) -> None:
        """Close the ledger: this thread's connection and those of threads that ended
        (a writer already joined) now; the other threads' ones once they are done with
        them (each is freed, and so closed, with its last reference). Closing a
        connection another thread is running a statement on can crash the interpreter
        (a forwarder still finishing while the process shuts down); any further use of
        the store raises :class:`StoreError`."""
        me = threading.current_thread()
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for owner, conn in conns:
            # A connection left open waits for the garbage collector (it is part of a
            # reference cycle), and the write-ahead log stays beside the file till then.
            # (A thread threading did not start counts as alive: its connection stays.)
            if owner is me or not owner.is_alive():
                with FORK_GATE, contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._local = threading.local()  # drops this store's references to the others'
        del conns

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
