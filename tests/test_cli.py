"""The `tracevault` command line, run as users run it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

import tracevault
from tracevault.cli import main, parse_when


def _cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEVAULT_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "tracevault.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_demo_creates_the_default_ledger_and_prints_the_session(tmp_path: Path) -> None:
    out = _cli("demo", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "tracevault.db").exists()
    assert "recorded session" in out.stdout
    session = out.stdout.split("recorded session ", 1)[1].split()[0]
    assert "tool" in out.stdout and "error" in out.stdout and "output" in out.stdout
    verify = _cli("verify", cwd=tmp_path)
    assert verify.returncode == 0 and verify.stdout.startswith("OK: ")
    listed = json.loads(_cli("sessions", "--json", cwd=tmp_path).stdout)
    assert [s["session_id"] for s in listed] == [session]
    assert listed[0]["tool_calls"] >= 2 and listed[0]["errors"] >= 1 and listed[0]["tokens"] > 0
    shown = json.loads(_cli("show", session, "--json", cwd=tmp_path).stdout)
    kinds = [e["kind"] for e in shown["events"]]
    for kind in ("input", "llm_call", "tool_call", "error", "output"):
        assert kind in kinds
    stats = json.loads(_cli("stats", "--json", cwd=tmp_path).stdout)
    assert stats["tools"] and stats["models"] and stats["days"]


def test_demo_json_prints_the_session_as_json_alone(tmp_path: Path) -> None:
    out = _cli("demo", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert "recorded session " + shown["session"]["session_id"] in out.stderr
    assert {"input", "tool_call", "output"} <= {e["kind"] for e in shown["events"]}


def test_store_flag_and_environment_select_the_ledger(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere.db"
    out = _cli("demo", "--store", f"sqlite:///{db}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert db.exists() and not (tmp_path / "tracevault.db").exists()
    env = {"TRACEVAULT_STORE": f"sqlite:///{db}"}
    assert json.loads(_cli("verify", "--json", cwd=tmp_path, env=env).stdout)["ok"] is True


def _seed(db: Path) -> None:
    tracevault.configure(store=f"sqlite:///{db}")
    for user, session in (("alice", "a-1"), ("alice", "a-2"), ("bob", "b-1")):
        log = tracevault.AuditLogger(session_id=session, user_id=user)
        log.log_input(f"hi from {user}")
        log.log_tool_call("search", {"q": session}, result="r", duration_ms=10.0)
        log.log_tool_call("search", {"q": session}, error=RuntimeError("down"), duration_ms=30.0)
    assert tracevault.flush(10)
    tracevault.shutdown()


def test_sessions_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.db"
    _seed(db)
    store = f"sqlite:///{db}"
    assert main(["sessions", "--store", store, "--user", "alice", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["session_id"] for r in rows) == ["a-1", "a-2"]
    assert main(["sessions", "--store", store, "--since", "2999-01-01", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["sessions", "--store", store, "--since", "1h", "--limit", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1
    assert main(["sessions", "--store", store]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:2] == ["SESSION", "USER"] and "b-1" in table
    assert main(["sessions", "--store", store, "--user", "carol"]) == 0
    assert capsys.readouterr().out.strip() == "no matching sessions"
    assert main(["sessions", "--store", store, "--since", "99999999d"]) == 2
    assert "too far back" in capsys.readouterr().err


def test_stats_tool_error_rate_and_p95(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.db"
    _seed(db)
    assert main(["stats", "--store", f"sqlite:///{db}", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    (search,) = stats["tools"]
    assert search["calls"] == 6 and search["errors"] == 3 and search["error_rate"] == 0.5
    assert search["avg_ms"] == 20.0 and search["p95_ms"] == 30.0
    (day,) = stats["days"]
    assert day["runs"] == 3 and day["failed_runs"] == 3 and day["errors"] == 3


def test_show_renders_a_readable_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.db"
    _seed(db)
    assert main(["show", "a-1", "--store", f"sqlite:///{db}", "--full"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("session a-1 · user alice")
    assert 'tool search({"q":"a-1"}) → r · ok · 10.0 ms' in out
    assert "✗ RuntimeError: down · FAILED · 30.0 ms" in out
    assert '"status": "pending"' in out  # --full prints payloads


def test_runs_without_a_session_are_listed_and_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "s.db"
    _seed(db)
    tracevault.configure(store=f"sqlite:///{db}")
    anonymous = [tracevault.AuditLogger(user_id="eve") for _ in range(2)]
    for i, log in enumerate(anonymous):
        log.log_input(f"anonymous {i}")
    assert tracevault.flush(10)
    tracevault.shutdown()
    store = f"sqlite:///{db}"
    assert main(["sessions", "--store", store, "--json"]) == 0
    rows = {r["session_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"a-1", "a-2", "b-1", None}
    assert (rows[None]["runs"], rows[None]["events"]) == (2, 2)
    assert main(["sessions", "--store", store]) == 0
    assert "(no session)" in capsys.readouterr().out
    assert main(["show", "--no-session", "--store", store]) == 0
    out = capsys.readouterr().out
    assert out.startswith("session (no session) · user eve · ")
    assert "anonymous 0" in out and "anonymous 1" in out and "hi from" not in out
    assert main(["show", "--trace", anonymous[1].trace_id, "--store", store, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["events"]
    assert [e["data"]["content"] for e in shown] == ["anonymous 1"]
    for wrong in (["show"], ["show", "a-1", "--no-session"], ["show", "--trace", "nope"]):
        assert main([*wrong, "--store", store]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err


def test_errors_are_one_line_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sessions", "--store", f"sqlite:///{tmp_path / 'none.db'}"]) == 2
    assert "no tracevault ledger at" in capsys.readouterr().err
    db = tmp_path / "s.db"
    _seed(db)
    assert main(["show", "nope", "--store", f"sqlite:///{db}"]) == 2
    assert "no session 'nope'" in capsys.readouterr().err
    assert main(["sessions", "--store", f"sqlite:///{db}", "--since", "yesterday-ish"]) == 2
    assert "cannot read time" in capsys.readouterr().err
    for limit in ("0", "-1"):
        assert main(["sessions", "--store", f"sqlite:///{db}", "--limit", limit]) == 2
        assert f"--limit must be at least 1 (got {limit})" in capsys.readouterr().err
    (tmp_path / "junk.db").write_text("junk" * 1000)
    assert main(["verify", "--store", f"sqlite:///{tmp_path / 'junk.db'}"]) == 2
    err = capsys.readouterr().err
    assert "corrupt or not a tracevault ledger" in err and "Traceback" not in err



@pytest.mark.parametrize("command", ["verify", "sessions", "stats"])
def test_reading_another_file_neither_changes_it_nor_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    import sqlite3

    app = tmp_path / "app.db"
    with sqlite3.connect(app) as conn:
        conn.execute("CREATE TABLE customers (name TEXT)")
    conn.close()
    empty = tmp_path / "empty.db"
    empty.touch()
    for path in (app, empty):
        before = path.read_bytes()
        assert main([command, "--store", f"sqlite:///{path}"]) == 2
        assert "is not a tracevault ledger" in capsys.readouterr().err
        assert path.read_bytes() == before
        assert not Path(f"{path}-wal").exists()


@contextmanager
def _unwritable(db: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make a ledger and its directory unwritable for this process: chmod, or for root
    (whom permissions do not stop) the immutable attribute; where the file system has
    none, this process is told so by ``os.access``, as it would be."""
    paths = [str(db), str(db.parent)]
    if os.geteuid() != 0:
        db.chmod(0o444), db.parent.chmod(0o555)
        undo = ["chmod", "u+w", *paths]
    elif subprocess.run(["chattr", "+i", *paths], capture_output=True).returncode == 0:
        undo = ["chattr", "-i", *paths]
    else:
        real = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode, **kw: real(p, mode, **kw) and not (
                mode & os.W_OK and str(p) in paths)
        )
        undo = ["true"]
    try:
        yield
    finally:
        subprocess.run(undo, check=True)


def test_a_ledger_that_cannot_be_written_is_still_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "archive" / "audit.db"
    db.parent.mkdir()
    _seed(db)
    assert not Path(f"{db}-wal").exists()  # the last writer closed: the file is all there is
    before = db.read_bytes()
    store = f"sqlite:///{db}"
    with _unwritable(db, monkeypatch):
        assert main(["verify", "--store", store]) == 0
        assert capsys.readouterr().out.startswith("OK: ")
        assert main(["sessions", "--store", store, "--json"]) == 0
        sessions = json.loads(capsys.readouterr().out)
        assert {s["session_id"] for s in sessions} == {"a-1", "a-2", "b-1"}
        assert main(["show", "b-1", "--store", store]) == 0
        assert "hi from bob" in capsys.readouterr().out
        assert main(["stats", "--store", store]) == 0
        capsys.readouterr()
        assert main(["erase", "--store", store, "--session", "b-1", "--yes"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "nothing was erased" in err
    assert db.read_bytes() == before and sorted(p.name for p in db.parent.iterdir()) == [db.name]


def test_schema_prints_a_json_schema_with_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    kinds = [b["if"]["properties"]["kind"]["const"] for b in schema["allOf"]]
    assert kinds == list(tracevault.schema.KINDS)
    assert set(schema["properties"]) >= {
        "event_id",
        "timestamp",
        "schema_version",
        "session_id",
        "user_id",
        "trace_id",
        "span_id",
        "parent_span_id",
        "kind",
        "phase",
        "level",
        "name",
        "framework",
        "tags",
        "metadata",
        "data",
    }
    assert "usage" in schema["$defs"]["LLMCallData"]["properties"]


def test_parse_when_accepts_dates_times_and_relative() -> None:
    assert parse_when("2026-11-27").isoformat() == "2026-11-27T00:00:00+00:00"
    assert parse_when("2026-11-27T10:00:00Z").hour == 10
    assert parse_when("7d") < parse_when("1h")


def test_show_renders_unusual_payload_shapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tracevault.configure(store=f"sqlite:///{tmp_path / 'odd.db'}")
    log = tracevault.AuditLogger(session_id="odd")
    log.emit("tool_call", {"status": "error", "error": "boom"}, phase="end", name="t")
    log.emit("llm_call", {"usage": 42, "tool_calls": "not a list"}, phase="end", name="m")
    log.emit("custom", ["not", "a", "dict"])
    assert tracevault.flush(10)
    tracevault.shutdown()
    assert main(["show", "odd", "--store", f"sqlite:///{tmp_path / 'odd.db'}"]) == 0
    out = capsys.readouterr().out
    assert "✗ error: boom" in out and '"value":["not","a","dict"]' in out


def test_store_urls_in_messages_hide_their_password() -> None:
    from tracevault.store import shown_url

    assert shown_url("postgresql://audit:p%40ss@db.example:5432/ledger?schema=a") == (
        "postgresql://audit:***@db.example:5432/ledger?schema=a")
    assert shown_url("postgresql://:pw@db/ledger") == "postgresql://:***@db/ledger"
    for plain in ("sqlite:///tracevault.db", "postgresql://audit@db/ledger", "ledger.db"):
        assert shown_url(plain) == plain


def test_erase_found_records_what_was_erased_without_a_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "t.db"
    _seed(db)
    store = ["--store", f"sqlite:///{db}"]
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("UPDATE events SET payload = NULL, salt = NULL WHERE seq IN (2, 3)")
    assert main(["verify", *store]) == 1
    assert "row 2 was erased, but no erasure record" in capsys.readouterr().out
    assert main(["erase", *store, "--found", "--session", "a-1", "--yes"]) == 2
    assert "takes no --session" in capsys.readouterr().err
    assert main(["erase", *store, "--found"]) == 2
    assert "add --yes" in capsys.readouterr().err
    assert main(["erase", *store, "--found", "--yes", "--reason", "upgrade"]) == 0
    assert capsys.readouterr().out.startswith("found 2 erased events no erasure record "
                                              "covered (#2..#3)")
    assert main(["verify", *store]) == 0
    assert "2 erased payloads (recorded by 1 erasure event)" in capsys.readouterr().out
    assert main(["erase", *store, "--found", "--yes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["found"] == 0


def test_erase_needs_a_filter_and_yes_then_clears_content_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "t.db"
    _seed(db)
    store = ["--store", f"sqlite:///{db}"]
    assert main(["erase", *store, "--yes"]) == 2
    assert "choose what to erase" in capsys.readouterr().err
    assert main(["erase", *store, "--user", "alice"]) == 2
    assert "add --yes" in capsys.readouterr().err
    assert main(["erase", *store, "--user", "alice", "--session", "a-2", "--yes",
                 "--reason", "DSR-17 from alice@example.com"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("erased the content of 6 events (session 'a-2', user 'alice')")
    assert "a tracevault.erasure event records it" in out
    assert main(["erase", *store, "--user", "alice", "--yes", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["erased"] == 6  # a-1: a-2 was erased before
    assert main(["show", "a-2", *store, "--json"]) == 0
    *erased, record = json.loads(capsys.readouterr().out)["events"]
    kept = {"erased", "status", "duration_ms", "tokens", "cost"}
    assert len(erased) == 6
    assert all(e["data"]["erased"] is True and set(e["data"]) <= kept for e in erased)
    # The session ends with the record of its erasure, which the later erasure of the
    # same user left alone.
    assert (record["kind"], record["name"]) == ("custom", "tracevault.erasure")
    assert record["data"]["payload"]["erases"] == {"session_id": "a-2", "user_id": "alice"}
    # The reason is redacted like any recorded text: the record is never erased.
    reason = record["data"]["payload"]["reason"]
    assert reason.startswith("DSR-17 from ") and "alice@example.com" not in reason
    assert record["data"]["payload"]["by"]["pid"] == os.getpid()
    assert main(["show", "a-2", *store]) == 0
    assert "tool_call search [payload erased] · error · 30.0 ms" in capsys.readouterr().out
    assert main(["show", "b-1", *store, "--full"]) == 0
    assert "hi from bob" in capsys.readouterr().out
    assert main(["verify", *store]) == 0
    assert "12 erased payloads (recorded by 2 erasure events)" in capsys.readouterr().out
    assert main(["erase", *store, "--before", "last tuesday", "--yes"]) == 2
    assert "cannot read time" in capsys.readouterr().err
    assert main(["erase", *store, "--before", "1d", "--yes"]) == 0  # recorded just now
    assert "erased the content of 0 events (recorded before " in capsys.readouterr().out
    assert main(["erase", *store, "--before", "2999-01-01", "--yes"]) == 2
    assert "before is in the future" in capsys.readouterr().err  # not "erase everything"
    assert main(["erase", *store, "--before", "0d", "--yes"]) == 0
    assert "erased the content of 6 events" in capsys.readouterr().out  # bob's session
