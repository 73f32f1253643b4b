"""Wall time of ``distilltune demo`` (the main job) as a first run: the target is ≤ 15 minutes on 2 cores.

"First run" means nothing is cached: a fresh ``DISTILLTUNE_HOME`` (so the bundled teacher is
dequantized again, the retrieval index and the teacher's top-k cache are built again) and a fresh
output directory. The package install is not timed (``make demo`` installs once, then runs this job).

The result records the total wall time, each stage's wall time (from the run's ``stage_times.json``),
the machine's load average before and after (a busy machine makes the number meaningless: run it
with nothing else going on), the preset, and the recommendation the report made.

    python benchmarks/demo.py                 # writes results/demo.json
    python benchmarks/demo.py --keep DIR      # keep the run (report.html etc.) in DIR
    python benchmarks/demo.py --preset full --name full --keep DIR [--resume]
        # the reference run: results/full.json plus results/full/ (report.md, report.json,
        # stage_times.json); --resume continues an interrupted run in DIR (its cache home is DIR.home)
        # and adds the earlier invocations' wall time

Only the quick preset has a wall-time target (15 minutes); the full preset's time is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result

TARGET_S = 15 * 60


def _preset(config_yaml: Path) -> dict:
    """The resolved compare settings the run used (the preset with any overrides applied)."""
    import yaml

    cfg = yaml.safe_load(config_yaml.read_text())
    keep = ("preset", "seed", "train_limit", "eval_limit", "behaviour_limit", "max_new_tokens", "steps",
            "max_length", "teacher_lora", "teacher_lora_lr", "student", "student_layers", "seqkd_prompts",
            "seqkd_max_new_tokens", "efficiency_prompts", "efficiency_time_budget_s")  # fmt: skip
    return {k: cfg.get(k) for k in keep}


WALL_FILE = "bench_wall.json"  # wall time of earlier, interrupted invocations (--resume)


def run(out: Path, home: Path, extra: list[str], preset: str = "quick") -> dict:
    env = dict(os.environ, DISTILLTUNE_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "distilltune", "demo", "--preset", preset, "--output", str(out), *extra]
    print("[bench] $", " ".join(cmd[2:]), flush=True)
    earlier = _json(out / WALL_FILE) or {"seconds": 0.0, "invocations": 0}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    while True:  # keep the wall time on disk, so a killed run still counts when it is resumed
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        wall = time.perf_counter() - t0 + earlier["seconds"]
        if out.is_dir():
            done = {"seconds": wall, "invocations": earlier["invocations"] + 1}
            (out / WALL_FILE).write_text(json.dumps(done))
        if proc.returncode is not None:
            break
    if proc.returncode != 0:
        raise SystemExit(f"distilltune demo failed with exit status {proc.returncode}")
    report = json.loads((out / "report.json").read_text())
    stages = json.loads((out / "stage_times.json").read_text())
    rec = report.get("recommendation") or {}
    return {
        "wall_seconds": round(wall, 1),
        "invocations": earlier["invocations"] + 1,
        "target_seconds": TARGET_S if preset == "quick" else None,
        "meets_target": wall <= TARGET_S if preset == "quick" else None,
        "stage_seconds": {k: round(v, 1) for k, v in stages.items()},
        "stage_seconds_sum": round(sum(stages.values()), 1),
        "outside_stages_seconds": round(wall - sum(stages.values()), 1),
        "load_avg_1m_before": round(load_before[0], 2),
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
        "preset": _preset(out / "config.yaml"),
        "overrides": extra,
        "recommendation": {
            k: rec.get(k)
            for k in (
                "strategy",
                "rule",
                "reason",
                "tied_with_anchor",
                "still_tied",
                "stability",
                "separation",
            )
        },
        "real_differences": [
            {k: c[k] for k in ("score", "strategy", "reference", "diff", "diff_ci95", "verdict")}
            for c in report.get("pairwise", [])
            if c["verdict"] in ("better", "worse")
        ],
        "student_layers": _json(out / "student_layers.json"),
        "strategies": {s["name"]: _strategy(out, s) for s in report.get("strategies", [])},
    }


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _strategy(out: Path, s: dict) -> dict:
    """The aggregates the report holds, plus what a reader wants to see: routes and sample answers."""
    q, e = s.get("quality") or {}, s.get("efficiency") or {}
    keys = ("primary", "ci95", "model_primary", "fact_recall", "fact_recall_graded", "answer_nll",
            "answer_nll_ci95", "guard_answered_share", "refusal_accuracy")  # fmt: skip
    items = [json.loads(x) for x in (out / "evals" / s["name"] / "items.jsonl").read_text().splitlines()]
    evals = [r for r in items if r.get("suite") == "eval"]
    routes: dict[str, int] = {}
    for r in evals:
        routes[r["route"]] = routes.get(r["route"], 0) + 1
    answered = [r for r in evals if not r.get("expected_refusal")]
    seq = _json(out / "runs" / s["name"] / "sequence" / "summary.json")
    return {
        **{k: q.get(k) for k in keys},
        "p95_ms": e.get("latency_p95_ms"),
        "p95_ci95_ms": e.get("latency_p95_ci95"),
        "timed_requests": len(e.get("latency_samples") or []),
        "peak_rss_mb": e.get("peak_rss_mb"),
        "decode_tok_s": e.get("decode_tok_s"),
        "training_s": (s.get("training") or {}).get("wall_s"),
        "eval_routes": routes,
        "refused": sum(bool(r.get("refused")) for r in evals),
        "over_refused": sum(bool(r.get("refused")) for r in answered),
        "sequence_kd_kept": None
        if seq is None
        else {k: seq.get(k) for k in ("prompts", "kept", "kept_share", "dropped_by_reason")},
        "samples": [
            {
                "id": r["id"],
                "reference": r.get("reference"),
                "answer": r.get("answer"),
                "facts": r.get("facts"),
                "fact_recall": r.get("fact_recall"),
                "route": r.get("route"),
            }
            for r in answered[:3]
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="run in this (new) directory and keep it")
    ap.add_argument("--name", default="demo", help="results/<name>.json")
    ap.add_argument("--preset", default="quick", choices=["quick", "full"])
    ap.add_argument("--resume", action="store_true", help="continue an interrupted run in --keep DIR")
    ap.add_argument("overrides", nargs="*", help="passed to distilltune demo (key=value)")
    a = ap.parse_args()
    if a.resume and not a.keep:
        raise SystemExit("--resume needs --keep DIR (the interrupted run's directory)")
    with tempfile.TemporaryDirectory(prefix="dt-demo-") as tmp:
        out = a.keep or Path(tmp) / "demo-output"
        if out.exists() and any(out.iterdir()) and not a.resume:
            raise SystemExit(f"{out} is not empty: a first run needs a fresh output directory")
        home = out.with_name(out.name + ".home") if a.keep else Path(tmp) / "home"
        res = run(out, home, a.overrides, a.preset)
        if a.preset != "quick":  # the reference run's report is evidence in its own right
            dest = Path(__file__).resolve().parent / "results" / a.name
            dest.mkdir(parents=True, exist_ok=True)
            for f in ("report.md", "report.json", "stage_times.json", "student_layers.json", "config.yaml"):
                if (out / f).is_file():
                    shutil.copy2(out / f, dest / f)
    path = write_result(a.name, res)
    print(json.dumps({k: res[k] for k in ("wall_seconds", "meets_target", "recommendation")}, indent=2))
    print(f"[bench] wrote {path}")


if __name__ == "__main__":
    main()
