"""Redaction: PII and secrets are replaced before anything is stored or sent.

Importing this package registers the :class:`Redactor` as the first default middleware
of every pipeline (the core imports it when it builds one), so redaction is on unless
``TRACEVAULT_REDACT=off`` or ``configure(redact=False)`` says otherwise.

    from tracevault.redaction import Redactor, Policy, Detector

    text, findings = Redactor().redact_text("mail bob@example.com")   # "mail [EMAIL]"
    tracevault.configure(redact_key="k", redact_allow=["support@example.com"],
                         redact_detectors=[Detector.pattern_of("employee", r"EMP-\\d{6}")])
"""

from __future__ import annotations

from tracevault.capture import register_default_middleware
from tracevault.redaction.detectors import CATEGORIES, PII_DETECTORS, Detector
from tracevault.redaction.policy import MODES, Policy
from tracevault.redaction.redactor import (
    REDACTIONS_KEY,
    RedactionError,
    Redactor,
    redactor_factory,
)
from tracevault.redaction.scanner import Finding, Scanner
from tracevault.redaction.secrets import SECRET_DETECTORS, is_secret_name

__all__ = [
    "CATEGORIES",
    "MODES",
    "PII_DETECTORS",
    "REDACTIONS_KEY",
    "SECRET_DETECTORS",
    "Detector",
    "Finding",
    "Policy",
    "RedactionError",
    "Redactor",
    "Scanner",
    "is_secret_name",
    "redactor_factory",
]

register_default_middleware(redactor_factory)
