"""``distilltune ab``: compare the arms of an A/B or shadow run from the server's request log.

The log (``serve --candidate``) tags each request for MODEL's id with its arm: ``live`` or
``candidate`` in an A/B test, ``live`` plus ``shadow`` copies (``shadow_of`` = the live request) in a
shadow run. Rows without an arm (adapters, errors before routing, logs from before A/B serving) take
no part.

**A/B** — two independent samples, candidate − live: rates (escalation among answered requests,
refusal and feedback among HTTP 200s, thumbs-down among HTTP 200s, errors among all) with Newcombe
intervals; latency p50/p95 and mean answer length (words) with bootstrap intervals.
**Shadow** — pairs (live answer, its shadow copy), both HTTP 200: the same signals as paired
differences (bootstrap interval; McNemar for the rates), and agreement of the copy with the live
answer (exact match after normalisation, token F1).

Every difference carries the always-valid p-value of ``abstats`` (peek as often as you like); a
difference is *decided* when it is below alpha. The unit is the request, while users are what is
randomised: when a few users send most of the traffic the intervals are too narrow.

Feedback comes from the ``feedback`` table that ``POST /v1/feedback`` writes (``request_id``, ``rating``) when the log has one:
a rating is a thumbs-down when it reads ``down``/``thumbs_down``/``negative``/``bad`` or is a number
at or below 0; a request counts once however many ratings it got.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distilltune.compare.stats import bootstrap_mean_ci, mcnemar, paired_bootstrap_diff_ci
from distilltune.errors import UserError
from distilltune.evaluation.metrics import token_f1
from distilltune.monitor import abstats
from distilltune.monitor.logread import open_log
from distilltune.text import normalize

ANSWERED = ("student", "fallback")
REFUSED = ("refused_input", "refused_output")
DOWN_WORDS = {"down", "thumbs_down", "thumbsdown", "negative", "bad", "-"}
# metric → (kind, which direction is worse for the candidate: +1 higher, 0 neither)
METRICS = {
    "escalation": ("rate", 1),
    "refusal": ("rate", 1),
    "error": ("rate", 1),
    "feedback": ("rate", 0),
    "thumbs_down": ("rate", 1),
    "latency_ms": ("mean", 1),
    "answer_words": ("mean", 0),
}


@dataclass
class Row:
    id: str
    ts: float
    arm: str
    status: int | None
    route: str
    answer: str | None
    latency_ms: float | None
    shadow_of: str | None
    feedback: bool = False
    down: bool = False

    def value(self, metric: str) -> float | None:
        """The row's observation for ``metric``, None when the row is outside its denominator."""
        ok = self.status == 200
        if metric == "error":
            return float(not ok)
        if not ok:
            return None
        if metric == "escalation":
            return float(self.route == "fallback") if self.route in ANSWERED else None
        if metric == "refusal":
            return float(self.route in REFUSED)
        if metric == "feedback":
            return float(self.feedback)
        if metric == "thumbs_down":
            return float(self.down)
        if metric == "latency_ms":
            return self.latency_ms
        if metric == "answer_words":
            return float(len((self.answer or "").split())) if self.route in ANSWERED else None
        raise KeyError(metric)


def is_down(rating) -> bool:
    if isinstance(rating, int | float) and not isinstance(rating, bool):
        return rating <= 0
    text = str(rating).strip().lower()
    try:
        return float(text) <= 0
    except ValueError:
        return text in DOWN_WORDS


def read_arms(path: Path) -> tuple[list[Row], bool]:
    """Rows with an arm, oldest first, and whether the log has a feedback table."""
    con = open_log(path, ("id", "ts", "route"))  # clear errors for a missing or foreign file
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "arm" not in {r[1] for r in con.execute("PRAGMA table_info(requests)")}:
            raise UserError(f"{path}: no A/B arms in this log (it predates serve --candidate)")
        rows = [
            Row(str(r[0]), float(r[1]), *r[2:])
            for r in con.execute(
                "SELECT id, ts, arm, status, COALESCE(route, 'error'), answer, latency_ms, shadow_of "
                "FROM requests WHERE arm IS NOT NULL AND ts IS NOT NULL ORDER BY ts, id"
            )
        ]
        fb_cols = (
            {r[1] for r in con.execute("PRAGMA table_info(feedback)")} if "feedback" in tables else set()
        )
        has_feedback = {"request_id", "rating"} <= fb_cols  # serve/feedback.py's table
        if has_feedback:
            rated: dict[str, bool] = {}
            for rid, rating in con.execute("SELECT request_id, rating FROM feedback"):
                rated[str(rid)] = rated.get(str(rid), False) or is_down(rating)
            for r in rows:
                if r.id in rated:
                    r.feedback, r.down = True, rated[r.id]
    except sqlite3.DatabaseError as e:
        raise UserError(f"{path}: cannot read the request log ({e})") from None
    finally:
        con.close()
    return rows, has_feedback


def _arm_summary(rows: list[Row], metrics: list[str]) -> dict:
    out: dict = {"requests": len(rows)}
    for m in metrics:
        vals = [v for v in (r.value(m) for r in rows) if v is not None]
        out[m] = {"n": len(vals), "mean": float(np.mean(vals)) if vals else None}
        if m == "latency_ms" and vals:
            out[m]["p50"], out[m]["p95"] = (float(np.percentile(vals, q)) for q in (50, 95))
    return out


def _scale(kind: str, x: np.ndarray) -> np.ndarray:
    """What the sequential test sees: rates as they are, latency and length as log(1 + x).

    Both are right-skewed; on the raw scale a few slow requests in a small arm make the normal
    approximation reject a true A/A too often (``tests/test_ab.py``), on the log scale it holds.
    """
    return x if kind == "rate" else np.log1p(np.maximum(x, 0.0))


def _decide(seq: abstats.Sequential, estimate: float, worse: int, alpha: float) -> str:
    if seq.p_value >= alpha or estimate == 0:
        return "continue"
    if worse == 0:
        return "different"
    return "candidate_worse" if estimate * worse > 0 else "candidate_better"


def _ab_difference(
    metric: str, live: list[Row], cand: list[Row], order: list[Row], alpha: float
) -> dict | None:
    kind, worse = METRICS[metric]
    a = np.array([v for v in (r.value(metric) for r in live) if v is not None])
    b = np.array([v for v in (r.value(metric) for r in cand) if v is not None])
    if a.size < 2 or b.size < 2:
        return None
    seq_rows = [(r.value(metric), r.arm == "candidate") for r in order]
    x = _scale(kind, np.array([v for v, _ in seq_rows if v is not None]))
    is_b = np.array([c for v, c in seq_rows if v is not None])
    seq = abstats.two_sample_sequential(x, is_b, binary=kind == "rate", alpha=alpha)
    if kind == "rate":
        est = float(b.mean() - a.mean())
        low, high = abstats.newcombe_diff_ci(int(b.sum()), b.size, int(a.sum()), a.size)
        method = "newcombe"
    else:
        est, low, high = abstats.two_sample_bootstrap_ci(a, b, np.mean)
        method = "bootstrap"
    out = {
        "estimate": est, "ci": [low, high], "ci_method": method, "n_live": int(a.size), "n_candidate": int(b.size),
        "sequential": seq.to_dict(), "decision": _decide(seq, est, worse, alpha),
        "n_needed": abstats.n_needed(est, float(np.concatenate([a, b]).std()), b.size / (a.size + b.size), alpha),
    }  # fmt: skip
    if metric == "latency_ms":
        for q in (50, 95):
            d, lo, hi = abstats.two_sample_bootstrap_ci(
                a, b, lambda v, axis=None, q=q: np.percentile(v, q, axis=axis)
            )
            out[f"p{q}"] = {"estimate": d, "ci": [lo, hi], "ci_method": "bootstrap"}
    return out


def compare_ab(rows: list[Row], metrics: list[str], alpha: float) -> dict | None:
    """Candidate − live over the A/B rows (None when the log has no candidate arm)."""
    order = [r for r in rows if r.arm in ("live", "candidate")]
    live = [r for r in order if r.arm == "live"]
    cand = [r for r in order if r.arm == "candidate"]
    if not cand:
        return None
    diffs = {m: d for m in metrics if (d := _ab_difference(m, live, cand, order, alpha)) is not None}
    return {
        "arms": {"live": _arm_summary(live, metrics), "candidate": _arm_summary(cand, metrics)},
        "differences": diffs,
    }


def _paired(metric: str, pairs: list[tuple[Row, Row]], alpha: float) -> dict | None:
    kind, worse = METRICS[metric]
    vals = [(lv, sv) for lv, sv in ((lr.value(metric), sr.value(metric)) for lr, sr in pairs)]
    vals = [(lv, sv) for lv, sv in vals if lv is not None and sv is not None]
    if len(vals) < 2:
        return None
    a = np.array([v[0] for v in vals])
    b = np.array([v[1] for v in vals])
    ci = paired_bootstrap_diff_ci(b, a)
    seq = abstats.paired_sequential(_scale(kind, b) - _scale(kind, a), alpha=alpha)
    out = {
        "estimate": ci.estimate, "ci": [ci.low, ci.high], "ci_method": "paired bootstrap", "pairs": len(vals),
        "live_mean": float(a.mean()), "shadow_mean": float(b.mean()),
        "sequential": seq.to_dict(), "decision": _decide(seq, ci.estimate, worse, alpha),
    }  # fmt: skip
    if kind == "rate":
        t = mcnemar(list(b > 0.5), list(a > 0.5))
        out["mcnemar"] = {"only_shadow": t.only_a, "only_live": t.only_b, "p_value": t.p_value}
    return out


def compare_shadow(rows: list[Row], alpha: float) -> dict | None:
    """Shadow copy − live answer over the pairs both answered with HTTP 200 (None without shadow rows)."""
    live = {r.id: r for r in rows if r.arm == "live"}
    shadow = [r for r in rows if r.arm == "shadow"]
    if not shadow:
        return None
    pairs = [(live[s.shadow_of], s) for s in shadow if s.shadow_of in live]
    ok = [(lr, sr) for lr, sr in pairs if lr.status == 200 and sr.status == 200]
    metrics = ["escalation", "refusal", "latency_ms", "answer_words"]
    both = [(lr, sr) for lr, sr in ok if lr.route in ANSWERED and sr.route in ANSWERED]
    agreement = None
    if both:
        exact = [float(normalize(lr.answer or "") == normalize(sr.answer or "")) for lr, sr in both]
        f1 = [token_f1(sr.answer or "", lr.answer or "") for lr, sr in both]
        agreement = {"pairs": len(both), "exact_match": _mean_ci(exact), "token_f1": _mean_ci(f1)}
    return {
        "copies": len(shadow), "pairs": len(ok),
        "failed_copies": sum(1 for s in shadow if s.status != 200), "unmatched": len(shadow) - len(pairs),
        "agreement": agreement,
        "differences": {m: d for m in metrics if (d := _paired(m, ok, alpha)) is not None},
    }  # fmt: skip


def _mean_ci(values: list[float]) -> dict:
    ci = bootstrap_mean_ci(values)
    return {"mean": ci.estimate, "ci": [ci.low, ci.high]}


def run_ab(db: str | Path, alpha: float = 0.05) -> dict:
    """The whole comparison as a JSON-ready dict; ``decisions`` lists what the stopping rule decided."""
    if not 0 < alpha < 1:
        raise UserError(f"--alpha {alpha}: expected a number between 0 and 1")
    path = Path(db)
    rows, has_feedback = read_arms(path)
    metrics = [m for m in METRICS if has_feedback or m not in ("feedback", "thumbs_down")]
    ab = compare_ab(rows, metrics, alpha)
    shadow = compare_shadow(rows, alpha)
    if ab is None and shadow is None:
        raise UserError(f"{path}: no candidate or shadow rows in this log (serve with --candidate)")
    decisions = [
        {"comparison": name, "metric": m, "decision": d["decision"], "p_value": d["sequential"]["p_value"]}
        for name, part in (("ab", ab), ("shadow", shadow)) if part
        for m, d in part["differences"].items() if d["decision"] != "continue"
    ]  # fmt: skip
    return {
        "db": str(path), "alpha": alpha, "tau_sd": abstats.TAU_SD, "burn_in": abstats.BURN_IN,
        "feedback_table": has_feedback, "ab": ab, "shadow": shadow, "decisions": decisions,
        "candidate_worse": any(d["decision"] == "candidate_worse" for d in decisions),
    }  # fmt: skip
