"""The report's figures, drawn with matplotlib (Agg) and returned as base64 PNG for inline embedding.

- quality vs p95 latency and vs peak memory, with 95 % intervals, the Pareto frontier (a step line:
  the best quality reachable at each cost) and the budget lines with the feasible region shaded;
- peak memory and size-on-disk bars, with the memory budget;
- training curves (loss and, when logged, an eval metric per step).

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot global state), from the report
dict alone, so a report.json can always be re-rendered. Each strategy keeps one colour everywhere,
including the HTML tables (``strategy_colors``).
"""

from __future__ import annotations

import base64
import io
import math

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

PALETTE = [
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#b07aa1",
    "#edc948",
    "#9c755f",
    "#ff9da7",
    "#bab0ac",
]
STRATEGY_KINDS = ("teacher", "finetune", "distill", "blend", "deployed")
# a deployed (exported + quantized) candidate gets its own marker, so the frontier shows the formats
MARKERS = {"teacher": "s", "finetune": "o", "distill": "D", "blend": "^", "deployed": "X"}
INK = "#1f2933"
MUTED = "#6b7785"
GRID = "#e4e7eb"
BUDGET = "#c0392b"
FEASIBLE = "#2e7d32"
RC = {
    "font.size": 9,
    "axes.edgecolor": "#9aa5b1",
    "axes.labelcolor": INK,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.titlecolor": INK,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
}


def strategy_colors(names: list[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _new_figure(width: float, height: float, ncols: int) -> tuple[Figure, list]:
    import matplotlib

    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(1, ncols, squeeze=False)[0]
        for ax in axes:
            ax.grid(True, color=GRID, linewidth=0.8)
            ax.set_axisbelow(True)
    return fig, list(axes)


def _frontier_step(ax, pts: list[tuple[float, float]], xmax: float) -> None:
    """Staircase through the frontier points: the best quality reachable at each cost."""
    pts = sorted(pts)
    xs = [p[0] for p in pts] + [xmax]
    ys = [p[1] for p in pts] + [pts[-1][1]]
    ax.step(
        xs, ys, where="post", color=MUTED, linestyle="--", linewidth=1.1, zorder=1, label="Pareto frontier"
    )


LABEL_OFFSETS = [
    (6, 3),
    (6, -12),
    (-6, 3),
    (-6, -12),
    (6, 13),
    (6, -22),
    (-6, 13),
    (-6, -22),
    (6, 23),
    (6, -32),
]


def _overlaps(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place_labels(ax, labels: list[tuple[float, float, str]], fontsize: float = 8) -> None:
    """Name each point, moving a label to the first nearby spot that does not cover another label or marker.

    Works in display points after a layout pass, so it holds for log axes and any figure size.
    """
    fig = ax.figure
    fig.draw_without_rendering()
    to_pt = 72.0 / fig.dpi
    pts = [(*(ax.transData.transform((x, y)) * to_pt), text, x, y) for x, y, text in labels]
    taken = [(px - 5, py - 5, px + 5, py + 5) for px, py, *_ in pts]
    for px, py, text, x, y in sorted(pts, key=lambda p: -p[1]):
        w, h = 0.62 * fontsize * len(text) + 2, fontsize + 3
        choice = None
        for dx, dy in LABEL_OFFSETS:
            x0 = px + dx if dx >= 0 else px + dx - w
            box = (x0, py + dy, x0 + w, py + dy + h)
            if not any(_overlaps(box, t) for t in taken):
                choice = (dx, dy, box)
                break
        dx, dy, box = choice or (6, 3, (px + 6, py + 3, px + 6 + w, py + 3 + h))
        taken.append(box)
        ax.annotate(
            text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=fontsize, color=INK,
            ha="left" if dx >= 0 else "right", va="bottom", zorder=4,
        )  # fmt: skip


def _scatter_panel(
    ax, report: dict, key: str, flag: str, budget: float | None, xlabel: str, colors
) -> list[tuple[float, float, str]]:
    """Draw one quality-vs-cost panel; returns the points to label (after the figure's layout is final)."""
    rows = []
    for s in report["strategies"]:
        q, x = s["quality"]["primary"], s["efficiency"][key]
        if q is None or x is None or s["error"]:
            continue
        rows.append((s, x, q))
    if not rows:
        ax.set_visible(False)
        return []
    min_q = report["budgets"].get("min_quality")
    xs = [x for _, x, _ in rows]
    los = [s["quality"]["ci95"][0] if s["quality"]["ci95"] else q for s, _, q in rows]
    his = [s["quality"]["ci95"][1] if s["quality"]["ci95"] else q for s, _, q in rows]
    x_lo, x_hi = min([*xs, budget or math.inf]), max([*xs, budget or 0.0])
    log = x_hi / max(x_lo, 1e-9) > 20
    if log:
        ax.set_xscale("log")
        left, right = x_lo / 1.5, x_hi * 1.5
    else:
        pad = (x_hi - x_lo) * 0.12 or x_hi * 0.2 or 1.0
        left, right = max(0.0, x_lo - pad), x_hi + pad
    bottom = max(0.0, min([*los, min_q if min_q is not None else 1.0]) - 0.08)
    top = min(1.05, max([*his, min_q or 0.0]) + 0.08)
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)

    if budget is not None or min_q is not None:
        x0, x1 = left, budget if budget is not None else right
        y0, y1 = min_q if min_q is not None else bottom, top
        if x1 > x0 and y1 > y0:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, color=FEASIBLE, alpha=0.07, zorder=0, lw=0))
    if budget is not None:
        ax.axvline(budget, color=BUDGET, linestyle=":", linewidth=1.3, zorder=1, label="budget")
    if min_q is not None:
        ax.axhline(min_q, color=BUDGET, linestyle=":", linewidth=1.3, zorder=1)

    front = [(x, q) for s, x, q in rows if s["pareto"][flag]]
    if front:
        _frontier_step(ax, front, right)
    winner = report["recommendation"]["strategy"]
    for (s, x, q), lo, hi in zip(rows, los, his, strict=True):
        color = colors[s["name"]]
        ax.errorbar(
            x, q, yerr=[[q - lo], [hi - q]], fmt="none", ecolor=color, elinewidth=1.4, capsize=3, zorder=2
        )
        ax.scatter(
            [x], [q], s=70 if s["name"] == winner else 42, marker=MARKERS.get(s["kind"], "o"),
            color=color, edgecolor=INK if s["name"] == winner else "white", linewidth=1.6 if s["name"] == winner else 0.8,
            zorder=3,
        )  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel("primary quality (95% CI)")
    return [(x, q, s["name"]) for s, x, q in rows]


def quality_cost_figure(report: dict, colors: dict[str, str]) -> str | None:
    """Quality against p95 latency and against peak memory, side by side."""
    import matplotlib

    with matplotlib.rc_context(RC):
        fig, (a1, a2) = _new_figure(10.5, 4.0, 2)
        b = report["budgets"]
        labels1 = _scatter_panel(a1, report, "latency_p95_ms", "quality_latency", b.get("latency_p95_ms"),
                               "p95 answer latency (ms)", colors)  # fmt: skip
        labels2 = _scatter_panel(a2, report, "peak_rss_mb", "quality_memory", b.get("memory_mb"),
                               "peak memory (MB)", colors)  # fmt: skip
        if not (labels1 or labels2):
            return None
        a1.set_title("Quality vs latency", loc="left")
        a2.set_title("Quality vs memory", loc="left")
        handles = {}
        for ax in (a1, a2):
            for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, h)
        for kind in STRATEGY_KINDS:
            if any(s["kind"] == kind for s in report["strategies"]):
                handles[kind] = Line2D([], [], marker=MARKERS[kind], linestyle="", color=MUTED, markersize=6)
        if handles:
            fig.legend(
                handles.values(), handles.keys(), loc="outside lower center", ncols=len(handles), fontsize=8
            )
        for ax, labels in ((a1, labels1), (a2, labels2)):
            if labels:
                _place_labels(ax, labels)
        return _png(fig)


def _bars(ax, names, values, colors, budget, title, unit) -> None:
    y = list(range(len(names)))
    ax.barh(y, values, color=[colors[n] for n in names], height=0.6, zorder=2)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    top = max([*values, budget or 0.0])
    for yi, v in zip(y, values, strict=True):
        ax.text(v + top * 0.01, yi, f"{v:,.0f} {unit}" if v >= 10 else f"{v:.1f} {unit}",
                va="center", fontsize=8, color=INK)  # fmt: skip
    if budget is not None:
        ax.axvline(budget, color=BUDGET, linestyle=":", linewidth=1.3, zorder=3)
        ax.annotate(f"budget {budget:,.0f} {unit}", (budget, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -2), textcoords="offset points", fontsize=8, color=BUDGET, va="top")  # fmt: skip
    ax.set_xlim(0, top * 1.22)
    ax.set_title(title, loc="left")
    ax.grid(True, axis="x", color=GRID)
    ax.grid(False, axis="y")


def resources_figure(report: dict, colors: dict[str, str]) -> str | None:
    """Peak memory and size-on-disk bars."""
    import matplotlib

    mem = [(s["name"], s["efficiency"]["peak_rss_mb"]) for s in report["strategies"]]
    size = [(s["name"], s["efficiency"]["size_bytes"]) for s in report["strategies"]]
    mem = [(n, v) for n, v in mem if v is not None]
    size = [(n, v / 1e6) for n, v in size if v is not None]
    if not mem and not size:
        return None
    with matplotlib.rc_context(RC):
        n = max(len(mem), len(size))
        fig, (a1, a2) = _new_figure(10.5, 0.9 + 0.34 * n, 2)
        if mem:
            _bars(a1, [m[0] for m in mem], [m[1] for m in mem], colors, report["budgets"].get("memory_mb"),
                  "Peak memory while serving", "MB")  # fmt: skip
        else:
            a1.set_visible(False)
        if size:
            _bars(a2, [m[0] for m in size], [m[1] for m in size], colors, None, "Model size on disk", "MB")
        else:
            a2.set_visible(False)
        return _png(fig)


def _eval_key(report: dict) -> str | None:
    """The eval metric to plot: the ``eval_*`` key logged by the most strategies."""
    counts: dict[str, int] = {}
    for s in report["strategies"]:
        keys = {k for p in s["training"]["curve"] for k in p if k.startswith("eval")}
        for k in keys:
            counts[k] = counts.get(k, 0) + 1
    return max(sorted(counts), key=lambda k: counts[k]) if counts else None


def curves_figure(report: dict, colors: dict[str, str]) -> str | None:
    """Training loss per step and, when logged, one eval metric per step."""
    import matplotlib

    runs = [s for s in report["strategies"] if any("loss" in p for p in s["training"]["curve"])]
    ekey = _eval_key(report)
    if not runs and ekey is None:
        return None
    with matplotlib.rc_context(RC):
        fig, axes = _new_figure(10.5, 3.4, 2 if ekey else 1)
        for panel, key in zip(axes, ["loss", ekey], strict=False):
            drew = False
            for s in report["strategies"]:
                pts = [(p["step"], p[key]) for p in s["training"]["curve"] if key in p]
                if not pts:
                    continue
                drew = True
                panel.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[s["name"]],
                           linewidth=1.5, marker="o" if len(pts) < 12 else None, markersize=3, label=s["name"])  # fmt: skip
            panel.set_xlabel("optimizer step")
            panel.set_ylabel(key.replace("_", " "))
            panel.set_title(
                "Training loss" if key == "loss" else f"Held-out {key.removeprefix('eval_')}", loc="left"
            )
            if drew:
                panel.legend(fontsize=8)
            else:
                panel.set_visible(False)
        return _png(fig)
