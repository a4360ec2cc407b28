"""Canaries: unique PII and secrets fed through the core API never reach the ledger files.

Every value is fresh (random, valid) so finding its bytes in the SQLite file or its WAL
can only mean it was written. Values go in through the user input, tool arguments,
tool results (also as a JSON string), logger and context metadata, tags, and an
exception message with its stack trace.
"""

from __future__ import annotations

import json
import random
import string
import uuid
from pathlib import Path

import pytest

import tracevault
from tracevault.redaction import Detector, Policy
from tracevault.testing import capture_events

rnd = random.Random()


def _luhn_complete(partial: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return partial + str((10 - total % 10) % 10)


def _digits(n: int) -> str:
    return "".join(rnd.choice(string.digits) for _ in range(n))


def _iban_de() -> str:
    bban = _digits(18)
    check = 98 - int("".join(str(int(c, 36)) for c in bban + "DE00")) % 97
    return f"DE{check:02d}{bban}"


def make_canaries() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    b62 = string.ascii_letters + string.digits
    area = f"{rnd.randint(2, 9)}{rnd.randint(2, 9)}{rnd.randint(0, 9)}"
    exchange = f"{rnd.randint(2, 9)}{rnd.randint(2, 9)}{rnd.randint(0, 9)}"
    return {
        "email": f"canary.{tag}@example.com",
        "email2": f"tool.{tag}@example.org",
        "email3": f"boom.{tag}@example.net",
        "card": _luhn_complete("4" + _digits(14)),
        "card2": _luhn_complete("5" + str(rnd.randint(1, 5)) + _digits(13)),
        "ssn": f"{rnd.randint(100, 599)}-{rnd.randint(10, 99)}-{rnd.randint(1000, 9999)}",
        "phone": f"{area}-{exchange}-{_digits(4)}",
        "iban": _iban_de(),
        "ip": f"198.51.{rnd.randint(1, 254)}.{rnd.randint(1, 254)}",
        "openai": "sk-proj-" + "".join(rnd.choice(b62) for _ in range(48)) + "7",
        "aws": "AKIA" + "".join(rnd.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)),
        "github": "ghp_" + "".join(rnd.choice(b62) for _ in range(36)),
        "db_password": "pw" + "".join(rnd.choice(b62) for _ in range(14)) + "!9",
        "field_password": "fp" + "".join(rnd.choice(b62) for _ in range(14)),
        "cookie": "sess=" + uuid.uuid4().hex,
    }


def ledger_bytes(directory: Path) -> bytes:
    """The raw bytes of the ledger database and its write-ahead log (if present)."""
    out = b""
    for name in ("ledger.db", "ledger.db-wal"):
        path = directory / name
        if path.exists():
            out += path.read_bytes()
    return out


def assert_absent(raw: bytes, canaries: dict[str, str]) -> None:
    leaked = [name for name, value in canaries.items() if value.encode() in raw]
    # numbers could also be stored without their separators
    leaked += [name for name in ("card", "card2", "ssn", "phone")
               if canaries[name].replace("-", "").encode() in raw]
    assert not leaked, f"canaries found in the ledger files: {leaked}"


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


@pytest.mark.parametrize("mode", ["default", "strict"])
def test_canaries_absent_under_each_policy(tmp_path: Path, mode: str) -> None:
    canaries = make_canaries()
    with capture_events(tmp_path, redact=mode) as cap:
        run_agent(canaries)
        cap.flush()
        assert_absent(ledger_bytes(tmp_path), canaries)
