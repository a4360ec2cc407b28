"""The shared team ledger: PostgreSQL, one chain for many processes on many machines.

Every append is one transaction that moves the single ``ledger_head`` row, so
concurrent writers anywhere queue on that row's lock and the chain stays one sequence.
A writer that knows the head (it moved it last) seals the batch after it and sends one
statement: it moves the head only if the head is still the one it knows, and inserts
the rows only if it did. Otherwise (first append, another writer appended, a new
monthly partition) it locks the head (``SELECT ... FOR UPDATE``), seals the batch
after it, streams the rows in with ``COPY`` and moves the head. The rows keep the
exact canonical JSON that was digested (``payload``); a generated ``doc`` JSONB column
holds a copy for queries. ``events`` is partitioned by month on ``ts``; a partition is
created by the first append that needs it, under the head's lock. The schema is
created and migrated on first use (:mod:`tracevault.store.postgres_schema`).

Connection failures never lose an event: ``append`` retries once on a fresh connection
when a pooled one went stale, and otherwise raises :class:`StoreError` (the pipeline's
writer keeps the batch and retries with backoff); the next call reconnects. Appends are
idempotent by event id (``UNIQUE (event_id, ts)``; a re-appended event has both), so a
batch whose commit went through but whose acknowledgement was lost is not written twice
when it is retried.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import psycopg

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
from tracevault.store.postgres_pool import Conn, Pool
from tracevault.store.postgres_schema import migrate, partition_ddl, partition_name, table_exists
from tracevault.store.sql import SQLStore

_ROW_COLUMNS = ("seq", *COLUMNS, "payload", "salt", "digest", "chain")
_COPY = f"COPY events ({', '.join(_ROW_COLUMNS)}) FROM STDIN"
_HEAD = "SELECT seq, chain FROM ledger_head WHERE id = 1"
_NOT_TEXT = {"seq": "bigint", "ts": "timestamptz", "duration_ms": "float8", "tokens": "bigint",
             "cost": "float8", "salt": "bytea", "digest": "bytea", "chain": "bytea"}
# One statement, its own transaction: the head moves from the (seq, chain) the writer
# knows to the batch's last row, and the rows go in only if it did. The UPDATE waits
# for a concurrent writer's lock and then finds the head moved, so the statement
# inserts nothing and the writer takes the locking path.
_GUARDED_MAX_ROWS = 128  # larger batches: COPY costs less than binding arrays
_MAX_BACKOFF = 6  # after k misses in a row, 2**k - 1 appends (at most 63) lock at once
_GUARDED_APPEND = (
    "WITH moved AS (UPDATE ledger_head SET seq = %s, chain = %s "
    "WHERE id = 1 AND seq = %s AND chain = %s RETURNING 1) "
    f"INSERT INTO events ({', '.join(_ROW_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"%b::{_NOT_TEXT.get(c, 'text')}[]" for c in _ROW_COLUMNS)
    + ") WHERE EXISTS (SELECT FROM moved)"
)


@lru_cache(maxsize=256)
def to_pg(query: str) -> str:
    """Translate a query written with ``?`` placeholders (the SQLStore dialect) to
    psycopg's ``%s`` ones; the shared queries contain no other ``?`` or ``%``."""
    return query.replace("%", "%%").replace("?", "%s")


class PostgresStore(SQLStore):
    """A ledger in a PostgreSQL database, created and migrated on first use.

    ``url`` is a libpq URL (``postgresql://user:pass@host:5432/db``); an extra
    ``schema=NAME`` query parameter keeps the ledger's tables in their own schema.
    With ``create=False`` a database without a ledger is an error.
    """

    day_sql = "((ts AT TIME ZONE 'UTC')::date)"  # str() of the date is YYYY-MM-DD
    ts_text_sql = "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self._pool = Pool(url)
        self.where = self._pool.where
        self._local = threading.local()
        self._months: set[str] = set()
        self._head: tuple[int, bytes] | None = None  # as this store last moved it
        self._misses = 0  # one-statement appends in a row that found the head moved
        self._skip = 0  # appends left that lock the head without trying one statement
        conn = self._pool.connect()
        try:
            migrate(conn, where=self.where, create=create)
        except psycopg.Error as exc:
            conn.close()
            raise self._pool.error("cannot initialise", exc) from None
        except BaseException:
            conn.close()
            raise
        self._pool.give_back(conn)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Conn]:
        """Run the reads of this thread inside one REPEATABLE READ transaction."""
        conn, _ = self._pool.take()
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                self._local.snapshot = conn
                try:
                    yield conn
                finally:
                    self._local.snapshot = None
        except psycopg.Error as exc:
            conn.close()
            raise self._pool.error("cannot read", exc) from None
        finally:
            self._pool.give_back(conn)  # closes it instead if broken or mid-transaction

    def schema_version(self) -> int:
        """Return the schema version of the database (after the migrations ran)."""
        return int(self._fetch("SELECT value FROM meta WHERE key = 'schema_version'")[0][0])

    # --- SQLStore hooks ---------------------------------------------------------------

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        snapshot: Conn | None = getattr(self._local, "snapshot", None)
        if snapshot is not None:
            return snapshot.execute(to_pg(sql), tuple(params)).fetchall()
        for _ in range(2):
            conn, reused = self._pool.take()
            try:
                rows = conn.execute(to_pg(sql), tuple(params)).fetchall()
            except psycopg.OperationalError as exc:
                conn.close()
                if reused:  # a pooled connection went stale (e.g. a server restart)
                    continue
                raise self._pool.error("cannot read", exc) from None
            except psycopg.Error as exc:
                self._pool.give_back(conn)
                raise self._pool.error("cannot read", exc) from None
            self._pool.give_back(conn)
            return rows
        raise StoreError(f"cannot read PostgreSQL ledger {self.where}")  # pragma: no cover

    def _stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        snapshot: Conn | None = getattr(self._local, "snapshot", None)
        if snapshot is not None:
            yield from self._cursor_rows(snapshot, sql, params)
            return
        for _ in range(2):
            conn, reused = self._pool.take()
            started = False
            try:
                with conn.transaction():  # a server-side cursor lives in a transaction
                    for row in self._cursor_rows(conn, sql, params):
                        started = True
                        yield row
            except psycopg.OperationalError as exc:
                conn.close()
                if reused and not started:
                    continue
                raise self._pool.error("cannot read", exc) from None
            except psycopg.Error as exc:
                conn.close()
                raise self._pool.error("cannot read", exc) from None
            except BaseException:  # the caller stopped iterating (GeneratorExit)
                self._pool.give_back(conn)
                raise
            self._pool.give_back(conn)
            return

    @staticmethod
    def _cursor_rows(conn: Conn, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        with conn.cursor(name=f"tracevault_{threading.get_ident()}_{id(sql)}") as cur:
            cur.itersize = 2000
            cur.execute(to_pg(sql), tuple(params))
            yield from cur

    def _ts_param(self, ts: datetime) -> Any:
        return ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)

    def _ts_text(self, value: Any) -> str:
        return format_ts(value) if isinstance(value, datetime) else str(value)

    def head(self) -> tuple[int, bytes]:
        row = self._fetch(_HEAD)
        if not row:
            return 0, GENESIS
        return int(row[0][0]), bytes(row[0][1])

    def verify(self, anchor: tuple[int, bytes] | None = None) -> VerifyReport:
        # The head and the rows must come from one snapshot, or appends landing
        # between the two reads would look like an extended tail.
        with self._snapshot():
            return super().verify(anchor)

    # --- writing ----------------------------------------------------------------------

    def append(self, events: Sequence[AuditEvent]) -> int:
        """Seal and store ``events``; events whose id is already stored are skipped, so
        re-appending a batch (a retry after a lost commit acknowledgement, a dead-letter
        replay) never duplicates a record."""
        rows = unique_rows(prepare_rows(events))  # outside the lock
        self._pool.after_fork()
        with self._pool.write_lock:
            return self._write(rows)

    def _write(self, rows: list[PreparedRow]) -> int:
        reconnected = filtered = False
        while True:
            conn, reused = self._pool.writer()
            try:
                if not rows:
                    head = conn.execute(_HEAD).fetchone()
                    return int(head[0]) if head else 0
                seq = self._append_guarded(conn, rows)
                return seq if seq is not None else self._append_tx(conn, rows)
            except psycopg.errors.UniqueViolation as exc:
                if filtered:
                    raise self._pool.error("cannot append to", exc) from None
                filtered = True  # some of the batch is stored already: write the rest
                stored = self._stored_ids(conn, [r.columns[0] for r in rows])
                rows = [r for r in rows if r.columns[0] not in stored]
            except psycopg.OperationalError as exc:
                self._pool.drop_writer()
                if reused and not reconnected:  # a pooled connection went stale
                    reconnected = True
                    continue
                raise self._pool.error("cannot append to", exc) from None
            except psycopg.Error as exc:
                raise self._pool.error("cannot append to", exc) from None

    @staticmethod
    def _stored_ids(conn: Conn, ids: list[str]) -> set[str]:
        rows = conn.execute("SELECT event_id FROM events WHERE event_id = ANY(%s)", (ids,))
        return {r[0] for r in rows}

    def _append_guarded(self, conn: Conn, rows: list[PreparedRow]) -> int | None:
        """Append ``rows`` after the head this store last wrote, in one statement (one
        round trip: each is a GIL hand-over inside a busy agent); ``None`` when nothing
        was written: the head moved since, or the batch is large, or a row needs a
        partition not known to exist.

        Where other writers keep moving the head, the statement would mostly find it
        moved and cost a round trip for nothing: after each miss in a row, twice as
        many appends go straight to the locking path.
        """
        head = self._head
        if head is None or len(rows) > _GUARDED_MAX_ROWS:
            return None
        if self._skip:
            self._skip -= 1
            return None
        if not {r.columns[1][:7] for r in rows} <= self._months:
            return None
        self._head = None  # unknown until this statement's outcome is
        values = sealed_values(rows, *head)
        last = values[-1]
        columns = [list(c) for c in zip(*values, strict=True)]
        written = conn.execute(_GUARDED_APPEND, (last[0], last[-1], *head, *columns)).rowcount
        if written != len(values):  # the head had moved: nothing was inserted
            self._misses = min(self._misses + 1, _MAX_BACKOFF)
            self._skip = (1 << self._misses) - 1
            return None
        self._misses = 0
        self._head = (last[0], last[-1])
        return int(last[0])

    def _append_tx(self, conn: Conn, rows: list[PreparedRow]) -> int:
        with conn.transaction():
            head = conn.execute(_HEAD + " FOR UPDATE").fetchone()
            if head is None:
                raise StoreError(f"PostgreSQL ledger {self.where} has no head row")
            created = self._ensure_partitions(conn, {r.columns[1][:7] for r in rows})
            values = sealed_values(rows, int(head[0]), bytes(head[1]))
            with conn.cursor().copy(_COPY) as copy:
                for row in values:
                    copy.write_row(row)
            seq, chain = values[-1][0], values[-1][-1]
            conn.execute("UPDATE ledger_head SET seq = %s, chain = %s WHERE id = 1", (seq, chain))
        self._months |= created
        self._head = (int(seq), chain)
        return int(seq)

    def _ensure_partitions(self, conn: Conn, months: set[str]) -> set[str]:
        """Create the monthly partitions ``months`` need (the caller holds the head lock
        and remembers the returned months once its transaction commits)."""
        new = months - self._months
        for month in sorted(new):
            if not table_exists(conn, partition_name(month)):
                conn.execute(partition_ddl(month).encode())
        return new

    def copy_rows(
        self, rows: Sequence[Sequence[Any]], after: tuple[int, bytes], head: tuple[int, bytes]
    ) -> None:
        """Store rows of another ledger exactly as they are (``seq``, columns with ``ts``
        as text, ``payload``, ``salt``, ``digest``, ``chain``) after ``after``, the
        (seq, chain) this ledger's head must have; then set the head to ``head``."""
        self._pool.after_fork()
        with self._pool.write_lock:
            conn, _ = self._pool.writer()
            try:
                with conn.transaction():
                    found = conn.execute(_HEAD + " FOR UPDATE").fetchone()
                    if found is None or (int(found[0]), bytes(found[1])) != after:
                        raise StoreError(
                            f"PostgreSQL ledger {self.where} changed during the copy "
                            f"(head is #{found[0] if found else '?'}, expected #{after[0]})"
                        )
                    created = self._ensure_partitions(conn, {str(r[2])[:7] for r in rows})
                    with conn.cursor().copy(_COPY) as copy:
                        for r in rows:
                            copy.write_row(r)
                    conn.execute("UPDATE ledger_head SET seq = %s, chain = %s WHERE id = 1", head)
            except psycopg.OperationalError as exc:
                self._pool.drop_writer()
                raise self._pool.error("cannot copy into", exc) from None
            except psycopg.Error as exc:
                raise self._pool.error("cannot copy into", exc) from None
            self._months |= created

    # --- forwarder cursors ------------------------------------------------------------

    def _erase_rows(self, sql: str, params: Sequence[Any]) -> int:
        # The old row versions stay in the table files until VACUUM reclaims them (see
        # the README): PostgreSQL never overwrites a row in place.
        return self._execute("cannot erase in", to_pg(sql), params)

    def _execute(self, doing: str, sql: str, params: Sequence[Any]) -> int:
        """Run one statement (autocommit); return its row count."""
        for _ in range(2):
            conn, reused = self._pool.take()
            try:
                done = conn.execute(sql, tuple(params)).rowcount
            except psycopg.OperationalError as exc:
                conn.close()
                if reused:
                    continue
                raise self._pool.error(doing, exc) from None
            except psycopg.Error as exc:
                self._pool.give_back(conn)
                raise self._pool.error(doing, exc) from None
            self._pool.give_back(conn)
            return int(done)
        raise StoreError(f"cannot write to PostgreSQL ledger {self.where}")  # pragma: no cover

    def get_cursor(self, name: str) -> int:
        row = self._fetch("SELECT seq FROM sink_cursors WHERE name = ?", (name,))
        return int(row[0][0]) if row else 0

    def set_cursor(self, name: str, seq: int) -> None:
        self._execute(
            "cannot save a cursor in",
            "INSERT INTO sink_cursors (name, seq, updated) VALUES (%s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET seq = greatest(sink_cursors.seq, excluded.seq), "
            "updated = excluded.updated",
            (name, seq, format_ts(datetime.now(timezone.utc))),
        )

    def set_sink_error(self, name: str, error: str | None) -> None:
        self._execute(
            "cannot save a sink error in",
            "INSERT INTO sink_errors (name, error, at) VALUES (%s, %s, %s) "
            "ON CONFLICT (name) DO UPDATE SET error = excluded.error, at = excluded.at",
            (name, error, format_ts(datetime.now(timezone.utc))),
        )

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

