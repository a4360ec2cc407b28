"""Connections of one PostgreSQL ledger: a small pool for reads, one writer connection,
readable errors, and safety across ``fork()``."""

from __future__ import annotations

import contextlib
import os
import threading
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import TupleRow

from tracevault.store.base import StoreError

Conn = psycopg.Connection[TupleRow]

_IDLE_KEPT = 4  # idle read connections kept for reuse
_DEFAULTS = {
    "connect_timeout": "10",
    "application_name": "tracevault",
    # Notice a peer that vanished without closing the connection within about a minute.
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}


def detail(exc: BaseException) -> str:
    """Return the first line of a driver error (the rest repeats the connection)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Pool:
    """Opens, lends and closes the connections of the ledger at ``url``.

    ``url`` is a libpq URL; its extra ``schema=NAME`` parameter selects (and creates)
    the schema the ledger's tables live in. Connections are in autocommit mode; a
    caller that needs a transaction opens one explicitly.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        query = parse_qsl(parts.query)
        self.schema = next((v for k, v in query if k == "schema"), None)
        rest = [(k, v) for k, v in query if k != "schema"]
        self._conninfo = urlunsplit(parts._replace(query=urlencode(rest)))
        self._given = {k for k, _ in rest}
        # The place, never the password, goes into messages.
        self.where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"
        if self.schema == "$user":
            # Quoted or not, "$user" in search_path means the schema named after the
            # role: the tables would not go into the schema of that name.
            raise StoreError(
                f"PostgreSQL ledger {self.where}: schema=$user cannot be used (in "
                "search_path it stands for the schema named after the role): name it"
            )
        self._lock = threading.Lock()  # guards the idle list and the writer connection
        self.write_lock = threading.Lock()  # one append at a time per process
        self._idle: list[Conn] = []
        self._writer: Conn | None = None
        self._pid = os.getpid()
        self._closed = False

    def error(self, doing: str, exc: BaseException) -> StoreError:
        """Return the :class:`StoreError` that explains ``exc`` to a user."""
        if isinstance(exc, psycopg.OperationalError):
            return StoreError(
                f"{doing} PostgreSQL ledger {self.where}: connection lost or refused "
                f"({detail(exc)}); it reconnects on the next attempt"
            )
        return StoreError(f"{doing} PostgreSQL ledger {self.where}: {detail(exc)}")

    def connect(self) -> Conn:
        """Open a new connection (in the ledger's schema)."""
        if self._closed:
            raise StoreError(f"PostgreSQL ledger {self.where} is closed")
        options = {k: v for k, v in _DEFAULTS.items() if k not in self._given}
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True, **options)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL ledger {self.where}: {detail(exc)} "
                "(is the server running and reachable? nothing is lost: writes wait "
                "and retry)"
            ) from None
        try:
            if self.schema:
                name = pgsql.Identifier(self.schema)
                conn.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(name))
                conn.execute(pgsql.SQL("SET search_path TO {}").format(name))
        except psycopg.Error as exc:
            conn.close()
            raise self.error("cannot select the schema of", exc) from None
        return conn

    def after_fork(self) -> None:
        """In a forked child, forget the parent's connections and locks."""
        # The child must not touch its parent's sockets (closing them would end the
        # parent's sessions), and a parent thread may have held a lock at the fork.
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._lock = threading.Lock()
            self.write_lock = threading.Lock()
            self._idle = []
            self._writer = None

    def take(self) -> tuple[Conn, bool]:
        """Lend a read connection; also say whether it was reused (so may be stale)."""
        self.after_fork()
        with self._lock:
            if self._closed:
                raise StoreError(f"PostgreSQL ledger {self.where} is closed")
            if self._idle:
                return self._idle.pop(), True
        return self.connect(), False

    def give_back(self, conn: Conn) -> None:
        """Return a lent connection; a broken or busy one is closed instead."""
        if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.close()
            return
        with self._lock:
            if not self._closed and len(self._idle) < _IDLE_KEPT:
                self._idle.append(conn)
                return
        conn.close()

    def writer(self) -> tuple[Conn, bool]:
        """Return the writer connection (caller holds ``write_lock``) and whether it
        was reused."""
        self.after_fork()
        if self._writer is not None and not self._writer.closed:
            return self._writer, True
        self._writer = self.connect()
        return self._writer, False

    def drop_writer(self) -> None:
        """Close the writer connection after a failure; the next write reconnects."""
        conn, self._writer = self._writer, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close every connection; idempotent."""
        with self._lock:
            self._closed = True
            conns, self._idle = self._idle, []
            writer, self._writer = self._writer, None
        if os.getpid() != self._pid:
            return  # the parent's connections: not ours to close
        for conn in [*conns, *([writer] if writer else [])]:
            with contextlib.suppress(psycopg.Error):
                conn.close()
