"""The PostgreSQL ledger's schema, as numbered migrations, and :func:`migrate`, which
applies them on first use.

Version 1 is the ledger itself: ``events`` partitioned by month on ``ts`` (the same
indexed columns as SQLite, the exact canonical JSON in ``payload`` and a generated
``doc`` JSONB copy for queries), the one-row ``ledger_head``, forwarder cursors and
triggers that keep ``events`` append-only. Version 2 adds the expression index on the
tool name inside the JSONB payload. A new version is appended to :data:`MIGRATIONS`;
existing entries never change, because deployed databases have already run them.

Each monthly partition carries its own trigger refusing ``TRUNCATE``: it is created with
the partition (:func:`partition_ddl`), and :func:`migrate` adds it to partitions that
lack it (:func:`protect_partitions`).
"""

from __future__ import annotations

import logging
from datetime import date

import psycopg
from psycopg import Connection
from psycopg import sql as pgsql
from psycopg.rows import TupleRow

from tracevault.store.base import StoreError
from tracevault.store.postgres_pool import detail

SCHEMA_VERSION = 2

# ``payload`` holds the exact bytes that were digested; JSONB normalises JSON (key
# order, whitespace, number spelling) and rejects the escaped NUL character, so it is
# only a derived copy in which an escaped NUL (``\u0000`` after an even number of
# backslashes) becomes U+2400 "␀". ``strpos`` keeps the regular expression off the
# common path.
_V1 = r"""
CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE events (
    seq bigint NOT NULL,
    event_id text NOT NULL,
    ts timestamptz NOT NULL,
    kind text NOT NULL,
    phase text NOT NULL,
    level text NOT NULL,
    name text,
    session_id text,
    user_id text,
    trace_id text,
    span_id text,
    parent_span_id text,
    status text,
    duration_ms double precision,
    tokens bigint,
    cost double precision,
    payload text,
    salt bytea,
    digest bytea NOT NULL,
    chain bytea NOT NULL,
    doc jsonb GENERATED ALWAYS AS ((CASE WHEN strpos(payload, '\u0000') = 0 THEN payload
        ELSE regexp_replace(payload, '(?<!\\)((?:\\\\)*)\\u0000', '\1\\u2400', 'g')
        END)::jsonb) STORED,
    PRIMARY KEY (seq, ts),
    -- A partitioned table's unique keys include the partition key; a re-appended
    -- event has the same id and timestamp, so this makes appends idempotent.
    UNIQUE (event_id, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX events_session ON events (session_id, seq);
CREATE INDEX events_user ON events (user_id, ts);
CREATE INDEX events_ts ON events (ts);
CREATE INDEX events_kind ON events (kind, phase, name);
CREATE INDEX events_trace ON events (trace_id, seq);
CREATE TABLE ledger_head (
    id integer PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL,
    chain bytea NOT NULL
);
INSERT INTO ledger_head (id, seq, chain) VALUES (1, 0, decode(repeat('00', 32), 'hex'));
CREATE TABLE sink_cursors (name text PRIMARY KEY, seq bigint NOT NULL, updated text NOT NULL);
CREATE TABLE sink_errors (name text PRIMARY KEY, error text, at text NOT NULL);
CREATE FUNCTION tracevault_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.payload IS NULL AND NEW.salt IS NULL
       AND NEW.seq = OLD.seq AND NEW.digest = OLD.digest AND NEW.chain = OLD.chain THEN
        RETURN NEW;  -- erasure: the one permitted change
    END IF;
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'tracevault ledger is append-only (only erasure may clear a payload)';
    END IF;
    RAISE EXCEPTION 'tracevault ledger is append-only';
END
$$;
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION tracevault_append_only();
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION tracevault_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION tracevault_append_only();
"""

# Tool statistics and ad-hoc JSONB queries look tools up by the name in the payload.
_V2 = """
CREATE INDEX events_tool ON events ((doc -> 'data' ->> 'tool_name'), ts)
    WHERE kind = 'tool_call';
"""

MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _V1), (2, _V2))

# Key of the transaction-level advisory lock that serialises migrations between
# processes opening the same database for the first time at once.
MIGRATION_LOCK = 0x7472_6163_6576  # "tracev"

# PostgreSQL clones row triggers (UPDATE, DELETE) of ``events`` to every partition,
# but not statement triggers: the parent's TRUNCATE trigger does not fire for a
# partition truncated directly (``TRUNCATE events_p202611``), so each partition needs
# its own.
PARTITION_TRIGGER = "partition_no_truncate"
_PARTITION_TRIGGER_DDL = ("CREATE TRIGGER {} BEFORE TRUNCATE ON {} "
                          "FOR EACH STATEMENT EXECUTE FUNCTION tracevault_append_only()")

# The partitions of ``events`` in the current schema lacking that trigger, read from the
# catalog (see table_exists). Compared by name: the schema name may need quoting, which
# a cast such as ``current_schema()::regnamespace`` would not do.
_UNPROTECTED = """
SELECT n.nspname, c.relname FROM pg_catalog.pg_inherits i
JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE p.relname = 'events' AND pn.nspname = current_schema()
  AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t
                  WHERE t.tgrelid = c.oid AND t.tgname = %s)
ORDER BY c.relname
"""

log = logging.getLogger("tracevault")


def partition_name(month: str) -> str:
    """Return the table name of the partition holding month ``YYYY-MM``."""
    return f"events_p{month[:4]}{month[5:7]}"


def partition_ddl(month: str) -> str:
    """Return the statements creating the partition of month ``YYYY-MM`` with its
    trigger refusing ``TRUNCATE`` (for a caller that has checked it does not exist)."""
    year, mon = int(month[:4]), int(month[5:7])
    start = date(year, mon, 1)
    end = f"{year + 1:04d}-01-01" if mon == 12 else f"{year:04d}-{mon + 1:02d}-01"
    table = partition_name(month)
    return (
        f"CREATE TABLE {table} PARTITION OF events "
        f"FOR VALUES FROM ('{start.isoformat()} 00:00:00+00') TO ('{end} 00:00:00+00');\n"
        + _PARTITION_TRIGGER_DDL.format(PARTITION_TRIGGER, table)
    )


def protect_partitions(conn: Connection[TupleRow], *, where: str) -> None:
    """Give every partition of the ledger the trigger refusing ``TRUNCATE`` that it
    lacks (partitions created before tracevault added one, or by an older version).

    Costs one catalog query when all have it. Without the privilege to create
    triggers, or on a read-only server, it logs a warning and changes nothing: the
    ledger still opens, and ``verify`` still detects removed rows.
    """
    missing = conn.execute(_UNPROTECTED, (PARTITION_TRIGGER,)).fetchall()
    if not missing:
        return
    # The migration lock serialises processes opening the ledger at once; each looks
    # again once it holds the lock and adds only what is still missing.
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        for schema, table in conn.execute(_UNPROTECTED, (PARTITION_TRIGGER,)).fetchall():
            # One partition per (autocommit) transaction: holding one partition's lock
            # while waiting for another's could deadlock with a writer doing the reverse.
            conn.execute(pgsql.SQL(_PARTITION_TRIGGER_DDL).format(
                pgsql.Identifier(PARTITION_TRIGGER), pgsql.Identifier(schema, table)))
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction) as exc:
        log.warning(
            "PostgreSQL ledger %s: cannot add the trigger refusing TRUNCATE to its monthly "
            "partitions (%s); open it once with the owner's role to add it",
            where,
            detail(exc),
        )
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def table_exists(conn: Connection[TupleRow], table: str) -> bool:
    """Whether ``table`` exists in the current schema, as committed right now."""
    # The catalog itself, read with the statement's snapshot: name lookups such as
    # to_regclass() may answer from a cache that has not yet seen another process's
    # commit when only a row or advisory lock was waited for. The schema is compared by
    # name: a cast such as current_schema()::regnamespace parses it as an unquoted
    # identifier, so "TraceVault" would become tracevault and "a b" a syntax error.
    row = conn.execute(
        "SELECT count(*) FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = %s AND n.nspname = current_schema()",
        (table,),
    ).fetchone()
    return bool(row and row[0])


def schema_version(conn: Connection[TupleRow]) -> int:
    """Return the schema version of the ledger (0 if there is none)."""
    if not table_exists(conn, "meta"):
        return 0
    found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(found[0]) if found else 0


def migrate(conn: Connection[TupleRow], *, where: str, create: bool) -> None:
    """Bring the ledger's schema to :data:`SCHEMA_VERSION` (creating it if ``create``)
    and give every monthly partition its trigger refusing ``TRUNCATE``.

    Raises :class:`StoreError` for a newer schema or, with ``create=False``, for a
    database without a ledger; driver errors propagate.
    """
    version = schema_version(conn)
    if version != SCHEMA_VERSION:
        _migrate(conn, version, where=where, create=create)
    protect_partitions(conn, where=where)


def _migrate(conn: Connection[TupleRow], version: int, *, where: str, create: bool) -> None:
    """Run the migrations after ``version`` (the ledger's version when the caller
    looked), serialised with other processes; errors as for :func:`migrate`."""
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"PostgreSQL ledger {where} has schema version {version}, newer than this "
            f"tracevault understands ({SCHEMA_VERSION}): upgrade tracevault"
        )
    if version == 0 and not create:
        raise StoreError(
            f"no tracevault ledger in PostgreSQL database {where} (run an agent with "
            "tracevault first, or pass --store / set TRACEVAULT_STORE)"
        )
    # A session lock taken before the transaction starts: the transaction then sees the
    # catalog as another process that held the lock left it.
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        with conn.transaction():
            version = schema_version(conn)  # another process may have done it meanwhile
            for number, script in MIGRATIONS:
                if number > version:
                    conn.execute(script.encode())
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(max(version, SCHEMA_VERSION)),),
            )
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
