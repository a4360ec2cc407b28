"""TRACEVAULT_ENABLED auto-enable: the .pth boot hook, driven in real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys
    booted = "_tracevault_autoenable" in sys.modules
    import fakefw
    import fake_integration
    print(booted, fake_integration.calls, fake_integration.saw_framework)
    import fakefw  # a second import must not enable twice
    import importlib; importlib.reload(fakefw)
    print(fake_integration.calls)
    """
)


@pytest.fixture()
def fake_world(tmp_path: Path) -> Path:
    """A framework module and an integration declaring the auto-enable entry point."""
    (tmp_path / "fakefw").mkdir()
    (tmp_path / "fakefw" / "__init__.py").write_text("READY = True\n")
    (tmp_path / "fake_integration.py").write_text(
        "import sys\ncalls = 0\nsaw_framework = None\n"
        "def enable():\n    global calls, saw_framework\n    calls += 1\n"
        "    saw_framework = getattr(sys.modules.get('fakefw'), 'READY', None)\n"
        "def broken():\n    raise RuntimeError('integration exploded')\n"
    )
    info = tmp_path / "fake_integration-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-integration\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[tracevault.autoenable]\nfakefw = fake_integration:enable\n"
    )
    (tmp_path / "script.py").write_text(SCRIPT)
    return tmp_path


def _run(world: Path, enabled: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRACEVAULT_ENABLED"}
    env["PYTHONPATH"] = str(world)
    if enabled is not None:
        env["TRACEVAULT_ENABLED"] = enabled
    out = subprocess.run(
        [sys.executable, str(world / "script.py")],
        env=env,
        cwd=world,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.split("\n")


def test_enabled_calls_integration_once_after_the_framework_is_imported(fake_world: Path) -> None:
    lines = _run(fake_world, "true")
    # Armed at start-up, called after fakefw finished executing, exactly once.
    assert lines[0] == "True 1 True"
    assert lines[1] == "1"


def test_not_enabled_loads_nothing(fake_world: Path) -> None:
    lines = _run(fake_world, None)
    assert lines[0] == "False 0 None"
    assert _run(fake_world, "false")[0] == "False 0 None"


def test_a_misspelt_value_says_so_and_enables_nothing(fake_world: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRACEVAULT_ENABLED"}
    out = subprocess.run([sys.executable, str(fake_world / "script.py")],
                         env={**env, "PYTHONPATH": str(fake_world), "TRACEVAULT_ENABLED": "ture"},
                         cwd=fake_world, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("\n")[0] == "True 0 None"  # looked at, but nothing enabled
    assert "TRACEVAULT_ENABLED='ture' is neither true" in out.stderr
    assert "recording stays off" in out.stderr


def test_a_failing_integration_does_not_break_the_program(fake_world: Path) -> None:
    ep = fake_world / "fake_integration-1.0.dist-info" / "entry_points.txt"
    ep.write_text("[tracevault.autoenable]\nfakefw = fake_integration:broken\n")
    (fake_world / "script.py").write_text(
        "import fakefw, _tracevault_autoenable as a\nprint(fakefw.READY, a.errors)\n"
    )
    lines = _run(fake_world, "1")
    assert lines[0].startswith("True [")
    assert "fake_integration:broken: RuntimeError('integration exploded')" in lines[0]


def test_install_fires_for_an_already_imported_trigger() -> None:
    import _tracevault_autoenable as boot

    calls: list[int] = []
    sys.modules["tests_fake_trigger"] = type(sys)("tests_fake_trigger")
    try:
        mod = type(sys)("tests_fake_target")
        mod.enable = lambda: calls.append(1)  # type: ignore[attr-defined]
        sys.modules["tests_fake_target"] = mod
        boot.install({"tests_fake_trigger": ["tests_fake_target:enable"]})
        boot.install({"tests_fake_trigger": ["tests_fake_target:enable"]})
        assert calls == [1]
    finally:
        for name in ("tests_fake_trigger", "tests_fake_target"):
            sys.modules.pop(name, None)
