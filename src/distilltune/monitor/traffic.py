"""Per-window traffic statistics from logged requests: what the server did, before any embedding.

Route shares are over all requests of the window; the escalation rate is over the answered ones
(student + fallback), as ``distilltune logs`` reports it. Confidence is the student's mean token
log-probability (logged whenever the student answered first, also when the fallback replaced it).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from distilltune.monitor.logread import REFUSED_ROUTES, Request


def quantiles(values: list[float], qs: dict[str, float]) -> dict[str, float | None]:
    if not values:
        return {k: None for k in qs}
    a = np.asarray(values, dtype=np.float64)
    return {k: float(np.quantile(a, q)) for k, q in qs.items()}


def distribution(values: list[float]) -> dict | None:
    """n, mean and the deciles a reader needs to see a shift (p10, p50, p90)."""
    if not values:
        return None
    return {
        "n": len(values),
        "mean": float(np.mean(values)),
        **quantiles(values, {"p10": 0.1, "p50": 0.5, "p90": 0.9}),
    }


def unanswered_matcher(patterns: list[str]) -> re.Pattern | None:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None


def window_traffic(reqs: list[Request], window_s: float, unanswered: re.Pattern | None) -> dict:
    """Traffic, route shares, guard reasons, confidence, retrieval score, latency, answer length."""
    n = len(reqs)
    routes = Counter(r.route for r in reqs)
    answered = routes.get("student", 0) + routes.get("fallback", 0)
    refused = sum(routes.get(k, 0) for k in REFUSED_ROUTES)
    reasons_in: Counter[str] = Counter()
    reasons_out: Counter[str] = Counter()
    for r in reqs:
        reasons_in.update(r.input_reasons)
        reasons_out.update(r.output_reasons)
    answers = [r.answer for r in reqs if r.route in ("student", "fallback") and r.answer is not None]
    n_unanswered = sum(bool(unanswered.search(a)) for a in answers) if unanswered else 0
    lat = [r.latency_ms for r in reqs if r.latency_ms is not None and r.status == 200]
    return {
        "requests": n,
        "per_hour": n / window_s * 3600,
        "routes": dict(sorted(routes.items())),
        "shares": {
            "student": routes.get("student", 0) / n if n else None,
            "fallback": routes.get("fallback", 0) / n if n else None,
            "refused": refused / n if n else None,
            "error": routes.get("error", 0) / n if n else None,
        },
        "answered": answered,
        "escalations": routes.get("fallback", 0),
        "escalation_rate": routes.get("fallback", 0) / answered if answered else None,
        "refusal_rate": refused / n if n else None,
        "guard_reasons": {
            "input": dict(reasons_in.most_common()),
            "output": dict(reasons_out.most_common()),
        },
        "confidence": distribution([r.confidence for r in reqs if r.confidence is not None]),
        "retrieval_score": distribution([r.retrieval_score for r in reqs if r.retrieval_score is not None]),
        "latency_ms": {"n": len(lat), **quantiles(lat, {"p50": 0.5, "p95": 0.95})},
        "answer_words": distribution([len(a.split()) for a in answers]),
        "completion_tokens": distribution(
            [r.completion_tokens for r in reqs if r.completion_tokens and r.route in ("student", "fallback")]
        ),
        "unanswered": n_unanswered,
        "unanswered_rate": n_unanswered / len(answers) if answers else None,
    }
