"""PostgreSQL ledger: append rate by 1 and 8 writers, the cost of the shared chain head,
and `show` / `stats` latency on a ledger of 1,000,000 events.

Run: ``.venv/bin/python benchmarks/bench_postgres.py [--events N] [--append N]
[--url postgresql://...]``. Without ``--url`` it starts its own PostgreSQL (the test
suite's harness, with ``fsync`` and ``synchronous_commit`` on, as in production) on a
temporary directory. Prints a table and writes ``benchmarks/results/postgres.json``.

The chain-head cost is measured by writing the same prepared rows, with the same
``COPY``, into a table with the same columns and indexes but no chain and no head row
(each writer commits independently): the difference is what keeping one verifiable
sequence across processes costs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from harness import machine, new_database, postgres_server, write_results

from tracevault.cli import main as cli
from tracevault.ledger import prepare_rows
from tracevault.schema import AuditEvent
from tracevault.store.postgres import _COPY, PostgresStore

T0 = datetime(2026, 8, 1, tzinfo=timezone.utc)


def event(i: int, writer: int = 0, sessions: int = 10_000) -> AuditEvent:
    """A tool-call outcome of about 600 bytes of canonical JSON."""
    session = i % sessions
    return AuditEvent(
        event_id=f"w{writer}-{i}",
        timestamp=T0 + timedelta(seconds=i * 16),  # 2 writers x 500,000: 3 months
        kind="tool_call",
        phase="end",
        name=f"tool_{i % 12}",
        session_id=f"session-{session:05d}",
        user_id=f"user-{session % 50}",
        trace_id=f"trace-{session}-{i // (sessions * 10)}",
        span_id=f"span-{i}",
        data={
            "tool_name": f"tool_{i % 12}",
            "parameters": {"customer": f"cust-{i % 977}", "query": "late delivery " * 6},
            "result": {"orders": [f"ord-{i}-{k}" for k in range(4)], "note": "x" * 120},
            "status": "error" if i % 97 == 0 else "success",
            "duration_ms": float(i % 250) + 0.5,
        },
    )


def _append_worker(url: str, writer: int, n: int, batch: int, chained: bool) -> None:
    store = PostgresStore(url)
    conn = None if chained else psycopg.connect(url, autocommit=True)
    copy_free = _COPY.replace("COPY events", "COPY free_events")
    for start in range(0, n, batch):
        events = [event(i, writer) for i in range(start, min(start + batch, n))]
        if chained:
            store.append(events)
            continue
        rows = prepare_rows(events)  # the same work before the lock
        assert conn is not None
        with conn.transaction(), conn.cursor().copy(copy_free) as copy:
            for k, r in enumerate(rows):
                seq = writer * 10**9 + start + k
                copy.write_row((seq, *r.columns, r.payload.decode(), r.salt, r.digest, r.digest))
    store.close()


def append_rate(url: str, writers: int, per_writer: int, batch: int, chained: bool) -> float:
    """Return events/s appended by ``writers`` processes at once."""
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_append_worker, args=(url, w, per_writer, batch, chained))
        for w in range(writers)
    ]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    return writers * per_writer / (time.perf_counter() - start)


def fresh_database(admin_url: str) -> str:
    """Create an empty database (with an unchained twin table) and return its URL."""
    url = new_database(admin_url, f"bench_{os.getpid()}_{time.monotonic_ns() % 10**9}")
    PostgresStore(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE free_events (LIKE events INCLUDING DEFAULTS INCLUDING GENERATED "
            "INCLUDING INDEXES) PARTITION BY RANGE (ts)"
        )
        for month in range(8, 13):  # the months event() timestamps fall in
            upper = f"2026-{month + 1:02d}" if month < 12 else "2027-01"
            conn.execute(
                f"CREATE TABLE free_p{month} PARTITION OF free_events FOR VALUES "
                f"FROM ('2026-{month:02d}-01 00:00+00') TO ('{upper}-01 00:00+00')".encode()
            )
    return url


def timed(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    """Median and max wall time of ``fn`` in milliseconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return {"median_ms": round(statistics.median(times), 2), "max_ms": round(max(times), 2)}


def quiet_cli(*args: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli(list(args)) == 0


def load(url: str, n: int) -> float:
    """Fill the ledger with ``n`` events by 2 writers; return the seconds it took."""
    start = time.perf_counter()
    append_rate(url, 2, n // 2, 5_000, chained=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE events")
    return time.perf_counter() - start


def postgres_version(url: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        settings = conn.execute(
            "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings "
            "WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers')"
        ).fetchone()
    return f"PostgreSQL {row[0] if row else '?'} ({settings[0] if settings else ''})"


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": machine()}
    with postgres_server(args.url) as admin:
        out["postgres"] = postgres_version(admin)
        out["append"] = {}
        for writers in (1, 8):
            for batch in (1_000, 10):
                per = args.append // writers if batch > 10 else args.small // writers
                url = fresh_database(admin)
                chained = append_rate(url, writers, per, batch, chained=True)
                free = append_rate(url, writers, per, batch, chained=False)
                store = PostgresStore(url)
                assert store.verify().ok and store.count() == writers * per
                store.close()
                key = f"{writers}w_batch{batch}"
                out["append"][key] = {
                    "events_per_s": round(chained),
                    "unchained_events_per_s": round(free),
                    "chain_cost_pct": round(100 * (1 - chained / free), 1),
                }
                print(key, out["append"][key], flush=True)

        url = fresh_database(admin)
        out["load_seconds"] = round(load(url, args.events), 1)
        store = PostgresStore(url)
        session = "session-04242"
        in_session = 2 * len(range(4242, args.events // 2, 10_000))  # 2 writers
        assert len(list(store.events(session_id=session))) == in_session
        out["events"] = store.count()
        out["read"] = {
            "events_of_one_session": timed(lambda: list(store.events(session_id=session)), 20),
            "cli_show_json": timed(lambda: quiet_cli("show", session, "--store", url, "--json"), 5),
            "sessions_limit_20": timed(lambda: store.sessions(limit=20), 5),
            "stats_all": timed(store.stats, 3),
            "stats_last_7_days": timed(
                lambda: store.stats(since=T0 + timedelta(days=85), until=T0 + timedelta(days=92)),
                5,
            ),
            "cli_stats": timed(lambda: quiet_cli("stats", "--store", url), 3),
        }
        start = time.perf_counter()
        report = store.verify()
        out["verify_seconds"] = round(time.perf_counter() - start, 1)
        assert report.ok and report.checked == args.events
        with psycopg.connect(url) as conn:
            size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
            out["database_size"] = (size.fetchone() or ["?"])[0]
        store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="ledger size for reads")
    parser.add_argument("--append", type=int, default=200_000, help="events per append run")
    parser.add_argument("--small", type=int, default=16_000, help="events in batch-10 runs")
    parser.add_argument("--url", help="admin URL of an existing server (default: start one)")
    args = parser.parse_args()
    if os.geteuid() == 0 and not args.url and shutil.which("runuser") is None:
        sys.exit("needs runuser to start PostgreSQL as the postgres account")
    result = run(args)
    write_results("postgres", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
