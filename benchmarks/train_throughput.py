"""Training throughput of the product loop: tokens/s, s/step, MFU, peak RSS; full fine-tuning vs LoRA.

Configurations: the bundled teacher (SmolLM2-135M, 30 layers) and a 6-layer student
(layers 0,1,2,27,28,29) × full fine-tuning and LoRA (r=8 on q_proj, v_proj), batch 8 × 128 tokens
(acme-support training conversations, prompts cut from the left to exactly 128 tokens), fp32.
Each configuration runs in its own subprocess through ``distilltune.train.loop.train_loop`` itself
(the same code ``distilltune finetune`` runs: loss-position logits, AdamW, clipping, schedule), so
peak RSS is per configuration. The first ``--warmup`` steps are not timed.

MFU = the step's training FLOPs ÷ step time ÷ the fp32 matmul peak measured in the same run (n=2048
GEMM, best of 7). The FLOPs (``distilltune.train.flops.training_flops``) follow PaLM's accounting
(Chowdhery et al. 2022, "PaLM: Scaling Language Modeling with Pathways", Appendix B: 6·N + 12·L·H·Q·T
per trained token, N the non-embedding parameters, attention over the full T×T), corrected for how
this loop runs:

    FLOPs/step = 6 · N_trained · B·T  +  4 · N_frozen · B·T          (decoder matmuls, no embeddings)
               + (6 or 4) · d · V · P                               (vocabulary head at the P loss
                                                                     positions only: the loop computes
                                                                     logits for labelled positions)
               + 12 · L · H · Q · B · T²                             (attention scores and AV)

(4 for frozen weights: LoRA's base weights need no weight gradient.) The total equals torch's
``FlopCounterMode`` count of a real training step (``tests/test_train_flops.py``).
``flops_per_step`` holds the terms. ``mfu_legacy_6n_total_params`` is the formula this script used
before (6 × *all* parameters, embedding included, × every token, no attention): kept only so older
results files can be compared; it is not a utilisation figure.

Targets (issue #4): full fine-tuning ≥ 60 % MFU; LoRA step ≤ 0.5 × the full step of the same model.

    python benchmarks/train_throughput.py            # 2 warm-up + 20 timed steps each (minutes)
    python benchmarks/train_throughput.py --quick    # 1 warm-up + 2 timed steps per configuration
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import matmul_peak_gflops, peak_rss_mb, reexec_with_tuned_allocator, write_result

TEACHER = "smollm2-135m-instruct"
STUDENT_LAYERS = "0,1,2,27,28,29"


def models(teacher: str) -> dict[str, str]:
    return {"teacher": teacher, "student6": f"{teacher}:layers={STUDENT_LAYERS}"}


METHODS = ("full", "lora")
TASK = Path(__file__).resolve().parent.parent / "examples" / "acme-support"


def one(teacher: str, model_key: str, method: str, batch: int, seq: int, warmup: int, steps: int) -> dict:
    """Run one configuration in this process; return its measurements."""
    import torch

    from distilltune.models import load_model
    from distilltune.runtime import set_threads
    from distilltune.task import load_task
    from distilltune.train.config import FinetuneConfig
    from distilltune.train.data import build_examples
    from distilltune.train.flops import training_flops
    from distilltune.train.loop import train_loop
    from distilltune.train.methods import apply_method
    from distilltune.train.objectives import causal_lm_objective

    threads = set_threads()
    task = load_task(TASK)
    cfg = FinetuneConfig(
        task=str(TASK),
        model=models(teacher)[model_key],
        method=method,
        output="unused",
        train={
            "max_steps": warmup + steps,
            "batch_size": batch,
            "warmup_steps": 0,
            "eval_every": 0,
            "save_every": 0,
            "precision": "fp32",
        },
    )
    torch.manual_seed(0)
    loaded = load_model(cfg.model, trainable=True)
    model = apply_method(loaded.model, cfg)
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    examples, _ = build_examples(task.train, loaded.tokenizer, task.system_prompt, max_length=seq)
    examples = [e for e in examples if len(e.input_ids) == seq]
    if len(examples) < batch:
        raise SystemExit(f"only {len(examples)} examples reach {seq} tokens")
    loss_tokens = statistics.mean(e.n_loss_tokens for e in examples)
    flops = training_flops(model, batch, seq, batch * loss_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        result = train_loop(
            model=model,
            examples=examples,
            objective=causal_lm_objective,
            settings=cfg.train,
            lr=cfg.lr(),
            run_dir=tmp,
            pad_id=loaded.tokenizer.pad_token_id,
        )
    device = str(next(result.model.parameters()).device)
    timed = [r["step_s"] for r in result.history if r["type"] == "train"][warmup:]
    step_s = statistics.median(timed)
    return {
        "model": model_key,
        "model_ref": models(teacher)[model_key],
        "method": method,
        "params": n_params,
        "trainable_params": n_trainable,
        "batch": batch,
        "seq": seq,
        "tokens_per_step": batch * seq,
        "mean_loss_tokens_per_example": round(loss_tokens, 1),
        "timed_steps": len(timed),
        "step_s": step_s,
        "step_s_all": timed,
        "tokens_per_s": batch * seq / step_s,
        "flops_per_step": flops,
        "train_flops_per_s": flops["total"] / step_s,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "threads": threads,
        "device": device,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 warm-up and 2 timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--steps", type=int, default=20, help="timed steps per configuration (>= 20 for the record)"
    )
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--models", default="teacher,student6")
    ap.add_argument(
        "--teacher",
        default=TEACHER,
        help="teacher reference (default: the bundled model; a directory with the same architecture and "
        "random weights measures the same speed)",
    )
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--name", default="train_throughput", help="results/<name>.json")
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.warmup, args.steps = 1, 2

    reexec_with_tuned_allocator()
    if args.one:
        res = one(args.teacher, args.one[0], args.one[1], args.batch, args.seq, args.warmup, args.steps)
        print("RESULT " + json.dumps(res), flush=True)
        return

    from distilltune.runtime import set_threads

    set_threads()
    peak_before = matmul_peak_gflops()
    runs = []
    for model_key in args.models.split(","):
        for method in args.methods.split(","):
            cmd = [
                sys.executable,
                __file__,
                "--one",
                model_key,
                method,
                "--warmup",
                str(args.warmup),
                "--steps",
                str(args.steps),
                "--batch",
                str(args.batch),
                "--seq",
                str(args.seq),
                "--teacher",
                args.teacher,
            ]
            print(f"[bench] {model_key} {method} ...", file=sys.stderr, flush=True)
            # CPU throughput is the target here: hide any GPU from the measured process
            env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
            if p.returncode != 0 or not lines:
                raise SystemExit(f"{model_key} {method} failed:\n{p.stderr[-3000:]}")
            r = json.loads(lines[-1][len("RESULT ") :])
            print(
                f"[bench]   {r['step_s']:.3f} s/step, {r['tokens_per_s']:.0f} tok/s, "
                f"peak RSS {r['peak_rss_mb']:.0f} MB",
                file=sys.stderr,
                flush=True,
            )
            runs.append(r)
    peak_after = matmul_peak_gflops()
    peak = max(peak_before, peak_after)
    for r in runs:
        r["mfu"] = r["train_flops_per_s"] / (peak * 1e9)
        r["mfu_legacy_6n_total_params"] = 6 * r["params"] * r["tokens_per_s"] / (peak * 1e9)

    targets = []
    for model_key in {r["model"] for r in runs}:
        by = {r["method"]: r for r in runs if r["model"] == model_key}
        if "full" in by:
            targets.append(
                {
                    "name": f"{model_key}: full fine-tuning MFU >= 0.60",
                    "value": round(by["full"]["mfu"], 3),
                    "met": by["full"]["mfu"] >= 0.60,
                }
            )
        if "full" in by and "lora" in by:
            ratio = by["lora"]["step_s"] / by["full"]["step_s"]
            targets.append(
                {
                    "name": f"{model_key}: LoRA step <= 0.5 x full step",
                    "value": round(ratio, 3),
                    "met": ratio <= 0.5,
                }
            )
    data = {
        "quick": args.quick,
        "teacher": args.teacher,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "mfu_formula": "PaLM App. B accounting: 6*N_trained*BT + 4*N_frozen*BT + (6|4)*d*V*P_loss + "
        "12*L*H*Q*B*T^2, over the fp32 matmul peak (see the script's docstring)",
        "matmul_peak_gflops": {"before": peak_before, "after": peak_after, "used": peak},
        "runs": runs,
        "targets": targets,
    }
    path = write_result(args.name, data)
    for t in targets:
        print(f"[bench] {'MET ' if t['met'] else 'MISS'} {t['name']}: {t['value']}", file=sys.stderr)
    print(path)


if __name__ == "__main__":
    main()
