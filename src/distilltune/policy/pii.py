"""PII detection and redaction: typed placeholders replace each span before a model or a log sees it.

The recognizers (``policy.recognizers``) read a canonical view of the text (``policy.textview``:
Unicode digits as ASCII, dashes and spaces folded, zero-width characters removed) and grade what
they find: a candidate whose format's own validity rule holds (Luhn, mod-97, an ``@``) is
redacted alone; one that only has the shape is redacted when a context word ("SSN", "card",
"IBAN", "routing", "DOB", ...) stands near it. The span that is replaced is always the *original*
text's, so full-width digits and invisible separators go with it.

Overlapping candidates (a card number also looks like a phone number) are resolved by keeping the
longest span, then the more specific detector. Spans carry offsets and the detector name, never the
matched text, so a decision can be logged without storing the PII it found.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from distilltune.policy.recognizers import (
    BUILTIN_NAMES,
    PRIORITY,
    candidates,
    iban_compact_ok,
    luhn_digits_ok,
    ssn_digits_ok,
)
from distilltune.policy.textview import view_of

BUILTIN: tuple[str, ...] = BUILTIN_NAMES
CUSTOM_PRIORITY = 10  # a task's own identifier pattern is the most specific knowledge we have


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
    return luhn_digits_ok(digits_of(number))


def iban_ok(candidate: str) -> bool:
    return iban_compact_ok(re.sub(r"[\s-]", "", candidate))


def ssn_ok(candidate: str) -> bool:
    """Whether the SSA could have issued this number (the 9xx range, 000, 666 and zero parts: no)."""
    return ssn_digits_ok(digits_of(candidate))


def ip_ok(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


class PIIRedactor:
    """Find and replace PII spans with typed placeholders (``[EMAIL]``, ``[ACCOUNT_ID]``, ...).

    ``builtins`` names the built-in recognizers to run (``BUILTIN``); ``custom`` adds a task's own
    ``(name, regex)`` identifiers, matched on the original text and on the canonical view, so a
    member number typed in full-width digits is caught too.
    """

    def __init__(self, builtins: Iterable[str], custom: Iterable[tuple[str, str]] = ()):
        names = list(builtins)
        unknown = [n for n in names if n not in BUILTIN]
        if unknown:
            raise ValueError(f"unknown PII detectors {unknown}; known: {sorted(BUILTIN)}")
        self.builtins = frozenset(names)
        self.custom = [(name, re.compile(pat)) for name, pat in custom]

    def _candidates(self, text: str) -> list[tuple[Span, int, bool]]:
        """``(span, priority, strong)`` for every accepted candidate, in original offsets."""
        view = view_of(text)
        out: list[tuple[Span, int, bool]] = []
        for c in candidates(view.text, self.builtins):
            a, b = view.span(c.start, c.end)
            out.append((Span(a, b, "pii", c.label), PRIORITY[c.label], c.strong))
        for name, pat in self.custom:
            hits = [(m.start(), m.end()) for m in pat.finditer(text)]
            if view.text != text:
                hits += [
                    view.span(m.start(), m.end()) for m in pat.finditer(view.text) if m.end() > m.start()
                ]
            out.extend((Span(a, b, "pii", name), CUSTOM_PRIORITY, True) for a, b in hits if b > a)
        return out

    def find(self, text: str) -> list[Span]:
        """Non-overlapping PII spans, sorted by position.

        Overlapping candidates are *merged*, not chosen between: a card number followed by its
        expiry date is one digit run that several windows cover, and keeping only one window
        would leave the others' digits in the text. The merged span takes the label of its most
        convincing member (validated first, then the more specific detector, then the longer).
        """
        cands = sorted(self._candidates(text), key=lambda c: (c[0].start, -c[0].end))
        merged: list[Span] = []
        best: tuple | None = None
        start = end = -1
        for span, prio, strong in cands:
            rank = (strong, prio, span.end - span.start)
            if best is not None and span.start < end:
                end = max(end, span.end)
                if rank > best[0]:
                    best = (rank, span.label)
                continue
            if best is not None:
                merged.append(Span(start, end, "pii", best[1]))
            start, end, best = span.start, span.end, (rank, span.label)
        if best is not None:
            merged.append(Span(start, end, "pii", best[1]))
        return merged

    def redact(self, text: str, spans: list[Span] | None = None) -> tuple[str, list[Span]]:
        spans = self.find(text) if spans is None else spans
        out, pos = [], 0
        for s in spans:
            out.append(text[pos : s.start])
            out.append(f"[{s.label.upper()}]")
            pos = s.end
        out.append(text[pos:])
        return "".join(out), spans
