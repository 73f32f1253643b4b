"""Output drift against a baseline, and the alert rules that turn a window's signals into pages.

Rates from one window are noisy, so an output-drift alert needs both a change large enough to matter
(the task card's ``escalation_rise`` / ``confidence_drop``) and evidence that it is not sampling
noise (a one-sided binomial test of the escalation count against the baseline rate, a one-sided
Welch t-test of the confidences against the baseline window's), each at ``drift_alpha``.
A window with fewer than ``min_requests`` requests is not judged at all: a quiet night of three
requests must not page anyone.
"""

from __future__ import annotations

import warnings

import numpy as np

from distilltune.task.schema import MonitoringSpec


def output_drift(
    traffic: dict, conf: list[float], baseline: dict | None, base_conf: list[float], alpha: float
) -> dict | None:
    """Escalation rate and mean confidence of a window against the baseline, with one-sided p-values."""
    if baseline is None:
        return None
    from scipy import stats

    out: dict = {"escalation": None, "confidence": None}
    rate, base_rate = traffic["escalation_rate"], baseline["escalation_rate"]
    if rate is not None and base_rate is not None:
        p = stats.binomtest(
            traffic["escalations"], traffic["answered"], base_rate, alternative="greater"
        ).pvalue
        out["escalation"] = {
            "rate": rate,
            "baseline": base_rate,
            "rise": rate - base_rate,
            "p_value": float(p),
        }
    if len(conf) >= 2 and len(base_conf) >= 2:
        cur_mean, base_mean = sum(conf) / len(conf), sum(base_conf) / len(base_conf)
        if np.ptp(conf) == 0 and np.ptp(base_conf) == 0:  # no spread at all: any drop is certain
            p = 0.0 if cur_mean < base_mean else 1.0
        else:
            with warnings.catch_warnings():  # near-constant samples: scipy warns, the p-value is still usable
                warnings.simplefilter("ignore", RuntimeWarning)
                p = float(stats.ttest_ind(conf, base_conf, equal_var=False, alternative="less").pvalue)
            p = p if p == p else 1.0  # NaN: no evidence
        out["confidence"] = {
            "mean": cur_mean,
            "baseline": base_mean,
            "drop": base_mean - cur_mean,
            "p_value": p,
        }
    return out


def _alert(signal: str, value: float, threshold: float, message: str) -> dict:
    return {"signal": signal, "value": value, "threshold": threshold, "message": message}


def _input_alerts(w: dict, spec: MonitoringSpec) -> list[dict]:
    out = []
    drift, ood, gap = w.get("drift"), w.get("ood"), w.get("knowledge_gap")
    if drift and drift["p_value"] < spec.drift_alpha:
        out.append(_alert("input_drift", drift["p_value"], spec.drift_alpha,
                          f"questions differ from the training set (MMD p = {drift['p_value']:.3g} "
                          f"< {spec.drift_alpha:g})"))  # fmt: skip
    if ood and ood["rate"] > spec.ood_rate:
        out.append(_alert("ood_rate", ood["rate"], spec.ood_rate,
                          f"{ood['rate']:.0%} of questions are out of distribution (> {spec.ood_rate:.0%})"))  # fmt: skip
    if gap and gap["rate"] > spec.knowledge_gap_rate:
        out.append(_alert("knowledge_gap", gap["rate"], spec.knowledge_gap_rate,
                          f"{gap['rate']:.0%} of questions retrieve worse than any eval question "
                          f"(> {spec.knowledge_gap_rate:.0%}): the knowledge base has a gap"))  # fmt: skip
    return out


def _output_alerts(w: dict, spec: MonitoringSpec) -> list[dict]:
    out = []
    od = w.get("output_drift") or {}
    esc, conf = od.get("escalation"), od.get("confidence")
    if esc and esc["rise"] > spec.escalation_rise and esc["p_value"] < spec.drift_alpha:
        out.append(_alert("escalation_rise", esc["rate"], esc["baseline"] + spec.escalation_rise,
                          f"escalation rate {esc['rate']:.0%} vs baseline {esc['baseline']:.0%} "
                          f"(rise > {spec.escalation_rise:.0%}, p = {esc['p_value']:.3g})"))  # fmt: skip
    if conf and conf["drop"] > spec.confidence_drop and conf["p_value"] < spec.drift_alpha:
        out.append(_alert("confidence_drop", conf["mean"], conf["baseline"] - spec.confidence_drop,
                          f"mean confidence {conf['mean']:.2f} vs baseline {conf['baseline']:.2f} "
                          f"(drop > {spec.confidence_drop:g}, p = {conf['p_value']:.3g})"))  # fmt: skip
    t = w["traffic"]
    limits = (
        ("unanswered_rate", t["unanswered_rate"], spec.unanswered_rate, "answers say they don't know"),
        ("refusal_rate", t["refusal_rate"], spec.refusal_rate, "requests are refused"),
    )
    for signal, value, limit, what in limits:
        if limit is not None and value is not None and value > limit:
            out.append(_alert(signal, value, limit, f"{value:.0%} of {what} (> {limit:.0%})"))
    p95 = t["latency_ms"]["p95"]
    if spec.latency_p95_ms is not None and p95 is not None and p95 > spec.latency_p95_ms:
        out.append(_alert("latency_p95", p95, spec.latency_p95_ms,
                          f"p95 latency {p95:.0f} ms (> {spec.latency_p95_ms:.0f} ms)"))  # fmt: skip
    return out


def window_alerts(w: dict, spec: MonitoringSpec) -> list[dict]:
    """Every alert one window fires (none below ``min_requests``)."""
    if w["traffic"]["requests"] < spec.min_requests:
        return []
    return _input_alerts(w, spec) + _output_alerts(w, spec)
