"""What a detector is, and the built-in detectors of personal data.

A :class:`Detector` pairs a regular expression that finds candidates with a validator
that keeps only real values (see :mod:`tracevault.redaction.validators`). Its
``family`` tells the scanner where candidates can be, so the expression runs only on
short windows of text instead of on everything:

``numeric``  runs of digits and separators (cards, phones, SSNs, IBANs, IPv4)
``at``       around an ``@`` (email addresses, passwords in URLs)
``colon``    around ``hex:hex`` (IPv6)
``token``    around long runs of token characters (API keys, JWTs, bearer tokens)
``pem``      the whole text, once it contains ``PRIVATE KEY``
``text``     the whole text (user patterns; ``literals`` can gate them cheaply)

Users add their own with :meth:`Detector.pattern_of` or by building a ``Detector`` with
a custom ``finder``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tracevault.redaction import validators as v

CATEGORIES: tuple[str, ...] = ("EMAIL", "PHONE", "CARD", "SSN", "IBAN", "IP", "SECRET")

# (text, match) -> keep this candidate?
Validator = Callable[[str, "re.Match[str]"], bool]
# (text, pos, endpos) -> (start, end) spans of values to replace
Finder = Callable[[str, int, int], Iterator[tuple[int, int]]]


@dataclass(frozen=True)
class Detector:
    """One kind of value to find.

    ``pattern`` finds candidates and ``validate`` (if any) keeps the real ones; the
    ``group`` of the match is what gets replaced (0 = all of it). A ``finder`` replaces
    pattern/validate/group for detectors that need code. ``strict_only`` detectors run
    only under the ``strict`` policy. ``literals``: run only on text that contains one
    of these strings (compared lower-cased when ``ignore_case``), a cheap gate.
    """

    name: str
    category: str
    pattern: re.Pattern[str] | None = None
    family: str = "text"
    validate: Validator | None = None
    group: int = 0
    finder: Finder | None = None
    strict_only: bool = False
    literals: tuple[str, ...] = ()
    ignore_case: bool = False
    normalize: Callable[[str], str] | None = field(default=None, repr=False)

    @classmethod
    def pattern_of(
        cls,
        name: str,
        regex: str | re.Pattern[str],
        category: str = "SECRET",
        *,
        validate: Validator | None = None,
        group: int = 0,
        literals: tuple[str, ...] = (),
    ) -> Detector:
        """Return a user detector from a regular expression (searched in every string)."""
        pattern = re.compile(regex) if isinstance(regex, str) else regex
        return cls(name, category.upper(), pattern, "text", validate, group, literals=literals)

    def find(self, text: str, pos: int, endpos: int) -> Iterator[tuple[int, int]]:
        """Yield the ``(start, end)`` spans of validated values in ``text[pos:endpos]``."""
        if self.finder is not None:
            yield from self.finder(text, pos, endpos)
            return
        assert self.pattern is not None
        for m in self.pattern.finditer(text, pos, endpos):
            if self.validate is None or self.validate(text, m):
                start, end = m.span(self.group)
                if end > start:
                    yield start, end


def _words_before(words: str, *, adjacent: bool = False) -> re.Pattern[str]:
    # whole words only ("tel" is not in "hotel"); ``adjacent``: right before the value
    tail = r"[\s:#.=\-]*\Z" if adjacent else r"\b"
    return re.compile(rf"(?i)(?<![^\W_])(?:{words}){tail}")


def has_context(pattern: re.Pattern[str], text: str, start: int, width: int = 40) -> bool:
    """Return whether ``pattern`` (a context word) occurs in the ``width`` characters
    before ``start``."""
    return pattern.search(text, max(0, start - width), start) is not None


_PHONE_WORDS = _words_before(
    r"phone|tel|telephone|call|mobile|cell|sms|text|fax|whatsapp|contact|dial|reach")
_SSN_WORDS = _words_before(r"ssn|ss#|social security(?: number)?|social-security|tin")
# "version 1.2.3.4", "section 3.2.1.4": dotted numbers right after these are not addresses
_VERSION_WORDS = _words_before(
    r"version|ver|release|build|v|section|chapter|step|clause|rule|oid|item|§", adjacent=True)


def _has_separator(text: str) -> bool:
    return any(c in text for c in " .-()")


# --- email -------------------------------------------------------------------------------

_LOCAL_TAIL = re.compile(r"[\w.%+\-]{1,128}\Z")
_DOMAIN = re.compile(
    r"(?:[^\W_](?:[\w\-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24}(?![\w\-]|\.[^\W_])"
)
_URL_USERINFO = re.compile(r"[A-Za-z][\w+.\-]*://[^\s/@:\x00]*:\Z")


def _find_emails(text: str, pos: int, endpos: int) -> Iterator[tuple[int, int]]:
    # Anchored on each "@": the local part is matched backwards from it and the domain
    # forwards, so the cost does not grow with the text around it.
    i = text.find("@", pos, endpos)
    while i != -1:
        local = _LOCAL_TAIL.search(text, max(0, i - 129), i)
        domain = _DOMAIN.match(text, i + 1) if local is not None else None
        if local is not None and domain is not None:
            start = local.start()
            while start < i and text[start] in ".%+-":
                start += 1
            ok = start < i and ".." not in text[start:domain.end()]
            # "scheme://user:pass@host" is a password in a URL (a secret), not an email
            if ok and _URL_USERINFO.search(text, max(0, start - 200), start) is None:
                yield start, domain.end()
        i = text.find("@", i + 1, endpos)


EMAIL = Detector("email", "EMAIL", None, "at", finder=_find_emails, normalize=str.lower)
# URL-encoded, as in query strings in access logs: "?email=kim.lee%40example.com"
# (its dots may be encoded too: "kim%2Elee%40example%2Ecom")
_EMAIL_ENCODED = re.compile(
    r"(?<![\w.%+\-])(?:[\w.+\-]|%2[Ee]){1,128}%40"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?(?:\.|%2[Ee]))+"
    r"[A-Za-z]{2,24}(?![\w\-])"
)
EMAIL_ENCODED = Detector(
    "email_urlencoded", "EMAIL", _EMAIL_ENCODED, literals=("%40",),
    normalize=lambda s: s.replace("%40", "@").replace("%2E", ".").replace("%2e", ".").lower())

# --- numbers -----------------------------------------------------------------------------

_NB = r"(?<![\w\-.+])"  # not inside a longer number or word
_NE = r"(?![\w\-]|[.,]\d)"

_NANP = re.compile(
    _NB + r"(?:\+?1[ .\-]?)?(?:\(\d{3}\)[ .\-]?|\d{3}[ .\-]?)\d{3}[ .\-]?\d{4}" + _NE
)


def _nanp_ok(text: str, m: re.Match[str]) -> bool:
    value = m.group()
    if not v.nanp_ok(value):
        return False
    if value.startswith("+") or _has_separator(value):
        return True
    return has_context(_PHONE_WORDS, text, m.start())


def _nanp_strict_ok(text: str, m: re.Match[str]) -> bool:
    return v.nanp_ok(m.group())


_E164 = re.compile(r"(?<![\w+])\+[1-9](?:[ .\-]{0,2}\(?\d\)?){6,14}" + _NE)
_INTL_00 = re.compile(r"(?<![\w+\-.])00[1-9](?:[ .\-]?\(?\d\)?){7,13}" + _NE)

_SSN = re.compile(_NB + r"\d{3}([\- ]?)\d{2}\1\d{4}" + _NE)


def _ssn_ok(text: str, m: re.Match[str]) -> bool:
    if not v.ssn_ok(m.group()):
        return False
    if m.group(1) == "-":
        return True
    return has_context(_SSN_WORDS, text, m.start())


def _ssn_strict_ok(text: str, m: re.Match[str]) -> bool:
    return v.ssn_ok(m.group())


# Groups of a card number are separated by spaces, dashes or dots (4111.1111.1111.1111).
_CARD = re.compile(
    _NB + r"(?:\d{4}[ .\-]?\d{6}[ .\-]?\d{4,5}|\d{4}(?:[ .\-]?\d{4}){2}[ .\-]?\d{1,4}"
    r"(?:[ .\-]?\d{1,3})?|\d{12,19})" + _NE
)

_IBAN = re.compile(r"(?<![^\W_])[A-Za-z]{2}\d{2}(?:[ \-]?[A-Za-z0-9]){11,34}")


def _find_iban(text: str, pos: int, endpos: int) -> Iterator[tuple[int, int]]:
    # The candidate may run on into following words ("... 9268 19 FOR"): cut it at the
    # country's IBAN length, then check the checksum.
    for m in _IBAN.finditer(text, pos, endpos):
        length = v.IBAN_LENGTHS.get(m.group()[:2].upper())
        if length is None:
            continue
        seen, end = 0, m.start()
        for i in range(m.start(), m.end()):
            if text[i].isalnum():
                seen += 1
                if seen == length:
                    end = i + 1
                    break
        at_boundary = end >= len(text) or not text[end].isalnum()
        if seen == length and at_boundary and v.iban_ok(text[m.start():end]):
            yield m.start(), end


_IPV4 = re.compile(r"(?<![\w.\-])(?:\d{1,3}\.){3}\d{1,3}(?![\w\-]|\.\d)")


def _ipv4_ok(text: str, m: re.Match[str]) -> bool:
    if not v.ipv4_ok(m.group()):
        return False
    return not has_context(_VERSION_WORDS, text, m.start(), 24)


_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?"
    r"(?:%[\w.]+)?(?![\w:])"
)


def _ipv6_ok(text: str, m: re.Match[str]) -> bool:
    return v.ipv6_ok(m.group())


def _card_ok(text: str, m: re.Match[str]) -> bool:
    return v.card_ok(m.group())


def _e164_ok(text: str, m: re.Match[str]) -> bool:
    return v.e164_ok(m.group())


PII_DETECTORS: tuple[Detector, ...] = (
    EMAIL,
    EMAIL_ENCODED,
    Detector("card", "CARD", _CARD, "numeric", _card_ok, normalize=v.digits_of),
    Detector("iban", "IBAN", None, "numeric", finder=_find_iban,
             normalize=lambda s: s.replace(" ", "").replace("-", "").upper()),
    Detector("ssn", "SSN", _SSN, "numeric", _ssn_ok, normalize=v.digits_of),
    Detector("ssn_bare", "SSN", _SSN, "numeric", _ssn_strict_ok, strict_only=True,
             normalize=v.digits_of),
    Detector("phone_e164", "PHONE", _E164, "numeric", _e164_ok, normalize=v.digits_of),
    Detector("phone_nanp", "PHONE", _NANP, "numeric", _nanp_ok, normalize=v.digits_of),
    Detector("phone_nanp_bare", "PHONE", _NANP, "numeric", _nanp_strict_ok, strict_only=True,
             normalize=v.digits_of),
    Detector("phone_intl_00", "PHONE", _INTL_00, "numeric",
             lambda t, m: v.e164_ok(m.group()), strict_only=True, normalize=v.digits_of),
    Detector("ipv4", "IP", _IPV4, "numeric", _ipv4_ok),
    Detector("ipv6", "IP", _IPV6, "colon", _ipv6_ok, normalize=str.lower),
)
