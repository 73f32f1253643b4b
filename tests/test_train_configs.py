"""Shipped configs stay valid: every configs/finetune-*.yaml resolves into a FinetuneConfig, and the
Accelerate launch configs name the distributed mode they promise."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distilltune.config import resolve_config
from distilltune.train.config import DEFAULT_LR, FinetuneConfig

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("finetune-*.yaml")), ids=lambda p: p.name)
def test_finetune_configs_validate(path):
    cfg = resolve_config(FinetuneConfig, path, {"output": "/tmp/unused"}, [])
    assert (CONFIGS.parent / cfg.task / "task.yaml").is_file(), "configs point at the bundled example task"
    assert cfg.resolved().train.lr == (cfg.train.lr or DEFAULT_LR[cfg.method])


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
