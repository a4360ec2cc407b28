"""Unique, valid canary values and a check that none of them is in a ledger's files."""

from __future__ import annotations

import random
import string
import uuid
from pathlib import Path

rnd = random.Random()


def _luhn_complete(partial: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return partial + str((10 - total % 10) % 10)


def _digits(n: int) -> str:
    return "".join(rnd.choice(string.digits) for _ in range(n))


def _iban_de() -> str:
    bban = _digits(18)
    check = 98 - int("".join(str(int(c, 36)) for c in bban + "DE00")) % 97
    return f"DE{check:02d}{bban}"


def make_canaries() -> dict[str, str]:
    tag = uuid.uuid4().hex[:10]
    b62 = string.ascii_letters + string.digits
    area = f"{rnd.randint(2, 9)}{rnd.randint(2, 9)}{rnd.randint(0, 9)}"
    exchange = f"{rnd.randint(2, 9)}{rnd.randint(2, 9)}{rnd.randint(0, 9)}"
    return {
        "email": f"canary.{tag}@example.com",
        "email2": f"tool.{tag}@example.org",
        "email3": f"boom.{tag}@example.net",
        "card": _luhn_complete("4" + _digits(14)),
        "card2": _luhn_complete("5" + str(rnd.randint(1, 5)) + _digits(13)),
        "ssn": f"{rnd.randint(100, 599)}-{rnd.randint(10, 99)}-{rnd.randint(1000, 9999)}",
        "phone": f"{area}-{exchange}-{_digits(4)}",
        "iban": _iban_de(),
        "ip": f"198.51.{rnd.randint(1, 254)}.{rnd.randint(1, 254)}",
        "openai": "sk-proj-" + "".join(rnd.choice(b62) for _ in range(48)) + "7",
        "aws": "AKIA" + "".join(rnd.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)),
        "github": "ghp_" + "".join(rnd.choice(b62) for _ in range(36)),
        "db_password": "pw" + "".join(rnd.choice(b62) for _ in range(14)) + "!9",
        "field_password": "fp" + "".join(rnd.choice(b62) for _ in range(14)),
        "cookie": "sess=" + uuid.uuid4().hex,
    }


def ledger_bytes(directory: Path) -> bytes:
    """The raw bytes of the ledger database and its write-ahead log (if present)."""
    out = b""
    for name in ("ledger.db", "ledger.db-wal"):
        path = directory / name
        if path.exists():
            out += path.read_bytes()
    return out


def assert_absent(raw: bytes, canaries: dict[str, str]) -> None:
    leaked = [name for name, value in canaries.items() if value.encode() in raw]
    # numbers could also be stored without their separators
    leaked += [name for name in ("card", "card2", "ssn", "phone")
               if canaries[name].replace("-", "").encode() in raw]
    assert not leaked, f"canaries found in the ledger files: {leaked}"
