"""Shipped configs stay valid: every configs/finetune-*.yaml resolves into a FinetuneConfig, and the
Accelerate launch configs name the distributed mode they promise."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distilltune.config import resolve_config
from distilltune.distill.config import DistillConfig
from distilltune.train.config import DEFAULT_LR, PRUNED_STUDENT_LR, FinetuneConfig, default_lr

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("finetune-*.yaml")), ids=lambda p: p.name)
def test_finetune_configs_validate(path):
    cfg = resolve_config(FinetuneConfig, path, {"output": "/tmp/unused"}, [])
    assert (CONFIGS.parent / cfg.task / "task.yaml").is_file(), "configs point at the bundled example task"
    assert cfg.resolved().train.lr == (cfg.train.lr or default_lr(cfg.method, cfg.model))


def test_default_lr_is_larger_for_a_freshly_pruned_student():
    def ft(model, method, **train):
        cfg = FinetuneConfig(task="t", model=model, method=method, output="o", train=train)
        return cfg.resolved().train.lr

    assert ft("teacher:n_layers=6", "full") == PRUNED_STUDENT_LR > DEFAULT_LR["full"]
    assert ft("smollm2-135m-instruct", "full") == DEFAULT_LR["full"]
    assert ft("teacher:n_layers=6", "lora") == DEFAULT_LR["lora"]
    assert ft("teacher:n_layers=6", "full", lr=3e-5) == 3e-5  # an explicit value always wins
    kd = DistillConfig(task="t", teacher="smollm2-135m-instruct", output="o")
    assert kd.resolved().train.lr == PRUNED_STUDENT_LR
    from_run = DistillConfig(task="t", teacher="x", student="runs/student-kd", output="o")
    assert from_run.resolved().train.lr < PRUNED_STUDENT_LR


def test_shipped_finetune_configs_exist():
    names = {p.name for p in CONFIGS.glob("finetune-*.yaml")}
    assert {"finetune-lora.yaml", "finetune-full.yaml"} <= names


@pytest.mark.parametrize(
    "name,kind", [("ddp.yaml", "MULTI_GPU"), ("fsdp.yaml", "FSDP"), ("deepspeed.yaml", "DEEPSPEED")]
)
def test_accelerate_configs(name, kind):
    data = yaml.safe_load((CONFIGS / "accelerate" / name).read_text())
    assert data["distributed_type"] == kind and data["num_processes"] >= 1
    if kind == "DEEPSPEED":
        # accumulation and clipping belong to distilltune's loop
        assert data["deepspeed_config"]["gradient_accumulation_steps"] == 1
