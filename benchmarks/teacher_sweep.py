"""Sweep the quick preset's teacher adaptation: which fine-tune moves held-out quality within minutes?

Every variant trains the bundled teacher on the demo's own task view (acme-support, quick preset:
160 train conversations with retrieved context, the same 32 eval items) and is then evaluated the way
``compare`` evaluates (guard → retrieval → model → guard, greedy, 48 new tokens). Reported per variant:
wall time of the training stage, peak RSS of the training process, held-out answer cross-entropy,
primary score and fact recall, and the paired bootstrap CI + McNemar test of the primary score against
the untrained teacher. The chosen quick-preset recipe (compare/strategies) cites this file.

    python benchmarks/teacher_sweep.py [--variants lora-qv-r8,lora-all-r16-2e-3,...] [--output DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, write_result
from distilltune.compare.config import ALL_LINEAR

VARIANTS: dict[str, dict] = {
    # the first wave's quick preset: 12 updates, q/v, rank 8, lr 2e-4
    "lora-qv-r8-12": {"method": "lora", "steps": 12, "lr": 2e-4, "lora": {"r": 8, "alpha": 16}},
    "lora-all-r16-1e-3-24": {
        "method": "lora",
        "steps": 24,
        "lr": 1e-3,
        "lora": {"r": 16, "alpha": 32, "target_modules": ALL_LINEAR},
    },
    "lora-all-r16-2e-3-24": {
        "method": "lora",
        "steps": 24,
        "lr": 2e-3,
        "lora": {"r": 16, "alpha": 32, "target_modules": ALL_LINEAR},
    },
    "lora-all-r16-1e-3-40": {
        "method": "lora",
        "steps": 40,
        "lr": 1e-3,
        "lora": {"r": 16, "alpha": 32, "target_modules": ALL_LINEAR},
    },
    "full-1e-4-24": {"method": "full", "steps": 24, "lr": 1e-4},
}


def _train(view: Path, out: Path, name: str, v: dict, batch: int, max_length: int, seed: int) -> dict:
    """Run one variant in a child process (so its peak RSS is its own) and time it."""
    args = [
        sys.executable, "-m", "distilltune", "finetune", "--task", str(view), "--model",
        "smollm2-135m-instruct", "--method", v["method"], "--output", str(out / "runs" / name), "--quiet",
        "rag=true", "retrieval.k=2", "retrieval.max_context_tokens=192",
        f"train.max_steps={v['steps']}", f"train.batch_size={batch}", f"train.lr={v['lr']}",
        f"train.max_length={max_length}", f"train.warmup_steps={max(1, v['steps'] // 10)}",
        "train.eval_every=0", "train.eval_samples=0", "train.eval_loss_items=32",
        "train.select_metric=eval_loss", f"train.save_every={v['steps']}", "train.keep_last=1",
        f"train.seed={seed}",
    ]  # fmt: skip
    for key, value in v.get("lora", {}).items():
        args.append(f"lora.{key}={json.dumps(value) if isinstance(value, list) else value}")
    t0 = time.perf_counter()
    subprocess.run(args, check=True)
    wall = time.perf_counter() - t0
    summary = json.loads((out / "runs" / name / "train_summary.json").read_text())
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"train_wall_s": wall, "summary": summary, "children_peak_rss_mb": rss}


def _evaluate(view: Path, out: Path, name: str, model: str) -> dict:
    from distilltune.evaluation.config import EfficiencySettings, EvaluateConfig
    from distilltune.evaluation.evaluate import evaluate
    from distilltune.retrieval.config import RetrievalConfig

    cfg = EvaluateConfig(
        model=model,
        task=str(view),
        output=str(out / "evals" / name),
        behaviour=False,
        max_new_tokens=48,
        retrieval=RetrievalConfig(k=2, max_context_tokens=192),
        efficiency=EfficiencySettings(enabled=False),
    )
    t0 = time.perf_counter()
    result = evaluate(cfg, log=lambda m: print(f"  [{name}] {m}", flush=True))
    return {"eval_wall_s": time.perf_counter() - t0, "eval": result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--output", default="/tmp/teacher-sweep")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=448)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="teacher_sweep")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from distilltune.compare.config import CompareConfig
    from distilltune.compare.run import prepare_view
    from distilltune.compare.stats import compare_items

    out = Path(a.output)
    cfg = CompareConfig(task=str(REPO / "examples" / "acme-support"), output=str(out), seed=a.seed)
    view = prepare_view(cfg, out)
    base = _evaluate(view, out, "teacher", "smollm2-135m-instruct")
    rows: dict[str, dict] = {}
    for name in a.variants.split(","):
        v = VARIANTS[name]
        print(f"== {name}: {v}", flush=True)
        tr = _train(view, out, name, v, a.batch, a.max_length, a.seed)
        ev = _evaluate(view, out, name, str(out / "runs" / name))
        cmp = compare_items(ev["eval"]["per_item"], base["eval"]["per_item"])
        q = ev["eval"]["quality"]
        rows[name] = {
            "recipe": v,
            "train_wall_s": round(tr["train_wall_s"], 1),
            "eval_loss": (tr["summary"].get("last_eval") or {}).get("eval_loss"),
            "primary": q["primary"],
            "fact_recall": q["fact_recall"],
            "vs_base": cmp.to_dict(),
            "train_summary": {
                k: tr["summary"].get(k) for k in ("final_step", "train_seconds", "tokens_per_s")
            },
        }
        print(
            json.dumps(
                {name: {k: rows[name][k] for k in ("train_wall_s", "eval_loss", "primary", "fact_recall")}}
            ),
            flush=True,
        )
    bq = base["eval"]["quality"]
    write_result(
        a.name,
        {
            "task": f"examples/acme-support (quick view: 160 train, 32 eval, seed {a.seed})",
            "batch": a.batch,
            "max_length": a.max_length,
            "base": {"primary": bq["primary"], "fact_recall": bq["fact_recall"]},
            "variants": rows,
        },
    )


if __name__ == "__main__":
    main()
