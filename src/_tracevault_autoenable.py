"""Boot-time auto-enable, loaded from ``tracevault-autoenable.pth`` at interpreter start.

Only when ``TRACEVAULT_ENABLED`` is true does anything happen: a post-import hook is
put on ``sys.meta_path``. It waits for a framework to be imported (the names of the
entry points in group ``tracevault.autoenable``, e.g. ``langchain_core``,
``llama_index.core``) and then calls that integration's ``enable()``, so an unmodified
script is recorded without importing tracevault itself until a framework is in use.
This module is stdlib-only and tiny because it runs in every interpreter of the
environment.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

GROUP = "tracevault.autoenable"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

_lock = threading.RLock()
_installed = False
_pending: dict[str, list[str]] = {}  # trigger module -> ["pkg.mod:func", ...]
_done: set[str] = set()  # "pkg.mod:func" already called
errors: list[str] = []  # what went wrong while enabling (also logged)


def requested(environ: Any = None) -> bool:
    """Return whether ``TRACEVAULT_ENABLED`` asks for auto-enable."""
    env = os.environ if environ is None else environ
    return str(env.get("TRACEVAULT_ENABLED", "")).strip().lower() in _TRUE


def warn_if_misspelt(environ: Any = None) -> None:
    """Say so on stderr when ``TRACEVAULT_ENABLED`` is set to something that is neither
    true nor false (a typo would otherwise leave recording off without a word)."""
    env = os.environ if environ is None else environ
    value = str(env.get("TRACEVAULT_ENABLED", "")).strip().lower()
    if value and value not in _TRUE and value not in _FALSE:
        logging.getLogger("tracevault").error(
            "tracevault: TRACEVAULT_ENABLED=%r is neither true (%s) nor false (%s): "
            "recording stays off", env["TRACEVAULT_ENABLED"], "/".join(_TRUE), "/".join(_FALSE))


def _call(target: str) -> None:
    if target in _done:
        return
    _done.add(target)
    module_name, _, attr = target.partition(":")
    try:
        func: Callable[[], object] = getattr(importlib.import_module(module_name), attr)
        func()
    except Exception as exc:  # never break the user's program at import time
        errors.append(f"{target}: {exc!r}")
        logging.getLogger("tracevault").warning("tracevault auto-enable %s failed: %r", target, exc)


def _fire(trigger: str) -> None:
    with _lock:
        targets = _pending.pop(trigger, [])
        for target in targets:
            _call(target)


class _Loader(importlib.abc.Loader):
    """Wraps a trigger module's loader to run the hooks once the module has executed."""

    def __init__(self, wrapped: importlib.abc.Loader, trigger: str) -> None:
        self._wrapped = wrapped
        self._trigger = trigger

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._wrapped.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._wrapped.exec_module(module)
        _fire(self._trigger)

    def __getattr__(self, name: str) -> Any:  # resource readers etc. of the real loader
        return getattr(self._wrapped, name)


class _Finder(importlib.abc.MetaPathFinder):
    """Sees trigger modules being imported; lets the other finders find them."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, fullname)
                return spec
        return None


def install(targets: dict[str, list[str]] | None = None) -> None:
    """Arm the hooks (idempotent). ``targets`` maps trigger modules to ``module:func``
    strings; by default they come from the installed ``tracevault.autoenable`` entry
    points. A trigger already imported fires at once."""
    global _installed
    with _lock:
        if targets is None:
            from importlib.metadata import entry_points

            targets = {}
            for ep in entry_points(group=GROUP):
                targets.setdefault(ep.name, []).append(ep.value)
        for trigger, values in targets.items():
            queue = _pending.setdefault(trigger, [])
            queue.extend(v for v in values if v not in queue and v not in _done)
        if not _installed:
            sys.meta_path.insert(0, _Finder())
            _installed = True
        for trigger in [t for t in _pending if t in sys.modules]:
            _fire(trigger)


def boot() -> None:
    """Entry point of the ``.pth`` file: arm the hooks if ``TRACEVAULT_ENABLED`` is true."""
    if requested():
        try:
            install()
        except Exception as exc:
            errors.append(repr(exc))
