"""A normalised view of a text for PII matching, with a map back to the original offsets.

PII arrives in forms a plain ASCII regex never sees: full-width digits (``４１１１``), Arabic-Indic
or other decimal digits, a full-width ``＠``, en dashes, no-break spaces, and zero-width characters
slipped between the digits of a card number or before the ``@`` of an address. Writing every
detector against all of these is how holes appear, so the detectors read one canonical view
instead: NFKC per character, every decimal digit as ASCII, every dash (Unicode category Pd and the
minus sign) as ``-``, every space separator as `` ``, and invisible format characters removed.
Redaction still replaces the *original* span: ``View.span`` maps view offsets back, and a
zero-width character inside a match lies inside the mapped span, so nothing of it survives.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

# Characters with no visible width that can split a token without a reader noticing.
_INVISIBLE = {
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",
    "\u00ad",
    "\u180e",
    "\u2061",
    "\u2062",
    "\u2063",
}


@lru_cache(maxsize=4096)
def _canon(ch: str) -> str:
    """The canonical form of one character (possibly empty, possibly several characters)."""
    if ch in _INVISIBLE or unicodedata.category(ch) == "Cf":
        return ""
    d = unicodedata.decimal(ch, None)
    if d is not None:
        return str(d)
    cat = unicodedata.category(ch)
    if cat == "Pd" or ch == "\u2212":
        return "-"
    if cat == "Zs" or ch == "\t":
        return " "
    out = unicodedata.normalize("NFKC", ch)
    # NFKC can itself produce dashes or spaces (e.g. U+FE63 SMALL HYPHEN-MINUS); fold those too.
    return "".join("-" if unicodedata.category(c) == "Pd" else c for c in out)


@dataclass(frozen=True)
class View:
    """``text`` is the canonical view; ``origin[i]`` is the original index of view character ``i``."""

    text: str
    origin: tuple[int, ...]
    source_len: int

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Original ``(start, end)`` covering view characters ``start..end-1``."""
        if start >= end:
            raise ValueError(f"empty view span {start}:{end}")
        return self.origin[start], self.origin[end - 1] + 1


def view_of(text: str) -> View:
    """Build the canonical view (identity, cheaply, for plain ASCII without control characters)."""
    if text.isascii():
        return View(text.replace("\t", " "), tuple(range(len(text))), len(text))
    chars: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        for c in _canon(ch):
            chars.append(c)
            origin.append(i)
    return View("".join(chars), tuple(origin), len(text))
