"""What the benchmark scripts share: the machine description, the results folder, a
store that parks the ledger writer, a throwaway PostgreSQL server, and a local HTTP
server that stands in for a peer's collector.

The scripts run as ``python benchmarks/bench_x.py``, which puts this folder on
``sys.path``, so they import this module by its plain name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent


def machine() -> dict[str, Any]:
    """Describe the machine the figures come from."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def write_results(name: str, results: dict[str, Any]) -> Path:
    """Write ``results`` to ``results/<name>.json`` and return the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2))
    return path


class GatedStore:
    """Delegates to a real store, but appends wait until ``gate`` is set.

    Parking the writer this way measures what capture itself costs the caller's
    thread, without the writer competing for the GIL at the same moment.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.url = store.url
        self.gate = threading.Event()

    def append(self, events: Any) -> int:
        self.gate.wait()
        return int(self.store.append(events))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@contextlib.contextmanager
def postgres_server(url: str | None = None) -> Iterator[str]:
    """Yield an admin URL: ``url``, or that of a durable throwaway server (``fsync``
    and ``synchronous_commit`` on, as in production) started with the test suite's
    harness on a temporary directory and a free loopback port."""
    if url:
        yield url
        return
    spec = importlib.util.spec_from_file_location("pgharness", ROOT / "tests/store/conftest.py")
    assert spec and spec.loader
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    bindir = harness._bindir()
    if bindir is None:
        sys.exit("PostgreSQL is not installed (sh scripts/ensure-services.sh)")
    pg = harness.PostgresServer(
        bindir,
        settings={"fsync": "on", "synchronous_commit": "on", "shared_buffers": "256MB"},
    )
    try:
        pg.init()
        pg.start()
        yield pg.url("postgres")
    finally:
        pg.cleanup()


def new_database(admin_url: str, name: str) -> str:
    """Create an empty database ``name`` (dropping one of that name) on the server of
    ``admin_url``; return its URL."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}".encode())
        conn.execute(f"CREATE DATABASE {name}".encode())
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


class CountingSink(BaseHTTPRequestHandler):
    """Answers every request with ``{}`` and counts requests and bytes: a collector
    that costs the exporting process nothing but the HTTP round trip."""

    requests = 0
    received = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).requests += 1
        type(self).received += len(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def do_GET(self) -> None:
        self.do_POST()

    def log_message(self, *args: Any) -> None:
        return None


def local_sink() -> ThreadingHTTPServer:
    """Start a :class:`CountingSink` on a free loopback port, served by a daemon
    thread; the caller shuts it down."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), CountingSink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
