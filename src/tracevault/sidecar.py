"""The ledger writer in a separate process, so redaction and sealing hold no GIL of ours.

With ``TRACEVAULT_WRITER=process`` (or ``configure(writer="process")``) the pipeline's
writer thread stops doing the expensive part itself. It hands each batch, still
unredacted, to a child Python process (``python -m tracevault.sidecar``) over a pipe and
waits, with the GIL released, until the child says the batch is durable. The child runs
an ordinary :class:`~tracevault.pipeline.Pipeline` with the real store and the built-in
middleware, so redaction, withholding, poison isolation, retries and dead letters work
exactly as in-process. It also runs the framework handlers' deferred callbacks
(:mod:`tracevault.callback_wire`), which the parent sends pickled as they are. What the
agent's process still does per event is one orjson encode of the batch (payloads
captured by ``snapshot.freeze`` are spliced in as they are), or the pickling of the
callbacks.

:class:`SidecarStore` is what the parent's pipeline sees as its store. A child that
dies is restarted and the batch sent again (appends are idempotent by event id, so a
batch the child committed just before dying is not stored twice). A child that cannot
be started, or keeps dying, makes the store fall back to writing in this process with
the same middleware, so nothing is lost because the process writer is unavailable.

Wire format, both ways: a 4-byte big-endian length, then one orjson document.
Parent to child: ``{"op": "append", "events": [...]}`` or ``{"op": "close"}`` — or, for
a batch holding deferred callbacks, the same append as a pickle (its first byte tells
which), with ``"prices"`` when the user's price table changed; child to parent:
``{"ok": true, "written": n, "filtered": n, "withheld": n, "callbacks": n,
"callback_events": n, "empty_callbacks": n}``, preceded while the child's store fails by
``{"progress": true, "error": "...", "write_errors": n}``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import orjson

from tracevault import callback_wire, pricing
from tracevault.config import Settings
from tracevault.ledger import encode_event, parse_ts
from tracevault.pipeline import (
    Item,
    Middleware,
    Pipeline,
    apply_middleware,
    event_of,
    interpret,
    settled,
    timestamp_of,
)
from tracevault.replay import Later
from tracevault.schema import AuditEvent
from tracevault.snapshot import Frozen, thaw
from tracevault.store import Store, StoreError, open_store, shown_url

log = logging.getLogger("tracevault")

CONFIG_ENV = "TRACEVAULT_SIDECAR_SETTINGS"
SALT_ENV = "TRACEVAULT_SIDECAR_SALT"
_HEADER = struct.Struct(">I")
_MAX_RESTARTS = 3  # consecutive failures before writing in this process instead
_PROGRESS_EVERY = 1.0  # seconds between the child's reports while its store fails
_STOP_TIMEOUT = 60.0  # for a child to write what it holds and exit


class SidecarStore:
    """A store that appends through a child writer process (see the module docs).

    Only the pipeline's writer thread calls :meth:`append`; the store offers no reads
    (forwarders and the CLI open the ledger by its URL).
    """

    #: The pipeline skips its own middleware for this store (the child runs it) and
    #: applies it only to events it has to dead-letter itself.
    applies_middleware = True

    def __init__(self, settings: Settings, middleware: Sequence[Middleware]) -> None:
        self.url = settings.store
        # Sent to the child in its environment; raises TypeError now if not JSON.
        self._config = orjson.dumps(asdict(settings)).decode()
        self._middleware = list(middleware)  # for the in-process fallback
        self._proc: subprocess.Popen[bytes] | None = None
        self._failures = 0
        self._fallback: Store | None = None
        self._lock = threading.Lock()
        self.filtered = 0
        self.withheld = 0
        # What the child reports while it retries a failing store (the pipeline's stats
        # and a strict-mode error show it): its last error, and how many writes failed.
        self.last_error: str | None = None
        self.write_errors = 0
        self._closed = False
        # Deferred callbacks interpreted here or in the child (see PipelineStats): how
        # many ran, the events they made, and how many made none.
        # One tuple, replaced whole: stats() reads the three together (see
        # PipelineStats: a torn read could count an event captured and then not).
        self.callback_counts = (0, 0, 0)
        # Callbacks of the batch being appended that ran here, with what they made: a
        # batch sent again (a retry) must not run them twice (a run's end closes it).
        self._ran: dict[int, tuple[Later, list[Item]]] = {}
        # Ids of the events a callback makes derive from this (replay.Replay.new_id), so
        # a batch sent again, to a new child or written here, is not stored twice.
        self._salt = os.urandom(16)
        self._prices_sent: int | None = None  # the price table's version the child has
        self._unsent = 0  # batches of callbacks that could not be pickled (logged: 10)
        self._callbacks_here = False  # the child could not read callbacks: run them here

    # --- the Store surface the pipeline uses -----------------------------------------

    @property
    def interprets_callbacks(self) -> bool:
        """Whether deferred callbacks (:class:`~tracevault.replay.Later`) may be handed
        over as they are, to be interpreted in the child (not once writing fell back to
        this process)."""
        return self._fallback is None and not self._callbacks_here

    def append(self, events: Sequence[Item | Later]) -> int:
        """Send ``events`` (queued items, see :func:`~tracevault.pipeline.event_of`, and
        deferred callbacks, which the child runs) to the child and return once what
        they stand for is durable there."""
        if self._fallback is not None:
            return self._append_here(events)
        with self._lock:
            if self._closed:
                raise StoreError(f"{shown_url(self.url)}: the ledger writer process is closed")
            try:
                proc = self._child()
                assert proc.stdin is not None and proc.stdout is not None
                # Raw pipes and as few system calls as possible: each one releases the
                # GIL, and taking it back from a busy agent thread costs the agent a
                # forced switch (an asyncio loop pays ~0.2 ms for each).
                body, ran_here = self._frame(events)
                _send(proc.stdin.fileno(), body)
                reply = _receive(proc.stdout.fileno())
                while reply is not None and reply.get("progress"):  # still retrying
                    self.last_error = reply.get("error")
                    self.write_errors = int(reply.get("write_errors", self.write_errors))
                    reply = _receive(proc.stdout.fileno())
            except (OSError, ValueError, StoreError) as exc:
                reply = None
                reason = f"{type(exc).__name__}: {exc}"
            else:
                reason = "it exited" if reply is None else str(reply.get("error"))
            if reply is not None and reply.get("unreadable"):
                # The child cannot rebuild what the callbacks refer to (a handler class
                # it cannot import): from now on they are interpreted here, starting
                # with this batch, which it did not take in.
                self._callbacks_here = True
                log.error("tracevault: the ledger writer process cannot interpret "
                          "callbacks (%s); they are interpreted in this process",
                          reply["unreadable"])
                raise StoreError(f"{shown_url(self.url)}: sending the batch again")
            if reply is None or not reply.get("ok"):
                return self._failed(events, reason)
            self._failures = 0
            self.last_error = None
            self.filtered += int(reply.get("filtered", 0))
            self.withheld += int(reply.get("withheld", 0))
            self._count_callbacks(int(reply.get("callbacks", 0)),
                                  int(reply.get("callback_events", 0)),
                                  int(reply.get("empty_callbacks", 0)))
            self._count_callbacks(*ran_here)
            self._forget_ran(events)
            return int(reply.get("written", len(events)))

    def _frame(self, events: Sequence[Item | Later]) -> tuple[bytes, tuple[int, int, int]]:
        """The append frame for ``events``: JSON, or pickled when it holds deferred
        callbacks (with the price table, if the child has not got it yet); and what
        callbacks were run here instead (see :meth:`_run_here`), to count once the
        child has their events."""
        if not any(item.__class__ is Later for item in events):
            return _append_frame(events), (0, 0, 0)
        if self._callbacks_here:
            interpreted, counts = self._run_here(events)
            return _append_frame(interpreted), counts
        version, prices = pricing.overrides()
        message: dict[str, Any] = {"op": "append", "events": events}
        if version != self._prices_sent:
            message["prices"] = prices
        try:
            body = callback_wire.dumps(message)
        except Exception as exc:  # something in a callback's arguments does not pickle
            self._unsent += 1
            if self._unsent <= 10:
                log.error("tracevault: deferred callbacks could not be sent to the ledger "
                          "writer process (%r); they are interpreted in this process", exc)
            interpreted, counts = self._run_here(events)
            return _append_frame(interpreted), counts
        self._prices_sent = version
        return body, (0, 0, 0)

    def _run_here(self, events: Sequence[Item | Later]
                  ) -> tuple[list[Item], tuple[int, int, int]]:
        """``events`` with each deferred callback replaced by what it records when run
        in this process; and how many callbacks ran, the events they made and how many
        made none (counted once those events are written: a batch may be sent again)."""
        interpreted, counts = interpret(events, self._run_once)
        return [settled(item) for item in interpreted], counts

    def _run_once(self, item: Later) -> list[Item]:
        done = self._ran.get(id(item))
        if done is not None and done[0] is item:
            return done[1]
        recorded: list[Item] = item.run(self._salt)
        self._ran[id(item)] = (item, recorded)
        return recorded

    def _forget_ran(self, events: Sequence[Item | Later]) -> None:
        if self._ran:
            for item in events:
                self._ran.pop(id(item), None)

    def _count_callbacks(self, ran: int, made: int, empty: int) -> None:
        old_ran, old_made, old_empty = self.callback_counts
        self.callback_counts = (old_ran + ran, old_made + made, old_empty + empty)

    @property
    def callbacks_run(self) -> int:
        """Deferred callbacks interpreted (here or in the child) and written."""
        return self.callback_counts[0]

    @property
    def callback_events(self) -> int:
        """The events those callbacks made."""
        return self.callback_counts[1]

    def close(self) -> None:
        """Let the child write what it holds and exit (idempotent)."""
        with self._lock:
            self._closed = True
            self._stop_child(graceful=True)
            if self._fallback is not None:
                self._fallback.close()

    # --- child lifecycle ----------------------------------------------------------------

    def _child(self) -> subprocess.Popen[bytes]:
        if self._proc is not None:  # a child that died shows up as a failed send or read
            return self._proc
        env = {**os.environ, CONFIG_ENV: self._config, SALT_ENV: self._salt.hex(),
               # The child imports the handler classes it stands in for from where this
               # process found them (a script's own directory, say).
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._prices_sent = None  # a new child knows only the prices of its environment
        # The child must not start a sidecar of its own, nor auto-enable frameworks.
        env.pop("TRACEVAULT_WRITER", None)
        env.pop("TRACEVAULT_ENABLED", None)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tracevault.sidecar"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            env=env,
            close_fds=True,
        )
        return self._proc

    def _stop_child(self, *, graceful: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if graceful and proc.poll() is None and proc.stdin is not None:
                _send(proc.stdin.fileno(), orjson.dumps({"op": "close"}))
                proc.stdin.close()
                proc.wait(timeout=_STOP_TIMEOUT)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()

    def _failed(self, events: Sequence[Item], reason: str) -> int:
        self._failures += 1
        self._stop_child(graceful=False)
        if self._failures < _MAX_RESTARTS:
            # StoreError: the pipeline keeps the batch, backs off and sends it again
            # to a fresh child.
            raise StoreError(f"{shown_url(self.url)}: the ledger writer process failed ({reason}); "
                             "restarting it")
        log.error("tracevault: the ledger writer process failed %d times (%s); writing in "
                  "this process from now on", self._failures, reason)
        self._fallback = open_store(self.url)
        return self._append_here(events)

    def _append_here(self, events: Sequence[Item | Later]) -> int:
        assert self._fallback is not None
        kept = []
        interpreted, counts = self._run_here(events)
        filtered = withheld = 0
        for item in interpreted:
            result, outcome = apply_middleware(self._middleware, event_of(item))
            filtered += outcome == "filtered"
            withheld += outcome == "withheld"
            if result is not None:
                kept.append(result)
        self._fallback.append(kept)
        # Counted once written: a batch whose append fails is handed over again.
        self.filtered += filtered
        self.withheld += withheld
        self._count_callbacks(*counts)
        self._forget_ran(events)
        return len(kept)


_OPTIONS = orjson.OPT_UTC_Z


def _append_frame(events: Sequence[Item]) -> bytes:
    # Captured items go as JSON arrays (AuditEvent field order), events as objects.
    try:
        return orjson.dumps({"op": "append", "events": events}, default=_encode, option=_OPTIONS)
    except orjson.JSONEncodeError:
        # Invalid unicode (lone surrogates) is left for the writer to repair; repair it
        # here the way the ledger does, rather than fail the batch.
        fixed = []
        for item in events:
            event = event_of(item)
            fixed.append(orjson.Fragment(encode_event(replace(
                event, data=thaw(event.data), metadata=thaw(event.metadata)))))
        return orjson.dumps({"op": "append", "events": fixed})


def _encode(value: Any) -> Any:
    # Payloads frozen on the caller's thread are already JSON: splice them in as is.
    if value.__class__ is Frozen:
        return orjson.Fragment(value.raw)
    raise TypeError(f"cannot send {type(value).__name__} to the ledger writer process")


def _send(fd: int, body: bytes) -> None:
    """Write one frame to a raw pipe (one system call unless the pipe is full)."""
    view = memoryview(_HEADER.pack(len(body)) + body)
    while view:
        view = view[os.write(fd, view):]


def _receive(fd: int) -> Any:
    """Read one JSON frame from a raw pipe; ``None`` at end of stream (the peer is gone)."""
    body = _receive_body(fd)
    return None if body is None else orjson.loads(body)


def _receive_body(fd: int) -> memoryview | None:
    """Read one frame's body from a raw pipe; ``None`` at end of stream (the peer is gone).

    The first read takes whatever has arrived, so a small frame costs one system call.
    Reading past the frame cannot happen: each side sends one frame and then waits for
    the other's.
    """
    data = bytearray()
    size = None
    while size is None or len(data) < _HEADER.size + size:
        more = os.read(fd, 65536 if size is None else _HEADER.size + size - len(data))
        if not more:
            return None
        data += more
        if size is None and len(data) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(data)
    return memoryview(data)[_HEADER.size:]


def _decode(raw: list[Any] | dict[str, Any]) -> AuditEvent:
    if isinstance(raw, list):  # a captured item: nanoseconds, or the caller's datetime
        event_id, ts, *fields = raw
        return AuditEvent(event_id, timestamp_of(ts) if isinstance(ts, int) else parse_ts(ts),
                          *fields)
    raw["timestamp"] = parse_ts(raw["timestamp"])
    return AuditEvent(**raw)


_PICKLED = b"\x80"  # how a pickle starts (an orjson frame starts with "{")


def main() -> int:
    """Run the child: append what arrives on stdin, acknowledge on stdout."""
    from tracevault.capture import default_middleware

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    requests, replies = sys.stdin.fileno(), sys.stdout.fileno()
    sys.stdout = sys.stderr  # a stray print must not corrupt the replies
    settings = Settings(**orjson.loads(os.environ[CONFIG_ENV]))
    pipeline = Pipeline(
        settings.store,
        middleware=default_middleware(settings),
        queue_size=settings.queue_size,
        batch_size=settings.batch_size,
        # No agent shares this process's GIL: each hand-over is written as one batch.
        burst=settings.batch_size,
    )
    threading.Thread(target=_exit_with_parent, args=(pipeline,), daemon=True).start()
    salt = bytes.fromhex(os.environ.get(SALT_ENV, "")) or None
    priority = _Priority(behind=max(64, settings.batch_size // 4))
    try:
        while True:
            body = _receive_body(requests)
            try:
                message = None if body is None else (
                    callback_wire.loads(body) if body[:1] == _PICKLED else orjson.loads(body))
            except Exception as exc:  # e.g. a handler class this process cannot import
                _send(replies, orjson.dumps({"ok": False,
                                             "unreadable": f"{type(exc).__name__}: {exc}"}))
                continue
            if message is None or message.get("op") != "append":
                return 0
            before = pipeline.stats()
            if "prices" in message:
                pricing.use_overrides(message["prices"])
            events: list[Any] = message["events"]
            priority.keep_up(len(events))
            # Framework callbacks are interpreted here; other items come as they were
            # queued (pickled) or in their JSON form.
            items, (ran, made, empty) = interpret(events, lambda later: later.run(salt))
            for item in items:
                pipeline.submit(item if isinstance(item, (tuple, AuditEvent))
                                else _decode(item))
            # The pipeline retries a failing store until it works; meanwhile the parent
            # hears why, every so often (the Store protocol has one reply per append).
            while not pipeline.flush(_PROGRESS_EVERY):
                stats = pipeline.stats()
                if stats.last_error is not None:
                    _send(replies, orjson.dumps({"progress": True, "error": stats.last_error,
                                                 "write_errors": stats.write_errors}))
            after = pipeline.stats()
            try:
                _send(replies, orjson.dumps({
                    "ok": True,
                    "written": after.written - before.written,
                    "filtered": after.filtered - before.filtered,
                    "withheld": after.withheld - before.withheld,
                    "callbacks": ran,
                    "callback_events": made,
                    "empty_callbacks": empty,
                    "error": after.last_error,
                }))
            except OSError:  # the parent is gone: what we hold is written or dead-lettered
                return 0
    finally:
        pipeline.shutdown()  # waits for one _exit_with_parent may have started


class _Priority:
    """The child's CPU priority: idle while it keeps up, normal once it falls behind.

    On a machine with few cores the child's work (interpreting callbacks, redacting,
    sealing, writing) competes for a core with the agent's own threads; when one of
    them wakes (a tool's worker handing back to the graph) while the child runs, it can
    wait for the child's time slice to end (3-5 ms on the 2-core VM of the README). At
    idle priority (``SCHED_IDLE``) the child runs only on a core nothing else wants,
    and yields it at once. A child that gets too little CPU that way falls behind —
    batches arrive larger — and then competes normally until it has caught up. Only a
    process allowed back to the normal priority goes idle (see :func:`_can_return`):
    otherwise a busy machine could starve it for good.
    """

    def __init__(self, behind: int) -> None:
        self.behind = behind
        self.idle: bool | None = None
        self.enabled = hasattr(os, "SCHED_IDLE") and _can_return()
        self.keep_up(0)

    def keep_up(self, batch: int) -> None:
        """Set the priority for a batch of ``batch`` items."""
        idle = batch < self.behind
        if idle == self.idle or not self.enabled:
            return
        policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
        self.idle = idle
        for thread in threading.enumerate():  # the policy is each thread's own
            if thread.native_id is not None:
                with contextlib.suppress(OSError):
                    os.sched_setscheduler(thread.native_id, policy, os.sched_param(0))


def _can_return() -> bool:
    """Whether this process may go from idle back to the normal priority (Linux lets an
    unprivileged one only if its ``RLIMIT_NICE`` allows nice 0)."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_NICE)[0]
    except (ImportError, AttributeError, OSError):
        return False
    return os.geteuid() == 0 or limit == resource.RLIM_INFINITY or limit >= 20


def _exit_with_parent(pipeline: Pipeline) -> None:
    # The parent normally closes our stdin; if it died instead (killed, or it gave up
    # waiting while we retry a failing store), write or dead-letter what we hold and go.
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1.0)
    pipeline.shutdown(timeout=10.0)
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
