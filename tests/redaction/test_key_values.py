"""``key=value`` / ``key: value`` / ``"key": "value"`` pairs in free text: the key is the
name right before the separator, whatever punctuation stands in front of it (a Python
dict repr in an exception message, compact JSON inside a log line, ``a=1,b=2`` lists)."""

from __future__ import annotations

import json

import pytest

from tracevault.redaction import Policy, Redactor
from tracevault.redaction.secrets import SECRET_NAMES, find_key_values, key_name

R = Redactor(Policy())
VALUE = "dXNlcjpzZWNyZXQ9"  # base64 of "user:secret=" (no detector finds it on its own)

# {k}: the key as written, {v}: the value
FORMS = [
    "error: {k}={v} retrying",
    "{k}: {v}",
    "got {k} = {v}",
    "headers={{'{k}': 'Basic {v}'}}",
    "kwargs={{'{k}': '{v}'}}",
    "{{'a': 1, '{k}': '{v}'}}",
    "HTTPError(headers={{'Accept': 'json', '{k}': 'Basic {v}'}})",
    'log {{"user":"bob","{k}":"Basic {v}"}}',
    '{{"user":"bob","{k}":"{v}"}}',
    'x={{"{k}":"{v}"}}',
    "user=bob,{k}={v}",
    "GET /cb?user=bob&{k}={v}",
    "a=1;{k}={v}",
    "run --{k}={v}",
    "[{k}={v}]",
    "({k}: {v})",
]
SPELLINGS = {
    "apikey": ["api_key", "X-Api-Key"], "xapikey": ["x-api-key"],
    "proxyauthorization": ["Proxy-Authorization"], "setcookie": ["Set-Cookie"],
    "connectionstring": ["connection_string"], "privatekey": ["private.key"],
    "clientsecret": ["client_secret"], "authtoken": ["auth-token"],
}


def _keys() -> list[str]:
    keys = []
    for name in sorted(SECRET_NAMES):
        keys += [name, name.capitalize(), name.upper(), *SPELLINGS.get(name, [])]
    return keys


@pytest.mark.parametrize("key", _keys())
def test_every_secret_name_is_redacted_in_every_form(key: str) -> None:
    for form in FORMS:
        text = form.format(k=key, v=VALUE)
        for written in (text, json.dumps({"message": text})):  # and as JSON in a string
            out = R.redact_text(written)[0]
            assert VALUE not in out, f"{written!r} -> {out!r}"
            assert key in out  # the key stays, only its value goes


@pytest.mark.parametrize(("text", "expected"), [
    # the field reports: an exception message and compact JSON in a log line
    ("HTTPError: headers={'Authorization': 'Basic dXNlcjpzZWNyZXQ='}",
     "HTTPError: headers={'Authorization': '[SECRET]'}"),
    ('INFO request {"user":"bob","authorization":"Basic dXNlcjpzZWNyZXQ="} sent',
     'INFO request {"user":"bob","authorization":"[SECRET]"} sent'),
    ("connect(dsn='postgresql://app@db/x', timeout=3)", "connect(dsn='[SECRET]', timeout=3)"),
    ("opts={'dsn': 'mysql://db/app?pw=x1y2z3'}", "opts={'dsn': '[SECRET]'}"),
    ("retry=3,auth=s3cr3t-value,x=1", "retry=3,auth=[SECRET],x=1"),
    ("psql --password=hunter22 -h db", "psql --password=[SECRET] -h db"),
    ("cfg.db_password=hunter22", "cfg.db_password=[SECRET]"),
    # prose: a name, spaces, then a quoted value (as exception messages put it)
    ("TypeError: login() got password 'hunter22'", "TypeError: login() got password '[SECRET]'"),
    ('rejected api_key "k3y-v4lue" for bob', 'rejected api_key "[SECRET]" for bob'),
    ('{"error": "bad token \\"abc-123-xyz\\""}', '{"error": "bad token \\"[SECRET]\\""}'),
])
def test_reported_forms(text: str, expected: str) -> None:
    assert R.redact_text(text)[0] == expected


@pytest.mark.parametrize("text", [
    "headers={'Content-Type': 'application/json', 'Accept': 'text/html'}",
    '{"user":"bob","role":"admin","authorization_url":"https://idp.example.com/authorize"}',
    "{'authority': 'example.com', 'author': 'Jane Doe', 'tokens': 1200}",
    "opts={'max_tokens': 256, 'dsn_timeout': 30, 'passes': 3}",
    "see (auth) below: it works", "OAuth: the protocol we use", "re-auth: completed",
    "bypass=on", "compass: north", "x.bypass=1", "sys.path=/usr/lib",
    "the token was refreshed: ok", "step 2: authorize the client",
    "TypeError: connect() got an unexpected keyword argument 'password'",
    "the token 'expired' at noon", "password 'reset' sent", "the user's password's length",
])
def test_other_names_and_prose_survive(text: str) -> None:
    assert R.redact_text(text)[0] == text


@pytest.mark.parametrize(("word", "name"), [
    ("headers={'Authorization", "Authorization"),
    ('{"user":"bob","authorization', "authorization"),
    ("a=1,auth", "auth"),
    ("--db-pass", "db-pass"),
    ("2_token", "token"),
    ("X-Api-Key", "X-Api-Key"),
    ("self.password", "self.password"),
    ("\u8bf7\u6c42\u5934Authorization", "Authorization"),  # no space before it
    ("x=(", ""), ("", ""), ("123", ""),
])
def test_key_name_is_the_name_right_before_the_separator(word: str, name: str) -> None:
    assert key_name(word) == name


def test_a_name_longer_than_the_window_matches_only_by_its_ending() -> None:
    # The key is read from at most 44 characters before the separator: a longer name
    # must not be taken for the exact name its last characters spell ("auth").
    text = "z" * 8 + "auth" + " " * 40 + "= some-value-here"
    assert list(find_key_values(text, 0, len(text))) == []
    text = "z" * 60 + "_password = hunter22x"
    spans = list(find_key_values(text, 0, len(text)))
    assert [text[s:e] for s, e in spans] == ["hunter22x"]
