"""The redaction tests share helpers (``redaction_canaries``) that sit next to them; pytest's
importlib mode does not put this directory on sys.path by itself."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
