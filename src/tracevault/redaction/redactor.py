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
from typing import Any

import orjson

from tracevault.redaction.policy import Policy
from tracevault.redaction.scanner import SEPARATOR, Finding
from tracevault.redaction.secrets import is_secret_name, normalize_name
from tracevault.schema import AuditEvent

REDACTIONS_KEY = "redactions"
_MAX_JSON_DEPTH = 64
_INT_SCAN_MIN = 10**6  # shorter integers cannot be any detected value


class RedactionError(RuntimeError):
    """Redaction failed on an event; the message never contains event data."""


class _Slot:
    """Where one scanned string lives, so its replacement can be written back."""

    __slots__ = ("container", "is_key", "json_scopes", "key", "path", "text")

    def __init__(self, container: Any, key: Any, path: str, text: str, is_key: bool,
                 json_scopes: tuple[int, ...]) -> None:
        self.container = container
        self.key = key
        self.path = path
        self.text = text
        self.is_key = is_key
        self.json_scopes = json_scopes


class _Walk:
    """One pass over a value: collect strings, apply field-name rules, write back."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.secret_fields = "SECRET" not in policy.disabled
        self.slots: list[_Slot] = []
        self.counts: dict[tuple[str, str], int] = {}
        self.json_slots: list[tuple[Any, Any, Any, str]] = []  # container, key, parsed, path
        self.json_changed: set[int] = set()
        self.renames: list[tuple[dict[str, Any], str, str]] = []
        self.scopes: tuple[int, ...] = ()

    def count(self, path: str, category: str, n: int = 1) -> None:
        key = (path, category)
        self.counts[key] = self.counts.get(key, 0) + n
        self.json_changed.update(self.scopes)

    # --- collect --------------------------------------------------------------------------

    def visit(self, value: Any, container: Any, key: Any, path: str, depth: int) -> None:
        cls = type(value)
        if cls is str:
            if len(value) >= 5:
                if value[0] in "{[" or value[:1].isspace():
                    parsed = self._json(value, depth)
                    if parsed is not None:
                        self._visit_json(parsed, container, key, path, depth)
                        return
                self.slots.append(_Slot(container, key, path, value, False, self.scopes))
        elif cls is dict:
            self._visit_dict(value, path, depth)
        elif cls is list:
            for i, item in enumerate(value):
                self.visit(item, value, i, f"{path}[{i}]", depth + 1)
        elif cls is int and (value >= _INT_SCAN_MIN or value <= -_INT_SCAN_MIN):
            self.slots.append(_Slot(container, key, path, str(value), False, self.scopes))

    def _visit_dict(self, value: dict[str, Any], path: str, depth: int) -> None:
        policy = self.policy
        prefix = f"{path}." if path else ""
        for k, item in value.items():
            sub = f"{prefix}{k}"
            if policy.allow_fields and normalize_name(k) in policy.allow_fields:
                continue
            if self.secret_fields and is_secret_name(k, policy.secret_fields):
                if item is not None and item is not True and item is not False and item != "":
                    if not (isinstance(item, str) and item.startswith("[SECRET")):
                        value[k] = policy.replacement("SECRET", _text_of(item), "field")
                        self.count(sub, "SECRET")
                continue
            if len(k) >= 5 and ("@" in k or any("0" <= c <= "9" for c in k)):
                self.slots.append(_Slot(value, k, f"{sub}(key)", k, True, self.scopes))
            self.visit(item, value, k, sub, depth + 1)

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

    def _visit_json(self, parsed: Any, container: Any, key: Any, path: str, depth: int) -> None:
        index = len(self.json_slots)
        self.json_slots.append((container, key, parsed, path))
        outer = self.scopes
        self.scopes = (*outer, index)
        try:
            holder = [parsed]
            self.visit(parsed, holder, 0, f"{path}(json)", depth + 1)
            self.json_slots[index] = (container, key, holder[0], path)
        finally:
            self.scopes = outer

    # --- scan and write back --------------------------------------------------------------

    def apply(self) -> None:
        slots = self.slots
        if slots:
            texts = [s.text for s in slots]
            joined = SEPARATOR.join(texts)
            starts: list[int] = []
            offset = 0
            for t in texts:
                starts.append(offset)
                offset += len(t) + 1
            per_slot: dict[int, list[Finding]] = {}
            for f in self.policy.scanner.scan(joined):
                i = bisect.bisect_right(starts, f.start) - 1
                base = starts[i]
                per_slot.setdefault(i, []).append(
                    f._replace(start=f.start - base, end=min(f.end, base + len(texts[i])) - base))
            for i, findings in per_slot.items():
                self._replace(slots[i], findings)
        for container, old, new in reversed(self.renames):
            _rename(container, old, new)
        for index in sorted(self.json_changed, reverse=True):
            container, key, parsed, _ = self.json_slots[index]
            container[key] = orjson.dumps(parsed).decode()

    def _replace(self, slot: _Slot, findings: list[Finding]) -> None:
        text = slot.text
        parts: list[str] = []
        last = 0
        changed = False
        for f in findings:
            value = text[f.start:f.end]
            if self.policy.allowed(value):
                continue
            parts.append(text[last:f.start])
            parts.append(self.policy.replacement(f.category, value, f.detector))
            last = f.end
            changed = True
            self.scopes = slot.json_scopes
            self.count(slot.path, f.category)
        if not changed:
            return
        parts.append(text[last:])
        new = "".join(parts)
        if slot.is_key:
            self.renames.append((slot.container, slot.key, new))
        else:
            slot.container[slot.key] = new

    def report(self) -> list[dict[str, Any]]:
        return [{"path": p, "category": c, "count": n} for (p, c), n in sorted(self.counts.items())]


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

    def __call__(self, event: AuditEvent, /) -> AuditEvent:
        if not self.policy.enabled:
            return event
        try:
            walk = _Walk(self.policy)
            holder: dict[str, Any] = {"data": event.data, "metadata": event.metadata,
                                      "tags": event.tags}
            if event.name is not None:
                holder["name"] = event.name
            if self.policy.strict:
                holder["session_id"] = event.session_id
                holder["user_id"] = event.user_id
            for field in holder:
                walk.visit(holder[field], holder, field, field, 0)
            walk.apply()
            event.data = holder["data"]
            event.metadata = holder["metadata"]
            event.tags = holder["tags"]
            event.name = holder.get("name", event.name)
            if self.policy.strict:
                event.session_id = holder["session_id"]
                event.user_id = holder["user_id"]
            report = walk.report()
            if report:
                if not isinstance(event.metadata, dict):
                    event.metadata = {}
                event.metadata[REDACTIONS_KEY] = report
            return event
        except Exception as exc:
            # The original message may quote the data being redacted: name the type only.
            raise RedactionError(f"redaction failed ({type(exc).__name__})") from None

    def redact(self, value: Any, path: str = "") -> tuple[Any, list[dict[str, Any]]]:
        """Return ``value`` (JSON-like) redacted, and the list of what was replaced.

        ``value`` itself is not changed.
        """
        copy = orjson.loads(orjson.dumps(value)) if not isinstance(value, str) else value
        walk = _Walk(self.policy)
        holder = {path: copy}
        walk.visit(copy, holder, path, path, 0)
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
