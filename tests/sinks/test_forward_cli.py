"""`tracevault forward` options and what `tracevault status` shows after a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import tracevault
import tracevault.sinks.cli as sinks_cli
from tracevault.cli import main
from tracevault.sinks.base import PermanentError, SinkError
from tracevault.sinks.jsonl import JsonlSink
from tracevault.testing import capture_events


def _ledger(tmp_path: Path, monkeypatch: Any) -> str:
    monkeypatch.delenv("TRACEVAULT_SINKS", raising=False)
    monkeypatch.setenv("TRACEVAULT_JSONL_DIR", str(tmp_path / "out"))
    url = f"sqlite:///{tmp_path}/ledger.db"
    with capture_events(url):
        tracevault.AuditLogger().log_input("hi")
    return url


def test_a_forward_with_nothing_left_to_deliver_clears_the_last_error(
        tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    url = _ledger(tmp_path, monkeypatch)
    forward = ["forward", "--store", url, "--sink", "jsonl"]
    assert main(forward) == 0

    def broken(name: str) -> Any:
        raise SinkError("bad configuration")

    built = sinks_cli.build
    monkeypatch.setattr(sinks_cli, "build", broken)
    assert main(forward) == 1  # not started: the error is kept for `status`
    monkeypatch.setattr(sinks_cli, "build", built)
    assert main(forward) == 0  # configuration fixed; the cursor was already at the head
    capsys.readouterr()
    assert main(["status", "--store", url, "--sink", "jsonl", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["lag"], row["last_error"]) == (0, None)


@pytest.mark.parametrize("option", [["--timeout", "nan"], ["--timeout", "inf"],
                                    ["--timeout", "-1"], ["--batch-size", "0"]])
def test_forward_refuses_options_no_run_could_honour(
        tmp_path: Path, monkeypatch: Any, capsys: Any, option: list[str]) -> None:
    # NaN, above all: the retry deadline would never pass against a sink that is down.
    url = _ledger(tmp_path, monkeypatch)
    assert main(["forward", "--store", url, "--sink", "jsonl", *option]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and option[0] in err, err
    assert not (tmp_path / "out").exists()  # refused before any sink was built


def test_an_event_refused_for_good_is_reported_as_skipped_not_delivered(
        tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    monkeypatch.delenv("TRACEVAULT_SINKS", raising=False)
    url = f"sqlite:///{tmp_path}/ledger.db"
    with capture_events(url):
        for text in ("first", "poison", "third"):
            tracevault.AuditLogger().log_input(text)

    class Refusing(JsonlSink):
        def export(self, batch: Any) -> None:
            if any("poison" in str(e.event.data) for e in batch.events):
                raise PermanentError("HTTP 400: refused")
            super().export(batch)

    monkeypatch.setattr(sinks_cli, "build",
                        lambda name: Refusing(name=name, directory=str(tmp_path / "out")))
    forward = ["forward", "--store", url, "--sink", "jsonl"]
    assert main(forward) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        "jsonl: delivered 2 events, cursor 3 of 3; skipped 1 the sink refused for good (see "
        "`tracevault status`)\n")
    assert main(forward) == 0  # reported once: the cursor moved past it
    assert capsys.readouterr().out == "jsonl: delivered 0 events, cursor 3 of 3\n"
