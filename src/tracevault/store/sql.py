"""Queries shared by the SQL ledgers (SQLite, PostgreSQL).

A backend subclasses :class:`SQLStore` and supplies the connection handling, the append
transaction and the few dialect differences (placeholders, how a timestamp is compared
and read back, how a UTC day is extracted). The table layout is the same everywhere:
``events`` (one row per event, columns from :data:`tracevault.ledger.COLUMNS` plus
``seq``, ``payload``, ``salt``, ``digest``, ``chain``) and a one-row ``ledger_head``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

from tracevault.ledger import (
    COLUMNS,
    METRICS,
    TEXT_COLUMNS,
    VerifyReport,
    decode_event,
    erased_data,
    header_sql,
    parse_ts,
    stored_text,
    verify_rows,
)
from tracevault.schema import AuditEvent
from tracevault.store.base import (
    DayStats,
    ModelStats,
    SessionSummary,
    SinkCursor,
    Stats,
    StoredEvent,
    StoreError,
    ToolStats,
)
from tracevault.store.erasures import (
    IS_A_RECORD,
    NOT_A_RECORD,
    Erasure,
    ErasureIndex,
    erasure_event,
    erasure_of,
)

_EVENT_COLUMNS = ", ".join(COLUMNS)
_IN_CHUNK = 500  # sequence numbers per statement (SQLite allows 999 parameters)
_ERASE_ROWS = 5_000  # rows erased per statement
_OUTCOME = "phase IN ('end', 'point')"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Return the ``q`` quantile (0..1) of ``values`` by the nearest-rank method."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def verified(
    rows: Iterator[tuple[Any, ...]],
    head_seq: int,
    head_chain: bytes,
    anchor: tuple[int, bytes] | None,
    records: list[Erasure],
) -> VerifyReport:
    """:func:`~tracevault.ledger.verify_rows` of a SQL ledger's rows, each erased row
    checked against the trail's erasure ``records``."""
    index = ErasureIndex(records)
    report = verify_rows(rows, head_seq, head_chain, anchor, index.covers)
    report.erasures = index.count
    return report


def _chunks(seqs: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(seqs), _IN_CHUNK):
        yield seqs[i : i + _IN_CHUNK]


def _seq_in(chunk: Sequence[int]) -> str:
    return f"seq IN ({', '.join('?' * len(chunk))})"


class SQLStore:
    """Read side of a SQL ledger, written once for every dialect."""

    url: str
    day_sql = "substr(ts, 1, 10)"
    # SQL giving ``ts`` as format_ts() text; a dialect storing a timestamp type overrides it.
    ts_text_sql = "ts"
    # SQL giving the payload for verification (a dialect may hand over its bytes as is).
    payload_sql = "payload"
    # Whether a column may hold another type than declared (see header_sql()).
    dynamic_types = False

    # --- what a backend provides -------------------------------------------------------

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query written with ``?`` placeholders; return all rows."""
        raise NotImplementedError

    def _stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        """Run a read query and yield rows without holding them all in memory."""
        raise NotImplementedError

    def _ts_param(self, ts: datetime) -> Any:
        """Return the value to compare the ``ts`` column with."""
        raise NotImplementedError

    def _ts_text(self, value: Any) -> str:
        """Return the canonical text of a ``ts`` value read from the database."""
        raise NotImplementedError

    def head(self) -> tuple[int, bytes]:
        raise NotImplementedError

    def append(self, events: Sequence[AuditEvent]) -> int:
        raise NotImplementedError

    def _erase_rows(self, sql: str, params: Sequence[Any]) -> int:
        """Run an erasing ``UPDATE`` written with ``?`` placeholders; return its row count."""
        raise NotImplementedError

    def _erased(self) -> None:
        """Called once an erasure changed rows: remove what the storage still keeps of
        them beyond the table (nothing to do unless a dialect says so)."""

    # --- shared queries ----------------------------------------------------------------

    def _time_filter(
        self, since: datetime | None, until: datetime | None
    ) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if since is not None:
            where.append("ts >= ?")
            params.append(self._ts_param(since))
        if until is not None:
            where.append("ts < ?")
            params.append(self._ts_param(until))
        return where, params

    def count(self) -> int:
        return int(self._fetch("SELECT count(*) FROM events")[0][0])

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
        if before is not None:
            if not isinstance(before, datetime):
                raise TypeError(f"before must be a datetime (got {type(before).__name__})")
            before = before.astimezone(timezone.utc)  # a naive time is local, as now() is
            if before > datetime.now(timezone.utc):
                raise ValueError(f"before is in the future ({before.isoformat()}): "
                                 "retention erases what is older than a time that has passed")
        where, params = self._time_filter(None, before)
        for column, value in (("session_id", session_id), ("user_id", user_id),
                              ("trace_id", trace_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(stored_text(value))
        if not where and seqs is None:
            raise ValueError("erase needs a session, user, trace, time or sequence numbers "
                             "(it never erases the whole ledger)")
        chosen = None if seqs is None else sorted(set(seqs))
        where.append(NOT_A_RECORD)  # an erasure never erases the record of another
        if not self._any_left(where, params, chosen):
            return 0  # nothing left to erase: no record either
        # The record first, then only rows recorded before it: verification accepts an
        # erased row only below a record that covers it (tracevault.store.erasures).
        record = erasure_event(session_id=session_id, user_id=user_id, trace_id=trace_id,
                               before=before, seqs=chosen, reason=reason)
        where.append("seq < ?")
        params.append(self._append_record(
            record, "record the erasure, so nothing was erased"))
        return self._clear(where, params, chosen)

    def erased_rows(self, upto_seq: int | None = None,
                    records_upto: int | None = None) -> tuple[list[int], list[int]]:
        """The sequence numbers of the erased rows (payload and salt both cleared; a
        payload cleared alone is tampering) up to ``upto_seq``: those an erasure record
        (up to ``records_upto``) covers, and those none does."""
        texts = header_sql(self.ts_text_sql, dynamic_types=self.dynamic_types)
        sql = f"SELECT seq, {texts} FROM events WHERE payload IS NULL AND salt IS NULL"
        params: list[Any] = []
        if upto_seq is not None:
            sql += " AND seq <= ?"
            params.append(upto_seq)
        rows = self._stream(sql + " ORDER BY seq", params)
        first = next(rows, None)  # the rows' snapshot is taken
        if first is None:
            return [], []
        # The records after it: an erasure appends its record before it clears
        # anything, so each row this snapshot holds erased has its record read here.
        records = ErasureIndex(self.erasures(records_upto))
        covered: list[int] = []
        uncovered: list[int] = []
        for seq, text in itertools.chain([first], rows):
            (covered if records.covers(int(seq), text) else uncovered).append(int(seq))
        return covered, uncovered

    def record_found_erasures(self, reason: str | None = None) -> list[int]:
        """Append an erasure record for the rows found erased that no record covers
        (erased before erasures were recorded, or by SQL), so that ``verify`` accepts
        them again: the record says they were found so, when and by whom (its payload
        has ``"found": true``). Returns their sequence numbers; with none, appends
        nothing."""
        _, found = self.erased_rows()
        if found:
            self._append_record(erasure_event(seqs=found, reason=reason, found=True),
                                "record the erasures found")
        return found

    def _append_record(self, record: AuditEvent, doing: str) -> int:
        # The sequence number the record was given, read back: an append retried after
        # a lost commit acknowledgement finds it stored and returns the head instead.
        try:
            self.append([record])
        except StoreError as exc:
            raise StoreError(f"cannot {doing}: {exc}") from None
        rows = self._fetch("SELECT seq FROM events WHERE event_id = ? AND ts = ?",
                           [record.event_id, self._ts_param(record.timestamp)])
        return int(rows[0][0])

    def carry_erasures(self, seqs: Sequence[int]) -> int:
        """Clear the payload and salt of rows ``seqs`` without a record of its own: for
        a copy whose trail already holds the erasure records that cover them (see
        :mod:`tracevault.store.copy`). Returns how many rows were cleared."""
        return self._clear([NOT_A_RECORD], [], sorted(set(seqs)))

    def _any_left(self, where: list[str], params: list[Any], chosen: list[int] | None) -> bool:
        # Whether any row the filters choose still has its payload.
        query = " AND ".join(["SELECT 1 FROM events WHERE payload IS NOT NULL", *where])
        if chosen is None:
            return bool(self._fetch(query + " LIMIT 1", params))
        return any(self._fetch(f"{query} AND {_seq_in(chunk)} LIMIT 1", [*params, *chunk])
                   for chunk in _chunks(chosen))

    def _clear(self, where: list[str], params: list[Any], chosen: list[int] | None) -> int:
        # The triggers let exactly this change through: payload and salt, both at once.
        update = "UPDATE events SET payload = NULL, salt = NULL WHERE payload IS NOT NULL"
        erased = 0
        if chosen is not None:
            for chunk in _chunks(chosen):
                erased += self._erase_rows(" AND ".join([update, *where, _seq_in(chunk)]),
                                           [*params, *chunk])
        else:
            # A bounded range of rows per statement: each is a write transaction that
            # agents appending meanwhile wait for. The rows are picked by a read that
            # goes on from the last range, not from the start again.
            pick = " AND ".join(["SELECT seq FROM events WHERE payload IS NOT NULL", *where,
                                 "seq > ?"]) + f" ORDER BY seq LIMIT {_ERASE_ROWS}"
            in_range = " AND ".join([update, *where, "seq BETWEEN ? AND ?"])
            after = 0
            while picked := self._fetch(pick, [*params, after]):
                first, after = int(picked[0][0]), int(picked[-1][0])
                erased += self._erase_rows(in_range, [*params, first, after])
                if len(picked) < _ERASE_ROWS:
                    break
        if erased:
            self._erased()
        return erased

    def erasures(self, upto_seq: int | None = None) -> list[Erasure]:
        """The erasure records of the trail (up to ``upto_seq``), in order."""
        return self._erasures_in(self._fetch(*self._erasures_query(upto_seq)))

    def _erasures_query(self, upto_seq: int | None = None) -> tuple[str, list[Any]]:
        sql = (f"SELECT seq, payload, {_EVENT_COLUMNS} FROM events WHERE {IS_A_RECORD} "
               "AND payload IS NOT NULL")
        params: list[Any] = []
        if upto_seq is not None:
            sql += " AND seq <= ?"
            params.append(upto_seq)
        return sql + " ORDER BY seq", params

    def _erasures_in(self, rows: Sequence[tuple[Any, ...]]) -> list[Erasure]:
        out = []
        for row in rows:
            try:
                event = self._decode(row)
            except Exception:  # a payload that does not decode: verify reports its digest
                continue
            record = erasure_of(int(row[0]), event)
            if record is not None:
                out.append(record)
        return out

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
        where, params = self._time_filter(since, until)
        if no_session:
            where.append("session_id IS NULL")
        if after_seq:
            where.append("seq > ?")
            params.append(after_seq)
        if seqs is not None:
            where.append(f"seq IN ({', '.join('?' for _ in seqs)})" if seqs else "1 = 0")
            params.extend(seqs)
        if session_id is not None:
            where.append("session_id = ?")
            params.append(session_id)
        if trace_id is not None:
            where.append("trace_id = ?")
            params.append(trace_id)
        if kinds:
            where.append(f"kind IN ({', '.join('?' for _ in kinds)})")
            params.extend(kinds)
        sql = f"SELECT seq, payload, {_EVENT_COLUMNS} FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        for row in self._stream(sql, params):
            yield StoredEvent(row[0], self._decode(row))

    def _decode(self, row: tuple[Any, ...]) -> AuditEvent:
        payload = row[1]
        if payload is not None:
            return decode_event(bytes(payload) if isinstance(payload, memoryview) else payload)
        # Erased payload: the indexed columns survive (ids, times, and the status and
        # metrics a step's outcome had), the content does not.
        values = dict(zip(COLUMNS, row[2:], strict=True))
        data = erased_data([values[key] for key in METRICS])
        return AuditEvent(
            event_id=values["event_id"],
            timestamp=parse_ts(self._ts_text(values["ts"])),
            kind=values["kind"],
            phase=values["phase"],
            level=values["level"],
            name=values["name"],
            session_id=values["session_id"],
            user_id=values["user_id"],
            trace_id=values["trace_id"],
            span_id=values["span_id"],
            parent_span_id=values["parent_span_id"],
            data=data,
        )

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
        where, params = self._time_filter(since, until)
        if session_id is not None:  # one session: its index, not a scan of all of them
            where.insert(0, "session_id = ?")
            params.insert(0, session_id)
        elif no_session:
            where.insert(0, "session_id IS NULL")
        # Otherwise every session, and the runs recorded without one as a session of
        # their own (session_id None), which `tracevault show --no-session` shows.
        sql = (
            "SELECT session_id, max(user_id), min(ts), max(ts), count(*), "
            "count(DISTINCT trace_id), "
            "sum(CASE WHEN kind = 'error' THEN 1 ELSE 0 END), "
            f"sum(CASE WHEN kind = 'tool_call' AND {_OUTCOME} THEN 1 ELSE 0 END), "
            "coalesce(sum(tokens), 0), coalesce(sum(cost), 0) "
            f"FROM events{' WHERE ' + ' AND '.join(where) if where else ''} GROUP BY session_id"
        )
        if user_id is not None:  # every session the user took part in
            sql += " HAVING sum(CASE WHEN user_id = ? THEN 1 ELSE 0 END) > 0"
            params.append(user_id)
        sql += " ORDER BY max(ts) DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [
            SessionSummary(
                session_id=r[0],
                user_id=r[1],
                start=self._ts_text(r[2]),
                end=self._ts_text(r[3]),
                events=int(r[4]),
                runs=int(r[5]),
                errors=int(r[6]),
                tool_calls=int(r[7]),
                tokens=int(r[8]),
                cost=float(r[9]),
            )
            for r in self._fetch(sql, params)
        ]

    def stats(self, *, since: datetime | None = None, until: datetime | None = None) -> Stats:
        where, params = self._time_filter(since, until)
        extra = "".join(f" AND {w}" for w in where)
        return Stats(
            tools=self._tool_stats(extra, params),
            days=self._day_stats(where, params),
            models=self._model_stats(extra, params),
        )

    def _tool_stats(self, extra: str, params: list[Any]) -> list[ToolStats]:
        per_tool: dict[str, tuple[list[float], list[int]]] = {}  # durations, [calls, errors]
        rows = self._stream(
            "SELECT name, duration_ms, status FROM events "
            f"WHERE kind = 'tool_call' AND {_OUTCOME}{extra}",
            params,
        )
        for name, duration, status in rows:
            durations, counts = per_tool.setdefault(name or "?", ([], [0, 0]))
            counts[0] += 1
            counts[1] += status == "error"
            if duration is not None:
                durations.append(float(duration))
        out = []
        for tool, (durations, counts) in sorted(per_tool.items()):
            calls, errors = counts
            out.append(
                ToolStats(
                    tool=tool,
                    calls=calls,
                    errors=errors,
                    error_rate=errors / calls if calls else 0.0,
                    avg_ms=sum(durations) / len(durations) if durations else None,
                    p95_ms=percentile(durations, 0.95),
                )
            )
        return out

    def _day_stats(self, where: list[str], params: list[Any]) -> list[DayStats]:
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        day = self.day_sql
        totals = self._fetch(
            f"SELECT {day} AS day, count(*), "
            "sum(CASE WHEN kind = 'error' THEN 1 ELSE 0 END), count(DISTINCT trace_id) "
            f"FROM events{clause} GROUP BY {day} ORDER BY {day}",
            params,
        )
        failed_where = " AND ".join(["kind = 'error'", *where])
        failed = dict(
            self._fetch(
                f"SELECT {day}, count(DISTINCT trace_id) FROM events "
                f"WHERE {failed_where} GROUP BY {day}",
                params,
            )
        )
        out = []
        for d, events, errors, runs in totals:
            failed_runs = int(failed.get(d, 0))
            out.append(
                DayStats(
                    day=str(d),
                    events=int(events),
                    errors=int(errors),
                    runs=int(runs),
                    failed_runs=failed_runs,
                    error_rate=failed_runs / runs if runs else 0.0,
                )
            )
        return out

    def _model_stats(self, extra: str, params: list[Any]) -> list[ModelStats]:
        rows = self._fetch(
            "SELECT name, count(*), coalesce(sum(tokens), 0), coalesce(sum(cost), 0) "
            f"FROM events WHERE kind = 'llm_call' AND {_OUTCOME}{extra} "
            "GROUP BY name ORDER BY name",
            params,
        )
        return [ModelStats(r[0] or "?", int(r[1]), int(r[2]), float(r[3])) for r in rows]

    def sink_cursors(self) -> list[SinkCursor]:
        """Every forwarder's cursor and last error (a forwarder may have only one)."""
        rows = self._fetch(
            "SELECT n.name, c.seq, c.updated, e.error, e.at FROM "
            "(SELECT name FROM sink_cursors UNION SELECT name FROM sink_errors) AS n "
            "LEFT JOIN sink_cursors c ON c.name = n.name "
            "LEFT JOIN sink_errors e ON e.name = n.name ORDER BY n.name"
        )
        return [
            SinkCursor(r[0], int(r[1] or 0), r[2], r[3], r[4] if r[3] is not None else None)
            for r in rows
        ]

    def verify(self, anchor: tuple[int, bytes] | None = None) -> VerifyReport:
        head_seq, head_chain = self.head()
        return verified(self._verify_rows(), head_seq, head_chain, anchor, self.erasures())

    def _verify_rows(self) -> Iterator[tuple[Any, ...]]:
        return self._stream(self._verify_sql())

    def _verify_sql(self) -> str:
        """The query giving rows in the shape :func:`verify_rows` reads."""
        return (
            f"SELECT seq, {header_sql(self.ts_text_sql, dynamic_types=self.dynamic_types)}, "
            f"{', '.join(COLUMNS[TEXT_COLUMNS:])}, {self.payload_sql}, salt, digest, chain "
            "FROM events ORDER BY seq"
        )
