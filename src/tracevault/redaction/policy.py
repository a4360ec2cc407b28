"""What to redact and how to write the replacement: the redaction :class:`Policy`.

Three named policies (``TRACEVAULT_REDACT``):

``default``  every built-in detector with its validation and context rules; secret
             field names; identifiers (``session_id``, ``user_id``) are left as given.
``strict``   also bare 9- and 10-digit runs as SSNs and phone numbers without a context
             word, ``00``-prefixed international numbers, high-entropy tokens of 32+
             characters, and the ``session_id``/``user_id`` columns.
``off``      no redaction at all (must be chosen explicitly).

Replacements name the category (``[EMAIL]``). With a key (``TRACEVAULT_REDACT_KEY`` or
``configure(redact_key=...)``) they are pseudonymous: ``[EMAIL:3f9a1c2b]``, the first 8
hex digits of HMAC-SHA256(key, category, normalized value), so one person's values link
across events and formats without being readable.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from tracevault.redaction.detectors import CATEGORIES, PII_DETECTORS, Detector
from tracevault.redaction.prefilter import Prefilter
from tracevault.redaction.scanner import Scanner
from tracevault.redaction.secrets import SECRET_DETECTORS, is_secret_name, normalize_name

MODES: tuple[str, ...] = ("default", "strict", "off")
ENV_MODE = "TRACEVAULT_REDACT"
ENV_KEY = "TRACEVAULT_REDACT_KEY"

# configure() keywords this package reads from Settings.extra.
_EXTRA_KEYS = ("redact", "redact_key", "redact_allow", "redact_allow_fields", "redact_fields",
               "redact_disable", "redact_detectors", "redact_presidio")


def _names(values: Iterable[str]) -> frozenset[str]:
    return frozenset(normalize_name(v) for v in values)


@dataclass(frozen=True)
class Policy:
    """A complete redaction configuration.

    ``disabled``: categories not redacted (e.g. ``{"IP"}``). ``allow_values``: exact
    values never replaced (compared case-insensitively). ``allow_fields``: field names
    whose values are kept as they are. ``secret_fields``: more field names whose values
    are always replaced by ``[SECRET]``. ``detectors``: your own detectors, run after
    the built-in ones. ``key``: turns on pseudonymous replacements.
    """

    mode: str = "default"
    disabled: frozenset[str] = frozenset()
    allow_values: frozenset[str] = frozenset()
    allow_fields: frozenset[str] = frozenset()
    secret_fields: frozenset[str] = frozenset()
    detectors: tuple[Detector, ...] = ()
    key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown redaction policy {self.mode!r}; choose one of "
                             f"{', '.join(MODES)}")
        object.__setattr__(self, "disabled", frozenset(c.upper() for c in self.disabled))
        unknown = self.disabled - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown redaction categories {sorted(unknown)}; "
                             f"choose from {', '.join(CATEGORIES)}")
        object.__setattr__(self, "allow_values", frozenset(v.lower() for v in self.allow_values))
        object.__setattr__(self, "allow_fields", _names(self.allow_fields))
        object.__setattr__(self, "secret_fields", _names(self.secret_fields))
        if isinstance(self.key, str):
            object.__setattr__(self, "key", self.key.encode())

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Policy:
        """Build the policy named by ``TRACEVAULT_REDACT`` (default ``default``), with the
        key from ``TRACEVAULT_REDACT_KEY``; ``overrides`` are Policy fields."""
        env = os.environ if environ is None else environ
        mode = (env.get(ENV_MODE) or "default").strip().lower()
        if mode not in MODES:
            # A typo in the environment must not stop recording (capture would fail on
            # every event): it is said once, and the default policy applies.
            logging.getLogger("tracevault").error(
                "tracevault: %s=%r is not a redaction policy (%s); using 'default'",
                ENV_MODE, env.get(ENV_MODE), ", ".join(MODES))
            mode = "default"
        key = env.get(ENV_KEY) or None
        fields: dict[str, Any] = {"mode": mode, "key": key.encode() if key else None}
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields)

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any], environ: Mapping[str, str] | None = None
                   ) -> Policy:
        """Build the policy from ``configure()`` keywords (falling back to the
        environment): ``redact`` (a mode name, a :class:`Policy`, or ``False`` for off),
        ``redact_key``, ``redact_allow``, ``redact_allow_fields``, ``redact_fields``,
        ``redact_disable``, ``redact_detectors``, ``redact_presidio`` (``True`` or a spaCy
        model name: add Presidio names/locations when available, else log why)."""
        unknown = [k for k in extra if k.startswith("redact") and k not in _EXTRA_KEYS]
        if unknown:
            raise ValueError(f"unknown redaction settings {unknown}; use {', '.join(_EXTRA_KEYS)}")
        chosen = extra.get("redact")
        if isinstance(chosen, Policy):
            base = chosen
        elif chosen is False:
            base = cls(mode="off")
        elif chosen is None:
            base = cls.from_env(environ)
        elif chosen is True:
            base = cls.from_env(environ)
            base = base if base.enabled else replace(base, mode="default")
        elif isinstance(chosen, str):
            base = replace(cls.from_env(environ), mode=chosen.strip().lower())
        else:
            raise ValueError(f"redact= must be a policy name, a Policy or False, not {chosen!r}")
        changes: dict[str, Any] = {}
        if extra.get("redact_key") is not None:
            key = extra["redact_key"]
            changes["key"] = key.encode() if isinstance(key, str) else bytes(key)
        for name, attr in (("redact_allow", "allow_values"),
                           ("redact_allow_fields", "allow_fields"),
                           ("redact_fields", "secret_fields"),
                           ("redact_disable", "disabled")):
            if extra.get(name) is not None:
                changes[attr] = frozenset(getattr(base, attr)) | frozenset(extra[name])
        if extra.get("redact_detectors") is not None:
            changes["detectors"] = (*base.detectors, *extra["redact_detectors"])
        presidio = extra.get("redact_presidio")
        if presidio and base.enabled:
            from tracevault.redaction.presidio import DEFAULT_MODEL, presidio_detectors_or_none

            model = presidio if isinstance(presidio, str) else DEFAULT_MODEL
            found = presidio_detectors_or_none(model)
            changes["detectors"] = (*changes.get("detectors", base.detectors), *found)
        return replace(base, **changes) if changes else base

    # --- use ------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """Whether this policy redacts anything."""
        return self.mode != "off"

    @property
    def strict(self) -> bool:
        return self.mode == "strict"

    @cached_property
    def active_detectors(self) -> tuple[Detector, ...]:
        """The detectors this policy runs, in order of precedence."""
        dets = (*SECRET_DETECTORS, *PII_DETECTORS, *self.detectors)
        return tuple(d for d in dets
                     if d.category not in self.disabled and (self.strict or not d.strict_only))

    @cached_property
    def scanner(self) -> Scanner:
        """The :class:`Scanner` running :attr:`active_detectors`."""
        return Scanner(self.active_detectors, key_values="SECRET" not in self.disabled,
                       secret_names=self.secret_fields)

    @cached_property
    def prefilter(self) -> Prefilter | None:
        """The whole-event test that lets clean events skip the walk (``None`` for
        policies it cannot vouch for; see :mod:`tracevault.redaction.prefilter`)."""
        return Prefilter.for_policy(self)

    @cached_property
    def _normalizers(self) -> dict[str, Any]:
        return {d.name: d.normalize for d in self.active_detectors if d.normalize is not None}

    @cached_property
    def key_kinds(self) -> dict[str, int]:
        """Cache of :meth:`classify_key` results (field names repeat across events)."""
        return {}

    def classify_key(self, key: str) -> int:
        """Return how the Redactor treats a dict key: 0 = scan its value, 1 = its value is
        a secret, 2 = allowed field (kept as is), 4|0 = also scan the key itself."""
        if self.allow_fields and normalize_name(key) in self.allow_fields:
            kind = 2
        elif "SECRET" not in self.disabled and is_secret_name(key, self.secret_fields):
            kind = 1
        elif len(key) >= 5 and ("@" in key or any("0" <= c <= "9" for c in key)):
            kind = 4
        else:
            kind = 0
        cache = self.key_kinds
        if len(cache) >= 50_000:  # keys made of data (ids as keys) must not grow it forever
            cache.clear()
        cache[key] = kind
        return kind

    def allowed(self, value: str) -> bool:
        """Return whether ``value`` is on the allow-list."""
        return bool(self.allow_values) and value.lower() in self.allow_values

    def replacement(self, category: str, value: str, detector: str = "") -> str:
        """Return the text that replaces ``value``: ``[CATEGORY]`` or, with a key,
        ``[CATEGORY:hmac8]``."""
        if self.key is None:
            return f"[{category}]"
        normalize = self._normalizers.get(detector)
        canonical = normalize(value) if normalize is not None else value
        digest = hmac.new(self.key, f"{category}\x00{canonical}".encode("utf-8", "surrogatepass"),
                          hashlib.sha256).hexdigest()
        return f"[{category}:{digest[:8]}]"
