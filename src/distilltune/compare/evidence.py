"""The report's "how sure are we" section: which differences are real, and how stable the verdict is.

Formatted once here for both renderings (report.md and report.html): the pairwise differences whose
interval excludes 0 (per score: primary with McNemar, answer NLL, graded fact recall), the share of
bootstrap draws in which each strategy would have been recommended, the strategies the evidence
cannot separate from the pick, and the minimum detectable difference at this many eval items.
"""

from __future__ import annotations

from distilltune.compare import fmt

SCORE_LABELS = {
    "primary": "primary score",
    "answer_nll": "answer NLL (lower is better)",
    "fact_recall_graded": "graded fact recall",
}


def _real(entry: dict) -> tuple[str, str] | None:
    """(winner, loser) of a pairwise entry whose difference is beyond the noise, else None."""
    if entry["verdict"] not in ("better", "worse"):
        return None
    a_higher = entry["verdict"] == "better"
    a_wins = a_higher != bool(entry.get("lower_is_better"))
    return (entry["strategy"], entry["reference"]) if a_wins else (entry["reference"], entry["strategy"])


def evidence_view(report: dict) -> dict:
    rec = report["recommendation"]
    real, ties = [], {}
    for e in report.get("pairwise", []):
        score = SCORE_LABELS.get(e.get("score", "primary"), e.get("score", "primary"))
        ties.setdefault(score, 0)
        won = _real(e)
        if won is None:
            ties[score] += 1
            continue
        # entries hold strategy − reference; the table reads winner − loser (negative for a lower NLL)
        sign = 1 if won[0] == e["strategy"] else -1
        lo, hi = e["diff_ci95"] or (None, None)
        ci = (None, None) if lo is None else sorted((sign * lo, sign * hi))
        real.append(
            {
                "score": score,
                "winner": won[0],
                "loser": won[1],
                "diff": fmt.signed(sign * e["diff"]) if e["diff"] is not None else "—",
                "ci": fmt.interval(*ci),
                "p": fmt.pvalue(e["mcnemar"]["p_value"]) if e.get("mcnemar") else "—",
            }
        )
    stability = [(name, fmt.pct(share)) for name, share in (rec.get("stability") or {}).items()]
    sep = rec.get("separation")
    sep_text = None
    if sep and sep.get("mde") is not None:
        sep_text = (
            f"With {sep['n_items']} paired eval items, the smallest difference in {SCORE_LABELS.get(sep['score'], sep['score'])} "
            f"this report can detect between {sep['strategy']} and {sep['rival']} (two-sided 5 %, 80 % power) is "
            f"{fmt.quality(sep['mde'])}; the observed difference is {fmt.signed(sep['observed_diff'])}"
        )
        if sep.get("items_needed"):
            sep_text += (
                f", and about {sep['items_needed']:,} eval items would separate them if it is real "
                "(more eval items, or --preset full)"
            )
        elif not sep["sd_diff"]:
            sep_text += (
                ": they score the same on every item, so more items of this kind will not separate them"
            )
        sep_text += "."
    return {
        "real": real,
        "ties": sorted(ties.items()),
        "stability": stability,
        "still_tied": rec.get("still_tied") or [],
        "separation": sep_text,
        "fine_tunes": [f["text"] for f in report.get("fine_tunes", [])],
    }


def evidence_markdown(ev: dict, table) -> list[str]:
    """The Markdown lines of the section; ``table(header, rows)`` renders a table."""
    lines = ["## How sure is this?", ""]
    if ev["stability"]:
        lines.append(
            "Recommended in this share of 200 bootstrap re-draws of the eval items and latency samples: "
            + ", ".join(f"{n} {s}" for n, s in ev["stability"])
            + "."
        )
    if ev["still_tied"]:
        lines.append(f"Tied with the recommendation on every measured axis: {', '.join(ev['still_tied'])}.")
    if ev["separation"]:
        lines.append(ev["separation"])
    for text in ev["fine_tunes"]:
        lines.append(text)
    lines += [
        "",
        "Differences beyond the noise (paired 95 % interval excludes 0; McNemar p < 0.05 for the primary score):",
        "",
    ]
    if ev["real"]:
        lines += table(
            ["score", "better", "than", "Δ (better − than)", "95% CI of Δ", "McNemar p"],
            [[r["score"], r["winner"], r["loser"], r["diff"], r["ci"], r["p"]] for r in ev["real"]],
        )
    else:
        lines.append("none: every pair of strategies is tied on every score at this number of eval items.")
    if ev["ties"]:
        lines += ["", "Tied pairs: " + ", ".join(f"{n} on {s}" for s, n in ev["ties"]) + "."]
    return [*lines, ""]
