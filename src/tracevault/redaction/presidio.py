"""Optional names and locations through Microsoft Presidio (``pip install tracevault[presidio]``).

The built-in detectors find values with a fixed shape; people's names and places need a
language model. This adapter turns Presidio's ``AnalyzerEngine`` with a spaCy model into
two detectors, ``[NAME]`` (PERSON) and ``[LOCATION]`` (LOCATION, GPE)::

    from tracevault.redaction.presidio import presidio_detectors
    tracevault.configure(redact_detectors=presidio_detectors(model="en_core_web_lg"))
    # or, never failing: configure(redact_presidio=True)

The spaCy model must already be installed (``python -m spacy download en_core_web_lg``):
this module never downloads one (Presidio would, at run time, on the writer thread).
Without Presidio or without the model, :func:`presidio_detectors` raises
:class:`PresidioUnavailable` saying exactly what is missing, and
``configure(redact_presidio=True)`` logs that message and goes on with the built-in
detectors. A spaCy pass costs milliseconds per event, far more than the built-ins.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tracevault.redaction.detectors import Detector

log = logging.getLogger("tracevault")

DEFAULT_MODEL = "en_core_web_lg"
ENTITY_CATEGORIES: dict[str, str] = {"PERSON": "NAME", "LOCATION": "LOCATION", "GPE": "LOCATION"}


class PresidioUnavailable(RuntimeError):
    """Presidio or its spaCy model is not installed (the message says which, and how)."""


def _load_engine(model: str, language: str) -> Any:
    try:
        analyzer = importlib.import_module("presidio_analyzer")
        nlp_engine = importlib.import_module("presidio_analyzer.nlp_engine")
        spacy_util = importlib.import_module("spacy.util")
    except ImportError as exc:
        raise PresidioUnavailable(
            f"Presidio is not installed ({exc.name or exc}): pip install 'tracevault[presidio]'. "
            "The built-in detectors do not need it."
        ) from None
    if not (spacy_util.is_package(model) or Path(model).exists()):
        raise PresidioUnavailable(
            f"spaCy model {model!r} is not installed, so Presidio cannot find names or "
            f"locations: run `python -m spacy download {model}` (or pass model= an installed "
            "one, e.g. en_core_web_sm). The built-in detectors still run."
        )
    provider = nlp_engine.NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": language, "model_name": model}],
    })
    return analyzer.AnalyzerEngine(nlp_engine=provider.create_engine(),
                                   supported_languages=[language])


class _Analysis:
    """One Presidio call per text, shared by the NAME and LOCATION detectors."""

    def __init__(self, engine: Any, language: str, threshold: float) -> None:
        self.engine = engine
        self.language = language
        self.threshold = threshold
        self._last = threading.local()

    def results(self, text: str, pos: int, endpos: int) -> list[tuple[int, int, str]]:
        key = (id(text), len(text), pos, endpos)
        if getattr(self._last, "key", None) == key:
            cached: list[tuple[int, int, str]] = self._last.value
            return cached
        found = [
            (pos + r.start, pos + r.end, ENTITY_CATEGORIES[r.entity_type])
            # the scanner joins an event's strings with NUL, which spaCy does not take
            # for a boundary; a newline has the same length and is one
            for r in self.engine.analyze(text=text[pos:endpos].replace("\x00", "\n"),
                                         language=self.language,
                                         entities=list(ENTITY_CATEGORIES),
                                         score_threshold=self.threshold)
        ]
        self._last.key, self._last.value = key, found
        return found

    def finder(self, category: str) -> Any:
        def find(text: str, pos: int, endpos: int) -> Iterator[tuple[int, int]]:
            for start, end, cat in self.results(text, pos, endpos):
                if cat == category:
                    yield start, end
        return find


def presidio_detectors(
    model: str = DEFAULT_MODEL, *, language: str = "en", threshold: float = 0.5
) -> list[Detector]:
    """Return ``[NAME]`` and ``[LOCATION]`` detectors backed by Presidio and ``model``.

    Raises :class:`PresidioUnavailable` if Presidio or the spaCy model is missing.
    """
    analysis = _Analysis(_load_engine(model, language), language, threshold)
    return [
        Detector(f"presidio_{cat.lower()}", cat, finder=analysis.finder(cat))
        for cat in ("NAME", "LOCATION")
    ]


def presidio_detectors_or_none(model: str = DEFAULT_MODEL, **kwargs: Any) -> Sequence[Detector]:
    """Like :func:`presidio_detectors`, but log why and return none when unavailable."""
    try:
        return presidio_detectors(model, **kwargs)
    except PresidioUnavailable as exc:
        log.warning("tracevault: Presidio names/locations are off: %s", exc)
        return ()
