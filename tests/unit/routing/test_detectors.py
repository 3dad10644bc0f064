"""Data-class detectors: true positives and the near-misses their checks must reject."""

from __future__ import annotations

import pytest

from tokenyard.routing.detectors import (
    ALL_DETECTORS,
    detect,
    iban_valid,
    luhn_valid,
    ssn_valid,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # e-mail
        ("write to jane.doe+news@example.co.uk today", {"pii": ["email"]}),
        ("the @decorator syntax and foo@bar are not addresses", {}),
        # payment cards (Luhn-valid test numbers), with and without separators
        ("card 4111 1111 1111 1111 exp 12/29", {"pci": ["payment-card"]}),
        ("card 4111-1111-1111-1111", {"pci": ["payment-card"]}),
        ("amex 378282246310005", {"pci": ["payment-card"]}),
        ("card 4111 1111 1111 1112", {}),  # Luhn fails
        ("order 1234567812345678", {}),  # Luhn fails
        ("zeros 0000 0000 0000 0000", {}),  # placeholder, passes Luhn
        ("mixed 4111-1111 1111-1111", {}),  # inconsistent separators
        ("id 41111111111111111111111", {}),  # too many digits
        ("phone +1 415 555 2671", {}),
        # IBAN (mod-97)
        ("IBAN GB82 WEST 1234 5698 7654 32 please", {"pci": ["iban"]}),
        ("pay DE89370400440532013000 now", {"pci": ["iban"]}),
        ("pay DE89370400440532013000 ASAP", {"pci": ["iban"]}),  # next word not swallowed
        ("IBAN GB82 WEST 1234 5698 7654 33", {}),  # checksum fails
        ("code DE00370400440532013000", {}),  # checksum fails
        # national IDs
        ("SSN 123-45-6789", {"pii": ["national-id"]}),
        ("SSN 000-12-3456", {}),  # area 000 never issued
        ("SSN 666-12-3456", {}),
        ("SSN 912-12-3456", {}),
        ("SSN 123-00-6789", {}),
        ("SSN 123-45-0000", {}),
        ("part 123-45-6789-01", {}),  # part of a longer code
        ("version 123 45 6789", {"pii": ["national-id"]}),
        ("NINO AB 12 34 56 C", {"pii": ["national-id"]}),
        ("NINO JG103759A", {"pii": ["national-id"]}),
        ("NINO QQ123456C", {}),  # Q is never a first letter (HMRC's sample prefix)
        ("NINO GB123456A", {}),  # prefix never used
        ("NINO DA123456A", {}),  # D is not a valid first letter
        # private keys
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIE...", {"secret": ["private-key"]}),
        ("-----BEGIN OPENSSH PRIVATE KEY-----", {"secret": ["private-key"]}),
        ("-----BEGIN PRIVATE KEY-----", {"secret": ["private-key"]}),
        ("-----BEGIN PUBLIC KEY-----", {}),
        ("-----BEGIN CERTIFICATE-----", {}),
        # nothing
        ("", {}),
        ("What is the capital of France?", {}),
    ],
)
def test_detect(text: str, expected: dict[str, list[str]]) -> None:
    assert detect(text) == expected


def test_several_classes_sorted_and_without_matched_text() -> None:
    text = "mail bob@example.com, card 5555 5555 5555 4444, SSN 123-45-6789"
    found = detect(text)
    assert found == {"pci": ["payment-card"], "pii": ["email", "national-id"]}
    flat = repr(found)
    assert "bob@" not in flat and "5555" not in flat and "6789" not in flat


def test_only_enabled_detectors_run() -> None:
    text = "bob@example.com 4111 1111 1111 1111"
    assert detect(text, ["payment-card"]) == {"pci": ["payment-card"]}
    assert detect(text, []) == {}
    assert set(ALL_DETECTORS) == {"email", "payment-card", "iban", "national-id", "private-key"}


def test_unknown_detector_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown detector"):
        detect("x", ["telepathy"])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("digits", "ok"),
    [("4111111111111111", True), ("79927398713", True), ("79927398710", False), ("12a4", False)],
)
def test_luhn(digits: str, ok: bool) -> None:
    assert luhn_valid(digits) is ok


@pytest.mark.parametrize(
    ("iban", "ok"),
    [
        ("GB82WEST12345698765432", True),
        ("NL91ABNA0417164300", True),
        ("FR1420041010050500013M02606", True),
        ("GB82WEST1234569876543", False),  # wrong length for GB
        ("NL91ABNA0417164301", False),
        ("XX", False),
    ],
)
def test_iban(iban: str, ok: bool) -> None:
    assert iban_valid(iban) is ok


def test_ssn_rules() -> None:
    assert ssn_valid("123", "45", "6789")
    assert not ssn_valid("000", "45", "6789")
    assert not ssn_valid("666", "45", "6789")
    assert not ssn_valid("900", "45", "6789")
    assert not ssn_valid("123", "00", "6789")
    assert not ssn_valid("123", "45", "0000")
