"""Model prices and the cost of a call, shared by every integration.

Prices are USD per million tokens. A model is matched by its exact name, else by the
longest known prefix (so ``gpt-4o-mini-2024-07-18`` uses ``gpt-4o-mini``), ignoring a
``provider/`` or ``provider:`` prefix. Users extend or override the table with
:func:`set_price` or a JSON file named by ``TRACEVAULT_PRICES``
(``{"model": {"input": 1.0, "output": 2.0, "cached_input": 0.5}}``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million input, output, cached-input (read from the prompt cache) and
    cache-write tokens (written to it: Anthropic bills them at 1.25x input); a missing
    cache rate is the input rate."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None


# Public list prices (USD / 1M tokens) of widely used models; extend with set_price().
BUILTIN_PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00, 1.25),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4.1": Price(2.00, 8.00, 0.50),
    "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
    "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
    "gpt-5": Price(1.25, 10.00, 0.125),
    "gpt-5-mini": Price(0.25, 2.00, 0.025),
    "gpt-5-nano": Price(0.05, 0.40, 0.005),
    "o1": Price(15.00, 60.00, 7.50),
    "o1-mini": Price(1.10, 4.40, 0.55),
    "o1-pro": Price(150.00, 600.00),
    "o3": Price(2.00, 8.00, 0.50),
    "o3-pro": Price(20.00, 80.00),
    "o3-mini": Price(1.10, 4.40, 0.55),
    "o4-mini": Price(1.10, 4.40, 0.275),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "claude-opus-4": Price(15.00, 75.00, 1.50, 18.75),
    "claude-opus-4-5": Price(5.00, 25.00, 0.50, 6.25),
    "claude-sonnet-4": Price(3.00, 15.00, 0.30, 3.75),
    "claude-3-7-sonnet": Price(3.00, 15.00, 0.30, 3.75),
    "claude-3-5-sonnet": Price(3.00, 15.00, 0.30, 3.75),
    "claude-3-5-haiku": Price(0.80, 4.00, 0.08, 1.00),
    "claude-haiku-4": Price(1.00, 5.00, 0.10, 1.25),
    "gemini-2.5-pro": Price(1.25, 10.00, 0.31),
    "gemini-2.5-flash": Price(0.30, 2.50, 0.075),
    "gemini-2.5-flash-lite": Price(0.10, 0.40, 0.025),
    "gemini-2.0-flash": Price(0.10, 0.40, 0.025),
    "mistral-large": Price(2.00, 6.00),
    "mistral-small": Price(0.10, 0.30),
    "llama-3.1-70b": Price(0.88, 0.88),
    "llama-3.1-8b": Price(0.18, 0.18),
}

_lock = threading.Lock()
_overrides: dict[str, Price] = {}
_version = 0  # of _overrides (see overrides())
_env_loaded = False
# price_for() runs for every model call on the caller's thread; the prefix search is
# remembered per model name until the table changes (set_price clears it).
_matched: dict[str, Price | None] = {}
_MAX_MATCHED = 1024


def overrides() -> tuple[int, dict[str, Price]]:
    """The version of the user's prices (it changes with every change) and the prices:
    what a writer process needs to price model calls as this process does."""
    _ensure_env()
    with _lock:
        return _version, dict(_overrides)


def use_overrides(prices: Mapping[str, Price]) -> None:
    """Replace the user's prices with ``prices`` (from :func:`overrides`, which holds
    those of ``TRACEVAULT_PRICES`` too: not loaded again over them)."""
    global _version, _env_loaded
    _env_loaded = True
    with _lock:
        _overrides.clear()
        _overrides.update(prices)
        _matched.clear()
        _version += 1


def set_price(
    model: str, *, input: float, output: float, cached_input: float | None = None,
    cache_write: float | None = None,
) -> None:
    """Add or override the price of ``model`` (USD per million tokens)."""
    if min(input, output, cached_input or 0.0, cache_write or 0.0) < 0:
        raise ValueError("prices must not be negative")
    _ensure_env()  # TRACEVAULT_PRICES first: a price set here is not loaded over later
    global _version
    with _lock:
        _overrides[model.lower()] = Price(input, output, cached_input, cache_write)
        _matched.clear()
        _version += 1


def clear_prices() -> None:
    """Forget every user price: back to the built-in table."""
    global _version
    with _lock:
        _overrides.clear()
        _matched.clear()
        _version += 1


def load_prices(source: str | Mapping[str, Any]) -> int:
    """Load prices from a JSON file path or a mapping; return how many were loaded."""
    if isinstance(source, str):
        with open(source, encoding="utf-8") as fh:
            source = json.load(fh)
    if not isinstance(source, Mapping):
        raise ValueError("a price table must be a JSON object of model -> {input, output}")
    for model, entry in source.items():
        try:
            set_price(
                str(model),
                input=float(entry["input"]),
                output=float(entry["output"]),
                cached_input=_rate(entry, "cached_input"),
                cache_write=_rate(entry, "cache_write"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad price entry for {model!r}: {exc}") from None
    return len(source)


def _rate(entry: Mapping[str, Any], key: str) -> float | None:
    return float(entry[key]) if entry.get(key) is not None else None


def _ensure_env() -> None:
    global _env_loaded
    if not _env_loaded:
        _env_loaded = True
        path = os.environ.get("TRACEVAULT_PRICES")
        if path:
            try:
                load_prices(path)
            except Exception as exc:  # a bad file must not cost a model call its record
                logging.getLogger("tracevault").error(
                    "tracevault: TRACEVAULT_PRICES=%r not loaded in full (%s); the built-in "
                    "prices apply where it set none", path, exc)


def price_for(model: str | None) -> Price | None:
    """Return the price of ``model`` (exact name, else longest prefix), or ``None``.

    Change prices with :func:`set_price` or :func:`load_prices` (not by editing
    ``BUILTIN_PRICES`` in place): matches are remembered until the table changes.
    """
    if not model:
        return None
    _ensure_env()
    try:
        return _matched[model]
    except KeyError:
        pass
    with _lock:  # not interleaved with set_price, so no stale match is remembered
        price = _match(model)
        if len(_matched) >= _MAX_MATCHED:  # model names are few; memory stays bounded
            _matched.clear()
        _matched[model] = price
    return price


# Leading name parts that say where a model runs, not which it is: Bedrock's region
# and vendor ("us.anthropic.claude-…").
_HOST_PREFIXES = frozenset({"us", "eu", "apac", "global", "anthropic", "meta", "amazon",
                            "mistral", "cohere", "ai21", "deepseek", "openai", "qwen"})


def _names(model: str) -> list[str]:
    """The names to look ``model`` up by, most specific first: as given, then without a
    provider path or host prefix, then without a ``:tag`` (``llama3.1:8b``, Bedrock's
    ``…-v2:0``). A fine-tuned OpenAI model (``ft:base:org::id``) is its base model."""
    name = model.lower()
    if name.startswith("ft:"):
        return [name, name[3:].split(":", 1)[0]]
    names = [name]
    base = name.rsplit("/", 1)[-1]
    provider, colon, rest = base.partition(":")
    if colon and provider.isalpha():  # "openai:gpt-4o" (LangChain's init_chat_model)
        base = rest
    parts = base.split(".")
    while len(parts) > 1 and parts[0] in _HOST_PREFIXES:
        del parts[0]
    names.append(".".join(parts))
    if ":" in names[-1]:
        names.append(names[-1].split(":", 1)[0])
    return names


# What may follow a known name and still be the same model at the same price: dates
# (-20250514, -2024-08-06, -2411, -05-20), a minor or revision number (-1, -001),
# -latest, -vN, -instruct, Vertex's @date. Anything else (-mini, -pro, -lite, -audio)
# is another model, with a price of its own: unknown rather than wrong.
_VERSION = re.compile(r"(?:-(?:\d{1,4}|\d{4}-?\d{2}-?\d{2}|\d{2}-\d{2}|latest|instruct"
                      r"|v\d+(?:\.\d+)*))+(?:@.*)?|@.*")


def _match(model: str) -> Price | None:
    names = _names(model)
    for name in names:
        for table in (_overrides, BUILTIN_PRICES):
            if name in table:
                return table[name]
    name = names[-1]  # else the longest known name it is a version of
    for table in (_overrides, BUILTIN_PRICES):
        best: str | None = None
        for known in table:
            if (name.startswith(known) and (best is None or len(known) > len(best))
                    and _VERSION.fullmatch(name, len(known))):
                best = known
        if best is not None:
            return table[best]
    return None


def billed_model(named: str | None, reported: str | None) -> str | None:
    """Return the model a call is recorded and priced as: ``reported`` (by the
    provider's response) when it names the same model more precisely (``gpt-4o`` ->
    ``gpt-4o-2024-08-06``) or when only it has a price (a deployment name such as
    Azure's); else ``named`` (what the call was made with)."""
    if not reported or reported == named:
        return named or reported
    if not named:
        return reported
    if reported.lower().startswith(named.lower().rsplit("/", 1)[-1]):
        return reported
    if price_for(named) is None and price_for(reported) is not None:
        return reported
    return named


def cost_of(
    model: str | None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    cached_tokens: int | None = None,
    cache_write_tokens: int | None = None,
) -> float | None:
    """Return the USD cost of a call, or ``None`` when the model's price is unknown.

    ``cached_tokens`` (read from the prompt cache) and ``cache_write_tokens`` (written
    to it) are parts of ``input_tokens``, billed at their own rates where the model has
    them.
    """
    price = price_for(model)
    if price is None:
        return None
    inp = input_tokens or 0
    cached = min(cached_tokens or 0, inp)
    written = min(cache_write_tokens or 0, inp - cached)
    fresh = inp - cached - written
    cached_rate = price.cached_input if price.cached_input is not None else price.input
    write_rate = price.cache_write if price.cache_write is not None else price.input
    total = (fresh * price.input + cached * cached_rate + written * write_rate
             + (output_tokens or 0) * price.output)
    return round(total / 1_000_000, 10)


def usage_cost(model: str | None, usage: Mapping[str, Any]) -> float | None:
    """Return the USD cost of a call's ``usage`` (the schema's ``{input, output, cached,
    cache_write, …}``), or ``None`` when the model's price is unknown."""
    return cost_of(model, usage.get("input"), usage.get("output"), usage.get("cached"),
                   usage.get("cache_write"))
