"""Core performance: capture cost, end-to-end CPU, append, verify and `show` latency.

Run: ``.venv/bin/python benchmarks/bench_core.py [--events N] [--big N]``. Prints a
table and writes ``benchmarks/results/core.json``. Every figure comes from the real
code path into a real SQLite file in a temporary directory.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness import GatedStore, machine, write_results

import tracevault
from tracevault import capture
from tracevault.ids import uuid7
from tracevault.render import build_runs, render_tree
from tracevault.schema import AuditEvent
from tracevault.store import open_store


def one_kb_data(i: int) -> dict[str, Any]:
    """A tool-call payload of about 1 KB of JSON."""
    return {
        "tool_name": "search_orders",
        "parameters": {"customer": f"cust-{i % 977}", "query": "late delivery " * 8, "page": i},
        "result": [
            {"id": f"ord-{i}-{k}", "status": "shipped", "note": "x" * 120} for k in range(5)
        ],
        "status": "success",
        "duration_ms": 12.5,
    }


def _emit_loop(payloads: list[dict[str, Any]], phase: str) -> tuple[float, float]:
    trace, parent = "t" * 32, "p" * 16
    thread0 = time.thread_time()
    wall0 = time.perf_counter()
    for data in payloads:
        capture.emit("tool_call", phase=phase, name="search_orders", data=data,
                     session_id="bench", trace_id=trace, parent_span_id=parent)
    return time.thread_time() - thread0, time.perf_counter() - wall0


def bench_capture(tmp: Path, n: int) -> dict[str, float]:
    """Caller-thread cost of emit() (writer parked, and writer running) and the
    end-to-end CPU per ~1 KB event (capture + redaction + encode + hash + SQLite)."""
    big = [one_kb_data(i) for i in range(n)]
    small = [{"tool_name": "t", "parameters": {"q": "x"}, "status": "pending"}] * n
    out: dict[str, float] = {}
    # Parked rounds of 10,000 events (median of 7): an agent's queue stays short, and
    # letting 100,000 events pile up would mostly measure the garbage collector.
    chunk = min(n, 10_000)
    for label, payloads in (("small", small), ("1kb", big)):
        rounds = []
        for k in range(7):
            gated = GatedStore(open_store(f"sqlite:///{tmp / f'gated-{label}-{k}.db'}"))
            tracevault.configure(store=gated, queue_size=chunk + 10)
            cpu, _ = _emit_loop(payloads[:chunk], "start")
            rounds.append(cpu / chunk * 1e6)
            gated.gate.set()
            assert tracevault.flush(600)
            tracevault.shutdown()
        out[f"capture_us_per_event_{label}_writer_parked"] = statistics.median(rounds)

    tracevault.configure(store=f"sqlite:///{tmp / 'capture.db'}", queue_size=n + 10)
    _emit_loop(big[:1000], "end")  # warm up: imports, first connection
    assert tracevault.flush(60)
    cpu0 = time.process_time()
    caller_cpu, caller_wall = _emit_loop(big, "end")
    assert tracevault.flush(600)
    total_cpu = time.process_time() - cpu0
    tracevault.shutdown()
    out["capture_us_per_event_1kb_writer_running_thread_cpu"] = caller_cpu / n * 1e6
    out["capture_us_per_event_1kb_writer_running_wall"] = caller_wall / n * 1e6
    out["end_to_end_cpu_us_per_event_1kb"] = total_cpu / n * 1e6
    return out


def make_events(n: int, sessions: int, start: int = 0) -> list[AuditEvent]:
    """``n`` ~1 KB events (numbered from ``start``) over ``sessions`` sessions, runs of
    20 events."""
    now = datetime.now(timezone.utc)
    out = []
    for i in range(start, start + n):
        run = i // 20
        out.append(
            AuditEvent(
                event_id=uuid7(),
                timestamp=now,
                kind="tool_call",
                phase="end" if i % 2 else "start",
                name="search_orders",
                session_id=f"session-{run % sessions}",
                user_id=f"user-{run % 97}",
                trace_id=f"trace-{run}",
                span_id=f"span-{i // 2}",
                data=one_kb_data(i),
            )
        )
    return out


def bench_append_verify(tmp: Path, n: int) -> dict[str, float]:
    store = open_store(f"sqlite:///{tmp / 'append.db'}")
    events = make_events(n, 1000)
    t0 = time.perf_counter()
    for start in range(0, n, 2000):
        store.append(events[start : start + 2000])
    append_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = store.verify()
    verify_s = time.perf_counter() - t0
    assert report.ok and report.checked == n
    # A fifth of the sessions erased one request at a time: each erased row is checked
    # against the erasure records.
    for k in range(0, 1000, 5):
        store.erase(session_id=f"session-{k}", reason="benchmark")
    t0 = time.perf_counter()
    report = store.verify()
    erased_s = time.perf_counter() - t0
    assert report.ok and report.erasures == 200
    store.close()
    return {"append_events_per_s": n / append_s, "verify_events_per_s": n / verify_s,
            "verify_events_per_s_fifth_erased_200_records": report.checked / erased_s}


def bench_show(tmp: Path, n: int) -> dict[str, float]:
    """`show` of one session (query + tree + render) in a store of ``n`` events."""
    path = tmp / "big.db"
    store = open_store(f"sqlite:///{path}?synchronous=normal")
    sessions = max(1, n // 100)
    for start in range(0, n, 20_000):
        store.append(make_events(min(20_000, n - start), sessions, start))
    count = store.count()
    store.close()
    store = open_store(f"sqlite:///{path}", create=False)
    timings = []
    for k in range(25):
        sid = f"session-{(k * 7919) % sessions}"
        t0 = time.perf_counter()
        events = list(store.events(session_id=sid))
        text = render_tree(build_runs(events))
        timings.append((time.perf_counter() - t0) * 1000)
        assert events and text
    t0 = time.perf_counter()
    store.sessions(limit=20)
    sessions_ms = (time.perf_counter() - t0) * 1000
    store.close()
    return {
        "store_events": count,
        "show_ms_median": statistics.median(timings),
        "show_ms_p95": sorted(timings)[int(0.95 * len(timings)) - 1],
        "sessions_list_ms": sessions_ms,
        "events_per_session": len(events),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000, help="events for capture/append")
    parser.add_argument("--big", type=int, default=1_000_000, help="events in the `show` store")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results["capture"] = bench_capture(tmp, args.events)
        results["ledger"] = bench_append_verify(tmp, args.events)
        results["show"] = bench_show(tmp, args.big)
    write_results("core", results)
    for section, values in results.items():
        print(f"[{section}]")
        for key, value in values.items():
            shown = f"{value:,.2f}" if isinstance(value, float) else value
            print(f"  {key:45} {shown}")


if __name__ == "__main__":
    main()
