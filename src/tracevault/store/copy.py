"""Copying a trail between ledgers (SQLite ⇄ PostgreSQL) so that the copy verifies.

Re-appending events would re-seal them: new salts, new sequence numbers, a new chain,
and nothing to show that the copy is the same trail. :func:`copy_trail` instead moves
every row exactly as stored — sequence number, indexed columns, canonical payload,
salt, digest and chain value, erased payloads staying erased — and finally gives the
target the source's head. The target then verifies exactly when the source does:
tampering in the source is carried over, never laundered. A copy into a ledger that
already holds the beginning of the same trail resumes after it, and then erases there
the payloads the source erased since (only those an erasure record covers: the records
come along with the rows); a target holding a different trail is refused.
Forwarder cursors are not copied (forwarders are idempotent by event id, so a
forwarder started on the target may resend).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tracevault.forks import FORK_GATE
from tracevault.ledger import COLUMNS, VerifyReport
from tracevault.store.base import Store, StoreError
from tracevault.store.sql import SQLStore
from tracevault.store.sqlite import SQLiteStore

Row = tuple[Any, ...]  # (seq, *COLUMNS with ts as text, payload, salt, digest, chain)
# Writes rows after the given (seq, chain) head, then sets the head to the last argument.
RowWriter = Callable[[Sequence[Row], tuple[int, bytes], tuple[int, bytes]], None]

_ROW_COLUMNS = ("seq", *COLUMNS, "payload", "salt", "digest", "chain")
_TS = 2  # position of ts in a row
_CATCH_UP = 3  # further passes when erasures in the source overtake a copy


@dataclass(slots=True)
class CopyReport:
    """What :func:`copy_trail` did and whether the target verifies afterwards."""

    copied: int
    first_seq: int
    last_seq: int
    head_seq: int
    verify: VerifyReport
    erased: int = 0  # rows copied earlier whose payload the source erased since

    def to_dict(self) -> dict[str, Any]:
        return {
            "copied": self.copied,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "head_seq": self.head_seq,
            "erased": self.erased,
            "verify": self.verify.to_dict(),
        }


def source_rows(store: Store, after_seq: int, upto_seq: int) -> Iterator[Row]:
    """Yield the stored rows ``after_seq < seq <= upto_seq`` of ``store`` exactly."""
    sql_store = _sql(store, "copy from")
    sql = f"SELECT {', '.join(_ROW_COLUMNS)} FROM events WHERE seq > ? AND seq <= ? ORDER BY seq"
    to_text = sql_store._ts_text
    for r in sql_store._stream(sql, (after_seq, upto_seq)):
        try:
            payload = r[-4]
            if payload is not None and not isinstance(payload, str):
                payload = bytes(payload).decode("utf-8", "surrogatepass")
            salt = None if r[-3] is None else bytes(r[-3])
            digest, chain = bytes(r[-2]), bytes(r[-1])
        except (TypeError, UnicodeDecodeError):
            raise StoreError(
                f"cannot copy row {r[0]} of {store.url}: its payload, salt, digest or chain "
                "is not as tracevault stores it (see `tracevault verify`)"
            ) from None
        yield (*r[:_TS], to_text(r[_TS]), *r[_TS + 1 : -4], payload, salt, digest, chain)


def erased_seqs(store: Store, upto_seq: int) -> list[int]:
    """The sequence numbers up to ``upto_seq`` whose payload ``store`` erased (payload
    and salt both cleared: a payload cleared alone is tampering, copied as it is)."""
    sql = ("SELECT seq FROM events WHERE payload IS NULL AND salt IS NULL AND seq <= ? "
           "ORDER BY seq")
    return [int(r[0]) for r in _sql(store, "copy with")._stream(sql, (upto_seq,))]


def _sql(store: Store, doing: str) -> SQLStore:
    if not isinstance(store, SQLStore):
        raise StoreError(f"cannot {doing} {type(store).__name__}: not a SQL ledger")
    return store


def row_writer(store: Store) -> RowWriter:
    """Return the function that stores copied rows in ``store`` (one transaction each)."""
    copy_rows = getattr(store, "copy_rows", None)
    if callable(copy_rows):
        return copy_rows  # type: ignore[no-any-return]
    if isinstance(store, SQLiteStore):
        return _SQLiteRows(store)
    raise StoreError(f"cannot copy into {type(store).__name__}")


class _SQLiteRows:
    """Writes copied rows into an SQLite ledger, checking its head first."""

    _INSERT = (
        f"INSERT INTO events ({', '.join(_ROW_COLUMNS)}) "
        f"VALUES ({', '.join('?' for _ in _ROW_COLUMNS)})"
    )

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store

    def __call__(
        self, rows: Sequence[Row], after: tuple[int, bytes], head: tuple[int, bytes]
    ) -> None:
        with FORK_GATE:  # one call into SQLite: a fork waits for it
            self._write(rows, after, head)

    def _write(
        self, rows: Sequence[Row], after: tuple[int, bytes], head: tuple[int, bytes]
    ) -> None:
        conn = sqlite3.connect(self.store.path, timeout=60.0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                seq, chain = conn.execute(
                    "SELECT seq, chain FROM ledger_head WHERE id = 1"
                ).fetchone()
                if (int(seq), bytes(chain)) != after:
                    raise StoreError(
                        f"{self.store.url} changed during the copy "
                        f"(head is #{seq}, expected #{after[0]})"
                    )
                conn.executemany(self._INSERT, rows)
                conn.execute("UPDATE ledger_head SET seq = ?, chain = ? WHERE id = 1", head)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot copy into {self.store.url}: {exc}") from None
        finally:
            conn.close()


def copy_trail(
    source: Store,
    target: Store,
    *,
    batch: int = 5_000,
    progress: Callable[[int], None] | None = None,
) -> CopyReport:
    """Copy every row of ``source`` that ``target`` lacks, exactly; verify the target.

    ``target`` must be empty or hold the beginning of the same trail (then the copy
    resumes). Rows appended to ``source`` while copying are left for the next copy,
    unless an erasure made meanwhile reached rows this copy brought over: then the copy
    goes on to the source's new head, which holds the erasure's record.
    ``progress`` is called with the last copied sequence number after each batch.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    report = _copy_to_head(source, target, batch, progress)
    for _ in range(_CATCH_UP):
        if report.verify.ok or not _overtaken(source, target, report.head_seq):
            break
        try:
            more = _copy_to_head(source, target, batch, progress)
        except StoreError:
            break  # (the source changed under the copy otherwise: report what was done)
        report = CopyReport(report.copied + more.copied, report.first_seq, more.last_seq,
                            more.head_seq, more.verify, report.erased + more.erased)
    return report


def _overtaken(source: Store, target: Store, head_seq: int) -> bool:
    """Whether rows the target holds erased without a record were erased in the source
    by a record after ``head_seq`` (an erasure made while the copy read them)."""
    _, unrecorded = _sql(target, "copy into").erased_rows()
    if not unrecorded:
        return False
    covered, _ = _sql(source, "copy from").erased_rows(head_seq)
    return not set(unrecorded).isdisjoint(covered)


def _copy_to_head(
    source: Store, target: Store, batch: int, progress: Callable[[int], None] | None
) -> CopyReport:
    # One pass of copy_trail: up to the source's head as read now.
    src_head = source.head()
    after = target.head()
    if after[0] > src_head[0]:
        raise StoreError(
            f"the target holds {after[0]} events, more than the source ({src_head[0]}): "
            "it is a different trail"
        )
    if after[0]:
        prefix = next(source_rows(source, after[0] - 1, after[0]), None)
        if prefix is None or prefix[-1] != after[1]:
            raise StoreError(
                f"the target already holds a different trail (its #{after[0]} is not the "
                "source's): copy into an empty ledger"
            )
    # Erasures made in the source since an earlier copy apply to the copy too: the rows
    # the source erased that the target still holds, once the rows copied now have
    # brought along the records that cover them.
    since: list[int] = []
    if after[0]:
        gone = set(erased_seqs(target, after[0]))
        covered, _ = _sql(source, "copy from").erased_rows(after[0], src_head[0])
        since = [seq for seq in covered if seq not in gone]
    write = row_writer(target)
    first_seq = last_seq = after[0]
    first_seq += 1
    copied = 0
    chunk: list[Row] = []
    for row in source_rows(source, after[0], src_head[0]):
        chunk.append(row)
        last_seq = int(row[0])
        if len(chunk) >= batch:
            head = (last_seq, chunk[-1][-1])
            write(chunk, after, head)
            copied += len(chunk)
            after, chunk = head, []
            if progress is not None:
                progress(last_seq)
    # The last write carries the source's head, so a source whose tail was cut still
    # fails verification in the target exactly as it does in the source.
    if chunk or after != src_head:
        write(chunk, after, src_head)
        copied += len(chunk)
        if progress is not None:
            progress(last_seq)
    erased = _sql(target, "copy into").carry_erasures(since) if since else 0
    return CopyReport(copied, first_seq, last_seq, src_head[0], target.verify(), erased)
