"""The comparison report: what each strategy measured, the statistics, the decision, three files.

``build_report(results, budgets, task_name, out_dir, commands)`` is the entry point the ``compare``
orchestration calls once every strategy is trained and evaluated. It

1. reads each strategy's numbers from its eval.json dict and training record (``StrategyResult``),
2. computes bootstrap intervals and paired comparisons against the best-quality strategy (``stats``),
3. marks the Pareto frontiers, checks the budgets and picks the recommendation (``decide``),
4. writes report.json (schema v1, ``schema.validate_report``), report.md and a self-contained
   report.html (``render``) atomically into ``out_dir``, and returns the report dict.

The report only reports: it never re-measures a model, and every number in it comes from the inputs.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from distilltune import __version__
from distilltune.compare import stats
from distilltune.compare.decide import Candidate, best_quality, check_budgets, frontier_flags, recommend
from distilltune.compare.pairs import (
    SECONDARY_SCORES,
    Comparer,
    comparison_entry,
    evidence,
    fine_tunes,
    pairwise,
    secondary_comparer,
)
from distilltune.compare.schema import SCHEMA_VERSION, validate_report
from distilltune.config import StrictModel
from distilltune.io import atomic_write_json, atomic_write_text
from distilltune.task import Budgets

STRATEGY_KINDS = ("teacher", "finetune", "distill", "blend", "deployed")


class StrategyResult(StrictModel):
    """One evaluated strategy, as the orchestration hands it to the report.

    ``eval`` is the strategy's eval.json dict; ``curve`` holds training-log points
    ``{"step": int, "loss": float, "eval_<metric>": float, ...}`` (see ``curve_from_metrics``).
    A strategy that failed carries ``error`` and is listed but never recommended.
    """

    name: str = Field(min_length=1)
    description: str = ""
    # "teacher": base, in older reports; "deployed": a SOURCE@QUANT candidate (exported, not trained)
    kind: Literal["base", "teacher", "finetune", "distill", "blend", "deployed"]
    eval: dict[str, Any] = Field(default_factory=dict)
    wall_s: float | None = Field(default=None, ge=0)
    steps: int | None = Field(default=None, ge=0)
    tokens: int | None = Field(default=None, ge=0)
    curve: list[dict[str, Any]] = Field(default_factory=list)
    price_per_hour: float | None = Field(default=None, ge=0)
    currency: str = "USD"
    reproduce_command: str | None = None
    serve_command: str | None = None
    run_dir: str | None = None
    error: str | None = None
    base: str | None = Field(default=None, description="the strategy this one fine-tunes, if evaluated")
    train_total_s: float | None = Field(
        default=None, ge=0, description="training wall time with the runs this one starts from"
    )


def _num(x: Any) -> float | None:
    """A finite number or None (NaN and infinities are not valid JSON and not measurements)."""
    if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x):
        return float(x)
    return None


def _int(x: Any) -> int | None:
    v = _num(x)
    return None if v is None else int(v)


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _numeric_entries(d: Any) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if _num(v) is not None} if isinstance(d, dict) else {}


def curve_from_metrics(rows: list[dict]) -> list[dict]:
    """Training-curve points from a run's metrics.jsonl rows: the numeric values of each row with a step.

    ``train_loss`` is read as ``loss``; rows without an integer ``step`` are skipped.
    """
    out = []
    for row in rows:
        step = _int(row.get("step")) if isinstance(row, dict) else None
        if step is None:
            continue
        point: dict[str, float | int] = {"step": step}
        for k, v in row.items():
            if k != "step" and _num(v) is not None:
                point["loss" if k == "train_loss" else k] = _num(v)  # type: ignore[assignment]
        if len(point) > 1:
            out.append(point)
    return out


def _failures(ev: dict) -> list[dict]:
    raw = _get(ev, "behaviour", "failures")
    out = []
    for f in raw if isinstance(raw, list) else []:
        if not isinstance(f, dict):
            continue
        # eval.json lists ``reasons``; a single ``reason`` string is accepted too.
        reasons = f.get("reasons")
        if isinstance(reasons, list):
            reason = "; ".join(str(r) for r in reasons)
        else:
            reason = str(f.get("reason", reasons if reasons is not None else ""))
        entry = {"suite": str(f.get("suite", "")), "id": str(f.get("id", "")), "reason": reason}
        for key in ("kind", "route"):
            if isinstance(f.get(key), str):
                entry[key] = f[key]
        out.append(entry)
    return out


def _cost(r: StrategyResult) -> float | None:
    if r.wall_s is None or r.price_per_hour is None:
        return None
    return round(r.wall_s / 3600.0 * r.price_per_hour, 6)


def _strategy_entry(r: StrategyResult, settings: dict) -> dict:
    ev = r.eval if isinstance(r.eval, dict) else {}
    per_item = ev.get("per_item") if isinstance(ev.get("per_item"), list) else []
    scores = stats.item_scores([i for i in per_item if isinstance(i, dict)])
    quality = _numeric_entries(ev.get("quality"))
    primary = quality.get("primary")
    if primary is None and scores:
        primary = sum(scores) / len(scores)
    ci = None
    if scores:
        iv = stats.bootstrap_mean_ci(scores, settings["resamples"], settings["confidence"], settings["seed"])
        ci = [iv.low, iv.high]
    quality.update({"primary": primary, "ci95": ci, "n_items": _int(quality.get("n_items")) or len(scores)})
    for key in SECONDARY_SCORES:
        vals = stats.item_scores([i for i in per_item if isinstance(i, dict)], key)
        if vals:
            iv = stats.bootstrap_mean_ci(
                vals, settings["resamples"], settings["confidence"], settings["seed"]
            )
            quality[f"{key}_ci95"] = [iv.low, iv.high]  # type: ignore[assignment]
    eff = ev.get("efficiency") if isinstance(ev.get("efficiency"), dict) else {}
    # The latency a deployment gets: at the task's declared concurrency when it was measured there.
    served = eff.get("concurrent") if isinstance(eff.get("concurrent"), dict) else eff
    samples = [x for x in (_get(served, "latency_ms", "samples") or []) if _num(x) is not None]
    p95_ci = None
    if len(samples) >= 2:
        iv = stats.quantile_ci(samples, 95, settings["resamples"], settings["confidence"], settings["seed"])
        p95_ci = [iv.low, iv.high]
    failures = _failures(ev)
    return {
        "name": r.name,
        "description": r.description,
        "kind": r.kind,
        "model": ev.get("model") if isinstance(ev.get("model"), str) else None,
        "run_dir": r.run_dir,
        "error": r.error,
        "quality": quality,
        "groundedness": _numeric_entries(ev.get("groundedness")),
        "behaviour": {
            "scenarios_pass_rate": _num(_get(ev, "behaviour", "scenarios", "pass_rate")),
            "adversarial_pass_rate": _num(_get(ev, "behaviour", "adversarial", "pass_rate")),
            "n_failures": len(failures),
            "failures": failures,
        },
        "efficiency": {
            "backend": eff.get("backend") if isinstance(eff.get("backend"), str) else "torch",
            "params": _num(eff.get("params")),
            "size_bytes": _num(eff.get("size_bytes")),
            "load_s": _num(eff.get("load_s")),
            "peak_rss_mb": _num(eff.get("peak_rss_mb")),
            "concurrency": _int(served.get("concurrency")) or 1,
            "latency_p50_ms": _num(_get(served, "latency_ms", "p50")),
            "latency_p95_ms": _num(_get(served, "latency_ms", "p95")),
            "latency_p95_ci95": p95_ci,
            "latency_samples": samples,
            "batch1_latency_p95_ms": _num(_get(eff, "latency_ms", "p95")),
            "requests_per_s": _num(served.get("requests_per_s")),
            "prefill_tok_s": _num(eff.get("prefill_tok_s")),
            "decode_tok_s": _num(eff.get("decode_tok_s")),
        },
        "training": {
            "wall_s": r.wall_s,
            "total_wall_s": r.train_total_s,
            "steps": r.steps,
            "tokens": r.tokens,
            "price_per_hour": r.price_per_hour,
            "currency": r.currency,
            "cost": _cost(r),
            "curve": curve_from_metrics(r.curve),
        },
        "commands": {"reproduce": r.reproduce_command, "serve": r.serve_command},
    }


def _candidate(s: dict) -> Candidate:
    q = None if s["error"] else s["quality"]["primary"]
    e = s["efficiency"]
    ci = e["latency_p95_ci95"]
    train = (
        s["training"]["total_wall_s"]
        if s["training"]["total_wall_s"] is not None
        else s["training"]["wall_s"]
    )
    return Candidate(
        s["name"],
        q,
        e["latency_p95_ms"],
        e["peak_rss_mb"],
        tuple(ci) if ci else None,
        e["size_bytes"],
        train if s["kind"] not in ("base", "teacher") else 0.0,  # deployed: source + export
        e["concurrency"],
    )


def analyse(
    results: list[StrategyResult],
    budgets: Budgets,
    task_name: str,
    commands: dict[str, str] | None = None,
    *,
    resamples: int = stats.RESAMPLES,
    seed: int = stats.SEED,
    now: datetime | None = None,
) -> dict:
    """The report dict (schema v1) for ``results``; pure apart from reading the clock."""
    names = [r.name for r in results]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"strategy names must be unique; repeated: {', '.join(dupes)}")
    settings = {
        "resamples": resamples,
        "confidence": stats.CONFIDENCE,
        "alpha": stats.ALPHA,
        "seed": seed,
        "exact_below": stats.EXACT_BELOW,
    }
    entries = [_strategy_entry(r, settings) for r in results]
    items = {r.name: [i for i in r.eval.get("per_item", []) or [] if isinstance(i, dict)] for r in results}
    cands = [_candidate(s) for s in entries]
    compare = Comparer(items, resamples, settings["confidence"], settings["alpha"], seed)

    best = best_quality(cands)
    flags = frontier_flags(cands)
    for s, c in zip(entries, cands, strict=True):
        checks = check_budgets(c, budgets) if c.quality is not None else []
        s["pareto"] = flags[c.name]
        s["budgets"] = {
            "meets": c.quality is not None and all(ch.ok for ch in checks),
            "checks": [ch.to_dict() for ch in checks],
        }
        if c.quality is None:
            s["verdict_vs_best"] = "unmeasured"
        elif best is not None and c.name == best.name:
            s["verdict_vs_best"] = "best"
        else:
            s["verdict_vs_best"] = compare(c.name, best.name).verdict  # type: ignore[union-attr]

    secondary = secondary_comparer(items, resamples, settings, seed)
    rec = recommend(cands, budgets, compare, secondary)
    winner = next((r for r in results if r.name == rec.strategy), None)
    evidence_ = evidence(rec, cands, entries, items, budgets, resamples, settings, seed)
    report = {
        "schema_version": SCHEMA_VERSION,
        "task": task_name,
        "generated_at": (now or datetime.now(UTC)).isoformat(timespec="seconds"),
        "distilltune_version": __version__,
        "budgets": budgets.model_dump(),
        "statistics": settings,
        "best_quality": best.name if best else None,
        "strategies": entries,
        "recommendation": {
            **rec.to_dict(),
            "training": {
                "wall_s": winner.wall_s if winner else None,
                "total_wall_s": winner.train_total_s if winner else None,
                "cost": _cost(winner) if winner else None,
                "currency": winner.currency if winner else "USD",
                "price_per_hour": winner.price_per_hour if winner else None,
            },
            "serve_command": winner.serve_command if winner else None,
            **evidence_,
        },
        "comparisons": [comparison_entry(a, b, c) for (a, b), c in compare.cache.items()],
        "fine_tunes": fine_tunes(results, compare, items, resamples, settings, seed),
        "pairwise": pairwise(
            items, [c.name for c in cands if c.quality is not None], resamples, settings, seed
        ),
        "commands": dict(commands or {}),
    }
    return report


def build_report(
    results: list[StrategyResult],
    budgets: Budgets,
    task_name: str,
    out_dir: Path,
    commands: dict[str, str] | None = None,
) -> dict:
    """Analyse ``results`` and write report.json, report.md and report.html into ``out_dir``.

    Each file is written atomically; report.json is validated against its schema first, so a bug can
    never publish a malformed report.
    """
    from distilltune.compare.render import render_html, render_markdown

    report = analyse(results, budgets, task_name, commands)
    problems = validate_report(report)
    if problems:
        raise RuntimeError("report.json does not match its schema: " + "; ".join(problems[:10]))
    out = Path(out_dir)
    html_text = render_html(report)
    md_text = render_markdown(report)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", md_text)
    atomic_write_text(out / "report.html", html_text)
    return report
