"""The ledger writer in a child process (``writer="process"``): same ledger, nothing lost."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import tracevault
from tracevault import capture
from tracevault.pipeline import dead_letter_events
from tracevault.schema import AuditEvent
from tracevault.sidecar import SidecarStore
from tracevault.store import StoreError
from tracevault.store.sqlite import SQLiteStore
from tracevault.testing import Capture, capture_events


def _sidecar(cap: Capture) -> SidecarStore:
    store = cap.pipeline._store
    assert isinstance(store, SidecarStore)
    return store


def test_events_are_redacted_sealed_and_counted_by_the_child(tmp_path: Path) -> None:
    with capture_events(tmp_path, writer="process") as cap:
        log = tracevault.AuditLogger(session_id="s1")
        for i in range(200):
            log.log_event("contact", {"email": f"user{i}@example.com", "i": i})
        with log.tool_call("lookup", {"key": "sk-live-0123456789abcdef0123"}) as call:
            call.result = "ok"
        events = cap.events(session_id="s1")
        child = _sidecar(cap)._proc
        assert child is not None and child.pid != os.getpid()
        assert len(events) == 202
        assert [e.data["payload"]["i"] for e in events[:200]] == list(range(200))
        assert all(e.data["payload"]["email"] == "[EMAIL]" for e in events[:200])
        assert "sk-live" not in str(events[200].data)
        assert cap.store.verify().ok
        stats = tracevault.stats()
        assert stats is not None
        assert (stats.captured, stats.written, stats.pending, stats.filtered) == (202, 202, 0, 0)


def test_a_killed_child_is_restarted_and_nothing_is_lost_or_doubled(tmp_path: Path) -> None:
    with capture_events(tmp_path, writer="process") as cap:
        log = tracevault.AuditLogger(session_id="kill")
        log.log_event("before")
        cap.flush()
        first = _sidecar(cap)._proc
        assert first is not None
        first.kill()
        first.wait()
        for i in range(50):
            log.log_event("after", {"i": i})
        events = cap.events(session_id="kill")
        assert [e.name for e in events] == ["before"] + ["after"] * 50
        assert len({e.event_id for e in events}) == 51
        second = _sidecar(cap)._proc
        assert second is not None and second.pid != first.pid
        assert cap.store.verify().ok


def test_without_a_usable_child_the_ledger_is_written_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with capture_events(tmp_path, writer="process") as cap:
        log = tracevault.AuditLogger(session_id="fallback")
        log.log_event("contact", {"email": "ann@example.com"})
        with caplog.at_level(logging.ERROR, logger="tracevault"):
            events = cap.events(session_id="fallback")
        assert [e.data["payload"]["email"] for e in events] == ["[EMAIL]"]
        assert "writing in this process from now on" in caplog.text
        assert cap.store.verify().ok


def test_invalid_unicode_is_repaired_not_lost(tmp_path: Path) -> None:
    with capture_events(tmp_path, writer="process") as cap:
        tracevault.AuditLogger(session_id="u").log_event("odd", {"text": "a\ud800b"})
        events = cap.events(session_id="u")
        assert [e.data["payload"]["text"] for e in events] == ["a\ufffdb"]
        assert tracevault.stats() is not None and tracevault.stats().dead_lettered == 0  # type: ignore[union-attr]


def test_strict_mode_intents_are_durable_through_the_child(tmp_path: Path) -> None:
    with capture_events(tmp_path, writer="process", strict=True) as cap:
        log = tracevault.AuditLogger(session_id="strict")
        with log.tool_call("pay", {"amount": 3}) as call:
            # The intent is already in the ledger while the tool runs.
            assert [s.event.phase for s in cap.store.events(session_id="strict")] == ["start"]
            call.result = "paid"
        assert [e.phase for e in cap.events(session_id="strict")] == ["start", "end"]


def test_while_the_childs_store_fails_the_parent_says_why(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    pipeline = tracevault.configure(store=f"sqlite:///{ledger}", writer="process",
                                    strict=True, strict_timeout=6.0)
    try:
        for made in tmp_path.glob("ledger.db*"):
            made.unlink()
        os.mkdir(ledger)  # the child cannot open its ledger: it retries
        log = tracevault.AuditLogger(session_id="broken")
        with (pytest.raises(tracevault.DurabilityError, match="cannot open SQLite ledger"),
              log.tool_call("refund", {"amount": 5})):
            pass
        stats = pipeline.stats()
        assert stats.last_error is not None and "cannot open SQLite ledger" in stats.last_error
        assert stats.write_errors > 0
        os.rmdir(ledger)  # the store works again: the child writes what it holds
        assert pipeline.flush(60)
        assert pipeline.stats().last_error is None
    finally:
        pipeline.shutdown(timeout=60)
        capture.install(None, None)


def test_custom_middleware_or_a_store_object_keep_the_writer_in_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def tag(event: AuditEvent) -> AuditEvent:
        event.tags.append("seen")
        return event

    with (
        caplog.at_level(logging.WARNING, logger="tracevault"),
        capture_events(tmp_path, writer="process", middleware=[tag]) as cap,
    ):
        assert not isinstance(cap.pipeline._store, SidecarStore)
        tracevault.AuditLogger(session_id="m").log_event("x")
        assert cap.events(session_id="m")[0].tags == ["seen"]
    assert "custom middleware runs in this process" in caplog.text
    store = SQLiteStore(str(tmp_path / "own.db"))
    with caplog.at_level(logging.WARNING, logger="tracevault"):
        pipeline = tracevault.configure(store=store, writer="process")
    assert pipeline._store is store
    assert "the store was given as an object, not a URL" in caplog.text
    tracevault.shutdown()
    store.close()


def test_the_writer_setting_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACEVAULT_STORE", f"sqlite:///{tmp_path / 'env.db'}")
    monkeypatch.setenv("TRACEVAULT_WRITER", "process")
    capture.reset()
    tracevault.AuditLogger(session_id="env").log_event("x")
    pipeline = capture.current_pipeline()
    assert pipeline is not None and isinstance(pipeline._store, SidecarStore)
    assert tracevault.flush(60)
    monkeypatch.setenv("TRACEVAULT_WRITER", "fork")
    with pytest.raises(ValueError, match="TRACEVAULT_WRITER='fork' is not one of thread, process"):
        tracevault.configure()


def test_what_cannot_be_written_is_dead_lettered_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No child can start and the ledger's directory disappears: at shutdown the parent
    # dead-letters the batch it holds, which the child never redacted.
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    ledger_dir = tmp_path / "gone"
    ledger_dir.mkdir()
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    tracevault.configure(store=f"sqlite:///{ledger_dir / 'l.db'}", writer="process")
    (ledger_dir / "l.db").unlink()
    ledger_dir.rmdir()
    log = tracevault.AuditLogger(session_id="dl")
    for i in range(5):
        log.log_event("contact", {"email": f"ann{i}@example.com"})
    stats = tracevault.shutdown(timeout=1.0)
    assert stats is not None and stats.dead_lettered == 5
    [dead] = list(workdir.glob("tracevault-dead-letter-*.jsonl"))
    events = dead_letter_events(str(dead))
    assert [e.data["payload"]["email"] for e in events] == ["[EMAIL]"] * 5
    assert "example.com" not in dead.read_text()


def test_the_child_exits_when_its_parent_does(tmp_path: Path) -> None:
    # A parent that ends without shutting down (os._exit skips atexit) must not leave a
    # writer process behind; what it flushed is in the ledger.
    url = f"sqlite:///{tmp_path / 'l.db'}"
    script = (
        "import os, tracevault\n"
        f"p = tracevault.configure(store={url!r}, writer='process')\n"
        "log = tracevault.AuditLogger(session_id='orphan')\n"
        "for i in range(10):\n"
        "    log.log_event('e', {'i': i})\n"
        "assert tracevault.flush(60)\n"
        "print(p._store._proc.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    child = int(done.stdout.strip())
    deadline = time.monotonic() + 60
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for the child to go, not measuring anything
    assert not _alive(child)
    store = SQLiteStore(str(tmp_path / "l.db"))
    try:
        assert len(list(store.events(session_id="orphan"))) == 10
        assert store.verify().ok
    finally:
        store.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_a_failed_in_process_append_is_retried_and_stored_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In fallback mode the store redacts; when its append fails the pipeline retries the
    # same events: one stored event, redacted, its redactions counted once.
    import tracevault.sidecar as sidecar

    class FlakyOnce:
        def __init__(self, store: Any) -> None:
            self.store, self.url, self.failed = store, store.url, False

        def append(self, events: Any) -> int:
            if not self.failed:
                self.failed = True
                raise StoreError("disk busy")
            return int(self.store.append(events))

        def close(self) -> None:
            self.store.close()

    real_open = sidecar.open_store
    monkeypatch.setattr(sidecar, "open_store", lambda url: FlakyOnce(real_open(url)))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with capture_events(tmp_path, writer="process") as cap:
        tracevault.AuditLogger(session_id="once").log_event("c", {"email": "bo@example.com"})
        (event,) = cap.events(session_id="once")
        assert event.data["payload"]["email"] == "[EMAIL]"
        assert event.metadata["redactions"] == [
            {"path": "data.payload.email", "category": "EMAIL", "count": 1}]


def test_a_forked_child_writes_through_a_writer_process_of_its_own(tmp_path: Path) -> None:
    with capture_events(tmp_path, writer="process") as cap:
        tracevault.AuditLogger(session_id="parent").log_event("before fork")
        cap.flush()
        parent_writer = _sidecar(cap)._proc
        assert parent_writer is not None
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                tracevault.AuditLogger(session_id="child").log_event("in child")
                ok = tracevault.flush(30)
                pipeline = capture.current_pipeline()
                store = pipeline._store if pipeline is not None else None
                proc = store._proc if isinstance(store, SidecarStore) else None
                os.write(write, str(proc.pid if proc is not None else 0).encode())
                code = 0 if ok else 2
            finally:
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        child_writer = int(os.read(read, 64) or b"0")
        os.close(read)
        assert os.waitstatus_to_exitcode(status) == 0
        assert child_writer not in (0, parent_writer.pid, pid, os.getpid())
        assert [e.name for e in cap.events(session_id="child")] == ["in child"]
        assert cap.store.verify().ok


def test_a_failed_writer_process_does_not_show_the_database_password() -> None:
    from tracevault.config import Settings

    store = SidecarStore(Settings(store="postgresql://audit:Sup3rS3cret@127.0.0.1:1/db"), [])
    with pytest.raises(StoreError) as failed:
        store._failed([], "killed")
    assert "Sup3rS3cret" not in str(failed.value)
    assert "postgresql://audit:***@127.0.0.1:1/db" in str(failed.value)


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_the_child_runs_at_idle_priority_while_it_keeps_up() -> None:
    # In a process of its own: the priority is every thread's, this one's included.
    script = """
import os, threading
from tracevault.sidecar import _Priority
seen = []
def policies():
    seen.append(sorted({os.sched_getscheduler(t.native_id) for t in threading.enumerate()}))
worker = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True)
worker.start()
priority = _Priority(behind=100)
policies()
priority.keep_up(500)   # a batch that large: it has fallen behind
policies()
priority.keep_up(20)
policies()
print(seen)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    idle, normal = os.SCHED_IDLE, os.SCHED_OTHER
    assert out.strip() == str([[idle], [normal], [idle]])


def test_the_child_stays_at_normal_priority_if_it_could_not_return_to_it(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # An unprivileged process with RLIMIT_NICE 0 cannot leave SCHED_IDLE: a busy machine
    # could then starve the child for good.
    import resource

    from tracevault import sidecar

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (0, 0))
    assert not sidecar._can_return()
    monkeypatch.setattr(resource, "getrlimit", lambda which: (20, 20))
    assert sidecar._can_return()
    monkeypatch.setattr(resource, "getrlimit", lambda which: (0, 0))
    calls: list[object] = []
    monkeypatch.setattr(os, "sched_setscheduler", lambda *a: calls.append(a))
    sidecar._Priority(behind=10).keep_up(1)
    assert calls == []
