"""Retrieval quality on the task's eval items: recall@k and MRR of their cited sources, per mode.

For an eval item with ``sources``, the query is built exactly as the prompter builds it (last user
turn, plus the previous one for short follow-ups). The ranking is over chunks, because chunks are
what a prompt receives: recall@k is the share of the item's source files that own at least one of
the top-k chunks (averaged over items); MRR is the mean of 1 / rank of the first chunk from a source
file within the top ``MRR_DEPTH`` (0 when none). Items without sources (refusals) are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

from distilltune.retrieval.index import MODES, KnowledgeIndex
from distilltune.retrieval.prompt import retrieval_query

MRR_DEPTH = 10


def score_ranking(files: Sequence[str], sources: Sequence[str], ks: Sequence[int]) -> dict[str, float]:
    """recall@k for each k and reciprocal rank for one item's ranked chunk files."""
    wanted = set(sources)
    out = {f"recall@{k}": len(wanted & set(files[:k])) / len(wanted) for k in ks}
    rr = next((1.0 / i for i, f in enumerate(files[:MRR_DEPTH], start=1) if f in wanted), 0.0)
    out["mrr"] = rr
    return out


def evaluate_retrieval(
    index: KnowledgeIndex,
    conversations: Sequence,
    ks: Sequence[int] = (1, 3, 5),
    modes: Sequence[str] = MODES,
    previous_turn: str = "short",
) -> dict:
    """``{"items": n, "skipped": m, "modes": {mode: {"recall@1": ..., "mrr": ...}}}`` (means)."""
    items = [(retrieval_query(c.prompt_messages, previous_turn), list(c.sources)) for c in conversations]
    items = [(q, s) for q, s in items if s and q.strip()]
    depth = max([*ks, MRR_DEPTH])
    result: dict = {"items": len(items), "skipped": len(conversations) - len(items), "modes": {}}
    vectors = index.embedder.encode([q for q, _ in items]) if items else []
    for mode in modes:
        totals = {f"recall@{k}": 0.0 for k in ks} | {"mrr": 0.0}
        for (query, sources), vec in zip(items, vectors, strict=True):
            hits = index.search(query, k=depth, mode=mode, vector=None if mode == "lexical" else vec)
            for key, v in score_ranking([h.file for h in hits], sources, ks).items():
                totals[key] += v
        n = max(1, len(items))
        result["modes"][mode] = {key: round(v / n, 4) for key, v in totals.items()}
    return result
