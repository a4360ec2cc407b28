"""JSON-lines sink: the trail as one JSON object per line, for log shippers.

Two destinations:

* a directory (``TRACEVAULT_JSONL_DIR``): files ``tracevault-YYYY-MM-DD.jsonl``
  partitioned by the event's UTC date, rotated to ``tracevault-YYYY-MM-DD.N.jsonl`` past
  ``TRACEVAULT_JSONL_MAX_BYTES`` (default 100 MiB); every batch is flushed and fsynced
  before the forwarder moves its cursor. One writer at a time: each batch is written
  under an advisory lock on ``.tracevault.lock`` in the directory, and under that lock
  the sink first reads the files of the batch's dates back from their ends for the
  batch's events (written by this sink before a crash, or by another forwarder of the
  same ledger) and skips those, so the files hold each event once. An event counts as
  written only when a line carries both its ``seq`` and its ``event_id``: lines of
  another ledger (a replaced ledger file, a second host) never hide this ledger's
  events. A torn last line from a crash is cut off before anything is appended;
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
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any

import orjson

from tracevault.sinks.base import Batch, SinkError
from tracevault.store import StoredEvent

log = logging.getLogger("tracevault.sinks")

LOG_LEVELS = {"trace": 5, "debug": logging.DEBUG, "info": logging.INFO,
              "warning": logging.WARNING, "error": logging.ERROR}
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS
_CHUNK = 64 * 1024  # files are read backwards this much at a time: memory stays bounded
_HEAD = 4096  # bytes read from a line's start to find its seq and event id
# How many bytes of lines are read, per batch, looking for its events. A crash or a
# second forwarder leaves at most a batch or two to find; past this limit the rest of
# the batch is written again: a duplicate line is safe, a skipped event is lost.
_SCAN_LIMIT = 64 * 1024 * 1024
# What encode_line writes first; short lines in another layout are parsed whole.
_LINE_HEAD = re.compile(rb'\{"seq":(\d+),"event_id":("(?:[^"\\]|\\.)*")')
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]i?)?b?", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9,
          "ki": 2**10, "mi": 2**20, "gi": 2**30}

if sys.platform == "win32":  # pragma: no cover - no flock on Windows
    import msvcrt

    def _lock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_LOCK, 1)  # gives up after 10 s: the forwarder retries

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel if the process dies

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


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
        max_bytes: int = DEFAULT_MAX_BYTES,
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
        if not events:
            return
        os.makedirs(self.directory, exist_ok=True)
        with self._locked():
            # No state is kept between batches: the files, read under the lock, are the
            # only record of what this sink, a crashed run or another forwarder wrote.
            written = self._on_disk(events)
            todo = [e for e in events if (e.seq, e.event.event_id) not in written]
            if todo:
                self._append(todo)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the directory's lock file: one writer (process or sink) at a time."""
        path = self._path_of(f".{self.prefix}.lock")
        with open(path, "ab") as fh:
            _lock(fh.fileno())
            try:
                yield
            finally:
                _unlock(fh.fileno())

    def _on_disk(self, events: list[StoredEvent]) -> set[tuple[int, str]]:
        """Return the ``(seq, event_id)`` of those of ``events`` the files already hold.

        Reads the files of the batch's dates back from their ends, newest part first,
        down to a line below the batch's first seq, and at most ``_SCAN_LIMIT`` bytes of
        lines in all; an event further back is not found (and so is written again).
        """
        wanted = {(e.seq, e.event.event_id) for e in events}
        first = min(seq for seq, _ in wanted)
        days = {_day(e) for e in events}
        found: set[tuple[int, str]] = set()
        scanned = 0
        for day, _, name in reversed(self._parts()):
            if day not in days:
                continue
            path = self._path_of(name)
            try:
                # a fragment left by a crash goes even when nothing is appended to this
                # file again (the day is over): shippers would read it
                _cut_torn(path)
                for seq, event_id, size in _lines_back_in(path):
                    # A day's parts are filled in turn, each batch's lines in ledger
                    # order after the earlier batches': from a lower seq back (this part
                    # and the day's older ones) the lines are older batches' (or another
                    # ledger's: an event missed behind them is only written twice).
                    if seq < first:
                        days.discard(day)
                        break
                    if (seq, event_id) in wanted:
                        found.add((seq, event_id))
                        if found == wanted:
                            return found
                    scanned += size
                    if scanned >= _SCAN_LIMIT:
                        return found
            except FileNotFoundError:  # removed meanwhile (retention, log rotation)
                continue
        return found

    def _append(self, events: list[StoredEvent]) -> None:
        """Append ``events`` to their day files; return once they are flushed and fsynced."""
        files: dict[str, IO[bytes]] = {}
        previous: IO[bytes] | None = None
        try:
            for stored in events:
                day = _day(stored)
                fh = files.get(day)
                if fh is None or fh.tell() >= self.max_bytes:
                    if fh is not None:
                        _close(fh)
                    fh = files[day] = self._open_part(day)
                if previous is not None and fh is not previous and not previous.closed:
                    # write in ledger order across files: a crash leaves a prefix of the
                    # batch, and a shipper tailing several files sees seqs in order
                    previous.flush()
                fh.write(encode_line(stored))
                previous = fh
        finally:
            for fh in files.values():
                _close(fh)

    def _open_part(self, day: str) -> IO[bytes]:
        """Open the file ``day``'s events go to: the day's newest part, cut back to its
        last complete line, or the next part once that reached ``max_bytes``."""
        parts = [p for p in self._parts() if p[0] == day]
        number = parts[-1][1] if parts else 0
        path = self._path(day, number)
        if os.path.exists(path):
            # a writer crashed mid-line: neither glue onto its fragment nor leave it
            # behind in a full part
            _cut_torn(path)
            if os.path.getsize(path) >= self.max_bytes:
                path = self._path(day, number + 1)
        return open(path, "ab")

    def _parts(self) -> list[tuple[str, int, str]]:
        out = []
        for entry in os.listdir(self.directory or "."):
            m = self._pattern.match(entry)
            if m:
                out.append((m.group(1), int(m.group(2) or 0), entry))
        return sorted(out)

    def _path(self, day: str, number: int) -> str:
        suffix = f".{number}" if number else ""
        return self._path_of(f"{self.prefix}-{day}{suffix}.jsonl")

    def _path_of(self, name: str) -> str:
        return os.path.join(self.directory or ".", name)

    def shutdown(self) -> None:
        """Nothing to release: files are opened and closed within each batch."""


def _day(stored: StoredEvent) -> str:
    """Return the UTC date naming the file ``stored`` is written to."""
    return stored.event.timestamp.strftime("%Y-%m-%d")


def _close(fh: IO[bytes]) -> None:
    if not fh.closed:
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()


def _read_at(fh: IO[bytes], offset: int, size: int) -> bytes:
    fh.seek(offset)
    return fh.read(size)


def _cut_torn(path: str) -> None:
    """Cut ``path`` back to its last complete line (a crash can leave half a line)."""
    with open(path, "rb") as fh:  # opened for writing only when there is a fragment
        end = fh.seek(0, os.SEEK_END)
        if end == 0 or _read_at(fh, end - 1, 1) == b"\n":
            return
        while end > 0:  # the fragment can be longer than any window: scan back in chunks
            start = max(0, end - _CHUNK)
            cut = _read_at(fh, start, end - start).rfind(b"\n")
            if cut >= 0:
                end = start + cut + 1
                break
            end = start
    with open(path, "rb+") as fh:
        fh.truncate(end)


def _lines_back_in(path: str) -> Iterator[tuple[int, str, int]]:
    """Yield ``(seq, event_id, size)`` of the complete lines of ``path``, last first.

    Reads backwards in chunks, so a line of any length costs bounded memory; lines
    that are not events, and a fragment after the last newline, are passed over.
    """
    with open(path, "rb") as fh:
        newer = None  # offset of the newline that ends the line being delimited
        end = fh.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - _CHUNK)
            chunk = _read_at(fh, start, end - start)
            at = chunk.rfind(b"\n")
            while at >= 0:
                if newer is not None:
                    line = _parse(fh, start + at + 1, newer)
                    if line is not None:
                        yield line
                newer = start + at
                at = chunk.rfind(b"\n", 0, at)
            end = start
        if newer is not None:
            line = _parse(fh, 0, newer)
            if line is not None:
                yield line


def _parse(fh: IO[bytes], start: int, end: int) -> tuple[int, str, int] | None:
    """Return ``(seq, event_id, size)`` of the line at ``start:end``, if it is an event."""
    head = _read_at(fh, start, min(end - start, _HEAD))
    m = _LINE_HEAD.match(head)
    if m is not None:
        return int(m.group(1)), str(orjson.loads(m.group(2))), end - start + 1
    if end - start > _HEAD:
        return None
    try:  # a short line in another layout (written by hand or another tool)
        value: Any = orjson.loads(head)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, dict) and isinstance(value.get("seq"), int):
        return int(value["seq"]), str(value.get("event_id")), end - start + 1
    return None


def parse_size(text: str) -> int | None:
    """Return the byte count ``text`` names (``104857600``, ``100MB``, ``100 MiB``,
    ``1GiB``; KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024), or ``None``."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        return None
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def from_env(name: str = "jsonl") -> JsonlSink:
    """Build the sink from ``TRACEVAULT_JSONL_DIR`` / ``TRACEVAULT_JSONL_LOGGER``
    (default: directory ``tracevault-jsonl`` in the working directory) and
    ``TRACEVAULT_JSONL_MAX_BYTES`` (a bad value is logged and the default kept)."""
    logger = os.environ.get("TRACEVAULT_JSONL_LOGGER")
    directory = os.environ.get("TRACEVAULT_JSONL_DIR")
    if logger and not directory:
        return JsonlSink(name=name, logger=logger)
    raw = os.environ.get("TRACEVAULT_JSONL_MAX_BYTES") or ""
    max_bytes = parse_size(raw) if raw.strip() else DEFAULT_MAX_BYTES
    if max_bytes is None or max_bytes < 1024:
        log.warning("tracevault: TRACEVAULT_JSONL_MAX_BYTES=%r is not a size of at least "
                    "1024 bytes (like 104857600, 100MB or 100MiB); using %d", raw,
                    DEFAULT_MAX_BYTES)
        max_bytes = DEFAULT_MAX_BYTES
    return JsonlSink(name=name, directory=directory or "tracevault-jsonl", max_bytes=max_bytes)
