"""The Redactor as middleware and as a function: what it walks, what it replaces, what it
records, and the policy knobs (categories off, allow-lists, field names, own detectors,
pseudonyms, TRACEVAULT_REDACT)."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

import tracevault
from tracevault import capture
from tracevault.redaction import Detector, Policy, RedactionError, Redactor
from tracevault.schema import AuditEvent
from tracevault.testing import capture_events

R = Redactor(Policy())


def event(**fields: Any) -> AuditEvent:
    return AuditEvent("e1", datetime.now(timezone.utc), fields.pop("kind", "custom"), **fields)


@pytest.mark.parametrize("text,expected", [
    ("mail bob.smith+tag@example.co.uk now", "mail [EMAIL] now"),
    ("call (415) 555-2671 or +44 20 7946 0958", "call [PHONE] or [PHONE]"),
    ("card 4111 1111 1111 1111, amex 3782-822463-10005", "card [CARD], amex [CARD]"),
    ("card 4111.1111.1111.1111 on file", "card [CARD] on file"),
    ("GET /?email=zed%2Ecanary%40example%2Eorg&x=1", "GET /?email=[EMAIL]&x=1"),
    ("ssn 536-90-4399", "ssn [SSN]"),
    ("iban GB29 NWBK 6016 1331 9268 19 for rent", "iban [IBAN] for rent"),
    ("from 203.0.113.7 and 2001:db8::8a2e:370:7334", "from [IP] and [IP]"),
    ("key AKIAIOSFODNN7EXAMPLE", "key [SECRET]"),
    ("key AKIANQYBMOZAQWLBSEXA", "key [SECRET]"),  # base32 ids may have no digit
    ("AWS_ACCESS_KEY_ID=AKIANQYBMOZAQWLBSEXA", "AWS_ACCESS_KEY_ID=[SECRET]"),
    ("export DB_PASS=hunter2hunter2", "export DB_PASS=[SECRET]"),
    ("postgres://app:hunter2@db:5432/x", "postgres://app:[SECRET]@db:5432/x"),
    ("Authorization: Bearer abcDEF1234567890ghiJKL", "Authorization: [SECRET]"),
    ("password=hunter2&user=bob", "password=[SECRET]&user=bob"),
    ("Cookie: sid=abc123; csrf=zz9\nHost: x", "Cookie: [SECRET]\nHost: x"),
    ("Authorization: Basic dXNlcjpwYXNz", "Authorization: [SECRET]"),
])
def test_each_category_gets_its_placeholder(text: str, expected: str) -> None:
    assert R.redact_text(text)[0] == expected


@pytest.mark.parametrize("text", [
    "order 4111111111111112 (Luhn fails)", "SSN 666-12-3456 is impossible",
    "build 4111.1111.1111.1111.5", "digits of pi 3141.5926.5358.9793",
    "IBAN DE88370400440532013000 has a bad check", "call 123-456-7890", "v1.2.3.4",
    "version 10.0.0.1", "uuid 550e8400-e29b-41d4-a716-446655440000",
    "at 2024-06-01T12:30:45.123456Z", "price $1,299.99",
    "sha 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",
    "loopback 127.0.0.1 and ::1", "pip install scikit-learn", "the bearer token expired",
    "bypass=on", "compass: north",
])
def test_look_alikes_survive(text: str) -> None:
    assert R.redact_text(text)[0] == text


def test_every_string_of_an_event_is_walked_and_recorded_without_values() -> None:
    ev = event(
        kind="tool_call", name="lookup bob@example.com",
        tags=["vip", "owner alice@example.com"],
        metadata={"client": {"ip": "203.0.113.9"}, "headers": {"Cookie": "sid=abc123"}},
        data={
            "parameters": {"deep": [[{"x": ["call 415-555-2671"]}]], "api_key": "k-123456"},
            "result": '{"card": "4111111111111111", "note": "ok"}',
            "error": {"message": "no user carol@example.org",
                      "stack_trace": 'File "a.py", line 1\nValueError: no user carol@example.org'},
            "amount": 4111111111111111,
        },
    )
    out = R(ev)
    assert out.name == "lookup [EMAIL]"
    assert out.tags == ["vip", "owner [EMAIL]"]
    assert out.metadata["client"] == {"ip": "[IP]"}
    assert out.metadata["headers"] == {"Cookie": "[SECRET]"}
    assert out.data["parameters"] == {"deep": [[{"x": ["call [PHONE]"]}]], "api_key": "[SECRET]"}
    assert orjson.loads(out.data["result"]) == {"card": "[CARD]", "note": "ok"}
    assert out.data["error"]["stack_trace"].endswith("no user [EMAIL]")
    assert out.data["amount"] == "[CARD]"
    report = {(r["path"], r["category"]): r["count"] for r in out.metadata["redactions"]}
    assert report == {
        ("name", "EMAIL"): 1, ("tags[1]", "EMAIL"): 1, ("metadata.client.ip", "IP"): 1,
        ("metadata.headers.Cookie", "SECRET"): 1,
        ("data.parameters.deep[0][0].x[0]", "PHONE"): 1,
        ("data.parameters.api_key", "SECRET"): 1, ("data.result(json).card", "CARD"): 1,
        ("data.error.message", "EMAIL"): 1, ("data.error.stack_trace", "EMAIL"): 1,
        ("data.amount", "CARD"): 1,
    }
    assert "example" not in orjson.dumps(out.metadata["redactions"]).decode()


def test_clean_event_is_untouched_and_unchanged_json_keeps_its_bytes() -> None:
    raw = '{ "a" : 1,  "b": "plain" }'
    ev = event(data={"text": "nothing to see", "doc": raw, "n": 12345}, tags=["x"])
    out = R(ev)
    assert out.data == {"text": "nothing to see", "doc": raw, "n": 12345}
    assert "redactions" not in out.metadata


def test_secret_fields_hide_any_value_but_keep_empty_ones() -> None:
    value, report = R.redact({
        "password": "hunter2", "db_password": 12345, "credentials": {"user": "u", "pw": "p"},
        "X-Api-Key": ["a", "b"], "token": None, "secret": "", "is_secret": False,
        "max_tokens": 256, "token_count": 3,
    })
    assert value == {
        "password": "[SECRET]", "db_password": "[SECRET]", "credentials": "[SECRET]",
        "X-Api-Key": "[SECRET]", "token": None, "secret": "", "is_secret": False,
        "max_tokens": 256, "token_count": 3,
    }
    assert len(report) == 4


def test_a_key_that_is_itself_pii_is_renamed_and_not_recorded() -> None:
    value, report = R.redact({"bob@example.com": {"role": "admin"}})
    assert value == {"[EMAIL]": {"role": "admin"}}
    assert "bob" not in orjson.dumps(report).decode()


def test_unicode_and_broken_unicode() -> None:
    text, _ = R.redact_text("Grüße, écrivez à zoë.müller@example.de ☎ +49 30 901820 🙂")
    assert text == "Grüße, écrivez à [EMAIL] ☎ [PHONE] 🙂"
    broken = "bad \ud800 surrogate then 4111 1111 1111 1111"
    assert R.redact_text(broken)[0] == "bad \ud800 surrogate then [CARD]"


def test_deeply_nested_and_large_inputs() -> None:
    value: Any = "mail bob@example.com"
    for _ in range(100):  # snapshot() already cuts payloads at depth 40
        value = {"k": [value]}
    out, report = R.redact(value)
    assert "bob@" not in orjson.dumps(out).decode() and report[0]["category"] == "EMAIL"
    big = ("lorem ipsum dolor sit amet " * 40_000) + "bob@example.com"
    assert R.redact_text(big)[0].endswith("[EMAIL]")


def test_pseudonyms_link_one_value_across_formats_and_events() -> None:
    r = Redactor(Policy(key=b"k1"))
    a, _ = r.redact_text("call (415) 555-2671, mail Bob@Example.com")
    b, _ = r.redact_text("415.555.2671 / bob@example.com")
    tags = re.findall(r"\[(\w+):([0-9a-f]{8})\]", a)
    assert [t[0] for t in tags] == ["PHONE", "EMAIL"]
    assert re.findall(r"\[(\w+):([0-9a-f]{8})\]", b) == tags
    other, _ = Redactor(Policy(key=b"k2")).redact_text("call (415) 555-2671")
    assert other != a.split(",")[0]
    assert "415" not in a and "bob" not in a.lower()


def test_categories_off_allow_lists_and_own_detectors() -> None:
    policy = Policy.from_extra({
        "redact_disable": ["ip"], "redact_allow": ["support@example.com"],
        "redact_allow_fields": ["order_ref"], "redact_fields": ["pin"],
        "redact_detectors": [Detector.pattern_of("employee", r"\bEMP-\d{6}\b", "EMPLOYEE",
                                                 literals=("EMP-",))],
    }, environ={})
    value, _ = Redactor(policy).redact({
        "text": "from 203.0.113.7 write support@example.com or bob@example.com, EMP-123456",
        "order_ref": "4111 1111 1111 1111", "pin": "0000",
    })
    assert value == {
        "text": "from 203.0.113.7 write support@example.com or [EMAIL], [EMPLOYEE]",
        "order_ref": "4111 1111 1111 1111", "pin": "[SECRET]",
    }


def test_strict_also_redacts_bare_numbers_ids_and_high_entropy_tokens() -> None:
    strict = Policy(mode="strict")
    text = "ref 4155552671 / 536904399 / tok Zq8xT2mV9pL4kW7nR3sY6uB1cD5fG0hJ"
    assert R.redact_text(text)[0] == text
    assert Redactor(strict).redact_text(text)[0] == "ref [PHONE] / [SSN] / tok [SECRET]"
    ev = Redactor(strict)(event(user_id="bob@example.com", session_id="s-1"))
    assert ev.user_id == "[EMAIL]"
    assert R(event(user_id="bob@example.com")).user_id == "bob@example.com"


def test_internal_failure_raises_without_quoting_data() -> None:
    def boom(text: str, m: Any) -> bool:
        raise ValueError(f"cannot handle {text}")

    r = Redactor(Policy(detectors=(Detector.pattern_of("x", "bob", validate=boom),)))
    with pytest.raises(RedactionError) as info:
        r(event(data={"t": "bob@example.com"}))
    assert "bob" not in str(info.value) and "ValueError" in str(info.value)


def test_policy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert Policy.from_env({}).mode == "default"
    assert Policy.from_env({"TRACEVAULT_REDACT": "STRICT"}).mode == "strict"
    assert Policy.from_env({"TRACEVAULT_REDACT_KEY": "s3"}).key == b"s3"
    on = Policy.from_extra({"redact": True}, environ={"TRACEVAULT_REDACT": "off"})
    assert on.mode == "default"
    # A typo in the environment is said and the default applies (capture must go on);
    # in code it is an error.
    assert Policy.from_env({"TRACEVAULT_REDACT": "maybe"}).mode == "default"
    assert "TRACEVAULT_REDACT='maybe' is not a redaction policy" in caplog.text
    with pytest.raises(ValueError, match="default, strict, off"):
        Policy(mode="maybe")
    with pytest.raises(ValueError, match="unknown redaction settings"):
        Policy.from_extra({"redact_allowlist": ["x"]})
    with pytest.raises(ValueError, match="unknown redaction categories"):
        Policy(disabled=frozenset({"NAMES"}))


def test_redaction_is_a_default_middleware_and_off_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRACEVAULT_REDACT", raising=False)
    pipeline = tracevault.configure(store=f"sqlite:///{tmp_path / 'a.db'}")
    assert [type(m).__name__ for m in pipeline.middleware] == ["Redactor"]
    monkeypatch.setenv("TRACEVAULT_REDACT", "off")
    assert tracevault.configure(store=f"sqlite:///{tmp_path / 'b.db'}").middleware == []
    assert tracevault.configure(store=f"sqlite:///{tmp_path / 'c.db'}",
                                redact="default").middleware != []
    assert capture.default_middleware(capture.settings()) != []
    tracevault.shutdown()


def test_pseudonymous_key_from_configure(tmp_path: Path) -> None:
    with capture_events(tmp_path, redact_key="team-key") as cap:
        log = tracevault.AuditLogger(session_id="s")
        log.log_input("I am bob@example.com")
        log.log_output("Bye bob@example.com")
        contents = [e.data["content"] for e in cap.events()]
    assert re.fullmatch(r"I am \[EMAIL:[0-9a-f]{8}\]", contents[0])
    assert contents[0][5:] == contents[1][4:]
