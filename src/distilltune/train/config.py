"""Typed settings of the training loop and of ``distilltune finetune``.

``TrainSettings`` is shared by fine-tuning and distillation (the distiller embeds it as ``train:``);
``FinetuneConfig`` adds the task, the model and the method with its own section (``lora:``,
``prefix:``, ``ia3:``, ``adapter:``). Every key is overridable on the command line as
``train.lr=1e-4``; the resolved config (``config.yaml`` in the run dir) re-runs as is with ``--config``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distilltune.config import StrictModel
from distilltune.retrieval.config import RetrievalConfig

Method = Literal["full", "lora", "adapter", "prefix", "ia3"]

# Learning rates that work for each method on small chat models (used when train.lr is not set;
# the resolved value is written to config.yaml).
DEFAULT_LR: dict[str, float] = {
    "full": 5e-5,
    "lora": 2e-4,
    "adapter": 1e-3,
    "prefix": 1e-2,
    "ia3": 3e-3,
}

# A freshly depth-pruned student (``BASE:n_layers=N``) starts far from a working model (held-out CE
# 11.7 for the bundled teacher cut to 6 layers) and needs a much larger step than fine-tuning one.
# Measured on the bundled task, 40 full-training updates of batch 4, held-out answer CE
# (benchmarks/results/sweep-*): 5.85 at 1e-4, 3.97 at 5e-4, 3.67 at 1e-3 (3.60 when distilled).
PRUNED_STUDENT_LR = 1e-3


def default_lr(method: str, model_ref: str, defaults: dict[str, float] = DEFAULT_LR) -> float:
    """The learning rate used when ``train.lr`` is unset: per method, larger for a pruned student."""
    from distilltune.models.resolve import is_student_spec

    if method == "full" and is_student_spec(model_ref):
        return PRUNED_STUDENT_LR
    return defaults[method]


class TrainSettings(StrictModel):
    """The loop: optimisation, schedule, evaluation, checkpoints. Steps count optimizer updates."""

    max_steps: int | None = Field(
        default=None, ge=1, description="stop after this many updates (wins over epochs)"
    )
    epochs: float = Field(
        default=3.0, gt=0, description="passes over the training set when max_steps is unset"
    )
    batch_size: int = Field(default=8, ge=1, description="examples per micro-batch (per process)")
    grad_accum: int = Field(default=1, ge=1, description="micro-batches per optimizer update")
    lr: float | None = Field(default=None, gt=0, description="peak learning rate (default: per method)")
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=10, ge=0, description="linear warm-up updates, then cosine decay")
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1, description="cosine decays to lr * min_lr_ratio")
    max_grad_norm: float | None = Field(default=1.0, gt=0, description="clip the gradient norm (null: off)")
    max_length: int = Field(default=512, ge=16, description="tokens per training example (truncation)")
    eval_every: int = Field(default=50, ge=0, description="evaluate every N updates (0: only at the end)")
    eval_samples: int = Field(default=16, ge=0, description="eval items answered for fact recall")
    eval_loss_items: int = Field(default=64, ge=0, description="eval items scored for the eval loss")
    eval_max_new_tokens: int = Field(default=48, ge=1)
    select_metric: Literal["fact_recall", "eval_loss"] = Field(
        default="fact_recall", description="metric for early stopping and the best checkpoint"
    )
    early_stopping_patience: int = Field(default=0, ge=0, description="evals without improvement (0: off)")
    load_best: bool = Field(default=True, description="end with the best evaluated weights")
    save_every: int = Field(
        default=50, ge=0, description="checkpoint every N updates (0: only on improvement)"
    )
    keep_last: int = Field(default=2, ge=1, description="checkpoints kept besides the best")
    log_every: int = Field(default=1, ge=1)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto: fp32 on CPU, bf16 autocast on a GPU that supports it"
    )
    gradient_checkpointing: bool = False
    tensorboard: bool = Field(default=False, description="also log to OUT/tensorboard (if installed)")


class LoraSettings(StrictModel):
    r: int = Field(default=8, ge=1)
    alpha: float = Field(default=16, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default=["q_proj", "v_proj"], min_length=1)
    use_rslora: bool = False
    use_dora: bool = False


class PrefixSettings(StrictModel):
    num_virtual_tokens: int = Field(default=16, ge=1)
    prefix_projection: bool = False


class IA3Settings(StrictModel):
    target_modules: list[str] = Field(default=["k_proj", "v_proj", "down_proj"], min_length=1)
    feedforward_modules: list[str] | None = Field(
        default=None,
        description="targets that scale the input, not the output (default: down_proj if targeted)",
    )

    def feedforward(self) -> list[str]:
        if self.feedforward_modules is not None:
            return list(self.feedforward_modules)
        return [m for m in self.target_modules if m == "down_proj"]


class AdapterSettings(StrictModel):
    """Classic bottleneck adapters (Houlsby: after attention and MLP; Pfeiffer: after the MLP only)."""

    kind: Literal["houlsby", "pfeiffer"] = "pfeiffer"
    reduction_factor: int = Field(default=16, ge=1, description="bottleneck = hidden size / factor")
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = "relu"
    target_modules: list[str] | None = Field(
        default=None, description="modules whose output gets an adapter (default: by kind)"
    )


class FinetuneConfig(StrictModel):
    task: str
    model: str
    method: Method = "lora"
    output: str
    teacher: str | None = Field(default=None, description="resolves 'teacher' in student specs")
    rag: bool = Field(default=False, description="train on prompts with retrieved context")
    retrieval: RetrievalConfig = Field(
        default_factory=RetrievalConfig, description="index and prompt settings used when rag is true"
    )
    train: TrainSettings = TrainSettings()
    lora: LoraSettings = LoraSettings()
    prefix: PrefixSettings = PrefixSettings()
    ia3: IA3Settings = IA3Settings()
    adapter: AdapterSettings = AdapterSettings()

    def lr(self) -> float:
        return self.train.lr if self.train.lr is not None else default_lr(self.method, self.model)

    def resolved(self) -> FinetuneConfig:
        """A copy with method defaults filled in (what config.yaml records)."""
        return self.model_copy(update={"train": self.train.model_copy(update={"lr": self.lr()})})
