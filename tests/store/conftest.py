"""A real PostgreSQL server for the store tests, started and stopped by the suite.

``initdb`` and ``pg_ctl`` run on a temporary directory and a free loopback port,
listening on 127.0.0.1 only. PostgreSQL refuses to run as root, so under root (as in
CI) they run as the ``postgres`` system account. Without PostgreSQL the tests skip —
except in CI (``CI`` set), where that is a failure: there they must run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_UNPRIVILEGED = "postgres"


def in_ci() -> bool:
    """Whether the suite runs in CI, where PostgreSQL tests must not skip."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb") + glob.glob(
        "/usr/pgsql-*/bin/initdb"
    )

    def version(path: str) -> tuple[int, ...]:
        digits = "".join(c if c.isdigit() else " " for c in path).split()
        return tuple(int(d) for d in digits)

    return Path(max(candidates, key=version)).parent if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Tests need no crash safety from the OS: skip fsync (a clean or immediate stop still
# keeps every committed row, only an OS crash could lose some).
TEST_SETTINGS = {"fsync": "off", "full_page_writes": "off"}


class PostgresServer:
    """A throwaway PostgreSQL cluster: ``start()``, ``stop()``, ``create_database()``.

    ``settings`` are server parameters (``-c name=value``) on top of the defaults.
    """

    def __init__(self, bindir: Path, settings: dict[str, str] | None = None) -> None:
        self.bindir = bindir
        self.settings = dict(TEST_SETTINGS if settings is None else settings)
        self.root = Path(tempfile.mkdtemp(prefix="tracevault-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.user = "tracevault"
        self._as_other = os.geteuid() == 0
        if self._as_other:
            # The directory must belong to the account the server runs as.
            shutil.chown(self.root, _UNPRIVILEGED, _UNPRIVILEGED)
            os.chmod(self.root, 0o700)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_other:
            cmd = ["runuser", "-u", _UNPRIVILEGED, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )

    def start(self) -> None:
        """Start (or restart) the server on the same port and data directory."""
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "max_connections": "200",
            **self.settings,
        }
        options = " ".join(f"-c {k}={v}" for k, v in settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: open connections break, new ones are refused."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def psql(self, database: str, sql: str) -> subprocess.CompletedProcess[str]:
        """Run ``sql`` through the ``psql`` client, as an operator at a shell would."""
        psql = shutil.which("psql") or str(self.bindir / "psql")
        return subprocess.run(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-d", self.url(database), "-c", sql],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def create_database(self) -> str:
        """Create an empty database and return its name."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        done = self.psql("postgres", f"CREATE DATABASE {name}")
        if done.returncode != 0:
            raise RuntimeError(f"cannot create database: {done.stderr}")
        return name

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"PostgreSQL tests must run in CI, but: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole test session (fails in CI if it cannot start)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'tracevault[postgres]')")
    bindir = _bindir()
    if bindir is None:
        _unavailable("PostgreSQL is not installed (`make test` installs it)")
        raise AssertionError  # unreachable: skip/fail raise
    server: PostgresServer | None = None
    try:
        server = PostgresServer(bindir)
        server.init()
        server.start()
    except Exception as exc:  # e.g. no `postgres` account, initdb or pg_ctl failing
        log = server.log.read_text() if server and server.log.exists() else ""
        detail = getattr(exc, "stderr", "") or ""
        if server is not None:
            server.cleanup()
        _unavailable(f"cannot start PostgreSQL: {exc} {detail} {log[-2000:]}")
    assert server is not None
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture()
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database on the test server."""
    if not pg_server.running():  # a test that stopped the server must not break others
        pg_server.start()
    yield pg_server.url(pg_server.create_database())
