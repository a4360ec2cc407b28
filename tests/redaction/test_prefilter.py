"""The whole-event prefilter never lets through an event the full walk would change.

Every event here is redacted twice: by the Redactor as the pipeline runs it (prefilter
first) and by the full walk alone. Both results must be identical, data, names, tags
and the ``redactions`` metadata alike, and the prefilter may call an event clean only
if the full walk leaves it as it was.
"""

from __future__ import annotations

import copy
import json
import random
import re
import string
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from redaction_canaries import make_canaries

from tracevault.redaction import Detector, Policy, Redactor
from tracevault.redaction import prefilter as prefilter_module
from tracevault.redaction.prefilter import _RISKY_NON_ASCII, Prefilter
from tracevault.redaction.secrets import SECRET_NAMES
from tracevault.schema import AuditEvent

DATA = Path(__file__).resolve().parent / "data"
POLICIES = {
    "default": Policy(),
    "keyed": Policy(key=b"k", allow_values=frozenset({"support@example.com"})),
    "own_fields": Policy(secret_fields=frozenset({"employee_code", "Pin"}),
                         allow_fields=frozenset({"public_id"})),
    "no_ip": Policy(disabled=frozenset({"IP", "SECRET"})),
}


def _event(data: Any, **fields: Any) -> AuditEvent:
    return AuditEvent("e1", datetime(2025, 1, 1, tzinfo=timezone.utc), "custom", data=data,
                      **fields)


def _check(redactor: Redactor, event: AuditEvent) -> bool:
    """Assert both paths agree on ``event``; return whether the prefilter said clean."""
    prefilter = redactor.policy.prefilter
    assert prefilter is not None
    before = copy.deepcopy(event.to_dict())
    holder = {"data": event.data, "metadata": event.metadata, "tags": event.tags,
              "name": event.name}
    clean = prefilter.clean(holder)
    full = copy.deepcopy(event)
    full_holder = {"data": full.data, "metadata": full.metadata, "tags": full.tags,
                   "name": full.name}
    expected = redactor._redact_event(full, full_holder).to_dict()
    got = redactor(copy.deepcopy(event)).to_dict()
    assert got == expected, f"prefilter path differs for {before!r}"
    if clean:
        assert expected == before, f"prefilter called a redactable event clean: {before!r}"
    return clean


def _corpus() -> list[str]:
    texts = []
    for name in ("generated.jsonl", "handwritten.jsonl"):
        with (DATA / name).open() as fh:
            texts.extend(json.loads(line)["text"] for line in fh if line.strip())
    return texts


def _shapes(text: str, rng: random.Random) -> Iterator[AuditEvent]:
    """``text`` in every place of an event the Redactor reads, plainly and disguised."""
    yield _event({"content": text})
    yield _event({"result": json.dumps({"message": text, "n": 1})})  # JSON in a string
    yield _event({"result": json.dumps({"message": text}, indent=2)})  # with escapes
    yield _event({"messages": [{"role": "user", "content": text}, "ok"]}, tags=[text])
    yield _event({text: "value", "k": [text[: len(text) // 2], text[len(text) // 2 :]]})
    yield _event({}, name=text, metadata={"note": text})
    cut = rng.randrange(len(text) + 1)
    yield _event({"a": text[:cut], "b": text[cut:]})  # split over neighbouring strings
    yield _event({"line": text.replace(" ", "\n", 1), "tab": text.replace(" ", "\t")})
    for word in re.findall(r"\d[\d .\-]{5,}\d", text):
        digits = re.sub(r"\D", "", word)
        yield _event({"number": int(digits), "float": float(digits), "text": word})


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_the_labelled_corpus_gives_the_same_results(policy: str) -> None:
    redactor = Redactor(POLICIES[policy])
    rng = random.Random(11)
    outcomes = [_check(redactor, e) for text in _corpus() for e in _shapes(text, rng)]
    assert len(outcomes) > 5000
    assert any(outcomes) and not all(outcomes)


CJK = "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8"  # Japanese text: nothing to hide


@pytest.mark.parametrize(("text", "redacted"), [
    ("mail bob\uff20example.com now", "mail [EMAIL] now"),  # fullwidth @
    ("card 4111\u200b1111\u200b1111\u200b1111 ok", "card [CARD] ok"),  # zero-width spaces
    ("card \uff14" + "\uff11" * 15, "card [CARD]"),  # fullwidth digits
    ("ssn 123\u00ad-45-6789", "ssn [SSN]"),  # a soft hyphen
    (CJK, CJK),
], ids=["fullwidth-at", "zero-width", "fullwidth-digits", "soft-hyphen", "plain-cjk"])
def test_look_alike_characters_do_not_hide_a_value(text: str, redacted: str) -> None:
    redactor = Redactor(Policy())
    clean = _check(redactor, _event({"content": text}))  # both paths agree
    out = redactor(_event({"content": text})).data["content"]
    assert out == redacted
    assert clean == (out == text)  # plain text still takes the fast path


def test_every_invisible_format_character_is_folded_away() -> None:
    import unicodedata

    from tracevault.redaction.scanner import needs_folding

    missed = [hex(c) for c in range(sys.maxunicode + 1)
              if unicodedata.category(chr(c)) == "Cf" and not needs_folding(f"a{chr(c)}b")]
    assert missed == []


def test_canaries_give_the_same_results() -> None:
    redactor = Redactor(Policy())
    rng = random.Random(5)
    for _ in range(20):
        for name, value in make_canaries().items():
            for event in _shapes(f"the {name} is {value} here", rng):
                _check(redactor, event)
            for data in ({name: value}, {"password": value}, {"log": f"{name}={value}"},
                         {"log": f"headers={{'Authorization': 'Basic {value}'}}"},
                         {"log": f'req {{"user":"bob","{name}":"{value}","dsn":"{value}"}}'},
                         {"log": f"a=1,auth={value},{name}:{value}"}):
                _check(redactor, _event(data))
            # Values the detectors find on their own are never called clean.
            if name not in ("db_password", "field_password", "cookie"):
                assert not _check(redactor, _event({"text": value}))


# --- random events ---------------------------------------------------------------------

_FRAGMENTS = [
    "a", "Z", "x", "the ", " ", "-", ".", "(", ")", "+", ":", "=", "@", "%40", "/", "_",
    "'", '"', "\\", "\\n", "\n", "\t", "\r", "\x0b", "\x1f", "\x00", ",", ";", "{", "[",
    "0", "1", "7", "12", "555", "2671", "4111", "2024-06-01", "12:30:45", "::1", "fe80::",
    "10.0.0.", "192.168.1.20", "+44 ", "00", "DE89", "GB29 NWBK", "0000",
    "sk-", "proj-", "AKIA", "ASIA", "eyJ", "xox", "b-", "gh", "p_", "github_pat_",
    "_live_", "_test_", "AIza", "Bearer ", "bearer", "Basic ", "aws", "secret", "AWS_",
    "password", "pass", "PASS", "pwd", "token", "api_key", "X-Api-Key", "cookie", "auth",
    "dsn", "key", "-----BEGIN ", "PRIVATE KEY", "hooks.slack.com/services/",
    "ſ", "K", "İ", "ı", "\u2003", "\xa0", "\u0663", "é", "→", "😀", "中文",
    "01a21c3d-1c73-7395-88b5-2eea34c1f6b1", "9390513a", "lc_run--", "+41 234 567",
    "\\token: ", "C:\\Users\\", "\\u0041KIA", "\\u0040",
    # keys behind punctuation: dict reprs, compact JSON, key=value lists, CLI flags
    "{'", "': '", "headers={'", "Authorization", "authorization", "'Authorization': '",
    '","authorization":"', '{"dsn":"', "dsn=", ",auth=", "&auth=", ";pwd=", "--password=",
    "Proxy-Authorization", "Set-Cookie", "connection_string", "\u8bf7\u6c42Authorization: ",
    # prose: a name, spaces and a quoted value
    "password '", "got token \"", " pwd\t'",
]
_ALNUM = string.ascii_letters + string.digits


def _text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 8)):
        if rng.random() < 0.25:
            parts.append("".join(rng.choice(_ALNUM) for _ in range(rng.randint(4, 44))))
        elif rng.random() < 0.15:
            digits = string.digits + " -."
            parts.append("".join(rng.choice(digits) for _ in range(rng.randint(6, 20))))
        else:
            parts.append(rng.choice(_FRAGMENTS))
    return "".join(parts)


def _value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.random()
    if depth < 3 and pick < 0.2:
        return {_key(rng): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if depth < 3 and pick < 0.3:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if pick < 0.4:
        return rng.choice([0, 7, 123456, 1234567, -4155552671, 4111111111111111, 2**62,
                           rng.randint(-10**12, 10**12)])
    if pick < 0.45:
        return rng.choice([0.5, 81.82181000120181, 4155552671.0, 1e22, -0.0, 12345678.25])
    if pick < 0.5:
        return rng.choice([None, True, False, ""])
    if pick < 0.6:
        inner = {_key(rng): _text(rng), "n": rng.choice([1, 4155552671])}
        return json.dumps(inner, indent=rng.choice([None, 1]))
    return _text(rng)


def _key(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(["content", "id", "status", "args", "usage", "input_tokens",
                           "public_id", "employee code", "pin", "Pass Word", "api key",
                           "db_PASS", "access_token", "bypass", "compass", "monkey",
                           "x-api-key", "setCookie", "auth\ttoken", "pass\u2003word",
                           "Kelvin_\u212aEY", "secret\x0bname", "pass\x0bword",
                           "\\token", "mail2@x.io"])
    return _text(rng)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_random_events_give_the_same_results(policy: str) -> None:
    redactor = Redactor(POLICIES[policy])
    rng = random.Random(f"random events, {policy}")  # a str seed: the same in every run
    outcomes = []
    for _ in range(1500):
        data = {_key(rng): _value(rng) for _ in range(rng.randint(1, 5))}
        metadata = {_key(rng): _value(rng) for _ in range(rng.randint(0, 2))}
        tags = [_text(rng) for _ in range(rng.randint(0, 2))]
        name = _text(rng) if rng.random() < 0.5 else None
        outcomes.append(_check(redactor, _event(data, metadata=metadata, tags=tags, name=name)))
    assert any(outcomes) and not all(outcomes)


# --- what it is for, and where it stands aside --------------------------------------------


def test_ordinary_agent_events_take_the_fast_path() -> None:
    prefilter = Policy().prefilter
    assert prefilter is not None
    events = [
        {"messages": [{"content": "Paris", "id": "f542fac5-2217-4bc6-884a-fd97413d0588",
                       "type": "human"},
                      {"content": "sunny in Paris", "id": "9390513a-efca-430c-9548-c846f5e510c8",
                       "name": "get_weather", "tool_call_id": "c1", "type": "tool"}],
         "usage_metadata": {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120},
         "run": "lc_run--01a21c3d-1e55-70aa-ae91-f6c696bb00f2-0", "model": "gpt-4o-mini"},
        {"duration_ms": 81.82181000120181, "status": "success", "cost": 0.0000285},
        {"tool_name": "search_orders", "parameters": {"customer": "cust-12", "page": 99999},
         "result": [{"id": f"ord-1999-{k}", "note": "x" * 120} for k in range(5)]},
        {"query": "How do I configure the retry policy?", "result": "Version 2.4.1 added "
         "jitter. See config/worker.yaml; the default is five attempts.", "top_k": 5},
    ]
    for data in events:
        assert prefilter.clean({"data": data, "metadata": {}, "tags": [], "name": "step"})


def test_policies_it_cannot_vouch_for_have_no_prefilter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Policy(mode="strict").prefilter is None
    # A built-in detector added later is not covered until the prefilter learns it.
    monkeypatch.setattr(prefilter_module, "COVERED_DETECTORS",
                        prefilter_module.COVERED_DETECTORS - {"ipv6"})
    assert Policy().prefilter is None
    monkeypatch.undo()
    assert Policy(detectors=(Detector.pattern_of("emp", r"EMP-\d{6}"),)).prefilter is None
    assert Policy(secret_fields=frozenset({"clé"})).prefilter is None
    assert Policy().prefilter is not None


@pytest.mark.parametrize("data", [
    {"r": '{"p\\u0061ssword": "hunter22"}'},  # JSON in a string, a name escaped
    {"r": '["mail bob\\u0040example.com"]'},  # ... a value escaped
    {"r": '{"k": "\\/\\/AKIAIOSFODNN7EXAMPLE"}'},
    {"pass\x0bword": "hunter22"},  # a control character (written \u000b) in a name
    {"path": "C:\\token=hunter22"},  # a backslash before a name
    {"s": "call +41 234 567"},  # the shortest international number
    {"ip": "10.0.0.7"}, {"iban": "GB29 NWBK 6016 1331 9268 19"},
    # token secrets of the shortest length their patterns take
    {"t": "xoxb-12345678901"}, {"t": "sk_live_1234567890"}, {"t": "sk-" + "a1" * 10},
    {"t": "AKIAIOSFODNN7EXAMPLE"}, {"t": "AIza" + "Sy0" * 11 + "ab"},
    {"t": "ghp_" + "A1b2" * 9},
    {"t": "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0."},
])
def test_values_behind_escapes_and_short_numbers_are_found(data: dict[str, Any]) -> None:
    redactor = Redactor(Policy())
    assert not _check(redactor, _event(data))
    assert redactor(_event(copy.deepcopy(data))).metadata["redactions"]


KEY_FORMS = [
    "headers={{'{k}': 'Basic {v}'}}", "{{'a': 1, '{k}': '{v}'}}",
    'log {{"user":"bob","{k}":"Basic {v}"}}', 'x={{"{k}":"{v}"}}',
    "user=bob,{k}={v}", "a=1;{k}={v}", "run --{k}={v}", "({k}: {v})",
    "login() got {k} '{v}'", 'bad {k}\t"{v}" given',
]


@pytest.mark.parametrize("name", sorted(SECRET_NAMES))
def test_keys_behind_punctuation_take_the_full_path(name: str) -> None:
    # The key=value rule reads the name right before the separator, after any quote,
    # bracket, brace or comma: the prefilter must never call such an event clean.
    redactor = Redactor(Policy())
    value = "dXNlcjpzZWNyZXQ9"
    for key in (name, name.capitalize(), name.upper()):
        for form in KEY_FORMS:
            text = form.format(k=key, v=value)
            for data in ({"log": text}, {"r": json.dumps({"m": text})},
                         {"r": json.dumps([{"m": text}], indent=1)}):
                assert not _check(redactor, _event(data)), data
                assert redactor(_event(copy.deepcopy(data))).metadata["redactions"]
            cut = text.index(value)  # key and value in neighbouring strings
            _check(redactor, _event({"a": text[:cut], "b": text[cut:]}))


def test_what_orjson_cannot_write_takes_the_full_path() -> None:
    prefilter = Prefilter()
    assert not prefilter.clean({"data": {1: "non-string key"}})
    assert not prefilter.clean({"data": {"n": 2**70}})
    assert not prefilter.clean({"data": {"s": "lone \ud800 surrogate"}})


def test_the_risky_non_ascii_class_is_complete() -> None:
    every = "".join(chr(c) for c in range(0x80, sys.maxunicode + 1) if not 0xD800 <= c < 0xE000)
    risky = set(re.findall(r"[\s\d]", every))
    risky |= {c for c in every if any(ord(x) < 128 for x in c.lower())}
    for letter in string.ascii_lowercase:
        risky |= set(re.findall(f"(?i){letter}", every))
    assert risky
    missing = [hex(ord(c)) for c in sorted(risky) if not _RISKY_NON_ASCII.fullmatch(c)]
    assert not missing
