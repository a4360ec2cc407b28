"""Callbacks interpreted by the ledger writer instead of on the caller's thread.

A framework handler's callback does two kinds of work: copying what it records (the
framework's objects change after the callback returns) and deciding what to record
(which run it belongs to, where it hangs in the tree, which events it becomes). Only
the copy has to happen on the caller's thread. :func:`tracevault.capture.later`
queues the rest as a :class:`Later` item: the callback's function and its (copied)
arguments, the caller's :func:`~tracevault.context.current_scope` and
:func:`~tracevault.context.current_span`, and the caller's clocks. The writer runs it
where it takes the item from the queue, in queue order, with that scope and span
current, so the events it records take their place in the batch as if captured by the
caller, timestamped when the callback happened (:func:`clock` gives a replayed
callback the caller's ``perf_counter`` for durations). Other context variables are not carried: a
callback that needs one passes its value as an argument.

A queued callback is one tuple, and the scope and span are objects that already
exist: every object a queued item keeps alive is work for the garbage collector each
time it runs (about half of what a callback cost the caller's thread in a loop).
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import struct
from time import perf_counter
from typing import TYPE_CHECKING, Any

from tracevault.context import _scope, _span
from tracevault.ids import uuid7, uuid7_from

if TYPE_CHECKING:
    from tracevault.config import Settings

log = logging.getLogger("tracevault")


class Replay:
    """What a running :class:`Later` item records, and the time and settings it
    stands for (the level filter and settings in force when the callback came, not
    those of a later ``configure()`` or ``shutdown()``)."""

    __slots__ = ("clock", "items", "salt", "settings", "time_ns")

    def __init__(self, time_ns: int, clock: float, settings: Settings,
                 salt: bytes | None = None) -> None:
        self.time_ns = time_ns
        self.clock = clock
        self.settings = settings
        self.salt = salt
        self.items: list[Any] = []

    def new_id(self) -> str:
        """The id of the next event this callback records: a new UUIDv7, or, with a
        ``salt``, one derived from the salt, the callback's clocks and the event's place
        among its events — the same each time the callback is run again (a writer
        process that died before acknowledging a batch gets it again, and appends are
        idempotent by id)."""
        if self.salt is None:
            return uuid7()
        seed = self.salt + _SEED.pack(self.time_ns, self.clock, len(self.items))
        return uuid7_from(self.time_ns // 1_000_000, hashlib.blake2b(seed, digest_size=10).digest())


_SEED = struct.Struct("<qdI")


_replay: contextvars.ContextVar[Replay | None] = contextvars.ContextVar(
    "tracevault_replay", default=None
)


def replaying() -> Replay | None:
    """The replay in progress in this context (``None`` on a caller's thread)."""
    return _replay.get()


def clock() -> float:
    """``time.perf_counter()`` as the caller saw it: inside a replayed callback, the
    reading taken when the callback happened."""
    replay = _replay.get()
    return replay.clock if replay is not None else perf_counter()


_failures = 0


class Later(tuple):  # type: ignore[type-arg]
    """A queue item: ``fn(*args)`` to run on the writer, as the caller would have.

    ``(fn, scope, span, time_ns, clock, settings, *args)``: one tuple (see the
    module); ``settings`` are the capture settings in force when it was queued."""

    __slots__ = ()

    def run(self, salt: bytes | None = None) -> list[Any]:
        """Run the callback; return what it recorded (queue items, in order). Never
        raises: a failing callback is logged and records what it had recorded.
        ``salt``: its events' ids are derived (see :meth:`Replay.new_id`)."""
        replay = Replay(self[3], self[4], self[5], salt)
        tokens = (_replay.set(replay), _scope.set(self[1]), _span.set(self[2]))
        try:
            self[0](*self[6:])
        except Exception as exc:
            global _failures
            _failures += 1
            if _failures <= 10:
                log.error("tracevault: a deferred callback failed: %r", exc, exc_info=True)
        finally:
            _span.reset(tokens[2])
            _scope.reset(tokens[1])
            _replay.reset(tokens[0])
        return replay.items


def failures() -> int:
    """How many deferred callbacks raised (each was logged)."""
    return _failures
