"""Built-in detectors of secrets, and the field names whose values are secret.

Provider keys are recognised by their documented prefixes and alphabets (OpenAI
``sk-``/``sk-proj-``, Anthropic ``sk-ant-``, AWS ``AKIA``/``ASIA`` key ids and secret
keys in context, GitHub ``ghp_``/``gho_``/``ghs_``/``ghu_``/``ghr_``/``github_pat_``,
Slack ``xox*`` and webhooks, Stripe ``sk_``/``rk_``/``pk_`` live and test keys, Google
``AIza``), plus JSON Web Tokens, PEM private key blocks, bearer/basic credentials,
passwords in URLs and ``key=value`` / ``"key": "value"`` pairs whose key names a secret.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from tracevault.redaction.detectors import Detector

# Field names (lower-cased, without "-", "_", "." or spaces) whose values are secret,
# and endings that make a name secret ("db_password", "x-api-key", "refresh_token").
SECRET_NAMES: frozenset[str] = frozenset({
    "password", "passwd", "pwd", "pass", "passphrase", "secret", "token", "apikey",
    "authorization", "auth", "proxyauthorization", "cookie", "cookies", "setcookie",
    "credential", "credentials", "privatekey", "secretkey", "accesskey", "clientsecret",
    "sessionkey", "signingkey", "encryptionkey", "xapikey", "apitoken", "authtoken",
    "connectionstring", "dsn",
})
SECRET_SUFFIXES: tuple[str, ...] = (
    "password", "passwd", "passphrase", "secret", "token", "apikey", "privatekey",
    "secretkey", "accesskey", "credential", "credentials", "cookie",
)
_NOT_A_NAME = re.compile(r"[\s_.\-]")
# "pass" as the last word of a name ("DB_PASS", "smtp-pass"), but not "bypass"/"compass".
_PASS_WORD = re.compile(r"(?:^|[\s_.\-])pass$", re.IGNORECASE)


def normalize_name(name: str) -> str:
    """Return a field name lower-cased without separators (``X-Api-Key`` -> ``xapikey``)."""
    return _NOT_A_NAME.sub("", name).lower()


def is_secret_name(name: str, extra: Iterable[str] = ()) -> bool:
    """Return whether a field called ``name`` holds a secret (built-in names or ``extra``,
    which must be normalized with :func:`normalize_name`)."""
    n = normalize_name(name)
    return (
        n in SECRET_NAMES
        or n.endswith(SECRET_SUFFIXES)
        or n in extra
        or _PASS_WORD.search(name) is not None
    )


def _mixed(value: str, need_upper: bool = False) -> bool:
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    if need_upper:
        return has_digit and any(c.isupper() for c in value) and any(c.islower() for c in value)
    return has_digit and has_alpha


def _entropy(value: str) -> float:
    counts: dict[str, int] = {}
    for c in value:
        counts[c] = counts.get(c, 0) + 1
    n = len(value)
    return -sum(k / n * math.log2(k / n) for k in counts.values())


_SK = re.compile(
    r"(?<![\w\-])sk-(?:proj-|svcacct-|admin-|ant-(?:api|admin)\d{2}-)?([A-Za-z0-9_\-]{20,})"
    r"(?![\w\-])"
)
_AWS_PREFIXES = ("AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AIPA", "ANPA", "ANVA", "APKA",
                 "AROA", "ASCA")
_AWS_ID = re.compile(
    r"(?<![A-Za-z0-9])(?:" + "|".join(_AWS_PREFIXES) + r")[A-Z2-7]{16}(?![A-Za-z0-9])"
)
_AWS_SECRET = re.compile(
    r"(?i:(?:aws|secret)[^\n\x00]{0,40}?)(?<![A-Za-z0-9/+])([A-Za-z0-9/+]{40})"
    r"(?![A-Za-z0-9/+=])"
)
_GITHUB = re.compile(r"(?<!\w)(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_\w{22,255})(?!\w)")
_SLACK = re.compile(
    r"(?<![\w\-])xox[abposre]-[A-Za-z0-9\-]{10,250}(?![\w\-])"
    r"|https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_\-]{20,}"
)
_STRIPE = re.compile(r"(?<!\w)(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,247}(?!\w)")
_GOOGLE = re.compile(r"(?<![\w\-])AIza[0-9A-Za-z_\-]{35}(?![\w\-])")
_JWT = re.compile(
    r"(?<![\w\-])eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*(?![\w\-])"
)
_BEARER = re.compile(r"(?i:\bbearer\s+)([A-Za-z0-9\-._~+/]{12,}=*)")
_PEM = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----[^\x00]*?"
    r"(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|(?=\x00)|\Z)"
)
_URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,20}://[^\s:/@\x00]{0,128}:([^\s/@\x00]{1,256})@")
_SCHEME_TAIL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,20}\Z")
_HIGH_ENTROPY = re.compile(r"(?<![\w/+\-])[A-Za-z0-9_\-/+]{32,}={0,2}(?![\w/+=\-])")


def _sk_ok(text: str, m: re.Match[str]) -> bool:
    return _mixed(m.group(1))


def _aws_secret_ok(text: str, m: re.Match[str]) -> bool:
    value = m.group(1)
    return _mixed(value, need_upper=True) and not all(c in "0123456789abcdef" for c in value)


def _jwt_ok(text: str, m: re.Match[str]) -> bool:
    header = m.group().split(".", 1)[0]
    try:
        decoded: Any = orjson.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return False
    return isinstance(decoded, dict) and ("alg" in decoded or "typ" in decoded)


def _bearer_ok(text: str, m: re.Match[str]) -> bool:
    return _mixed(m.group(1))


def _find_url_passwords(text: str, pos: int, endpos: int) -> Iterator[tuple[int, int]]:
    i = text.find("@", pos, endpos)
    while i != -1:
        j = text.rfind("://", max(0, i - 400), i)
        scheme = _SCHEME_TAIL.search(text, max(0, j - 21), j) if j != -1 else None
        if scheme is not None:
            m = _URL_PASSWORD.match(text, scheme.start(), i + 1)
            if m is not None and m.end() == i + 1:
                yield m.span(1)
        i = text.find("@", i + 1, endpos)


def _high_entropy_ok(text: str, m: re.Match[str]) -> bool:
    value = m.group()
    return _mixed(value, need_upper=True) and _entropy(value) >= 4.0


SECRET_DETECTORS: tuple[Detector, ...] = (
    Detector("pem_private_key", "SECRET", _PEM, "pem"),
    Detector("jwt", "SECRET", _JWT, "token", _jwt_ok, literals=("eyJ",)),
    Detector("openai_or_anthropic_key", "SECRET", _SK, "token", _sk_ok, literals=("sk-",)),
    Detector("aws_access_key_id", "SECRET", _AWS_ID, "token", literals=_AWS_PREFIXES),
    Detector("aws_secret_access_key", "SECRET", _AWS_SECRET, "token", _aws_secret_ok, group=1,
             literals=("aws", "secret"), ignore_case=True),
    Detector("github_token", "SECRET", _GITHUB, "token", literals=("gh", "github_pat_")),
    Detector("slack_token", "SECRET", _SLACK, "token", literals=("xox", "hooks.slack.com")),
    Detector("stripe_key", "SECRET", _STRIPE, "token", literals=("_live_", "_test_")),
    Detector("google_api_key", "SECRET", _GOOGLE, "token", literals=("AIza",)),
    Detector("bearer_token", "SECRET", _BEARER, "token", _bearer_ok, group=1,
             literals=("bearer",), ignore_case=True),
    Detector("url_password", "SECRET", None, "at", finder=_find_url_passwords),
    Detector("high_entropy", "SECRET", _HIGH_ENTROPY, "token", _high_entropy_ok,
             strict_only=True),
)

# --- key = value pairs in free text --------------------------------------------------------

# the value: "quoted" (JSON, with escapes), \"quoted\" (JSON inside a JSON string),
# 'quoted', or a bare word (with an auth scheme in front: "Basic dXNlcjpwYXNz")
_VALUE_AFTER = re.compile(
    r"[ \t]*(?:\\\"([^\"\\\x00\n]{1,1024})\\\"|\"((?:[^\"\\\x00\n]|\\.){1,1024})\""
    r"|'([^'\x00\n]{1,1024})'"
    r"|((?:(?i:basic|bearer|token|digest|apikey)[ \t]+)?[^\s\"',;&)}\]<>\\\x00]{1,1024}))"
)
_STOP_VALUES = frozenset({
    "is", "was", "the", "a", "an", "to", "for", "and", "or", "of", "in", "on", "not",
    "required", "invalid", "expired", "missing", "null", "none", "true", "false",
    "undefined", "n/a", "redacted", "changed", "reset", "updated", "set", "empty", "bearer",
    "basic", "digest", "token",
})


_KEY_EDGE = " \t\"'\\"
# The key is the name right before the separator: the run of name characters at the end
# of the text before it (quotes and spaces stripped), after any quote, bracket, brace,
# comma or other punctuation -- "headers={'Authorization", '{"user":"bob","dsn',
# "a=1,auth". Matched on the reversed text, so the match starts at the separator.
_NAME_TAIL = re.compile(r"[A-Za-z0-9_.\-]+")
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_name_cache: dict[tuple[str, frozenset[str]], bool] = {}
_WHOLE_LINE_KEYS = frozenset({"cookie", "setcookie", "authorization", "proxyauthorization"})


def _line_end(text: str, start: int, endpos: int) -> int:
    ends = [j for j in (text.find(c, start, endpos) for c in "\n\x00\"") if j != -1]
    return min(ends) if ends else endpos


def key_name(word: str) -> str:
    """Return the name a ``key=value`` pair's key ends with: the run of name characters
    (ASCII letters, digits, ``_``, ``.``, ``-``) at the end of ``word``, from its first
    letter (``headers={'Authorization`` -> ``Authorization``, ``--db-pass`` -> ``db-pass``)."""
    tail = _NAME_TAIL.match(word[::-1])
    return tail.group()[::-1].lstrip("0123456789_.-") if tail is not None else ""


def _secret_key(word: str, extra: frozenset[str]) -> bool:
    key = (word, extra)
    hit = _name_cache.get(key)
    if hit is None:
        if len(_name_cache) >= 20_000:  # names made of data must not grow it forever
            _name_cache.clear()
        name = key_name(word)
        hit = _name_cache[key] = bool(name) and is_secret_name(name, extra)
    return hit


def find_key_values(
    text: str, pos: int, endpos: int, extra_names: Iterable[str] = ()
) -> Iterator[tuple[int, int]]:
    """Yield spans of values written as ``key=value``, ``key: value``,
    ``"key": "value"`` or, in prose, ``key 'value'`` / ``key "value"`` (an exception
    message: ``login() got password 'hunter2'``) in ``text[pos:endpos]`` whose key
    names a secret."""
    extra = frozenset(extra_names)
    for sep in ("=", ":"):
        i = text.find(sep, pos, endpos)
        while i != -1:
            word = _word_before(text, pos, i)
            if word and _secret_key(word, extra):
                span = _value_span(text, i + 1, endpos, word)
                if span is not None:
                    yield span
            i = text.find(sep, i + 1, endpos)
    for quote in ("'", '"'):
        i = text.find(quote, pos, endpos)
        while i != -1:
            at = i - 1 if i > pos and text[i - 1] == "\\" else i  # \"value\" in JSON text
            if at > pos and text[at - 1] in " \t":
                word = _word_before(text, pos, at)
                # Only a quoted value: a bare word after a name is prose ("token expired").
                if word and _secret_key(word, extra):
                    span = _value_span(text, at, endpos, word, quoted=True)
                    if span is not None:
                        yield span
            i = text.find(quote, i + 1, endpos)


def _word_before(text: str, pos: int, at: int) -> str:
    """The word just before ``text[at]``, without quotes or spaces around it; its key is
    the name it ends with (see :func:`key_name`)."""
    left = max(pos, at - 44)
    before = text[left:at].rstrip(_KEY_EDGE)
    words = before.rsplit(None, 1)
    word = words[-1] if words else ""
    if left > pos and len(word) == len(before) and text[left - 1] in _NAME_CHARS:
        word = "x" + word  # cut by the window: only a secret ending may match
    return word


def _value_span(
    text: str, at: int, endpos: int, word: str, quoted: bool = False
) -> tuple[int, int] | None:
    """The span of the value written at ``text[at:]`` after the key ``word``, unless it
    is too short, a placeholder or a word that says something about the secret."""
    m = _VALUE_AFTER.match(text, at, endpos)
    if m is None:
        return None
    g = next(i for i in (1, 2, 3, 4) if m.group(i) is not None)
    if quoted and g == 4:
        return None
    start, end = m.span(g)
    value = m.group(g)
    if g == 4 and normalize_name(key_name(word)) in _WHOLE_LINE_KEYS:
        # "Cookie: a=1; b=2" -- every cookie, to the end of the line
        end = _line_end(text, end, endpos)
    if (len(value) < 3 or value.lower() in _STOP_VALUES
            or value.startswith("[") or value.startswith("*")):
        return None
    return start, end
