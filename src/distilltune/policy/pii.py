"""PII detection and redaction: typed placeholders replace each span before a model or a log sees it.

Built-in detectors (email, phone, credit_card, ssn, iban, ip_address) combine a permissive regular
expression with a validity check where one exists (Luhn for cards, mod-97 for IBANs, octet ranges and
``ipaddress`` for IPs, the SSA's never-issued ranges for SSNs), so a 16-digit order number that fails
Luhn is left alone. Patterns use Unicode-aware ``\\d`` and accept ASCII and Unicode dashes, dots and
(non-breaking) spaces as separators, so ``４１１１ １１１１ …`` or ``555–867–5309`` are caught too.

Overlapping candidates (a card number also looks like a phone number) are resolved by keeping the
longest span, then the more specific detector. Spans carry offsets and the detector name, never the
matched text, so a decision can be logged without storing the PII it found.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# ASCII and Unicode hyphens/dashes, dot, space, no-break spaces.
_SEP = r"[ \u00a0\u202f.\-\u2010\u2011\u2012\u2013\u2014\u2212]"
_DASH = r"[\-\u2010\u2011\u2012\u2013\u2014\u2212]"


@dataclass(frozen=True)
class Span:
    """A flagged region of a text: ``text[start:end]`` is what ``kind``/``label`` refers to."""

    start: int
    end: int
    kind: str  # "pii" | "blocked_topic" | "injection" | "prompt_extraction" | "system_prompt_leak"
    label: str  # detector or topic name, e.g. "email", "legal_advice", "override_instructions"

    def to_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "kind": self.kind, "label": self.label}


def digits_of(text: str) -> str:
    """The decimal digits of ``text`` as ASCII (Unicode digits such as ``４`` or ``٤`` included)."""
    return "".join(str(unicodedata.decimal(c)) for c in text if unicodedata.decimal(c, None) is not None)


def luhn_ok(number: str) -> bool:
    ds = [int(c) for c in digits_of(number)]
    if len(ds) < 12:
        return False
    total = 0
    for i, d in enumerate(reversed(ds)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    s = re.sub(r"\s", "", candidate).upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    try:
        as_int = int("".join(str(int(c, 36)) for c in moved))
    except ValueError:
        return False
    return as_int % 97 == 1


def ssn_ok(candidate: str) -> bool:
    d = digits_of(candidate)
    if len(d) != 9:
        return False
    area, group, serial = d[:3], d[3:5], d[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def phone_ok(candidate: str) -> bool:
    n = len(digits_of(candidate))
    return 7 <= n <= 15


def ip_ok(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Detector:
    name: str
    pattern: re.Pattern
    check: Callable[[str], bool] | None = None
    priority: int = 0  # higher wins when two spans of equal length overlap

    @property
    def placeholder(self) -> str:
        return f"[{self.name.upper()}]"

    def find(self, text: str) -> Iterable[Span]:
        for m in self.pattern.finditer(text):
            s = m.group(0)
            if s and (self.check is None or self.check(s)):
                yield Span(m.start(), m.end(), "pii", self.name)


_D = r"\d"
BUILTIN: dict[str, Detector] = {
    "email": Detector(
        "email",
        re.compile(r"(?<![\w.+-])[\w.+%-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w-])"),
        priority=5,
    ),
    "credit_card": Detector(
        "credit_card",
        # 13-19 digits, optionally grouped by one separator between digits.
        re.compile(rf"(?<![\w\-])(?:{_D}(?:{_SEP}?)){{12,18}}{_D}(?!\w)"),
        check=luhn_ok,
        priority=4,
    ),
    "ssn": Detector(
        "ssn",
        re.compile(
            rf"(?<![\w\-]){_D}{{3}}(?:{_DASH}|[ \u00a0]){_D}{{2}}(?:{_DASH}|[ \u00a0]){_D}{{4}}(?![\w\-])"
            rf"|(?i:(?<=ssn)|(?<=ssn:)|(?<=ssn )|(?<=ssn: )|(?<=security number )|(?<=security number: )|(?<=security no\. )){_D}{{9}}(?!\w)"
        ),
        check=ssn_ok,
        priority=3,
    ),
    "iban": Detector(
        "iban",
        re.compile(r"(?<!\w)[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?!\w)"),
        check=iban_ok,
        priority=3,
    ),
    "ip_address": Detector(
        "ip_address",
        re.compile(
            r"(?<![\w.:])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)"
            r"|(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])"
        ),
        check=ip_ok,
        priority=2,
    ),
    "phone": Detector(
        "phone",
        # An optional +country code, an optional (area) code, then 2-4 digit groups; never glued to
        # other digit groups (so it does not nibble at card numbers that failed Luhn).
        re.compile(
            rf"(?<![\w+])(?<!{_D}{_SEP})"
            rf"(?:\+{_D}{{1,3}}{_SEP}?)?"
            rf"(?:\({_D}{{1,4}}\){_SEP}?)?"
            rf"{_D}{{2,4}}(?:{_SEP}{_D}{{2,4}}){{1,4}}"
            rf"(?!{_SEP}?{_D})(?!\w)"
        ),
        check=lambda s: phone_ok(s) and _phone_shape(s),
        priority=1,
    ),
}


def _phone_shape(s: str) -> bool:
    """Reject digit groups that are dates or decimals rather than phone numbers."""
    d = digits_of(s)
    has_structure = s.startswith("+") or "(" in s
    if len(d) < 10 and not has_structure:
        # Short local numbers only as NNN-NNNN (e.g. 555-0134).
        return bool(re.fullmatch(rf"{_D}{{3}}{_DASH}{_D}{{4}}", s))
    return not re.fullmatch(rf"{_D}{{4}}{_DASH}{_D}{{2}}{_DASH}{_D}{{2}}", s)  # ISO dates


class PIIRedactor:
    """Find and replace PII spans with typed placeholders (``[EMAIL]``, ``[ACCOUNT_ID]``, ...)."""

    def __init__(self, builtins: Iterable[str], custom: Iterable[tuple[str, str]] = ()):
        unknown = [n for n in builtins if n not in BUILTIN]
        if unknown:
            raise ValueError(f"unknown PII detectors {unknown}; known: {sorted(BUILTIN)}")
        self.detectors = [BUILTIN[n] for n in builtins]
        # Custom (task) patterns are the most specific knowledge we have: they win ties.
        self.detectors += [Detector(name, re.compile(pat), priority=10) for name, pat in custom]

    def find(self, text: str) -> list[Span]:
        """Non-overlapping PII spans, sorted by position (longest, then most specific, wins)."""
        cands: list[tuple[Span, int]] = []
        for det in self.detectors:
            cands.extend((s, det.priority) for s in det.find(text))
        cands.sort(key=lambda c: (-(c[0].end - c[0].start), -c[1], c[0].start))
        taken: list[Span] = []
        for span, _ in cands:
            if all(span.end <= t.start or span.start >= t.end for t in taken):
                taken.append(span)
        return sorted(taken, key=lambda s: s.start)

    def redact(self, text: str, spans: list[Span] | None = None) -> tuple[str, list[Span]]:
        spans = self.find(text) if spans is None else spans
        out, pos = [], 0
        for s in spans:
            out.append(text[pos : s.start])
            out.append(f"[{s.label.upper()}]")
            pos = s.end
        out.append(text[pos:])
        return "".join(out), spans
