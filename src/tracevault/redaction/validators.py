"""Checks that tell a real identifier from a look-alike of the same shape.

A regular expression only finds candidates; these functions decide. Each takes the
matched text and returns ``True`` only for a value that can really exist: a card
number passes Luhn and belongs to a known issuer range, an SSN has a possible
area/group/serial, an IBAN passes its mod-97 check for its country's length, a phone
number has a valid North American area code and exchange or a plausible E.164 length,
and an IP address parses.
"""

from __future__ import annotations

import ipaddress

# IBAN length by country (ISO 13616 registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20, "MR": 27,
    "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}


def digits_of(text: str) -> str:
    """Return only the ASCII digits of ``text``."""
    return "".join(c for c in text if "0" <= c <= "9")


def luhn_ok(number: str) -> bool:
    """Return whether a string of digits passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_issuer_ok(number: str) -> bool:
    """Return whether ``number`` (digits only) has the length of a known issuer range.

    Visa 4 (13, 16, 19); Mastercard 51–55 and 2221–2720 (16); American Express 34, 37
    (15); Discover 6011, 644–649, 65 (16–19); JCB 3528–3589 (16–19); Diners Club 300–305,
    36, 38–39 (14–19); UnionPay 62 (16–19); Maestro 50, 56–69 (12–19).
    """
    n = len(number)
    if not 12 <= n <= 19:
        return False
    p2, p4 = int(number[:2]), int(number[:4])
    if number[0] == "4":
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16
    if p2 in (34, 37):
        return n == 15
    if p4 == 6011 or 644 <= int(number[:3]) <= 649 or p2 == 65:
        return 16 <= n <= 19
    if 3528 <= p4 <= 3589:
        return 16 <= n <= 19
    if 300 <= int(number[:3]) <= 305 or p2 in (36, 38, 39):
        return 14 <= n <= 19
    if p2 == 62:
        return 16 <= n <= 19
    if p2 == 50 or 56 <= p2 <= 69:
        return n >= 12
    return False


def card_ok(text: str) -> bool:
    """Return whether ``text`` (digits with optional spaces, dashes or dots) is a
    payment card."""
    groups = [g for g in text.replace("-", " ").replace(".", " ").split(" ") if g]
    if len(groups) > 1:
        # Cards are written in groups of four (Amex/Diners 4-6-5 / 4-6-4); other
        # groupings are lists of numbers, not cards.
        if len(groups[0]) != 4 or any(len(g) not in (4, 6) for g in groups[1:-1]):
            return False
        if not 1 <= len(groups[-1]) <= 6:
            return False
    number = "".join(groups)
    return number.isdigit() and card_issuer_ok(number) and luhn_ok(number)


def ssn_ok(text: str) -> bool:
    """Return whether ``text`` is a possible US SSN (area not 000/666/9xx, group not 00,
    serial not 0000, and not one of the publicly voided numbers)."""
    d = digits_of(text)
    if len(d) != 9:
        return False
    area, group, serial = d[:3], d[3:5], d[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return d not in ("078051120", "219099999")


def iban_ok(text: str) -> bool:
    """Return whether ``text`` is an IBAN of the right length for its country with a
    valid mod-97 check."""
    compact = text.replace(" ", "").replace("-", "").upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    if not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    value = "".join(str(int(c, 36)) for c in rearranged)
    return int(value) % 97 == 1


def nanp_ok(text: str) -> bool:
    """Return whether ``text`` is a North American number (10 digits, or 11 with a
    leading 1) with a valid area code and exchange (2–9, not N11)."""
    d = digits_of(text)
    if len(d) == 11 and d[0] == "1":
        d = d[1:]
    if len(d) != 10:
        return False
    area, exchange = d[:3], d[3:6]
    if area[0] in "01" or exchange[0] in "01":
        return False
    return area[1:] != "11" and exchange[1:] != "11"


def e164_ok(text: str) -> bool:
    """Return whether ``text`` (``+`` or ``00`` then digits with separators) has the
    length of an international number: 8 to 15 digits, country code not 0."""
    body = text[1:] if text.startswith("+") else text[2:] if text.startswith("00") else ""
    d = digits_of(body)
    if not 8 <= len(d) <= 15 or d[0] == "0":
        return False
    if d[0] == "1":
        return nanp_ok(d)
    return True


def ipv4_ok(text: str) -> bool:
    """Return whether ``text`` is a dotted-quad IPv4 address that identifies a host
    (not the unspecified or loopback address, which identify no one)."""
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return not (addr.is_unspecified or addr.is_loopback)


def ipv6_ok(text: str) -> bool:
    """Return whether ``text`` is an IPv6 address (with optional zone) that identifies a
    host (not ``::`` or ``::1``)."""
    if not any("0" <= c <= "9" for c in text):
        return False  # "dead::beef"-style words in code are not addresses
    try:
        addr = ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return not (addr.is_unspecified or addr.is_loopback)
