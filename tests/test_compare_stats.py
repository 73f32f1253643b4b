"""Statistics for strategy comparison: bootstrap intervals, McNemar's test, the tie rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distilltune.compare import stats


def test_binomial_two_sided_by_hand():
    # n=5, k=1: P(X<=1) = (1 + 5) / 32, doubled.
    assert stats.binomial_two_sided_half(1, 5) == pytest.approx(12 / 32)
    assert stats.binomial_two_sided_half(4, 5) == pytest.approx(12 / 32)  # symmetric
    assert stats.binomial_two_sided_half(0, 6) == pytest.approx(2 / 64)
    assert stats.binomial_two_sided_half(3, 6) == 1.0  # capped at 1
    assert stats.binomial_two_sided_half(0, 0) == 1.0


def test_binomial_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for n in range(1, 40):
        for k in range(n + 1):
            ref = scipy_stats.binomtest(k, n, 0.5, alternative="two-sided").pvalue
            assert stats.binomial_two_sided_half(k, n) == pytest.approx(ref, rel=1e-9), (k, n)


def test_mcnemar_exact_small_table():
    # a passes 7 items b fails, b passes none that a fails: p = 2 * 0.5**7.
    a = [True] * 7 + [True] * 10 + [False] * 3
    b = [False] * 7 + [True] * 10 + [False] * 3
    r = stats.mcnemar(a, b)
    assert (r.only_a, r.only_b, r.method) == (7, 0, "exact")
    assert r.p_value == pytest.approx(0.015625)
    # Swapping the strategies swaps the counts, not the p-value.
    r2 = stats.mcnemar(b, a)
    assert (r2.only_a, r2.only_b) == (0, 7)
    assert r2.p_value == pytest.approx(r.p_value)


def test_mcnemar_chi_square_with_continuity_correction():
    a = [True] * 30 + [False] * 10 + [True] * 5
    b = [False] * 30 + [True] * 10 + [True] * 5
    r = stats.mcnemar(a, b)
    assert r.method == "chi2-cc"
    stat = (abs(30 - 10) - 1) ** 2 / 40
    assert stat == pytest.approx(9.025)
    assert r.p_value == pytest.approx(math.erfc(math.sqrt(stat / 2)))
    scipy_stats = pytest.importorskip("scipy.stats")
    assert r.p_value == pytest.approx(scipy_stats.chi2.sf(stat, 1), rel=1e-9)


def test_mcnemar_without_discordant_pairs_is_p_one():
    r = stats.mcnemar([True, False, True], [True, False, True])
    assert (r.only_a, r.only_b, r.p_value) == (0, 0, 1.0)


def test_mcnemar_rejects_unpaired_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        stats.mcnemar([True], [True, False])


def test_bootstrap_ci_covers_true_mean_on_synthetic_data():
    rng = np.random.default_rng(123)
    x = rng.binomial(1, 0.6, size=300).astype(float)
    iv = stats.bootstrap_mean_ci(x, resamples=2000, seed=0)
    assert iv.estimate == pytest.approx(x.mean())
    assert iv.low < 0.6 < iv.high
    # Width close to the normal approximation 2 * 1.96 * sqrt(p(1-p)/n).
    expected = 2 * 1.96 * math.sqrt(0.6 * 0.4 / 300)
    assert iv.high - iv.low == pytest.approx(expected, rel=0.15)


def test_bootstrap_coverage_is_near_nominal():
    rng = np.random.default_rng(7)
    covered = 0
    trials = 200
    for t in range(trials):
        x = rng.normal(0.5, 0.2, size=60)
        covered += stats.bootstrap_mean_ci(x, resamples=1000, seed=t).contains(0.5)
    assert 0.88 <= covered / trials <= 0.99


def test_bootstrap_is_deterministic_and_degenerate_for_constants():
    x = [0.1, 0.9, 0.5, 0.7, 0.2, 0.4]
    assert stats.bootstrap_mean_ci(x, seed=3) == stats.bootstrap_mean_ci(x, seed=3)
    assert stats.bootstrap_mean_ci(x, seed=3) != stats.bootstrap_mean_ci(x, seed=4)
    iv = stats.bootstrap_mean_ci([0.5] * 10)
    assert (iv.low, iv.estimate, iv.high) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError):
        stats.bootstrap_mean_ci([])


def test_paired_bootstrap_uses_the_pairing():
    # Item difficulty dominates the variance; b is a consistent 0.05 below a on every item.
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0, 1, size=80)
    a = difficulty + rng.normal(0, 0.01, size=80)
    b = difficulty - 0.05 + rng.normal(0, 0.01, size=80)
    diff = stats.paired_bootstrap_diff_ci(a, b)
    assert diff.estimate == pytest.approx(0.05, abs=0.01)
    assert diff.low > 0.04 and diff.high < 0.06  # tight: the shared difficulty cancels
    ia, ib = stats.bootstrap_mean_ci(a), stats.bootstrap_mean_ci(b)
    assert ia.low < ib.high  # unpaired intervals overlap: they could not tell the two apart
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_bootstrap_diff_ci([1.0], [1.0, 2.0])


def _items(scores, prefix="q", with_pass=True):
    return [
        {"id": f"{prefix}{i}", "primary": s, **({"pass": s >= 0.5} if with_pass else {})}
        for i, s in enumerate(scores)
    ]


def test_pair_items_intersects_ids_and_drops_unscored():
    a = [{"id": "x", "primary": 1.0, "pass": True}, {"id": "y", "primary": 0.0, "pass": False},
         {"id": "z", "primary": None}, {"primary": 1.0}]  # fmt: skip
    b = [{"id": "y", "primary": 0.5, "pass": True}, {"id": "x", "primary": 0.25, "pass": False},
         {"id": "w", "primary": 1.0, "pass": True}]  # fmt: skip
    ids, sa, sb, pa, pb = stats.pair_items(a, b)
    assert ids == ["x", "y"]
    assert (sa, sb) == ([1.0, 0.0], [0.25, 0.5])
    assert (pa, pb) == ([True, False], [False, True])
    _, _, _, pa, pb = stats.pair_items(a, [{"id": "x", "primary": 1.0}])
    assert pa is None and pb is None  # no pass bit on one side: McNemar is skipped


def test_compare_identical_strategies_is_a_tie():
    items = _items([1, 0, 1, 1, 0.5, 0.25] * 5)
    c = stats.compare_items(items, items)
    assert c.verdict == "tie"
    assert (c.diff.low, c.diff.high) == (0.0, 0.0)
    assert c.mcnemar.p_value == 1.0


def test_compare_clear_difference_is_worse_or_better():
    good = _items([1.0] * 30 + [0.0] * 10)
    bad = _items([0.0] * 30 + [0.0] * 10)
    c = stats.compare_items(bad, good)
    assert c.verdict == "worse"
    assert c.n_items == 40
    assert c.diff.high < 0
    assert c.mcnemar.only_b == 30 and c.mcnemar.p_value < 1e-6
    assert stats.compare_items(good, bad).verdict == "better"


def test_compare_calls_a_tie_when_mcnemar_is_not_significant():
    # Scores differ on every item (interval excludes 0) but no pass/fail flips: not a real win.
    a = _items([0.9] * 20)
    b = _items([0.6] * 20)
    c = stats.compare_items(a, b)
    assert c.diff.low > 0
    assert c.mcnemar.only_a == c.mcnemar.only_b == 0
    assert c.verdict == "tie"
    # Without pass bits only the interval decides.
    c2 = stats.compare_items(_items([0.9] * 20, with_pass=False), _items([0.6] * 20, with_pass=False))
    assert c2.mcnemar is None and c2.verdict == "better"


def test_compare_a_small_noisy_difference_is_a_tie():
    a = _items([1, 1, 0, 1, 0, 1, 1, 0, 1, 1])
    b = _items([1, 0, 1, 1, 0, 1, 1, 0, 1, 0])
    c = stats.compare_items(a, b)
    assert c.diff.contains(0.0)
    assert c.verdict == "tie"


def test_compare_without_shared_items_is_incomparable():
    c = stats.compare_items(_items([1, 0], prefix="a"), _items([1, 0], prefix="b"))
    assert (c.verdict, c.n_items, c.diff, c.mcnemar) == ("incomparable", 0, None, None)
