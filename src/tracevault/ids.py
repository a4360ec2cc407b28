"""Identifier generation: time-ordered event ids and random trace/span ids.

``uuid7()`` follows RFC 9562 (48-bit Unix milliseconds, then random bits) with a
monotonic counter inside one millisecond, so ids sort in creation order within a
process. It returns the canonical string directly because events carry string ids and
building ``uuid.UUID`` objects would cost time on the caller's thread. Its random bits
come from ``random.getrandbits`` rather than ``os.urandom``: ids need uniqueness, not
secrecy, and a system call releases the GIL, which on a busy process makes the caller
queue behind the writer thread for a whole switch interval.
"""

from __future__ import annotations

import os
import random
import threading
import time

# A private generator: user code that calls random.seed() (evaluation harnesses do) must
# not make ids repeat across runs. Reseeded from os.urandom after fork.
_rng = random.Random()
_getrandbits = _rng.getrandbits
_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> str:
    """Return a new UUIDv7 as a 36-character lowercase string."""
    global _last_ms, _counter
    ms = time.time_ns() // 1_000_000
    rand = _getrandbits(62)
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
            _counter = _getrandbits(10)  # a random start leaves room to count up
        counter = _counter
    ms &= 0xFFFFFFFFFFFF
    return "%08x-%04x-%04x-%04x-%012x" % (  # noqa: UP031 (fastest formatting here)
        ms >> 16,
        ms & 0xFFFF,
        0x7000 | counter,
        0x8000 | ((rand >> 48) & 0x3FFF),
        rand & 0xFFFFFFFFFFFF,
    )


def new_trace_id() -> str:
    """Return a random 128-bit trace id as 32 hex characters (OpenTelemetry's form)."""
    return f"{_getrandbits(128):032x}"


def new_span_id() -> str:
    """Return a random 64-bit span id as 16 hex characters (OpenTelemetry's form)."""
    return f"{_getrandbits(64):016x}"


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _rng.seed()


os.register_at_fork(after_in_child=_reset_after_fork)
