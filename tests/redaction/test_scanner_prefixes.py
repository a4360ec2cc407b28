"""The scanner's check for token prefixes in runs without digits (grouped by first
character) answers exactly as searching for every prefix would."""

from __future__ import annotations

import random
import string

from tracevault.redaction import Policy, Redactor
from tracevault.redaction.secrets import SECRET_DETECTORS


def test_grouped_prefix_search_matches_searching_each_prefix() -> None:
    scanner = Policy().scanner
    literals = [lit for d in SECRET_DETECTORS if d.family == "token" and not d.ignore_case
                for lit in d.literals]
    assert len(literals) > 10
    rng = random.Random(3)
    alphabet = string.ascii_letters + "_-.+/="
    hits = 0
    for _ in range(3000):
        parts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))]
        if rng.random() < 0.4:
            literal = rng.choice(literals)
            parts.append(literal[: rng.randint(1, len(literal))])  # whole or cut short
        parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))))
        text = "".join(parts)
        left, right = sorted(rng.randint(0, len(text)) for _ in range(2))
        expected = any(text.find(p, left, right) >= 0 for p in literals)
        assert scanner._has_prefix(text, left, right) == expected
        hits += expected
    assert 100 < hits < 2900


def test_a_long_run_without_digits_is_still_searched_for_key_ids() -> None:
    text = "AWS_ACCESS_KEY_ID=AKIANQYBMOZAQWLBSEXA and " + "x" * 120
    redacted, found = Redactor(Policy()).redact_text(text)
    assert "AKIANQYBMOZAQWLBSEXA" not in redacted and found
