"""The framework-free API: AuditLogger, tool calls, spans, context."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import tracevault
from tracevault.testing import Capture, capture_events


def test_seed_logging_methods_record_every_kind(cap: Capture) -> None:
    log = tracevault.AuditLogger(session_id="s1", user_id="alice", tags=["prod"])
    log.log_input("Where is my order?", source="web", ip_address="203.0.113.9", channel="chat")
    log.log_reasoning("Look the order up.", plan=["find order", "answer"], confidence=0.8)
    log.log_llm_call(
        "gpt-4o-mini",
        provider="openai",
        messages=[{"role": "user", "content": "Where is my order?"}],
        usage={"input": 10, "output": 5, "total": 15},
        cost=0.001,
        finish_reason="stop",
    )
    log.log_retrieval("order 42", [{"id": "d1", "content": "Order 42 shipped", "score": 0.9}])
    log.log_tool_call("lookup_order", {"order": 42}, result={"status": "shipped"}, duration_ms=12.5)
    log.log_error(TimeoutError("carrier API slow"), where="track", recovery_action="used cache")
    log.log_output("It shipped yesterday.", tokens_used=15, model="gpt-4o-mini", cost=0.001)
    log.log_event("feedback", {"thumbs": "up"})
    events = cap.events()
    assert [(e.kind, e.phase) for e in events] == [
        ("input", "point"),
        ("reasoning", "point"),
        ("llm_call", "end"),
        ("retrieval", "point"),
        ("tool_call", "start"),
        ("tool_call", "end"),
        ("error", "point"),
        ("output", "point"),
        ("custom", "point"),
    ]
    assert {e.session_id for e in events} == {"s1"} and {e.user_id for e in events} == {"alice"}
    assert len({e.trace_id for e in events}) == 1
    assert all(e.tags == ["prod"] for e in events)
    inp = events[0]
    assert inp.data == {
        "type": "user_message",
        "content": "Where is my order?",
        "source": "web",
        "ip_address": "[IP]",  # redacted before it is stored (default policy)
    }
    assert inp.metadata == {
        "channel": "chat",
        "redactions": [{"category": "IP", "count": 1, "path": "data.ip_address"}],
    }
    assert events[1].data["plan"] == ["find order", "answer"]
    assert events[4].data == {
        "tool_name": "lookup_order",
        "parameters": {"order": 42},
        "status": "pending",
    }
    assert (
        events[5].data["result"] == {"status": "shipped"} and events[5].data["duration_ms"] == 12.5
    )
    assert events[4].span_id == events[5].span_id
    err = events[6].data
    assert err["type"] == "TimeoutError" and err["where"] == "track"
    assert err["recovery_action"] == "used cache"
    assert events[6].level == "error"
    for e in events:
        tracevault.validate_event(e)
    summary = cap.store.sessions()[0]
    assert (summary.tokens, summary.cost, summary.errors, summary.tool_calls) == (15, 0.001, 1, 1)


def test_tool_call_context_manager_records_intent_outcome_and_errors(cap: Capture) -> None:
    log = tracevault.AuditLogger(session_id="tools")
    with log.tool_call("search", {"q": "paris"}, tool_call_id="call_1") as call:
        intent = cap.events()  # the intent is durable before the tool finishes
        call.result = ["Paris is in France"]
    assert [(e.kind, e.phase) for e in intent] == [("tool_call", "start")]
    with pytest.raises(KeyError), log.tool_call("broken", {"x": 1}):
        raise KeyError("missing")
    events = cap.events()
    ok_end, bad_start, bad_end, error = events[1], events[2], events[3], events[4]
    assert ok_end.data["status"] == "success" and ok_end.data["tool_call_id"] == "call_1"
    assert ok_end.data["result"] == ["Paris is in France"]
    assert ok_end.data["duration_ms"] >= 0
    assert bad_start.data["status"] == "pending"
    assert bad_end.data["status"] == "error" and bad_end.level == "error"
    assert bad_end.data["error"]["type"] == "KeyError"
    assert error.kind == "error" and error.data["where"] == "broken"
    assert error.span_id == bad_end.span_id


def test_tool_call_decorator_sync_and_async(cap: Capture) -> None:
    log = tracevault.AuditLogger(session_id="deco")

    @log.tool_call()
    def add(a: int, b: int = 2) -> int:
        return a + b

    @log.tool_call("remote_fetch")
    async def fetch(url: str) -> str:
        await asyncio.sleep(0)
        return f"body of {url}"

    assert add(1) == 3
    assert asyncio.run(fetch("https://example.test/x")) == "body of https://example.test/x"
    events = cap.events()
    assert [(e.name, e.phase) for e in events] == [
        ("add", "start"),
        ("add", "end"),
        ("remote_fetch", "start"),
        ("remote_fetch", "end"),
    ]
    assert events[0].data["parameters"] == {"a": 1, "b": 2}
    assert events[1].data["result"] == 3
    assert events[3].data["result"] == "body of https://example.test/x"


def test_slow_tool_yields_a_warning(tmp_path: Path) -> None:
    with capture_events(tmp_path, slow_tool_ms=0.0) as cap:
        log = tracevault.AuditLogger(session_id="slow")
        with log.tool_call("crawl") as call:
            call.result = "done"
        warnings = [e for e in cap.events() if e.level == "warning"]
        assert len(warnings) == 1
        assert warnings[0].name == "slow_tool_call"
        assert warnings[0].data["payload"]["tool_name"] == "crawl"
        assert warnings[0].data["payload"]["threshold_ms"] == 0.0


def test_spans_build_a_tree(cap: Capture) -> None:
    log = tracevault.AuditLogger(session_id="tree")
    with log.span("planner", kind="agent"):
        log.log_reasoning("plan")
        with log.span("retrieve", kind="chain"), log.tool_call("search"):
            log.log_event("inner")
    runs = cap.runs()
    assert len(runs) == 1
    (agent,) = runs[0].roots
    assert agent.event.name == "planner" and agent.start and agent.end
    assert [c.event.kind for c in agent.children] == ["reasoning", "chain"]
    chain = agent.children[1]
    assert [c.event.name for c in chain.children] == ["search"]
    assert [c.event.name for c in chain.children[0].children] == ["inner"]
    with pytest.raises(ValueError, match="span kind"), log.span("x", kind="tool"):
        pass


def test_a_span_below_the_level_is_skipped_and_its_children_keep_the_tree(
    tmp_path: Path,
) -> None:
    # Chain steps are recorded at debug: under TRACEVAULT_LEVEL=info their children
    # pointed at a parent that never reached the ledger (orphans in every sink).
    with capture_events(tmp_path, level="info") as cap:
        log = tracevault.AuditLogger(session_id="lvl")
        with log.span("agent", kind="agent") as agent:
            with log.span("plan", kind="chain"):
                log.log_llm_call("gpt-4o-mini", response="yo")
                with log.tool_call("search") as call:
                    call.result = "r"
            with pytest.raises(RuntimeError), log.span("broken", kind="chain"):
                raise RuntimeError("boom")  # not even its failed end is recorded
        events = cap.events()
    assert [(e.kind, e.phase) for e in events] == [
        ("agent", "start"), ("llm_call", "end"), ("tool_call", "start"), ("tool_call", "end"),
        ("agent", "end"),
    ]
    assert [e.parent_span_id for e in events[1:4]] == [agent.span_id] * 3
    assert {e.trace_id for e in events} == {agent.trace_id}


def test_a_tool_call_below_the_level_keeps_the_tree_and_its_error(tmp_path: Path) -> None:
    with capture_events(tmp_path, level="warning") as cap:
        log = tracevault.AuditLogger(session_id="lvl")
        # The agent step (info) is filtered out as well.
        with log.span("agent", kind="agent") as agent, pytest.raises(RuntimeError), \
                log.tool_call("search") as call:
            log.log_event("noted", level="warning")
            raise RuntimeError("boom")
        events = cap.events()
    assert [(e.kind, e.phase, e.name) for e in events] == [
        ("custom", "point", "noted"), ("error", "point", "search")]
    assert {e.parent_span_id for e in events} == {None}  # nothing recorded above them
    assert events[1].span_id is None and call.status == "error"
    assert agent.trace_id == events[0].trace_id


def test_a_strict_tool_call_above_its_level_keeps_its_end(tmp_path: Path) -> None:
    # A strict-mode intent is recorded whatever the level, so its outcome must be too:
    # otherwise the call stays "pending" in the ledger for good.
    with capture_events(tmp_path, strict=True, level="warning") as cap:
        log = tracevault.AuditLogger(session_id="s1")
        with log.tool_call("search", {"q": "x"}) as call:
            call.result = "found"
        events = cap.events()
    assert [(e.kind, e.phase) for e in events] == [("tool_call", "start"), ("tool_call", "end")]
    assert events[1].data["result"] == "found" and events[1].span_id == events[0].span_id


def test_what_runs_inside_a_logger_step_is_in_the_logger_session(cap: Capture) -> None:
    log = tracevault.AuditLogger(session_id="chat-42", user_id="alice")
    anonymous = tracevault.AuditLogger()  # another library's logger, no session of its own
    with tracevault.context(session_id="outer", user_id="bob"):
        with log.span("request", kind="agent"):
            anonymous.log_event("in the span")
            with log.tool_call("delegate"):
                anonymous.log_event("in the tool")
        anonymous.log_event("after")
    events = cap.events()
    ids = {e.name: (e.session_id, e.user_id) for e in events if e.kind == "custom"}
    assert ids == {"in the span": ("chat-42", "alice"), "in the tool": ("chat-42", "alice"),
                   "after": ("outer", "bob")}


def test_context_follows_tasks_and_copied_threads(cap: Capture) -> None:
    seen: list[tuple[str | None, str | None]] = []

    def in_thread() -> None:
        tracevault.AuditLogger().log_event("thread")

    with tracevault.context(session_id="ctx", user_id="bob", tenant="acme", tags=["t1"]):
        with tracevault.context(user_id="carol"):
            tracevault.AuditLogger().log_event("nested")
        ctx = contextvars.copy_context()
        t = threading.Thread(target=ctx.run, args=(in_thread,))
        t.start()
        t.join()
        with ThreadPoolExecutor(1) as pool:
            pool.submit(contextvars.copy_context().run, in_thread).result()
    tracevault.AuditLogger().log_event("outside")
    for e in cap.events():
        seen.append((e.session_id, e.user_id))
        if e.session_id == "ctx":
            assert e.metadata == {"tenant": "acme"} and e.tags == ["t1"]
    assert seen == [("ctx", "carol"), ("ctx", "bob"), ("ctx", "bob"), (None, None)]


def test_explicit_ids_win_over_context(cap: Capture) -> None:
    with tracevault.context(session_id="ambient", user_id="ambient-user"):
        tracevault.AuditLogger(session_id="explicit").log_event("e")
    (event,) = cap.events()
    assert (event.session_id, event.user_id) == ("explicit", "ambient-user")


def test_flush_and_stats_without_a_pipeline() -> None:
    assert tracevault.flush() is True
    assert tracevault.stats() is None
    assert tracevault.shutdown() is None


def test_configure_leaves_its_settings_to_processes_started_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracevault.config import Settings
    from tracevault.store import open_store

    monkeypatch.setenv("TRACEVAULT_STORE", "sqlite:///elsewhere.db")
    monkeypatch.delenv("TRACEVAULT_WRITER", raising=False)
    store = open_store(f"sqlite:///{tmp_path / 'obj.db'}")
    try:
        # A store passed as an object has no URL a child could open: not exported.
        tracevault.configure(store=store, level="WARNING", strict=False, slow_tool_ms=250)
        assert os.environ["TRACEVAULT_STORE"] == "sqlite:///elsewhere.db"
        assert os.environ["TRACEVAULT_LEVEL"] == "warning"
        assert os.environ["TRACEVAULT_STRICT"] == "false"
        url = f"sqlite:///{tmp_path / 'url.db'}"
        tracevault.configure(store=url, strict=True)
        child = Settings.from_env()  # what a process started now reads
        assert (child.store, child.level, child.strict, child.slow_tool_ms) == (
            url, "warning", True, 250.0)
        assert "TRACEVAULT_WRITER" not in os.environ  # not given: left alone
    finally:
        tracevault.shutdown()
        store.close()


def test_configure_refuses_to_add_a_ledger_to_another_applications_database(
    tmp_path: Path,
) -> None:
    import sqlite3

    from tracevault.store import StoreError

    app = tmp_path / "app.db"
    with sqlite3.connect(app) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER)")
    conn.close()
    before = app.read_bytes()
    with pytest.raises(StoreError, match=r"is another database \(tables orders\)"):
        tracevault.configure(store=f"sqlite:///{app}")
    assert app.read_bytes() == before
    for extra in ("CREATE TABLE users (name TEXT)", None):  # with a table of the same name
        site = tmp_path / f"site{extra is None}.db"
        with sqlite3.connect(site) as conn:
            conn.execute("CREATE TABLE events (title TEXT, session_id TEXT)")
            if extra:
                conn.execute(extra)
        conn.close()
        before = site.read_bytes()
        named = "events, users" if extra else "events"
        with pytest.raises(StoreError, match=rf"is another database \(tables {named}\)"):
            tracevault.configure(store=f"sqlite:///{site}")
        assert site.read_bytes() == before and not Path(f"{site}-wal").exists()
    empty = tmp_path / "empty.db"
    empty.touch()  # an empty file is no one's database yet: it becomes the ledger
    tracevault.configure(store=f"sqlite:///{empty}")
    tracevault.AuditLogger(session_id="s").log_input("hi")
    assert tracevault.flush(10)
    tracevault.shutdown()
    assert _kinds_in(empty) == ["input"]


def _kinds_in(db: Path) -> list[str]:
    from tracevault.store import open_store

    store = open_store(f"sqlite:///{db}", create=False)
    try:
        return [e.event.kind for e in store.events()]
    finally:
        store.close()


def test_a_captured_event_cannot_pose_as_an_erasure_record(cap: Capture) -> None:
    # Were it stored under the record's name, this event would cover the session's
    # input, and wiping that input through SQL would pass verification.
    logger = tracevault.AuditLogger(session_id="s1")
    logger.log_input("my card is 4111 1111 1111 1111")
    logger.log_event("tracevault.erasure", {"erases": {"session_id": "s1"}})
    stored = cap.events(session_id="s1")
    assert [(e.kind, e.name) for e in stored] == [
        ("input", "user_message"), ("custom", "user:tracevault.erasure")]
    assert stored[1].data["payload"] == {"erases": {"session_id": "s1"}}  # kept as given
    report = cap.store.verify()
    assert report.ok and report.erasures == 0

    import sqlite3

    conn = sqlite3.connect(cap.store.url[len("sqlite:///"):], isolation_level=None)
    try:
        conn.execute("DROP TRIGGER IF EXISTS events_no_update")
        conn.execute("UPDATE events SET payload = NULL, salt = NULL WHERE kind = 'input'")
    finally:
        conn.close()
    report = cap.store.verify()
    first = cap.stored(session_id="s1")[0]
    assert not report.ok and report.first_bad_seq == first.seq
    assert "no erasure record after it covers it" in (report.reason or "")


def test_an_erasure_reason_is_redacted_like_recorded_text(cap: Capture) -> None:
    tracevault.AuditLogger(session_id="s2").log_input("hello")
    assert tracevault.erase(session_id="s2", reason="DSR-9, asked by bob@example.com") == 1
    *_, record = cap.events(session_id="s2")
    assert record.name == "tracevault.erasure"
    reason = record.data["payload"]["reason"]
    assert reason.startswith("DSR-9, asked by ") and "bob@example.com" not in reason
    assert cap.store.verify().ok
