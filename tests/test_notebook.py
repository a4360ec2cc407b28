"""The exploration notebook runs top to bottom against a real ledger."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

import tracevault
from tracevault.demo import run_demo

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_audit_trail.ipynb"


def test_notebook_executes_against_a_demo_ledger(tmp_path: Path, monkeypatch: object) -> None:
    url = f"sqlite:///{tmp_path / 'nb.db'}"
    tracevault.configure(store=url)
    session = run_demo()
    assert tracevault.flush(30)
    tracevault.shutdown()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    os.environ["TRACEVAULT_STORE"] = url
    try:
        NotebookClient(nb, timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        del os.environ["TRACEVAULT_STORE"]
    outputs = "\n".join(
        o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
        for cell in nb.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
    )
    assert "chain intact: True" in outputs
    assert session in outputs
    assert "get_local_time" in outputs  # tool table and tree
    assert (tmp_path / "tool_usage.png").stat().st_size > 1000
