"""What the receiver answered, for sinks whose SDK hides it.

Vendor SDKs retry on their own, or split a delivery into several requests, and then
report a bare failure. Their HTTP sessions accept response hooks, so a sink records
the responses to one delivery and turns a failure into a
:class:`~tracevault.sinks.base.PermanentError` when the receiver refused part of it, or
a :class:`~tracevault.sinks.base.RetryAfter` when it asked for a pause.
"""

from __future__ import annotations

import math
import threading
import time
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from tracevault.sinks.base import PERMANENT_STATUSES


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
    """Remembers the status and ``Retry-After`` that classify the responses since
    :meth:`clear` (see :meth:`outcome`)."""

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
        status = response.status_code
        with self._lock:
            # One failed request fails the whole delivery whatever the others got, and a
            # refusal (the payload itself) outranks the receiver's state (retry later).
            if self._status in PERMANENT_STATUSES or (
                    status < 400 and self._status is not None and self._status >= 400):
                return
            self._status = status
            self._retry_after = (
                parse_retry_after(response.headers.get("Retry-After"))
                if response.status_code in (429, 503)
                else None
            )

    def clear(self) -> None:
        with self._lock:
            self._status = None
            self._retry_after = None

    def outcome(self) -> tuple[int | None, float | None]:
        """Return ``(status, retry_after)`` for the responses since :meth:`clear`: the
        first permanent refusal (HTTP 400, 413, 422) if there was one, else the last
        failed response, else the last response; ``(None, None)`` when nothing
        answered."""
        with self._lock:
            return self._status, self._retry_after
