"""The :class:`Redactor` middleware: replaces PII and secrets in every string of an event.

It walks ``data``, ``metadata``, ``tags`` and ``name`` (and, under the strict policy,
``session_id`` and ``user_id``) to any depth: values of fields whose names mean a
secret become ``[SECRET]``; every other string, dict key that could hold a value
(contains a digit or ``@``) and long integer is scanned; a string holding a JSON object
or array is parsed and redacted as data (so ``{"password": ...}`` inside a tool result
string is caught) and written back only if something changed. All strings of an event
are scanned as one text, so an event costs one scan, not one per string.

What was replaced is recorded in ``event.metadata["redactions"]``: a list of
``{"path", "category", "count"}`` (e.g. ``data.messages[0].content``; ``(json)`` marks
the inside of a JSON string), never the values. The key is reserved.

On any internal failure the Redactor raises :class:`RedactionError`, whose message
names no value; the pipeline then withholds the event's payload (fail closed).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from copy import deepcopy
from itertools import accumulate
from typing import Any

import orjson

from tracevault.redaction.policy import Policy
from tracevault.redaction.scanner import SEPARATOR, Finding
from tracevault.schema import AuditEvent

REDACTIONS_KEY = "redactions"
_MAX_JSON_DEPTH = 64
_INT_SCAN_MIN = 10**6  # shorter integers cannot be any detected value
_JSON_START = "{[ \t\r\n"


class RedactionError(RuntimeError):
    """Redaction failed on an event; the message never contains event data."""


# A path is built lazily (formatted only when something is redacted): a root name, or
# (parent, key, how) with how = "." (dict key), "[]" (list index) or "(json)".
Path = Any
_KEY_NORMAL, _KEY_SECRET, _KEY_ALLOWED, _KEY_SCAN = 0, 1, 2, 4


def format_path(path: Path) -> str:
    """Return the dotted text form of a lazily built path."""
    parts: list[str] = []
    while isinstance(path, tuple):
        parent, key, how = path
        parts.append(f"[{key}]" if how == "[]" else "(json)" if how == "(json)" else
                     f".{key}" if isinstance(parent, tuple) or parent else str(key))
        path = parent
    parts.append(path)
    return "".join(reversed(parts))


class _Walk:
    """One pass over a value: collect strings, apply field-name rules, write back.

    Strings to scan are kept in ``texts``; ``places[i]`` says where ``texts[i]`` lives:
    ``(container, key, parent path, how, is_key, json scopes)``.
    """

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.key_kinds = policy.key_kinds
        self.texts: list[str] = []
        self.places: list[tuple[Any, Any, Path, str, bool, tuple[int, ...]]] = []
        self.counts: dict[tuple[Path, str], int] = {}
        self.json_slots: list[tuple[Any, Any, Any]] = []  # container, key, parsed
        self.json_changed: set[int] = set()
        self.renames: list[tuple[dict[str, Any], str, str]] = []
        self.scopes: tuple[int, ...] = ()

    def count(self, path: Path, category: str) -> None:
        key = (path, category)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.json_changed.update(self.scopes)

    # --- collect --------------------------------------------------------------------------

    def visit(self, value: Any, container: Any, key: Any, parent: Path, how: str,
              depth: int) -> None:
        cls = type(value)
        if cls is str:
            if len(value) >= 5:
                if value[0] in _JSON_START:
                    parsed = self._json(value, depth)
                    if parsed is not None:
                        self._visit_json(parsed, container, key, (parent, key, how), depth)
                        return
                self.texts.append(value)
                self.places.append((container, key, parent, how, False, self.scopes))
        elif cls is dict:
            self._visit_dict(value, (parent, key, how) if how else key, depth)
        elif cls is list:
            path = (parent, key, how) if how else key
            for i, item in enumerate(value):
                if type(item) is not str or len(item) >= 5:
                    self.visit(item, value, i, path, "[]", depth + 1)
        elif cls is int and (value >= _INT_SCAN_MIN or value <= -_INT_SCAN_MIN):
            self.texts.append(str(value))
            self.places.append((container, key, parent, how, False, self.scopes))

    def _visit_dict(self, value: dict[str, Any], path: Path, depth: int) -> None:
        # The hot loop of the walk: the common cases are inlined.
        kinds = self.key_kinds
        texts, places, scopes = self.texts, self.places, self.scopes
        for k, item in value.items():
            kind = kinds.get(k)
            if kind is None:
                kind = self.policy.classify_key(k)
            if kind == _KEY_NORMAL:
                cls = type(item)
                if cls is str:
                    if len(item) >= 5:
                        if item[0] in _JSON_START:
                            self.visit(item, value, k, path, ".", depth + 1)
                        else:
                            texts.append(item)
                            places.append((value, k, path, ".", False, scopes))
                elif cls is dict or cls is list or (
                        cls is int and (item >= _INT_SCAN_MIN or item <= -_INT_SCAN_MIN)):
                    self.visit(item, value, k, path, ".", depth + 1)
            elif kind & _KEY_SCAN:
                texts.append(k)
                places.append((value, k, (path, k, "."), "[]", True, self.scopes))
                self.visit(item, value, k, path, ".", depth + 1)
            elif kind == _KEY_SECRET and _worth_hiding(item):
                value[k] = self.policy.replacement("SECRET", _text_of(item), "field")
                self.count((path, k, "."), "SECRET")
            # _KEY_ALLOWED: kept as it is

    def _json(self, text: str, depth: int) -> Any:
        stripped = text.strip()
        if depth > _MAX_JSON_DEPTH or stripped[:1] not in ("{", "[") or stripped[-1:] not in (
                "}", "]"):
            return None
        try:
            parsed = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, (dict, list)) else None

    def _visit_json(self, parsed: Any, container: Any, key: Any, path: Path, depth: int) -> None:
        index = len(self.json_slots)
        self.json_slots.append((container, key, parsed))
        outer = self.scopes
        self.scopes = (*outer, index)
        try:
            self.visit(parsed, None, "", path, "(json)", depth + 1)
        finally:
            self.scopes = outer

    # --- scan and write back --------------------------------------------------------------

    def apply(self) -> None:
        texts = self.texts
        if texts:
            findings = self.policy.scanner.scan(SEPARATOR.join(texts))
            if findings:
                starts = [0, *accumulate(len(t) + 1 for t in texts)]
                per_text: dict[int, list[Finding]] = {}
                for f in findings:
                    i = bisect.bisect_right(starts, f.start) - 1
                    base = starts[i]
                    per_text.setdefault(i, []).append(f._replace(
                        start=f.start - base, end=min(f.end, base + len(texts[i])) - base))
                for i, found in per_text.items():
                    self._replace(texts[i], self.places[i], found)
        for container, old, new in reversed(self.renames):
            _rename(container, old, new)
        for index in sorted(self.json_changed, reverse=True):
            container, key, parsed = self.json_slots[index]
            container[key] = orjson.dumps(parsed).decode()

    def _replace(self, text: str, place: tuple[Any, Any, Path, str, bool, tuple[int, ...]],
                 findings: list[Finding]) -> None:
        container, key, parent, how, is_key, scopes = place
        path = (parent, "key", how) if is_key else (parent, key, how) if how else key
        parts: list[str] = []
        last = 0
        for f in findings:
            value = text[f.start:f.end]
            if self.policy.allowed(value):
                continue
            parts.append(text[last:f.start])
            parts.append(self.policy.replacement(f.category, value, f.detector))
            last = f.end
            self.scopes = scopes
            self.count(path, f.category)
        if not parts:
            return
        parts.append(text[last:])
        new = "".join(parts)
        if is_key:
            self.renames.append((container, key, new))
        else:
            container[key] = new

    def _safe(self, path: str) -> str:
        # A dict key may itself be a value ({"bob@example.com": ...}): the recorded path
        # must not carry it.
        findings = self.policy.scanner.scan(path)
        for f in reversed(findings):
            path = f"{path[:f.start]}[{f.category}]{path[f.end:]}"
        return path

    def report(self) -> list[dict[str, Any]]:
        rows = [(self._safe(format_path(p)), c, n) for (p, c), n in self.counts.items()]
        return [{"path": p, "category": c, "count": n} for p, c, n in sorted(rows)]


def _worth_hiding(value: Any) -> bool:
    # null, booleans and "" say nothing; an existing placeholder is already safe
    if value is None or value is True or value is False or value == "":
        return False
    return not (isinstance(value, str) and value.startswith("[SECRET"))


def _text_of(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _rename(container: dict[str, Any], old: str, new: str) -> None:
    if old not in container:
        return
    target, n = new, 2
    while target in container:
        target, n = f"{new}#{n}", n + 1
    items = list(container.items())
    container.clear()
    for k, val in items:
        container[target if k == old else k] = val


class Redactor:
    """Middleware that redacts an event in place and records what it replaced.

    ``Redactor()`` uses the policy from the environment; pass a :class:`Policy` for
    anything else. Also usable on its own: :meth:`redact` (any JSON-like value) and
    :meth:`redact_text`.
    """

    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy if policy is not None else Policy.from_env()

    @property
    def redacts_ids(self) -> bool:
        """Whether this redactor also redacts ``session_id`` and ``user_id`` (strict):
        an event it fails on is withheld without them too."""
        return self.policy.enabled and self.policy.strict

    def __call__(self, event: AuditEvent, /) -> AuditEvent:
        if not self.policy.enabled:
            return event
        try:
            holder: dict[str, Any] = {"data": event.data, "metadata": event.metadata,
                                      "tags": event.tags, "name": event.name}
            prefilter = self.policy.prefilter
            if prefilter is not None and prefilter.clean(holder):
                return event  # nothing in it can be redacted: skip the walk
            return self._redact_event(event, holder)
        except Exception as exc:
            # The original message may quote the data being redacted: name the type only.
            raise RedactionError(f"redaction failed ({type(exc).__name__})") from None

    def _redact_event(self, event: AuditEvent, holder: dict[str, Any]) -> AuditEvent:
        """Walk and scan everything in ``holder`` (the event's redactable fields)."""
        walk = _Walk(self.policy)
        strict = self.policy.strict
        if strict:
            holder["session_id"] = event.session_id
            holder["user_id"] = event.user_id
        walk._visit_dict(holder, "", 0)
        walk.apply()
        if not walk.counts:
            return event
        event.data = holder["data"]
        event.metadata = holder["metadata"]
        event.tags = holder["tags"]
        event.name = holder["name"]
        if strict:
            event.session_id = holder["session_id"]
            event.user_id = holder["user_id"]
        report = walk.report()
        if report:
            if not isinstance(event.metadata, dict):
                event.metadata = {}
            event.metadata[REDACTIONS_KEY] = report
        return event

    def redact(self, value: Any, path: str = "") -> tuple[Any, list[dict[str, Any]]]:
        """Return ``value`` (JSON-like) redacted, and the list of what was replaced.

        ``value`` itself is not changed.
        """
        copy = deepcopy(value)
        walk = _Walk(self.policy)
        holder = {path: copy}
        walk.visit(copy, holder, path, "", "", 0)
        walk.apply()
        return holder[path], walk.report()

    def redact_text(self, text: str) -> tuple[str, list[Finding]]:
        """Return ``text`` redacted (not parsed as JSON) and the findings, whose offsets
        refer to the original text."""
        kept = [f for f in self.policy.scanner.scan(text)
                if not self.policy.allowed(text[f.start:f.end])]
        parts: list[str] = []
        last = 0
        for f in kept:
            parts.append(text[last:f.start])
            parts.append(self.policy.replacement(f.category, text[f.start:f.end], f.detector))
            last = f.end
        parts.append(text[last:])
        return "".join(parts), kept


def redactor_factory(settings: Any) -> list[Callable[[AuditEvent], AuditEvent | None]]:
    """Default-middleware factory: the Redactor for ``settings``, or none when off."""
    policy = Policy.from_extra(getattr(settings, "extra", None) or {})
    return [Redactor(policy)] if policy.enabled else []


def redact_reason(reason: str | None, settings: Any) -> str | None:
    """``reason``, the free text an erasure records about itself, as the default
    redaction for ``settings`` stores any text: a request's reference stays, the
    details of the person whose data goes do not (the record itself is never erased)."""
    if reason is None:
        return None
    policy = Policy.from_extra(getattr(settings, "extra", None) or {})
    return Redactor(policy).redact_text(reason)[0] if policy.enabled else reason
