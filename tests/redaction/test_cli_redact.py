"""``tracevault redact``: stdin to stdout, ``--json``, ``--explain``."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from tracevault.cli import main


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str,
        *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(["redact", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_text_from_stdin_to_stdout(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(monkeypatch, capsys,
                         "mail bob@example.com\ncard 4111-1111-1111-1111 from 10.2.3.4\n")
    assert code == 0
    assert out == "mail [EMAIL]\ncard [CARD] from [IP]\n"
    assert err == ""


def test_explain_lists_findings_on_stderr_without_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(monkeypatch, capsys, "x\nmail bob@example.com\n", "--explain")
    assert code == 0 and out == "x\nmail [EMAIL]\n"
    assert err.splitlines() == ["EMAIL\temail\tline 2 col 6\t15 chars", "1 values redacted"]
    assert "bob" not in err


def test_json_redacts_every_string(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    doc = {"user": {"email": "a@example.com", "password": "x1", "notes": ["call 415-555-2671"]},
           "n": 3}
    code, out, err = run(monkeypatch, capsys, json.dumps(doc), "--json", "--explain")
    assert code == 0
    assert json.loads(out) == {"user": {"email": "[EMAIL]", "password": "[SECRET]",
                                        "notes": ["call [PHONE]"]}, "n": 3}
    assert "EMAIL\t1\tuser.email" in err and "3 values redacted" in err


def test_json_that_is_not_json_is_a_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(monkeypatch, capsys, "not json", "--json")
    assert code == 2 and out == ""
    assert err.startswith("tracevault: error: stdin is not JSON")


def test_strict_policy_option(monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert run(monkeypatch, capsys, "ref 536904399", "--policy", "strict")[1] == "ref [SSN]"
    assert run(monkeypatch, capsys, "ref 536904399")[1] == "ref 536904399"


def test_the_installed_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tracevault.cli", "redact"], input="token=abc123secret ok",
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "token=[SECRET] ok"
