"""Turn any callback payload into plain JSON-safe data, without ever raising.

Framework payloads are live objects that are mutated after a callback returns, so the
handler must copy what it records on the caller's thread. :func:`snapshot` copies
containers, converts known non-JSON types (pydantic models, dataclasses, exceptions,
datetimes, UUIDs, bytes, sets, numpy values, arbitrary objects) and marks what it had
to cut: cycles, excessive depth, huge containers and huge strings (with their original
size). Strings are immutable, so they are shared, not copied; lone surrogates are fixed
later by :func:`sanitize_strings` on the writer thread, only when encoding fails.

:func:`freeze` is what capture uses on the caller's thread: most payloads are plain
JSON, which orjson encodes to immutable bytes four to five times faster than the
Python walk; the writer thread turns them back into data with :func:`thaw`. Anything
orjson would not encode exactly (NaN, huge ints, non-string keys, cycles, invalid
unicode, payloads large enough to need truncating) takes the :func:`snapshot` path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import enum
import hashlib
import logging
import math
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson

MAX_STRING = 256 * 1024
MAX_ITEMS = 10_000
MAX_DEPTH = 40
# The fast path takes payloads whose JSON has at most FAST_LIMIT bytes and fewer than
# MAX_ITEMS commas: no string in it can then exceed MAX_STRING characters (a character
# costs at least one byte) and no container MAX_ITEMS items (n items need n - 1
# commas), so there is nothing to cut. Others take the snapshot path, which truncates.
# (A real agent's model call, with its history and tool schemas, is often 20-200 KB.)
FAST_LIMIT = MAX_STRING

_PRIMITIVES = (str, int, bool, type(None))
_INT_LIMIT = 2**63


def truncate_string(value: str, limit: int = MAX_STRING) -> str:
    """Cut ``value`` to ``limit`` characters, saying so and giving the original length
    within them (so a string cut once is never cut again)."""
    if len(value) <= limit:
        return value
    note = f"…[truncated by tracevault: {len(value)} chars in original]"
    return value[:max(limit - len(note), 0)] + note


# Inline media (base64 images, audio, files in a conversation) is recorded as what it
# is, never its bytes: a model call carries the whole conversation, so the same image
# would be stored again with every call, cut at the string limit into a useless part.
_MEDIA_REFS: dict[int, tuple[Any, dict[str, Any] | None]] = {}  # id(source) -> (source, ref)
_MAX_MEDIA_REFS = 256


def _remembered(source: Any, make: Callable[[str], dict[str, Any] | None]
                ) -> dict[str, Any] | None:
    # make(str(source)), remembered by the identity of ``source`` (kept alive with it,
    # so its id() cannot be reused): the same object comes back with every later call
    # of a conversation, and hashing megabytes each time would cost milliseconds.
    known = _MEDIA_REFS.get(id(source))
    if known is not None and known[0] is source:
        return known[1]
    ref = make(source if isinstance(source, str) else "" if source is None else str(source))
    if len(_MEDIA_REFS) >= _MAX_MEDIA_REFS:
        _MEDIA_REFS.clear()
    _MEDIA_REFS[id(source)] = (source, ref)
    return ref


def media_ref(data: Any, mime: Any = None) -> dict[str, Any]:
    """Return ``{"mime", "base64_chars", "sha256"}`` for inline base64 ``data`` (a
    string, or an object whose ``str()`` is; the digest is of the base64 text as
    sent), computed once per object."""
    def make(text: str) -> dict[str, Any]:
        return {"mime": mime, "base64_chars": len(text),
                "sha256": hashlib.sha256(text.encode("ascii", "replace")).hexdigest()}

    ref = _remembered(data, make)
    assert ref is not None
    return ref


def data_url_ref(url: Any) -> dict[str, Any] | None:
    """Return :func:`media_ref` of a ``data:`` URL's payload (its mime type from the
    URL), or ``None`` for any other URL."""
    def make(text: str) -> dict[str, Any] | None:
        if not text.startswith("data:"):
            return None
        head, _, payload = text.partition(",")
        return media_ref(payload, head[5:].split(";", 1)[0] or None)

    return _remembered(url, make)


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """Return type, message and formatted stack trace of an exception as plain data."""
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not hide the error itself
        message = f"<unprintable {type(exc).__name__}>"
    stack = ""
    if exc.__traceback__ is not None:
        try:
            stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except Exception:
            stack = ""
    return {
        "type": _qualname(type(exc)),
        "message": truncate_string(message),
        "stack_trace": truncate_string(stack),
    }


_REPORTED = "_tracevault_reported_in"  # where an exception was recorded, by trace
_MAX_REPORTED = 1_000  # traces per exception
_MAX_LINES = 100  # reports per trace


def bytes_view(raw: bytes) -> dict[str, Any]:
    """Return how bytes are recorded: as text if they are UTF-8 (an HTTP body, a file
    read in binary mode), where redaction reads them like any string; otherwise as their
    SHA-256 and size only. Never as base64, which would carry PII and secrets past
    redaction unread."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"$bytes": "sha256", "sha256": hashlib.sha256(raw).hexdigest(),
                "size": len(raw)}
    out: dict[str, Any] = {"$bytes": "utf-8", "text": text[:MAX_STRING], "size": len(raw)}
    if len(text) > MAX_STRING:
        out["truncated"] = True
    return out


def first_report(exc: BaseException, trace_id: str, lineage: Sequence[str] = ()) -> bool | None:
    """Return True the first time ``exc`` is reported from where it failed in trace
    ``trace_id`` and mark it so; False for a report of the same failure again (an error
    bubbling up through the steps of one run is one failure); ``None`` if ``exc`` takes
    no attributes (the caller keeps track instead).

    ``lineage`` is the reporting step's span id, then its ancestors' (nearest first). A
    report is a repeat if an earlier one came from below the reporting step (that step
    is in the earlier lineage): two sibling steps failing with one exception object (a
    shared failed future, a re-raised constant) are two failures. Without a lineage,
    any earlier report in the trace makes it a repeat.

    The mark is on the exception itself (an ``id()`` is reused once it is freed), and
    holds every trace that recorded it: one exception can fail several runs at once
    (a batch failing as a whole). Every framework handler marks alike, so an error that
    crosses from one framework's run into another's is recorded once.
    """
    try:
        seen = getattr(exc, _REPORTED, None)
        if seen.__class__ is not dict:
            seen = {}
            setattr(exc, _REPORTED, seen)
        return mark_reported(seen, trace_id, tuple(lineage))
    except (AttributeError, TypeError):
        return None


def reports_of(exc: BaseException) -> dict[str, list[tuple[str, ...]]]:
    """Where ``exc`` was recorded so far (see :func:`first_report`), as a copy: what an
    exception's stand-in in another process starts from."""
    seen = getattr(exc, _REPORTED, None)
    if seen.__class__ is not dict:
        return {}
    return {trace: list(lines) for trace, lines in seen.items()}


def add_reports(exc: BaseException, reports: dict[str, list[tuple[str, ...]]]) -> None:
    """Mark ``exc`` as recorded where ``reports`` says (from :func:`reports_of` of the
    exception it stands for); never raises."""
    try:
        seen = getattr(exc, _REPORTED, None)
        if seen.__class__ is not dict:
            seen = {}
            setattr(exc, _REPORTED, seen)
        for trace, lines in reports.items():
            known = seen.setdefault(trace, [])
            known.extend(line for line in lines if line not in known)
    except (AttributeError, TypeError):
        pass


def mark_reported(seen: dict[str, list[tuple[str, ...]]], trace_id: str,
                  lineage: tuple[str, ...]) -> bool:
    """Record a report of one exception from ``lineage`` in ``seen`` (its reports by
    trace, see :func:`first_report`); return whether it is a failure not yet reported."""
    earlier = seen.get(trace_id)
    if earlier is None:
        if len(seen) < _MAX_REPORTED:
            seen[trace_id] = [lineage]
        return True
    if not lineage or any(not line or lineage[0] in line for line in earlier):
        return False
    if len(earlier) < _MAX_LINES:
        earlier.append(lineage)
    return True


def _qualname(cls: type) -> str:
    module = getattr(cls, "__module__", "") or ""
    name = getattr(cls, "__qualname__", cls.__name__)
    return name if module in ("builtins", "__main__") else f"{module}.{name}"


def json_float(value: float) -> float | str:
    """Return ``value``, or ``"NaN"``/``"Infinity"``/``"-Infinity"`` for what JSON cannot
    hold (orjson would silently write null)."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def snapshot(
    value: Any,
    *,
    max_string: int = MAX_STRING,
    max_items: int = MAX_ITEMS,
    max_depth: int = MAX_DEPTH,
) -> Any:
    """Return a JSON-safe deep copy of ``value``. Never raises."""
    try:
        return _Snapshotter(max_string, max_items, max_depth).convert(value, 0)
    except Exception as exc:  # defensive: the caller's agent must not break
        return f"<tracevault could not snapshot {type(value).__name__}: {exc!r}>"


class _Snapshotter:
    __slots__ = ("max_depth", "max_items", "max_string", "path")

    def __init__(self, max_string: int, max_items: int, max_depth: int) -> None:
        self.max_string = max_string
        self.max_items = max_items
        self.max_depth = max_depth
        self.path: set[int] = set()  # ids of containers being converted (cycle guard)

    def convert(self, value: Any, depth: int) -> Any:
        cls = type(value)
        if cls is str:
            return (
                value if len(value) <= self.max_string else truncate_string(value, self.max_string)
            )
        if cls is bool or value is None:
            return value
        if cls is int:
            return value if -_INT_LIMIT < value < _INT_LIMIT else str(value)
        if cls is float:
            return json_float(value)
        if depth >= self.max_depth:
            return f"<max depth {self.max_depth} reached: {cls.__name__}>"
        if cls is dict or cls is list or cls is tuple:
            return self._container(value, depth, cls is dict)
        return self._other(value, cls, depth)

    def _container(self, value: Any, depth: int, is_mapping: bool | None = None) -> Any:
        key = id(value)
        path = self.path
        if key in path:
            return f"<cycle: {type(value).__name__}>"
        path.add(key)
        try:
            if is_mapping is None:
                is_mapping = isinstance(value, Mapping)
            return self._mapping(value, depth) if is_mapping else self._sequence(value, depth)
        finally:
            path.discard(key)

    def _mapping(self, value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        items: Any = value.items()
        if len(value) > self.max_items:
            items = list(items)[: self.max_items]
        out: dict[str, Any] = {}
        convert = self.convert
        limit = self.max_string
        depth += 1
        for k, v in items:
            cls = v.__class__
            # Inline the common leaf types: this loop runs on the caller's thread.
            if (
                (cls is str and len(v) <= limit)
                or (cls is int and -_INT_LIMIT < v < _INT_LIMIT)
                or cls is bool
                or v is None
            ):
                out[k if k.__class__ is str else self._key(k)] = v
            else:
                out[k if k.__class__ is str else self._key(k)] = convert(v, depth)
        if len(value) > self.max_items:
            out["…"] = f"[truncated by tracevault: {len(value)} items in original]"
        return out

    def _sequence(self, value: Any, depth: int) -> list[Any]:
        convert = self.convert
        limit = self.max_string
        depth += 1
        out = [
            v
            if (v.__class__ is str and len(v) <= limit) or v is None
            else convert(v, depth)
            for v in (value[: self.max_items] if len(value) > self.max_items else value)
        ]
        if len(value) > self.max_items:
            out.append(f"…[truncated by tracevault: {len(value)} items in original]")
        return out

    def _key(self, key: Any) -> str:
        converted = self.convert(key, self.max_depth - 1)
        return converted if isinstance(converted, str) else repr(converted)

    def _other(self, value: Any, cls: type, depth: int) -> Any:
        if isinstance(value, str):  # str subclasses (enums mixing in str, ...)
            if isinstance(value, enum.Enum):
                return self.convert(value.value, depth)
            return self.convert(str.__str__(value), depth)
        if isinstance(value, enum.Enum):
            return self.convert(value.value, depth)
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return self.convert(int(value), depth)
        if isinstance(value, float):
            return json_float(float(value))
        if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
            return value.isoformat()
        if isinstance(value, _dt.timedelta):
            return value.total_seconds()
        if isinstance(value, (uuid.UUID, Decimal)):
            return str(value)
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes_view(bytes(value))
        if isinstance(value, BaseException):
            return describe_exception(value)
        if isinstance(value, (set, frozenset)):
            items = list(value)
            with contextlib.suppress(TypeError):  # mixed types keep insertion order
                items.sort()
            return self._container(items, depth)
        if isinstance(value, (Mapping, list, tuple)):
            return self._container(value, depth)
        return self._object(value, cls, depth)

    def _object(self, value: Any, cls: type, depth: int) -> Any:
        key = id(value)
        if key in self.path:
            return f"<cycle: {cls.__name__}>"
        self.path.add(key)
        try:
            converted = _structured(value, cls)
            if converted is not _NOT_STRUCTURED:
                return self.convert(converted, depth + 1)
        except Exception as exc:
            return f"<{_qualname(cls)}: conversion failed: {exc!r}>"[: self.max_string]
        finally:
            self.path.discard(key)
        try:
            text = repr(value)
        except Exception:
            text = f"<unrepresentable {_qualname(cls)}>"
        return truncate_string(text, self.max_string)


_NOT_STRUCTURED = object()


def _structured(value: Any, cls: type) -> Any:
    """Return a plain-data view of a rich object, or ``_NOT_STRUCTURED``."""
    module = cls.__module__
    if (module == "numpy" or module.startswith("numpy.")) and hasattr(value, "tolist"):
        return value.tolist()
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump) and hasattr(cls, "model_fields"):
        try:
            # serialize_as_any keeps fields of subclasses (e.g. AIMessage.tool_calls,
            # usage_metadata) that a dump by declared type silently drops.
            return model_dump(mode="python", serialize_as_any=True)
        except TypeError:
            return model_dump()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
    if isinstance(value, type) or callable(value):
        return f"<{_qualname(cls)} {getattr(value, '__qualname__', '')}>".replace(" >", ">")
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict) and attrs:
        return {"$type": _qualname(cls), **{k: v for k, v in attrs.items() if k[:1] != "_"}}
    return _NOT_STRUCTURED


def sanitize_strings(value: Any) -> Any:
    """Replace lone UTF-16 surrogates in every string so the data encodes as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {sanitize_strings(k): sanitize_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [sanitize_strings(v) for v in value]
    return value


class Frozen:
    """A payload captured as JSON bytes on the caller's thread, awaiting :func:`thaw`."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


_FREEZE_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS  # dataclasses go through snapshot()


def freeze(value: Any) -> Any:
    """Return an immutable, JSON-safe copy of ``value`` as fast as possible. Never raises.

    The result is either :class:`Frozen` JSON bytes or what :func:`snapshot` returns;
    :func:`thaw` turns both into plain data.
    """
    try:
        out = orjson.dumps(value, default=snapshot, option=_FREEZE_OPTIONS)
    except (TypeError, orjson.JSONEncodeError):
        return snapshot(value)
    # Too large to be sure nothing needs cutting, or a null that may be a NaN (see
    # _reads_back): the careful way.
    # (bytes.find: `in` first tries the needle as an int.)
    if _too_large(out) or (out.find(b"null") >= 0 and not _reads_back(out, value)):
        return snapshot(value)
    # orjson returns its output buffer shrunk in place, which keeps the whole
    # allocation alive (about 4 KB for a 40-byte payload). A frozen payload waits in
    # the queue, so keep a tight copy instead: the copy costs ~50 ns, while the
    # retained buffers made every later dumps() slower (fresh pages) and a queue of
    # 100k events take 400 MB.
    return Frozen(bytes(memoryview(out)))


def _too_large(out: bytes) -> bool:
    """Whether encoded ``out`` may hold a string or container :func:`snapshot` would
    cut (so it must take that way)."""
    size = len(out)
    return size > FAST_LIMIT or (size >= 2 * MAX_ITEMS and out.count(b",") >= MAX_ITEMS)


def _reads_back(out: bytes, value: Any) -> bool:
    # orjson writes NaN and infinities as null without a word, as it writes None. A
    # payload with a null is kept as encoded only if its JSON reads back equal to it (a
    # NaN would come back as None). Both steps run in C: about 3 µs for an LLM call's
    # messages and tools, against 15 µs for the snapshot() walk. Anything that does not
    # compare equal (tuples, rich objects, a NaN) takes the walk, as before.
    try:
        return bool(orjson.loads(out) == value)
    except Exception:  # an __eq__ that raises (numpy arrays) or returns no bool
        return False


def thaw(value: Any) -> Any:
    """Return the plain data of a :func:`freeze` result."""
    return orjson.loads(value.raw) if value.__class__ is Frozen else value


def freeze_raw(value: Any, fields: Callable[[Any], Any] | None = None) -> Any:
    """Like :func:`freeze`, for framework objects whose fields the writer will read:
    pydantic models are copied as their field dicts (no ``model_dump`` walk).

    Used for :class:`Deferred` payloads. ``fields`` replaces :func:`model_fields` for
    objects JSON has no form for (a framework that knows its objects better). A
    model's unset fields are null, so the read-back that guards :func:`freeze` against
    NaN cannot apply here: a NaN or infinity inside such a payload is recorded as null.
    """
    try:
        out = orjson.dumps(value, default=fields or model_fields, option=_FREEZE_OPTIONS)
    except (TypeError, orjson.JSONEncodeError):
        return snapshot(value)
    if _too_large(out):
        return snapshot(value)
    return Frozen(bytes(memoryview(out)))  # a tight copy, as freeze() keeps


def model_fields(value: Any) -> Any:
    """Return a pydantic model's fields as a dict (the dict it holds: not a copy), or
    :func:`snapshot` of anything else; what :func:`freeze_raw` encodes objects as."""
    # A pydantic v2 model keeps its fields in __dict__ (and extra ones apart). Tested by
    # __pydantic_fields__: pydantic 2.11+ makes `model_fields` a deprecated class
    # property, four times slower to look up.
    if getattr(value.__class__, "__pydantic_fields__", None) is not None:
        extra = getattr(value, "__pydantic_extra__", None)
        return {**value.__dict__, **extra} if extra else value.__dict__
    return snapshot(value)


class Deferred:
    """Event data the writer makes: ``make(thaw(raw), context)``.

    A handler that would otherwise read a framework object field by field on the
    caller's thread (where none of that code is in cache) copies it whole with
    :func:`freeze_raw` instead and leaves the reading to the ledger writer, which runs
    ``make`` once per event, in queue order, and records what it returns. ``context``
    carries what the caller already knows (timings, the run's accumulators).
    """

    __slots__ = ("context", "make", "raw")

    def __init__(self, make: Any, raw: Any, context: Any = None) -> None:
        self.make = make
        self.raw = raw
        self.context = context


_make_errors = 0


def make_data(make: Callable[[Any, Any], Any], raw: Any, context: Any = None) -> dict[str, Any]:
    """Return ``make(thaw(raw), context)``: an event's data read from the copy of a
    framework object (what the writer does with a :class:`Deferred`; a handler already
    running on the writer calls it directly). If ``make`` fails or returns no dict, the
    event keeps what was captured and says why, rather than being lost."""
    try:
        data = make(thaw(raw), context)
        if isinstance(data, dict):
            return data
        raise TypeError(f"{getattr(make, '__name__', 'make')} returned "
                        f"{type(data).__name__}, not a dict")
    except Exception as exc:
        global _make_errors
        _make_errors += 1
        if _make_errors <= 10:
            logging.getLogger("tracevault").error(
                "tracevault: could not make an event's data: %r", exc, exc_info=True)
        return {"capture_error": f"{type(exc).__name__}: {exc}", "raw": thaw(raw)}
