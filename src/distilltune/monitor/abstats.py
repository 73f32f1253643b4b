"""Statistics for comparing two serving arms: intervals and a stopping rule that survives peeking.

An A/B test read every morning is a test repeated every morning: stopping the first time a classical
p-value dips under 0.05 rejects a true "no difference" far more often than 5 % of the time. ``ab``
therefore reports, besides the usual fixed-horizon 95 % intervals, an **always-valid p-value** from a
mixture sequential probability ratio test (mSPRT; Robbins' normal mixture, as used for A/B testing by
Johari, Koomen, Pekelis and Walsh, 2017):

- the difference estimate ``d`` after each request, with its variance ``V`` (two independent arms:
  ``V = s_a²/n_a + s_b²/n_b``, pooled ``p(1-p)(1/n_a + 1/n_b)`` for a proportion; paired shadow
  copies: ``V = s_d²/n``). In the normal approximation ``d/V`` is a Brownian motion in the
  information ``1/V`` with drift = the true difference.
- the likelihood ratio of "difference ~ N(0, τ²)" against "difference = 0" is
  ``Λ = sqrt(V/(V+τ²)) · exp(τ² d² / (2 V (V+τ²)))``, a non-negative martingale under no difference,
  so by Ville's inequality ``P(sup_n Λ_n ≥ 1/α) ≤ α``: the chance it *ever* crosses, however often
  one looks, is at most α.
- the always-valid p-value is ``min(1, min_n 1/Λ_n)`` over every prefix of the log (as if one had
  peeked after every request); stop when it is below α. The matching always-valid interval is
  ``d ± sqrt(V (V+τ²)/τ² · (2 log(1/α) + log((V+τ²)/V)))``.

Latency and answer length are tested on the log scale (``monitor/ab.py``): right-skewed data in a
small arm break the normal approximation on the raw scale (a simulated A/A with log-normal latency
and a 10 % arm rejected 8 % of the time), not on the log scale.

The mixing scale τ is the effect size the test is most sensitive to; it is fixed before the tested
part of the log: ``tau_sd`` (default 0.1, a small standardized effect) times the metric's standard
deviation in the first ``burn_in`` observations per arm, which are not tested. ``tests/test_ab.py``
simulates A/A experiments peeked at every 25 requests and checks the rejection rate stays under α
while a repeated classical z-test exceeds it.

For planning, ``n_needed`` is the fixed-horizon total sample size at which a two-sided test at α
with 80 % power detects a difference of the observed size: decide it before starting and do not
peek, or use the always-valid p-value and peek freely.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest, norm

TAU_SD = 0.1
BURN_IN = 20


@dataclass(frozen=True)
class Sequential:
    """The mSPRT's verdict over every prefix of the log."""

    p_value: float  # always-valid: min over prefixes of 1/Λ, capped at 1
    ci_low: float | None  # always-valid interval at the last prefix
    ci_high: float | None
    tau: float | None  # the mixing scale used (None: too few observations to test)
    tested: int  # prefixes after the burn-in at which the statistic was defined

    def to_dict(self) -> dict:
        return asdict(self)


def log_lr(d: np.ndarray, v: np.ndarray, tau: float) -> np.ndarray:
    """log Λ of the normal-mixture SPRT for estimates ``d`` with variances ``v`` (elementwise)."""
    t2 = tau * tau
    return 0.5 * np.log(v / (v + t2)) + t2 * d * d / (2.0 * v * (v + t2))


def always_valid_radius(v: float, tau: float, alpha: float) -> float:
    """Half-width of the always-valid (1 - alpha) interval: the differences Λ does not reject."""
    t2 = tau * tau
    return math.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + math.log((v + t2) / v)))


def _verdict(d: np.ndarray, v: np.ndarray, ok: np.ndarray, tau: float | None, alpha: float) -> Sequential:
    ok = ok & np.isfinite(v) & (v > 0)
    if tau is None or tau <= 0 or not ok.any():
        return Sequential(1.0, None, None, None, 0)
    llr = log_lr(d[ok], v[ok], tau)
    p = float(min(1.0, math.exp(-float(np.max(llr)))))
    last = np.flatnonzero(ok)[-1]
    r = always_valid_radius(float(v[last]), tau, alpha)
    return Sequential(p, float(d[last] - r), float(d[last] + r), tau, int(ok.sum()))


def two_sample_sequential(
    x: np.ndarray, is_b: np.ndarray, binary: bool, alpha: float = 0.05, tau_sd: float = TAU_SD,
    burn_in: int = BURN_IN,
) -> Sequential:  # fmt: skip
    """mSPRT for mean(b) − mean(a) over the observations in arrival order (``is_b``: arm b's)."""
    x = np.asarray(x, dtype=np.float64)
    b = np.asarray(is_b, dtype=bool)
    nb, na = np.cumsum(b), np.cumsum(~b)
    sb, sa = np.cumsum(np.where(b, x, 0.0)), np.cumsum(np.where(b, 0.0, x))
    qb, qa = np.cumsum(np.where(b, x * x, 0.0)), np.cumsum(np.where(b, 0.0, x * x))
    with np.errstate(divide="ignore", invalid="ignore"):
        mb, ma = sb / nb, sa / na
        d = mb - ma
        if binary:
            p = (sb + sa) / (nb + na)
            v = p * (1 - p) * (1 / na + 1 / nb)
            sd = np.sqrt(p * (1 - p))
        else:
            vb = (qb - nb * mb * mb) / (nb - 1)
            va = (qa - na * ma * ma) / (na - 1)
            v = vb / nb + va / na
            sd = np.sqrt(((nb - 1) * vb + (na - 1) * va) / (nb + na - 2))
    ok = (na >= burn_in) & (nb >= burn_in)
    tau = None
    if ok.any():
        first = np.flatnonzero(ok)[0]
        scale = float(sd[first]) if np.isfinite(sd[first]) else 0.0
        if binary and scale == 0:  # a rare event not yet seen (refusals): the scale of one in the burn-in
            p0 = 1.0 / (na[first] + nb[first])
            scale = math.sqrt(p0 * (1 - p0))
        tau = tau_sd * scale if scale > 0 else None
        ok[first] = False  # the burn-in fixes τ and is not itself tested
    return _verdict(d, v, ok, tau, alpha)


def paired_sequential(
    diffs: np.ndarray, alpha: float = 0.05, tau_sd: float = TAU_SD, burn_in: int = BURN_IN
) -> Sequential:
    """mSPRT for the mean of paired differences (shadow copy − live answer), in arrival order."""
    x = np.asarray(diffs, dtype=np.float64)
    n = np.arange(1, x.size + 1, dtype=np.float64)
    s, q = np.cumsum(x), np.cumsum(x * x)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = s / n
        var = (q - n * m * m) / (n - 1)
        v = var / n
    ok = n >= burn_in
    tau = None
    if ok.any():
        first = np.flatnonzero(ok)[0]
        sd = math.sqrt(max(float(var[first]), 0.0))
        # A paired difference that never varied in the burn-in (identical models so far) gets the
        # scale of a one-in-burn-in disagreement, so the test can still see a later divergence.
        tau = tau_sd * (sd if sd > 0 else math.sqrt(1.0 / burn_in))
        ok[first] = False
    return _verdict(m, v, ok, tau, alpha)


def newcombe_diff_ci(k_b: int, n_b: int, k_a: int, n_a: int, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (his method 10) for p_b − p_a from two Wilson intervals.

    Unlike the Wald interval it stays inside [-1, 1] and keeps its coverage near 0 or 1, which is
    where refusal and escalation rates live.
    """
    pb, pa = k_b / n_b, k_a / n_a
    lb, ub = binomtest(k_b, n_b).proportion_ci(confidence, method="wilson")
    la, ua = binomtest(k_a, n_a).proportion_ci(confidence, method="wilson")
    d = pb - pa
    return d - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2), d + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)


def two_sample_bootstrap_ci(
    a: np.ndarray, b: np.ndarray, stat, resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(stat(b) − stat(a), low, high): percentile bootstrap resampling each arm on its own."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a.size, size=(resamples, a.size))
    ib = rng.integers(0, b.size, size=(resamples, b.size))
    diffs = stat(b[ib], axis=1) - stat(a[ia], axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return float(stat(b) - stat(a)), float(low), float(high)


def n_needed(diff: float, sd: float, share_b: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Total observations a fixed-horizon two-sided z-test needs to detect ``diff`` with this power
    when a share ``share_b`` of them go to arm b (None when there is no difference to detect)."""
    if not diff or sd <= 0 or not 0 < share_b < 1:
        return None
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    return math.ceil((z * sd / diff) ** 2 * (1 / share_b + 1 / (1 - share_b)))
