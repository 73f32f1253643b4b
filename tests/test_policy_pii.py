"""PII detection and redaction: formats, separators, Unicode digits, validity checks, overlaps."""

from __future__ import annotations

import itertools

import pytest

from distilltune.policy.pii import BUILTIN, PIIRedactor, iban_ok, luhn_ok, ssn_ok

ALL = list(BUILTIN)


@pytest.fixture(scope="module")
def redactor() -> PIIRedactor:
    return PIIRedactor(ALL, [("account_id", r"\bACME-\d{6}\b")])


def redact(redactor: PIIRedactor, text: str) -> str:
    return redactor.redact(text)[0]


@pytest.mark.parametrize(
    "text, placeholder",
    [
        ("mail jane.doe@example.com now", "[EMAIL]"),
        ("mail J.Doe+tag@sub.example.co.uk now", "[EMAIL]"),
        ("call 555-867-5309 now", "[PHONE]"),
        ("call (415) 555-0134 now", "[PHONE]"),
        ("call +1 415 555 0134 now", "[PHONE]"),
        ("call +44 20 7946 0958 now", "[PHONE]"),
        ("call 415.555.0134 now", "[PHONE]"),
        ("call 415–555–0134 now", "[PHONE]"),  # en dashes
        ("card 4111 1111 1111 1111 now", "[CREDIT_CARD]"),
        ("card 4111-1111-1111-1111 now", "[CREDIT_CARD]"),
        ("card 4111111111111111 now", "[CREDIT_CARD]"),
        ("card 3782 822463 10005 now", "[CREDIT_CARD]"),  # Amex grouping 4-6-5
        ("card ４１１１ １１１１ １１１１ １１１１ now", "[CREDIT_CARD]"),  # full-width digits
        ("card ٤١١١١١١١١١١١١١١١ now", "[CREDIT_CARD]"),  # Arabic-Indic digits
        ("ssn 123-45-6789 now", "[SSN]"),
        ("ssn 123 45 6789 now", "[SSN]"),
        ("SSN: 123456789 now", "[SSN]"),
        ("iban DE89 3704 0044 0532 0130 00 now", "[IBAN]"),
        ("iban GB82WEST12345698765432 now", "[IBAN]"),
        ("from 192.168.10.20 now", "[IP_ADDRESS]"),
        ("from 2001:db8::8a2e:370:7334 now", "[IP_ADDRESS]"),
        ("account ACME-123456 now", "[ACCOUNT_ID]"),
    ],
)
def test_each_format_is_replaced_by_its_typed_placeholder(redactor, text, placeholder):
    out = redact(redactor, text)
    head, tail = text.split(" ", 1)[0], text.rsplit(" ", 1)[1]  # "<label> <pii> <tail>"
    assert out == f"{head} {placeholder} {tail}", out


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",
        "order 1234567812345678 fails Luhn",
        "error ACME-E3050 is a code, not an account",
        "ACME-1234567 has seven digits",
        "costs $1,000 per month, 99.9% uptime, 20:00 UTC, 75 days",
        "released on 2024-01-15 at 10:30:00",
        "ssn 000-12-3456 is never issued",
        "iban DE00 3704 0044 0532 0130 00 fails mod-97",
        "version 999.1.2.3 is no address",
        "send 10 backup codes to 3 people within 14 days",
    ],
)
def test_non_pii_numbers_are_left_alone(redactor, text):
    assert redact(redactor, text) == text


def test_overlapping_candidates_keep_the_longest_span(redactor):
    # The card number also contains phone-like digit groups; one card span must win.
    text = "pay 5555 5555 5555 4444 and call 555-867-5309"
    out, spans = redactor.redact(text)
    assert out == "pay [CREDIT_CARD] and call [PHONE]"
    assert [s.label for s in spans] == ["credit_card", "phone"]
    assert all(a.end <= b.start for a, b in itertools.pairwise(spans))


def test_failed_luhn_card_is_not_nibbled_by_the_phone_detector(redactor):
    text = "card 4111 1111 1111 1112"
    assert redactor.find(text) == []


def test_custom_pattern_wins_a_tie_and_spans_carry_no_text(redactor):
    out, spans = redactor.redact("id ACME-123456, mail a@b.io")
    assert out == "id [ACCOUNT_ID], mail [EMAIL]"
    for s in spans:
        d = s.to_dict()
        assert set(d) == {"start", "end", "kind", "label"}
        assert "ACME" not in str(d) and "@" not in str(d)


def test_only_the_configured_detectors_run():
    r = PIIRedactor(["email"])
    assert r.redact("a@b.io 555-867-5309")[0] == "[EMAIL] 555-867-5309"
    with pytest.raises(ValueError, match="unknown PII detectors"):
        PIIRedactor(["passport"])


def test_validity_checks():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert luhn_ok("４１１１１１１１１１１１１１１１")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE88 3704 0044 0532 0130 00")
    assert ssn_ok("219-09-9999") and not ssn_ok("666-12-3456") and not ssn_ok("912-12-3456")


def test_several_pii_in_one_text(redactor):
    text = "I'm John, SSN 219-09-9999, card 5555 5555 5555 4444, mail j@x.org, ip 10.0.0.1."
    out = redact(redactor, text)
    assert out == "I'm John, SSN [SSN], card [CREDIT_CARD], mail [EMAIL], ip [IP_ADDRESS]."
