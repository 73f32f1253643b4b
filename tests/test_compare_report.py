"""Pareto frontiers, budgets, the recommendation, and the three report files.

Inputs are hand-made ``StrategyResult`` objects (the end-to-end compare test with real tiny runs lives
with the orchestration); every number in them is chosen so the expected decision can be worked out
by hand.
"""

from __future__ import annotations

import copy
import html
import json
import re
import shutil
import subprocess
from datetime import UTC, datetime

import pytest

from distilltune.compare import StrategyResult, analyse, build_report, curve_from_metrics, validate_report
from distilltune.compare.decide import Candidate, check_budgets, frontier_flags, pareto_front, recommend
from distilltune.compare.stats import Comparison
from distilltune.task import Budgets

PLANT = "<script>alert('x')</script>"
N = 40


def _eval(scores, p95=None, mem=None, size=None, failures=(), **quality):
    return {
        "schema_version": 1,
        "model": "m",
        "task": "t",
        "quality": {"primary": sum(scores) / len(scores), "fact_recall": 0.5, **quality},
        "per_item": [{"id": f"e{i:02d}", "pass": s >= 0.5, "primary": s} for i, s in enumerate(scores)],
        "groundedness": {"grounded": 0.75, "supported": 0.9, "citations": 12, "rag": True},
        "behaviour": {
            "scenarios": {"pass_rate": 0.9},
            "adversarial": {"pass_rate": 0.8},
            "failures": [
                {
                    "suite": a,
                    "id": b,
                    "kind": "injection",
                    "route": "model",
                    "reasons": [c, "not_contains[0]"],
                }
                for a, b, c in failures
            ],
        },
        "efficiency": {
            "params": 5e7,
            "size_bytes": size,
            "load_s": 0.5,
            "peak_rss_mb": mem,
            "latency_ms": {"p50": None if p95 is None else p95 * 0.7, "p95": p95},
            "prefill_tok_s": 500.0,
            "decode_tok_s": 90.0,
        },
    }


# 40 items. "big" passes 30; "tied" differs from big on 2 items only; "weak" passes 6.
BIG = [1.0] * 30 + [0.0] * 10
TIED = [1.0] * 28 + [0.0] * 2 + [0.0] * 10
WEAK = [1.0] * 6 + [0.0] * 34


def _strategies(big_p95=4000.0, tied_p95=1000.0):
    return [
        StrategyResult(
            name="teacher-lora", kind="finetune", description="teacher fine-tuned with LoRA",
            eval=_eval(BIG, p95=big_p95, mem=900.0, size=2e6), wall_s=1800, steps=50, tokens=50000,
            curve=[{"step": s, "loss": 3.0 - s / 50} for s in range(1, 51)], price_per_hour=2.0,
            reproduce_command="distilltune finetune --method lora", serve_command="distilltune serve --model big",
        ),
        StrategyResult(
            name="student-kd", kind="distill", description="student distilled from the fine-tuned teacher",
            eval=_eval(TIED, p95=tied_p95, mem=600.0, size=2e8), wall_s=600, steps=50, tokens=50000,
            curve=[{"step": s, "loss": 4.0 - s / 40, "eval_loss": 4.2 - s / 40} for s in range(1, 51)],
            price_per_hour=2.0, serve_command="distilltune serve --model runs/student-kd",
        ),
        StrategyResult(
            name="student-ft", kind="finetune", description="student fine-tuned on the labels",
            eval=_eval(WEAK, p95=900.0, mem=590.0, size=2e8), wall_s=500, price_per_hour=2.0,
        ),
    ]  # fmt: skip


# ---------------------------------------------------------------- Pareto and budgets


def test_pareto_front_on_hand_made_points():
    # (quality, -latency): maximise both.
    pts = {
        "a": (0.9, -4000),  # best quality
        "b": (0.8, -1000),  # good trade-off
        "c": (0.7, -1200),  # dominated by b
        "d": (0.5, -300),  # fastest
        "e": (0.8, -1000),  # equal to b: both stay
        "f": (None, -100),  # unmeasured quality counts as worst: dominated by nothing faster
    }
    assert pareto_front(pts) == {"a", "b", "d", "e", "f"}
    assert pareto_front({"x": (0.5, -1.0)}) == {"x"}
    assert pareto_front({}) == set()


def test_frontier_flags_per_plot_and_overall():
    cands = [
        Candidate("fast-big", 0.6, 500, 2000),
        Candidate("slow-small", 0.6, 2000, 500),
        Candidate("dominated", 0.5, 2500, 2500),
        Candidate("no-latency", 0.9, None, 400),
        Candidate("failed", None, 100, 100),
    ]
    f = frontier_flags(cands)
    assert f["fast-big"] == {"quality_latency": True, "quality_memory": False, "overall": True}
    assert f["slow-small"] == {"quality_latency": False, "quality_memory": False, "overall": True}
    assert f["dominated"] == {"quality_latency": False, "quality_memory": False, "overall": False}
    assert f["no-latency"] == {"quality_latency": False, "quality_memory": True, "overall": True}
    assert f["failed"] == {"quality_latency": False, "quality_memory": False, "overall": False}


def test_check_budgets_texts_and_shortfalls():
    b = Budgets(latency_p95_ms=2000, memory_mb=1000, min_quality=0.5)
    checks = check_budgets(Candidate("x", 0.4, 2500.0, 800.0), b)
    assert [c.budget for c in checks] == ["latency_p95_ms", "memory_mb", "min_quality"]
    assert [c.ok for c in checks] == [False, True, False]
    assert checks[0].text == "p95 2500 ms > 2000 ms"
    assert checks[1].text == "800 MB ≤ 1000 MB"
    assert checks[2].text == "quality 0.40 < 0.50"
    assert checks[0].shortfall == pytest.approx(0.25)
    assert checks[2].shortfall == pytest.approx(0.2)
    missing = check_budgets(Candidate("y", 0.9, None, 100.0), b)
    assert missing[0].ok is False and missing[0].text == "p95 latency not measured"
    assert check_budgets(Candidate("z", 0.9, 1.0, 1.0), Budgets()) == []


# ---------------------------------------------------------------- recommendation (decide, injected comparisons)


def _cmp(verdict):
    from distilltune.compare.stats import Interval

    return Comparison(40, 0.6, 0.65, Interval(-0.05, -0.1, 0.02), None, verdict)


def test_recommend_best_quality_within_budgets_when_nothing_is_tied():
    cands = [Candidate("a", 0.8, 3000, 900), Candidate("b", 0.7, 1000, 600), Candidate("c", 0.4, 900, 500)]
    rec = recommend(cands, Budgets(latency_p95_ms=2000), lambda x, y: _cmp("worse"))
    assert (rec.strategy, rec.rule, rec.meets_budgets, rec.anchor) == ("b", "best-within-budgets", True, "b")
    assert "best quality within budgets (0.70)" in rec.reason
    assert "the best overall, a (0.80), misses the latency budget (p95 3000 ms > 2000 ms)" in rec.reason


def test_recommend_prefers_the_cheaper_of_tied_strategies():
    cands = [Candidate("big", 0.75, 4000, 900), Candidate("small", 0.7, 1000, 600)]
    rec = recommend(cands, Budgets(latency_p95_ms=5000), lambda x, y: _cmp("tie"))
    assert (rec.strategy, rec.rule, rec.anchor, rec.tied_with_anchor) == (
        "small",
        "tied-and-cheaper",
        "big",
        ["small"],
    )
    assert "statistically tied with the best quality (0.70 vs 0.75 for big" in rec.reason
    assert "4.0× lower latency and 1.5× less memory" in rec.reason
    # Equal latency: memory breaks the tie.
    cands = [Candidate("big", 0.75, 1000, 900), Candidate("small", 0.7, 1000, 600)]
    assert recommend(cands, Budgets(), lambda x, y: _cmp("tie")).strategy == "small"


def test_recommend_nearest_frontier_point_when_no_budget_is_met():
    cands = [
        Candidate("big", 0.8, 4000, 900),  # shortfalls 7.0, 2.0 → 7.28
        Candidate("small", 0.6, 1000, 600),  # shortfalls 1.0, 1.0 → 1.41
        Candidate("worse-small", 0.5, 1100, 650),  # dominated by small
    ]
    rec = recommend(cands, Budgets(latency_p95_ms=500, memory_mb=300), lambda x, y: _cmp("worse"))
    assert (rec.strategy, rec.rule, rec.meets_budgets) == ("small", "nearest-to-budgets", False)
    assert rec.reason.startswith("No strategy meets every budget; small is the Pareto-frontier point nearest")
    assert "p95 1000 ms > 500 ms" in rec.reason and "600 MB > 300 MB" in rec.reason


def test_recommend_without_any_quality_recommends_nothing():
    rec = recommend([Candidate("x", None, 1, 1)], Budgets(), lambda x, y: _cmp("tie"))
    assert rec.strategy is None and rec.rule == "none" and not rec.meets_budgets


# ---------------------------------------------------------------- analyse (real statistics on hand-made items)


def test_analyse_ties_prefer_the_cheaper_strategy_with_numbers_in_the_reason():
    r = analyse(_strategies(), Budgets(latency_p95_ms=5000, memory_mb=2048, min_quality=0.5), "t")
    assert validate_report(r) == []
    rec = r["recommendation"]
    assert rec["strategy"] == "student-kd" and rec["rule"] == "tied-and-cheaper"
    assert rec["meets_budgets"] is True
    # 28/40 vs 30/40, 2 discordant items: exact McNemar p = 0.5, interval contains 0.
    assert (
        "student-kd meets every budget (p95 1000 ms ≤ 5000 ms, 600 MB ≤ 2048 MB, quality 0.70 ≥ 0.50)"
        in rec["reason"]
    )
    assert (
        "statistically tied with the best quality (0.70 vs 0.75 for teacher-lora, 95% CI of the difference −0."
        in rec["reason"]
    )
    assert "McNemar p = 0.50" in rec["reason"] and "4.0× lower latency" in rec["reason"]
    assert rec["training"] == {
        "wall_s": 600,
        "total_wall_s": None,  # the fixture's results carry no run graph
        "cost": pytest.approx(600 / 3600 * 2.0),
        "currency": "USD",
        "price_per_hour": 2.0,
    }
    assert rec["serve_command"] == "distilltune serve --model runs/student-kd"
    by = {s["name"]: s for s in r["strategies"]}
    assert by["teacher-lora"]["verdict_vs_best"] == "best"
    assert by["student-kd"]["verdict_vs_best"] == "tie"
    assert by["student-ft"]["verdict_vs_best"] == "worse"
    cmp = next(
        c for c in r["comparisons"] if c["strategy"] == "student-ft" and c["reference"] == "teacher-lora"
    )
    assert cmp["mcnemar"] == {
        "only_strategy_pass": 0,
        "only_reference_pass": 24,
        "p_value": pytest.approx(2 * 0.5**24),
        "method": "exact",
    }
    assert cmp["diff"] == pytest.approx(-0.6)
    ci = by["teacher-lora"]["quality"]["ci95"]
    assert ci[0] < 0.75 < ci[1]
    assert by["student-kd"]["training"]["curve"][0] == {"step": 1, "loss": 3.975, "eval_loss": 4.175}
    assert by["teacher-lora"]["budgets"]["checks"][0]["text"] == "p95 4000 ms ≤ 5000 ms"  # fmt: skip


def test_analyse_clear_winner_within_budgets():
    results = _strategies()
    results[1] = results[1].model_copy(update={"eval": _eval(WEAK, p95=1000.0, mem=600.0)})
    r = analyse(results, Budgets(latency_p95_ms=5000), "t")
    rec = r["recommendation"]
    assert (rec["strategy"], rec["rule"]) == ("teacher-lora", "best-within-budgets")
    assert "significantly ahead of" in rec["reason"]


def test_analyse_when_no_strategy_meets_the_budgets():
    r = analyse(_strategies(), Budgets(latency_p95_ms=500, memory_mb=300), "t")
    rec = r["recommendation"]
    assert rec["meets_budgets"] is False and rec["rule"] == "nearest-to-budgets"
    # student-ft: 900/500-1 = 0.8, 590/300-1 = 0.97 → 1.25; student-kd: 1.0, 1.0 → 1.41; teacher-lora: 7.3.
    assert rec["strategy"] == "student-ft"
    assert rec["reason"] == (
        "No strategy meets every budget; student-ft is the Pareto-frontier point nearest to them, with "
        "quality 0.15: it misses the latency and memory budgets (p95 900 ms > 500 ms, 590 MB > 300 MB)."
    )
    assert all(not s["budgets"]["meets"] for s in r["strategies"])
    # A budget the nearest point does meet is named too.
    r = analyse(_strategies(), Budgets(latency_p95_ms=500, memory_mb=4096), "t")
    assert r["recommendation"]["reason"].endswith("(p95 900 ms > 500 ms) and meets 590 MB ≤ 4096 MB.")


def test_failed_and_unmeasured_strategies_are_listed_not_recommended():
    results = _strategies()
    results.append(StrategyResult(name="blend", kind="blend", error="out of memory during distillation"))
    results[0] = results[0].model_copy(
        update={"eval": {"quality": {"primary": 0.99}}}
    )  # no latency, no items
    r = analyse(results, Budgets(latency_p95_ms=5000), "t")
    assert validate_report(r) == []
    by = {s["name"]: s for s in r["strategies"]}
    assert by["blend"]["verdict_vs_best"] == "unmeasured" and by["blend"]["error"]
    assert by["teacher-lora"]["budgets"]["checks"][0]["text"] == "p95 latency not measured"
    assert by["teacher-lora"]["quality"]["ci95"] is None
    assert by["student-kd"]["verdict_vs_best"] == "incomparable"  # no per-item scores on the best
    assert r["recommendation"]["strategy"] == "student-kd"


def test_duplicate_names_are_rejected():
    s = _strategies()
    with pytest.raises(ValueError, match="unique"):
        analyse([s[0], s[0]], Budgets(), "t")


def test_curve_from_metrics_keeps_numeric_step_rows():
    rows = [
        {"step": 1, "train_loss": 2.5, "lr": 1e-4, "phase": "train"},
        {"event": "start"},
        {"step": 2, "loss": 2.0, "eval_primary": 0.4, "ok": True, "nan": float("nan")},
        {"step": 3},
    ]
    assert curve_from_metrics(rows) == [
        {"step": 1, "loss": 2.5, "lr": 1e-4},
        {"step": 2, "loss": 2.0, "eval_primary": 0.4},
    ]


# ---------------------------------------------------------------- schema


def test_validate_report_lists_violations():
    r = analyse(_strategies(), Budgets(), "t", now=datetime(2025, 1, 1, tzinfo=UTC))
    assert r["generated_at"] == "2025-01-01T00:00:00+00:00"
    assert r["statistics"] == {
        "resamples": 2000,
        "confidence": 0.95,
        "alpha": 0.05,
        "seed": 0,
        "exact_below": 25,
    }
    assert validate_report(r) == []
    bad = copy.deepcopy(r)
    del bad["strategies"][0]["efficiency"]["latency_p95_ms"]
    bad["strategies"][1]["quality"]["primary"] = "high"
    bad["strategies"][2]["pareto"]["overall"] = 1
    bad["recommendation"]["strategy"] = "nope"
    bad["schema_version"] = 2
    bad["comparisons"][0]["diff"] = True
    problems = validate_report(bad)
    assert "$.strategies[0].efficiency.latency_p95_ms: required key is missing" in problems
    assert "$.strategies[1].quality.primary: expected number, found str" in problems
    assert "$.strategies[2].pareto.overall: expected boolean, found int" in problems
    assert "$.recommendation.strategy: 'nope' is not one of the strategies" in problems
    assert "$.schema_version: expected 1, found 2" in problems
    assert "$.comparisons[0].diff: expected number, found boolean" in problems
    assert validate_report([]) == ["$: expected an object, found list"]


# ---------------------------------------------------------------- the files


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    results = _strategies()
    results[0] = results[0].model_copy(
        update={
            "description": f"teacher {PLANT} fine-tuned",
            "eval": _eval(BIG, p95=4000.0, mem=900.0, size=2e6,
                          failures=[("adversarial", "adv-1", f"echoed {PLANT} | and a pipe")]),
        }
    )  # fmt: skip
    commands = {"compare": f"distilltune compare tasks/acme --out {out}", "evil": PLANT}
    report = build_report(results, Budgets(latency_p95_ms=2000, memory_mb=2048, min_quality=0.5),
                          f"acme {PLANT}", out, commands)  # fmt: skip
    return out, report


def test_build_report_writes_three_valid_files(built):
    out, report = built
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "report.md"]
    on_disk = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert validate_report(on_disk) == []
    assert on_disk == json.loads(json.dumps(report))
    assert on_disk["recommendation"]["strategy"] == "student-kd"
    lora = on_disk["strategies"][0]
    assert lora["behaviour"]["failures"] == [
        {"suite": "adversarial", "id": "adv-1", "reason": f"echoed {PLANT} | and a pipe; not_contains[0]",
         "kind": "injection", "route": "model"}
    ]  # fmt: skip
    assert lora["groundedness"] == {"grounded": 0.75, "supported": 0.9, "citations": 12.0}


def test_html_is_self_contained_and_leads_with_the_recommendation(built):
    out, report = built
    text = (out / "report.html").read_text(encoding="utf-8")
    # No external resources of any kind: no network URLs in src/href/url(), no scripts, no link tags.
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert not re.search(r"url\(\s*['\"]?\s*(?:https?:)?//", text, re.I)
    assert not re.search(r"<link\b|@import", text, re.I)
    assert "<script" not in text.lower()
    assert text.count('src="data:image/png;base64,') == 3  # trade-off, memory/size, training curves
    # The planted string appears only escaped (in the task name, a description, a failure, a command).
    assert text.count("&lt;script&gt;alert(") >= 4
    rec = report["recommendation"]
    assert html.escape(rec["reason"]) in text
    assert (
        text.index(html.escape(rec["reason"])) < text.index('id="strategies"') < text.index('id="tradeoffs"')
    )
    assert "distilltune serve --model runs/student-kd" in text
    assert "distilltune finetune --method lora" in text  # reproduce commands


def test_markdown_report_mirrors_the_numbers_and_escapes(built):
    out, report = built
    md = (out / "report.md").read_text(encoding="utf-8")
    # Code fences show their content literally; everywhere else HTML must be escaped.
    prose = re.sub(r"```bash\n.*?\n```", "", md, flags=re.S)
    assert "<script" not in prose
    assert "&lt;script>alert(" in prose
    assert f"```bash\n{PLANT}\n```" in md
    assert "\\| and a pipe" in md  # a pipe inside a cell does not break the table
    assert "**student-kd**" in md
    assert report["recommendation"]["reason"].replace("<", "&lt;") in md
    assert "```bash\ndistilltune serve --model runs/student-kd\n```" in md
    rows = [line for line in md.splitlines() if line.startswith("| student-kd (recommended)")]
    assert rows and "| 0.70 |" in rows[0]


def test_report_without_budgets_curves_or_efficiency_still_renders(tmp_path):
    results = [
        StrategyResult(name="a", kind="teacher", eval={"quality": {"primary": 0.5}}),
        StrategyResult(name="b", kind="distill", eval=_eval([1.0, 0.0, 1.0, 1.0])),
    ]
    report = build_report(results, Budgets(), "bare", tmp_path, {})
    assert validate_report(report) == []
    assert report["recommendation"]["strategy"] == "b"
    assert "no budgets were set" in report["recommendation"]["reason"]
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "No strategy logged a training curve." in text


@pytest.mark.slow
def test_html_renders_in_headless_chromium(built, tmp_path):
    """Install with: apt-get install -y --no-install-recommends chromium"""
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no chromium binary (apt-get install -y --no-install-recommends chromium)")
    out, _ = built
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,2400",
         f"--screenshot={shot}", (out / "report.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[:2] == (2400, 1280)
    # Rendered content, not a blank page: many distinct colours and a non-trivial spread.
    assert img[..., :3].std() > 0.05
    assert len({tuple(px) for px in (img[::16, ::16, :3] * 255).astype(int).reshape(-1, 3)}) > 50


def test_declared_concurrency_sets_the_latency_the_budget_is_checked_against():
    """With budgets.concurrency, latency columns and the budget use the concurrent measurement."""
    results = _strategies()
    for r, p95 in zip(results, (5400.0, 1300.0, 1100.0), strict=True):
        ev = copy.deepcopy(r.eval)
        samples = [p95 * f for f in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)]
        ev["efficiency"]["concurrent"] = {
            "concurrency": 4,
            "latency_ms": {"p50": p95 * 0.75, "p95": p95, "samples": samples},
            "requests_per_s": 3.5,
        }
        r.eval = ev
    r = analyse(results, Budgets(latency_p95_ms=5000, concurrency=4), "t")
    assert validate_report(r) == []
    by = {s["name"]: s for s in r["strategies"]}
    e = by["teacher-lora"]["efficiency"]
    assert (e["concurrency"], e["latency_p95_ms"], e["batch1_latency_p95_ms"]) == (4, 5400.0, 4000.0)
    assert e["latency_samples"] == pytest.approx([2700, 3240, 3780, 4320, 4860, 5400])
    assert e["requests_per_s"] == 3.5
    # At batch 1 teacher-lora met the budget (4000 ms); at the declared load it does not.
    assert by["teacher-lora"]["budgets"]["checks"][0]["text"] == "p95 at 4 concurrent 5400 ms > 5000 ms"
    assert r["recommendation"]["strategy"] != "teacher-lora"
    assert r["budgets"]["concurrency"] == 4
    from distilltune.compare.render import latency_note, render_markdown

    assert "with 4 requests in flight" in latency_note(r)
    assert "p95 latency at 4 concurrent requests ≤ 5000 ms" in render_markdown(r)
    # Without a declared concurrency nothing changes: batch-1 numbers, the plain label.
    plain = analyse(_strategies(), Budgets(latency_p95_ms=5000), "t")
    e = plain["strategies"][0]["efficiency"]
    assert (e["concurrency"], e["latency_p95_ms"], e["batch1_latency_p95_ms"]) == (1, 4000.0, 4000.0)
    assert "one request at a time" in latency_note(plain)
