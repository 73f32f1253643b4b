"""Paired statistics for comparing strategies on the same eval items.

Two strategies evaluated on a few dozen items differ by chance as much as by merit, so the report
never ranks on the raw means alone:

- ``bootstrap_mean_ci``: percentile bootstrap 95 % interval of one strategy's mean primary score.
- ``paired_bootstrap_diff_ci``: percentile bootstrap interval of the mean *difference* between two
  strategies, resampling the same items for both (pairing removes the item-difficulty variance).
- ``mcnemar``: McNemar's test on the per-item pass/fail bits (exact two-sided binomial for few
  discordant items, chi-square with continuity correction otherwise).
- ``compare_items``: joins two ``per_item`` lists on ``id`` and calls a difference a *tie* when its
  interval contains 0 or McNemar's p ≥ alpha.

Pure functions of numbers; every random draw comes from a ``numpy`` generator with a fixed seed, so
the same inputs give the same report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
ALPHA = 0.05
SEED = 0
EXACT_BELOW = 25  # discordant pairs; below this the chi-square approximation is poor


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval."""

    estimate: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on paired pass/fail: ``only_a`` items pass for a only, ``only_b`` for b only."""

    only_a: int
    only_b: int
    p_value: float
    method: str  # "exact" | "chi2-cc"


@dataclass(frozen=True)
class Comparison:
    """Strategy a against reference b on the items both were evaluated on."""

    n_items: int
    mean_a: float | None
    mean_b: float | None
    diff: Interval | None  # mean(a − b) with its paired bootstrap interval
    mcnemar: McNemar | None  # None when the items carry no pass bits
    verdict: str  # "tie" | "better" | "worse" | "incomparable"

    def to_dict(self) -> dict:
        return asdict(self)


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_mean_ci(
    values: Sequence[float],
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Interval:
    """Percentile bootstrap interval of the mean of ``values`` (at least one value)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap of an empty sample")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    low, high = _percentiles(x[idx].mean(axis=1), confidence)
    return Interval(float(x.mean()), low, high)


def paired_bootstrap_diff_ci(
    a: Sequence[float],
    b: Sequence[float],
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Interval:
    """Interval of mean(a − b), resampling item positions jointly for a and b."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length ({len(a)} vs {len(b)})")
    return bootstrap_mean_ci(
        np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), resamples, confidence, seed
    )


def binomial_two_sided_half(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` trials under p = 0.5.

    The distribution is symmetric, so the two-sided p is twice the smaller tail, capped at 1.
    Integer arithmetic keeps it exact for any n.
    """
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1))
    return min(1.0, 2.0 * tail / 2**n)


def chi2_sf_1df(x: float) -> float:
    """Survival function of the chi-square distribution with one degree of freedom."""
    return math.erfc(math.sqrt(max(x, 0.0) / 2.0))


def mcnemar(a_pass: Sequence[bool], b_pass: Sequence[bool], exact_below: int = EXACT_BELOW) -> McNemar:
    """McNemar's test of paired pass/fail outcomes."""
    if len(a_pass) != len(b_pass):
        raise ValueError(f"paired samples differ in length ({len(a_pass)} vs {len(b_pass)})")
    only_a = sum(1 for x, y in zip(a_pass, b_pass, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a_pass, b_pass, strict=True) if y and not x)
    n = only_a + only_b
    if n < exact_below:
        return McNemar(only_a, only_b, binomial_two_sided_half(only_a, n), "exact")
    stat = (abs(only_a - only_b) - 1.0) ** 2 / n
    return McNemar(only_a, only_b, chi2_sf_1df(stat), "chi2-cc")


def _score(item: dict, key: str = "primary") -> float | None:
    v = item.get(key)
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def item_scores(per_item: Sequence[dict], key: str = "primary") -> list[float]:
    """The ``key`` scores (default: primary) of the items that carry one."""
    return [s for s in (_score(i, key) for i in per_item) if s is not None]


def pair_items(
    a_items: Sequence[dict], b_items: Sequence[dict], key: str = "primary", pass_key: str | None = "pass"
) -> tuple[list[str], list[float], list[float], list[bool] | None, list[bool] | None]:
    """Join two ``per_item`` lists on ``id`` (items without an id or a ``key`` score are dropped).

    Returns the shared ids (in a's order), both score lists and both pass lists; the pass lists are
    None unless every shared item carries a boolean ``pass_key`` on both sides (or pass_key is None).
    """

    def index(items: Sequence[dict]) -> dict[str, dict]:
        return {str(i["id"]): i for i in items if "id" in i and _score(i, key) is not None}

    ia, ib = index(a_items), index(b_items)
    ids = [k for k in ia if k in ib]
    sa = [_score(ia[k], key) for k in ids]
    sb = [_score(ib[k], key) for k in ids]
    has_pass = pass_key is not None and all(
        isinstance(ia[k].get(pass_key), bool) and isinstance(ib[k].get(pass_key), bool) for k in ids
    )
    pa = [ia[k][pass_key] for k in ids] if has_pass else None
    pb = [ib[k][pass_key] for k in ids] if has_pass else None
    return ids, sa, sb, pa, pb  # type: ignore[return-value]


def compare_items(
    a_items: Sequence[dict],
    b_items: Sequence[dict],
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    alpha: float = ALPHA,
    seed: int = SEED,
    key: str = "primary",
    pass_key: str | None = "pass",
) -> Comparison:
    """Compare strategy a with reference b on their shared items (``key``: the per-item score).

    A difference counts only when the paired interval excludes 0 *and* McNemar's p < alpha (when pass
    bits exist); anything else is a tie: inside the noise of this eval set. "better" means a's
    ``key`` is higher: for a lower-is-better score (NLL) read it the other way round.
    """
    ids, sa, sb, pa, pb = pair_items(a_items, b_items, key, pass_key)
    if not ids:
        return Comparison(0, None, None, None, None, "incomparable")
    diff = paired_bootstrap_diff_ci(sa, sb, resamples, confidence, seed)
    test = mcnemar(pa, pb) if pa is not None and pb is not None else None
    if diff.contains(0.0) or (test is not None and test.p_value >= alpha):
        verdict = "tie"
    else:
        verdict = "better" if diff.low > 0 else "worse"
    return Comparison(len(ids), float(np.mean(sa)), float(np.mean(sb)), diff, test, verdict)


def quantile_ci(
    values: Sequence[float],
    q: float,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Interval:
    """Percentile bootstrap interval of the ``q``-th percentile (0..100, linear interpolation).

    With 20 latency samples the p95 interval is wide, and that width is the point: two p95s whose
    intervals overlap are not evidence that one model is faster.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap of an empty sample")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    low, high = _percentiles(np.percentile(x[idx], q, axis=1), confidence)
    return Interval(float(np.percentile(x, q)), low, high)


def detectable_difference(diffs: Sequence[float], power_z: float = 0.8416, alpha_z: float = 1.96) -> dict:
    """Minimum detectable mean difference of paired scores at this many items (two-sided 5 %, 80 % power).

    ``mde = (z_alpha/2 + z_power) · sd(d) / sqrt(n)``; ``items_for(delta)`` inverts it. A normal
    approximation: the right order of magnitude for planning how many eval items separate two
    candidates, not a test.
    """
    d = np.asarray(diffs, dtype=np.float64)
    n = int(d.size)
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    k = alpha_z + power_z
    mde = k * sd / math.sqrt(n) if n else None
    observed = float(d.mean()) if n else None
    needed = None
    if n and sd > 0 and observed:
        needed = math.ceil((k * sd / abs(observed)) ** 2)
    return {"n_items": n, "sd_diff": sd, "mde": mde, "observed_diff": observed, "items_needed": needed}
