"""Render a monitoring report dict as a self-contained HTML page (and a short text summary for the terminal).

The page follows the compare report: Jinja2 with autoescaping (logged questions are user text, already
redacted but otherwise arbitrary), inline CSS, figures as base64 PNG, so it opens from disk with no
server and no network.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from distilltune.compare import fmt
from distilltune.monitor import plots

TEMPLATES = Path(__file__).parent / "templates"
MAX_WINDOWS_SHOWN = 48


def when(ts: float | None) -> str:
    return fmt.DASH if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _pct(x: float | None) -> str:
    return fmt.DASH if x is None else f"{x:.0%}" if x >= 0.1 or x == 0 else f"{x:.1%}"


def _num(x: float | None, digits: int = 2) -> str:
    return fmt.DASH if x is None else fmt.signed(x, digits)


def _p(x: float | None) -> str:
    return fmt.DASH if x is None else f"{x:.3g}"


def _row(w: dict) -> dict:
    t = w["traffic"]
    return {
        "start": when(w["start"]),
        "end": when(w["end"]),
        "requests": t["requests"],
        "student": _pct(t["shares"]["student"]),
        "fallback": _pct(t["shares"]["fallback"]),
        "refused": _pct(t["shares"]["refused"]),
        "escalation": _pct(t["escalation_rate"]),
        "confidence": _num((t["confidence"] or {}).get("mean")),
        "retrieval": _num((t["retrieval_score"] or {}).get("mean"), 3),
        "p50": fmt.ms(t["latency_ms"]["p50"]),
        "p95": fmt.ms(t["latency_ms"]["p95"]),
        "words": _num((t["answer_words"] or {}).get("p50"), 0),
        "unanswered": _pct(t["unanswered_rate"]),
        "mmd_p": _p((w["drift"] or {}).get("p_value")),
        "ood": _pct((w["ood"] or {}).get("rate")),
        "gap": _pct((w["knowledge_gap"] or {}).get("rate")),
        "alerts": [a["signal"] for a in w["alerts"]],
        "note": w.get("note", ""),
    }


def _kpis(report: dict) -> list[tuple[str, str, str]]:
    w = report["windows"][-1]
    t = w["traffic"]
    drift = w["drift"] or {}
    base = report["baseline"] or {}
    return [
        ("requests", f"{t['requests']:,}", f"{t['per_hour']:.1f} per hour"),
        ("escalation", _pct(t["escalation_rate"]), f"baseline {_pct(base.get('escalation_rate'))}"),
        ("confidence", _num((t["confidence"] or {}).get("mean")), f"baseline {_num(base.get('confidence_mean'))}"),
        ("p95 latency", fmt.ms(t["latency_ms"]["p95"]), f"p50 {fmt.ms(t['latency_ms']['p50'])}"),
        ("drift p-value", _p(drift.get("p_value")), f"MMD² {_num(drift.get('mmd2'), 4)}"),
        ("out of distribution", _pct((w["ood"] or {}).get("rate")), f"limit {_pct(report['thresholds']['ood_rate'])}"),
    ]  # fmt: skip


def view(report: dict, figures: bool = True) -> dict:
    latest = report["windows"][-1]
    totals: dict[str, dict[str, int]] = {"input": {}, "output": {}}
    for w in report["windows"]:
        for stage, counts in w["traffic"]["guard_reasons"].items():
            for k, v in counts.items():
                totals[stage][k] = totals[stage].get(k, 0) + v
    reasons = sorted(
        ((stage, k, v) for stage, c in totals.items() for k, v in c.items()), key=lambda x: (-x[2], x[1])
    )
    return {
        "r": report,
        "task": report["task"],
        "status": report["status"],
        "alerts": report["alerts"],
        "latest": {"start": when(latest["start"]), "end": when(latest["end"])},
        "range": (when(report["first_ts"]), when(report["last_ts"])),
        "window": fmt.duration(report["window_s"]),
        "kpis": _kpis(report),
        "rows": [_row(w) for w in reversed(report["windows"][-MAX_WINDOWS_SHOWN:])],
        "hidden_windows": max(0, len(report["windows"]) - MAX_WINDOWS_SHOWN),
        "figure": plots.timeseries_figure(report) if figures else None,
        "ood_clusters": report["ood_clusters"],
        "gaps": report["knowledge_gaps"],
        "knowledge": report["knowledge"],
        "reasons": reasons,
        "th": report["thresholds"],
        "ref": report["reference"],
        "baseline": report["baseline"],
        "baseline_when": (when(report["baseline"]["start"]), when(report["baseline"]["end"]))
        if report["baseline"]
        else None,
        "when": when,
        "pct": _pct,
    }


def render_html(report: dict) -> str:
    from distilltune.compare.render import jinja_env

    return jinja_env(TEMPLATES).get_template("monitor.html.jinja").render(**view(report))


def summary_lines(report: dict) -> list[str]:
    """What the terminal shows: the latest window's numbers and every alert."""
    w = report["windows"][-1]
    k = {name: value for name, value, _ in _kpis(report)}
    lines = [
        f"{report['requests']} requests in {len(report['windows'])} window(s) of {fmt.duration(report['window_s'])}; "
        f"latest window {when(w['start'])} .. {when(w['end'])}",
        "  " + ", ".join(f"{name} {value}" for name, value in k.items()),
    ]
    if w.get("note"):
        lines.append(f"  note: {w['note']}")
    if report["alerts"]:
        lines += ["ALERT " + a["signal"] + ": " + a["message"] for a in report["alerts"]]
    else:
        lines.append("no alerts")
    return lines
