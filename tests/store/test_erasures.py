"""Erasure records as verification reads them: sequence-number ranges and the row
columns a record is matched against."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from tracevault.ids import uuid7
from tracevault.ledger import COLUMNS, header_columns, header_sql
from tracevault.schema import AuditEvent
from tracevault.store import open_store
from tracevault.store.erasures import SeqRanges, erasure_of
from tracevault.store.sql import SQLStore


def test_sequence_numbers_are_kept_as_ranges() -> None:
    ranges = SeqRanges.of([10, 5, 1, 2, 3, 9, 2])
    assert ranges.to_json() == [[1, 3], 5, 9, 10]  # a pair is shorter as two numbers
    parsed = SeqRanges.parse(ranges.to_json())
    assert parsed == ranges and len(parsed) == 6
    assert [s for s in range(0, 13) if s in parsed] == [1, 2, 3, 5, 9, 10]
    assert "3" not in parsed and SeqRanges.of([]).to_json() == []
    # Ranges written by hand may overlap or touch: read as their union.
    written = SeqRanges.parse([[20, 30], 4, [1, 10], [25, 26], [31, 33], [9, 7]])
    assert written.to_json() == [[1, 10], [20, 33]] and 15 not in written and 33 in written


def _event(session_id: str | None, **data: object) -> AuditEvent:
    return AuditEvent(event_id=uuid7(), timestamp=datetime.now(timezone.utc), kind="custom",
                      name="tracevault.erasure", session_id=session_id,
                      data={"name": "tracevault.erasure", "payload": data})


def _input(session_id: str) -> AuditEvent:
    return AuditEvent(event_id=uuid7(), timestamp=datetime.now(timezone.utc), kind="input",
                      session_id=session_id, data={"content": "hello"})


@pytest.mark.parametrize("erases", [
    None, {}, {"session_id": None}, {"session": "s1"}, {"seqs": None},  # name nothing
    "not a dict", {"seqs": [[1, 2, 3]]}, {"seqs": ["x"]}, {"before": "yesterday"},
])  # fmt: skip
def test_a_malformed_record_covers_nothing(erases: object) -> None:
    assert erasure_of(7, _event(None, erases=erases)) is None


def test_row_columns_are_read_back_from_their_header_form(tmp_path: Path) -> None:
    # Ids holding the separator, a colon, digits and a dash: the length prefix, not
    # the separator, decides where a column ends.
    odd = "a\x1f7:b-c:"
    store = open_store(f"sqlite:///{tmp_path / 'h.db'}")
    assert isinstance(store, SQLStore)
    store.append([_input(odd)])
    texts = header_sql(store.ts_text_sql, dynamic_types=store.dynamic_types)
    ((text,),) = store._fetch(f"SELECT {texts} FROM events")
    columns = header_columns(text)
    assert columns is not None and len(columns) == COLUMNS.index("status") + 1
    assert columns[COLUMNS.index("session_id")] == odd
    assert columns[COLUMNS.index("user_id")] is None
    assert header_columns("3:abc\x1f") is None and header_columns("9:abc") is None
    # and so an erasure of that session is accepted by verify
    store.append([_input(odd) for _ in range(3)])
    assert store.erase(session_id=odd) == 4
    assert store.verify().ok
    store.close()
