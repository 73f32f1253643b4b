"""``EvaluateConfig``: every setting of one evaluation, written back as ``config.yaml`` (re-runnable).

Generation during evaluation is always greedy: quality numbers must be reproducible and comparable
between models, so only the length cap and the batch size are settings. Retrieval and guard settings
nest the same typed configs ``distilltune serve`` uses, so an evaluation can mirror a deployment.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distilltune.config import StrictModel
from distilltune.policy.guard import GuardConfig
from distilltune.retrieval.config import RetrievalConfig


class EfficiencySettings(StrictModel):
    enabled: bool = True
    prompts: int = Field(default=20, ge=1, description="timed batch-1 requests")
    time_budget_s: float | None = Field(
        default=None, gt=0, description="stop timing after this long (at least 8 requests are timed)"
    )
    warmup: int = Field(default=2, ge=0, description="untimed requests first")
    max_new_tokens: int = Field(default=64, ge=1)
    concurrency: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="also time with this many requests in flight (default: the task's budgets.concurrency)",
    )
    timeout_s: float = Field(default=1800.0, gt=0)


class EvaluateConfig(StrictModel):
    model: str = Field(min_length=1)
    task: str = Field(min_length=1)
    output: str = Field(min_length=1)
    teacher: str | None = None  # teacher agreement; also the base of student specs like teacher:n_layers=6
    teacher_agreement: bool = True  # answer with the teacher too (when one is given) and compare
    limit: int | None = Field(default=None, ge=1, description="first N items of each suite")
    behaviour: bool = True
    max_new_tokens: int = Field(default=96, ge=1)
    batch_size: int = Field(default=8, ge=1)
    max_prompt_tokens: int | None = Field(default=2048, ge=16, description="as the server's limit")
    dtype: Literal["float32", "bfloat16"] = "float32"
    retrieval: RetrievalConfig = RetrievalConfig()  # --rag/--no-rag sets retrieval.enabled
    efficiency: EfficiencySettings = EfficiencySettings()
    guard: GuardConfig = GuardConfig()  # as the server configures it
    backend: Literal["torch", "onnx", "llama.cpp"] = Field(
        default="torch",
        description="what generates (inference.backends); onnx/llama.cpp answer one at a time",
    )
    quant: str = Field(
        default="none", description="quantization of the on-the-fly export for a non-torch backend (CLI)"
    )
    artifact: str | None = Field(
        default=None, description="the backend's deployed file/dir for MODEL (set when exported on the fly)"
    )

    @model_validator(mode="after")
    def _backend_settings(self) -> EvaluateConfig:
        from distilltune.inference.backends import BACKENDS

        quants = BACKENDS[self.backend].quants
        if self.quant not in quants:
            raise ValueError(
                f"quant {self.quant!r} does not apply to backend {self.backend}; choose one of {', '.join(quants)}"
            )
        if self.backend == "torch" and self.artifact is not None:
            raise ValueError("artifact is for the onnx / llama.cpp backends")
        return self
