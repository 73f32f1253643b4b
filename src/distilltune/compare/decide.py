"""Budgets, Pareto frontiers and the recommendation.

The rule, in order (every "tied" and "cheaper" clears its own noise; see ``ties``):

1. Among the strategies that meet every budget (p95 latency, peak memory, minimum quality), take the
   best-quality one (the *anchor*) and the strategies statistically tied with it
   (``stats.compare_items`` says "tie"). ``ties.break_tie`` picks among them: lower latency beyond the
   bootstrap intervals, then memory, size, the secondary quality signal (reference-answer NLL), and
   training cost, each only when the difference is beyond its margin. What none of these separates
   is reported as a tie, by name.
2. When no strategy meets every budget but some meet the cost budgets (latency and memory), only
   quality is missed: the same choice among those (rule ``best-within-cost-budgets``).
3. Otherwise, the Pareto-frontier points (quality up, latency and memory down) nearest to the budgets
   (smallest root-sum-square of the relative shortfalls, so 10 % over the latency budget weighs the
   same as 10 % over the memory budget); points whose distance is within the latency noise of the
   nearest one are compared on quality and their ties broken as above.

A budget whose metric was not measured is not met: the report never assumes a number.
The reason is one sentence with the numbers that decided it. Pure functions; the caller injects the
pairwise comparison so this module does no statistics of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

from distilltune.compare import fmt
from distilltune.compare.stats import Comparison
from distilltune.compare.ties import Costs, TieBreak, break_tie
from distilltune.task import Budgets


@dataclass(frozen=True)
class Candidate:
    """What the decision needs to know about one strategy."""

    name: str
    quality: float | None
    latency_p95_ms: float | None
    memory_mb: float | None
    latency_ci: tuple[float, float] | None = None  # bootstrap interval of the p95
    size_bytes: float | None = None
    train_s: float | None = None  # training wall time, the runs it starts from included
    concurrency: int = 1  # requests in flight when latency_p95_ms was measured


@dataclass(frozen=True)
class BudgetCheck:
    """One budget against one strategy; ``text`` reads like "p95 812 ms ≤ 2000 ms"."""

    budget: str  # "latency_p95_ms" | "memory_mb" | "min_quality"
    limit: float
    value: float | None
    ok: bool
    shortfall: float  # relative amount by which the budget is missed; 0 when met, inf when unmeasured
    text: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shortfall"] = None if math.isinf(self.shortfall) else self.shortfall
        return d


@dataclass(frozen=True)
class Recommendation:
    strategy: str | None
    reason: str
    meets_budgets: bool
    rule: str  # one of RULES
    anchor: str | None = None  # best-quality strategy within budgets, whose ties were considered
    tied_with_anchor: list[str] = field(default_factory=list)
    still_tied: list[str] = field(default_factory=list)  # tied with the pick on every measured axis

    def to_dict(self) -> dict:
        return asdict(self)


def _cost_check(
    name: str, label: str, missing: str, unit_fmt: Callable, value: float | None, limit: float
) -> BudgetCheck:
    if value is None:
        return BudgetCheck(name, limit, None, False, math.inf, f"{missing} not measured")
    ok = value <= limit
    text = f"{label}{unit_fmt(value)} {'≤' if ok else '>'} {unit_fmt(limit)}"
    return BudgetCheck(name, limit, value, ok, max(0.0, value / limit - 1.0), text)


def check_budgets(c: Candidate, budgets: Budgets) -> list[BudgetCheck]:
    """One check per budget that is set, in the order latency, memory, quality."""
    checks = []
    if budgets.latency_p95_ms is not None:
        label = "p95 " if c.concurrency <= 1 else f"p95 at {c.concurrency} concurrent "
        checks.append(
            _cost_check(
                "latency_p95_ms", label, "p95 latency", fmt.ms, c.latency_p95_ms, budgets.latency_p95_ms
            )
        )
    if budgets.memory_mb is not None:
        checks.append(_cost_check("memory_mb", "", "peak memory", fmt.mb, c.memory_mb, budgets.memory_mb))
    if budgets.min_quality is not None:
        limit = budgets.min_quality
        if c.quality is None:
            checks.append(BudgetCheck("min_quality", limit, None, False, math.inf, "quality not measured"))
        else:
            ok = c.quality >= limit
            short = 0.0 if ok or limit == 0 else (limit - c.quality) / limit
            text = f"quality {fmt.quality(c.quality)} {'≥' if ok else '<'} {fmt.quality(limit)}"
            checks.append(BudgetCheck("min_quality", limit, c.quality, ok, short, text))
    return checks


def budget_distance(checks: Iterable[BudgetCheck]) -> float:
    """Root-sum-square of relative shortfalls: 0 when every budget is met."""
    return math.sqrt(sum(ch.shortfall**2 for ch in checks))


def pareto_front(points: dict[str, Sequence[float | None]]) -> set[str]:
    """Names of the non-dominated points, every objective to be *maximised*.

    A point is dominated when another is at least as good on every objective and better on one.
    A missing value counts as the worst possible; equal points are all on the front.
    """

    def key(v: Sequence[float | None]) -> tuple[float, ...]:
        return tuple(-math.inf if x is None else x for x in v)

    vals = {n: key(v) for n, v in points.items()}

    def dominated(p: tuple[float, ...]) -> bool:
        return any(all(a >= b for a, b in zip(q, p, strict=True)) and q != p for q in vals.values())

    return {n for n, p in vals.items() if not dominated(p)}


def frontier_flags(cands: Sequence[Candidate]) -> dict[str, dict[str, bool]]:
    """Per strategy: on the quality–latency front, the quality–memory front, the three-way front.

    The two-way fronts are drawn in the report's plots, so a strategy missing either coordinate is
    not on them; the three-way front drives the no-budget-met fallback.
    """

    def neg(x: float | None) -> float | None:
        return None if x is None else -x

    measured = [c for c in cands if c.quality is not None]
    lat = pareto_front(
        {c.name: (c.quality, -c.latency_p95_ms) for c in measured if c.latency_p95_ms is not None}
    )
    mem = pareto_front({c.name: (c.quality, -c.memory_mb) for c in measured if c.memory_mb is not None})
    overall = pareto_front({c.name: (c.quality, neg(c.latency_p95_ms), neg(c.memory_mb)) for c in measured})
    return {
        c.name: {
            "quality_latency": c.name in lat,
            "quality_memory": c.name in mem,
            "overall": c.name in overall,
        }
        for c in cands
    }


def _cheapness(c: Candidate) -> tuple[float, float, float, str]:
    inf = math.inf
    lat = inf if c.latency_p95_ms is None else c.latency_p95_ms
    mem = inf if c.memory_mb is None else c.memory_mb
    return (lat, mem, -(c.quality or 0.0), c.name)


def _by_quality(c: Candidate) -> tuple[float, float, float, str]:
    lat, mem, _, name = _cheapness(c)
    return (-(c.quality or 0.0), lat, mem, name)


def _savings(pick: Candidate, ref: Candidate) -> str:
    parts = []
    if pick.latency_p95_ms and ref.latency_p95_ms and ref.latency_p95_ms / pick.latency_p95_ms >= 1.05:
        parts.append(f"{fmt.ratio(ref.latency_p95_ms / pick.latency_p95_ms)} lower latency")
    if pick.memory_mb and ref.memory_mb and ref.memory_mb / pick.memory_mb >= 1.05:
        parts.append(f"{fmt.ratio(ref.memory_mb / pick.memory_mb)} less memory")
    return " and ".join(parts) if parts else "no higher latency or memory"


def _meets_text(checks: list[BudgetCheck]) -> str:
    if not checks:
        return "no budgets were set"
    return f"meets every budget ({', '.join(ch.text for ch in checks)})"


def _ci_text(cmp: Comparison) -> str:
    if cmp.diff is None:
        return "no shared eval items"
    text = f"95% CI of the difference {fmt.interval(cmp.diff.low, cmp.diff.high)}"
    if cmp.mcnemar is not None:
        text += f", McNemar p = {fmt.pvalue(cmp.mcnemar.p_value)}"
    return text


BUDGET_NAMES = {"latency_p95_ms": "latency", "memory_mb": "memory", "min_quality": "quality"}


def _missed_text(checks: list[BudgetCheck]) -> str:
    """ "the latency budget (p95 4100 ms > 2000 ms)", naming every missed budget."""
    missed = [ch for ch in checks if not ch.ok]
    names = [BUDGET_NAMES[ch.budget] for ch in missed]
    which = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    plural = "s" if len(names) > 1 else ""
    return f"the {which} budget{plural} ({', '.join(ch.text for ch in missed)})"


def best_quality(cands: Sequence[Candidate]) -> Candidate | None:
    """The highest-quality strategy (ties broken by lower latency, then memory, then name)."""
    measured = [c for c in cands if c.quality is not None]
    return min(measured, key=_by_quality) if measured else None


def _costs(c: Candidate) -> Costs:
    return Costs(c.name, c.latency_p95_ms, c.latency_ci, c.memory_mb, c.size_bytes, c.train_s)


def _tie_text(tb: TieBreak) -> str:
    text = f"; among the tied, {'; '.join(tb.steps)}" if tb.steps else ""
    if tb.still_tied:
        text += (
            f"; it remains tied with {', '.join(tb.still_tied)} on every measured axis "
            "(picked on the p95 point estimate: the evidence does not separate them)"
        )
    return text


def _choose(
    pool: Sequence[Candidate], compare: Callable[[str, str], Comparison], secondary
) -> tuple[Candidate, Candidate, list[Candidate], TieBreak]:
    """(pick, anchor, tied): the best-quality candidate of ``pool`` and its ties, broken by ``ties``."""
    anchor = min(pool, key=_by_quality)
    tied = [c for c in pool if c is not anchor and compare(c.name, anchor.name).verdict == "tie"]
    tb = break_tie([_costs(c) for c in [anchor, *tied]], secondary)
    pick = next(c for c in pool if c.name == tb.pick)
    return pick, anchor, tied, tb


def recommend(
    cands: Sequence[Candidate],
    budgets: Budgets,
    compare: Callable[[str, str], Comparison],
    secondary: Callable[[str, str], bool] | None = None,
) -> Recommendation:
    """Pick one strategy under ``budgets``; ``compare(a, b)`` compares strategy a with reference b.

    ``secondary(a, b)``: a is significantly better than b on the secondary quality signal (ties only).
    """
    measured = [c for c in cands if c.quality is not None]
    if not measured:
        return Recommendation(
            None, "No strategy produced a quality score, so none can be recommended.", False, "none"
        )
    checks = {c.name: check_budgets(c, budgets) for c in measured}
    best = min(measured, key=_by_quality)  # == best_quality(cands)
    within = [c for c in measured if all(ch.ok for ch in checks[c.name])]
    if not within:
        return _recommend_outside(measured, checks, compare, secondary)

    pick, anchor, tied, tb = _choose(within, compare, secondary)
    tied_names = [c.name for c in tied]
    what = "the best quality" if anchor is best else "the best quality within budgets"
    head = f"{pick.name} {_meets_text(checks[pick.name])}"

    if pick is not anchor:
        cmp = compare(pick.name, anchor.name)
        reason = (
            f"{head} and is statistically tied with {what} ({fmt.quality(pick.quality)} vs "
            f"{fmt.quality(anchor.quality)} for {anchor.name}, {_ci_text(cmp)}), at {_savings(pick, anchor)}"
        )
        rule = "tied-and-cheaper"
    else:
        reason = f"{head} and has {what} ({fmt.quality(pick.quality)})"
        if tied:
            reason += f"; it is statistically tied with {', '.join(tied_names)}"
        else:
            others = sorted((c for c in within if c is not pick), key=_by_quality)
            if others:
                cmp = compare(others[0].name, pick.name)
                ahead = "significantly ahead of" if cmp.verdict == "worse" else "ahead of"
                reason += f", {ahead} {others[0].name} ({fmt.quality(others[0].quality)}, {_ci_text(cmp)})"
        rule = "best-within-budgets"
    reason += _tie_text(tb)
    if anchor is not best:
        reason += (
            f"; the best overall, {best.name} ({fmt.quality(best.quality)}), "
            f"misses {_missed_text(checks[best.name])}"
        )
        vs_best = compare(pick.name, best.name)
        if vs_best.verdict == "tie":
            reason += f", and {pick.name} is statistically tied with it ({_ci_text(vs_best)})"
    return Recommendation(pick.name, reason + ".", True, rule, anchor.name, tied_names, tb.still_tied)


def _recommend_outside(
    measured: list[Candidate], checks: dict[str, list[BudgetCheck]], compare, secondary
) -> Recommendation:
    """No strategy meets every budget: respect the cost budgets first, then the nearest frontier point.

    When some strategies fit the latency and memory budgets, only quality is missed: the best of
    those (ties broken as within budgets) is the honest answer. Otherwise the Pareto-frontier points
    whose distance to the budgets is tied with the nearest one (the optimistic end of one's latency
    interval reaches the other's pessimistic end) are compared on quality, and their ties broken.
    """
    fits_cost = [c for c in measured if all(ch.ok for ch in checks[c.name] if ch.budget != "min_quality")]
    if fits_cost:
        pick, anchor, tied, tb = _choose(fits_cost, compare, secondary)
        reason = (
            f"No strategy meets every budget; {pick.name} is the best-quality strategy within the cost "
            f"budgets ({fmt.quality(pick.quality)}): it misses {_missed_text(checks[pick.name])}"
        )
        if pick is not anchor:
            reason += f", statistically tied with {anchor.name} ({fmt.quality(anchor.quality)}, {_ci_text(compare(pick.name, anchor.name))})"
        elif tied:
            reason += f", statistically tied with {', '.join(c.name for c in tied)}"
        reason += _tie_text(tb) + "."
        return Recommendation(
            pick.name,
            reason,
            False,
            "best-within-cost-budgets",
            anchor.name,
            [c.name for c in tied],
            tb.still_tied,
        )
    flags = frontier_flags(measured)
    front = [c for c in measured if flags[c.name]["overall"]]
    nearest = min(front, key=lambda c: (budget_distance(checks[c.name]), *_by_quality(c)))
    reach = _distance_bounds(nearest, checks)[1]
    close = [c for c in front if _distance_bounds(c, checks)[0] <= reach]
    pick, anchor, tied, tb = _choose(close, compare, secondary)
    met = [ch.text for ch in checks[pick.name] if ch.ok]
    reason = (
        f"No strategy meets every budget; {pick.name} is the Pareto-frontier point nearest to them, "
        f"with quality {fmt.quality(pick.quality)}: it misses {_missed_text(checks[pick.name])}"
        + (f" and meets {', '.join(met)}" if met else "")
    )
    others = [c.name for c in close if c is not pick]
    if others:
        reason += (
            f"; within the latency noise, {', '.join(others)} {'is' if len(others) == 1 else 'are'} as near"
        )
    reason += _tie_text(tb) + "."
    return Recommendation(
        pick.name, reason, False, "nearest-to-budgets", anchor.name, [c.name for c in tied], tb.still_tied
    )


def _distance_bounds(c: Candidate, checks: dict[str, list[BudgetCheck]]) -> tuple[float, float]:
    """(optimistic, pessimistic) budget distance, taking p95 at either end of its interval."""
    if c.latency_ci is None:
        d = budget_distance(checks[c.name])
        return d, d
    out = []
    for p95 in c.latency_ci:
        alt = [
            ch if ch.budget != "latency_p95_ms" else _cost_check(ch.budget, "", "", fmt.ms, p95, ch.limit)
            for ch in checks[c.name]
        ]
        out.append(budget_distance(alt))
    return min(out), max(out)
