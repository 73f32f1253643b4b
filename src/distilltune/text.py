"""Text matching shared by every stage: normalisation, refusal detection, strict and graded fact matching.

It sits at the bottom of the package (it imports nothing of distilltune) because the policy guard,
sequence-level data curation and evaluation all need the same definitions; a refusal must mean the
same thing to the guard that writes it and to the metric that counts it.

Strict fact matching is the task card's contract: a fact is found when its normalised text is a
substring of the normalised answer. It is blind to "21 days" vs "twenty-one days", "1 TB" vs "1TB" or
"$25" vs "25 dollars", and gives 0 to an answer that has "$25" but not "per month". The *graded*
match sees those: both sides become canonical tokens (Unicode NFKC, case-folded, thousands
separators dropped, number words up to the nineties turned into digits, currency symbols and unit
spellings mapped to one token, a plural ``s`` dropped) and a fact scores the share of its tokens
(with multiplicity) that the answer contains, in any order. It is reported beside the strict match,
never instead of it.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

_WS = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+(?:[.,]\d+)*")


def normalize(text: str) -> str:
    return _WS.sub(" ", text.casefold()).strip()


def tokens(text: str) -> list[str]:
    """Case-folded word/number tokens; decimal points and thousands separators stay inside numbers."""
    return _TOKEN.findall(text.casefold())


def is_refusal(answer: str, refusal_message: str) -> bool:
    """An answer refuses when it carries the policy's refusal message (its first sentence suffices)."""
    a = normalize(answer)
    r = normalize(refusal_message)
    if not r:
        return False
    head = re.split(r"(?<=[.!?])\s", r, maxsplit=1)[0]
    return r in a or (len(head) >= 12 and head in a)


def fact_hits(answer: str, facts: list[str]) -> list[bool]:
    """Strict match per fact: its normalised text is a substring of the normalised answer."""
    a = normalize(answer)
    return [normalize(f) in a for f in facts]


def fact_recall(answer: str, facts: list[str]) -> float | None:
    """Share of ``facts`` found in ``answer`` (strict match); None when the item has no facts."""
    if not facts:
        return None
    hits = fact_hits(answer, facts)
    return sum(hits) / len(hits)


_UNITS = {
    "$": "usd", "usd": "usd", "dollar": "usd", "dollars": "usd", "€": "eur", "eur": "eur", "euro": "eur",
    "euros": "eur", "£": "gbp", "gbp": "gbp", "pound": "gbp", "pounds": "gbp", "%": "percent",
    "percent": "percent", "pct": "percent", "per cent": "percent",
    "tb": "tb", "terabyte": "tb", "terabytes": "tb", "gb": "gb", "gigabyte": "gb", "gigabytes": "gb",
    "mb": "mb", "megabyte": "mb", "megabytes": "mb", "kb": "kb", "kilobyte": "kb", "kilobytes": "kb",
    "ms": "ms", "millisecond": "ms", "milliseconds": "ms", "s": "second", "sec": "second",
    "secs": "second", "second": "second", "seconds": "second", "min": "minute", "mins": "minute",
    "minute": "minute", "minutes": "minute", "h": "hour", "hr": "hour", "hrs": "hour", "hour": "hour",
    "hours": "hour", "day": "day", "days": "day", "wk": "week", "week": "week", "weeks": "week",
    "mo": "month", "month": "month", "months": "month", "yr": "year", "yrs": "year", "year": "year",
    "years": "year",
}  # fmt: skip
_SMALL = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}  # fmt: skip
_NUMBER_WORDS = {w: i for i, w in enumerate(_SMALL)} | _TENS
# a number glued to a unit or a currency symbol: "1tb", "25$", "$25", "10k"
_SPLIT = re.compile(r"(\d+(?:\.\d+)?)([a-z%]+)|([$€£])")
_CANON_TOKEN = re.compile(r"[$€£%]|\d+(?:\.\d+)?|[^\W\d_]+")


def _number_words(text: str) -> str:
    """ "twenty-one" → "21", "seven" → "7" (compounds of a tens word and a unit word included)."""

    def compound(m: re.Match) -> str:
        return str(_TENS[m[1]] + _NUMBER_WORDS[m[2]])

    text = re.sub(rf"\b({'|'.join(_TENS)})[\s-]({'|'.join(_SMALL[1:10])})\b", compound, text)
    return re.sub(rf"\b({'|'.join(_NUMBER_WORDS)})\b", lambda m: str(_NUMBER_WORDS[m[1]]), text)


def canonical_tokens(text: str) -> list[str]:
    """The graded match's tokens (see the module docstring): order-free, unit- and number-normalised."""
    t = unicodedata.normalize("NFKC", text).casefold()
    t = re.sub(r"(?<=\d),(?=\d{3}\b)", "", t)  # 10,000 → 10000
    t = _number_words(t)
    t = re.sub(r"\b(\d+(?:\.\d+)?)k\b", lambda m: str(int(float(m[1]) * 1000)), t)  # 10k → 10000
    t = _SPLIT.sub(lambda m: f" {m[1]} {m[2]} " if m[1] else f" {m[3]} ", t)
    out = []
    for tok in _CANON_TOKEN.findall(t):
        tok = _UNITS.get(tok, tok)
        if len(tok) > 3 and tok.endswith("s") and not tok.endswith("ss") and not tok[0].isdigit():
            tok = tok[:-1]
        out.append(tok)
    return out


def _is_number(tok: str) -> bool:
    return tok[0].isdigit()


def fact_match_graded(answer: str, fact: str) -> float:
    """Share of the fact's canonical tokens (with multiplicity) present in the answer, 0..1.

    The numbers are what a fact is about: "10 days" must not half-match "21 days" on the unit alone,
    so the share is multiplied by the share of the fact's numbers that the answer contains.
    """
    want = Counter(canonical_tokens(fact))
    if not want:
        return 1.0
    have = Counter(canonical_tokens(answer))
    share = sum((want & have).values()) / sum(want.values())
    numbers = Counter({t: n for t, n in want.items() if _is_number(t)})
    if numbers:
        share *= sum((numbers & have).values()) / sum(numbers.values())
    return share


def graded_fact_recall(answer: str, facts: list[str]) -> float | None:
    """Mean graded match over ``facts``; None when the item has no facts."""
    if not facts:
        return None
    return sum(fact_match_graded(answer, f) for f in facts) / len(facts)
