"""Per-answer quality metrics: pure functions of strings, shared by training-time eval and `evaluate`.

Fact recall is the backbone of the primary quality score: the task card lists, per eval item, the
strings a correct answer must contain (case-insensitive, whitespace-normalised).
"""

from __future__ import annotations

import re

_WS = re.compile(r"\s+")


def normalize(text: str) -> str:
    return _WS.sub(" ", text.casefold()).strip()


def fact_hits(answer: str, facts: list[str]) -> list[bool]:
    a = normalize(answer)
    return [normalize(f) in a for f in facts]


def fact_recall(answer: str, facts: list[str]) -> float | None:
    """Share of ``facts`` found in ``answer``; None when the item has no facts (e.g. refusals)."""
    if not facts:
        return None
    hits = fact_hits(answer, facts)
    return sum(hits) / len(hits)


def is_refusal(answer: str, refusal_message: str) -> bool:
    """An answer refuses when it carries the policy's refusal message (its first sentence suffices)."""
    a = normalize(answer)
    r = normalize(refusal_message)
    if not r:
        return False
    head = re.split(r"(?<=[.!?])\s", r, maxsplit=1)[0]
    return r in a or (len(head) >= 12 and head in a)
