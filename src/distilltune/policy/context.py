"""Context words for the PII recognizers, and where they occur in a text.

A weak PII candidate (the right shape, but no validity rule proves it) counts when one of its
recognizer's words stands close to it: "SSN" before nine digits, "card" before a Luhn-invalid
number, "DOB" before a date. The lists hold the words a customer actually writes, in English and
the commonest Spanish, French and German forms.
"""

from __future__ import annotations

import bisect
import re


def _words(*words: str) -> re.Pattern:
    return re.compile(r"(?<![^\W\d_])(?:" + "|".join(words) + r")(?![^\W\d_])", re.IGNORECASE)


CONTEXT: dict[str, re.Pattern] = {
    "ssn": _words(
        r"ssns?",
        r"social\s+security",
        r"soc\.?\s*sec",
        r"itins?",
        r"taxpayer",
        r"tax\s*id",
        r"tins?",
        r"seguro\s+social",
        r"s[ée]curit[ée]\s+sociale",
        r"sozialversicherung\w*",
        r"steuer-?id",
    ),
    "credit_card": _words(
        r"cards?",
        r"credit",
        r"debit",
        r"cc",
        r"visa",
        r"master\s*card",
        r"amex",
        r"american\s+express",
        r"discover",
        r"cvv",
        r"cvc",
        r"pan",
        r"payment",
        r"tarjeta",
        r"carte",
        r"karte",
        r"kreditkarte",
    ),
    "iban": _words(r"iban", r"bic", r"swift", r"bank", r"konto", r"compte", r"cuenta"),
    "bank_account": _words(
        r"accounts?",
        r"acct",
        r"a/c",
        r"routing",
        r"aba",
        r"sort\s*code",
        r"bank",
        r"bsb",
        r"rtn",
        r"checking",
        r"savings",
        r"cuenta",
        r"compte",
        r"konto\w*",
        r"bankleitzahl",
        r"blz",
    ),
    "phone": _words(
        r"phones?",
        r"tel",
        r"telephone",
        r"mobile",
        r"cell",
        r"cellphone",
        r"call",
        r"text",
        r"sms",
        r"whatsapp",
        r"fax",
        r"reach",
        r"contact",
        r"dial",
        r"tel[ée]fono",
        r"t[ée]l[ée]phone",
        r"telefon",
        r"handy",
        r"portable",
        r"m[óo]vil",
    ),
    "email": _words(
        r"e-?mails?",
        r"mail",
        r"contact",
        r"reach",
        r"write",
        r"address",
        r"inbox",
        r"correo",
        r"courriel",
    ),
    "date_of_birth": _words(
        r"dob",
        r"d\.o\.b\.?",
        r"date\s+of\s+birth",
        r"birth\s*date",
        r"birthday",
        r"born",
        r"b-?day",
        r"fecha\s+de\s+nacimiento",
        r"nacid[oa]",
        r"n[ée]e?",
        r"date\s+de\s+naissance",
        r"geburtsdatum",
        r"geboren",
        r"age\s+verification",
    ),
    "passport": _words(r"passports?", r"pasaporte", r"passeport", r"reisepass", r"travel\s+document"),
}
CONTEXT_BEFORE, CONTEXT_AFTER = 48, 32


class ContextIndex:
    """Where each recognizer's context words occur in one text, found once (one pass per label).

    A weak candidate asks whether a context word ends within ``CONTEXT_BEFORE`` characters before
    it or starts within ``CONTEXT_AFTER`` after it; with the positions sorted that is a bisection,
    so a text with thousands of digit groups costs one regex pass per label, not one per group.
    """

    def __init__(self, text: str):
        self.text = text
        self._hits: dict[str, tuple[list[int], list[int]]] = {}

    def _positions(self, label: str) -> tuple[list[int], list[int]]:
        if label not in self._hits:
            ms = list(CONTEXT[label].finditer(self.text)) if label in CONTEXT else []
            self._hits[label] = ([m.start() for m in ms], [m.end() for m in ms])
        return self._hits[label]

    def present(self, label: str) -> bool:
        """Whether any of ``label``'s context words occurs in the text at all."""
        return bool(self._positions(label)[0])

    def near(self, label: str, start: int, end: int) -> bool:
        starts, ends = self._positions(label)
        if not starts:
            return False
        # A word that ends in [start - BEFORE, start] or begins in [end, end + AFTER] (starts and
        # ends are both increasing: the matches of one pattern do not overlap).
        i = bisect.bisect_left(ends, start - CONTEXT_BEFORE)
        if i < len(ends) and ends[i] <= start:
            return True
        j = bisect.bisect_left(starts, end)
        return j < len(starts) and starts[j] <= end + CONTEXT_AFTER
