"""The monitoring page's time series, drawn like the compare report (same palette and rc) as base64 PNG.

Built from the report dict alone (a saved ``--json`` can be re-rendered), on ``Figure`` directly (no
pyplot state). Thresholds from the task card are drawn as the compare report draws budgets: dotted
red lines; points that fire an alert are red.
"""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime

from matplotlib.figure import Figure

from distilltune.compare.plots import BUDGET, GRID, MUTED, PALETTE, RC

ROUTES = (("student", PALETTE[0]), ("fallback", PALETTE[1]), ("refused", PALETTE[3]), ("error", PALETTE[9]))


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _times(report: dict) -> list[datetime]:
    return [datetime.fromtimestamp(w["end"], UTC) for w in report["windows"]]


def _line(ax, xs, ys, color, label, marker="o") -> None:
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, linewidth=1.5, marker=marker,
                markersize=3.5, label=label)  # fmt: skip


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _limit(ax, value, label: str | None = None) -> None:
    if value is not None:
        ax.axhline(value, color=BUDGET, linestyle=":", linewidth=1.3, label=label)


def _traffic(ax, report, xs, width) -> None:
    bottom = [0.0] * len(xs)
    for name, color in ROUTES:
        vals = []
        for w in report["windows"]:
            r = w["traffic"]["routes"]
            vals.append(
                sum(v for k, v in r.items() if k.startswith(name)) if name == "refused" else r.get(name, 0)
            )
        if any(vals):
            ax.bar(xs, vals, width=width, bottom=bottom, color=color, label=name, align="edge")
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_title("Traffic per window, by route", loc="left")
    ax.set_ylabel("requests")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncols=2)


def _rates(ax, report, xs, th) -> None:
    t = [w["traffic"] for w in report["windows"]]
    _line(ax, xs, [x["escalation_rate"] for x in t], PALETTE[1], "escalation")
    _line(ax, xs, [x["refusal_rate"] for x in t], PALETTE[3], "refused")
    _line(ax, xs, [x["unanswered_rate"] for x in t], PALETTE[5], "unanswered")
    base = report["baseline"]
    if base and base["escalation_rate"] is not None:
        ax.axhline(base["escalation_rate"] + th["escalation_rise"], color=BUDGET, linestyle=":",
                   linewidth=1.3, label="escalation limit")  # fmt: skip
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Escalation, refusal and unanswered rates", loc="left")
    _legend(ax)


def _confidence(ax, report, xs, th) -> None:
    c = [w["traffic"]["confidence"] for w in report["windows"]]
    pts = [(x, v) for x, v in zip(xs, c, strict=True) if v]
    if pts:
        ax.fill_between([p[0] for p in pts], [p[1]["p10"] for p in pts], [p[1]["p90"] for p in pts],
                        color=PALETTE[0], alpha=0.15, linewidth=0, label="p10–p90")  # fmt: skip
        _line(ax, [p[0] for p in pts], [p[1]["mean"] for p in pts], PALETTE[0], "mean")
    base = report["baseline"]
    if base and base["confidence_mean"] is not None:
        _limit(ax, base["confidence_mean"] - th["confidence_drop"], "alert below")
    ax.set_title("Student confidence (mean log-prob per token)", loc="left")
    _legend(ax)


def _latency(ax, report, xs, th) -> None:
    lat = [w["traffic"]["latency_ms"] for w in report["windows"]]
    _line(ax, xs, [v["p50"] for v in lat], PALETTE[2], "p50")
    _line(ax, xs, [v["p95"] for v in lat], PALETTE[4], "p95")
    _limit(ax, th["latency_p95_ms"], "p95 limit")
    ax.set_title("Latency (ms)", loc="left")
    _legend(ax)


def _drift(ax, report, xs, th) -> None:
    ps = [(w["drift"] or {}).get("p_value") for w in report["windows"]]
    _line(ax, xs, ps, PALETTE[7], "MMD p-value")
    bad = [(x, p) for x, p in zip(xs, ps, strict=True) if p is not None and p < th["drift_alpha"]]
    if bad:
        ax.scatter([b[0] for b in bad], [b[1] for b in bad], color=BUDGET, zorder=3, s=24)
    ax.set_yscale("log")
    ax.set_ylim(min([p for p in ps if p] + [th["drift_alpha"]]) / 2, 1.1)
    _limit(ax, th["drift_alpha"], "alpha")
    ax.set_title("Input drift vs training questions", loc="left")
    _legend(ax)


def _ood(ax, report, xs, th) -> None:
    _line(
        ax, xs, [(w["ood"] or {}).get("rate") for w in report["windows"]], PALETTE[6], "out of distribution"
    )
    _limit(ax, th["ood_rate"])
    if report["knowledge"]:
        gaps = [(w["knowledge_gap"] or {}).get("rate") for w in report["windows"]]
        _line(ax, xs, gaps, PALETTE[8], "knowledge gap", marker="s")
        if th["knowledge_gap_rate"] != th["ood_rate"]:
            _limit(ax, th["knowledge_gap_rate"])
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Out-of-distribution and knowledge-gap shares", loc="left")
    _legend(ax)


def timeseries_figure(report: dict) -> str | None:
    """Six panels over the windows: traffic, rates, confidence, latency, drift p-value, OOD shares."""
    import matplotlib
    import matplotlib.dates as mdates

    if not report["windows"]:
        return None
    xs = _times(report)
    th = report["thresholds"]
    width = report["window_s"] / 86400.0  # bar width in days (matplotlib date units)
    starts = [datetime.fromtimestamp(w["start"], UTC) for w in report["windows"]]
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(11.0, 8.4), layout="constrained")
        axes = fig.subplots(3, 2, squeeze=False).ravel()
        for ax in axes:
            ax.grid(True, color=GRID, linewidth=0.8)
            ax.set_axisbelow(True)
        _traffic(axes[0], report, starts, width)
        _rates(axes[1], report, xs, th)
        _confidence(axes[2], report, xs, th)
        _latency(axes[3], report, xs, th)
        _drift(axes[4], report, xs, th)
        _ood(axes[5], report, xs, th)
        for ax in axes:
            if len(xs) > 1:
                loc = mdates.AutoDateLocator(maxticks=6)
                ax.xaxis.set_major_locator(loc)
                ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
            else:  # one window: a date locator has no range to work with
                ax.set_xticks(xs)
                ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d %H:%M"))
            ax.tick_params(axis="x", labelcolor=MUTED)
        return _png(fig)
