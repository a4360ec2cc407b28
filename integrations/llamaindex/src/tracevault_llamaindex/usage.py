"""Model name, provider, parameters and token usage of a LlamaIndex LLM call.

LlamaIndex has no common usage field: each LLM class puts counts in the response's
``additional_kwargs`` (``prompt_tokens``/``completion_tokens``) or in ``raw`` (an SDK
object or dict with ``usage``/``usage_metadata``). :func:`token_usage` looks in all of
them and returns the schema's ``{input, output, total, cached, cache_write, reasoning}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tracevault_llamaindex.payloads import plain

_INPUT = ("prompt_tokens", "input_tokens", "prompt_token_count", "input_token_count",
          "inputTokens", "prompt_eval_count")  # ... Bedrock Converse, Ollama
_OUTPUT = (
    "completion_tokens",
    "output_tokens",
    "candidates_token_count",
    "output_token_count",
    "generated_tokens",
    "outputTokens",  # Bedrock Converse
    "eval_count",  # Ollama
)
_TOTAL = ("total_tokens", "total_token_count", "totalTokens")
# Anthropic's input_tokens and Bedrock Converse's inputTokens leave out what was read
# from or written to the prompt cache.
_ANTHROPIC_CACHE = ("cache_read_input_tokens", "cache_creation_input_tokens")
_BEDROCK_CACHE = ("cacheReadInputTokens", "cacheWriteInputTokens")
_CACHED = ("cache_read_input_tokens", "cached_content_token_count", "cached_tokens",
           "cacheReadInputTokens")
_CACHE_WRITE = ("cache_creation_input_tokens", "cacheWriteInputTokens")
_REASONING = ("reasoning_tokens", "thoughts_token_count")
_REASONING_DETAILS = (
    "completion_tokens_details",
    "output_tokens_details",
    "output_token_details",
)
_PARAMETERS = (
    "temperature",
    "max_tokens",
    "max_new_tokens",
    "num_output",
    "top_p",
    "top_k",
    "frequency_penalty",
    "presence_penalty",
    "seed",
    "stop",
    "reasoning_effort",
    "context_window",
)
_PARAMETER_SET = frozenset(_PARAMETERS)
_PARAMETER_ORDER = {key: i for i, key in enumerate(_PARAMETERS)}
_CALL_PARAMETERS = ("tool_choice", "tool_required", "allow_parallel_tool_calls", "temperature")


_mapping_types: dict[type, bool] = {dict: True}  # type -> is a Mapping (ABC checks are slow)
_MAX_TYPES = 1_024


def _is_mapping(cls: type) -> bool:
    known = _mapping_types.get(cls)
    if known is None:
        if len(_mapping_types) >= _MAX_TYPES:
            _mapping_types.clear()
            _mapping_types[dict] = True
        known = _mapping_types[cls] = issubclass(cls, Mapping)
    return known


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    cls = type(obj)
    if cls is dict:  # the common case, without the slow ABC check
        return obj.get(key)
    mapping = _mapping_types.get(cls)
    if mapping is None:
        mapping = _is_mapping(cls)
    if mapping:
        return obj.get(key)
    try:
        return getattr(obj, key, None)
    except Exception:
        return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _first(sources: list[Any], keys: tuple[str, ...]) -> int | None:
    found = _first_in(sources, keys)
    return found[0] if found is not None else None


def _first_in(sources: list[Any], keys: tuple[str, ...]) -> tuple[int, Any, str] | None:
    """The first count under ``keys`` in ``sources``, with the source and key it came
    from (how it is to be read depends on the provider that wrote it)."""
    for source in sources:
        for key in keys:
            found = _int(_get(source, key))
            if found is not None:
                return found, source, key
    return None


def _usage_sources(response: Any) -> list[Any]:
    sources: list[Any] = []
    # Chat responses converted from completions carry the counts on the message.
    for extra in (_get(response, "additional_kwargs"),
                  _get(_get(response, "message"), "additional_kwargs")):
        if extra:
            sources.append(extra)
            for key in ("usage", "usage_metadata", "token_usage"):
                nested = _get(extra, key)
                if nested is not None:
                    sources.append(nested)
    raw = _get(response, "raw")
    if raw is not None:
        for key in ("usage", "usage_metadata", "token_usage"):
            nested = _get(raw, key)
            if nested is not None:
                sources.append(nested)
        meta = _get(raw, "response_metadata")
        if meta is not None:
            sources.append(_get(meta, "usage") or _get(meta, "token_usage"))
        sources.append(raw)
    return [s for s in sources if s is not None]


# Every key token_usage reads from a source. A plain dict holding none of them cannot
# contribute a count, so it is skipped without the lookups (most raw responses are
# dicts of content, not of usage).
_DETAILS_CACHED = ("prompt_tokens_details", "input_tokens_details", "input_token_details")
_USAGE_KEYS = frozenset(
    _INPUT + _OUTPUT + _TOTAL + _CACHED + _CACHE_WRITE + _REASONING + _DETAILS_CACHED
    + _REASONING_DETAILS + _ANTHROPIC_CACHE + _BEDROCK_CACHE
)


def may_hold_usage(source: Any) -> bool:
    """Return ``False`` only for a source :func:`counts_in` would find nothing in."""
    return type(source) is not dict or not _USAGE_KEYS.isdisjoint(source)


def token_usage(response: Any) -> dict[str, int]:
    """Return the token counts found on ``response`` (only the keys that were found)."""
    return counts_in([s for s in _usage_sources(response) if may_hold_usage(s)])


def counts_in(sources: list[Any]) -> dict[str, int]:
    """Return the token counts found in ``sources``, the first source holding a count
    winning (only the keys that were found)."""
    if not sources:
        return {}
    usage: dict[str, int] = {}
    inp, out = _first_in(sources, _INPUT), _first_in(sources, _OUTPUT)
    found = {
        "input": _input_of(inp),
        "output": _output_of(out, sources),
        "total": _first(sources, _TOTAL),
        "cached": _first(sources, _CACHED),
        "cache_write": _first(sources, _CACHE_WRITE),
        "reasoning": _first(sources, _REASONING),
    }
    if found["cached"] is None:
        for source in sources:
            for key in _DETAILS_CACHED:
                details = _get(source, key)
                cached = _int(_get(details, "cached_tokens")) or _int(_get(details, "cache_read"))
                if cached is not None:
                    found["cached"] = cached
                    break
    if found["reasoning"] is None:
        for source in sources:
            for key in _REASONING_DETAILS:
                details = _get(source, key)
                reasoning = _int(_get(details, "reasoning_tokens")) or _int(
                    _get(details, "reasoning")
                )
                if reasoning is not None:
                    found["reasoning"] = reasoning
                    break
    if found["total"] is None and found["input"] is not None and found["output"] is not None:
        found["total"] = found["input"] + found["output"]
    for key, value in found.items():
        if value is not None:
            usage[key] = value
    return usage


def model_of(model_dict: Any, response: Any = None) -> str | None:
    """Return the model name from the LLM's payload, else from the raw response."""
    get = model_dict.get if type(model_dict) is dict else lambda key: _get(model_dict, key)
    for key in ("model", "model_name", "model_id", "deployment_name", "engine"):
        value = get(key)
        if isinstance(value, str) and value:
            return value
    raw = _get(response, "raw")
    value = _get(raw, "model") or _get(raw, "model_version")
    if isinstance(value, str) and value:
        return value
    return None


def provider_of(model_dict: Any) -> str | None:
    """Return the LLM class name LlamaIndex reports (e.g. ``OpenAI``, ``Anthropic``)."""
    value = _get(model_dict, "class_name")
    return value if isinstance(value, str) else None


def parameters_of(model_dict: Any, call_kwargs: Any) -> dict[str, Any]:
    """Return sampling parameters of the model and of this call (no secrets, no tools)."""
    params: dict[str, Any] = {}
    get: Callable[[str], Any]
    if type(model_dict) is dict:  # look up only the parameter keys it has, in our order
        keys: Any = sorted(_PARAMETER_SET.intersection(model_dict),
                           key=_PARAMETER_ORDER.__getitem__)
        get = model_dict.get
    else:
        keys = _PARAMETERS

        def get(key: str) -> Any:
            return _get(model_dict, key)
    # Copied (plain): the handlers queue what this returns without copying it again.
    for key in keys:
        value = get(key)
        if value is not None and isinstance(value, (str, int, float, bool, list)):
            params[key] = plain(value)
    extra = _get(model_dict, "additional_kwargs")
    if isinstance(extra, Mapping) and extra:
        for key in _PARAMETERS:
            value = extra.get(key)
            if value is not None and isinstance(value, (str, int, float, bool, list)):
                params[key] = plain(value)
    if isinstance(call_kwargs, Mapping) and call_kwargs:
        for key in _CALL_PARAMETERS:
            value = call_kwargs.get(key)
            if value is not None and isinstance(value, (str, int, float, bool, dict)):
                params[key] = plain(value)
    return params


def _input_of(found: tuple[int, Any, str] | None) -> int | None:
    if found is None:
        return None
    count, source, key = found
    if key == "input_tokens":  # Anthropic's leave out the cache reads and writes
        count += sum(_int(_get(source, k)) or 0 for k in _ANTHROPIC_CACHE)
    elif key == "inputTokens":  # so do Bedrock Converse's
        count += sum(_int(_get(source, k)) or 0 for k in _BEDROCK_CACHE)
    return count


def _output_of(found: tuple[int, Any, str] | None, sources: list[Any]) -> int | None:
    if found is None:
        return None
    count, _, key = found
    if key in ("candidates_token_count", "completion_tokens"):
        # Gemini bills its thinking as output, counted apart (thoughts_token_count) in
        # its usage; LlamaIndex's google-genai copies candidates_token_count to the
        # response's completion_tokens, while the thoughts stay in the raw usage.
        thoughts = _first_in(sources, ("thoughts_token_count",))
        if thoughts is not None:
            count += thoughts[0]
    return count


def finish_reason_of(response: Any) -> str | None:
    """Return the provider's finish/stop reason, if the raw response has one."""
    raw = _get(response, "raw")
    # OpenAI-style, Anthropic, Bedrock Converse, Ollama; Anthropic streams it in a delta.
    for key in ("finish_reason", "stop_reason", "stopReason", "done_reason"):
        value = _get(raw, key)
        if isinstance(value, str):
            return value
    value = _get(_get(raw, "delta"), "stop_reason")
    if isinstance(value, str):
        return value
    choices = _get(raw, "choices")
    if isinstance(choices, (list, tuple)) and choices:
        value = _get(choices[0], "finish_reason")
        if isinstance(value, str):
            return value
    return None
