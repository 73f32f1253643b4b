"""Training: the one run setup, the one explicit loop (Accelerate), objectives, PEFT methods, artifacts.

Fine-tuning and distillation are recipes of ``run_training`` (``distilltune.train.run``) and share
``train_loop``; they differ only in the objective they plug in (see ``distilltune.train.loop`` for the
usage and the objective contract).
"""

from __future__ import annotations

from typing import Any

__all__ = ["FinetuneConfig", "TrainSettings", "run_finetune", "run_training", "train_loop"]


def __getattr__(name: str) -> Any:  # keep `import distilltune.train.config` cheap
    if name in ("FinetuneConfig", "TrainSettings"):
        from distilltune.train import config

        return getattr(config, name)
    if name == "train_loop":
        from distilltune.train.loop import train_loop

        return train_loop
    if name == "run_training":
        from distilltune.train.run import run_training

        return run_training
    if name == "run_finetune":
        from distilltune.train.finetune import run_finetune

        return run_finetune
    raise AttributeError(name)
