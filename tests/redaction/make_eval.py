# ruff: noqa: E501  (a table of value formats and templates reads better one per line)
"""Generate the templated part of the redaction evaluation set (``data/generated.jsonl``).

Run: ``.venv/bin/python tests/redaction/make_eval.py`` (deterministic: fixed seed). The
file is committed; the test only reads it. Values are random but *valid* (real Luhn,
mod-97, SSN and NANP rules), written in the forms people and systems use, inside chat
messages, JSON tool arguments, log lines and stack traces. Hard negatives are look-alikes
that must survive: order numbers, UUIDs, timestamps, versions, hashes, Luhn-failing
digit runs, prices, impossible SSNs/phones, bad IBAN checksums, and secret-ish words.

Each line: ``{"id", "kind", "text", "labels": [{"category", "value"}]}``; every labelled
value occurs in ``text``.
"""

from __future__ import annotations

import base64
import json
import random
import string
import uuid
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "data" / "generated.jsonl"
rnd = random.Random(20261127)
B62 = string.ascii_letters + string.digits


def rs(alphabet: str, n: int) -> str:
    return "".join(rnd.choice(alphabet) for _ in range(n))


def luhn_digit(partial: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


# --- value generators ----------------------------------------------------------------------

FIRST = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
         "mallory", "oscar", "peggy", "trent", "victor", "walter", "zoe", "li", "omar", "ana"]
LAST = ["smith", "martin", "nguyen", "garcia", "okafor", "kowalski", "tanaka", "muller",
        "rossi", "dubois", "patel", "cohen", "silva", "berg", "obrien"]
DOMAINS = ["example.com", "mail.example.co.uk", "acme-corp.io", "uni-berlin.de", "corp.example.org",
           "gmail.com", "outlook.fr", "xn--80ak6aa92e.com", "health.example.net", "startup.ai"]


def email() -> str:
    f, last = rnd.choice(FIRST), rnd.choice(LAST)
    local = rnd.choice([f"{f}.{last}", f"{f}_{last}", f"{f[0]}{last}", f"{f}.{last}+{rs('abcxyz', 4)}",
                        f"{f}{rnd.randint(1, 999)}", f"{f.upper()}.{last.capitalize()}", f"{f}-{last}"])
    return f"{local}@{rnd.choice(DOMAINS)}"


def nanp_digits() -> tuple[str, str, str]:
    while True:
        area = f"{rnd.randint(2, 9)}{rnd.randint(0, 9)}{rnd.randint(0, 9)}"
        exch = f"{rnd.randint(2, 9)}{rnd.randint(0, 9)}{rnd.randint(0, 9)}"
        if area[1:] != "11" and exch[1:] != "11":
            return area, exch, f"{rnd.randint(0, 9999):04d}"


def phone() -> str:
    a, e, n = nanp_digits()
    forms = [f"({a}) {e}-{n}", f"{a}-{e}-{n}", f"{a}.{e}.{n}", f"{a} {e} {n}", f"+1 {a} {e} {n}",
             f"+1-{a}-{e}-{n}", f"1-{a}-{e}-{n}", f"+1{a}{e}{n}", f"({a}){e}-{n}",
             f"+1 ({a}) {e}-{n}"]
    intl = [
        lambda: f"+44 20 {rnd.randint(7000, 8999)} {rnd.randint(0, 9999):04d}",
        lambda: f"+44 7{rnd.randint(100, 999)} {rnd.randint(100000, 999999)}",
        lambda: f"+33 {rnd.randint(1, 7)} " + " ".join(f"{rnd.randint(0, 99):02d}" for _ in range(4)),
        lambda: f"+49 30 {rnd.randint(100000, 99999999)}",
        lambda: f"+81 3-{rnd.randint(1000, 9999)}-{rnd.randint(1000, 9999)}",
        lambda: f"+91 {rnd.randint(70000, 99999)} {rnd.randint(10000, 99999)}",
        lambda: f"+61 2 {rnd.randint(1000, 9999)} {rnd.randint(1000, 9999)}",
        lambda: f"+34 6{rnd.randint(10, 99)} {rnd.randint(100, 999)} {rnd.randint(100, 999)}",
        lambda: f"+55 11 9{rnd.randint(1000, 9999)}-{rnd.randint(1000, 9999)}",
        lambda: f"+86 138 {rnd.randint(1000, 9999)} {rnd.randint(1000, 9999)}",
        lambda: f"+353{rnd.randint(800000000, 899999999)}",
    ]
    return rnd.choice(forms) if rnd.random() < 0.6 else rnd.choice(intl)()


CARD_PREFIXES = [("4", 16), ("4", 13), ("4", 19), ("51", 16), ("53", 16), ("55", 16), ("2221", 16),
                 ("2500", 16), ("2720", 16), ("34", 15), ("37", 15), ("6011", 16), ("65", 16),
                 ("644", 16), ("3528", 16), ("3589", 16), ("36", 14), ("62", 16), ("6304", 18)]


def card_number() -> str:
    prefix, length = rnd.choice(CARD_PREFIXES)
    body = prefix + "".join(str(rnd.randint(0, 9)) for _ in range(length - len(prefix) - 1))
    return body + luhn_digit(body)


def card() -> str:
    n = card_number()
    style = rnd.choice(["plain", "space", "dash"])
    if style == "plain" or len(n) not in (15, 16):
        return n
    sep = " " if style == "space" else "-"
    if len(n) == 15:
        return sep.join([n[:4], n[4:10], n[10:]])
    return sep.join(n[i:i + 4] for i in range(0, 16, 4))


def ssn_digits() -> str:
    while True:
        area = rnd.randint(1, 899)
        if area != 666:
            return f"{area:03d}{rnd.randint(1, 99):02d}{rnd.randint(1, 9999):04d}"


def ssn() -> str:
    d = ssn_digits()
    return f"{d[:3]}-{d[3:5]}-{d[5:]}"


IBAN_FORMATS = {  # country: BBAN pattern (n = digit, a = upper letter, c = alnum)
    "DE": "n" * 18, "GB": "aaaa" + "n" * 14, "FR": "n" * 10 + "c" * 11 + "nn", "NL": "aaaa" + "n" * 10,
    "ES": "n" * 20, "IT": "a" + "n" * 10 + "c" * 12, "BE": "n" * 12, "CH": "n" * 5 + "c" * 12,
    "AT": "n" * 16, "PL": "n" * 24, "SE": "n" * 20, "NO": "n" * 11, "DK": "n" * 14,
    "IE": "aaaa" + "n" * 14, "PT": "n" * 21,
}


def iban_compact(country: str | None = None, valid: bool = True) -> str:
    country = country or rnd.choice(list(IBAN_FORMATS))
    bban = "".join(rnd.choice(string.digits) if c == "n" else rnd.choice(string.ascii_uppercase)
                   if c == "a" else rnd.choice(string.digits + string.ascii_uppercase)
                   for c in IBAN_FORMATS[country])
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    if not valid:
        check = (check % 97) + 1 if check != 97 else 2
    return f"{country}{check:02d}{bban}"


def iban() -> str:
    value = iban_compact()
    if rnd.random() < 0.5:
        return " ".join(value[i:i + 4] for i in range(0, len(value), 4))
    return value


def ipv4() -> str:
    while True:
        a = rnd.choice([10, 172, 192, 203, 198, 81, 45, 100, 8, 66, 151, 213])
        value = f"{a}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(1, 254)}"
        if not value.startswith("127."):
            return value


def ipv6() -> str:
    groups = [f"{rnd.randint(0, 0xFFFF):x}" for _ in range(8)]
    return rnd.choice([
        ":".join(f"{int(g, 16):04x}" for g in ["2001", "db8", *groups[2:]]),
        f"2001:db8::{groups[3]}:{groups[4]}",
        f"fe80::{groups[5]}:{groups[6]}:{groups[7]}",
        f"2a03:2880:f12f:{groups[2]}::{groups[7]}",
        f"::ffff:{ipv4()}",
        f"fe80::1{groups[6][:3]}%eth0",
    ])


def ip() -> str:
    return ipv4() if rnd.random() < 0.6 else ipv6()


def jwt() -> str:
    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    header = b64({"alg": rnd.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"})
    payload = b64({"sub": str(rnd.randint(1, 10**9)), "iat": rnd.randint(1.6e9, 1.8e9)})
    return f"{header}.{payload}.{rs(B62 + '-_', 43)}"


def pem() -> str:
    kind = rnd.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
    body = "\n".join(rs(B62 + "+/", 64) for _ in range(rnd.randint(3, 8)))
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----"


def secret() -> tuple[str, str]:
    """Return (text containing the secret, the secret value)."""
    kind = rnd.randrange(16)
    if kind == 0:
        v = "sk-proj-" + rs(B62 + "-_", 64)
        return f"OPENAI_API_KEY={v}", v
    if kind == 1:
        v = "sk-" + rs(B62, 48)
        return f"using key {v} for the call", v
    if kind == 2:
        v = "sk-ant-api03-" + rs(B62 + "-_", 93) + "AA"
        return f'client = Anthropic(api_key="{v}")', v
    if kind == 3:
        v = rnd.choice(["AKIA", "ASIA"]) + rs("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)
        return f"aws access key id {v} was rotated", v
    if kind == 4:
        v = rs(B62 + "/+", 40)
        return rnd.choice([f"aws_secret_access_key = {v}", f'"SecretAccessKey": "{v}"',
                           f"AWS_SECRET_ACCESS_KEY={v}"]), v
    if kind == 5:
        v = rnd.choice(["ghp_", "gho_", "ghs_", "ghu_"]) + rs(B62, 36)
        return f"git clone https://x-access-token:{v}@github.com/org/repo.git", v
    if kind == 6:
        v = "github_pat_" + rs(B62, 22) + "_" + rs(B62, 59)
        return f"token {v} expires in 30 days", v
    if kind == 7:
        v = f"xox{rnd.choice('bpa')}-{rnd.randint(10**11, 10**12)}-{rnd.randint(10**12, 10**13)}-" + rs(B62, 24)
        return f"SLACK_BOT_TOKEN={v}", v
    if kind == 8:
        v = f"{rnd.choice(['sk', 'rk', 'pk'])}_live_" + rs(B62, rnd.randint(24, 99))
        return f"stripe.api_key = '{v}'", v
    if kind == 9:
        v = "AIza" + rs(B62 + "-_", 35)
        return f"https://maps.googleapis.com/maps/api/geocode/json?key={v}", v
    if kind == 10:
        v = jwt()
        return f"Authorization: Bearer {v}", v
    if kind == 11:
        v = pem()
        return f"loaded key:\n{v}\n", v
    if kind == 12:
        v = rs(B62, 10) + rnd.choice("!#%^*") + rs(B62, 4)
        user = rnd.choice(FIRST)
        return (f"{rnd.choice(['postgres', 'mysql', 'redis', 'amqp', 'mongodb+srv', 'https'])}://"
                f"{user}:{v}@db{rnd.randint(1, 9)}.internal.example.com:5432/app"), v
    if kind == 13:
        v = rs(B62, rnd.randint(8, 20)) + str(rnd.randint(0, 99))
        return rnd.choice([f"password={v}", f'"password": "{v}"', f"db_password: '{v}'",
                           f"PASSWD={v}", f"pwd={v}&user=admin", f'"client_secret": "{v}"']), v
    if kind == 14:
        v = rs(B62, 32) + str(rnd.randint(0, 9))
        return rnd.choice([f"Authorization: Bearer {v}", f"-H 'Authorization: Bearer {v}'",
                           f"bearer {v}"]), v
    v = rs(B62, 24) + str(rnd.randint(0, 9))
    return rnd.choice([f"api_key={v}", f'"x-api-key": "{v}"', f"X-Api-Key: {v}",
                       f"refresh_token={v}"]), v


# --- hard negatives ------------------------------------------------------------------------

def bad_card() -> str:
    n = card_number()
    return n[:-1] + str((int(n[-1]) + rnd.randint(1, 9)) % 10)


NEGATIVES: list[Any] = [
    lambda: f"Order #{rnd.randint(10**8, 10**9)} shipped",
    lambda: f"order number ORD-{rnd.randint(2019, 2026)}-{rnd.randint(0, 9999999):07d}",
    lambda: f"request id {uuid.UUID(int=rnd.getrandbits(128))}",
    lambda: f"at {rnd.randint(2019, 2026)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}T"
            f"{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:{rnd.randint(0, 59):02d}.{rnd.randint(0, 999999):06d}Z",
    lambda: f"epoch {rnd.randint(1_500_000_000, 1_800_000_000)} ms {rnd.randint(1_500_000_000_000, 1_800_000_000_000)}",
    lambda: f"upgraded to v{rnd.randint(0, 9)}.{rnd.randint(0, 30)}.{rnd.randint(0, 99)}",
    lambda: f"version {rnd.randint(1, 20)}.{rnd.randint(0, 9)}.{rnd.randint(0, 9)}.{rnd.randint(0, 9999)}",
    lambda: f"commit {rs('0123456789abcdef', 40)}",
    lambda: f"sha256:{rs('0123456789abcdef', 64)}",
    lambda: f"md5 {rs('0123456789abcdef', 32)}",
    lambda: f"card ending {bad_card()} failed Luhn",
    lambda: f"digits {rnd.randint(10**15, 10**16 - 1)}" if False else f"ref {bad_card()}",
    lambda: f"total ${rnd.randint(1, 99)},{rnd.randint(100, 999)}.{rnd.randint(0, 99):02d}",
    lambda: f"price EUR {rnd.randint(1, 9)}.{rnd.randint(100, 999)},{rnd.randint(0, 99):02d}",
    lambda: f"{rnd.randint(1000, 99999):,} tokens at ${rnd.random():.4f} per 1K",
    lambda: f"ISBN 978-{rnd.randint(0, 1)}-{rnd.randint(100, 999)}-{rnd.randint(10000, 99999)}-{rnd.randint(0, 9)}",
    lambda: f"SSN on file: {rnd.choice(['000', '666', '9' + str(rnd.randint(10, 99))])}-{rnd.randint(10, 99)}-{rnd.randint(1000, 9999)}",
    lambda: f"SSN {rnd.randint(100, 599)}-00-{rnd.randint(1000, 9999)}",
    lambda: f"call {rnd.choice(['0', '1'])}{rnd.randint(10, 99)}-{rnd.randint(200, 999)}-{rnd.randint(1000, 9999)}",
    lambda: f"IBAN {iban_compact(valid=False)}",
    lambda: f"addr {rnd.randint(256, 999)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}",
    lambda: f"mac {':'.join(rs('0123456789ABCDEF', 2) for _ in range(6))}",
    lambda: f"at {rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:{rnd.randint(0, 59):02d}",
    lambda: f"listening on localhost:{rnd.randint(1024, 65535)} and 127.0.0.1:{rnd.randint(1024, 65535)}",
    lambda: f"coordinates {rnd.uniform(-90, 90):.4f}, {rnd.uniform(-180, 180):.4f}",
    lambda: f"pod api-{rs('0123456789abcdef', 9)}-{rs('bcdfghjklmnpqrstvwxz2456789', 5)} restarted",
    lambda: "pip install scikit-learn sk-learn-extras",
    lambda: f"tracking 1Z{rs('0123456789ABCDEFGHJKLMNPRSTUVWXYZ', 16)}",
    lambda: f"see section {rnd.randint(1, 9)}.{rnd.randint(1, 9)}.{rnd.randint(1, 9)}.{rnd.randint(1, 9)}",
    lambda: "the bearer token expired; please log in again",
    lambda: "password reset link sent to the user",
    lambda: "api_key: null",
    lambda: "password=********",
    lambda: f"invoice {rnd.randint(2020, 2026)}{rnd.randint(0, 999999):06d}",
    lambda: f"phone extension x{rnd.randint(100, 9999)}",
    lambda: f"{rnd.randint(1, 12):02d}/{rnd.randint(1, 28):02d}/{rnd.randint(2000, 2030)}",
    lambda: f"eta {rnd.randint(1, 500)} ms, p95 {rnd.uniform(1, 900):.2f} ms",
    lambda: f"user_{rs(B62, 8)} logged in",
    lambda: f"max_tokens={rnd.randint(16, 4096)}, temperature=0.{rnd.randint(0, 9)}",
    lambda: f"git@{rs('abc', 3)}:not-an-email",
    lambda: f"@{rnd.choice(FIRST)} please review PR #{rnd.randint(100, 9999)}",
    lambda: f"ULID {rs('0123456789ABCDEFGHJKMNPQRSTVWXYZ', 26)}",
    lambda: "dead::beef is not an address",
    lambda: f"std::vector<int> v({rnd.randint(1, 99)});",
]

CONTEXTS = {
    "chat": ["Hi, my {c} is {v}, can you help?", "User: please update it to {v} thanks",
             "Assistant: I found {v} on the account.", "you can reach me on {v} after 5pm",
             "Sure — {v}. Anything else?"],
    "json": ['{{"tool": "lookup", "args": {{"query": "{v}", "limit": 5}}}}',
             '{{"customer": {{"id": 42, "value": "{v}"}}, "note": "{n}"}}',
             '{{"messages": [{{"role": "user", "content": "details: {v}"}}]}}'],
    "log": ["2024-06-01 12:30:45,123 INFO worker: processed {v} in 12ms",
            "[WARN] retrying request for {v} (attempt 2/5)",
            "level=info msg=\"lookup\" target=\"{v}\" took=3ms"],
    "trace": ['Traceback (most recent call last):\n  File "/srv/app/tools.py", line 88, in run\n'
              '    result = client.fetch(value)\nValueError: could not process {v}',
              'Error: request failed for {v}\n    at handler (/app/index.js:12:7)\n    at process (node:internal)'],
}

CATEGORY_WORD = {"EMAIL": "email", "PHONE": "phone", "CARD": "card", "SSN": "SSN", "IBAN": "IBAN",
                 "IP": "IP", "SECRET": "key"}
GENERATORS = {"EMAIL": email, "PHONE": phone, "CARD": card, "SSN": ssn, "IBAN": iban, "IP": ip}


def main() -> None:
    items: list[dict[str, Any]] = []
    per_category = 70
    for category, gen in [*GENERATORS.items(), ("SECRET", None)]:
        for i in range(per_category):
            kind = rnd.choice(list(CONTEXTS))
            if category == "SECRET":
                text_value, value = secret()
            else:
                value = gen()  # type: ignore[misc]
                text_value = value
            template = rnd.choice(CONTEXTS[kind])
            negative = rnd.choice(NEGATIVES)()
            if kind == "json":
                text = template.format(v=json.dumps(text_value)[1:-1], n=json.dumps(negative)[1:-1],
                                       c=CATEGORY_WORD[category])
                if json.dumps(value)[1:-1] != value:
                    value = json.dumps(value)[1:-1]  # as it appears in the JSON text
            else:
                text = template.format(v=text_value, c=CATEGORY_WORD[category]) + " | " + negative
            assert value in text
            items.append({"id": f"gen-{category.lower()}-{i}", "kind": kind, "text": text,
                          "labels": [{"category": category, "value": value}]})
    for i in range(240):
        parts = [NEGATIVES[(i + k * 7) % len(NEGATIVES)]() for k in range(2)]
        items.append({"id": f"gen-negative-{i}", "kind": "negative", "text": " ; ".join(parts),
                      "labels": []})
    OUT.parent.mkdir(exist_ok=True)
    with OUT.open("w") as fh:
        for item in items:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    print(f"wrote {len(items)} items to {OUT}")


if __name__ == "__main__":
    main()
