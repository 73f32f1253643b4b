"""``distilltune ab REQUESTS.db``: compare the arms of an A/B or shadow run (``monitor/ab.py``, docs/ab.md)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from distilltune.cli.common import out

LABELS = {
    "escalation": "escalation rate",
    "refusal": "refusal rate",
    "error": "error rate",
    "feedback": "feedback rate",
    "thumbs_down": "thumbs-down rate",
    "latency_ms": "latency mean (ms)",
    "answer_words": "answer length (words)",
}


def _num(x: float | None, metric: str) -> str:
    if x is None:
        return "n/a"
    return (
        f"{x:+.1%}"
        if metric in ("escalation", "refusal", "error", "feedback", "thumbs_down")
        else f"{x:+.1f}"
    )


def _line(metric: str, d: dict) -> str:
    seq = d["sequential"]
    text = (
        f"  {LABELS[metric]:<24} {_num(d['estimate'], metric)} "
        f"[{_num(d['ci'][0], metric)}, {_num(d['ci'][1], metric)}]  "
        f"always-valid p {seq['p_value']:.3f}  {d['decision']}"
    )
    if metric == "latency_ms" and "p50" in d:
        text += "".join(
            f"\n  {f'latency {q} (ms)':<24} {d[q]['estimate']:+.1f} [{d[q]['ci'][0]:+.1f}, {d[q]['ci'][1]:+.1f}]"
            for q in ("p50", "p95")
        )
    return text


def summary_lines(report: dict) -> list[str]:
    lines = [f"{report['db']}: alpha {report['alpha']}, always-valid p-values (peeking is safe)"]
    ab = report["ab"]
    if ab:
        live, cand = ab["arms"]["live"], ab["arms"]["candidate"]
        lines.append(
            f"A/B: live {live['requests']} requests, candidate {cand['requests']}; candidate − live:"
        )
        lines += [_line(m, d) for m, d in ab["differences"].items()]
    sh = report["shadow"]
    if sh:
        lines.append(
            f"shadow: {sh['copies']} copies, {sh['pairs']} paired with their live answer "
            f"({sh['failed_copies']} failed, {sh['unmatched']} without a live row); shadow − live:"
        )
        agree = sh["agreement"]
        if agree:
            em, f1 = agree["exact_match"], agree["token_f1"]
            lines.append(
                f"  agreement over {agree['pairs']} answered pairs: exact match {em['mean']:.1%} "
                f"[{em['ci'][0]:.1%}, {em['ci'][1]:.1%}], token F1 {f1['mean']:.3f} [{f1['ci'][0]:.3f}, {f1['ci'][1]:.3f}]"
            )
        lines += [_line(m, d) for m, d in sh["differences"].items()]
    if not report["feedback_table"]:
        lines.append("no feedback table in this log: feedback and thumbs-down rates are not compared")
    worse = [d["metric"] for d in report["decisions"] if d["decision"] == "candidate_worse"]
    lines.append(
        f"stop: the candidate is worse on {', '.join(worse)}" if worse
        else "no difference decided against the candidate (keep collecting, or stop at your pre-registered size)"
    )  # fmt: skip
    return lines


def register(app: typer.Typer) -> None:
    @app.command("ab")
    def ab(
        db: Path = typer.Argument(..., help="The request log of distilltune serve --candidate (SQLite)."),
        alpha: float = typer.Option(0.05, "--alpha", help="False-positive rate of the stopping rule."),
        as_json: bool = typer.Option(False, "--json", help="Print the full comparison as JSON on stdout."),
    ) -> None:
        """Compare the live and candidate arms (A/B) or shadow copies: rates, latency, length, agreement.

        Exits 1 when the always-valid test decides the candidate is worse on a metric (escalation,
        refusals, errors, thumbs-down, latency), 0 otherwise, 2 on bad input.
        """
        from distilltune.monitor.ab import run_ab

        report = run_ab(db, alpha)
        if as_json:
            out.print(json.dumps(report, indent=2, ensure_ascii=False), markup=False, highlight=False)
        else:
            for line in summary_lines(report):
                out.print(line, markup=False, highlight=False)
        if report["candidate_worse"]:
            raise typer.Exit(1)
