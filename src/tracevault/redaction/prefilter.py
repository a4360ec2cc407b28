"""A whole-event test that proves, cheaply, that the Redactor would change nothing.

Most events hold nothing to redact, yet the full path walks every value and scans every
string. :class:`Prefilter` instead looks once at the event's JSON text (one ``orjson``
call, then C-level ``bytes`` searches and translations) for what every way of
redacting needs: a field or ``key=value`` name that ends like a secret name; an ``@``,
``%40``, ``PRIVATE KEY`` or ``bearer``; the literal of a token pattern inside a run of
token characters as long as that pattern matches; a ``hex:hex`` pair; a run of digits
a numeric detector could start on; the start of an IBAN. Only when none is there does
it answer "clean", and the Redactor then returns the event as it is.

It must never answer "clean" for an event the full path would change; tests run both
over the labelled corpus, canaries and random events. What keeps that sound:

* Every string, key and scanned integer of the event is in the JSON text, and a
  character JSON does not escape is written as itself. Text that could hide a value
  behind JSON escapes sends the event the full way: ``\\\\`` (a backslash in a
  string, so also any escape inside a JSON document held in a string) and ``\\u`` (a
  control character). The remaining escapes (``\\"``, ``\\n``, ...) stand for
  characters no detector, literal or name contains.
* Non-ASCII characters that a name rule or a case-insensitive pattern could read as
  ASCII (whitespace removed from names, ``K``/``ſ``/``ı``/``İ``) or that ``\\d``
  matches (non-ASCII digits) also send the event the full way.
* Numbers outside strings are JSON numbers: floats are never scanned; integers are,
  like strings of digits.
* Conditions never depend on the distance between two strings (the full path scans
  them joined, the JSON text has keys and punctuation between them).

Only policies made of the built-in detectors in ``default`` mode get a prefilter
(see :meth:`Prefilter.for_policy`); anything else always takes the full path.
"""
from __future__ import annotations

import re
from typing import Any

import orjson

from tracevault.redaction.detectors import _find_iban
from tracevault.redaction.scanner import needs_folding
from tracevault.redaction.secrets import SECRET_NAMES, SECRET_SUFFIXES
from tracevault.redaction.validators import IBAN_LENGTHS

# Every name the key rule or the key=value detector treats as secret ends, once
# normalized (lower case, no whitespace, "_", "." or "-"), with one of these, followed
# in the JSON text by quotes (or the backslash of an escaped one) and "=" or ":", or
# by spaces and a quote (a prose "password 'x'").
# Nothing is asked of what stands before the ending: the key=value detector reads the
# name after any punctuation ("headers={'Authorization", '{"a":"b","dsn', "x=1,auth";
# see secrets.key_name).
_ENDINGS: tuple[bytes, ...] = tuple(sorted(
    {n.encode() for n in (*SECRET_NAMES, *SECRET_SUFFIXES, "pass")}
))
# Names are compared without " _.-" (as normalized), with "=" read as ":".
_NAME_DELETE = b" _.-"
_NAME_TABLE = bytes(ord(":") if i == ord("=") else i for i in range(256))


# What follows a secret name, read backwards, with the literal it starts with: a
# separator and any quotes, or in prose ("password 'x'", or a double quote escaped in
# the JSON text) a quote, the spaces between being gone from the names view. A pattern
# that starts with a literal is found fast by the regex engine, and is not run at all
# where its literal is absent.
_AFTER_NAME = ((b":", rb":[\\\"']*"), (b"'", rb"'"), (b'"\\', rb"\"\\"))


def _names_patterns(endings: tuple[bytes, ...]) -> tuple[tuple[bytes, re.Pattern[bytes]], ...]:
    """For each way a name can be followed (see ``_AFTER_NAME``), its first byte(s) and
    the pattern that finds a secret name there."""
    # Matched on the reversed text, so that the scan stops only at ":" (one literal
    # byte, a tight loop in the regex engine) instead of at every letter a name could
    # start with; the reversed endings form a trie, so a miss costs one or two bytes.
    words = sorted({e[::-1] for e in endings})
    # An ending that ends with another ending adds nothing ("setcookie", "cookie").
    words = [w for w in words if not any(w != o and w.startswith(o) for o in words)]
    trie = _trie(words)
    return tuple((literal, re.compile(after + trie)) for literal, after in _AFTER_NAME)


def _trie(words: list[bytes]) -> bytes:
    """A regular expression matching any of ``words`` (none a prefix of another)."""
    heads: dict[int, list[bytes]] = {}
    for word in words:
        heads.setdefault(word[0], []).append(word[1:])
    branches = [
        re.escape(bytes([head])) + (_trie(rest) if all(rest) else b"")
        for head, rest in sorted(heads.items())
    ]
    return branches[0] if len(branches) == 1 else b"(?:" + b"|".join(branches) + b")"


# (bytes.find, not "in": for bytes, "in" first tries the needle as an integer and
# clears the TypeError, which costs more than the search.)
# Literals, each behind a byte it contains that memchr finds (or misses) at once:
# emails and passwords in URLs, PEM blocks, Slack webhooks, URL-encoded emails.
_LITERALS: tuple[tuple[bytes, bytes], ...] = (
    (b"@", b"@"), (b"Y", b"PRIVATE KEY"), (b"/", b"hooks.slack.com"), (b"%", b"%40"),
)
# Token-shaped secrets: each literal and the shortest run of token characters its
# pattern matches; all are at least 15 long, and none is only lower-case hex digits and
# dashes (UUIDs, digests), so only other runs of 15 and more are searched.
_TOKEN_LITERALS: tuple[tuple[bytes, int], ...] = (
    (b"eyJ", 20),  # JWTs: eyJ....eyJ....
    (b"sk-", 23),  # OpenAI / Anthropic keys
    (b"xox", 15),  # Slack tokens
    (b"_live_", 18), (b"_test_", 18),  # Stripe keys
    (b"AIza", 39),  # Google API keys
)
_TOKEN_PATTERNS: tuple[tuple[re.Pattern[bytes], int], ...] = (
    (re.compile(rb"gh[pousr]_"), 40),  # GitHub tokens
    (re.compile(rb"A(?:KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|PKA|ROA|SCA)"), 20),  # AWS ids
)
_TOKEN_RUN = b"a" * 15
_HEX = b"0123456789abcdef-"
_TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.+/="
_TOK_SHAPE = bytes(ord("a") if i in _TOKEN_CHARS else ord(" ") for i in range(256))
_AWS_SECRET_RUN = b"a" * 40  # an AWS secret key is 40 characters, after "aws"/"secret"
# Where the scanner looks for IPv6 addresses (JSON punctuation alone never matches).
_IPV6_HINT = re.compile(rb":[0-9A-Fa-f]{0,4}:")

# Shapes for numbers: digits "0", word characters "a", the separators numbers use as
# themselves, everything else (quotes, escapes, non-ASCII bytes) "x".
_DIGITS = b"0123456789"
_WORD = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"
_NUM_SHAPE = bytes(
    ord("0") if i in _DIGITS else ord("a") if i in _WORD else i if i in b" .()+-" else ord("x")
    for i in range(256)
)
_RUN_SHAPE = bytes(ord("0") if i in _DIGITS or i in b" .()+-" else ord("x") for i in range(256))
# Digits "0", dots kept, everything else "x" (the other separators get deleted).
_DIGIT_VIEW = bytes(ord("0") if i in _DIGITS else i if i == ord(".") else ord("x")
                    for i in range(256))
_THREE_DOTS = re.compile(rb"\.[0.]*\.[0.]*\.")
_RUN7 = b"0" * 7  # every numeric value spans at least 7 characters ("1.1.1.1")
# Where a numeric detector's match may start: a digit or "(" not after a word
# character, digit, "-" or "." (cards, SSNs, phones; IPv4 also allows "+"), or a "+"
# not after a word character, digit or "+" (international phone numbers).
_NUM_START = re.compile(rb"(?<![a0\-.])[0(]|(?<![a0+])\+")
_IBAN_COUNTRIES = frozenset(c.encode() for c in IBAN_LENGTHS)
_IBAN_BODY = re.compile(rb"[A-Za-z]{2}[0-9]{2}(?:[ \-]?[A-Za-z0-9]){11}")
_ASCII = bytes(range(128))
# Non-ASCII characters that are whitespace (removed from names), lower-case to ASCII,
# match ASCII letters case-insensitively, or are digits to \d.
_RISKY_NON_ASCII = re.compile(r"[\s\d\u0130\u0131\u017f\u212a]")
_ESCAPE = re.compile(rb"\\.")


# The detectors whose matches the conditions below are derived from. A policy running
# any other detector (a new built-in one included) gets no prefilter until its
# necessary conditions are added here.
COVERED_DETECTORS = frozenset({
    "pem_private_key", "jwt", "openai_or_anthropic_key", "aws_access_key_id",
    "aws_secret_access_key", "github_token", "slack_token", "stripe_key", "google_api_key",
    "bearer_token", "url_password", "email", "email_urlencoded", "card", "iban", "ssn",
    "phone_e164", "phone_nanp", "ipv4", "ipv6",
})


class Prefilter:
    """Answers whether an event certainly has nothing to redact (see the module)."""

    def __init__(self, secret_fields: frozenset[str] = frozenset()) -> None:
        self._names = _names_patterns(_ENDINGS + tuple(f.encode() for f in secret_fields))

    @classmethod
    def for_policy(cls, policy: Any) -> Prefilter | None:
        """The prefilter for ``policy``, or ``None`` where it cannot be proven sound:
        user or Presidio detectors, the strict mode, unusual secret field names."""
        fields = policy.secret_fields
        if policy.mode != "default" or policy.detectors:
            return None
        if any(d.name not in COVERED_DETECTORS for d in policy.active_detectors):
            return None
        if any(not f or not f.isascii() for f in fields):
            return None
        return cls(fields)

    def clean(self, holder: dict[str, Any]) -> bool:
        """Return ``True`` only if redacting ``holder`` would change nothing."""
        try:
            text = orjson.dumps(holder)
        except (TypeError, orjson.JSONEncodeError):
            return False  # what orjson cannot write is left to the full path
        lower = text.lower()
        if text.find(b"\\") >= 0:
            if text.find(b"\\\\") >= 0 or text.find(b"\\u") >= 0:
                return False
            for escape in (b"\\n", b"\\t", b"\\r", b"\\f"):  # whitespace: out of names
                lower = lower.replace(escape, b"")
            # Escaped quotes and the rest become two neutral bytes: quote counting and
            # word boundaries then see what the strings hold.
            text = _ESCAPE.sub(b"\x01\x01", text)
        if not text.isascii():
            beyond = text.translate(None, _ASCII).decode("utf-8", "replace")
            if _RISKY_NON_ASCII.search(beyond) or needs_folding(beyond):
                return False  # (look-alikes: the scanner folds them, see scanner.scan)
        for gate, literal in _LITERALS:
            if text.find(gate) >= 0 and text.find(literal) >= 0:
                return False
        # github_pat_ may be followed by non-ASCII letters (\w), so not in a long run
        if text.find(b"github_pat_") >= 0 or lower.find(b"bearer") >= 0:
            return False
        if self._tokens(text, lower) or _IPV6_HINT.search(text) is not None:
            return False
        names = lower.translate(_NAME_TABLE, _NAME_DELETE)[::-1]
        for literal, pattern in self._names:
            if names.find(literal) >= 0 and pattern.search(names) is not None:
                return False
        return not self._numbers(text)

    @staticmethod
    def _tokens(text: bytes, lower: bytes) -> bool:
        """Whether a token-shaped secret could be in ``text``: its literal stands in a
        run of token characters as long as its pattern needs."""
        shape = text.translate(_TOK_SHAPE)
        hit = shape.find(_TOKEN_RUN)  # where a run of 15 or more starts
        candidates = []
        while hit >= 0:
            end = shape.find(b" ", hit)
            end = len(shape) if end < 0 else end
            run = text[hit:end]
            if run.translate(None, _HEX):
                candidates.append(run)
            hit = shape.find(_TOKEN_RUN, end)
        if not candidates:
            return False
        runs = b" ".join(candidates)
        shape = runs.translate(_TOK_SHAPE)
        for literal, length in _TOKEN_LITERALS:
            at = runs.find(literal)
            while at >= 0:
                if _run_length(shape, at) >= length:
                    return True
                at = runs.find(literal, at + 1)
        for pattern, length in _TOKEN_PATTERNS:
            for m in pattern.finditer(runs):
                if _run_length(shape, m.start()) >= length:
                    return True
        # AWS secret keys: 40 characters (not all lower-case hex) after "aws"/"secret"
        return shape.find(_AWS_SECRET_RUN) >= 0 and (
            lower.find(b"aws") >= 0 or lower.find(b"secret") >= 0
        )

    def _numbers(self, text: bytes) -> bool:
        """Whether ``text`` has a run of digits a numeric detector or IBAN could use."""
        # Digits as "0" and dots, without the other separators; the rest is "x".
        digits = text.translate(_DIGIT_VIEW, b" ()+-")
        if digits.find(b"0000") >= 0:
            shape = text.translate(_NUM_SHAPE)
            if _iban_start(text, shape):
                return True
        # Every numeric value has 8 digits in one run, or 3 dots (IPv4): runs with
        # neither, however many (ids, short numbers), need no closer look.
        if digits.replace(b".", b"").find(b"0" * 8) < 0 and _THREE_DOTS.search(digits) is None:
            return False
        shape = text.translate(_NUM_SHAPE)
        runs = text.translate(_RUN_SHAPE)
        hit = runs.find(_RUN7)
        n = len(runs)
        quotes = scanned = 0
        while hit >= 0:
            left = runs.rfind(b"x", 0, hit) + 1
            right = runs.find(b"x", hit)
            right = n if right < 0 else right
            # Fewer than 8 digits and 3 dots: no numeric value.
            if shape.count(b"0", left, right) >= 8 or shape.count(b".", left, right) >= 3:
                quotes += text.count(b'"', scanned, left)
                scanned = left
                if quotes % 2 == 0:
                    # Outside strings, a JSON number: floats are never scanned, large
                    # integers are.
                    if shape.find(b".", left, right) < 0 and (
                        shape.find(b"a", max(0, left - 1), right + 1) < 0
                    ):
                        return True
                elif _number_in(shape, left, right):
                    return True
            hit = runs.find(_RUN7, right)
        return False


def _run_length(shape: bytes, at: int) -> int:
    """The length of the run of ``a`` bytes in ``shape`` around position ``at``."""
    right = shape.find(b" ", at)
    return (len(shape) if right < 0 else right) - (shape.rfind(b" ", 0, at) + 1)


def _number_in(shape: bytes, left: int, right: int) -> bool:
    """Whether a numeric detector could match in the run ``shape[left:right]``.

    A match starts where :data:`_NUM_START` allows, ends before a character that is
    not a word character, digit or "-" (every numeric pattern ends so), and holds at
    least 8 digits (an international phone number, the shortest valid value) or 3 dots
    (IPv4). Non-ASCII digits, which ``\\d`` also matches, never get this far.
    """
    run = shape[left:right]
    if run.count(b"0") < 8 and run.count(b".") < 3:
        return False
    if shape[right : right + 1] != b"a":
        end = right
    else:  # the run runs into a word: a match must end inside it, before a separator
        end = max(shape.rfind(c, left, right) for c in (b" ", b".", b"(", b")", b"+"))
    for m in _NUM_START.finditer(shape, left, end):
        rest = shape[m.start() : end]
        if rest.count(b"0") >= 8 or rest.count(b".") >= 3:
            return True
    return False


def _iban_start(text: bytes, shape: bytes) -> bool:
    """Whether the IBAN detector could find anything in ``text`` (the scanner runs it
    near runs with four digits in a row, so possibly on a neighbouring string, and the
    caller has seen such a run somewhere): where a country code
    and two digits stand, not after a letter or digit, it runs on the next 72
    characters (an IBAN with a separator between every two characters fits)."""
    at = shape.find(b"aa00")
    while at >= 0:
        if (
            text[at : at + 2].upper() in _IBAN_COUNTRIES
            and not text[at - 1 : at].isalnum()
            and _IBAN_BODY.match(text, at) is not None
        ):
            window = text[at : at + 72].decode("utf-8", "replace")
            if next(_find_iban(window, 0, len(window)), None) is not None:
                return True
        at = shape.find(b"aa00", at + 1)
    return False
