"""``run_finetune(cfg)``: supervised fine-tuning as a recipe of the one run setup (``train.run``).

Fine-tuning adds nothing to the shared sequence (check, data, model and method, loop, artifacts):
the model trains on the task's own conversations with the ``causal-lm`` objective.
"""

from __future__ import annotations

from pathlib import Path

from distilltune.train.artifacts import model_card
from distilltune.train.config import FinetuneConfig
from distilltune.train.progress import Reporter
from distilltune.train.run import load_run_config, run_training


class FinetuneRecipe:
    """Fine-tuning in ``train.run``'s terms (see ``train.run.Recipe``)."""

    kind = "finetune"
    verb = "fine-tune"
    model_field = "model"

    def method_config(self, cfg: FinetuneConfig) -> FinetuneConfig:
        return cfg

    def check(self, cfg, skeleton, tokenizer) -> list:
        return []

    def reusable(self, out: Path) -> bool:
        return False

    def conversations(self, ctx):
        return ctx.task.train

    def prepare(self, ctx) -> None:
        return None

    def objective(self, cfg) -> str:
        return "causal-lm"

    def finish(self, ctx, result) -> None:
        return None

    def summary(self, ctx) -> dict:
        return {"method": ctx.cfg.method, "model": ctx.cfg.model}

    def card(self, cfg, summary: dict, task) -> str:
        return model_card(cfg, summary, task)


def run_finetune(cfg: FinetuneConfig, resume: bool = False, reporter: Reporter | None = None) -> Path:
    """Fine-tune ``cfg.model`` on ``cfg.task`` with ``cfg.method``; returns the run directory."""
    return run_training(cfg, FinetuneRecipe(), resume, reporter)


def load_finetune_config(
    config_file: str | Path | None, cli_values: dict, overrides: list[str] | None, resume: bool = False
) -> FinetuneConfig:
    """The CLI's config: type errors and task/model problems reported together (``train.run``)."""
    return load_run_config(FinetuneConfig, FinetuneRecipe(), config_file, cli_values, overrides, resume)
