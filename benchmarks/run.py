"""Run every benchmark in turn (``make bench``); each writes ``results/<name>.json``.

Pass names to run a subset: ``python benchmarks/run.py core redaction``. The figures
the README reports come from these scripts with their default arguments.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ("core", "redaction", "callbacks", "langchain", "llamaindex", "sinks", "postgres")


def main(names: list[str]) -> int:
    unknown = sorted(set(names) - set(ORDER))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(ORDER)}")
        return 2
    failed = []
    for name in names or ORDER:
        print(f"\n=== {name} ===", flush=True)
        code = subprocess.call([sys.executable, str(HERE / f"bench_{name}.py")])
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
