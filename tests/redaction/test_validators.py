"""The checks that let look-alikes survive: Luhn and issuer ranges, SSN rules, IBAN
mod-97, NANP area/exchange rules, E.164 lengths, IP parsing."""

from __future__ import annotations

import pytest

from tracevault.redaction import validators as v


@pytest.mark.parametrize("number", [
    "4111111111111111",      # Visa 16
    "4222222222222",         # Visa 13
    "5555555555554444",      # Mastercard 55
    "2221000000000009",      # Mastercard 2-series, lower bound
    "2720990000000007",      # Mastercard 2-series, upper bound
    "378282246310005",       # Amex 15
    "371449635398431",       # Amex 15
    "6011111111111117",      # Discover
    "3530111333300000",      # JCB
    "36227206271667",        # Diners 14
    "6200000000000005",      # UnionPay
])
def test_real_card_numbers_pass(number: str) -> None:
    assert v.luhn_ok(number)
    assert v.card_ok(number)


@pytest.mark.parametrize("number", [
    "4111111111111112",      # Luhn fails
    "2220990000000006",      # Luhn ok, below the Mastercard 2-series
    "2721000000000004",      # Luhn ok, above it
    "1234567812345670",      # Luhn ok, no issuer starts with 1
    "378282246310005" + "0",  # Amex prefix with 16 digits
    "41111111111111",        # Visa with 14 digits
])
def test_card_look_alikes_fail(number: str) -> None:
    assert not v.card_ok(number)


def test_card_grouping() -> None:
    assert v.card_ok("4111 1111 1111 1111")
    assert v.card_ok("4111-1111-1111-1111")
    assert v.card_ok("3782 822463 10005")
    assert not v.card_ok("41 11 11 11 11 11 11 11")  # a list of small numbers


@pytest.mark.parametrize("ssn,ok", [
    ("123-45-6789", True), ("001-01-0001", True), ("899-99-9999", True),
    ("000-12-3456", False), ("666-12-3456", False), ("900-12-3456", False),
    ("999-12-3456", False), ("123-00-4567", False), ("123-45-0000", False),
    ("078-05-1120", False), ("123-45-678", False),
])
def test_ssn_rules(ssn: str, ok: bool) -> None:
    assert v.ssn_ok(ssn) is ok


@pytest.mark.parametrize("iban,ok", [
    ("DE89370400440532013000", True), ("DE89 3704 0044 0532 0130 00", True),
    ("GB29NWBK60161331926819", True), ("fr1420041010050500013m02606", True),
    ("NO9386011117947", True),
    ("DE88370400440532013000", False),   # check digits off by one
    ("DE8937040044053201300", False),    # one character short for DE
    ("XX89370400440532013000", False),   # no such country
])
def test_iban_mod97(iban: str, ok: bool) -> None:
    assert v.iban_ok(iban) is ok


@pytest.mark.parametrize("phone,ok", [
    ("(415) 555-2671", True), ("+1 415 555 2671", True), ("14155552671", True),
    ("123-456-7890", False),  # area code cannot start with 1
    ("415-055-2671", False),  # nor the exchange with 0
    ("911-555-2671", False),  # N11 area code
    ("415-411-2671", False),  # N11 exchange
    ("415-555-267", False),
])
def test_nanp_rules(phone: str, ok: bool) -> None:
    assert v.nanp_ok(phone) is ok


@pytest.mark.parametrize("phone,ok", [
    ("+44 20 7946 0958", True), ("+33 6 12 34 56 78", True), ("+81 3-1234-5678", True),
    ("+1 415 555 2671", True), ("+1 123 555 2671", False), ("+44 12", False),
    ("+0 20 7946 0958", False), ("+44 20 7946 0958 1234 5678", False),
])
def test_e164_lengths(phone: str, ok: bool) -> None:
    assert v.e164_ok(phone) is ok


@pytest.mark.parametrize("ip,ok", [
    ("192.168.1.20", True), ("8.8.8.8", True), ("256.1.1.1", False), ("1.2.3", False),
    ("01.02.03.04", False), ("127.0.0.1", False), ("0.0.0.0", False),
])
def test_ipv4(ip: str, ok: bool) -> None:
    assert v.ipv4_ok(ip) is ok


@pytest.mark.parametrize("ip,ok", [
    ("2001:db8::8a2e:370:7334", True), ("fe80::1ff:fe23:4567:890a%eth0", True),
    ("::ffff:192.0.2.128", True), ("::1", False), ("::", False), ("dead::beef", False),
    ("12:30:45", False), ("00:1A:2B:3C:4D:5E", False),
])
def test_ipv6(ip: str, ok: bool) -> None:
    assert v.ipv6_ok(ip) is ok
