"""Choosing sinks and running their forwarders alongside the capture pipeline.

Sinks are chosen with ``TRACEVAULT_SINKS`` (comma-separated names: ``langfuse``,
``langsmith``, ``otlp`` (alias ``otel``), ``jsonl``) or in code with
``tracevault.configure(sinks=[...])``, whose items are names or :class:`Sink` objects
(``sinks=[]`` turns forwarding off whatever the environment says).

The hook: :func:`tracevault.capture.install` calls :func:`pipeline_installed` whenever
a pipeline becomes active (``configure()`` or the first capture) or is removed
(``shutdown()``). It starts one :class:`ForwarderGroup` per pipeline: a background
thread opens the ledger, builds the sinks (importing their SDKs there, never on the
caller's thread) and runs one :class:`Forwarder` per sink (``TRACEVAULT_FORWARD_BATCH``
events per request, default 500; retries back off up to ``TRACEVAULT_FORWARD_MAX_BACKOFF``
seconds, default 60). A sink that cannot start (unknown name, missing SDK or settings,
a name two sinks share) is skipped, its error kept for ``tracevault status``; the others
run. At interpreter exit and in ``tracevault.shutdown()`` the group waits up to
``TRACEVAULT_FORWARD_EXIT_TIMEOUT`` seconds (default 5) for delivery of what was
captured (:func:`stop`); what is left is delivered by the next run or ``tracevault
forward``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from tracevault.forks import FORK_GATE
from tracevault.sinks.base import (
    Forwarder,
    Sink,
    SinkError,
    deadline_after,
    describe,
    shut_down,
    shut_down_all,
    time_left,
)
from tracevault.store import Store, open_store

log = logging.getLogger("tracevault.sinks")

FACTORIES: dict[str, str] = {
    "langfuse": "tracevault.sinks.langfuse:from_env",
    "langsmith": "tracevault.sinks.langsmith:from_env",
    "otlp": "tracevault.sinks.otel:from_env",
    "jsonl": "tracevault.sinks.jsonl:from_env",
}
ALIASES = {"otel": "otlp"}
EXTRAS = {"langfuse": "langfuse", "langsmith": "langsmith", "otlp": "otel"}

SinkSpec = str | Sink


def canonical(name: str) -> str:
    """Return a sink name as its cursor is kept: lower-cased, an alias as the name it
    stands for (``otel`` is ``otlp``)."""
    name = name.strip().lower()
    return ALIASES.get(name, name)


def unique(spec: str | Iterable[SinkSpec] | None) -> list[SinkSpec]:
    """Return the sinks listed in ``spec`` (a ``TRACEVAULT_SINKS`` string or a list) in
    the order first given, each name once, as :func:`canonical` spells it. Names are not
    checked (see :func:`parse`)."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else spec
    found: list[SinkSpec] = []
    for item in items:
        if isinstance(item, str):
            # one name, one cursor: "otel,otlp" is one sink, not two fighting over it
            item = canonical(item)
            if not item or item in found:
                continue
        found.append(item)
    return found


def _check_name(name: str) -> None:
    if name not in FACTORIES:
        raise ValueError(f"unknown sink {name!r}; choose from "
                         f"{', '.join(sorted([*FACTORIES, *ALIASES]))}")


def parse(spec: str | Iterable[SinkSpec] | None) -> list[SinkSpec]:
    """Return the sinks named in ``spec``, as :func:`unique` does.

    Raises ``ValueError`` naming the choices for an unknown name.
    """
    items = unique(spec)
    for item in items:
        if isinstance(item, str):
            _check_name(item)
    return items


def configured(extra: dict[str, Any] | None = None) -> list[SinkSpec]:
    """Return the sinks of ``configure(sinks=...)``, else of ``TRACEVAULT_SINKS``, as
    :func:`unique` does: an unknown name fails when its sink is built, so it is reported
    in ``tracevault status`` and does not stop the other sinks."""
    if extra is not None and "sinks" in extra:
        return unique(extra["sinks"])
    return unique(os.environ.get("TRACEVAULT_SINKS"))


def build(spec: SinkSpec) -> Sink:
    """Return a sink object for a name (from its vendor's environment) or a sink.

    Raises ``ValueError`` for an unknown name, :class:`SinkError` for a missing SDK.
    """
    if not isinstance(spec, str):
        return spec
    name = canonical(spec)
    _check_name(name)
    module, func = FACTORIES[name].split(":")
    try:
        factory = getattr(importlib.import_module(module), func)
    except ImportError as exc:
        extra = EXTRAS.get(name)
        hint = f": pip install 'tracevault[{extra}]'" if extra else ""
        raise SinkError(f"the {name} sink needs its SDK{hint} ({exc})") from None
    sink: Sink = factory(name)
    return sink


def positive_env(name: str, default: float) -> float:
    """Return ``$name`` as a number above zero; a value that is not one is logged and
    the default applies (as for every ``TRACEVAULT_*`` setting)."""
    raw = (os.environ.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        log.warning("tracevault: %s=%r is not a number above zero; using %s", name, raw,
                    default)
        return default
    return value


def batch_size_env() -> int:
    """Events per request from ``TRACEVAULT_FORWARD_BATCH`` (default 500, at least 1)."""
    return max(1, int(positive_env("TRACEVAULT_FORWARD_BATCH", 500)))


class ForwarderGroup:
    """The forwarders of one pipeline: built and run on a background thread."""

    def __init__(self, store: Store | str, specs: Sequence[SinkSpec], *,
                 batch_size: int | None = None) -> None:
        self._store_arg = store
        self.specs = list(specs)
        self.batch_size = batch_size or batch_size_env()
        self.forwarders: list[Forwarder] = []
        self.errors: dict[str, str] = {}
        self.store: Store | None = None
        self._ready = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._boot, name="tracevault-forwarders",
                                        daemon=True)

    def start(self) -> ForwarderGroup:
        # Sinks are built on the background thread. Their SDKs' thread pools register
        # with threading's exit hooks when first imported, which fails once the
        # interpreter began exiting: a short script would then forward nothing. Import
        # that module here, on the caller's thread, while it still can.
        import concurrent.futures.thread  # noqa: F401

        _deliver_before_threads_stop()
        self._thread.start()
        return self

    def _boot(self) -> None:
        try:
            store = self._store_arg
            self.store = open_store(store) if isinstance(store, str) else store
            with FORK_GATE:  # the sinks' SDKs are imported here: see tracevault.forks
                sinks = self._build_sinks()
            if self._closed:  # shut down while the sinks were being built
                for sink in sinks:
                    shut_down(sink)
            else:
                cap = positive_env("TRACEVAULT_FORWARD_MAX_BACKOFF", 60.0)
                self.forwarders = [
                    Forwarder(self.store, s, batch_size=self.batch_size, max_backoff=cap).start()
                    for s in sinks
                ]
        except Exception as exc:
            for spec in self.specs:
                self._not_started(_label(spec), describe(exc))
        finally:
            self._ready.set()

    def _build_sinks(self) -> list[Sink]:
        # One broken sink does not stop the others.
        built: list[Sink] = []
        for spec in self.specs:
            try:
                built.append(build(spec))
            except Exception as exc:
                self._not_started(_label(spec), describe(exc))
        # Two sinks under one name would share (and fight over) one cursor; which of
        # them was meant is unknown, so neither starts.
        names = [s.name for s in built]
        shared = {n for n in names if names.count(n) > 1}
        for name in sorted(shared):
            self._not_started(name, f"two sinks are named {name}: give each a unique name")
        for sink in built:
            if sink.name in shared:
                shut_down(sink)  # built, but will not run
        return [s for s in built if s.name not in shared]

    def _not_started(self, name: str, error: str) -> None:
        # Logged, and kept in the ledger: `tracevault status` is where people look.
        self.errors[name] = error
        log.error("tracevault: sink %s not started: %s", name, error)
        persist_error(self.store, name, error)

    def wait_ready(self, timeout: float | None = 30.0) -> bool:
        """Wait until the sinks are built and their forwarders running."""
        return self._ready.wait(timeout)

    def force_flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every sink delivered what the ledger holds now."""
        deadline = deadline_after(timeout)
        if not self.wait_ready(timeout):
            return False
        ok = not self.errors
        for forwarder in self.forwarders:
            ok = forwarder.force_flush(time_left(deadline)) and ok
        return ok

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop every forwarder (after its current batch) and shut its sink down, within
        ``timeout`` seconds in all. Idempotent."""
        if self._closed:
            return
        self._closed = True
        deadline = deadline_after(timeout)
        self.wait_ready(timeout)
        for forwarder in self.forwarders:  # all stop at once; then each is waited for
            forwarder.request_stop()
        stopped = [f.sink for f in self.forwarders if f.stop_thread(time_left(deadline))]
        shut_down_all(stopped, time_left(deadline))  # side by side: none waits for another
        if isinstance(self._store_arg, str) and self.store is not None:
            self.store.close()


def _label(spec: SinkSpec) -> str:
    return spec if isinstance(spec, str) else spec.name


def persist_error(store: Store | None, name: str, error: str) -> None:
    """Record a sink's error in the store when it can keep one (best effort)."""
    setter = getattr(store, "set_sink_error", None)
    if setter is not None:
        with contextlib.suppress(Exception):
            setter(name, error)


_lock = threading.Lock()
_group: ForwarderGroup | None = None


def _forget_parent_group() -> None:
    # A forked child has none of its parent's forwarder threads: waiting for them to
    # stop would only stall its first capture; the parent's forwarders go on
    # delivering what the child writes (they follow the ledger).
    global _group, _lock
    _group, _lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_parent_group)


def active() -> ForwarderGroup | None:
    """Return the running forwarder group, if sinks are configured."""
    return _group


def pipeline_installed(pipeline: Any, settings: Any) -> None:
    """The capture hook: start forwarders for a new pipeline, stop the previous ones."""
    global _group
    specs = configured(getattr(settings, "extra", None)) if pipeline is not None else []
    with _lock:
        old, _group = _group, None
        if specs:
            _group = ForwarderGroup(pipeline.store_url, specs).start()
    if old is not None:
        old.shutdown(timeout=5.0)


def flush(timeout: float | None = 30.0) -> bool:
    """Flush the capture pipeline, then wait until the sinks delivered it; ``True`` when
    everything recorded so far reached every sink."""
    return _deliver(_group, timeout)


def _deliver(group: ForwarderGroup | None, timeout: float | None) -> bool:
    import tracevault

    deadline = deadline_after(timeout)
    if not tracevault.flush(timeout):
        return False
    if group is None:
        return True
    return group.force_flush(time_left(deadline))


def stop() -> None:
    """Stop the running forwarders, after giving them up to
    ``TRACEVAULT_FORWARD_EXIT_TIMEOUT`` seconds (default 5; 0: no wait) to deliver what
    was captured so far; what is left is delivered by the next run or ``tracevault
    forward``. What interpreter exit and :func:`tracevault.shutdown` do. Idempotent."""
    global _group
    with _lock:  # (exit runs it from two hooks: see below)
        group, _group = _group, None
    if group is None:
        return
    raw = (os.environ.get("TRACEVAULT_FORWARD_EXIT_TIMEOUT") or "").strip()
    # 0 turns the final delivery off; anything else that is not a number above 0 is
    # logged and the default applies.
    budget = 0.0 if raw in ("0", "0.0") else positive_env("TRACEVAULT_FORWARD_EXIT_TIMEOUT", 5.0)
    deadline = deadline_after(budget)
    try:
        if budget:
            _deliver(group, budget)
    except Exception as exc:
        log.warning("tracevault: final forwarding failed: %s", exc)
    finally:
        # What the budget left, and a moment for sinks with nothing pending to close
        # their clients cleanly; a sink stuck on a receiver that does not answer is
        # left behind rather than holding up exit.
        group.shutdown(timeout=(time_left(deadline) or 0.0) + _CLOSE_GRACE)


_CLOSE_GRACE = 0.5  # seconds beyond the exit budget for closing sinks

_early_exit_hook = False


def _at_exit_early() -> None:
    # Threading's exit hooks run before Python waits for the other non-daemon threads:
    # while any is still running (and may record more), the atexit hook delivers.
    me = threading.current_thread()
    if any(t is not me and not t.daemon and t.is_alive() for t in threading.enumerate()):
        return
    stop()


def _deliver_before_threads_stop() -> None:
    """Make the final delivery run among threading's exit hooks, before the thread
    pools' own (registered when concurrent.futures.thread was imported; they run last
    in, first out): after them an SDK that submits work to a pool (OpenTelemetry's
    exporters) cannot deliver. The atexit hook below stays as the fallback."""
    global _early_exit_hook
    if _early_exit_hook:
        return
    try:
        threading._register_atexit(_at_exit_early)  # type: ignore[attr-defined]
        _early_exit_hook = True
    except (AttributeError, RuntimeError):  # another CPython, or already exiting
        pass


# Registered on import, i.e. after the pipeline module's own exit handler, so it runs
# first (atexit is last-in, first-out): the ledger is still open and flushable.
atexit.register(stop)
