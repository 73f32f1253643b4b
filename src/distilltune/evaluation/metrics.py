"""Per-answer quality metrics: pure functions of strings, shared by training-time eval and `evaluate`.

Fact recall is the backbone of the primary quality score: the task card lists, per eval item, the
strings a correct answer must contain (case-insensitive, whitespace-normalised). Token F1 and
ROUGE-L compare the answer with the reference answer word by word; they reward paraphrase-level
closeness that fact recall ignores, and are reported next to it (never folded into the primary score).

Tokenisation for F1 / ROUGE-L is deliberately simple and language-agnostic: case-folded runs of
letters and digits, with decimal points and thousands separators kept inside numbers (``1.5``,
``10,000``). No stemming, no stop-word or article removal: the numbers are comparable across models,
which is all evaluation needs.
"""

from __future__ import annotations

from collections import Counter

# The shared text definitions live at the bottom of the package (the guard and sequence-level data
# curation use them too); they are re-exported here for evaluation's callers.
from distilltune.text import (  # noqa: F401
    fact_hits,
    fact_match_graded,
    fact_recall,
    graded_fact_recall,
    is_refusal,
    normalize,
    tokens,
)


def token_f1(answer: str, reference: str) -> float:
    """SQuAD-style bag-of-tokens F1 between ``answer`` and ``reference`` (1.0 when both are empty)."""
    a, r = tokens(answer), tokens(reference)
    if not a or not r:
        return float(a == r)
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (O(len(a)·len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1: precision and recall of the longest common token subsequence, harmonic mean."""
    a, r = tokens(answer), tokens(reference)
    if not a or not r:
        return float(a == r)
    lcs = lcs_length(a, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def refusal_correct(refused: bool, expected_refusal: bool) -> bool:
    """Correct when the model refuses exactly the items whose reference answer is the refusal."""
    return refused == expected_refusal


def teacher_agreement(answer: str, teacher_answer: str) -> float:
    """How closely the model's answer matches the teacher's answer to the same request (token F1).

    Two refusals agree fully (both are the policy's refusal message); a refusal against an answer
    scores near 0 because their tokens barely overlap.
    """
    return token_f1(answer, teacher_answer)
