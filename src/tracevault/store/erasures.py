"""Erasure records: every erasure leaves a sealed record of itself in the trail.

Erasure clears a row's payload and salt and keeps its digest, so the chain still
verifies — which, on its own, would let anyone with write access to the database wipe
content unseen. :meth:`SQLStore.erase <tracevault.store.sql.SQLStore.erase>` therefore
first appends a ``custom`` event named :data:`ERASURE` saying what it erases (the
session, user, run, time bound or sequence numbers), who asked (login, host, process)
and why, and then erases only matching rows recorded *before* that record.
Verification accepts an erased row only when a record after it covers it
(:class:`ErasureIndex`): payload and salt cleared any other way show up as tampering, and a
record cannot be removed or moved without breaking the chain.

The rule depends only on a row's columns and its place in the trail, so it holds in a
copy (``tracevault copy`` keeps sequence numbers) as in the original.
"""

from __future__ import annotations

import bisect
import getpass
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from tracevault.ids import uuid7
from tracevault.ledger import COLUMNS, format_ts, header_columns, parse_ts, stored_text
from tracevault.schema import AuditEvent

ERASURE = "tracevault.erasure"  # the name of an erasure record (kind "custom")
# The name a captured custom event named ERASURE is stored under: only an erasure
# appends records, or whoever can record an event (an agent, a prompt it obeys) could
# write one covering content that is then wiped through SQL, and verify would pass.
CAPTURED_ERASURE_NAME = f"user:{ERASURE}"
# SQL that picks erasure records, and the SQL that keeps them out of what an erasure
# clears (NULL-safe: a custom event without a name is erased like any other).
IS_A_RECORD = f"kind = 'custom' AND name = '{ERASURE}'"
NOT_A_RECORD = f"NOT (kind = 'custom' AND coalesce(name, '') = '{ERASURE}')"
_TS, _KIND, _NAME = (COLUMNS.index(c) for c in ("ts", "kind", "name"))
_ID_COLUMNS = tuple(COLUMNS.index(c) for c in ("session_id", "user_id", "trace_id"))


def is_record(kind: str | None, name: str | None) -> bool:
    """Whether an event of ``kind`` named ``name`` is an erasure record (the Python
    twin of :data:`IS_A_RECORD`)."""
    return kind == "custom" and name == ERASURE


@dataclass(frozen=True, slots=True)
class SeqRanges:
    """Sequence numbers as sorted, disjoint ``(first, last)`` ranges: a record naming
    the scattered rows of years of erasures stays small and quick to look up."""

    firsts: tuple[int, ...]
    lasts: tuple[int, ...]

    @classmethod
    def of(cls, seqs: Iterable[int]) -> SeqRanges:
        """The ranges that hold exactly ``seqs``."""
        return cls._merged((seq, seq) for seq in seqs)

    @classmethod
    def parse(cls, items: Iterable[Any]) -> SeqRanges:
        """Read the ``seqs`` of a record: numbers and ``[first, last]`` pairs."""
        pairs: list[tuple[int, int]] = []
        for item in items:
            if isinstance(item, list):
                first, last = item
                pairs.append((int(first), int(last)))
            else:
                pairs.append((int(item), int(item)))
        return cls._merged(pairs)

    @classmethod
    def _merged(cls, pairs: Iterable[tuple[int, int]]) -> SeqRanges:
        # Sorted, with touching or overlapping ranges merged: a lookup bisects on the
        # firsts and must find the one range that can hold a number.
        firsts: list[int] = []
        lasts: list[int] = []
        for first, last in sorted(pairs):
            if lasts and first <= lasts[-1] + 1:
                lasts[-1] = max(lasts[-1], last)
            elif first <= last:
                firsts.append(first)
                lasts.append(last)
        return cls(tuple(firsts), tuple(lasts))

    def to_json(self) -> list[int | list[int]]:
        """Numbers, and ``[first, last]`` for a run of more than two."""
        out: list[int | list[int]] = []
        for first, last in zip(self.firsts, self.lasts, strict=True):
            if last - first > 1:
                out.append([first, last])
            else:
                out.extend(range(first, last + 1))
        return out

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        i = bisect.bisect_right(self.firsts, seq) - 1
        return i >= 0 and seq <= self.lasts[i]

    def __len__(self) -> int:
        return sum(last - first + 1 for first, last in zip(self.firsts, self.lasts, strict=True))


@dataclass(frozen=True, slots=True)
class Erasure:
    """An erasure record as verification reads it: it covers the erased rows before
    ``seq`` that match every filter it names (``None``: not filtered on)."""

    seq: int
    session_id: str | None
    user_id: str | None
    trace_id: str | None
    before: datetime | None
    seqs: SeqRanges | None

    def covers(self, seq: int, columns: Sequence[str | None]) -> bool:
        """Whether this record covers row ``seq`` with text ``columns`` (in
        :data:`~tracevault.ledger.COLUMNS` order)."""
        if seq >= self.seq or (self.seqs is not None and seq not in self.seqs):
            return False
        for value, column in zip(self.ids(), _ID_COLUMNS, strict=True):
            if value is not None and columns[column] != value:
                return False
        if self.before is not None:
            ts = columns[_TS]
            return ts is not None and parse_ts(ts) < self.before
        return True

    def ids(self) -> tuple[str | None, str | None, str | None]:
        """The session, user and run this record erases (``None``: any)."""
        return self.session_id, self.user_id, self.trace_id


class ErasureIndex:
    """The erasure records of a trail, looked up by the ids of an erased row: checking
    a row costs the records about its session, user or run plus those that name none
    (by time or sequence number), not every record the trail holds."""

    def __init__(self, records: Sequence[Erasure]) -> None:
        self._by_id: tuple[dict[str, list[Erasure]], ...] = ({}, {}, {})
        self._rest: list[Erasure] = []
        for record in records:
            # Filed under its first id: a record only covers rows with that id.
            for by_id, value in zip(self._by_id, record.ids(), strict=True):
                if value is not None:
                    by_id.setdefault(value, []).append(record)
                    break
            else:
                self._rest.append(record)
        self.count = len(records)

    def covers(self, seq: int, header_text: str) -> bool:
        """Whether a record covers the erased row ``seq``, given its text columns
        joined in header form (:func:`tracevault.ledger.header_sql`)."""
        columns = header_columns(header_text)
        if columns is None or is_record(columns[_KIND], columns[_NAME]):
            return False  # a record is never erased: its payload cleared is tampering
        for by_id, column in zip(self._by_id, _ID_COLUMNS, strict=True):
            value = columns[column]
            if value is not None and _any_covers(by_id.get(value, ()), seq, columns):
                return True
        return _any_covers(self._rest, seq, columns)


def _any_covers(records: Sequence[Erasure], seq: int, columns: Sequence[str | None]) -> bool:
    # Records are in trail order and only later ones can cover the row: the search
    # starts at the first of them (usually the one that erased it).
    start = bisect.bisect_right(records, seq, key=_record_seq)
    return any(records[i].covers(seq, columns) for i in range(start, len(records)))


def _record_seq(record: Erasure) -> int:
    return record.seq


def erasure_event(
    *,
    session_id: str | None = None,
    user_id: str | None = None,
    trace_id: str | None = None,
    before: datetime | None = None,
    seqs: Iterable[int] | None = None,
    reason: str | None = None,
    found: bool = False,
) -> AuditEvent:
    """The record an erasure appends before it clears anything. Its session, user and
    run columns are the ones erased, so ``tracevault show`` of an erased session ends
    with the erasure. ``found``: the record acknowledges rows found erased already
    (``"found": true``), clearing nothing."""
    what: dict[str, Any] = {}
    for key, value in (("session_id", session_id), ("user_id", user_id),
                       ("trace_id", trace_id)):
        if value is not None:
            what[key] = stored_text(value)
    if before is not None:
        what["before"] = format_ts(before)
    if seqs is not None:
        what["seqs"] = SeqRanges.of(seqs).to_json()
    payload: dict[str, Any] = {"erases": what, "by": _requester()}
    if found:
        payload["found"] = True
    if reason is not None:
        payload["reason"] = reason
    return AuditEvent(
        event_id=uuid7(),
        timestamp=datetime.now(timezone.utc),
        kind="custom",
        level="warning",
        name=ERASURE,
        session_id=what.get("session_id"),
        user_id=what.get("user_id"),
        trace_id=what.get("trace_id"),
        data={"name": ERASURE, "payload": payload},
    )


def _requester() -> dict[str, Any]:
    # Who erased: as much as the process can tell about itself.
    try:
        login = getpass.getuser()
    except Exception:  # no login name (a container's bare uid)
        login = str(os.getuid()) if hasattr(os, "getuid") else "?"
    return {"user": login, "host": socket.gethostname(), "pid": os.getpid()}


def erasure_of(seq: int, event: AuditEvent) -> Erasure | None:
    """The record at ``seq`` as verification reads it; ``None`` if ``event`` is not a
    well-formed erasure record (then it covers nothing)."""
    if not is_record(event.kind, event.name):
        return None
    try:
        what = event.data["payload"]["erases"]
        before = what.get("before")
        seqs = what.get("seqs")
        record = Erasure(
            seq,
            _text_or_none(what.get("session_id")),
            _text_or_none(what.get("user_id")),
            _text_or_none(what.get("trace_id")),
            None if before is None else parse_ts(str(before)),
            None if seqs is None else SeqRanges.parse(seqs),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if record.ids() == (None, None, None) and record.before is None and record.seqs is None:
        return None  # an erasure always names what it erases: this one covers nothing
    return record


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
