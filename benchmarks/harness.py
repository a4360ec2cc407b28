"""What the benchmark scripts share: the machine description, the results folder, and
a store that parks the ledger writer.

The scripts run as ``python benchmarks/bench_x.py``, which puts this folder on
``sys.path``, so they import this module by its plain name.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import threading
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """Describe the machine the figures come from."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def write_results(name: str, results: dict[str, Any]) -> Path:
    """Write ``results`` to ``results/<name>.json`` and return the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2))
    return path


class GatedStore:
    """Delegates to a real store, but appends wait until ``gate`` is set.

    Parking the writer this way measures what capture itself costs the caller's
    thread, without the writer competing for the GIL at the same moment.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.url = store.url
        self.gate = threading.Event()

    def append(self, events: Any) -> int:
        self.gate.wait()
        return int(self.store.append(events))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)
