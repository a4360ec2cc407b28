"""The handlers' shortcuts give what the full paths give: span bookkeeping, streams
returned by spans, token-usage lookups and start-event inputs."""

from __future__ import annotations

import inspect
import random
from collections.abc import AsyncGenerator, Generator
from typing import Any

import pytest
from tracevault_llamaindex import payloads, roles, state, usage
from tracevault_llamaindex.spans import TracevaultSpanHandler
from tracevault_llamaindex.state import OTHER, Recorder


def _bound() -> inspect.BoundArguments:
    return inspect.signature(lambda: None).bind()


def _span_id(name: str, i: int) -> str:
    return f"{name}-{i:08d}-0000-4000-8000-000000000000"  # "<Class>.<method>-<uuid4>"


def test_a_closed_span_is_found_until_max_recent_spans_closed_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(state, "MAX_RECENT", 8)
    rec = Recorder()
    handler = TracevaultSpanHandler(rec)
    root = _span_id("Root.run", 0)
    handler.span_enter(id_=root, bound_args=_bound(), parent_id=None, tags={})
    ids = [_span_id("Thing.step", i) for i in range(1, 40)]
    for i, span_id in enumerate(ids):
        handler.span_enter(id_=span_id, bound_args=_bound(), parent_id=root, tags={})
        handler.span_exit(id_=span_id, bound_args=_bound(), result=None)
        assert span_id not in rec.spans
        # every span closed fewer than MAX_RECENT closes ago is still known ...
        for back, earlier in enumerate(reversed(ids[: i + 1])):
            if back < 8 - 1:
                found = rec.find_parent(earlier)
                assert found is not None and found.id == earlier
        # ... and memory stays bounded
        assert len(rec.recent) + len(rec.older) <= 2 * 8
    assert rec.find_parent(ids[0]) is None  # long forgotten
    assert rec.errors == 0


def test_forgotten_spans_let_go_of_their_parents(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "MAX_RECENT", 4)
    rec = Recorder()
    handler = TracevaultSpanHandler(rec)
    root = _span_id("Root.run", 0)
    handler.span_enter(id_=root, bound_args=_bound(), parent_id=None, tags={})
    first = _span_id("Thing.step", 1)
    handler.span_enter(id_=first, bound_args=_bound(), parent_id=root, tags={})
    handler.span_exit(id_=first, bound_args=_bound(), result=None)
    kept = rec.closed(first)
    assert kept is not None and kept.parent is rec.spans[root]
    for i in range(2, 12):
        span_id = _span_id("Thing.step", i)
        handler.span_enter(id_=span_id, bound_args=_bound(), parent_id=root, tags={})
        handler.span_exit(id_=span_id, bound_args=_bound(), result=None)
    assert rec.closed(first) is None
    assert kept.parent is None


def test_a_late_child_of_a_closed_span_joins_its_trace() -> None:
    rec = Recorder()
    handler = TracevaultSpanHandler(rec)
    root, parent, child = (_span_id(n, i) for i, n in enumerate(("R.run", "P.go", "C.go")))
    handler.span_enter(id_=root, bound_args=_bound(), parent_id=None, tags={})
    handler.span_enter(id_=parent, bound_args=_bound(), parent_id=root, tags={})
    handler.span_exit(id_=parent, bound_args=_bound(), result=None)
    handler.span_enter(id_=child, bound_args=_bound(), parent_id=parent, tags={})
    span = rec.spans[child]
    assert span.trace_id == root and span.parent is not None and span.parent.id == parent
    assert span.role == OTHER


def test_identity_shortcut_matches_identity() -> None:
    """A span without instrument_tags under a parent takes the parent's identity, as
    Recorder.identity decides it."""
    rec = Recorder(session_id="default-s", user_id=None)
    handler = TracevaultSpanHandler(rec)
    root = _span_id("R.run", 0)
    handler.span_enter(id_=root, bound_args=_bound(), parent_id=None,
                       tags={"session_id": "tagged", "user_id": 7})
    parent = rec.spans[root]
    assert (parent.session_id, parent.user_id) == ("tagged", "7")
    for tags in ({}, None, {"user_id": "u2"}, {"llamaindex.run_id": "r1"},
                 {"tracevault.session_id": "ts", "session_id": None}):
        child = _span_id("C.go", len(rec.spans))
        handler.span_enter(id_=child, bound_args=_bound(), parent_id=root, tags=tags)
        span = rec.spans[child]
        assert (span.session_id, span.user_id) == rec.identity(tags, parent)
    parent.session_id = None  # e.g. no session anywhere: the default applies
    child = _span_id("C.go", 99)
    handler.span_enter(id_=child, bound_args=_bound(), parent_id=root, tags={})
    assert rec.spans[child].session_id == "default-s" == rec.identity({}, parent)[0]


def _old_stream_check(result: Any) -> Any:
    """The check span exits made before ``_stream_of``: returns the stream or None."""
    gen = result
    if type(result).__name__ in ("StreamingResponse", "AsyncStreamingResponse"):
        gen = getattr(result, "response_gen", None) or getattr(
            result, "async_response_gen", None)
    return gen if inspect.isgenerator(gen) or inspect.isasyncgen(gen) else None


class StreamingResponse:
    def __init__(self, gen: Any) -> None:
        self.response_gen = gen


class AsyncStreamingResponse:
    def __init__(self, gen: Any) -> None:
        self.response_gen = None
        self.async_response_gen = gen


def test_stream_of_finds_what_the_old_check_found() -> None:
    def numbers() -> Generator[int, None, None]:
        yield 1

    async def anumbers() -> AsyncGenerator[int, None]:
        yield 1

    gen, agen = numbers(), anumbers()
    cases: list[Any] = [None, 1, "text", [1], {"a": 1}, iter([1]), gen, agen,
                        StreamingResponse(gen), StreamingResponse(None),
                        StreamingResponse([1]), AsyncStreamingResponse(agen),
                        AsyncStreamingResponse("x")]
    for case in cases:
        assert roles.stream_of(case) is _old_stream_check(case), case
    assert roles.stream_of(StreamingResponse(gen)) is gen
    assert roles.stream_of(AsyncStreamingResponse(agen)) is agen
    agen.aclose().close()  # never started: nothing to clean up but the coroutine


def test_a_plain_span_returning_a_generator_is_watched() -> None:
    rec = Recorder()
    handler = TracevaultSpanHandler(rec)
    root, inner = _span_id("R.run", 0), _span_id("Q.stream", 1)

    def chunks() -> Generator[str, None, None]:
        yield "a"

    gen = chunks()
    handler.span_enter(id_=root, bound_args=_bound(), parent_id=None, tags={})
    handler.span_enter(id_=inner, bound_args=_bound(), parent_id=root, tags={})
    handler.span_exit(id_=inner, bound_args=_bound(), result=StreamingResponse(gen))
    assert inner not in rec.spans and rec.closed(inner) is not None
    assert [owner.id for _, owner, _ in rec.streams.values()] == [inner]
    handler.span_exit(id_=root, bound_args=_bound(), result=None)
    assert not rec.spans and rec.errors == 0


def _random_source(rng: random.Random) -> Any:
    keys = [*sorted(usage._USAGE_KEYS), "content", "id", "usage", "model", "cached_tokens"]
    source: dict[str, Any] = {}
    for key in rng.sample(keys, rng.randint(0, 4)):
        if key.endswith("_details"):
            source[key] = {rng.choice(["cached_tokens", "cache_read", "reasoning_tokens",
                                       "reasoning", "other"]): rng.choice([0, 3, 2.0, None])}
        else:
            source[key] = rng.choice([0, 5, 7.0, 7.5, True, "9", None])
    if rng.random() < 0.2:
        return type("Usage", (), source)()  # an SDK object: read by attribute
    return source


def test_usage_prefilter_never_hides_a_count() -> None:
    rng = random.Random(20240611)
    found_any = 0
    for _ in range(3_000):
        sources = [_random_source(rng) for _ in range(rng.randint(1, 4))]
        full = usage.counts_in(sources)
        assert usage.counts_in([s for s in sources if usage.may_hold_usage(s)]) == full
        found_any += bool(full)
    assert found_any > 500  # the cases exercise real counts, not only empty ones


def test_usage_of_a_response_whose_raw_holds_only_content() -> None:
    from llama_index.core.llms import ChatMessage, ChatResponse

    plain = ChatResponse(message=ChatMessage(role="assistant", content="hi"),
                         raw={"content": "hi"})
    assert usage.token_usage(plain) == {}
    counted = ChatResponse(message=ChatMessage(role="assistant", content="hi"),
                           raw={"content": "hi", "usage": {"prompt_tokens": 3,
                                                           "completion_tokens": 2}})
    assert usage.token_usage(counted) == {"input": 3, "output": 2, "total": 5}


def test_event_fields_skips_without_reading() -> None:
    from workflows.events import StartEvent

    class Store:
        reads = 0

        def __repr__(self) -> str:
            type(self).reads += 1
            return "Store()"

    event = StartEvent(user_msg="hi", memory=Store(), max_iterations=3)
    assert payloads.event_fields(event, skip=frozenset({"memory"})) == {
        "user_msg": "hi", "max_iterations": 3}
    assert Store.reads == 0
    full = payloads.event_fields(event)
    assert full["memory"] == "Store()" and Store.reads == 1


def test_parameters_keep_their_order_and_types() -> None:
    model = {"class_name": "X", "top_p": 0.5, "temperature": 0.1, "api_key": "secret",
             "stop": ["\\n"], "seed": None, "max_tokens": 9, "context_window": 100,
             "additional_kwargs": {"seed": 3, "temperature": 0.7}}
    params = usage.parameters_of(model, {"tool_choice": "auto", "temperature": "hot"})
    assert list(params.items()) == [
        ("temperature", "hot"), ("max_tokens", 9), ("top_p", 0.5), ("stop", ["\\n"]),
        ("context_window", 100), ("seed", 3), ("tool_choice", "auto")]

    class Model:  # not a dict: read by attribute, every parameter in turn
        temperature = 0.2
        top_k = 4
        additional_kwargs = None

    assert usage.parameters_of(Model(), None) == {"temperature": 0.2, "top_k": 4}
