"""Render a report dict (schema v1) as a self-contained report.html and as report.md.

Both renderings read the same view (``view``): formatted strings computed once, so the HTML and the
Markdown never disagree. The HTML comes from a Jinja2 template with autoescaping on — model answers
and failure reasons may contain anything — and embeds its CSS and figures (base64 PNG), so it opens
from disk with no server and no network. The Markdown escapes table cells and HTML.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from distilltune.compare import fmt, plots
from distilltune.compare.evidence import evidence_markdown, evidence_view

TEMPLATES = Path(__file__).parent / "templates"
VERDICT_LABELS = {
    "best": "best quality",
    "tie": "tie with best",
    "worse": "worse than best",
    "better": "better than best",
    "incomparable": "no shared items",
    "unmeasured": "not measured",
}
RULE_LABELS = {
    "best-within-budgets": "best quality within budgets",
    "tied-and-cheaper": "tied with the best, and cheaper",
    "best-within-cost-budgets": "no strategy meets every budget: best within the latency and memory budgets",
    "nearest-to-budgets": "no strategy meets every budget: nearest frontier point",
    "none": "no recommendation",
}
QUALITY_DETAILS = [
    ("model_primary", "quality, model-answered"),
    ("guard_answered_share", "answered by the guard"),
    ("fact_recall", "fact recall"),
    ("fact_recall_graded", "graded fact recall"),
    ("answer_nll", "answer NLL ↓"),
    ("token_f1", "token F1"),
    ("rouge_l", "ROUGE-L"),
    ("refusal_accuracy", "refusal accuracy"),
    ("pass_rate", "pass rate"),
    ("teacher_agreement", "agreement with teacher"),
]
# The shares eval.json reports under "groundedness" (docs/evaluation.md); its counts stay in report.json.
GROUNDEDNESS_SHARES = ("grounded", "supported", "citation_validity", "retrieval_recall")
MAX_FAILURES_SHOWN = 25


def latency_note(report: dict) -> str:
    """How the latency columns were measured (they are the serving engine's, as ``serve`` runs it)."""
    levels = sorted({s["efficiency"].get("concurrency") or 1 for s in report["strategies"]})
    at = (
        "one request at a time"
        if levels == [1]
        else f"with {' / '.join(map(str, levels))} requests in flight (the task's budgets.concurrency)"
    )
    return (
        "Latency is one full answer through the serving engine and request path that distilltune serve "
        f"runs (guard, retrieval, prefill, decode, output guard; HTTP not included), {at}."
    )


def _budget_lines(b: dict) -> list[str]:
    out = []
    if b.get("latency_p95_ms") is not None:
        at = f" at {b['concurrency']} concurrent requests" if (b.get("concurrency") or 1) > 1 else ""
        out.append(f"p95 latency{at} ≤ {fmt.ms(b['latency_p95_ms'])}")
    if b.get("memory_mb") is not None:
        out.append(f"peak memory ≤ {fmt.mb(b['memory_mb'])}")
    if b.get("min_quality") is not None:
        out.append(f"quality ≥ {fmt.quality(b['min_quality'])}")
    return out


def _vs_best(report: dict) -> dict[str, dict]:
    best = report["best_quality"]
    return {c["strategy"]: c for c in report["comparisons"] if c["reference"] == best}


def _train_time(t: dict) -> str:
    """Its own training (or export) time, and the total with the runs it starts from when that differs:
    a deployed ``student-kd@int8`` exports in seconds but needs the student's and the teacher's runs."""
    if not t["wall_s"]:
        return "—"
    own, total = t["wall_s"], t.get("total_wall_s")
    if total is None or total < own + 1:
        return fmt.duration(own)
    return f"{fmt.duration(own)} ({fmt.duration(total)} with its sources)"


def _row(s: dict, cmp: dict | None, colors: dict, winner: str | None) -> dict:
    q, e, t = s["quality"], s["efficiency"], s["training"]
    ci = q["ci95"]
    checks = s["budgets"]["checks"]
    if s["error"] or q["primary"] is None:
        budget = ("—", "na", "not evaluated")
    elif not checks:
        budget = ("—", "na", "no budgets set")
    else:
        ok = s["budgets"]["meets"]
        budget = ("meets" if ok else "misses", "ok" if ok else "bad", "; ".join(ch["text"] for ch in checks))
    fronts = [
        label
        for key, label in (("quality_latency", "latency"), ("quality_memory", "memory"))
        if s["pareto"][key]
    ]
    return {
        "name": s["name"],
        "color": colors[s["name"]],
        "description": s["description"],
        "kind": s["kind"],
        "error": s["error"],
        "recommended": s["name"] == winner,
        "quality": fmt.quality(q["primary"]),
        "ci": fmt.interval(*(ci or (None, None))),
        "n_items": q["n_items"],
        "diff": fmt.signed(cmp["diff"]) if cmp and cmp["diff"] is not None else "—",
        "diff_ci": fmt.interval(*(cmp["diff_ci95"] or (None, None))) if cmp else "—",
        "p": fmt.pvalue(cmp["mcnemar"]["p_value"]) if cmp and cmp["mcnemar"] else "—",
        "discordant": (
            f"{cmp['mcnemar']['only_strategy_pass']}/{cmp['mcnemar']['only_reference_pass']}"
            if cmp and cmp["mcnemar"]
            else "—"
        ),
        "verdict": s["verdict_vs_best"],
        "verdict_label": VERDICT_LABELS.get(s["verdict_vs_best"], s["verdict_vs_best"]),
        "p95": fmt.ms(e["latency_p95_ms"]),
        "p95_ci": "—"
        if not e.get("latency_p95_ci95")
        else "{:.0f}..{:.0f} ms".format(*e["latency_p95_ci95"]),
        "p50": fmt.ms(e["latency_p50_ms"]),
        "memory": fmt.mb(e["peak_rss_mb"]),
        "size": fmt.size(e["size_bytes"]),
        "params": fmt.count(e["params"]),
        "load": fmt.duration(e["load_s"]),
        "prefill": "—" if e["prefill_tok_s"] is None else f"{e['prefill_tok_s']:.0f} tok/s",
        "decode": "—" if e["decode_tok_s"] is None else f"{e['decode_tok_s']:.1f} tok/s",
        "train_time": _train_time(t),
        "steps": "—" if t["steps"] is None else f"{t['steps']:,}",
        "tokens": fmt.count(t["tokens"]),
        "cost": fmt.money(t["cost"], t["currency"]) if t["wall_s"] else "—",
        "budget": budget[0],
        "budget_class": budget[1],
        "budget_title": budget[2],
        "frontier": ", ".join(fronts) if fronts else "—",
        "details": [(label, fmt.quality(q.get(key))) for key, label in QUALITY_DETAILS],
        "groundedness": {
            k: fmt.quality(s["groundedness"].get(k)) for k in GROUNDEDNESS_SHARES if k in s["groundedness"]
        },
        "scenarios": fmt.pct(s["behaviour"]["scenarios_pass_rate"]),
        "adversarial": fmt.pct(s["behaviour"]["adversarial_pass_rate"]),
        "n_failures": s["behaviour"]["n_failures"],
        "failures": s["behaviour"]["failures"][:MAX_FAILURES_SHOWN],
        "failures_hidden": max(0, s["behaviour"]["n_failures"] - MAX_FAILURES_SHOWN),
        "reproduce": s["commands"]["reproduce"],
        "serve": s["commands"]["serve"],
        "run_dir": s["run_dir"],
    }


def view(report: dict, figures: bool = True) -> dict:
    """Everything the templates show, formatted."""
    names = [s["name"] for s in report["strategies"]]
    colors = plots.strategy_colors(names)
    rec = report["recommendation"]
    winner = rec["strategy"]
    vs_best = _vs_best(report)
    rows = [_row(s, vs_best.get(s["name"]), colors, winner) for s in report["strategies"]]
    # Ranked by quality, unmeasured last; the table is what a reader scans first.
    rows.sort(key=lambda r: (r["quality"] == "—", -float(r["quality"]) if r["quality"] != "—" else 0.0))
    win = next((s for s in report["strategies"] if s["name"] == winner), None)
    kpis, chips = [], []
    if win is not None:
        q, e = win["quality"], win["efficiency"]
        t = rec["training"]
        kpis = [
            ("quality", fmt.quality(q["primary"]), f"95% CI {fmt.interval(*(q['ci95'] or (None, None)))}"),
            ("p95 latency", fmt.ms(e["latency_p95_ms"]), f"p50 {fmt.ms(e['latency_p50_ms'])}"),
            ("peak memory", fmt.mb(e["peak_rss_mb"]), f"size {fmt.size(e['size_bytes'])}"),
            (
                "training",
                _train_time(t) if t["wall_s"] else "none",
                (
                    f"{fmt.money(t['cost'], t['currency'])} at {t['price_per_hour']:g} {t['currency']}/h"
                    if t["cost"] is not None
                    else "no training cost"
                    if not t["wall_s"]
                    else "no price per hour set"
                ),
            ),
        ]
        chips = [(ch["text"], ch["ok"]) for ch in win["budgets"]["checks"]]
    figs = {}
    if figures:
        figs = {
            "quality": plots.quality_cost_figure(report, colors),
            "resources": plots.resources_figure(report, colors),
            "curves": plots.curves_figure(report, colors),
        }
    return {
        "r": report,
        "task": report["task"],
        "generated_at": report["generated_at"],
        "version": report["distilltune_version"],
        "schema_version": report["schema_version"],
        "budgets": _budget_lines(report["budgets"]),
        "latency_note": latency_note(report),
        "stats": report["statistics"],
        "best": report["best_quality"],
        "rec": {
            "name": winner,
            "color": colors.get(winner or "", "#1f2933"),
            "description": win["description"] if win else "",
            "reason": rec["reason"],
            "meets": rec["meets_budgets"],
            "rule": RULE_LABELS.get(rec["rule"], rec["rule"]),
            "kpis": kpis,
            "chips": chips,
            "serve": rec["serve_command"],
            "reproduce": win["commands"]["reproduce"] if win else None,
        },
        "rows": rows,
        "evidence": evidence_view(report),
        "figures": figs,
        "commands": list(report["commands"].items()),
        "any_failures": any(r["n_failures"] for r in rows),
        "n_items": max((r["n_items"] for r in rows), default=0),
        "ground_cols": [k for k in GROUNDEDNESS_SHARES if any(k in r["groundedness"] for r in rows)],
    }


def jinja_env(templates: Path) -> jinja2.Environment:
    """The HTML pages' Jinja2 environment: autoescaping on (answers and log text may hold anything),
    undefined names fail loudly instead of rendering as empty."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(report: dict) -> str:
    return jinja_env(TEMPLATES).get_template("report.html.jinja").render(**view(report))


def _md(text: object) -> str:
    """Markdown prose or a table cell: no HTML tag can open (renderers pass raw HTML through), pipes and
    newlines cannot break a table. Only ``<`` needs escaping for the first; ``>`` stays readable."""
    return str(text).replace("<", "&lt;").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return out


def _code(cmd: str) -> list[str]:
    fence = "````" if "```" in cmd else "```"
    return [f"{fence}bash", cmd, fence]


def render_markdown(report: dict) -> str:
    v = view(report, figures=False)
    rec = v["rec"]
    lines = [f"# distilltune report: {_md(v['task'])}", ""]
    lines += [
        f"Generated {v['generated_at']} by distilltune {v['version']} (report schema v{v['schema_version']}). "
        "Figures are in report.html; every number is in report.json.",
        "",
        "## Recommendation",
        "",
    ]
    lines.append(
        f"**{_md(rec['name'])}**" + (f" — {_md(rec['description'])}" if rec["description"] else "")
        if rec["name"]
        else "**none**"
    )
    lines += ["", _md(rec["reason"]), ""]
    lines.append(f"Budgets: {', '.join(v['budgets']) if v['budgets'] else 'none set'}.")
    if rec["kpis"]:
        lines += ["", *_table([k[0] for k in rec["kpis"]], [[f"{k[1]} ({k[2]})" for k in rec["kpis"]]])]
    if rec["serve"]:
        lines += ["", "Serve it:", "", *_code(rec["serve"])]
    lines += ["", *evidence_markdown(v["evidence"], _table)]
    lines += ["## Strategies", ""]
    lines += _table(
        ["strategy", "kind", "quality", "95% CI", "Δ vs best", "95% CI of Δ", "McNemar p", "verdict",
         "p95 latency", "peak memory", "size", "training", "cost", "budgets", "Pareto"],
        [
            [r["name"] + (" (recommended)" if r["recommended"] else ""), r["kind"], r["quality"], r["ci"],
             r["diff"], r["diff_ci"], r["p"], r["verdict_label"], r["p95"], r["memory"], r["size"],
             r["train_time"], r["cost"], r["budget"], r["frontier"]]
            for r in v["rows"]
        ],
    )  # fmt: skip
    errors = [r for r in v["rows"] if r["error"]]
    if errors:
        lines += ["", "Failed strategies:", ""] + [f"- {_md(r['name'])}: {_md(r['error'])}" for r in errors]
    lines += ["", "## Quality and behaviour", ""]
    ground = v["ground_cols"]
    lines += _table(
        ["strategy"] + [label for _, label in QUALITY_DETAILS] + [k.replace("_", " ") for k in ground]
        + ["scenarios", "adversarial", "failures"],
        [
            [r["name"], *(d[1] for d in r["details"]), *(r["groundedness"].get(k, "—") for k in ground),
             r["scenarios"], r["adversarial"], r["n_failures"]]
            for r in v["rows"]
        ],
    )  # fmt: skip
    lines += ["", "## Efficiency and training", ""]
    lines += _table(
        ["strategy", "params", "size", "load", "p50", "p95", "p95 95% CI", "prefill", "decode", "peak memory",
         "steps", "tokens", "training", "cost"],
        [[r["name"], r["params"], r["size"], r["load"], r["p50"], r["p95"], r["p95_ci"], r["prefill"], r["decode"],
          r["memory"], r["steps"], r["tokens"], r["train_time"], r["cost"]] for r in v["rows"]],
    )  # fmt: skip
    lines += ["", _md(v["latency_note"])]
    if v["any_failures"]:
        lines += ["", "## Behaviour failures", ""]
        lines += _table(
            ["strategy", "suite", "id", "reason"],
            [[r["name"], f["suite"], f["id"], f["reason"]] for r in v["rows"] for f in r["failures"]],
        )
        for r in v["rows"]:
            if r["failures_hidden"]:
                lines.append(f"\n{_md(r['name'])}: {r['failures_hidden']} more failures in report.json.")
    lines += _markdown_tail(v)
    return "\n".join(lines)


def _markdown_tail(v: dict) -> list[str]:
    """The report's last sections: the commands that reproduce it, and the statistical method."""
    lines: list[str] = []
    lines += ["", "## Reproduce", ""]
    for label, cmd in v["commands"]:
        lines += [f"{_md(label)}:", "", *_code(cmd), ""]
    for r in v["rows"]:
        if r["reproduce"]:
            lines += [f"{_md(r['name'])}:", "", *_code(r["reproduce"]), ""]
    st = v["stats"]
    lines += [
        "## Method",
        "",
        f"Intervals are percentile bootstraps ({st['resamples']} resamples, seed {st['seed']}) of the mean "
        "per-item primary score; differences to the best-quality strategy resample the shared items jointly. "
        f"McNemar's test pairs per-item pass/fail (exact binomial below {st['exact_below']} discordant items, "
        f"chi-square with continuity correction above). A difference whose {st['confidence']:.0%} interval "
        f"contains 0, or whose McNemar p ≥ {st['alpha']}, is a tie.",
        "",
    ]
    return lines
