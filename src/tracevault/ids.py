"""Identifier generation: time-ordered event ids and random trace/span ids.

``uuid7()`` follows RFC 9562 (48-bit Unix milliseconds, then random bits) with a
monotonic counter inside one millisecond, so ids sort in creation order within a
process. It returns the canonical string directly because events carry string ids and
building ``uuid.UUID`` objects would cost time on the caller's thread.
"""

from __future__ import annotations

import os
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> str:
    """Return a new UUIDv7 as a 36-character lowercase string."""
    global _last_ms, _counter
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    with _lock:
        if ms <= _last_ms:
            # Same (or an earlier, clock stepped back) millisecond: keep order by
            # advancing a 12-bit counter; on overflow borrow the next millisecond.
            _counter += 1
            if _counter > 0xFFF:
                _last_ms += 1
                _counter = 0
            ms = _last_ms
        else:
            _last_ms = ms
            _counter = (rand >> 68) & 0x3FF  # random start leaves room to count up
        counter = _counter
    value = (ms & 0xFFFFFFFFFFFF) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62
    value |= rand & 0x3FFFFFFFFFFFFFFF
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_trace_id() -> str:
    """Return a random 128-bit trace id as 32 hex characters (OpenTelemetry's form)."""
    return os.urandom(16).hex()


def new_span_id() -> str:
    """Return a random 64-bit span id as 16 hex characters (OpenTelemetry's form)."""
    return os.urandom(8).hex()


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)
