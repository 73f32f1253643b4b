"""The tie-aware decision on every path, table-driven over synthetic per-item eval results.

Quality comparisons are real statistics (``stats.compare_items`` on the synthetic items), so "tied"
means what the report means by it; latency intervals are given, as the report computes them.
"""

from __future__ import annotations

import pytest

from distilltune.compare import stats
from distilltune.compare.decide import Candidate, recommend
from distilltune.compare.pairs import NLL_MARGIN
from distilltune.compare.stability import decision_stability, separation
from distilltune.compare.ties import Costs, break_tie
from distilltune.task import Budgets

N = 40


def items(pass_ids: set[int], nll: float = 2.0, nll_step: float = 0.0) -> list[dict]:
    """N items; the ones in ``pass_ids`` score 1, the rest 0; answer NLL ``nll`` (+ a per-item spread)."""
    return [
        {
            "id": str(i),
            "primary": float(i in pass_ids),
            "pass": i in pass_ids,
            "answer_nll": nll + nll_step * (i % 5),
        }
        for i in range(N)
    ]


STRONG = set(range(30))  # 0.75
ALSO_STRONG = set(range(1, 31))  # 0.75, different items: a tie with STRONG
WEAK = set(range(4))  # 0.10: clearly worse


def cand(name: str, its: list[dict], p95: float, ci: tuple[float, float] | None, mem: float,
         size: float = 1e8, train_s: float = 100.0) -> tuple[Candidate, list[dict]]:  # fmt: skip
    q = sum(i["primary"] for i in its) / len(its)
    return Candidate(name, q, p95, mem, ci, size, train_s), its


def run(rows, budgets: Budgets):
    cands = [c for c, _ in rows]
    per = {c.name: its for c, its in rows}

    def compare(a, b):
        return stats.compare_items(per[a], per[b])

    def secondary(a, b):
        c = stats.compare_items(per[a], per[b], key="answer_nll", pass_key=None)
        return c.diff is not None and c.diff.high < -NLL_MARGIN

    return recommend(cands, budgets, compare, secondary), cands, per


CASES = [
    # (id, rows, budgets, expected pick, expected rule, substring of the reason or None)
    (
        "clear winner within budgets",
        [cand("a", items(STRONG), 500, (450, 560), 800), cand("b", items(WEAK), 300, (280, 320), 600)],
        Budgets(latency_p95_ms=1000),
        "a",
        "best-within-budgets",
        "significantly ahead of b",
    ),
    (
        "tie on quality, latency intervals apart: the faster one",
        [
            cand("slow", items(STRONG), 900, (850, 950), 800),
            cand("fast", items(set(range(1, 30))), 400, (380, 430), 800),
        ],
        Budgets(latency_p95_ms=1000),
        "fast",
        "tied-and-cheaper",
        "statistically tied",
    ),
    (
        "tie on quality, latency intervals overlap, memory apart: the smaller one",
        [cand("a", items(STRONG), 400, (300, 500), 900), cand("b", items(ALSO_STRONG), 420, (310, 520), 600)],
        Budgets(),
        "b",
        "tied-and-cheaper",
        "memory: a is beaten",
    ),
    (
        "tie on quality and cost, secondary signal apart: the better likelihood",
        [
            cand("a", items(STRONG, nll=3.0, nll_step=0.1), 400, (300, 500), 600),
            cand("b", items(ALSO_STRONG, nll=2.0, nll_step=0.1), 410, (300, 510), 610),
        ],
        Budgets(),
        "b",
        "tied-and-cheaper",
        "answer likelihood: a is beaten",
    ),
    (
        "a likelihood difference inside the practical margin does not decide, however tight",
        [
            cand("a", items(STRONG, nll=2.003, nll_step=0.1), 400, (300, 500), 600),
            cand("b", items(ALSO_STRONG, nll=2.0, nll_step=0.1), 410, (300, 510), 610),
        ],
        Budgets(),
        "a",
        "best-within-budgets",
        "remains tied with b on every measured axis",
    ),
    (
        "tie on everything but training cost",
        [
            cand("a", items(STRONG, nll_step=0.1), 400, (300, 500), 600, train_s=300),
            cand("b", items(ALSO_STRONG, nll_step=0.1), 410, (300, 510), 610, train_s=100),
        ],
        Budgets(),
        "b",
        "tied-and-cheaper",
        "training cost: a is beaten",
    ),
    (
        "tie on every axis: named as such",
        [
            cand("a", items(STRONG, nll_step=0.1), 400, (300, 500), 600),
            cand("b", items(ALSO_STRONG, nll_step=0.1), 410, (300, 510), 610),
        ],
        Budgets(),
        "a",
        "best-within-budgets",
        "remains tied with b on every measured axis",
    ),
    (
        "nothing meets min_quality: best within the cost budgets, tie-aware",
        [
            cand("teacher", items(STRONG), 3000, (2900, 3100), 1500),
            cand("s1", items(WEAK), 500, (400, 600), 600),
            cand("s2", items(set(range(1, 5))), 300, (250, 350), 600),
        ],
        Budgets(latency_p95_ms=800, min_quality=0.9),
        "s2",
        "best-within-cost-budgets",
        "No strategy meets every budget",
    ),
    (
        "no strategy fits the cost budgets: nearest frontier point, ties within the latency noise",
        [
            cand("big", items(STRONG), 4000, (3900, 4100), 900),
            cand("s1", items(ALSO_STRONG), 1000, (700, 1400), 600),
            cand("s2", items(set(range(31))), 1100, (800, 1500), 600),
        ],
        Budgets(latency_p95_ms=500, memory_mb=300),
        "s1",
        "nearest-to-budgets",
        "as near",
    ),
]


@pytest.mark.parametrize(
    ("rows", "budgets", "pick", "rule", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decision_paths(rows, budgets, pick, rule, text):
    rec, _, _ = run(rows, budgets)
    assert (rec.strategy, rec.rule) == (pick, rule), rec.reason
    if text:
        assert text in rec.reason


def test_break_tie_without_intervals_uses_a_margin():
    near = break_tie([Costs("a", 1000.0), Costs("b", 950.0)])  # 5 % apart: inside the 10 % margin
    assert near.still_tied == ["b"] or near.still_tied == ["a"]
    far = break_tie([Costs("a", 1000.0), Costs("b", 800.0)])
    assert far.pick == "b" and not far.still_tied and far.steps == ["latency: a is beaten"]


def test_stability_is_high_for_a_clear_winner_and_split_for_a_coin_toss():
    clear = [cand("a", items(STRONG), 500, (450, 560), 800), cand("b", items(WEAK), 300, (280, 320), 600)]
    _, cands, per = run(clear, Budgets())
    shares = decision_stability(cands, per, {}, Budgets(), resamples=40)
    assert shares.get("a", 0) >= 0.95
    # two strategies tied on quality whose latencies straddle the budget: the pick depends on the draw
    lat = {"a": [700.0, 760, 790, 810, 840] * 4, "b": [700.0, 760, 790, 810, 840] * 4}
    toss = [cand("a", items(STRONG), 800, None, 600), cand("b", items(ALSO_STRONG), 800, None, 600)]
    _, cands, per = run(toss, Budgets(latency_p95_ms=830))
    shares = decision_stability(cands, per, lat, Budgets(latency_p95_ms=830), resamples=60)
    assert max(shares.values()) < 0.95


def test_separation_states_the_detectable_difference():
    per = {"a": items(STRONG), "b": items(ALSO_STRONG)}
    sep = separation("a", "b", per)
    assert sep["n_items"] == N and sep["observed_diff"] == 0.0 and sep["items_needed"] is None
    per = {"a": items(set(range(24))), "b": items(set(range(20)))}
    sep = separation("a", "b", per)
    # four discordant items of 40: d has mean 0.1, sd = sqrt(4·0.81 + 36·0.01)/39 … closed form below
    import math

    sd = math.sqrt((4 * 0.9**2 + 36 * 0.1**2) / 39)
    assert sep["sd_diff"] == pytest.approx(sd)
    assert sep["mde"] == pytest.approx((1.96 + 0.8416) * sd / math.sqrt(N))
    assert sep["items_needed"] == math.ceil(((1.96 + 0.8416) * sd / 0.1) ** 2)
