"""Dead-letter files: appends under the file's lock, and erasure reaching them."""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import tracevault
from tracevault import dead_letters
from tracevault.cli import main
from tracevault.ids import uuid7
from tracevault.ledger import encode_event
from tracevault.schema import AuditEvent
from tracevault.testing import Capture

NOW = datetime.now(timezone.utc)


def _event(session: str, kind: str = "tool_call", *, age_days: float = 0,
           name: str | None = "search", **data: Any) -> AuditEvent:
    return AuditEvent(event_id=uuid7(), timestamp=NOW - timedelta(days=age_days), kind=kind,
                      phase="end", name=name, session_id=session, user_id=f"user-{session}",
                      trace_id="t" * 32, tags=["prod"], metadata={"ip": "10.0.0.1"},
                      data=data or {"result": f"secret of {session}", "status": "ok",
                                    "duration_ms": 12.5})


def _write(path: Path, events: list[AuditEvent], extra: bytes = b"") -> None:
    dead_letters.append(path, [encode_event(e) + b"\n" for e in events])
    if extra:
        with open(path, "ab") as fh:
            fh.write(extra)


def test_erasure_clears_the_matching_events_as_the_ledger_does(tmp_path: Path) -> None:
    path = tmp_path / "tracevault-dead-letter-1.jsonl"
    mine = _event("a")
    _write(path, [mine, _event("b"), _event("b", age_days=40)], extra=b"not an event\n")
    untouched = path.read_bytes().splitlines()[1]

    assert dead_letters.erase([path], session_id="a") == 1
    lines = path.read_bytes().splitlines()
    assert lines[1] == untouched and lines[3] == b"not an event"  # byte for byte
    first = dead_letters._event_or_none(lines[0])
    assert first is not None
    assert (first.event_id, first.kind, first.name, first.session_id, first.trace_id) == (
        mine.event_id, "tool_call", "search", "a", mine.trace_id)
    assert first.data == {"erased": True, "status": "ok", "duration_ms": 12.5}
    assert first.metadata == {} and first.tags == []
    # Retention: everything older than a month, whichever session.
    assert dead_letters.erase([path], before=NOW - timedelta(days=30)) == 1
    again = [dead_letters._event_or_none(line) for line in path.read_bytes().splitlines()]
    assert [e.data.get("erased", False) for e in again[:3] if e] == [True, False, True]
    assert dead_letters.erase([path], session_id="nobody") == 0
    with pytest.raises(ValueError, match="needs a session"):
        dead_letters.erase([path])


def test_an_erasure_record_in_a_file_is_never_erased(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    record = _event("a", kind="custom", name="tracevault.erasure",
                    payload={"erases": {"session_id": "a"}})
    _write(path, [record])
    assert dead_letters.erase([path], session_id="a") == 0
    assert dead_letters.read(path)[0].data == record.data


def test_an_append_waiting_for_the_lock_follows_the_file_an_erasure_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "dead.jsonl"
    _write(path, [_event("a")])
    fcntl = dead_letters.fcntl
    assert fcntl is not None
    calls = []

    class ErasedWhileWaiting:
        LOCK_EX = fcntl.LOCK_EX

        @staticmethod
        def flock(fd: int, op: int) -> None:
            # The first time: an erasure replaces the file while the appender waits.
            calls.append(fd)
            if len(calls) == 1:
                fresh = tmp_path / "fresh"
                fresh.write_bytes(path.read_bytes())
                os.replace(fresh, path)
            fcntl.flock(fd, op)

    monkeypatch.setattr(dead_letters, "fcntl", ErasedWhileWaiting)
    late = _event("b")
    dead_letters.append(path, [encode_event(late) + b"\n"])
    assert len(calls) == 2  # it opened the file again
    assert [e.session_id for e in dead_letters.read(path)] == ["a", "b"]


def test_erase_reaches_dead_letter_files(cap: Capture, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    tracevault.AuditLogger(session_id="a").log_input("hello")
    spool = tmp_path / "spool"
    spool.mkdir()
    _write(spool / "tracevault-dead-letter-7.jsonl", [_event("a"), _event("b")])
    (spool / "unrelated.jsonl").write_bytes(encode_event(_event("a")) + b"\n")
    with pytest.raises(FileNotFoundError, match="no such dead-letter"):
        tracevault.erase(session_id="a", dead_letters=[tmp_path / "missing"])
    assert "erased" not in cap.events(session_id="a")[0].data  # refused before erasing
    assert tracevault.erase(session_id="a", dead_letters=[spool]) == 1  # the ledger's
    spooled = dead_letters.read(spool / "tracevault-dead-letter-7.jsonl")
    assert [e.data.get("erased", False) for e in spooled] == [True, False]
    assert dead_letters.read(spool / "unrelated.jsonl")[0].data.get("erased") is None
    # By default: the working directory.
    monkeypatch.chdir(spool)
    _write(spool / "tracevault-dead-letter-8.jsonl", [_event("c")])
    tracevault.erase(session_id="c")
    assert dead_letters.read(spool / "tracevault-dead-letter-8.jsonl")[0].data["erased"]


def test_cli_erase_reaches_dead_letter_files(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "t.db"
    tracevault.configure(store=f"sqlite:///{db}")
    tracevault.AuditLogger(session_id="a").log_input("hello")
    tracevault.shutdown()
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    spool = tmp_path / "spool"
    spool.mkdir()
    _write(spool / "tracevault-dead-letter-9.jsonl", [_event("a"), _event("a"), _event("b")])
    store = ["--store", f"sqlite:///{db}"]
    assert main(["erase", *store, "--session", "a", "--yes",
                 "--dead-letters", str(tmp_path / "nope")]) == 2
    assert "no such dead-letter file or directory" in capsys.readouterr().err
    assert main(["erase", *store, "--session", "a", "--yes",
                 "--dead-letters", str(spool)]) == 0
    out = capsys.readouterr().out
    assert "erased the content of 1 events (session 'a')" in out
    assert "erased the content of 2 events in 1 dead-letter files" in out
    assert main(["erase", *store, "--session", "b", "--yes", "--json",
                 "--dead-letters", str(spool / "tracevault-dead-letter-9.jsonl")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["erased"], report["dead_letters_erased"]) == (0, 1)
