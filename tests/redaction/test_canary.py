"""Canaries: unique PII and secrets fed through the core API never reach the ledger files.

Every value is fresh (random, valid) so finding its bytes in the SQLite file or its WAL
can only mean it was written. Values go in through the user input, tool arguments,
tool results (also as a JSON string), logger and context metadata, tags, and an
exception message with its stack trace.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from redaction_canaries import assert_absent, ledger_bytes, make_canaries

import tracevault
from tracevault.redaction import Detector, Policy
from tracevault.testing import capture_events


def run_agent(c: dict[str, str]) -> None:
    """An agent run through the core API with canaries everywhere a value can go."""
    log = tracevault.AuditLogger(
        session_id="canary-session", user_id="user-1", tags=["canary", f"contact {c['email']}"],
        metadata={"client_ip": c["ip"], "auth_token": c["github"]},
    )
    with tracevault.context(request={"cookie": c["cookie"], "origin": c["ip"]}):
        log.log_input(f"Hi, I'm {c['email']}, card {c['card']}, call me at {c['phone']}",
                      ip_address=c["ip"])
        log.log_reasoning(f"The user gave SSN {c['ssn']}; look up IBAN {c['iban']}.")
        with log.tool_call("crm_lookup", {"email": c["email2"], "card": c["card2"],
                                          "password": c["field_password"]}) as call:
            call.result = {
                "record": json.dumps({"api_key": c["openai"], "ssn": c["ssn"]}),
                "dsn": f"postgresql://svc:{c['db_password']}@db.internal:5432/crm",
            }
        log.log_llm_call("gpt-4o-mini", messages=[{"role": "user", "content": c["openai"]}],
                         response=f"aws id {c['aws']}")
        try:
            with log.tool_call("charge", {"iban": c["iban"]}):
                raise ValueError(f"charge declined for {c['email3']} with key {c['aws']}")
        except ValueError as exc:
            log.log_error(exc, where="charge", recovery_action="asked the user")
        log.log_output(f"Done, {c['email']}.")


def test_no_canary_reaches_the_sqlite_file_or_its_wal(tmp_path: Path) -> None:
    canaries = make_canaries()
    with capture_events(tmp_path) as cap:
        run_agent(canaries)
        events = cap.events()
        assert len(events) >= 10
        assert_absent(ledger_bytes(tmp_path), canaries)  # WAL still open here
        redacted = [e for e in events if e.metadata.get("redactions")]
        categories = {r["category"] for e in redacted for r in e.metadata["redactions"]}
        assert categories == {"EMAIL", "CARD", "PHONE", "SSN", "IBAN", "IP", "SECRET"}
        assert cap.store.verify().ok
    assert_absent(ledger_bytes(tmp_path), canaries)  # and after the final checkpoint


def test_a_failing_redactor_withholds_the_payload(tmp_path: Path) -> None:
    canaries = make_canaries()

    def explode(text: str, match: object) -> bool:
        raise RuntimeError(f"detector crashed on {text}")  # quotes the data on purpose

    broken = Detector.pattern_of("broken", r"canary", validate=explode)
    with capture_events(tmp_path, redact=Policy(detectors=(broken,))) as cap:
        run_agent(canaries)
        events = cap.events()
        withheld = [e for e in events if e.data.get("withheld")]
        assert withheld, "events carrying the canary should have been withheld"
        for event in withheld:
            assert event.metadata == {}
            assert "RedactionError" in event.data["reason"]
        assert cap.pipeline.stats().withheld == len(withheld)
        assert_absent(ledger_bytes(tmp_path), canaries)


def test_a_failing_strict_redactor_withholds_the_ids_it_would_redact(tmp_path: Path) -> None:
    def explode(text: str, match: object) -> bool:
        raise RuntimeError("detector crashed")

    broken = Detector.pattern_of("broken", r"TRIGGER", validate=explode)
    with capture_events(tmp_path, redact=Policy(mode="strict", detectors=(broken,))) as cap:
        log = tracevault.AuditLogger(session_id="sess-of-ann.canary@example.org",
                                     user_id="ann.canary@example.org")
        log.log_input("hello")
        log.log_output("TRIGGER the broken detector")
        redacted, withheld = cap.events()
        assert (redacted.session_id, redacted.user_id) == ("[EMAIL]", "[EMAIL]")
        assert withheld.data["withheld"] is True
        assert (withheld.session_id, withheld.user_id) == ("[WITHHELD]", "[WITHHELD]")
        assert b"ann.canary@example.org" not in ledger_bytes(tmp_path)


@pytest.mark.parametrize("mode", ["default", "strict"])
def test_canaries_absent_under_each_policy(tmp_path: Path, mode: str) -> None:
    canaries = make_canaries()
    with capture_events(tmp_path, redact=mode) as cap:
        run_agent(canaries)
        cap.flush()
        assert_absent(ledger_bytes(tmp_path), canaries)
