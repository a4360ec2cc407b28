"""Ledger backends and :func:`open_store`, which picks one from a URL."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from tracevault.forks import FORK_GATE
from tracevault.store.base import (
    DayStats,
    ModelStats,
    SessionSummary,
    Stats,
    Store,
    StoredEvent,
    StoreError,
    ToolStats,
)

DEFAULT_URL = "sqlite:///tracevault.db"

__all__ = [
    "DEFAULT_URL",
    "DayStats",
    "ModelStats",
    "SessionSummary",
    "Stats",
    "Store",
    "StoreError",
    "StoredEvent",
    "ToolStats",
    "open_store",
    "shown_url",
]


def shown_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``: how a store URL appears in
    messages, logs and errors (a PostgreSQL URL may carry the database password)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # not a URL one can read a password from: show its scheme only
        return url.split(":", 1)[0] + ":…"
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _backend(name: str) -> Any:
    """Import a store module (on first use: the writer's thread opens the ledger). A
    fork waits for the import to finish: a child forked in the middle of it would find
    the module half-initialised and its import lock held for ever."""
    with FORK_GATE:
        return importlib.import_module(f"tracevault.store.{name}")


def open_store(url: str = DEFAULT_URL, *, create: bool = True) -> Store:
    """Open the ledger at ``url``.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or a bare file path
    open an SQLite ledger (``?synchronous=normal`` trades power-loss durability for
    speed); ``postgresql://...`` opens a PostgreSQL ledger (``tracevault[postgres]``).
    With ``create=False`` a missing SQLite file is an error instead of a new ledger.
    Raises :class:`StoreError` with a readable message on any problem.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):
        path = parts.path if scheme == "file" else url
        sqlite: Store = _backend("sqlite").SQLiteStore(path, create=create)
        return sqlite
    if scheme == "sqlite":
        path = url[len("sqlite:///") :].split("?", 1)[0] if url.startswith("sqlite:///") else ""
        if not path:
            raise StoreError(
                f"bad SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs.db"
            )
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        sqlite = _backend("sqlite").SQLiteStore(
            path, create=create, synchronous=options.get("synchronous", "full"))
        return sqlite
    if scheme in ("postgresql", "postgres"):
        try:
            module = _backend("postgres")
        except ImportError as exc:
            raise StoreError(
                "PostgreSQL ledger needs the postgres extra: "
                f"pip install 'tracevault[postgres]' ({exc})"
            ) from None
        store: Store = module.PostgresStore(url, create=create)
        return store
    raise StoreError(
        f"unknown store URL scheme {scheme!r} in {shown_url(url)!r} (use sqlite:/// or "
        "postgresql://)"
    )
