"""Training: the one explicit loop (Accelerate), objectives, PEFT methods, checkpoints, artifacts.

Fine-tuning and distillation share ``train_loop`` and differ only in the objective they plug in
(see ``distilltune.train.loop`` for the usage and the objective contract).
"""

from __future__ import annotations

from typing import Any

__all__ = ["FinetuneConfig", "TrainSettings", "run_finetune", "train_loop"]


def __getattr__(name: str) -> Any:  # keep `import distilltune.train.config` cheap
    if name in ("FinetuneConfig", "TrainSettings"):
        from distilltune.train import config

        return getattr(config, name)
    if name == "train_loop":
        from distilltune.train.loop import train_loop

        return train_loop
    if name == "run_finetune":
        from distilltune.train.finetune import run_finetune

        return run_finetune
    raise AttributeError(name)
