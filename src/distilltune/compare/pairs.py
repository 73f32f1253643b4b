"""Everything the report says about pairs of strategies: which differences are real, whether each
fine-tune beat the model it started from, and how stable the recommendation is.

Per-item scores are compared pairwise beside the primary one: continuous signals that see differences
exact fact matches cannot (reference-answer NLL, lower is better; graded fact recall).
"""

from __future__ import annotations

from distilltune.compare import fmt, stats

SECONDARY_SCORES = ("answer_nll", "fact_recall_graded")
LOWER_IS_BETTER = {"answer_nll"}


def comparison_entry(a: str, b: str, c: stats.Comparison, score: str = "primary") -> dict:
    return {
        "strategy": a,
        "reference": b,
        "score": score,
        "n_items": c.n_items,
        "mean": c.mean_a,
        "reference_mean": c.mean_b,
        "diff": None if c.diff is None else c.diff.estimate,
        "diff_ci95": None if c.diff is None else [c.diff.low, c.diff.high],
        "mcnemar": None
        if c.mcnemar is None
        else {
            "only_strategy_pass": c.mcnemar.only_a,
            "only_reference_pass": c.mcnemar.only_b,
            "p_value": c.mcnemar.p_value,
            "method": c.mcnemar.method,
        },
        "verdict": c.verdict,
    }


# A likelihood difference must also matter: 12 LoRA updates on top of a distilled student moved its
# reference-answer NLL by 0.0035 nats/token with an interval that excluded 0 (demo, seed 0). Below
# this margin two candidates are tied on the secondary signal, however tight the interval.
NLL_MARGIN = 0.05


class Comparer:
    """Paired comparisons of strategies' per-item ``key`` scores, each ordered pair computed once.

    The report, the decision-stability draws and the secondary signal all compare this way; ``cache``
    holds every comparison made, which the report lists.
    """

    def __init__(self, items: dict, resamples: int = stats.RESAMPLES, confidence: float = stats.CONFIDENCE,
                 alpha: float = stats.ALPHA, seed: int = stats.SEED, key: str = "primary",
                 pass_key: str | None = "pass"):  # fmt: skip
        self.items, self.key, self.pass_key = items, key, pass_key
        self.resamples, self.confidence, self.alpha, self.seed = resamples, confidence, alpha, seed
        self.cache: dict[tuple[str, str], stats.Comparison] = {}

    def __call__(self, a: str, b: str) -> stats.Comparison:
        if (a, b) not in self.cache:
            self.cache[(a, b)] = stats.compare_items(
                self.items.get(a, []), self.items.get(b, []), self.resamples, self.confidence, self.alpha,
                self.seed, key=self.key, pass_key=self.pass_key,
            )  # fmt: skip
        return self.cache[(a, b)]


def nll_better(compare: Comparer):
    """a is better than b on answer NLL: the paired interval of nll_a − nll_b lies below −NLL_MARGIN."""

    def better(a: str, b: str) -> bool:
        c = compare(a, b)
        return c.diff is not None and c.diff.high < -NLL_MARGIN

    return better


def secondary_comparer(items: dict, resamples: int, settings: dict, seed: int):
    """The report's secondary signal: ``nll_better`` at the report's statistics settings."""
    return nll_better(
        Comparer(items, resamples, settings["confidence"], settings["alpha"], seed, "answer_nll", None)
    )


def fine_tunes(results: list, compare, items: dict, resamples: int, settings: dict, seed: int) -> list[dict]:
    """Did each fine-tune beat the model it started from? Said plainly when it did not.

    The primary score decides; the reference-answer NLL is reported beside it, because a fine-tune that
    moves the answers' likelihood a lot can still be inside the primary score's noise at a few dozen
    items (the report's separation line says how many would tell).
    """
    names = {r.name for r in results if not r.error and r.eval}
    out = []
    for r in results:
        if r.base not in names or r.name not in names:
            continue
        c = compare(r.name, r.base)
        if c.diff is None:
            continue
        p = f", McNemar p = {fmt.pvalue(c.mcnemar.p_value)}" if c.mcnemar else ""
        what = f"primary score Δ {c.diff.estimate:+.2f}, 95% CI {fmt.interval(c.diff.low, c.diff.high)}{p}"
        if c.verdict == "better":
            text = f"{r.name} is significantly better than {r.base} ({what})"
        else:
            text = f"{r.name} is not significantly better than {r.base} on the primary score ({what})"
        nll = stats.compare_items(
            items[r.name], items[r.base], resamples, settings["confidence"], settings["alpha"], seed,
            key="answer_nll", pass_key=None,
        )  # fmt: skip
        if nll.diff is not None:
            moved = (
                "lower"
                if nll.diff.high < 0
                else "higher"
                if nll.diff.low > 0
                else "not significantly different"
            )
            text += (
                f"; its reference-answer NLL is {moved} (Δ {nll.diff.estimate:+.2f} nats/token, "
                f"95% CI {fmt.interval(nll.diff.low, nll.diff.high)})"
            )
        if c.verdict != "better":
            text += ": at this budget and this many eval items the fine-tune did not change the primary score measurably"
            _, sa, sb, _, _ = stats.pair_items(items[r.name], items[r.base])
            need = stats.detectable_difference([x - y for x, y in zip(sa, sb, strict=True)])
            if need["items_needed"] and c.diff.estimate > 0:
                text += (
                    f" (the smallest difference {len(sa)} items can detect is {need['mde']:.2f}; about "
                    f"{need['items_needed']:,} eval items would separate a real +{c.diff.estimate:.2f})"
                )
        out.append({"strategy": r.name, "base": r.base, "verdict": c.verdict, "text": text + "."})
    return out


def pairwise(items: dict, names: list[str], resamples: int, settings: dict, seed: int) -> list[dict]:
    """Every pair of measured strategies on every per-item score: which differences are real."""
    out = []
    for key in ("primary", *SECONDARY_SCORES):
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                c = stats.compare_items(
                    items[a], items[b], resamples, settings["confidence"], settings["alpha"], seed,
                    key=key, pass_key="pass" if key == "primary" else None,
                )  # fmt: skip
                if c.n_items:
                    entry = comparison_entry(a, b, c, key)
                    entry["lower_is_better"] = key in LOWER_IS_BETTER
                    out.append(entry)
    return out


def evidence(rec, cands, entries, items, budgets, resamples, settings, seed) -> dict:
    """Stability of the recommendation under re-drawn evidence, and what would separate the top two."""
    from distilltune.compare.stability import decision_stability, separation

    if rec.strategy is None:
        return {"stability": {}, "separation": None}
    latency = {s["name"]: s["efficiency"]["latency_samples"] for s in entries}
    shares = decision_stability(cands, items, latency, budgets, seed=seed)
    rivals = [n for n in [*rec.tied_with_anchor, rec.anchor] if n and n != rec.strategy]
    if not rivals:
        ranked = sorted(
            (c for c in cands if c.quality is not None and c.name != rec.strategy), key=lambda c: -c.quality
        )
        rivals = [ranked[0].name] if ranked else []
    sep = separation(rec.strategy, rivals[0], items) if rivals else None
    return {"stability": shares, "separation": sep}
