"""The report.json schema (version 1) as data, and a validator that lists every violation.

The schema is documented for users in docs/report.md; this module is its executable form, used by
the report builder's tests and by anyone who consumes report.json programmatically. Readers must
ignore keys they do not know: adding a key keeps ``schema_version``; removing, renaming or changing
the meaning of one bumps it.

Spec language (deliberately tiny): a Python type or tuple of types; ``Opt(spec)`` also allows null;
a dict spec lists required keys; ``[spec]`` is a list of items; ``MapOf(spec)`` is a mapping from
string keys to values of ``spec``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Opt:
    spec: Any


@dataclass(frozen=True)
class MapOf:
    spec: Any


NUM = (int, float)
INTERVAL = Opt([NUM])  # [low, high]
VERDICTS = ("best", "tie", "better", "worse", "incomparable", "unmeasured")
RULES = ("best-within-budgets", "tied-and-cheaper", "best-within-cost-budgets", "nearest-to-budgets", "none")

BUDGET_CHECK = {
    "budget": str,
    "limit": NUM,
    "value": Opt(NUM),
    "ok": bool,
    "shortfall": Opt(NUM),
    "text": str,
}

STRATEGY = {
    "name": str,
    "description": str,
    "kind": str,
    "model": Opt(str),
    "run_dir": Opt(str),
    "error": Opt(str),
    "quality": {"primary": Opt(NUM), "ci95": INTERVAL, "n_items": int},
    "groundedness": MapOf(NUM),
    "behaviour": {
        "scenarios_pass_rate": Opt(NUM),
        "adversarial_pass_rate": Opt(NUM),
        "n_failures": int,
        "failures": [{"suite": str, "id": str, "reason": str}],
    },
    "efficiency": {
        "params": Opt(NUM),
        "size_bytes": Opt(NUM),
        "load_s": Opt(NUM),
        "peak_rss_mb": Opt(NUM),
        "concurrency": int,
        "latency_p50_ms": Opt(NUM),
        "latency_p95_ms": Opt(NUM),
        "batch1_latency_p95_ms": Opt(NUM),
        "prefill_tok_s": Opt(NUM),
        "decode_tok_s": Opt(NUM),
    },
    "training": {
        "wall_s": Opt(NUM),
        "steps": Opt(int),
        "tokens": Opt(int),
        "price_per_hour": Opt(NUM),
        "currency": str,
        "cost": Opt(NUM),
        "curve": [MapOf(NUM)],
    },
    "pareto": {"quality_latency": bool, "quality_memory": bool, "overall": bool},
    "budgets": {"meets": bool, "checks": [BUDGET_CHECK]},
    "verdict_vs_best": str,
    "commands": {"reproduce": Opt(str), "serve": Opt(str)},
}

COMPARISON = {
    "strategy": str,
    "reference": str,
    "n_items": int,
    "mean": Opt(NUM),
    "reference_mean": Opt(NUM),
    "diff": Opt(NUM),
    "diff_ci95": INTERVAL,
    "mcnemar": Opt({"only_strategy_pass": int, "only_reference_pass": int, "p_value": NUM, "method": str}),
    "verdict": str,
}

REPORT = {
    "schema_version": int,
    "task": str,
    "generated_at": str,
    "distilltune_version": str,
    "budgets": {
        "latency_p95_ms": Opt(NUM),
        "concurrency": Opt(int),
        "memory_mb": Opt(NUM),
        "min_quality": Opt(NUM),
    },
    "statistics": {"resamples": int, "confidence": NUM, "alpha": NUM, "seed": int, "exact_below": int},
    "best_quality": Opt(str),
    "strategies": [STRATEGY],
    "recommendation": {
        "strategy": Opt(str),
        "reason": str,
        "meets_budgets": bool,
        "rule": str,
        "anchor": Opt(str),
        "tied_with_anchor": [str],
        "still_tied": [str],
        "stability": MapOf(NUM),
        "separation": Opt(
            {
                "strategy": str,
                "rival": str,
                "score": str,
                "n_items": int,
                "sd_diff": NUM,
                "mde": Opt(NUM),
                "observed_diff": Opt(NUM),
                "items_needed": Opt(int),
            }
        ),
        "training": {"wall_s": Opt(NUM), "cost": Opt(NUM), "currency": str, "price_per_hour": Opt(NUM)},
        "serve_command": Opt(str),
    },
    "comparisons": [COMPARISON],
    "fine_tunes": [{"strategy": str, "base": str, "verdict": str, "text": str}],
    "pairwise": [COMPARISON],
    "commands": MapOf(str),
}


def _type_name(spec: Any) -> str:
    if isinstance(spec, tuple):
        return "number" if spec == NUM else " or ".join(t.__name__ for t in spec)
    if isinstance(spec, type):
        return {"str": "string", "int": "integer", "bool": "boolean", "float": "number"}.get(
            spec.__name__, spec.__name__
        )
    if isinstance(spec, dict | MapOf):
        return "object"
    if isinstance(spec, list):
        return "array"
    return repr(spec)


def _check(value: Any, spec: Any, path: str, out: list[str]) -> None:
    if isinstance(spec, Opt):
        if value is not None:
            _check(value, spec.spec, path, out)
        return
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            out.append(f"{path}: expected an object, found {type(value).__name__}")
            return
        for key, sub in spec.items():
            if key not in value:
                out.append(f"{path}.{key}: required key is missing")
            else:
                _check(value[key], sub, f"{path}.{key}", out)
        return
    if isinstance(spec, MapOf):
        if not isinstance(value, dict):
            out.append(f"{path}: expected an object, found {type(value).__name__}")
            return
        for key, sub in value.items():
            _check(sub, spec.spec, f"{path}.{key}", out)
        return
    if isinstance(spec, list):
        if not isinstance(value, list):
            out.append(f"{path}: expected an array, found {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(item, spec[0], f"{path}[{i}]", out)
        return
    # bool is an int in Python; a JSON true is never a valid number here.
    if isinstance(value, bool) and spec is not bool:
        out.append(f"{path}: expected {_type_name(spec)}, found boolean")
    elif not isinstance(value, spec):
        out.append(f"{path}: expected {_type_name(spec)}, found {type(value).__name__}")


def _check_semantics(d: dict, out: list[str]) -> None:
    if d.get("schema_version") != SCHEMA_VERSION:
        out.append(f"$.schema_version: expected {SCHEMA_VERSION}, found {d.get('schema_version')!r}")
    strategies = d.get("strategies") if isinstance(d.get("strategies"), list) else []
    names = [s.get("name") for s in strategies if isinstance(s, dict)]
    for n in {n for n in names if names.count(n) > 1}:
        out.append(f"$.strategies: name {n!r} is used more than once")
    for i, s in enumerate(strategies):
        if isinstance(s, dict) and s.get("verdict_vs_best") not in VERDICTS:
            out.append(f"$.strategies[{i}].verdict_vs_best: expected one of {VERDICTS}")
        ci = (s.get("quality") or {}).get("ci95") if isinstance(s, dict) else None
        if isinstance(ci, list) and len(ci) != 2:
            out.append(f"$.strategies[{i}].quality.ci95: expected [low, high]")
    rec = d.get("recommendation")
    if isinstance(rec, dict):
        if rec.get("strategy") is not None and rec.get("strategy") not in names:
            out.append(f"$.recommendation.strategy: {rec.get('strategy')!r} is not one of the strategies")
        if rec.get("rule") not in RULES:
            out.append(f"$.recommendation.rule: expected one of {RULES}")
    for i, c in enumerate(d.get("comparisons") if isinstance(d.get("comparisons"), list) else []):
        if not isinstance(c, dict):
            continue
        for key in ("strategy", "reference"):
            if c.get(key) not in names:
                out.append(f"$.comparisons[{i}].{key}: {c.get(key)!r} is not one of the strategies")
        if c.get("verdict") not in VERDICTS:
            out.append(f"$.comparisons[{i}].verdict: expected one of {VERDICTS}")


def validate_report(d: Any) -> list[str]:
    """Every way ``d`` departs from the report.json schema; an empty list means valid."""
    out: list[str] = []
    _check(d, REPORT, "$", out)
    if isinstance(d, dict):
        _check_semantics(d, out)
    return out
