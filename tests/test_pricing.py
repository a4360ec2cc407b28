"""The shared price table: lookups, cached tokens, user overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracevault import pricing


def test_exact_prefix_and_provider_prefixed_names() -> None:
    assert pricing.price_for("gpt-4o-mini") == pricing.BUILTIN_PRICES["gpt-4o-mini"]
    assert pricing.price_for("gpt-4o-mini-2024-07-18") == pricing.BUILTIN_PRICES["gpt-4o-mini"]
    assert pricing.price_for("gpt-4o-2024-08-06") == pricing.BUILTIN_PRICES["gpt-4o"]
    assert pricing.price_for("openai/gpt-4o") == pricing.BUILTIN_PRICES["gpt-4o"]
    assert pricing.price_for("ft:gpt-4o-mini:acme::abc") == pricing.BUILTIN_PRICES["gpt-4o-mini"]
    assert pricing.price_for("unknown-model") is None
    assert pricing.price_for(None) is None


@pytest.mark.parametrize(("model", "priced_as"), [
    ("claude-sonnet-4-20250514", "claude-sonnet-4"),
    ("claude-opus-4-1-20250805", "claude-opus-4"),
    ("claude-3-5-sonnet-latest", "claude-3-5-sonnet"),
    ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet"),  # Vertex
    ("anthropic.claude-3-5-sonnet-20241022-v2:0", "claude-3-5-sonnet"),  # Bedrock
    ("gemini-2.0-flash-001", "gemini-2.0-flash"),
    ("mistral-large-2411", "mistral-large"),
    ("llama-3.1-70b-instruct", "llama-3.1-70b"),
    ("o1-mini-2024-09-12", "o1-mini"),
    ("gpt-4o-audio-preview", None),  # another model than gpt-4o, at another price
    ("o3-deep-research", None),
    ("gemini-2.5-flash-image", None),
])
def test_a_known_name_prices_its_versions_not_its_siblings(
    model: str, priced_as: str | None
) -> None:
    expected = pricing.BUILTIN_PRICES[priced_as] if priced_as is not None else None
    assert pricing.price_for(model) == expected


def test_cost_bills_cached_input_at_the_cached_rate() -> None:
    # gpt-4o-mini: 0.15 in, 0.60 out, 0.075 cached per million tokens
    assert pricing.cost_of("gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)
    assert pricing.cost_of("gpt-4o-mini", 0, 1_000_000) == pytest.approx(0.60)
    assert pricing.cost_of("gpt-4o-mini", 1_000_000, 0, cached_tokens=400_000) == pytest.approx(
        0.6 * 0.15 + 0.4 * 0.075
    )
    assert pricing.cost_of("no-such-model", 10, 10) is None


def test_user_prices_override_and_extend(tmp_path: Path) -> None:
    pricing.set_price("acme-llm", input=1.0, output=2.0)
    assert pricing.cost_of("acme-llm-v2", 1_000_000, 1_000_000) == pytest.approx(3.0)
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"gpt-4o": {"input": 100, "output": 100}}))
    assert pricing.load_prices(str(path)) == 1
    assert pricing.cost_of("gpt-4o", 1_000_000, 0) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="bad price entry"):
        pricing.load_prices({"x": {"input": 1}})
    with pytest.raises(ValueError, match="negative"):
        pricing.set_price("x", input=-1, output=1)
    pricing.clear_prices()
    assert pricing.cost_of("gpt-4o", 1_000_000, 0) == pytest.approx(2.5)


def test_a_new_price_applies_to_models_already_looked_up() -> None:
    # Matches are remembered per model name; changing the table must not leave them stale.
    assert pricing.price_for("acme-2-v3") is None
    assert pricing.price_for("gpt-4o-mini-2024-07-18") == pricing.BUILTIN_PRICES["gpt-4o-mini"]
    pricing.set_price("acme-2", input=1.0, output=1.0)
    pricing.set_price("gpt-4o-mini-2024", input=9.0, output=9.0)
    try:
        assert pricing.price_for("acme-2-v3") == pricing.Price(1.0, 1.0)
        assert pricing.price_for("gpt-4o-mini-2024-07-18") == pricing.Price(9.0, 9.0)
    finally:
        pricing.clear_prices()
    assert pricing.price_for("acme-2-v3") is None


@pytest.mark.parametrize("content", [None, "{not json", '{"gpt-4o": {"input": "cheap"}}'],
                         ids=["missing", "invalid", "bad-entry"])
def test_a_bad_price_file_in_the_environment_is_logged_and_the_built_ins_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    content: str | None,
) -> None:
    path = tmp_path / "prices.json"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("TRACEVAULT_PRICES", str(path))
    monkeypatch.setattr(pricing, "_env_loaded", False)
    pricing.clear_prices()
    # A model call's cost is read on the ledger writer: it must get a price, not a raise.
    assert pricing.cost_of("gpt-4o", 1_000_000, 0) == pytest.approx(2.5)
    assert f"TRACEVAULT_PRICES={str(path)!r} not loaded" in caplog.text


def test_names_with_hosts_tags_and_providers_find_their_price() -> None:
    sonnet = pricing.BUILTIN_PRICES["claude-3-5-sonnet"]
    assert pricing.price_for("anthropic.claude-3-5-sonnet-20241022-v2:0") == sonnet  # Bedrock
    assert pricing.price_for("us.anthropic.claude-3-5-sonnet-20241022-v2:0") == sonnet
    mini = pricing.BUILTIN_PRICES["gpt-4o-mini"]
    assert pricing.price_for("openai:gpt-4o-mini") == mini  # init_chat_model's form
    assert pricing.price_for("openrouter/openai/gpt-4o-mini:free") == mini
    pricing.set_price("llama3.1:70b", input=3, output=15)  # an exact name with a colon
    pricing.set_price("anthropic.claude-3-5-sonnet-20240620-v1:0", input=4, output=16)
    try:
        assert pricing.cost_of("llama3.1:70b", 1000, 100) == pytest.approx(0.0045)
        assert pricing.price_for("anthropic.claude-3-5-sonnet-20240620-v1:0") == (
            pricing.Price(4, 16))
    finally:
        pricing.clear_prices()


def test_the_billed_model_is_the_providers_when_more_precise_or_priced() -> None:
    assert pricing.billed_model("prod-chat", "gpt-4o-2024-08-06") == "gpt-4o-2024-08-06"
    assert pricing.billed_model("gpt-4o", "gpt-4o-2024-05-13") == "gpt-4o-2024-05-13"
    assert pricing.billed_model("openai/gpt-4o", "gpt-4o-2024-08-06") == "gpt-4o-2024-08-06"
    assert pricing.billed_model("gpt-4o-mini", "gpt-4o") == "gpt-4o-mini"  # both priced
    assert pricing.billed_model(None, "gpt-4o") == "gpt-4o"
    assert pricing.billed_model("gpt-4o", None) == "gpt-4o"


def test_cache_writes_are_billed_at_their_rate_and_reads_at_theirs() -> None:
    # claude-sonnet-4: 3.00 in, 15.00 out, 0.30 cache read, 3.75 cache write per million
    usage = {"input": 1_000_000, "output": 0, "cached": 200_000, "cache_write": 300_000}
    assert pricing.usage_cost("claude-sonnet-4", usage) == pytest.approx(
        0.5 * 3.0 + 0.2 * 0.30 + 0.3 * 3.75)
    # A model without a cache-write rate bills the writes as input.
    assert pricing.cost_of("gpt-4o", 1_000_000, 0, cache_write_tokens=400_000) == (
        pytest.approx(2.5))
    pricing.load_prices({"acme": {"input": 1, "output": 2, "cache_write": 4}})
    try:
        assert pricing.cost_of("acme", 1_000_000, 0, cache_write_tokens=500_000) == (
            pytest.approx(2.5))
    finally:
        pricing.clear_prices()


def test_a_user_price_beats_the_price_file_here_and_in_a_writer_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent's process loaded TRACEVAULT_PRICES and then set its own price for the
    # same model; the writer process (same environment) gets the table and must not
    # load the file again over it.
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"house-model": {"input": 1.0, "output": 1.0}}))
    monkeypatch.setenv("TRACEVAULT_PRICES", str(path))
    monkeypatch.setattr(pricing, "_env_loaded", False)
    pricing.clear_prices()
    try:
        pricing.set_price("house-model", input=7.0, output=7.0)
        # In this process too: the file, read at the first lookup, does not win.
        assert pricing.cost_of("house-model", 1_000_000, 0) == pytest.approx(7.0)
        version, table = pricing.overrides()
        pricing.clear_prices()  # ... the writer process, which starts with none loaded
        monkeypatch.setattr(pricing, "_env_loaded", False)
        pricing.use_overrides(table)
        assert pricing.cost_of("house-model", 1_000_000, 0) == pytest.approx(7.0)
        assert pricing.overrides()[0] != version  # a change of its own
    finally:
        pricing.clear_prices()
