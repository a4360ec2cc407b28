"""snapshot(): any payload becomes JSON-safe data, faithfully, without raising."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import math
import uuid
from decimal import Decimal
from typing import Any

import orjson
import pydantic

from tracevault.snapshot import MAX_STRING, first_report, sanitize_strings, snapshot


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: list[int]


class Model(pydantic.BaseModel):
    name: str
    when: dt.datetime


class Sub(Model):
    extra: int = 7


class Holder(pydantic.BaseModel):
    item: Model  # declared as the base: a dump by declared type would lose `extra`


class Plain:
    def __init__(self) -> None:
        self.a = 1
        self._private = "hidden"


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def roundtrip(value: Any) -> Any:
    return orjson.loads(orjson.dumps(snapshot(value)))


def test_primitives_pass_through() -> None:
    value = {"s": "x", "i": 3, "f": 1.5, "b": True, "n": None, "l": [1, "a"]}
    assert snapshot(value) == value


def test_containers_are_copied_not_shared() -> None:
    live = {"messages": [{"role": "user", "content": "hi"}]}
    snap = snapshot(live)
    live["messages"][0]["content"] = "renamed later by the framework"
    live["messages"].append({"role": "ai"})
    assert snap == {"messages": [{"role": "user", "content": "hi"}]}


def test_rich_objects_are_converted() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.timezone.utc)
    uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    out = roundtrip(
        {
            "when": when,
            "day": dt.date(2026, 1, 2),
            "delta": dt.timedelta(seconds=1.5),
            "uuid": uid,
            "dec": Decimal("1.10"),
            "color": Color.RED,
            "point": Point(1, [2, 3]),
            "model": Holder(item=Sub(name="m", when=when)),
            "set": {3, 1, 2},
            "frozen": frozenset({"b", "a"}),
            "tuple": (1, 2),
            "plain": Plain(),
            "bytes": b"\x00\xff",
            "func": len,
        }
    )
    assert out["when"] == "2026-01-02T03:04:05.123456+00:00"
    assert out["day"] == "2026-01-02"
    assert out["delta"] == 1.5
    assert out["uuid"] == str(uid)
    assert out["dec"] == "1.10"
    assert out["color"] == "red"
    assert out["point"] == {"x": 1, "y": [2, 3]}
    assert out["model"]["item"]["extra"] == 7  # subclass fields survive
    assert out["set"] == [1, 2, 3]
    assert out["frozen"] == ["a", "b"]
    assert out["tuple"] == [1, 2]
    assert out["plain"] == {"$type": f"{Plain.__module__}.Plain", "a": 1}
    assert out["bytes"] == {"$bytes": "sha256", "sha256": hashlib.sha256(b"\x00\xff").hexdigest(),
                            "size": 2}
    assert "len" in out["func"]


def test_exceptions_keep_type_message_and_stack() -> None:
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        out = roundtrip({"error": exc})["error"]
    assert out["type"] == "ValueError"
    assert out["message"] == "bad value"
    assert "raise ValueError" in out["stack_trace"]


def test_cycles_are_marked() -> None:
    a: list[Any] = [1]
    a.append(a)
    d: dict[str, Any] = {"k": 1}
    d["self"] = d
    out = roundtrip({"a": a, "d": d})
    assert out["a"] == [1, "<cycle: list>"]
    assert out["d"] == {"k": 1, "self": "<cycle: dict>"}


def test_shared_non_cyclic_references_are_kept() -> None:
    shared = {"x": 1}
    assert snapshot([shared, shared]) == [{"x": 1}, {"x": 1}]


def test_nan_and_infinities_stay_visible() -> None:
    out = roundtrip([math.nan, math.inf, -math.inf, 1.0])
    assert out == ["NaN", "Infinity", "-Infinity", 1.0]


def test_huge_ints_become_strings() -> None:
    assert roundtrip([2**80]) == [str(2**80)]


def test_huge_strings_are_truncated_with_marker_and_size() -> None:
    big = "x" * (5 * 1024 * 1024)
    out = snapshot({"blob": big})["blob"]
    assert len(out) < MAX_STRING + 100
    assert out.startswith("x" * 100)
    assert f"{len(big)} chars in original" in out


def test_huge_containers_are_truncated_with_marker() -> None:
    out = snapshot(list(range(20_000)), max_items=100)
    assert len(out) == 101
    assert "20000 items in original" in out[-1]


def test_deep_nesting_is_cut_not_crashed() -> None:
    deep: Any = "leaf"
    for _ in range(5000):
        deep = [deep]
    out = snapshot(deep)
    flat = orjson.dumps(out).decode()
    assert "max depth" in flat


def test_non_string_keys_become_strings() -> None:
    out = roundtrip({1: "a", None: "b", (1, 2): "c", Color.RED: "d"})
    assert out == {"1": "a", "None": "b", "[1, 2]": "c", "red": "d"}


def test_unrepresentable_objects_do_not_raise() -> None:
    out = snapshot({"x": BadRepr()})
    assert "unrepresentable" in out["x"]


def test_lone_surrogates_are_repaired_for_encoding() -> None:
    value = {"text": "ok \ud800 end", "\udfff": ["\ud83d\ude00"]}
    fixed = sanitize_strings(value)
    encoded = orjson.dumps(fixed)
    assert orjson.loads(encoded) == {"text": "ok \ufffd end", "\ufffd": ["\U0001f600"]}


def test_freeze_round_trips_plain_payloads_and_falls_back_exactly() -> None:
    from tracevault.snapshot import Frozen, freeze, thaw

    when = dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc)
    plain = {"q": "x", "n": [1, 2.5, True], "when": when, "point": Point(1, [2])}
    frozen = freeze(plain)
    assert isinstance(frozen, Frozen)  # the fast path
    assert thaw(frozen) == snapshot(plain)
    live = {"messages": [{"content": "hi"}]}
    frozen = freeze(live)
    live["messages"][0]["content"] = "changed later"
    assert thaw(frozen) == {"messages": [{"content": "hi"}]}
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    # Everything orjson would not encode exactly takes the snapshot path.
    for value in (
        {"nan": math.nan},
        {"none": None, "inf": [1.5, math.inf]},
        {"none": None, "pair": (1, 2)},  # reads back as a list: the walk decides
        [2**80],
        {1: "int key"},
        cyclic,
        {"s": "lone \ud800"},
        {"big": "x" * (MAX_STRING + 1)},
        {"many": list(range(12_000))},
    ):
        out = freeze(value)
        assert not isinstance(out, Frozen)
        assert thaw(out) == snapshot(value)
    assert len(thaw(freeze({"many": list(range(12_000))}))["many"]) == 10_001  # cut, marked
    # None is not NaN: a payload with nulls that reads back equal stays on the fast path.
    with_none = {"content": None, "messages": [{"role": "assistant", "content": None}],
                 "n": [1, 2.5, None, True]}
    frozen = freeze(with_none)
    assert isinstance(frozen, Frozen) and thaw(frozen) == with_none

    class Odd:  # an __eq__ that raises, like a numpy array's truth value
        def __eq__(self, other: object) -> bool:
            raise ValueError("ambiguous")

        __hash__ = object.__hash__

    odd = {"none": None, "odd": Odd()}
    assert not isinstance(freeze(odd), Frozen)
    assert thaw(freeze(odd)) == snapshot(odd)
    # A large payload with nothing to cut (a long history, many tool schemas) stays fast.
    history = {"messages": [{"role": "user", "content": "word " * 400}] * 60,
               "tools": [{"name": f"tool_{i}", "parameters": {"type": "object"}}
                         for i in range(50)]}
    frozen = freeze(history)
    assert isinstance(frozen, Frozen) and len(frozen.raw) > 100_000
    assert thaw(frozen) == snapshot(history)
    assert thaw(freeze({"nan": math.nan})) == {"nan": "NaN"}
    # Rich objects orjson does not know are converted by snapshot() inside the fast path.
    model = {"m": Sub(name="m", when=when)}
    assert thaw(freeze(model)) == snapshot(model) and thaw(freeze(model))["m"]["extra"] == 7


def test_first_report_marks_an_exception_once_per_trace() -> None:
    exc = ValueError("boom")
    assert first_report(exc, "t1") is True
    assert first_report(exc, "t1") is False  # bubbling up the same run
    assert first_report(exc, "t2") is True  # the same exception failing another run
    assert first_report(exc, "t2") is False and first_report(exc, "t1") is False

    class Sealed(Exception):
        __slots__ = ()

        def __setattr__(self, name: str, value: object) -> None:
            raise AttributeError(name)

    assert first_report(Sealed(), "t1") is None  # the caller keeps track itself
