"""PII detection and redaction: formats, separators, Unicode digits, validity checks, context words,
overlaps, and the policy switch (every built-in on unless ``pii.disable`` names it)."""

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
        "order 4111 1111 1111 1112 fails Luhn",
        "order 1234567812345678 fails Luhn",
        "error ACME-E3050 is a code, not an account",
        "ACME-1234567 has seven digits",
        "costs $1,000 per month, 99.9% uptime, 20:00 UTC, 75 days",
        "released on 2024-01-15 at 10:30:00",
        "ref 000-12-3456 is never issued",
        "ref DE00 3704 0044 0532 0130 00 fails mod-97",
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
    text = "order 4111 1111 1111 1112"
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
        PIIRedactor(["fingerprint"])


def test_validity_checks():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert luhn_ok("４１１１１１１１１１１１１１１１")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE88 3704 0044 0532 0130 00")
    assert ssn_ok("219-09-9999") and not ssn_ok("666-12-3456") and not ssn_ok("912-12-3456")


def test_several_pii_in_one_text(redactor):
    text = "I'm John, SSN 219-09-9999, card 5555 5555 5555 4444, mail j@x.org, ip 10.0.0.1."
    out = redact(redactor, text)
    assert out == "I'm John, SSN [SSN], card [CREDIT_CARD], mail [EMAIL], ip [IP_ADDRESS]."


# -- the formats of issue 14: each must disappear, the text around it must stay --------------------

ZW = "\u200b"


@pytest.mark.parametrize(
    "pii, placeholder",
    [
        # SSN / ITIN: dashed (also 9xx and 666 areas, written as an SSN), spaced, full-width dashes
        ("219-09-9999", "[SSN]"),
        ("987-65-4320", "[SSN]"),
        ("912-70-1234", "[SSN]"),  # an ITIN
        ("219 09 9999", "[SSN]"),
        ("２１９－０９－９９９９", "[SSN]"),
        # payment cards, 13-19 digits, any grouping and separator, Luhn-valid
        ("4222222222222", "[CREDIT_CARD]"),  # 13 digits
        ("6011 0009 9013 9424", "[CREDIT_CARD]"),
        ("4111/1111/1111/1111", "[CREDIT_CARD]"),
        ("4111.1111.1111.1111", "[CREDIT_CARD]"),
        (f"4111{ZW}1111{ZW}1111{ZW}1111", "[CREDIT_CARD]"),
        ("4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1", "[CREDIT_CARD]"),
        ("41111 11111 111111", "[CREDIT_CARD]"),
        ("6304 0000 0000 0000 018", "[CREDIT_CARD]"),  # 19 digits
        # IBAN with its checksum
        ("FR14 2004 1010 0505 0001 3M02 606", "[IBAN]"),
        ("NL91ABNA0417164300", "[IBAN]"),
        # email: plus-tags, a zero-width space before @, full-width @, spaces, obfuscated at/dot
        ("jane.roe+billing@example.com", "[EMAIL]"),
        (f"jane.roe{ZW}@example.com", "[EMAIL]"),
        ("jane.roe＠example.com", "[EMAIL]"),
        ("jane.roe @ example.com", "[EMAIL]"),
        ("jane [at] example [dot] com", "[EMAIL]"),
        ("jane(at)example(dot)co(dot)uk", "[EMAIL]"),
        ("o'brien!x@example.org", "[EMAIL]"),
        # phones: US, E.164, UK, DE, FR, IN, full-width
        ("5558675309", "[PHONE]"),
        ("+15558675309", "[PHONE]"),
        ("1-555-867-5309", "[PHONE]"),
        ("(555)8675309", "[PHONE]"),
        ("+1 (555) 867-5309", "[PHONE]"),
        ("+44 7911 123456", "[PHONE]"),
        ("07911 123456", "[PHONE]"),
        ("+49 30 901820", "[PHONE]"),
        ("030 901820", "[PHONE]"),
        ("+33 6 12 34 56 78", "[PHONE]"),
        ("06 12 34 56 78", "[PHONE]"),
        ("+91 98765 43210", "[PHONE]"),
        ("9876543210", "[PHONE]"),
        ("0044 20 7946 0958", "[PHONE]"),
        ("＋４４ ７９１１ １２３４５６", "[PHONE]"),
        # IP addresses
        ("203.0.113.42", "[IP_ADDRESS]"),
        ("fe80::1ff:fe23:4567:890a", "[IP_ADDRESS]"),
    ],
)
def test_issue_formats_are_redacted_without_a_context_word(redactor, pii, placeholder):
    text = f"Hi, here it is: {pii} - thanks!"
    assert redact(redactor, text) == f"Hi, here it is: {placeholder} - thanks!"


@pytest.mark.parametrize(
    "with_context, without_context, placeholder",
    [
        ("SSN 987654320", "ref 987654320", "[SSN]"),
        ("SSN219-09-9999", None, "[SSN]"),
        ("my social security number is 000-12-3456", "ref 000-12-3456", "[SSN]"),
        ("ITIN: 9 1 2 7 0 1 2 3 4", None, "[SSN]"),
        ("card 4111 1111 1111 1112", "order 4111 1111 1111 1112", "[CREDIT_CARD]"),
        ("CC4111111111111112", "ZZ4111111111111112", "[CREDIT_CARD]"),
        ("Visa ending 4000-1234-5678-9011", "order 4000-1234-5678-9011", "[CREDIT_CARD]"),
        ("IBAN DE00 3704 0044 0532 0130 00", "ref DE00 3704 0044 0532 0130 00", "[IBAN]"),
        ("routing 021000021", "ticket 021000021", "[BANK_ACCOUNT]"),
        ("account no. 0012-3456789", "ticket 0012-3456789", "[BANK_ACCOUNT]"),
        ("sort code 12-34-56", "ticket 12-34-56", "[BANK_ACCOUNT]"),
        ("DOB 14/03/1987", "due 14/03/1987", "[DATE_OF_BIRTH]"),
        ("date of birth: 1987-03-14", "release 1987-03-14", "[DATE_OF_BIRTH]"),
        ("I was born on March 14, 1987", "it shipped on March 14, 1987", "[DATE_OF_BIRTH]"),
        ("passport number X1234567", "coupon X1234567", "[PASSPORT]"),
        ("call me on 555 0134 77", "ticket 555 0134 77", "[PHONE]"),
        ("email me: jane dot roe at example dot com", "jane dot roe at example dot com", "[EMAIL]"),
    ],
)
def test_a_context_word_makes_a_weak_match_count(redactor, with_context, without_context, placeholder):
    out = redact(redactor, with_context + ".")
    assert out.endswith(placeholder + "."), out
    assert not any(c.isdigit() for c in out), out
    if without_context is not None:
        assert redact(redactor, without_context) == without_context


def test_unicode_digits_of_other_scripts_are_read_as_digits(redactor):
    devanagari = "".join(chr(0x0966 + int(c)) for c in "5558675309")
    arabic_indic = "".join(chr(0x0660 + int(c)) for c in "4111111111111111")
    assert redact(redactor, f"call {devanagari} now") == "call [PHONE] now"
    assert redact(redactor, f"pay {arabic_indic} now") == "pay [CREDIT_CARD] now"


def test_a_card_with_its_expiry_is_redacted_whole(redactor):
    # Several windows of one digit run qualify; merging them leaves no digit behind.
    assert redact(redactor, "card 4111 1111 1111 1111 12/27 cvv 123") == "card [CREDIT_CARD] cvv 123"


@pytest.mark.parametrize(
    "text",
    [
        "A domestic wire costs $25 and storage is 1 TB on Team.",
        "Version 2.4.1 fixed ACME-E1403; order 1234567812345678 shipped.",
        "Guests: 5 per paid seat, 100 seats minimum, 99.95% uptime, 60 requests per minute.",
        "Invoices from 2023-01-31 to 2024-12-31 are kept for 7 years.",
        "Please email support; we reply within 2 business days at 09:00-17:00.",
        "I log in at acme.example and my password has 12 characters.",
    ],
)
def test_support_text_with_numbers_is_not_redacted(redactor, text):
    assert redact(redactor, text) == text
