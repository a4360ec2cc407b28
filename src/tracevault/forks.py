"""Keeping fork() out of work that a child cannot finish.

A child process starts with only the thread that forked; whatever another thread was in
the middle of stays half done there: an SQLite statement leaves SQLite's per-process
lock bookkeeping in a state nobody in the child will undo, and an import leaves a
half-initialised module and its import lock held. tracevault's own background threads
(the ledger writer, the forwarders) do such work, so they do it inside
:data:`FORK_GATE`, and a fork waits (at most ``_FORK_PATIENCE_S``) for them to leave it
and holds them back until it is done.
"""

from __future__ import annotations

import os
import threading

_FORK_PATIENCE_S = 10.0  # a fork waits at most this long for the work under way


class ForkGate:
    """Lets any number of threads do gated work at once, and a fork wait for them.

    ``with FORK_GATE:`` may nest on one thread (only the outermost counts): a thread
    that waited for a fork to finish while already inside would hold that fork back.
    """

    def __init__(self) -> None:
        self._reset()
        # Whether the last fork went ahead with gated work still under way (it waited
        # its patience out): a child then must not touch what that work was using (an
        # SQLite connection inside a call holds its mutex, and closing it would wait
        # for ever). Read in the child; not reset there.
        self.busy_at_fork = False

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._running = 0
        self._forking = 0
        self._depth = threading.local()

    def __enter__(self) -> None:
        depth = getattr(self._depth, "n", 0)
        if not depth:
            with self._cond:
                while self._forking:
                    self._cond.wait()
                self._running += 1
        self._depth.n = depth + 1

    def __exit__(self, *exc: object) -> None:
        depth = self._depth.n = self._depth.n - 1
        if not depth:
            with self._cond:
                self._running -= 1
                if self._forking and not self._running:
                    self._cond.notify_all()

    def _before_fork(self) -> None:
        with self._cond:
            self._forking += 1
            self.busy_at_fork = not self._cond.wait_for(lambda: not self._running,
                                                        timeout=_FORK_PATIENCE_S)

    def _after_fork_in_parent(self) -> None:
        with self._cond:
            self._forking -= 1
            self._cond.notify_all()


FORK_GATE = ForkGate()
os.register_at_fork(
    before=FORK_GATE._before_fork,
    after_in_parent=FORK_GATE._after_fork_in_parent,
    # Parent threads may have held its lock or been inside; they do not exist here.
    after_in_child=FORK_GATE._reset,
)
