"""Typed settings of ``distilltune distill`` (the single source of truth; YAML and overrides fill it).

The loop settings are the fine-tuner's own ``TrainSettings`` (``train:``), so a distilled and a
fine-tuned student compare step for step. What the student imitates and how is one section, ``kd:``
(loss, temperature, alpha, beta, skew, top_k, positions, chunk_size): the objectives receive that
section as it is, so every setting has one name and one default. Mode-specific sections (``cache:``,
``sequence:``, ``onpolicy:``, ``hidden:``) are always present with defaults and only read by their mode.

The flat keys of earlier versions (``loss``, ``temperature``, ``alpha``, ``beta``, ``skew``,
``positions``, ``chunk_size`` at the top level and ``cache.k``) are rejected with a message naming
their place in ``kd:`` (``MOVED_KEYS``), not silently accepted: a config means one thing.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from distilltune.config import StrictModel
from distilltune.distill.kd_losses import get_loss, loss_help
from distilltune.distill.sequence import SequenceSettings
from distilltune.retrieval.config import RetrievalConfig
from distilltune.train.config import LoraSettings, TrainSettings, default_lr

Mode = Literal["cached", "online", "sequence", "on-policy"]

# A student that is already a working model (a run dir, a smaller model of the same family) trains at
# these; a freshly depth-pruned spec takes train.config.PRUNED_STUDENT_LR. Sequence-level KD is plain
# supervised training on the teacher's answers.
DEFAULT_LR = {"full": 1e-4, "lora": 2e-4}


class KDSettings(StrictModel):
    """What the student imitates and how; bound as is into the logit objectives (cached, online, on-policy).

    The objective is ``alpha·CE(labels) + (1 - alpha)·T²·D(teacher, student)``, D the registered
    loss ``loss`` (``distill.kd_losses``), CE on the answer tokens and D at ``positions``.
    """

    loss: str = Field(default="fkl", description="a registered KD loss: " + loss_help())
    temperature: float = Field(default=1.0, gt=0, description="softmax temperature (loss scaled by T²)")
    alpha: float = Field(default=0.5, ge=0, le=1, description="weight of the label cross-entropy term")
    beta: float = Field(default=0.5, ge=0, le=1, description="jsd interpolation (0 = fkl, 1 = rkl)")
    skew: float = Field(default=0.1, ge=0, lt=1, description="skl/srkl skew α (DistiLLM)")
    top_k: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="teacher log-probs kept per position in the cache (cached mode)",
    )
    positions: Literal["answer", "all"] = Field(
        default="all",
        description="where the student imitates the teacher (cached, online and off-policy batches): "
        "'all' = every token the teacher reads (prompt, retrieved context, answer), 'answer' = the "
        "answer tokens only; the label cross-entropy is on the answer tokens either way",
    )
    chunk_size: int = Field(default=512, ge=1, description="positions per vocabulary-projection chunk")

    @field_validator("loss")
    @classmethod
    def _registered(cls, v: str) -> str:
        get_loss(v)  # ValueError naming the known losses
        return v

    def describe(self) -> str:
        """The loss for the model card, e.g. ``generalised JSD (β=0.5)``."""
        return get_loss(self.loss).describe(self)


class CacheSettings(StrictModel):
    dir: str | None = Field(default=None, description="cache root (default $DISTILLTUNE_HOME/teacher-cache)")
    batch_size: int = Field(default=8, ge=1, description="examples per teacher forward while building")


class OnPolicySettings(StrictModel):
    """GKD-style on-policy KD: for a fraction ``lmbda`` of batches the student writes the answer."""

    lmbda: float = Field(default=0.5, ge=0, le=1, description="share of batches answered by the student")
    max_new_tokens: int = Field(default=64, ge=1, description="cap on each sampled answer")
    temperature: float = Field(default=1.0, ge=0, description="sampling temperature (0 = greedy)")
    off_policy: Literal["cached", "online"] = Field(
        default="cached", description="teacher targets for the other batches: the top-k cache or live"
    )


class HiddenSettings(StrictModel):
    """Optional hidden-state matching term (online and on-policy modes: needs the live teacher)."""

    weight: float = Field(default=0.0, ge=0, description="0 = off")
    loss: Literal["mse", "cosine"] = "mse"
    layers: list[tuple[int, int]] | None = Field(
        default=None,
        description="(student layer, teacher layer) pairs; default: a pruned student's source layers, "
        "else evenly spaced",
    )


class DistillConfig(StrictModel):
    MOVED_KEYS: ClassVar[dict[str, str]] = {
        **{k: f"kd.{k}" for k in ("loss", "temperature", "alpha", "beta", "skew", "positions", "chunk_size")},
        "cache.k": "kd.top_k",
    }

    task: str
    teacher: str
    student: str = Field(default="teacher:n_layers=6", description="student spec or model reference")
    output: str
    mode: Mode = "cached"
    method: Literal["full", "lora"] = Field(default="full", description="how the student's weights train")
    teacher_dtype: Literal["float32", "bfloat16"] = "float32"
    rag: bool = Field(default=False, description="train on prompts with retrieved context")
    retrieval: RetrievalConfig = Field(
        default_factory=RetrievalConfig, description="index and prompt settings used when rag is true"
    )
    kd: KDSettings = KDSettings()
    cache: CacheSettings = CacheSettings()
    sequence: SequenceSettings = SequenceSettings()
    onpolicy: OnPolicySettings = OnPolicySettings()
    hidden: HiddenSettings = HiddenSettings()
    lora: LoraSettings = LoraSettings()
    train: TrainSettings = TrainSettings()

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if self.hidden.weight > 0 and self.mode not in ("online", "on-policy"):
            raise ValueError(
                f"hidden-state distillation needs the live teacher: use mode online or on-policy (mode is {self.mode})"
            )
        return self

    @property
    def uses_logits(self) -> bool:
        """Modes that compare token distributions (and so need the same vocabulary)."""
        return self.mode != "sequence"

    @property
    def uses_cache(self) -> bool:
        return self.mode == "cached" or (self.mode == "on-policy" and self.onpolicy.off_policy == "cached")

    def lr(self) -> float:
        if self.train.lr is not None:
            return self.train.lr
        return default_lr(self.method, self.student, DEFAULT_LR)

    def resolved(self) -> DistillConfig:
        """A copy with defaults filled in (what config.yaml records)."""
        return self.model_copy(update={"train": self.train.model_copy(update={"lr": self.lr()})})
