"""Deferred callbacks sent to the writer process, to be interpreted there.

With the writer in a child process (:mod:`tracevault.sidecar`), what a framework
handler's callback means — run state, tree, events, tokens and cost — is decided in
the child too: the parent's writer thread pickles the :class:`~tracevault.replay.Later`
items as they are (about 1.5 µs per event, against 7 to interpret them and encode the
events), so the agent's process holds the GIL for a fifth of the time per batch.

A callback's function is a method of its handler. The handler is sent as a
*replica*: its class, a token and the few settings it was made with
(:func:`replicable`); the child keeps one replica per token, so the run state the
handler builds across callbacks lives there, in the child. Exceptions are sent as
:class:`ErrorRef` (type and message), never as themselves: not every exception
pickles, and one reported by several callbacks must stay one object in the child.

This runs for every callback: the pickler finds the classes met in every item in its
dispatch table, by exact class, rather than through the generic ``__reduce_ex__``
protocol or a ``persistent_id`` hook called for every object (which cost 5–6 µs per
event instead of 1.5).
"""

from __future__ import annotations

import copyreg
import io
import itertools
import logging
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from uuid import UUID

from tracevault.context import Scope, SpanRef
from tracevault.replay import Later
from tracevault.snapshot import Deferred, Frozen, add_reports, reports_of

_dispatch: dict[type, Callable[[Any], Any]] = dict(copyreg.dispatch_table)
_tokens = itertools.count(1)
# In the child: the handlers it stands in for, least recently used first. Bounded: an
# application may make a handler per request; one sent again after its replica was
# dropped gets a new one, which owns the same runs (see replicable).
_replicas: OrderedDict[tuple[type, int], Any] = OrderedDict()
_MAX_REPLICAS = 4096
_errors: dict[int, ErrorRef] = {}  # in the child: one object per exception
_MAX_ERRORS = 10_000
_lock = threading.Lock()


class ErrorRef(Exception):
    """An exception of the agent's process, as the writer process sees it: its type
    (``qualname``) and message, and where it was recorded already (by another
    framework's handler in the agent's process, say: see
    :func:`tracevault.snapshot.first_report`). One object per exception in the child
    (``token``), so a failure reported by several callbacks is recognised as one."""

    def __init__(self, token: int, qualname: str, message: str,
                 reports: dict[str, list[tuple[str, ...]]] | None = None) -> None:
        super().__init__(message)
        self.token = token
        self.qualname = qualname
        self.reports = reports or {}

    @classmethod
    def of(cls, exc: BaseException) -> ErrorRef:
        """The stand-in for ``exc`` (read now: where it was recorded so far)."""
        try:
            message = str(exc)
        except Exception:
            message = f"<{type(exc).__name__}: message unreadable>"
        return cls(error_token(exc), type(exc).__qualname__, message, reports_of(exc))

    def __reduce__(self) -> tuple[Any, ...]:
        return _error, (self.token, self.qualname, str(self), self.reports)


def _error(token: int, qualname: str, message: str,
           reports: dict[str, list[tuple[str, ...]]]) -> ErrorRef:
    with _lock:
        known = _errors.get(token)
        if known is None:
            if len(_errors) >= _MAX_ERRORS:
                _errors.clear()  # old failures: their runs have long ended
            known = _errors[token] = ErrorRef(token, qualname, message)
    add_reports(known, reports)  # recorded in the agent's process since it came last
    return known


_TOKEN = "__tracevault_error_token__"


def error_token(exc: BaseException) -> int:
    """A number that stays with ``exc``: set on it (``id()`` is reused once it is
    freed), or, for an exception that takes no attributes, kept with the exception
    itself (alive, so its ``id()`` is not reused) among the last few thousand."""
    token = getattr(exc, _TOKEN, None)
    if token.__class__ is int:
        return token
    try:
        setattr(exc, _TOKEN, token := next(_tokens))
        return token
    except (AttributeError, TypeError):
        pass
    with _lock:
        known = _refusing.get(id(exc))
        if known is not None and known[0] is exc:
            return known[1]
        if len(_refusing) >= _MAX_ERRORS:
            _refusing.clear()
        token = next(_tokens)
        _refusing[id(exc)] = (exc, token)
        return token


_refusing: dict[int, tuple[BaseException, int]] = {}


def replicable(cls: type, state: Callable[[Any], Any], make: Callable[[type, int, Any], Any],
               update: Callable[[Any, Any], None]) -> None:
    """Send instances of ``cls`` (exactly that class) to the writer process as replicas:
    ``state(obj)`` is what the child needs to build one (picklable), ``make(cls, token,
    state)`` builds it there and ``update(replica, state)`` brings it up to date. An
    instance goes as its class, a token and its state; the child keeps one replica per
    token (``make`` may be called again for a token whose replica was dropped: what the
    replica owns must follow the token, not the object). A class the child could not
    import by its name (defined in ``__main__`` or inside a function) is not sent: its
    callbacks are interpreted in this process."""
    if cls in _replicated:
        return
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        keep_here(f"{cls.__qualname__} cannot be imported by the ledger writer process")
        return

    def reduce(obj: Any) -> tuple[Any, ...]:
        token = obj.__dict__.get(_REPLICA)
        if token is None:
            token = obj.__dict__.setdefault(_REPLICA, next(_tokens))
        return _replica, (cls, token, state(obj), make, update)

    _dispatch[cls] = reduce
    _replicated.add(cls)


_REPLICA = "_tracevault_replica_token"


def reduce_with(cls: type, reduce: Callable[[Any], Any]) -> None:
    """Pickle instances of ``cls`` (exactly that class) with ``reduce``."""
    _dispatch[cls] = reduce


def _replica(cls: type, token: int, state: Any, make: Callable[[type, int, Any], Any],
             update: Callable[[Any, Any], None]) -> Any:
    key = (cls, token)
    with _lock:
        replica = _replicas.get(key)
        if replica is None:
            replica = _replicas[key] = make(cls, token, state)
            if len(_replicas) > _MAX_REPLICAS:
                _replicas.popitem(last=False)
        else:
            _replicas.move_to_end(key)
            update(replica, state)
        return replica


def _uuid(value: int) -> UUID:
    return UUID(int=value)


def _later(items: tuple[Any, ...]) -> Later:
    return Later(items)


_dispatch[UUID] = lambda u: (_uuid, (u.int,))
_dispatch[Frozen] = lambda f: (Frozen, (f.raw,))
_dispatch[Scope] = lambda s: (Scope, (s.session_id, s.user_id, s.metadata, s.tags))
_dispatch[SpanRef] = lambda s: (SpanRef, (s.trace_id, s.span_id))
_dispatch[Later] = lambda item: (_later, (tuple(item),))
_dispatch[Deferred] = lambda d: (Deferred, (d.make, d.raw, d.context))


class _Pickler(pickle.Pickler):
    dispatch_table = _dispatch


def dumps(message: Any) -> bytes:
    """Pickle a message holding queue items (events and deferred callbacks) for the
    writer process; raises :class:`pickle.PicklingError` (or another error) for what
    cannot go there."""
    out = io.BytesIO()
    _Pickler(out, protocol=5).dump(message)
    return out.getvalue()


def loads(data: bytes | memoryview) -> Any:
    """What :func:`dumps` pickled, with handlers and exceptions as replicas."""
    return pickle.loads(data)


def shippable(item: Later) -> bool:
    """Whether ``item`` can be interpreted in the writer process: its function is a
    method of an object sent as a replica (see :func:`replicable`), and no handler of
    this process has to stay here (see :func:`keep_here`)."""
    if _kept_here:
        return False
    owner = getattr(item[0], "__self__", None)
    return owner is not None and owner.__class__ in _replicated


def keep_here(reason: str) -> None:
    """Interpret every callback in this process from now on: a handler whose callbacks
    cannot be interpreted elsewhere (``reason``) shares run state with the others (it
    tells which runs another handler records already), and that state must be in one
    place."""
    global _kept_here
    if not _kept_here:
        _kept_here = True
        logging.getLogger("tracevault").info(
            "tracevault: callbacks are interpreted in this process: %s", reason)


_kept_here = False
_replicated: set[type] = set()
