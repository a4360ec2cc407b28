"""JSON-lines sink: the trail as one JSON object per line, for log shippers.

Two destinations:

* a directory (``TRACEVAULT_JSONL_DIR``): files ``tracevault-YYYY-MM-DD.jsonl``
  partitioned by the event's UTC date, rotated to ``tracevault-YYYY-MM-DD.N.jsonl`` past
  ``TRACEVAULT_JSONL_MAX_BYTES`` (default 100 MB); every batch is flushed and fsynced
  before the forwarder moves its cursor. On start the sink reads the last complete line
  it wrote and skips events up to that ``seq``, so a batch re-sent after a crash is not
  written twice (a torn last line from the crash is cut off first);
* Python ``logging`` (``TRACEVAULT_JSONL_LOGGER=logger.name``): one record per event,
  the message being the JSON line, at the event's level, with the event as
  ``record.tracevault`` for structured handlers.

Each line is the stored event (post-redaction) with its ledger ``seq``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterable
from typing import IO, Any

import orjson

from tracevault.sinks.base import Batch, SinkError
from tracevault.store import StoredEvent

LOG_LEVELS = {"trace": 5, "debug": logging.DEBUG, "info": logging.INFO,
              "warning": logging.WARNING, "error": logging.ERROR}
_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS


def encode_line(stored: StoredEvent) -> bytes:
    """Return the JSON line (with trailing newline) for a stored event."""
    return orjson.dumps({"seq": stored.seq, **stored.event.to_dict()}, option=_OPTIONS,
                        default=str) + b"\n"


class JsonlSink:
    """Writes events as JSON lines to date-partitioned files or to a logger."""

    def __init__(
        self,
        *,
        name: str = "jsonl",
        directory: str | os.PathLike[str] | None = None,
        logger: str | logging.Logger | None = None,
        max_bytes: int = 100 * 1024 * 1024,
        prefix: str = "tracevault",
    ) -> None:
        if (directory is None) == (logger is None):
            raise SinkError("the JSON-lines sink needs exactly one of a directory or a logger")
        if max_bytes < 1024:
            raise SinkError("max_bytes must be at least 1024")
        self.name = name
        self.directory = os.fspath(directory) if directory is not None else None
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.max_bytes = max_bytes
        self.prefix = prefix
        self._pattern = re.compile(
            rf"^{re.escape(prefix)}-(\d{{4}}-\d{{2}}-\d{{2}})(?:\.(\d+))?\.jsonl$"
        )
        self._written: int | None = None  # highest seq already in the files
        self._open: dict[str, tuple[str, IO[bytes]]] = {}

    def export(self, batch: Batch) -> None:
        if self.logger is not None:
            self._log(batch.events)
        else:
            self._write(batch.events)

    # --- logging ----------------------------------------------------------------------

    def _log(self, events: Iterable[StoredEvent]) -> None:
        logger = self.logger
        assert logger is not None
        for stored in events:
            level = LOG_LEVELS.get(stored.event.level, logging.INFO)
            if logger.isEnabledFor(level):
                line = encode_line(stored)[:-1].decode()
                logger.log(level, line, extra={"tracevault": orjson.loads(line)})

    # --- files ------------------------------------------------------------------------

    def _write(self, events: list[StoredEvent]) -> None:
        assert self.directory is not None
        os.makedirs(self.directory, exist_ok=True)
        if self._written is None:
            self._written = self._last_written_seq()
        touched: set[str] = set()
        for stored in events:
            if stored.seq <= self._written:
                continue  # already on disk from before a crash
            day = stored.event.timestamp.strftime("%Y-%m-%d")
            fh = self._file_for(day)
            fh.write(encode_line(stored))
            touched.add(day)
        for day in touched:
            fh = self._open[day][1]
            fh.flush()
            os.fsync(fh.fileno())
        if events:
            self._written = max(self._written, events[-1].seq)

    def _parts(self) -> list[tuple[str, int, str]]:
        out = []
        for entry in os.listdir(self.directory or "."):
            m = self._pattern.match(entry)
            if m:
                out.append((m.group(1), int(m.group(2) or 0), entry))
        return sorted(out)

    def _file_for(self, day: str) -> IO[bytes]:
        current = self._open.get(day)
        if current is not None and current[1].tell() < self.max_bytes:
            return current[1]
        if current is not None:
            current[1].close()
        parts = [p for p in self._parts() if p[0] == day]
        number = parts[-1][1] if parts else 0
        path = self._path(day, number)
        if os.path.exists(path) and os.path.getsize(path) >= self.max_bytes:
            path = self._path(day, number + 1)
        fh = open(path, "ab")  # noqa: SIM115 - kept open across batches, closed on shutdown
        self._open[day] = (path, fh)
        return fh

    def _path(self, day: str, number: int) -> str:
        suffix = f".{number}" if number else ""
        return os.path.join(self.directory or ".", f"{self.prefix}-{day}{suffix}.jsonl")

    def _last_written_seq(self) -> int:
        """Return the highest ``seq`` in the files, cutting off a torn last line."""
        best = 0
        paths = [os.path.join(self.directory or ".", name) for _, _, name in self._parts()]
        for path in sorted(paths, key=os.path.getmtime)[-3:]:
            best = max(best, _last_seq(path))
        return best

    def shutdown(self) -> None:
        for _, fh in self._open.values():
            with contextlib.suppress(OSError):
                fh.close()
        self._open.clear()


def _last_seq(path: str) -> int:
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        start = max(0, size - 1024 * 1024)
        fh.seek(start)
        tail = fh.read()
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n") + 1
            fh.truncate(start + cut)
            tail = tail[:cut]
        for line in reversed(tail.splitlines()):
            try:
                value: Any = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict) and isinstance(value.get("seq"), int):
                return int(value["seq"])
    return 0


def from_env(name: str = "jsonl") -> JsonlSink:
    """Build the sink from ``TRACEVAULT_JSONL_DIR`` / ``TRACEVAULT_JSONL_LOGGER``
    (default: directory ``tracevault-jsonl`` in the working directory)."""
    logger = os.environ.get("TRACEVAULT_JSONL_LOGGER")
    directory = os.environ.get("TRACEVAULT_JSONL_DIR")
    max_bytes = int(os.environ.get("TRACEVAULT_JSONL_MAX_BYTES") or 100 * 1024 * 1024)
    if logger and not directory:
        return JsonlSink(name=name, logger=logger)
    return JsonlSink(name=name, directory=directory or "tracevault-jsonl", max_bytes=max_bytes)
