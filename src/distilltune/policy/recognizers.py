"""Built-in PII recognizers: a shape, a validity check, and context words.

Each recognizer proposes *candidates* in the canonical view (``policy.textview``) and grades them:

- **strong**: the shape and the format's own validity rule agree (a Luhn-valid card number, an IBAN
  whose mod-97 checksum holds, a parseable IP address, an address with an ``@``). Redacted alone.
- **weak**: the shape fits but nothing proves it (a Luhn-invalid 16-digit number, nine bare digits,
  an SSN in the 9xx range, a date). Redacted only when one of the recognizer's context words
  ("SSN", "card", "IBAN", "routing", "DOB", "passport", ...) stands within a few words of it.

That is the rule a careful human applies, and the one that fails safe: "SSN 987654320" is an
identifier even though the SSA never issued that area number, while "order 1234567812345678" is
not a card. Numbers are cut into *digit runs* (digit groups joined by short separators, letters
allowed right before them so ``CC4111…`` or ``SSN219-09-9999`` are seen) and every
group-aligned window of a run is graded, so a card followed by its expiry date or a phone number
inside a longer run is still found.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from distilltune.policy.context import ContextIndex

STRONG, WEAK = "strong", "weak"


@dataclass(frozen=True)
class Candidate:
    start: int  # view offsets
    end: int
    label: str
    strong: bool


# ---------------------------------------------------------------------------------------------
# validity rules


_DIGIT = {str(i): i for i in range(10)}
_DOUBLED = {str(i): (2 * i - 9 if i > 4 else 2 * i) for i in range(10)}


def luhn_digits_ok(d: str) -> bool:
    """The Luhn checksum (every second digit from the right doubled, digit-summed); table lookups,
    since every 13-19 digit window of a long digit run is checked."""
    if len(d) < 12 or not d.isdigit() or not d.isascii():
        return False
    r = d[::-1]
    return (sum(map(_DIGIT.__getitem__, r[0::2])) + sum(map(_DOUBLED.__getitem__, r[1::2]))) % 10 == 0


def iban_compact_ok(s: str) -> bool:
    s = s.upper()
    if not (15 <= len(s) <= 34 and s[:2].isalpha() and s[2:4].isdigit() and s.isalnum()):
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def ssn_digits_ok(d: str) -> bool:
    """Issued-SSN rules: area not 000, 666 or 9xx; group not 00; serial not 0000."""
    return len(d) == 9 and d[:3] not in ("000", "666") and d[0] != "9" and d[3:5] != "00" and d[5:] != "0000"


def itin_digits_ok(d: str) -> bool:
    """ITINs: 9xx area, group 50-65, 70-88, 90-92 or 94-99."""
    if len(d) != 9 or d[0] != "9":
        return False
    g = int(d[3:5])
    return 50 <= g <= 65 or 70 <= g <= 88 or 90 <= g <= 92 or 94 <= g <= 99


def _nanp(d: str) -> bool:
    return len(d) == 10 and d[0] in "23456789" and d[3] in "23456789"


# ---------------------------------------------------------------------------------------------
# digit runs and the recognizers that grade their windows

_RUN = re.compile(r"(?<![0-9])(\+ ?)?(\( ?)?[0-9]+(?:[ \-/.()]{1,3}[0-9]+)*")
_GROUP = re.compile(r"[0-9]+")
_MAX_WINDOW_GROUPS = 19


class Window(NamedTuple):
    """A group-aligned stretch of a digit run (a NamedTuple: there are up to 19 per digit group)."""

    digits: str
    seps: tuple[str, ...]  # separators between the window's groups
    sizes: tuple[int, ...]  # digits per group
    plus: bool  # the window starts the run and the run starts with "+"
    glued: bool  # a letter touches the window's first digit (CC4111..., SSN219-...)
    first: bool  # the window starts its run (a trunk or international prefix can only be there)
    sep_ok: int  # bit set per recognizer whose separators all of the window's separators are


# The separators each recognizer accepts between digit groups, as bits of ``Window.sep_ok``.
_CARD, _SSN, _PHONE, _BANK = 1, 2, 4, 8
_SEP_CHARS = {_CARD: set(" -/."), _SSN: set(" -."), _PHONE: set(" -.()"), _BANK: set(" -")}
_ALL_SEPS = _CARD | _SSN | _PHONE | _BANK


def _sep_bits(sep: str) -> int:
    chars = set(sep)
    return sum(bit for bit, allowed in _SEP_CHARS.items() if chars <= allowed)


def _grade_card(w: Window) -> str | None:
    if not 13 <= len(w.digits) <= 19 or not w.sep_ok & _CARD:
        return None
    return STRONG if luhn_digits_ok(w.digits) else WEAK


def _grade_ssn(w: Window) -> str | None:
    d = w.digits
    if len(d) != 9 or not w.sep_ok & _SSN:
        return None
    nonzero = d[:3] != "000" and d[3:5] != "00" and d[5:] != "0000"
    if w.sizes == (3, 2, 4) and len(set(w.seps)) == 1:
        if w.seps[0] == "-" and nonzero:
            return STRONG  # written as an SSN: 9xx, 666 or ITIN alike, err towards redacting
        if ssn_digits_ok(d) or itin_digits_ok(d):
            return STRONG
    return WEAK


_DATE_SHAPES = {(4, 2, 2), (2, 2, 4), (1, 2, 4), (2, 1, 4), (1, 1, 4), (4, 1, 2), (4, 2, 1), (4, 1, 1)}


def _grade_phone(w: Window) -> str | None:
    d, n = w.digits, len(w.digits)
    if not 7 <= n <= 15 or w.glued or not w.sep_ok & _PHONE:
        return None
    if w.sizes in _DATE_SHAPES and not w.plus:
        return None
    if w.plus:
        return STRONG if n >= 8 else WEAK
    if w.first and d.startswith("00") and d[2] != "0" and 11 <= n <= 15 and len(w.seps) >= 2:
        return STRONG  # 00 international prefix, written in groups: 0044 20 7946 0958
    if (n == 11 and d[0] == "1" and _nanp(d[1:])) or (n == 10 and (_nanp(d) or d[0] in "6789")):
        return STRONG
    if w.first and d[0] == "0" and d[1] != "0" and (n in (10, 11) or (9 <= n <= 12 and w.seps)):
        return STRONG  # national trunk prefix: UK 07911 123456, FR 01 23 45 67 89, DE 030 901820
    if n == 7 and w.sizes == (3, 4) and w.seps == ("-",):
        return STRONG
    return WEAK


def _grade_bank(w: Window) -> str | None:
    if not 6 <= len(w.digits) <= 17 or w.glued or not w.sep_ok & _BANK:
        return None
    return WEAK


DIGIT_GRADERS: dict[str, Callable[[Window], str | None]] = {
    "credit_card": _grade_card,
    "ssn": _grade_ssn,
    "phone": _grade_phone,
    "bank_account": _grade_bank,
}
WEAK_ONLY = frozenset({"bank_account"})  # never strong: pointless to grade without a context word
MIN_DIGITS = {"credit_card": 13, "ssn": 9, "phone": 7, "bank_account": 6}


def digit_windows(text: str, min_digits: int = 6) -> Iterator[tuple[int, int, Window]]:
    """Every group-aligned window of ``min_digits``-19 digits of every digit run:
    ``(view_start, view_end, window)``.

    At most 19 windows start at a digit group, so the work is linear in the text's length whatever
    its digits and separators (``tests/test_policy_pii_cost.py`` holds it to that).
    """
    for run in _RUN.finditer(text):
        groups = [(m.start(), m.end()) for m in _GROUP.finditer(text, run.start(), run.end())]
        if sum(b - a for a, b in groups) < min_digits:
            continue
        plus = run.group(1) is not None
        digits_of = [text[a:b] for a, b in groups]
        sizes_of = [b - a for a, b in groups]
        seps_of = [text[groups[k][1] : groups[k + 1][0]] for k in range(len(groups) - 1)]
        bits_of = [_sep_bits(sep) for sep in seps_of]
        for i in range(len(groups)):
            n, ok = 0, _ALL_SEPS
            start = run.start() if i == 0 else groups[i][0]
            glued = start > 0 and text[start - 1].isalpha()
            for j in range(i, min(len(groups), i + _MAX_WINDOW_GROUPS)):
                n += sizes_of[j]
                if n > 19:
                    break
                if j > i:
                    ok &= bits_of[j - 1]
                if n < min_digits:
                    continue
                w = Window(
                    "".join(digits_of[i : j + 1]),
                    tuple(seps_of[i:j]),
                    tuple(sizes_of[i : j + 1]),
                    plus and i == 0,
                    glued,
                    i == 0,
                    ok,
                )
                yield start, groups[j][1], w


# ---------------------------------------------------------------------------------------------
# recognizers with their own patterns

_BRACKETED = r"(?:\[\s*{w}\s*\]|\(\s*{w}\s*\)|\{{\s*{w}\s*\}}|<\s*{w}\s*>)"
_AT = rf"(?:\s*{_BRACKETED.format(w='at')}\s*|\s+at\s+|\s*@\s*)"
_DOT = rf"(?:\s*{_BRACKETED.format(w='dot')}\s*|\s+dot\s+|\.)"
_LABEL = r"[^\W_](?:[\w+%-]{0,62}[^\W_])?"
_ATEXT = r"[\w!#$%&'*+/=?^`{|}~-]"
_EMAIL_AT = re.compile(
    rf"(?<![\w.!#$%&'*+/=?^`{{|}}~-]){_ATEXT}{{1,64}}(?:\.{_ATEXT}{{1,64}}){{0,16}}\s*@\s*{_LABEL}(?:\.{_LABEL}){{0,8}}\.(?:[^\W\d_]{{2,}}|xn--[\w-]+)(?![\w-])"
)
_EMAIL = re.compile(
    rf"(?<![\w.+%-])[\w+%-]{{1,64}}(?:{_DOT}{_LABEL}){{0,6}}{_AT}{_LABEL}(?:{_DOT}{_LABEL}){{0,6}}{_DOT}[^\W\d_]{{2,}}(?![\w-])",
    re.IGNORECASE,
)
_IBAN = re.compile(
    r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?:[ -]?[A-Z0-9]{4}){2,7}(?:[ -]?[A-Z0-9]{1,4})?(?![A-Za-z0-9])"
)
_IPV4 = re.compile(r"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9]|\.[0-9])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
_MONTH = (
    r"(?:jan(?:uary|uar)?|feb(?:ruary|ruar)?|mar(?:ch)?|apr(?:il)?|may|mai|june?|juni|july?|juli|aug(?:ust)?"
    r"|sep(?:t(?:ember)?)?|oct(?:ober)?|okt(?:ober)?|nov(?:ember)?|dec(?:ember)?|dez(?:ember)?|m[äa]rz"
    r"|enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|octubre|noviembre|diciembre"
    r"|janvier|f[ée]vrier|mars|avril|juin|juillet|ao[ûu]t|septembre|octobre|novembre|d[ée]cembre)"
)
_DATE = re.compile(
    rf"(?<![0-9])(?:[0-9]{{1,2}}[./-][0-9]{{1,2}}[./-](?:[0-9]{{4}}|[0-9]{{2}})|[0-9]{{4}}[./-][0-9]{{1,2}}[./-][0-9]{{1,2}}"
    rf"|[0-9]{{1,2}}(?:st|nd|rd|th|\.)?\s+(?:of\s+|de\s+)?{_MONTH}\.?,?\s+(?:de\s+)?[0-9]{{4}}"
    rf"|{_MONTH}\.?\s+[0-9]{{1,2}}(?:st|nd|rd|th)?,?\s+[0-9]{{4}})(?![0-9])",
    re.IGNORECASE,
)
_PASSPORT = re.compile(
    r"(?<![A-Za-z0-9])(?:[A-Za-z]{1,2}[0-9]{6,8}|[0-9]{8,9}|[0-9]{2}[A-Za-z]{2}[0-9]{5})(?![A-Za-z0-9])"
)


def email_candidates(text: str) -> Iterator[Candidate]:
    for m in _EMAIL_AT.finditer(text):
        yield Candidate(m.start(), m.end(), "email", True)
    pos = 0
    while (m := _EMAIL.search(text, pos)) is not None:
        # Overlapping search: "me at a dot aa at b dot com" reads two ways; both are kept and merge.
        pos = m.start() + 1
        s = m.group(0)
        plain_words = "@" not in s and not re.search(r"[\[({<]\s*(?:at|dot)\s*[\])}>]", s, re.IGNORECASE)
        yield Candidate(m.start(), m.end(), "email", not plain_words)


def iban_candidates(text: str) -> Iterator[Candidate]:
    for m in _IBAN.finditer(text):
        compact = re.sub(r"[ -]", "", m.group(0))
        # A trailing word in capitals may have been swallowed: accept the longest valid prefix.
        for cut in range(len(compact), 14, -1):
            if iban_compact_ok(compact[:cut]):
                end, seen = m.start(), 0
                while seen < cut:
                    seen += text[end] not in " -"
                    end += 1
                yield Candidate(m.start(), end, "iban", True)
                break
        else:
            yield Candidate(m.start(), m.end(), "iban", False)


def ip_candidates(text: str) -> Iterator[Candidate]:
    for pat in (_IPV4, _IPV6):
        for m in pat.finditer(text):
            try:
                ipaddress.ip_address(m.group(0))
            except ValueError:
                continue
            yield Candidate(m.start(), m.end(), "ip_address", True)


def date_candidates(text: str) -> Iterator[Candidate]:
    for m in _DATE.finditer(text):
        yield Candidate(m.start(), m.end(), "date_of_birth", False)


def passport_candidates(text: str) -> Iterator[Candidate]:
    for m in _PASSPORT.finditer(text):
        yield Candidate(m.start(), m.end(), "passport", False)


PATTERN_RECOGNIZERS: dict[str, Callable[[str], Iterator[Candidate]]] = {
    "email": email_candidates,
    "iban": iban_candidates,
    "ip_address": ip_candidates,
    "date_of_birth": date_candidates,
    "passport": passport_candidates,
}

# Higher wins when two candidates of equal length overlap (the more specific format).
PRIORITY = {
    "email": 6,
    "credit_card": 5,
    "iban": 5,
    "ssn": 4,
    "ip_address": 3,
    "passport": 2,
    "date_of_birth": 2,
    "phone": 2,
    "bank_account": 1,
}
BUILTIN_NAMES = tuple(PRIORITY)


def candidates(text: str, names: frozenset[str]) -> list[Candidate]:
    """Candidates of the enabled recognizers that are strong, or weak with context nearby."""
    ctx = ContextIndex(text)
    out: list[Candidate] = []
    for name, fn in PATTERN_RECOGNIZERS.items():
        if name in names:
            out.extend(c for c in fn(text) if c.strong or ctx.near(c.label, c.start, c.end))
    graders = [
        (n, g) for n, g in DIGIT_GRADERS.items() if n in names and (n not in WEAK_ONLY or ctx.present(n))
    ]
    if graders:
        min_digits = min(MIN_DIGITS[n] for n, _ in graders)
        for start, end, w in digit_windows(text, min_digits):
            for name, grade in graders:
                g = grade(w)
                if g == STRONG or (g is not None and ctx.near(name, start, end)):
                    out.append(Candidate(start, end, name, g == STRONG))
    return out
