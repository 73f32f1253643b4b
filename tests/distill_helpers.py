"""Shared by the distillation tests: fast loop settings, a DistillConfig builder, loading an artifact."""

from __future__ import annotations

from pathlib import Path

from distilltune.distill.config import DistillConfig

FAST_TRAIN = {
    "max_steps": 3,
    "batch_size": 4,
    "warmup_steps": 0,
    "eval_every": 0,
    "eval_samples": 2,
    "eval_loss_items": 5,
    "eval_max_new_tokens": 4,
    "save_every": 0,
    "max_length": 128,
}


def distill_cfg(task, teacher, out, **kw) -> DistillConfig:
    data = {
        "task": str(task),
        "teacher": str(teacher),
        "student": "teacher:n_layers=2",
        "output": str(out),
        "train": {**FAST_TRAIN, **kw.pop("train", {})},
        "cache": {"dir": str(Path(out).parent / "cache"), **kw.pop("cache", {})},
        **kw,
    }
    return DistillConfig.model_validate(data)


def load_artifact(out: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(out / "model"))
