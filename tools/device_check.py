"""Check the Accelerate/CUDA path on a GPU machine: fine-tune, distill (cached and online), reload, generate.

Nothing in the project depends on a GPU; this script is how the CUDA path gets exercised when one is
at hand. It builds tiny Llama models in-process (the tokenizer directory is passed in, so nothing is
downloaded and the bundled GGUF is not needed), then on the tiny task card:

1. parity: the first-step loss of full fine-tuning in fp32 on CPU and on CUDA (same seed and data);
2. LoRA fine-tune of the tiny teacher on CUDA with bf16 autocast (the default there);
3. cached top-k KD from that teacher into a depth-pruned student, then online KD, both on CUDA;
4. reload of each artifact and a greedy answer on CUDA.

It writes ``device_check.json`` (device, versions, losses, peak GPU memory, checks passed) to --out and
exits non-zero when a check fails.

    python tools/device_check.py --tokenizer DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))
from tiny_models import build_tiny_llama  # noqa: E402

TINY_TASK = REPO / "tests" / "data" / "tiny-task"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def reset_peak() -> None:

    import torch

    if _cuda():
        torch.cuda.reset_peak_memory_stats()


def peak_gpu_mb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if _cuda() else None


def first_loss(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return next(r["loss"] for r in rows if r.get("type", "train") == "train" and "loss" in r)


def answer(ref: str, teacher: str | None = None) -> str:
    import torch

    from distilltune.models import load_model
    from distilltune.models.generate import generate_chat

    loaded = load_model(ref, teacher=teacher)
    dev = "cuda" if _cuda() else "cpu"  # cpu: a dry run of this script on a machine without a GPU
    loaded.model.to(dev)
    assert next(loaded.model.parameters()).device.type == dev
    with torch.no_grad():
        out = generate_chat(
            loaded.model,
            loaded.tokenizer,
            [[{"role": "user", "content": "How long do refunds take?"}]],
            max_new_tokens=8,
        )
    return out[0].text if hasattr(out[0], "text") else str(out[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, help="where the runs go (default: OUT/work)")
    a = ap.parse_args()

    import torch

    from distilltune.distill.config import DistillConfig
    from distilltune.distill.distill import run_distill
    from distilltune.train.config import FinetuneConfig, TrainSettings
    from distilltune.train.finetune import run_finetune
    from distilltune.train.progress import SilentReporter

    work = a.work or a.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {
        "cuda": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "peft", "accelerate")},
        "checks": {},
    }
    ok = True

    def check(name: str, fn):
        nonlocal ok
        t0 = time.perf_counter()
        try:
            value = fn()
            res["checks"][name] = {"ok": True, "seconds": round(time.perf_counter() - t0, 2), "value": value}
        except Exception as e:  # report every check, then fail at the end
            ok = False
            res["checks"][name] = {
                "ok": False,
                "error": f"{type(e).__name__}: {e}",
                "trace": traceback.format_exc(),
            }
        print(name, json.dumps(res["checks"][name])[:400], flush=True)

    teacher = build_tiny_llama(a.tokenizer, work / "teacher", layers=4, hidden=64, seed=1)
    train = {"max_steps": 4, "batch_size": 2, "eval_every": 0, "eval_samples": 0, "save_every": 2, "seed": 0}

    def parity():
        losses = {}
        for dev, precision in (("cpu", "fp32"), ("cuda", "fp32")):
            cfg = FinetuneConfig(
                task=str(TINY_TASK),
                model=str(teacher),
                method="full",
                output=str(work / f"parity-{dev}"),
                train=TrainSettings(**train, precision=precision, lr=1e-4),
            )
            if dev == "cpu":
                # Accelerate reads the visible devices when it starts: force the CPU path explicitly.
                import accelerate.state

                accelerate.state.AcceleratorState._reset_state(True)
                orig = torch.cuda.is_available
                torch.cuda.is_available = lambda: False
                try:
                    run_finetune(cfg, reporter=SilentReporter())
                finally:
                    torch.cuda.is_available = orig
                    accelerate.state.AcceleratorState._reset_state(True)
            else:
                run_finetune(cfg, reporter=SilentReporter())
            losses[dev] = first_loss(work / f"parity-{dev}")
        assert math.isclose(losses["cpu"], losses["cuda"], rel_tol=1e-3), losses
        return losses

    def lora_bf16():
        reset_peak()
        cfg = FinetuneConfig(
            task=str(TINY_TASK),
            model=str(teacher),
            method="lora",
            output=str(work / "teacher-lora"),
            train=TrainSettings(**train),
        )
        run_finetune(cfg, reporter=SilentReporter())
        loss = first_loss(work / "teacher-lora")
        assert math.isfinite(loss)
        return {"first_loss": loss, "peak_gpu_mb": peak_gpu_mb()}  # precision "auto": bf16 on a GPU

    def distill(mode: str):
        def fn():
            reset_peak()
            extra = {"sequence": {"max_new_tokens": 8}} if mode == "sequence" else {}
            cfg = DistillConfig(
                **extra,
                task=str(TINY_TASK),
                teacher=str(work / "teacher-lora"),
                student="teacher:n_layers=2",
                output=str(work / f"student-{mode}"),
                mode=mode,
                kd={"top_k": 8},
                cache={"dir": str(work / "cache")},
                train=TrainSettings(**train),
            )
            run_distill(cfg, reporter=SilentReporter())
            loss = first_loss(work / f"student-{mode}")
            assert math.isfinite(loss)
            return {"first_loss": loss, "peak_gpu_mb": peak_gpu_mb()}

        return fn

    check("parity_cpu_vs_cuda_fp32", parity)
    check("lora_finetune_bf16", lora_bf16)
    check("distill_cached", distill("cached"))
    check("distill_online", distill("online"))
    check("distill_sequence", distill("sequence"))
    check("reload_and_generate_student", lambda: answer(str(work / "student-cached")))
    check("reload_and_generate_teacher_lora", lambda: answer(str(work / "teacher-lora")))
    res["ok"] = ok
    (a.out / "device_check.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
