"""The writer process interprets the handler's callbacks: what makes that safe.

``test_agents`` runs every agent there as well as on a writer thread; these tests cover
what only the process writer has: the callbacks really are interpreted in the child, a
batch sent again is stored once, the agent process's prices apply there, and what
cannot be sent is interpreted in the agent's process instead.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from lc_agents import get_weather, lc_agent, weather_model
from tracevault_langchain import TracevaultCallbackHandler
from tracevault_langchain.runs import RUNS

import tracevault
from tracevault import callback_wire, capture, pricing
from tracevault.pipeline import settled
from tracevault.replay import Later
from tracevault.sidecar import SidecarStore
from tracevault.store import open_store
from tracevault.testing import Capture, capture_events

EVENTS_PER_RUN = 17  # see test_agents.test_create_agent_exact_sequence_with_graph_nodes


def _run_agent(city: str = "Paris", handlers: list[Any] | None = None) -> None:
    lc_agent(weather_model(), [get_weather]).invoke(
        {"messages": [HumanMessage(city)]},
        {"callbacks": handlers or [TracevaultCallbackHandler()],
         "metadata": {"session_id": "s"}})


@pytest.fixture()
def proc(tmp_path: Path) -> Iterator[Capture]:
    with capture_events(tmp_path, writer="process") as cap:
        yield cap


def _sidecar(cap: Capture) -> SidecarStore:
    store = cap.pipeline._store
    assert isinstance(store, SidecarStore)
    return store


def test_the_callbacks_are_interpreted_in_the_writer_process(proc: Capture) -> None:
    _run_agent()
    proc.flush()
    sidecar = _sidecar(proc)
    # Every callback went to the child as it was: this process made none of the events.
    assert sidecar.callbacks_run >= 14 and sidecar.callback_events == EVENTS_PER_RUN
    assert len(RUNS) == 0 and RUNS.evicted == 0  # the writer's run state lives there
    stats = proc.pipeline.stats()
    assert (stats.captured, stats.written, stats.pending) == (EVENTS_PER_RUN,) * 2 + (0,)
    output = proc.events(kinds=["output"])[0]
    assert output.data["tokens_used"] == 280 and output.data["cost"] > 0


def _callbacks_of_one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    # What the agent's thread queues for one run: deferred callbacks and captured items,
    # as the writer thread would hand them over (captured items settled).
    tracevault.configure(store=f"sqlite:///{tmp_path / 'unused.db'}")
    pipeline = capture.current_pipeline()
    assert pipeline is not None
    queued: list[Any] = []
    monkeypatch.setattr(pipeline, "submit", queued.append)
    _run_agent()
    monkeypatch.undo()
    tracevault.shutdown()
    assert any(item.__class__ is Later for item in queued)
    return [item if item.__class__ is Later else settled(item) for item in queued]


def _sidecar_into(url: str) -> SidecarStore:
    return SidecarStore(dataclasses.replace(capture.settings(), store=url), [])


def _one_run_for_a_new_sidecar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Any], str, SidecarStore]:
    """One run's deferred callbacks, a ledger URL, and a writer process writing there."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    return _callbacks_of_one_run(tmp_path, monkeypatch), url, _sidecar_into(url)


def _kill_child(sidecar: SidecarStore) -> None:
    proc = sidecar._proc
    assert proc is not None
    proc.kill()
    proc.wait()


def _stored(url: str) -> list[Any]:
    store = open_store(url)
    try:
        return [s.event for s in store.events()]
    finally:
        store.close()


def test_a_batch_of_callbacks_sent_again_is_stored_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items, url, sidecar = _one_run_for_a_new_sidecar(tmp_path, monkeypatch)
    try:
        assert sidecar.append(items) == EVENTS_PER_RUN
        first = _stored(url)
        # The child dies before its acknowledgement arrives: the pipeline sends the same
        # batch to a new child, which knows none of the runs; its events have the same
        # ids, so none is stored twice.
        _kill_child(sidecar)
        with pytest.raises(Exception, match="restarting"):
            sidecar.append(items)
        sidecar.append(items)
    finally:
        sidecar.close()
    stored = _stored(url)
    assert len(first) == EVENTS_PER_RUN
    assert [e.event_id for e in stored] == [e.event_id for e in first]


def test_prices_set_in_the_agent_process_apply_in_the_writer_process(proc: Capture) -> None:
    pricing.set_price("gpt-4o-mini", input=1000.0, output=2000.0)
    try:
        _run_agent()
        cost = proc.events(kinds=["output"])[0].data["cost"]
    finally:
        pricing.clear_prices()
    # 250 input and 30 output tokens over the two model calls, per million tokens.
    assert cost == pytest.approx((250 * 1000.0 + 30 * 2000.0) / 1e6)


def test_callbacks_that_cannot_be_sent_are_interpreted_in_the_agent_process(
    proc: Capture, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(message: Any) -> bytes:
        raise TypeError("cannot pickle '_thread.lock' object")

    monkeypatch.setattr(callback_wire, "dumps", refuse)
    with caplog.at_level(logging.ERROR, logger="tracevault"):
        _run_agent()
        events = proc.events()
    assert len(events) == EVENTS_PER_RUN
    assert [e.kind for e in events][:2] == ["agent", "input"]
    assert _sidecar(proc).callback_events == EVENTS_PER_RUN  # made here, counted alike
    assert "they are interpreted in this process" in caplog.text
    assert proc.pipeline.stats().written == EVENTS_PER_RUN


def test_an_exception_sent_in_two_batches_is_one_object_there() -> None:
    from tracevault_langchain.base import failure_of

    try:
        raise ValueError("clock stopped")
    except ValueError as exc:
        error = exc
    first = callback_wire.loads(callback_wire.dumps([failure_of(error)]))[0]
    again = callback_wire.loads(callback_wire.dumps([failure_of(error)]))[0]
    other = callback_wire.loads(callback_wire.dumps([failure_of(ValueError("x"))]))[0]
    assert first.error is again.error and first.error is not other.error
    assert isinstance(first.error, callback_wire.ErrorRef)
    assert (first.error.qualname, str(first.error)) == ("ValueError", "clock stopped")
    assert first.described == failure_of(error).described  # as read where it happened


def test_a_handler_is_one_replica_there_that_follows_its_settings() -> None:
    handler = TracevaultCallbackHandler(session_id="a", user_id="u")
    first = callback_wire.loads(callback_wire.dumps([handler]))[0]
    handler.raise_error = True
    again = callback_wire.loads(callback_wire.dumps([handler]))[0]
    other = callback_wire.loads(callback_wire.dumps([TracevaultCallbackHandler()]))[0]
    assert first is again and first is not handler and first is not other
    assert (again.session_id, again.user_id, again.raise_error) == ("a", "u", True)


def test_without_a_usable_writer_process_the_callbacks_are_interpreted_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with capture_events(tmp_path, writer="process") as cap:
        _run_agent()
        events = cap.events()
        sidecar = _sidecar(cap)
        assert not sidecar.interprets_callbacks  # fell back to writing here
        assert len(events) == EVENTS_PER_RUN and cap.store.verify().ok
        assert events[-2].kind == "output" and events[-2].data["tokens_used"] == 280
        stats = cap.pipeline.stats()
        assert (stats.captured, stats.written, stats.pending) == (EVENTS_PER_RUN,) * 2 + (0,)


def test_replicas_are_bounded_and_one_made_again_owns_the_same_runs(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # An application may make a handler per request: the writer process keeps the
    # replicas of the most recently used ones only.
    monkeypatch.setattr(callback_wire, "_replicas", type(callback_wire._replicas)())
    monkeypatch.setattr(callback_wire, "_MAX_REPLICAS", 3)
    handlers = [TracevaultCallbackHandler() for _ in range(5)]
    first = callback_wire.loads(callback_wire.dumps(handlers[0]))
    for handler in handlers[1:]:
        callback_wire.loads(callback_wire.dumps(handler))
    assert len(callback_wire._replicas) == 3
    again = callback_wire.loads(callback_wire.dumps(handlers[0]))
    assert again is not first  # dropped, then made again ...
    assert again._rec.owner == first._rec.owner  # ... owning what the first one opened
    other = callback_wire.loads(callback_wire.dumps(handlers[1]))
    assert other._rec.owner != again._rec.owner


def test_a_handler_class_the_writer_process_cannot_import_is_interpreted_here(
    proc: Capture
) -> None:
    class Local(TracevaultCallbackHandler):  # the child cannot import it by name
        pass

    lc_agent(weather_model(), [get_weather]).invoke(
        {"messages": [HumanMessage("Oslo")]}, {"callbacks": [Local()]})
    events = proc.events()
    assert len(events) == EVENTS_PER_RUN
    assert _sidecar(proc).callbacks_run == 0  # none went to the child
    assert proc.pipeline.stats().written == EVENTS_PER_RUN


_HANDLER_MODULE = '''
from tracevault_langchain import TracevaultCallbackHandler


class HouseHandler(TracevaultCallbackHandler):
    """A handler subclass of the application's own."""
'''


@pytest.mark.parametrize("importable", [True, False])
def test_a_handler_subclass_of_the_application_is_found_or_interpreted_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, importable: bool
) -> None:
    # The application's module sits where this process found it (on its sys.path, not
    # in the working directory): the writer process finds it there too. A module it
    # cannot import (removed since) makes it say so, and the callbacks are
    # interpreted here from then on, this batch included.
    import importlib
    import sys

    code = tmp_path / "app_code"
    code.mkdir()
    module = code / f"house_handlers_{importable}.py"
    module.write_text(_HANDLER_MODULE)
    monkeypatch.syspath_prepend(str(code))
    handler_class = importlib.import_module(module.stem).HouseHandler
    if not importable:
        module.unlink()
    try:
        with capture_events(tmp_path, writer="process") as cap:
            lc_agent(weather_model(), [get_weather]).invoke(
                {"messages": [HumanMessage("Lima")]}, {"callbacks": [handler_class()]})
            events = cap.events()
            sidecar = _sidecar(cap)
            assert len(events) == EVENTS_PER_RUN
            assert [e.kind for e in events][:2] == ["agent", "input"]
            assert sidecar.interprets_callbacks is importable
            assert sidecar._fallback is None  # the writer process still writes
            assert cap.pipeline.stats().written == EVENTS_PER_RUN
    finally:
        sys.modules.pop(module.stem, None)


def test_callbacks_run_here_are_not_run_again_when_their_batch_is_sent_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Interpreted in this process (the child could not read them), then the send fails
    # and the pipeline hands the same batch over again: a callback run twice would find
    # its run closed by the first time, and its events would be lost.
    items, url, sidecar = _one_run_for_a_new_sidecar(tmp_path, monkeypatch)
    sidecar._callbacks_here = True
    half = len(items) // 2
    try:
        sidecar.append(items[:half])
        _kill_child(sidecar)
        with pytest.raises(Exception, match="restarting"):
            sidecar.append(items[half:])
        sidecar.append(items[half:])
    finally:
        sidecar.close()
    assert len(_stored(url)) == EVENTS_PER_RUN


def test_with_a_handler_that_must_stay_here_every_callback_stays_here(proc: Capture) -> None:
    # Two handlers on one run: the second records nothing the first records already, by
    # the run table they share. One of them cannot go to the writer process, so neither
    # goes: the table stays in one place.
    class Local(TracevaultCallbackHandler):
        pass

    _run_agent(handlers=[TracevaultCallbackHandler(), Local()])
    assert len(proc.events()) == EVENTS_PER_RUN
    assert _sidecar(proc).callbacks_run == 0



class _Frozen(Exception):
    """An exception that refuses attributes (no mark can be set on it)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if "tracevault" in name:
            raise AttributeError(name)
        super().__setattr__(name, value)


def _boom(x: int) -> int:
    raise _Frozen(x)


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_an_exception_that_refuses_attributes_is_one_failure(
    tmp_path: Path, writer: str
) -> None:
    from langchain_core.runnables import RunnableLambda

    inner = RunnableLambda(_boom, name="inner")
    outer = RunnableLambda(lambda x: inner.invoke(x), name="outer")
    with capture_events(tmp_path, writer=writer) as cap:
        with pytest.raises(_Frozen):
            outer.invoke(1, {"callbacks": [TracevaultCallbackHandler()]})
        assert len(cap.events(kinds=["error"])) == 1
