"""Reciprocal rank fusion: combine rankings by rank, not by incomparable raw scores.

``score(d) = Σ_rankings 1 / (k + rank(d))`` with 1-based ranks (Cormack et al., 2009; k = 60).
BM25 scores and cosine similarities live on different scales; their ranks do not.
"""

from __future__ import annotations

from collections.abc import Sequence


def rrf(rankings: Sequence[Sequence[str]], k: int = 60) -> list[tuple[str, float]]:
    """Fuse ranked id lists; ties keep the order of first appearance (best ranking first)."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
    order = {doc: i for i, doc in enumerate(dict.fromkeys(d for r in rankings for d in r))}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))
