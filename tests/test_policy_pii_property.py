"""Property: PII generated in random formats, scripts and positions never survives the guard.

The generators are independent of the recognizers: card numbers get their check digit from a Luhn
implementation written here, IBANs their check digits from ISO 7064 mod 97-10, IP addresses and
email addresses come from hypothesis's own strategies. The surrounding text has no digits, so the
strongest possible assertion holds: after redaction not one digit is left, and no address.
"""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distilltune.policy import Guard
from distilltune.task.schema import PolicySpec

GUARD = Guard(PolicySpec())  # the default policy: every built-in detector on
SETTINGS = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

FILLER_WORDS = (
    "hello", "please", "my", "the", "is", "and", "refund", "plan", "workspace", "invoice", "team",
    "question", "thanks", "for", "update", "billing", "details", "here", "below", "it", "urgent",
    "again", "support", "order", "shipped", "yesterday",
)  # fmt: skip
ZW = ("\u200b", "\u200c", "\u2060", "\ufeff")


def luhn_check_digit(body: str) -> str:
    total = 0
    for i, c in enumerate(reversed(body)):
        v = int(c)
        if i % 2 == 0:  # these positions are doubled once the check digit is appended
            v = v * 2 - 9 if v > 4 else v * 2
        total += v
    return str((10 - total % 10) % 10)


def iban_check_digits(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    number = int("".join(str(int(c, 36)) for c in rearranged))
    return f"{98 - number % 97:02d}"


@st.composite
def digit_script(draw, s: str) -> str:
    """ASCII digits as ASCII, full-width, Arabic-Indic or Devanagari digits."""
    base = draw(st.sampled_from([ord("0"), 0xFF10, 0x0660, 0x0966]))
    return "".join(chr(base + int(c)) if c.isdigit() else c for c in s)


@st.composite
def grouped(draw, digits: str, seps: tuple[str, ...]) -> str:
    """``digits`` cut into random groups joined by one separator drawn from ``seps``."""
    sep = draw(st.sampled_from(seps))
    out, i = [], 0
    while i < len(digits):
        n = draw(st.integers(1, 6))
        out.append(digits[i : i + n])
        i += n
    return sep.join(out)


@st.composite
def card(draw) -> str:
    prefix = draw(st.sampled_from(["4", "51", "55", "2221", "34", "37", "6011", "65", "35", "62"]))
    length = draw(st.integers(13, 19))
    body = prefix + "".join(
        draw(
            st.lists(
                st.sampled_from(string.digits),
                min_size=length - len(prefix) - 1,
                max_size=length - len(prefix) - 1,
            )
        )
    )
    number = body + luhn_check_digit(body)
    if draw(st.booleans()):
        # Luhn-invalid: redacted only next to a card word.
        number = number[:-1] + str((int(number[-1]) + 1) % 10)
        ctx = draw(st.sampled_from(["card number", "my credit card is", "Visa:", "CC"]))
    else:
        ctx = draw(st.sampled_from(["", "", "pay with", "CC"]))
    text = draw(grouped(number, (" ", "-", "/", ".", "", "\u00a0", "\u2013", *ZW)))
    glue = "" if ctx in ("", "pay with") or draw(st.booleans()) else " "
    return f"{ctx}{glue if ctx == 'CC' else ' '}{text}".strip()


@st.composite
def ssn(draw) -> str:
    area = draw(st.integers(1, 999))
    group, serial = draw(st.integers(1, 99)), draw(st.integers(1, 9999))
    d = f"{area:03d}{group:02d}{serial:04d}"
    fmt = draw(st.sampled_from(["dash", "space", "bare", "unicode_dash"]))
    text = {
        "dash": f"{d[:3]}-{d[3:5]}-{d[5:]}",
        "space": f"{d[:3]} {d[3:5]} {d[5:]}",
        "bare": d,
        "unicode_dash": f"{d[:3]}\u2011{d[3:5]}\uff0d{d[5:]}",
    }[fmt]
    ctx = draw(st.sampled_from(["SSN", "SSN:", "social security number", "ITIN", "my SSN is"]))
    return f"{ctx}{draw(st.sampled_from(['', ' ']))}{text}"


@st.composite
def phone(draw) -> str:
    n = lambda k: "".join(draw(st.lists(st.sampled_from(string.digits), min_size=k, max_size=k)))  # noqa: E731
    area, exch = draw(st.sampled_from("23456789")) + n(2), draw(st.sampled_from("23456789")) + n(2)
    line = n(4)
    return draw(
        st.sampled_from(
            [
                f"{area}{exch}{line}",
                f"+1{area}{exch}{line}",
                f"1-{area}-{exch}-{line}",
                f"({area}){exch}{line}",
                f"({area}) {exch}-{line}",
                f"{area}.{exch}.{line}",
                f"+44 7{n(3)} {n(6)}",
                f"07{n(3)} {n(6)}",
                f"+49 30 {n(6)}",
                f"030 {n(7)}",
                f"+33 6 {n(2)} {n(2)} {n(2)} {n(2)}",
                f"06 {n(2)} {n(2)} {n(2)} {n(2)}",
                f"+91 9{n(4)} {n(5)}",
                f"9{n(9)}",
            ]
        )
    )


@st.composite
def iban(draw) -> str:
    country, bban_len = draw(st.sampled_from([("DE", 18), ("FR", 23), ("ES", 20), ("IT", 23), ("NL", 14)]))
    if country == "NL":
        bban = "".join(draw(st.lists(st.sampled_from(string.ascii_uppercase), min_size=4, max_size=4)))
        bban += "".join(draw(st.lists(st.sampled_from(string.digits), min_size=10, max_size=10)))
    else:
        bban = "".join(draw(st.lists(st.sampled_from(string.digits), min_size=bban_len, max_size=bban_len)))
    compact = country + iban_check_digits(country, bban) + bban
    if draw(st.booleans()):
        return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))
    return compact


@st.composite
def dob(draw) -> str:
    y, m, d = draw(st.integers(1930, 2010)), draw(st.integers(1, 12)), draw(st.integers(1, 28))
    month = ["January", "March", "July", "October", "December"][m % 5]
    text = draw(
        st.sampled_from(
            [f"{d:02d}/{m:02d}/{y}", f"{y}-{m:02d}-{d:02d}", f"{month} {d}, {y}", f"{d} {month} {y}"]
        )
    )
    return f"{draw(st.sampled_from(['DOB', 'date of birth:', 'born on', 'D.O.B.']))} {text}"


NUMERIC = st.one_of(card(), ssn(), phone(), iban(), dob(), st.ip_addresses(v=4).map(str))


@st.composite
def sentence_with(draw, piis: list[str]) -> str:
    parts = []
    for i, p in enumerate(piis):
        words = draw(st.lists(st.sampled_from(FILLER_WORDS), min_size=1, max_size=8))
        parts.append(
            (" " if i else "") + " ".join(words) + draw(st.sampled_from([" ", ": ", ", ", "\n", " ("]))
        )
        parts.append(p)
    tail = draw(st.lists(st.sampled_from(FILLER_WORDS), max_size=6))
    return "".join(parts) + draw(st.sampled_from([" ", ". ", "! ", ") ", "\n"])) + " ".join(tail)


@st.composite
def sprinkle_zero_width(draw, s: str) -> str:
    """Insert up to three invisible characters at random inner positions."""
    for _ in range(draw(st.integers(0, 3))):
        if len(s) < 2:
            break
        i = draw(st.integers(1, len(s) - 1))
        s = s[:i] + draw(st.sampled_from(ZW)) + s[i:]
    return s


@SETTINGS
@given(st.data())
def test_no_digit_of_any_generated_pii_survives(data):
    piis = data.draw(st.lists(NUMERIC, min_size=1, max_size=3))
    piis = [data.draw(sprinkle_zero_width(data.draw(digit_script(p)))) for p in piis]
    text = data.draw(sentence_with(piis))
    out = GUARD.check_input(text).redacted_text
    assert not any(c.isdigit() for c in out), (text, out)


DOMAINS = st.from_regex(r"\A[a-z][a-z0-9]{0,10}\.(com|org|io|de|co\.uk)\Z")
SIMPLE_LOCAL = st.from_regex(r"\A[a-z][a-z0-9]{0,8}(\.[a-z0-9]{1,8})?\Z")


@st.composite
def email(draw) -> tuple[str, str]:
    """``(lead-in, address as written)``: plus-tags, invisible or full-width @, obfuscated at/dot."""
    style = draw(st.sampled_from(["plain", "zw", "fullwidth", "spaced", "bracket", "words"]))
    if style in ("bracket", "words"):
        local, domain = draw(SIMPLE_LOCAL), draw(DOMAINS)
    else:
        local, domain = draw(st.emails(domains=DOMAINS)).rsplit("@", 1)
    if draw(st.booleans()):
        local += "+" + draw(st.sampled_from(["billing", "x", "acme-2"]))
    if style == "bracket":
        return "", f"{local.replace('.', ' [dot] ')} [at] {domain.replace('.', ' [dot] ')}"
    if style == "words":
        return "email me at ", f"{local.replace('.', ' dot ')} at {domain.replace('.', ' dot ')}"
    at = {"plain": "@", "zw": "\u200b@", "fullwidth": "\uff20", "spaced": " @ "}[style]
    return "", f"{local}{at}{domain}"


@SETTINGS
@given(email(), st.data())
def test_no_generated_email_survives(lead_addr, data):
    lead, addr = lead_addr
    text = data.draw(sentence_with([lead + addr]))
    out = GUARD.check_input(text).redacted_text
    # The whole address goes; an ambiguous lead-in ("me at a dot aa at b dot com") may go with it.
    before, after = text.split(addr, 1)
    assert out.endswith("[EMAIL]" + after), (text, out)
    assert before.startswith(out[: len(out) - len("[EMAIL]" + after)]), (text, out)


@SETTINGS
@given(st.ip_addresses(v=6).map(lambda a: a.exploded if a.packed[0] % 2 else str(a)), st.data())
def test_no_generated_ipv6_survives(addr, data):
    text = data.draw(sentence_with([addr]))
    out = GUARD.check_input(text).redacted_text
    assert addr not in out and "[IP_ADDRESS]" in out, (text, out)
