"""Suite-wide pytest policy: in CI (``CI`` set), a skipped test fails the run; each
test leaves the environment as it found it.

Every test here is meant to run on a machine that `make test` prepared (PostgreSQL and
all). A skip in CI means something the suite depends on was not set up, which must be
seen as a failure rather than a quietly smaller green run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    # tracevault.configure() writes its settings into os.environ (for child processes):
    # one test's ledger must not become the next test's default.
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # The same reading of CI as the PostgreSQL fixtures (tests/store/conftest.py).
    if os.environ.get("CI", "").lower() in ("", "0", "false", "no"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write_line(f"CI: {skipped} skipped; a skip fails the run in CI", red=True)
