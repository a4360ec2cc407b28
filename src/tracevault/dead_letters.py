"""Dead-letter files: the events that could not reach the ledger, and erasure of them.

A pipeline that still cannot write some events when it shuts down appends them,
redacted, to a JSON-lines file (``tracevault-dead-letter-PID.jsonl`` in the working
directory, one event per line) for :func:`read` to give back for re-appending. An
erasure must reach those events too, or a session erased from the ledger would live on
in a file beside it: :func:`erase` rewrites a file with the matching events' content
cleared the way the ledger clears it (:func:`tracevault.ledger.erased_event`).

Appends and erasure take the file's lock (``flock``, where the system has it), and
erasure replaces the file in one rename; an appender that opened the file before the
rename finds out once it holds the lock, and appends to the new file instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from tracevault.ledger import decode_event, encode_event, erased_event, stored_text
from tracevault.schema import AuditEvent
from tracevault.store.erasures import is_record

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None  # type: ignore[assignment]

PATTERN = "tracevault-dead-letter-*.jsonl"


def default_path() -> str:
    """The file this process dead-letters into: ``tracevault-dead-letter-PID.jsonl`` in
    the working directory."""
    return os.path.join(os.getcwd(), f"tracevault-dead-letter-{os.getpid()}.jsonl")


def files_in(where: Iterable[str | Path]) -> list[Path]:
    """The dead-letter files among ``where``: files as given, and in each directory
    those named like :data:`PATTERN`, each once. Raises :class:`FileNotFoundError` for
    a place that does not exist (a mistyped path must not erase nowhere unnoticed)."""
    found: list[Path] = []
    for place in map(Path, where):
        if not place.exists():
            raise FileNotFoundError(f"{place}: no such dead-letter file or directory")
        found.extend(sorted(place.glob(PATTERN)) if place.is_dir() else [place])
    return list(dict.fromkeys(found))


def read(path: str | Path) -> list[AuditEvent]:
    """The events saved in a dead-letter file, in order (to re-append them)."""
    with open(path, "rb") as fh:
        return [decode_event(line) for line in fh if line.strip()]


def append(path: str | Path, lines: Sequence[bytes]) -> None:
    """Append encoded events (one line each) to the dead-letter file ``path``."""
    with _locked(path, "ab") as fh:
        fh.write(b"".join(lines))
        fh.flush()
        os.fsync(fh.fileno())


def erase(
    paths: Iterable[str | Path],
    *,
    session_id: str | None = None,
    user_id: str | None = None,
    trace_id: str | None = None,
    before: datetime | None = None,
) -> int:
    """Clear the content of the events of ``paths`` that match every filter given, as
    :meth:`SQLStore.erase <tracevault.store.sql.SQLStore.erase>` does in a ledger; return
    how many were cleared. A line that is not an event is left as it is."""
    if session_id is None and user_id is None and trace_id is None and before is None:
        raise ValueError("erase needs a session, user, trace or time")
    wanted = {key: stored_text(value) for key, value in
              (("session_id", session_id), ("user_id", user_id), ("trace_id", trace_id))
              if value is not None}
    until = None if before is None else before.astimezone(timezone.utc)
    erased = 0
    for path in paths:
        try:
            erased += _erase_in(Path(path), wanted, until)
        except FileNotFoundError:
            continue  # re-appended and removed meanwhile: nothing left there to erase
    return erased


def _erase_in(path: Path, wanted: dict[str, str], before: datetime | None) -> int:
    with _locked(path, "rb") as fh:
        lines = fh.read().splitlines(keepends=True)
        out, erased = [], 0
        for line in lines:
            event = _event_or_none(line)
            if event is not None and _matches(event, wanted, before):
                out.append(encode_event(erased_event(event)) + b"\n")
                erased += 1
            else:
                out.append(line)
        if erased:
            # A new file renamed over the old one: a crash leaves one or the other whole.
            fresh = path.with_name(f".{path.name}.erasing")
            with open(fresh, "wb") as new:
                new.write(b"".join(out))
                new.flush()
                os.fsync(new.fileno())
            os.replace(fresh, path)
            _sync_directory(path.parent)
        return erased


def _event_or_none(line: bytes) -> AuditEvent | None:
    if not line.strip():
        return None
    try:
        return decode_event(line)
    except (ValueError, TypeError, KeyError):
        return None


def _matches(event: AuditEvent, wanted: dict[str, str], before: datetime | None) -> bool:
    if is_record(event.kind, event.name):
        return False  # as in the ledger, an erasure never erases a record
    for key, value in wanted.items():
        own = getattr(event, key)
        if own is None or stored_text(own) != value:
            return False
    return before is None or event.timestamp < before


@contextmanager
def _locked(path: str | Path, mode: str) -> Iterator[IO[bytes]]:
    """``path`` opened in ``mode`` under its exclusive lock, as it is once locked (an
    erasure may have replaced it while this waited for the lock)."""
    while True:
        fh = open(path, mode)  # noqa: SIM115 - closed below, or handed out and closed
        try:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                current = os.stat(path)
            except FileNotFoundError:
                current = None
            opened = os.fstat(fh.fileno())
            if current is not None and (current.st_ino, current.st_dev) == (
                    opened.st_ino, opened.st_dev):
                yield fh
                return
        finally:
            fh.close()  # (also releases the lock)


def _sync_directory(directory: Path) -> None:
    # The rename is durable once the directory entry is.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
