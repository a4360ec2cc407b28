"""The optional Presidio adapter: clear messages when unavailable, real detection when not.

No trained model can be downloaded here, so the end-to-end test builds a tiny spaCy
pipeline on disk (a blank English model with an entity ruler) and gives Presidio its
path: real Presidio, real spaCy, real adapter.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from tracevault.redaction import Policy, Redactor
from tracevault.redaction.presidio import PresidioUnavailable, presidio_detectors


def test_without_presidio_the_message_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)  # import fails
    with pytest.raises(PresidioUnavailable, match=r"pip install 'tracevault\[presidio\]'"):
        presidio_detectors()


def test_configure_flag_logs_why_and_keeps_the_builtins(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "presidio_analyzer", None)
    with caplog.at_level(logging.WARNING, logger="tracevault"):
        policy = Policy.from_extra({"redact_presidio": True})
    assert "Presidio names/locations are off" in caplog.text
    assert "pip install" in caplog.text
    text, _ = Redactor(policy).redact_text("Alice Martin <alice@example.com>")
    assert text == "Alice Martin <[EMAIL]>"


def test_a_missing_spacy_model_is_named_and_never_downloaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("presidio_analyzer")
    spacy_cli = pytest.importorskip("spacy.cli")

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("the adapter must not download a model")

    monkeypatch.setattr(spacy_cli, "download", no_download)
    with pytest.raises(PresidioUnavailable) as info:
        presidio_detectors(model="en_core_web_lg")
    message = str(info.value)
    assert "en_core_web_lg" in message
    assert "python -m spacy download en_core_web_lg" in message
    assert "built-in detectors still run" in message


def test_names_and_locations_found_through_presidio(tmp_path: Path) -> None:
    pytest.importorskip("presidio_analyzer")
    spacy = pytest.importorskip("spacy")
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "PERSON", "pattern": "Alice Martin"},
                        {"label": "GPE", "pattern": "Lyon"}])
    model = tmp_path / "tiny_en"
    nlp.to_disk(model)

    redactor = Redactor(Policy(detectors=tuple(presidio_detectors(model=str(model)))))
    text, findings = redactor.redact_text("Alice Martin moved to Lyon; mail alice@example.com")
    assert text == "[NAME] moved to [LOCATION]; mail [EMAIL]"
    assert [f.detector for f in findings] == ["presidio_name", "presidio_location", "email"]
    value, report = redactor.redact({"who": "Alice Martin", "where": ["in Lyon", "here"]})
    assert value == {"who": "[NAME]", "where": ["in [LOCATION]", "here"]}
    assert {(r["path"], r["category"]) for r in report} == {("who", "NAME"),
                                                            ("where[0]", "LOCATION")}
