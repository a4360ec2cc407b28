"""Settings, with defaults read from ``TRACEVAULT_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tracevault.schema import LEVELS, level_rank
from tracevault.store import DEFAULT_URL

_TRUE = {"1", "true", "yes", "on"}
WRITERS = ("thread", "process")
_FALSE = {"0", "false", "no", "off", ""}


def env_flag(name: str, default: bool = False, environ: Mapping[str, str] | None = None) -> bool:
    """Read a boolean environment variable; raise ``ValueError`` on an unclear value."""
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def _env_number(name: str, default: float, environ: Mapping[str, str]) -> float:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not 0 <= value < float("inf"):  # NaN too: no comparison with it holds
        raise ValueError(f"{name}={raw!r} is not a number of zero or more")
    return value


def _env_choice(name: str, choices: tuple[str, ...], environ: Mapping[str, str]) -> str:
    raw = (environ.get(name) or choices[0]).strip().lower()
    if raw not in choices:
        raise ValueError(f"{name}={raw!r} is not one of {', '.join(choices)}")
    return raw


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything :func:`tracevault.configure` accepts.

    ``level``: events below it are not recorded. ``slow_tool_ms``: a tool call slower
    than this also yields a ``warning`` event. ``queue_size``: events held in memory
    before capture applies back-pressure. ``block_timeout``: seconds a capture may wait
    for space (``None`` = wait until there is room; on timeout the event is counted as
    dropped and a gap record is written). ``strict``: a tool's intent must be durable
    before the tool runs, or the tool call fails. ``writer``: ``thread`` redacts and
    writes on a background thread of this process; ``process`` hands that work to a
    child process (:mod:`tracevault.sidecar`) so it does not compete for the GIL.
    """

    store: str = DEFAULT_URL
    level: str = "debug"
    slow_tool_ms: float = 10_000.0
    queue_size: int = 100_000
    batch_size: int = 4_096
    block_timeout: float | None = None
    strict: bool = False
    strict_timeout: float = 10.0
    writer: str = "thread"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        level_rank(self.level)  # raises ValueError with the choices
        if self.queue_size < 1 or self.batch_size < 1:
            raise ValueError("queue_size and batch_size must be at least 1")
        if not 0 <= self.slow_tool_ms < float("inf"):
            raise ValueError("slow_tool_ms must be a number of zero or more")
        if self.writer not in WRITERS:
            raise ValueError(f"writer must be one of {', '.join(WRITERS)}, not {self.writer!r}")

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        on_error: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings from the environment, then apply non-None ``overrides``.

        A bad value raises ``ValueError``; with ``on_error`` it is reported there instead
        and that one setting keeps its default.
        """
        env = os.environ if environ is None else environ
        level = (env.get("TRACEVAULT_LEVEL") or "debug").strip().lower()
        values: dict[str, Any] = {"store": env.get("TRACEVAULT_STORE") or DEFAULT_URL}
        readers: dict[str, Callable[[], Any]] = {
            "level": lambda: LEVELS[level_rank(level)],
            "slow_tool_ms": lambda: _env_number("TRACEVAULT_SLOW_TOOL_MS", 10_000.0, env),
            "strict": lambda: env_flag("TRACEVAULT_STRICT", False, env),
            "writer": lambda: _env_choice("TRACEVAULT_WRITER", WRITERS, env),
        }
        for name, read in readers.items():
            try:
                values[name] = read()
            except ValueError as exc:
                if on_error is None:
                    raise
                on_error(f"{exc}; using the default {name}")
        base = cls(**values)
        changes = {k: v for k, v in overrides.items() if v is not None}
        return replace(base, **changes) if changes else base


#: The settings a child process can read from its environment, by variable.
ENVIRONMENT = {
    "store": "TRACEVAULT_STORE",
    "level": "TRACEVAULT_LEVEL",
    "slow_tool_ms": "TRACEVAULT_SLOW_TOOL_MS",
    "strict": "TRACEVAULT_STRICT",
    "writer": "TRACEVAULT_WRITER",
}


def export(settings: Settings, names: Iterable[str]) -> None:
    """Write the settings ``names`` (keys of :data:`ENVIRONMENT`) of ``settings`` into
    this process's environment, so that processes started from now on read them:
    multiprocessing's ``spawn`` and ``forkserver`` children and subprocesses start
    afresh and know nothing of :func:`tracevault.configure` but the environment."""
    for name in names:
        value = getattr(settings, name)
        os.environ[ENVIRONMENT[name]] = (
            ("true" if value else "false") if isinstance(value, bool) else str(value)
        )
