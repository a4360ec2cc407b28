"""Find every detected value in a text, fast when there is nothing to find.

Python's regular expressions cost tens of nanoseconds per character when a pattern
starts with a character class, which would make scanning every string of every event
with a dozen detectors far too slow. So the scanner first maps the text, in C, to two
"shapes" with ``bytes.translate`` (digits vs separators vs the rest; token characters
vs the rest) and finds, with ``bytes.find``, the few places where a value could start:
runs of digits, ``@`` signs, ``hex:hex`` pairs, runs of 16+ token characters,
``key=``/``key:`` pairs. Detectors then run only on those short windows. Text with no
such place costs a few hundred nanoseconds per kilobyte.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from tracevault.redaction.detectors import Detector
from tracevault.redaction.secrets import find_key_values

SEPARATOR = "\x00"  # joins the strings of one event; no detector matches across it


def _table(mapping: dict[int, int], default: int) -> bytes:
    return bytes(mapping.get(i, default) for i in range(256))


_DIGITS = range(ord("0"), ord("9") + 1)
_NUM_SHAPE = _table(
    {**{d: ord("0") for d in _DIGITS}, **{ord(c): ord(c) for c in " -.()+"}}, ord("x")
)
_TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.+/="
_TOK_SHAPE = _table({ord(c): ord("a") for c in _TOKEN_CHARS}, ord(" "))
_LONG_TOKEN = b"a" * 16
_NUM_RUN = re.compile(rb"0[0 .()+\-]{5,}0")
# What a run of digits needs before a built-in numeric detector is worth running on it:
# (digits, dots, a character it must contain)
_NUMERIC_GATES: dict[str, tuple[int, int, bytes]] = {
    "card": (12, 0, b""), "ssn": (9, 0, b""), "ssn_bare": (9, 0, b""),
    "phone_e164": (8, 0, b"+"), "phone_nanp": (10, 0, b""), "phone_nanp_bare": (10, 0, b""),
    "phone_intl_00": (9, 0, b""), "ipv4": (4, 3, b""),
}
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")


class Finding(NamedTuple):
    """A value to replace: ``text[start:end]``, its category and the detector's name."""

    start: int
    end: int
    category: str
    detector: str


def _merge(windows: list[tuple[int, int]]) -> list[tuple[int, int]]:
    windows.sort()
    merged: list[tuple[int, int]] = []
    for start, end in windows:
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


class Scanner:
    """Runs a set of detectors over text; build once, use from any thread."""

    def __init__(
        self,
        detectors: Sequence[Detector],
        *,
        key_values: bool = True,
        secret_names: Iterable[str] = (),
    ) -> None:
        self.detectors = tuple(detectors)
        self.key_values = key_values
        self.secret_names = frozenset(secret_names)
        by_family: dict[str, list[Detector]] = {}
        for det in self.detectors:
            by_family.setdefault(det.family, []).append(det)
        self._numeric = tuple(d for d in by_family.get("numeric", ()) if d.name != "iban")
        self._iban = tuple(d for d in by_family.get("numeric", ()) if d.name == "iban")
        self._at = tuple(by_family.get("at", ()))
        self._colon = tuple(by_family.get("colon", ()))
        self._token = tuple(by_family.get("token", ()))
        self._token_gates = tuple((d, tuple(lit.lower() for lit in d.literals))
                                  for d in self._token)
        # Case-sensitive prefixes a key may start with even when it has no digit (AWS key
        # ids are base32: about one in 28 is all letters).
        prefixes = sorted({lit for d in self._token if not d.ignore_case for lit in d.literals})
        # Grouped by first character, which one find (memchr) rules out: a long run
        # without digits costs a handful of searches instead of one per prefix.
        by_first: dict[str, list[str]] = {}
        for lit in prefixes:
            by_first.setdefault(lit[0], []).append(lit)
        self._token_prefixes = tuple((first, tuple(lits)) for first, lits in by_first.items())
        self._pem = tuple(by_family.get("pem", ()))
        self._text_gates = tuple((d, tuple(lit.lower() for lit in d.literals) if d.ignore_case
                                  else d.literals) for d in by_family.get("text", ()))

    def scan(self, text: str) -> list[Finding]:
        """Return the values to replace in ``text``: sorted, never overlapping.

        Text with look-alike or invisible characters (a fullwidth ``＠``, fullwidth
        digits, a zero-width space inside a card number) is also scanned as NFKC folds
        it, without format characters, and what is found there is replaced where it
        stands in the original.
        """
        found = self._scan(text)
        if not needs_folding(text):
            return found
        folded, origin = _fold(text)
        extra = [f._replace(start=origin[f.start], end=origin[f.end - 1] + 1)
                 for f in self._scan(folded) if f.end > f.start]
        return _resolve(found + extra) if extra else found

    def _scan(self, text: str) -> list[Finding]:
        if len(text) < 5:
            return []
        found: list[Finding] = []
        raw = text.encode("ascii", "replace")  # one byte per character, always
        numbers = raw.translate(_NUM_SHAPE)
        if self._numeric or self._iban:
            self._scan_numeric(text, numbers, found)
        if self._at and "@" in text:
            for det in self._at:
                found.extend(Finding(s, e, det.category, det.name)
                             for s, e in det.find(text, 0, len(text)))
        if self._colon and ":" in text:
            self._scan_colon(text, found)
        # a PEM body is made of long runs of base64, so no long run means no PEM block
        long_runs = self._scan_tokens(text, raw, numbers, found) if self._token else True
        if self._pem and long_runs and "PRIVATE KEY" in text:
            for det in self._pem:
                found.extend(Finding(s, e, det.category, det.name)
                             for s, e in det.find(text, 0, len(text)))
        if self.key_values and ("=" in text or ":" in text or "'" in text or '"' in text):
            found.extend(Finding(s, e, "SECRET", "key_value")
                         for s, e in find_key_values(text, 0, len(text), self.secret_names))
        for det, literals in self._text_gates:
            if literals:
                hay = text.lower() if det.ignore_case else text
                for lit in literals:
                    if lit in hay:
                        break
                else:
                    continue
            found.extend(Finding(s, e, det.category, det.name)
                         for s, e in det.find(text, 0, len(text)))
        return _resolve(found) if found else found

    # --- families ---------------------------------------------------------------------

    def _run(self, det: Detector, text: str, start: int, end: int, found: list[Finding],
             window: str | None = None) -> None:
        if det.literals:
            w = window if window is not None else text[start:end]
            if det.ignore_case:
                w = w.lower()
            if not any(lit in w for lit in det.literals):
                return
        found.extend(Finding(s, e, det.category, det.name) for s, e in det.find(text, start, end))

    def _scan_numeric(self, text: str, shape: bytes, found: list[Finding]) -> None:
        # Every numeric value spans at least 7 characters from its first digit to its
        # last ("1.1.1.1"); shorter numbers ("200", "2.4.1", "8f3a2b1c") are never looked
        # at. The pattern starts with a literal, so the regex engine skips ahead in C.
        n = len(shape)
        for m in _NUM_RUN.finditer(shape):
            left = shape.rfind(b"x", 0, m.start()) + 1  # include a leading "+" or "("
            right = m.end()
            run = shape[left:right]
            digits, dots = run.count(b"0"), run.count(b".")
            if digits >= 8 or dots >= 3:
                end = min(n, right + 1)  # lookaheads must see the character after
                for det in self._numeric:
                    gate = _NUMERIC_GATES.get(det.name)
                    if gate is None or (digits >= gate[0] and dots >= gate[1]
                                        and gate[2] in run):
                        self._run(det, text, left, end, found)
            if self._iban and b"0000" in run:  # every IBAN has 4 digits in a row
                for det in self._iban:
                    self._run(det, text, max(0, left - 34), min(n, right + 34), found)

    def _scan_colon(self, text: str, found: list[Finding]) -> None:
        windows = [(max(0, m.start() - 40), min(len(text), m.end() + 45))
                   for m in _IPV6_HINT.finditer(text)]
        for start, end in _merge(windows):
            for det in self._colon:
                self._run(det, text, start, end, found)

    def _has_prefix(self, text: str, left: int, right: int) -> bool:
        # Anywhere in the run, not only at its start: "AWS_ACCESS_KEY_ID=AKIA..." is one
        # run of token characters.
        for first, literals in self._token_prefixes:
            if text.find(first, left, right) >= 0:
                for p in literals:
                    if text.find(p, left, right) >= 0:
                        return True
        return False

    def _scan_tokens(self, text: str, raw: bytes, numbers: bytes, found: list[Finding]) -> bool:
        """Run the token detectors around long runs; return whether there was any run."""
        shape = raw.translate(_TOK_SHAPE)
        n = len(shape)
        windows: list[tuple[int, int]] = []
        hit = shape.find(_LONG_TOKEN)
        if hit < 0:
            return False
        while hit >= 0:
            right = shape.find(b" ", hit)
            if right < 0:
                right = n
            left = shape.rfind(b" ", 0, hit) + 1
            # Every token detector wants a digit in the value (keys, JWTs and bearer
            # tokens have them; identifiers, paths and long words mostly do not).
            if b"0" in numbers[left:right] or self._has_prefix(text, left, right):
                # left context: "Bearer ", "aws_secret_access_key = "
                windows.append((max(0, left - 48), min(n, right + 1)))
            hit = shape.find(_LONG_TOKEN, right)
        for start, end in _merge(windows) if len(windows) > 1 else windows:
            lowered = text[start:end].lower()
            for det, literals in self._token_gates:
                if not literals or any(lit in lowered for lit in literals):
                    found.extend(Finding(s, e, det.category, det.name)
                                 for s, e in det.find(text, start, end))
        return True


# Format characters (Unicode category Cf: zero-width spaces and joiners, soft hyphen,
# bidi marks, tag characters) render as nothing: they can hide a value from a pattern.
# All of them as of Unicode 14 (a test checks this list against unicodedata).
_INVISIBLE = re.compile("[\u00ad\u0600-\u0605\u061c\u06dd\u070f\u08e2\u180e"
                        "\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff"
                        "\ufff9-\ufffb\u0890\u0891\U000110bd\U000110cd\U00013430-\U00013438"
                        "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e007f]")


def needs_folding(text: str) -> bool:
    """Whether ``text`` has characters that NFKC folds (fullwidth forms, ligatures) or
    that render as nothing: what a look-alike value could hide behind."""
    return not text.isascii() and (not unicodedata.is_normalized("NFKC", text)
                                   or _INVISIBLE.search(text) is not None)


def _fold(text: str) -> tuple[str, list[int]]:
    """Return ``text`` NFKC-folded without format characters, and for each character of
    the result the index of the character it came from."""
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        if ch.isascii():
            out.append(ch)
            origin.append(i)
        elif unicodedata.category(ch) != "Cf":
            for part in unicodedata.normalize("NFKC", ch):
                out.append(part)
                origin.append(i)
    return "".join(out), origin


def _resolve(found: list[Finding]) -> list[Finding]:
    """Sort findings and merge overlaps into their union (never leave part of a value)."""
    found.sort(key=lambda f: (f.start, -f.end))
    out: list[Finding] = []
    for f in found:
        if out and f.start < out[-1].end:
            last = out[-1]
            if f.end > last.end:
                out[-1] = last._replace(end=f.end)
            continue
        out.append(f)
    return out
