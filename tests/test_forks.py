"""fork() while tracevault's threads work: the child never inherits half-done work."""

from __future__ import annotations

import os
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

import tracevault
from tracevault.forks import FORK_GATE

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")


def test_a_fork_waits_for_work_inside_the_gate() -> None:
    # A thread importing a module or inside an SQLite statement: the child would find
    # the work half done (a module half-initialised, its import lock held for ever).
    inside, release = threading.Event(), threading.Event()
    order: list[str] = []

    def work() -> None:
        with FORK_GATE, FORK_GATE:  # nested: only the outermost counts
            inside.set()
            release.wait(30)
            order.append("work done")

    def fork() -> None:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        order.append("forked")
        os.waitpid(pid, 0)

    worker = threading.Thread(target=work)
    worker.start()
    assert inside.wait(30)
    forker = threading.Thread(target=fork)
    forker.start()
    for _ in range(100_000):  # until the fork is waiting at the gate
        if FORK_GATE._forking:
            break
        forker.join(0.001)
    release.set()
    worker.join(30)
    forker.join(30)
    assert order == ["work done", "forked"]


def test_a_forked_child_does_not_wait_for_its_parents_forwarders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The child's first capture installed its pipeline and shut down the forwarder
    # group it inherited, waiting (5 s) for a boot thread that does not exist there.
    from tracevault.sinks import registry

    monkeypatch.setenv("TRACEVAULT_JSONL_DIR", str(tmp_path / "jsonl"))
    tracevault.configure(store=f"sqlite:///{tmp_path / 'fwd.db'}", sinks=["jsonl"])
    tracevault.AuditLogger(session_id="parent").log_event("before fork")
    parent_group = registry.active()
    assert parent_group is not None
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            inherited = registry.active()
            tracevault.AuditLogger(session_id="child").log_event("in child")
            code = 0 if inherited is None and tracevault.flush(30) else 2
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert tracevault.flush(30)


def test_a_fork_that_stops_waiting_leaves_busy_sqlite_connections_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A parent thread waits inside an SQLite call (another process holds the write lock)
    # longer than a fork is patient: the child inherits that connection with its mutex
    # held, and closing it there would hang the child for ever.
    import sqlite3
    import time

    from tracevault import forks
    from tracevault.schema import AuditEvent
    from tracevault.store.sqlite import SQLiteStore

    monkeypatch.setattr(forks, "_FORK_PATIENCE_S", 0.3)
    store = SQLiteStore(str(tmp_path / "busy.db"))
    event = AuditEvent(event_id="e-1", timestamp=datetime.now(timezone.utc), kind="custom",
                       name="x")
    store.append([event])
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the write lock, held by "another process"
    appender = threading.Thread(target=store.append, args=([
        AuditEvent(event_id="e-2", timestamp=event.timestamp, kind="custom", name="y")],))
    appender.start()
    deadline = time.monotonic() + 20
    while not forks.FORK_GATE._running and time.monotonic() < deadline:
        time.sleep(0.01)  # until the appender is inside the gate, in its busy wait
    pid = os.fork()
    if pid == 0:
        os._exit(0)  # reached only if the at-fork handlers returned
    deadline = time.monotonic() + 20
    status = None
    while status is None and time.monotonic() < deadline:
        done, code = os.waitpid(pid, os.WNOHANG)
        status = code if done else None
        time.sleep(0.05)
    if status is None:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    blocker.execute("COMMIT")
    blocker.close()
    appender.join(30)
    assert forks.FORK_GATE.busy_at_fork
    assert status is not None and os.waitstatus_to_exitcode(status) == 0, "the child hung"
    assert [e.event.event_id for e in store.events()] == ["e-1", "e-2"]
    store.close()
