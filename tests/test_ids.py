"""Event ids: canonical UUIDv7 strings, in creation order, unique across threads and forks."""

from __future__ import annotations

import itertools
import os
import threading
import uuid

import pytest

from tracevault.ids import uuid7


def test_ids_are_version_7_and_sort_in_creation_order() -> None:
    ids = [uuid7() for _ in range(50_000)]
    parsed = uuid.UUID(ids[0])
    assert parsed.version == 7 and str(parsed) == ids[0]
    assert all(a < b for a, b in itertools.pairwise(ids))


def test_ids_from_many_threads_are_unique() -> None:
    out: list[list[str]] = []

    def make() -> None:
        out.append([uuid7() for _ in range(20_000)])

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for ids in out for i in ids]
    assert len(set(every)) == len(every) == 80_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    uuid7()  # the generator has state before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read)
        os.write(write, "\n".join(uuid7() for _ in range(2_000)).encode())
        os._exit(0)
    os.close(write)
    mine = {uuid7() for _ in range(2_000)}
    chunks = []
    while chunk := os.read(read, 1 << 16):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    theirs = set(b"".join(chunks).decode().split("\n"))
    assert len(theirs) == 2_000
    assert not mine & theirs
    # Not just different timestamps: the random tails differ too.
    assert not {i[-12:] for i in mine} & {i[-12:] for i in theirs}


def test_ids_derived_for_a_replayed_callback_are_the_same_each_time() -> None:
    from tracevault.config import Settings
    from tracevault.ids import uuid7_from
    from tracevault.replay import Replay

    def ids(salt: bytes | None, clock: float = 12.5) -> list[str]:
        replay = Replay(1_764_000_000_123_456_789, clock, Settings(), salt)
        out = []
        for _ in range(3):
            out.append(replay.new_id())
            replay.items.append(None)  # the next event of the same callback
        return out

    first = ids(b"salt" * 4)
    assert ids(b"salt" * 4) == first and len(set(first)) == 3
    assert not set(ids(b"pepper" * 3)) & set(first)  # another writer's salt
    assert not set(ids(b"salt" * 4, clock=12.6)) & set(first)  # another callback
    assert ids(None) != ids(None)  # without a salt: new ids, as on a writer thread
    parsed = [uuid.UUID(i) for i in first]
    assert all(p.version == 7 and p.variant == uuid.RFC_4122 for p in parsed)
    assert all(i.startswith("019ab") for i in first)  # 2025-11-24T16:00:00.123 UTC
    assert uuid7_from(0x0123456789AB, bytes(range(10))) == (
        "01234567-89ab-7000-8203-040506070809")
