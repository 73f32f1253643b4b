"""How stable is the recommendation, and how many eval items would it take to separate the top two?

A recommendation drawn from 32 eval items and 20 timed requests per strategy is itself a random
variable. ``decision_stability`` re-draws the evidence the decision read: the eval items (the same
resampled ids for every strategy, so comparisons stay paired) and each strategy's latency samples,
re-runs the whole decision (``decide.recommend``, with its statistics) on each draw, and reports how
often each strategy would have been recommended. A recommendation chosen in 95 % of the draws is a
finding; one chosen in 40 % is a coin toss the report must not dress up as a verdict.

``separation`` states the minimum detectable difference at the current number of eval items between
the recommended strategy and its closest rival, and how many items would separate them if the
observed difference is real (``stats.detectable_difference``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from distilltune.compare import stats
from distilltune.compare.decide import Candidate, recommend
from distilltune.compare.pairs import Comparer, nll_better
from distilltune.task import Budgets

STABILITY_RESAMPLES = 200
INNER_RESAMPLES = 200  # per comparison inside one draw: enough for a tie/no-tie call, 10x cheaper


def _mean(items: list[dict], key: str) -> float | None:
    vals = stats.item_scores(items, key)
    return sum(vals) / len(vals) if vals else None


def decision_stability(
    cands: Sequence[Candidate],
    items: dict[str, list[dict]],
    latency_samples: dict[str, list[float]],
    budgets: Budgets,
    secondary_key: str | None = "answer_nll",
    resamples: int = STABILITY_RESAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """Share of bootstrap draws in which each strategy is recommended (strategies never chosen omitted)."""
    rng = np.random.default_rng(seed)
    ids = sorted({str(i["id"]) for rows in items.values() for i in rows if "id" in i})
    if not ids:
        return {}
    by_id = {n: {str(i["id"]): i for i in rows if "id" in i} for n, rows in items.items()}
    counts: Counter[str] = Counter()
    for r in range(resamples):
        draw = [ids[k] for k in rng.integers(0, len(ids), size=len(ids))]
        # duplicated ids must stay distinct items for the paired statistics
        drawn = {
            n: [{**rows[i], "id": f"{i}#{j}"} for j, i in enumerate(draw) if i in rows]
            for n, rows in by_id.items()
        }
        round_cands = []
        for c in cands:
            if c.quality is None:
                round_cands.append(c)
                continue
            lat = latency_samples.get(c.name)
            p95 = float(np.percentile(rng.choice(lat, size=len(lat)), 95)) if lat else c.latency_p95_ms
            round_cands.append(
                replace(c, quality=_mean(drawn.get(c.name, []), "primary"), latency_p95_ms=p95)
            )
        compare = Comparer(drawn, INNER_RESAMPLES, seed=seed + r)
        secondary = (
            nll_better(Comparer(drawn, INNER_RESAMPLES, seed=seed + r, key=secondary_key, pass_key=None))
            if secondary_key
            else None
        )
        rec = recommend(round_cands, budgets, compare, secondary)
        if rec.strategy is not None:
            counts[rec.strategy] += 1
    return {n: c / resamples for n, c in counts.most_common()}


def separation(pick: str, rival: str, items: dict[str, list[dict]], key: str = "primary") -> dict:
    """Minimum detectable difference between ``pick`` and ``rival`` and the items that would separate them."""
    _, sa, sb, _, _ = stats.pair_items(items.get(pick, []), items.get(rival, []), key, None)
    out = stats.detectable_difference([a - b for a, b in zip(sa, sb, strict=True)])
    return {"strategy": pick, "rival": rival, "score": key, **out}
