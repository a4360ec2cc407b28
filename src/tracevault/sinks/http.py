"""What the last HTTP response said, for sinks whose SDK hides it.

Vendor SDKs retry on their own and then report a bare failure. Their HTTP sessions
accept response hooks, so a sink records the status and ``Retry-After`` of the last
response and turns a failure into a :class:`~tracevault.sinks.base.RetryAfter` when the
receiver asked for a pause.
"""

from __future__ import annotations

import math
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Any

import requests


def parse_retry_after(value: str | None) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for (delay or HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(when.timestamp() - time.time(), 0.0)
    return max(seconds, 0.0) if math.isfinite(seconds) else None


class ResponseRecorder:
    """Remembers the status and ``Retry-After`` of the most recent response."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: int | None = None
        self._retry_after: float | None = None

    def session(self, session: requests.Session | None = None) -> requests.Session:
        """Return ``session`` (or a new one) with the recording hook installed."""
        session = session or requests.Session()
        session.hooks.setdefault("response", []).append(self._hook)
        return session

    def _hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self._status = response.status_code
            self._retry_after = (
                parse_retry_after(response.headers.get("Retry-After"))
                if response.status_code in (429, 503)
                else None
            )

    def clear(self) -> None:
        with self._lock:
            self._status = None
            self._retry_after = None

    def last(self) -> tuple[int | None, float | None]:
        """Return ``(status, retry_after)`` of the last response since :meth:`clear`."""
        with self._lock:
            return self._status, self._retry_after
