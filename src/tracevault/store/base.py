"""The ``Store`` protocol every ledger backend implements, and its result types.

Callers (the pipeline's writer, the CLI, the notebook, forwarders) only use this
protocol, so a new backend plugs in without changing them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from tracevault.ledger import VerifyReport
from tracevault.schema import AuditEvent


class StoreError(RuntimeError):
    """A store cannot be opened, read or written; the message says what to do."""


@dataclass(slots=True)
class StoredEvent:
    """An event as read back from a ledger, with its sequence number."""

    seq: int
    event: AuditEvent


@dataclass(slots=True)
class SessionSummary:
    """One session: who, when, how much happened, what failed, what it cost."""

    session_id: str | None
    user_id: str | None
    start: str
    end: str
    events: int
    runs: int
    errors: int
    tool_calls: int
    tokens: int
    cost: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class ToolStats:
    """Usage of one tool: outcomes recorded, failures, duration average and p95 (ms)."""

    tool: str
    calls: int
    errors: int
    error_rate: float
    avg_ms: float | None
    p95_ms: float | None


@dataclass(slots=True)
class DayStats:
    """One UTC day: event volume, error events, runs and runs that had an error."""

    day: str
    events: int
    errors: int
    runs: int
    failed_runs: int
    error_rate: float


@dataclass(slots=True)
class ModelStats:
    """Model usage: calls, tokens and cost summed over recorded ``llm_call`` outcomes."""

    model: str
    calls: int
    tokens: int
    cost: float


@dataclass(slots=True)
class Stats:
    """Aggregates printed by ``tracevault stats``."""

    tools: list[ToolStats] = field(default_factory=list)
    days: list[DayStats] = field(default_factory=list)
    models: list[ModelStats] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class SinkCursor:
    """A forwarder's persisted position and its last delivery error (``None`` once it
    delivers again); times are ISO strings, ``None`` when never set."""

    name: str
    seq: int
    updated: str | None
    last_error: str | None
    error_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Store(Protocol):
    """A tamper-evident, append-only event ledger.

    ``append`` must be atomic per call and keep one hash chain even when several
    processes append at once. Read methods never modify the ledger.
    """

    url: str

    def append(self, events: Sequence[AuditEvent]) -> int:
        """Seal and store ``events`` in order; return the last sequence number."""
        ...

    def head(self) -> tuple[int, bytes]:
        """Return the last sequence number and chain value (0 and 32 zero bytes if empty)."""
        ...

    def count(self) -> int:
        """Return the number of stored events."""
        ...

    def events(
        self,
        *,
        session_id: str | None = None,
        trace_id: str | None = None,
        kinds: Sequence[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after_seq: int = 0,
        limit: int | None = None,
        seqs: Sequence[int] | None = None,
        no_session: bool = False,
    ) -> Iterator[StoredEvent]:
        """Yield matching events in sequence order (``seqs``: only these sequence numbers;
        ``no_session``: only events recorded without a session)."""
        ...

    def sessions(
        self,
        *,
        user_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        session_id: str | None = None,
        no_session: bool = False,
    ) -> list[SessionSummary]:
        """Return sessions (or just ``session_id``), most recent first; events recorded
        without a session count as one more, whose ``session_id`` is ``None`` (or the
        only one, with ``no_session``)."""
        ...

    def stats(self, *, since: datetime | None = None, until: datetime | None = None) -> Stats:
        """Return tool, day and model aggregates."""
        ...

    def verify(self, anchor: tuple[int, bytes] | None = None) -> VerifyReport:
        """Recompute the chain; report the first bad sequence number if any.

        ``anchor``: a ``(seq, chain)`` kept elsewhere that the chain must pass through.
        """
        ...

    def erase(
        self,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        trace_id: str | None = None,
        before: datetime | None = None,
        seqs: Sequence[int] | None = None,
        reason: str | None = None,
    ) -> int:
        """Erase the content of the matching events (filters combine with AND; at least
        one is required; ``before``: events recorded before that time, for retention; a
        naive time is local time, and a time in the future is refused):
        payload and salt are cleared, while the indexed columns, the digest and the
        chain stay, so the trail still verifies. Returns how many events were erased
        now (ones erased before are not counted again).

        If anything matches, a record of the erasure (what it erases, who asked and
        ``reason``) is appended first, and only events recorded before it are erased:
        ``verify`` accepts an erased event only below a record that covers it
        (:mod:`tracevault.store.erasures`). Erasure records themselves are never
        erased."""
        ...

    def get_cursor(self, name: str) -> int:
        """Return the last sequence number a forwarder ``name`` delivered (0 if none)."""
        ...

    def set_cursor(self, name: str, seq: int) -> None:
        """Persist forwarder ``name``'s position (it only moves forward)."""
        ...

    def set_sink_error(self, name: str, error: str | None) -> None:
        """Persist forwarder ``name``'s last delivery error; ``None`` clears it."""
        ...

    def sink_cursors(self) -> list[SinkCursor]:
        """Return every forwarder's cursor and last error, by name."""
        ...

    def close(self) -> None:
        """Release connections; idempotent."""
        ...
