"""Batch preparation and sealing give exactly the chain of the row-by-row reference."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tracevault import ledger
from tracevault.ledger import (
    GENESIS,
    PreparedRow,
    format_ts,
    header,
    link,
    prepare,
    prepare_rows,
    seal,
    sealed_values,
)
from tracevault.schema import AuditEvent
from tracevault.store.sqlite import SQLiteStore


def _awkward_events() -> Iterator[AuditEvent]:
    base = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=timezone.utc)
    yield AuditEvent(
        event_id="e1", timestamp=base, kind="llm_call", phase="end", name="gpt\x00x",
        session_id="s", user_id="", trace_id="t", span_id="ü\ud800", parent_span_id=None,
        data={"status": "ok", "duration_ms": -0.0, "usage": {"total": 12}, "cost": 1e-7},
    )
    yield AuditEvent(
        event_id="e2", timestamp=base.replace(microsecond=0), kind="tool_call",
        data={"status": 3, "duration_ms": 10**30, "tags": ["a"]}, tags=["x"], metadata={"k": 1},
    )
    yield AuditEvent(
        event_id="e3",
        timestamp=datetime(2025, 3, 4, 7, 6, 7, 5, tzinfo=timezone(timedelta(hours=2))),
        kind="error", name="a\x1fb", data={"status": "error", "duration_ms": float("inf")},
    )
    yield AuditEvent(
        event_id="e4", timestamp=datetime(2025, 3, 4, 7, 6, 7, 5), kind="llm_call",
        data={"usage": {"total": 2**70}, "cost": True},
    )


def _stream_urandom(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ledger salts a fixed stream: n bytes per call, continuing where it stopped."""
    stream = bytes(i % 251 for i in range(4096))
    pos = [0]

    def urandom(n: int) -> bytes:
        out = stream[pos[0] : pos[0] + n]
        pos[0] += n
        return out

    monkeypatch.setattr(ledger.os, "urandom", urandom)
    monkeypatch.setattr(ledger, "_salt_pool", b"")  # salts read ahead come from the stream too
    monkeypatch.setattr(ledger, "_salt_at", 0)


def test_batch_chain_matches_values_from_the_earlier_implementation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Chain values written by the row-by-row implementation that existing ledgers were
    # sealed with (NUL, a unit separator, lone surrogates, "" and None, -0.0, a whole
    # second, a non-UTC and a naive timestamp, metrics out of range).
    expected = [
        "1e127e5f76b9fbef022963a63085f5c4e387c23e1d834622778b00ef44cae47a",
        "a3dd415a74fe9a396c656848527f53e7994d9a6fee88da2fd9a14e0dda58efd0",
        "51bef09003c9af747906e53bc7db40be84e1e2ae7e12cf05aac1c6937d3da62d",
        "3384fda3bb108b08730a35075bdf14d487c5acee97023356c205be8386829cba",
    ]
    _stream_urandom(monkeypatch)
    rows = prepare_rows(list(_awkward_events()))
    assert [s.chain.hex() for s in seal(rows, 41, bytes(range(32)))] == expected
    values = sealed_values(rows, 41, bytes(range(32)))
    assert [v[-1].hex() for v in values] == expected
    assert [v[0] for v in values] == [42, 43, 44, 45]


def _random_text(rng: random.Random) -> str | None:
    pick = rng.random()
    if pick < 0.2:
        return None
    if pick < 0.3:
        return ""
    alphabet = "ab-:_\x00\x1f\u00fc\u4e2d\U0001f600 ,0123"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))


def test_batch_sealing_equals_the_reference_header_for_random_events() -> None:
    rng = random.Random(7)
    events = []
    for i in range(300):
        data: dict[str, object] = {}
        if rng.random() < 0.7:
            data["status"] = rng.choice(["success", "error", "", "x\x00y", 5])
        if rng.random() < 0.7:
            data["duration_ms"] = rng.choice([0.1 + i, -0.0, 3, 1e308, float("nan"), "slow"])
        if rng.random() < 0.5:
            data["usage"] = {"total": rng.choice([1, 2**40, -7, 2**64, 1.5])}
            data["cost"] = rng.choice([0.25, 1, None, -0.0])
        events.append(AuditEvent(
            event_id=f"id-{i}-{rng.random()}",
            timestamp=datetime(2025, 1, 1, tzinfo=timezone.utc)
            + timedelta(microseconds=rng.choice([0, 1, 999_999, rng.randint(0, 10**12)])),
            kind=rng.choice(["llm_call", "tool_call", "custom"]),
            phase=rng.choice(["start", "end", "point"]),
            name=_random_text(rng), session_id=_random_text(rng), user_id=_random_text(rng),
            trace_id=_random_text(rng), span_id=_random_text(rng),
            parent_span_id=_random_text(rng), data=data,
        ))
    rows = prepare_rows(events)
    prev = b"\x01" * 32
    sealed = seal(rows, 1000, prev)
    for s in sealed:
        assert "\x00" not in "".join(c for c in s.row.columns if isinstance(c, str))
        assert s.row.tail == header(s.seq, s.row.columns)[len(str(s.seq)):] + s.row.digest
        prev = link(prev, s.seq, s.row.columns, s.row.digest)
        assert s.chain == prev
    # Rows built without a precomputed tail seal the same.
    bare = [PreparedRow(r.columns, r.payload, r.salt, r.digest) for r in rows]
    assert [s.chain for s in seal(bare, 1000, b"\x01" * 32)] == [s.chain for s in sealed]


def test_each_event_gets_its_own_salt_and_digest() -> None:
    events = [AuditEvent(event_id=f"e{i}", timestamp=datetime.now(timezone.utc), kind="custom")
              for i in range(500)]
    rows = prepare_rows(events)
    assert len({r.salt for r in rows}) == 500
    for r in rows:
        assert len(r.salt) == 16
        assert r.digest == hashlib.sha256(r.salt + r.payload).digest()
    assert prepare_rows([]) == []
    single = prepare(events[0])
    assert single.payload == rows[0].payload and single.columns == rows[0].columns


def test_inputs_over_two_kilobytes_digest_and_chain_as_plain_sha256(tmp_path: Path) -> None:
    # sha256_digest feeds such inputs to hashlib in pieces (in one piece hashlib would
    # let go of the GIL): at every size around a piece's edge it is plain SHA-256.
    for size in (0, 1, 2046, 2047, 2048, 4094, 4095, 4096, 100_003):
        data = random.Random(size).randbytes(size)
        assert ledger.sha256_digest(data) == hashlib.sha256(data).digest()
    # Large payloads, and names long enough that a chain link hashes over 2 KB too.
    events = [AuditEvent(event_id=f"big{i}", timestamp=datetime.now(timezone.utc),
                         kind="llm_call", name="n" * (1500 * i), data={"prompt": "p" * (3000 * i)})
              for i in range(4)]
    rows = prepare_rows(events)
    for r in rows:
        assert r.digest == hashlib.sha256(r.salt + r.payload).digest()
    prev = GENESIS
    for seq, sealed in enumerate(seal(rows, 0, GENESIS), start=1):
        linked = link(prev, seq, sealed.row.columns, sealed.row.digest)
        prev = hashlib.sha256(prev + header(seq, sealed.row.columns) + sealed.row.digest).digest()
        assert sealed.chain == linked == prev
    store = SQLiteStore(str(tmp_path / "big.db"))
    try:
        store.append(events)
        report = store.verify()
        assert report.ok and report.checked == 4
    finally:
        store.close()


def test_salts_are_never_repeated_across_batches_or_a_fork() -> None:
    import os

    # Salts are read ahead in a pool: batches that cross its refill, and a forked child
    # that inherited it, must still get salts nobody else has.
    seen = [ledger.salts(1000)[i : i + 16] for i in range(0, 16_000, 16)]
    for _ in range(10):
        batch = ledger.salts(997)
        seen += [batch[i : i + 16] for i in range(0, len(batch), 16)]
    assert len(seen) == 10_970 and len(set(seen)) == len(seen)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next salt, then leave at once
        os.write(write, ledger.salts(1))
        os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16 and child != ledger.salts(1)


def test_timestamp_column_text_is_format_ts() -> None:
    rng = random.Random(3)
    stamps = [
        datetime(1, 1, 1, tzinfo=timezone.utc),
        datetime(999, 12, 31, 23, 59, 59, 1, tzinfo=timezone.utc),
        datetime(2025, 6, 1, 12, 0, 0, 0, tzinfo=timezone.utc),
        datetime(2025, 6, 1, 12, 0, 0, 500, tzinfo=timezone(timedelta(hours=-5))),
        datetime(2025, 6, 1, 12, 0, 0, 500),
    ] + [
        datetime(rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23),
                 rng.randint(0, 59), rng.randint(0, 59), rng.randint(0, 999_999),
                 tzinfo=timezone.utc)
        for _ in range(2000)
    ]
    events = [AuditEvent(event_id=f"e{i}", timestamp=ts, kind="custom")
              for i, ts in enumerate(stamps)]
    assert [r.columns[1] for r in prepare_rows(events)] == [format_ts(ts) for ts in stamps]


def test_a_ledger_sealed_row_by_row_keeps_verifying_after_batch_appends(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "mixed.db"))
    try:
        # Rows sealed one at a time by the reference functions, as older versions did.
        conn = store._conn()
        prev, seq = GENESIS, 0
        for event in _awkward_events():
            row = prepare(event)
            seq += 1
            prev = link(prev, seq, row.columns, row.digest)
            values = (seq, *row.columns, row.payload.decode(), row.salt, row.digest, prev)
            conn.execute(f"INSERT INTO events VALUES ({', '.join('?' * len(values))})", values)
        conn.execute("UPDATE ledger_head SET seq = ?, chain = ? WHERE id = 1", (seq, prev))
        assert store.verify().ok
        more = [AuditEvent(event_id=f"n{i}", timestamp=datetime.now(timezone.utc), kind="custom",
                           name=f"step {i}") for i in range(50)]
        assert store.append(more) == seq + 50
        report = store.verify()
        assert report.ok and report.checked == seq + 50
    finally:
        store.close()
