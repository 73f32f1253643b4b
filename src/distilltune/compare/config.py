"""``CompareConfig``: the settings of one strategy comparison, filled from a preset.

Presets set the data and step counts; anything given in a YAML file, as an option or as a dotted
override wins over the preset. ``quick`` is sized so ``distilltune demo`` finishes within a quarter
of an hour on a 2-core CPU while still training every strategy for real (measured as a first run on an
idle machine: 697 s, benchmarks/results/demo.json); ``full`` is the honest run (all data, all six
strategies plus the quantized teacher and distilled student in each deployed format whose runtime is installed,
3x the updates at twice the batch; measured before the deployed candidates: 76 min on 2 cores, benchmarks/results/full.json).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from distilltune.compare.strategies import (
    BUILTIN,
    BUILTIN_NAMES,
    Strategy,
    StrategySpec,
    problems,
    strategy_table,
)
from distilltune.config import FieldProblems, StrictModel, deep_merge
from distilltune.distill.kd_losses import get_loss
from distilltune.retrieval.config import RetrievalConfig
from distilltune.train.config import LoraSettings

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def deployed_candidates() -> list[str]:
    """The quantized teacher and the distilled student in every deployed format whose runtime is
    installed (ONNX Runtime: int8; llama.cpp: q8_0). The full preset compares them; the quick preset
    cannot afford them (docs/compare.md: the teacher's int8 export and evaluation take ~4.5 min)."""
    import importlib.util

    out = []
    if importlib.util.find_spec("onnxruntime") is not None:
        out += ["teacher@int8", "student-kd@int8"]
    if importlib.util.find_spec("llama_cpp") is not None:
        out += ["teacher@q8_0", "student-kd@q8_0"]
    return out


PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        # Sized on an idle 2-core machine: benchmarks/results/demo.json has the measured wall time.
        "train_limit": 160,
        "eval_limit": 32,
        "behaviour_limit": 8,
        "max_new_tokens": 48,
        # Two candidates are left out of the quick matrix, on measurements: sequence-level KD from 32
        # teacher answers and 40 updates scored a reference-answer NLL of 6.09 against 3.51 for logit
        # KD, at 150 s of the demo (demo.json at 25d4a9e); 12 LoRA updates on the distilled student
        # moved its NLL by at most 0.004 on three seeds and were tied with it on every axis (demo.json,
        # demo-seed1.json, demo-seed2.json), at ~70 s. The full preset keeps both; --strategies adds them.
        "strategies": ["teacher", "teacher-lora", "student-ft", "student-kd"],
        "efficiency_prompts": 20,
        "efficiency_time_budget_s": 20,
        "retrieval": {"k": 2, "max_context_tokens": 192},
        # The first wave's 12 updates of q/v at rank 8 changed nothing (0.25 = 0.25). Measured on this
        # view (benchmarks/results/teacher_sweep.json, primary score on the 32 eval items, base 0.25):
        # LoRA on every linear layer, rank 16: lr 2e-3 for 24 updates 0.38 (fact recall 0.14 → 0.29,
        # held-out answer CE 1.30), lr 1e-3 for 40 updates 0.44 (CE 1.24); a full fine-tune at 1e-4 for 24
        # updates 0.22. The 40-update recipe took 260 s of a 1108 s demo (demo.json history), so
        # the quick preset takes the 24-update one and the full preset the slower learning rate.
        "teacher_lora": {"r": 16, "alpha": 32, "target_modules": ALL_LINEAR},
        "teacher_lora_lr": 2e-3,
        "batch_size": 4,
        # 320 cut the prompt (system prompt and retrieved context) of most RAG examples on another
        # task; at k=2 / 192 context tokens the acme examples fit in 448 (0 truncated).
        "max_length": 448,
        "seqkd_prompts": 32,
        # the teacher's answers average ~25 tokens; a 48-token cap dropped most of them as truncated
        "seqkd_max_new_tokens": 128,
    },
    "full": {
        # The honest run: every train conversation, every eval item and every behavioural case, all six
        # strategies, and roughly 1-2 epochs of updates. It keeps the quick preset's retrieval and
        # sequence length, so "does the quick verdict hold on the full data?" is the only question
        # it changes. Sized from the quick run's measured per-example costs on 2 cores (teacher LoRA
        # ~2 s, logit KD ~1.4 s, label-only ~0.45 s per example; ~2 s per teacher answer) to finish in
        # about 2 hours; it took 76 min (benchmarks/results/full.json has every stage, results/full/ the report).
        "train_limit": None,
        "eval_limit": None,
        "behaviour_limit": None,
        # every built-in, plus "quantize" as a rival: the teacher and the distilled student deployed
        "strategies": [*BUILTIN_NAMES, *deployed_candidates()],
        # acme's reference answers average ~25 tokens; a longer cap only times the teacher's rambling
        "max_new_tokens": 64,
        "efficiency_prompts": 20,
        "efficiency_time_budget_s": 60,
        "retrieval": {"k": 2, "max_context_tokens": 192},
        "teacher_lora": {"r": 16, "alpha": 32, "target_modules": ALL_LINEAR},
        # the sweep's better recipe (0.44 at 40 updates of 4); 48 updates of 8 is ~0.7 epoch of acme
        "teacher_lora_lr": 1e-3,
        "batch_size": 8,
        "max_length": 448,
        "seqkd_prompts": 200,
        "seqkd_max_new_tokens": 128,
    },
}


class BudgetOverrides(StrictModel):
    latency_p95_ms: float | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, ge=1, le=256)
    memory_mb: float | None = Field(default=None, gt=0)
    min_quality: float | None = Field(default=None, ge=0, le=1)


class CompareConfig(StrictModel):
    task: str
    output: str
    preset: Literal["quick", "full"] = "quick"
    strategies: list[str] = Field(
        default_factory=lambda: list(BUILTIN_NAMES),
        description="the strategies evaluated (default: the preset's, plus every new custom strategy)",
    )
    custom_strategies: dict[str, StrategySpec] = Field(
        default_factory=dict,
        description="new candidates, or changes to built-in ones, by name (see compare.strategies)",
    )
    teacher: str = "smollm2-135m-instruct"
    student: str = Field(
        default="teacher:n_layers=6", description="student spec; 'teacher' = the teacher above"
    )
    student_layers: Literal["influence", "first-last"] = Field(
        default="influence",
        description="which layers an n_layers=N student keeps: measured block influence on the task, or first+last",
    )
    teacher_lora: LoraSettings = Field(default_factory=LoraSettings, description="teacher-lora's adapter")
    teacher_lora_lr: float | None = Field(default=None, gt=0, description="teacher-lora's learning rate")
    kd_loss: str = Field(default="fkl", description="student-kd's kd.loss (a registered KD loss)")
    kd_top_k: int = Field(default=32, ge=1, description="student-kd's kd.top_k")
    budgets: BudgetOverrides = BudgetOverrides()  # override the task's budgets
    price_per_hour: float = Field(
        default=0.10, ge=0, description="compute price for the training-cost column"
    )
    currency: str = "USD"
    seed: int = 0
    # filled from the preset unless given
    train_limit: int | None = Field(default=None, ge=1, description="train conversations used (None: all)")
    eval_limit: int | None = Field(default=None, ge=1, description="eval items scored (None: all)")
    behaviour_limit: int | None = Field(default=None, ge=1, description="scenarios/adversarial cases each")
    max_new_tokens: int = Field(default=96, ge=1)
    efficiency_prompts: int = Field(default=20, ge=1, description="timed batch-1 requests per strategy")
    efficiency_time_budget_s: float | None = Field(
        default=None, gt=0, description="stop timing a strategy after this long (at least 8 requests)"
    )
    retrieval: RetrievalConfig = RetrievalConfig()
    steps: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="optimizer updates per trained strategy (default: the strategy's for the preset)",
    )
    batch_size: int = Field(default=8, ge=1)
    max_length: int = Field(default=512, ge=64)
    seqkd_prompts: int | None = Field(
        default=None, ge=1, description="train prompts the teacher answers for sequence-level KD (None: all)"
    )
    seqkd_max_new_tokens: int = Field(
        default=128,
        ge=1,
        description="cap on the teacher's answers for sequence-level KD (a cut answer is dropped)",
    )

    @field_validator("kd_loss")
    @classmethod
    def _registered_loss(cls, v: str) -> str:
        get_loss(v)  # ValueError naming the registered losses
        return v

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "quick")
        if preset not in PRESETS:
            return data  # the Literal check reports it
        return _with_defaults(deep_merge(PRESETS[preset], data), preset, "strategies" in data)

    @model_validator(mode="after")
    def _valid_strategies(self) -> CompareConfig:
        found = problems(self.custom_strategies, self.strategies, self.steps, self.preset)
        if not found:
            from distilltune.compare.recipes import recipe_problems

            found = recipe_problems(self)
        if found:  # "field: message" lines, reported one problem per field
            raise FieldProblems([tuple(p.split(": ", 1)) if ": " in p else ("", p) for p in found])
        return self

    def table(self) -> dict[str, Strategy]:
        """Every strategy this comparison knows: the built-ins, changed or joined by custom_strategies."""
        return strategy_table(self.custom_strategies, self.strategies)

    def steps_for(self, strategy: Strategy) -> int:
        """Updates of a trained strategy: ``steps.<name>``, else the strategy's own for the preset."""
        return self.steps.get(strategy.name) or strategy.steps[self.preset]

    def student_spec(self) -> str:
        """The student spec with 'teacher' bound to the original teacher (never a fine-tuned one)."""
        base, _, rest = self.student.partition(":")
        return f"{self.teacher}:{rest}" if base == "teacher" and rest else self.student


def _with_defaults(data: dict, preset: str, selection_given: bool) -> dict:
    """Steps keyed by strategy name (``student_kd`` still means ``student-kd``), the built-ins' steps
    for the preset, and new custom strategies added to a selection the user did not spell out."""
    custom = data.get("custom_strategies")
    custom = custom if isinstance(custom, dict) else {}
    steps = data.get("steps", {})
    if isinstance(steps, dict):
        known = set(BUILTIN_NAMES) | set(custom)
        steps = {k.replace("_", "-") if k not in known and k.replace("_", "-") in known else k: v
                 for k, v in steps.items()}  # fmt: skip
        own = {  # a built-in whose custom entry sets steps takes those
            n: s.steps[preset]
            for n, s in BUILTIN.items()
            if s.trained and not (isinstance(custom.get(n), dict) and "steps" in custom[n])
        }
        data = {**data, "steps": {**own, **steps}}
    selected = data.get("strategies", list(BUILTIN_NAMES))
    if not selection_given and isinstance(selected, list):
        data = {
            **data,
            "strategies": [*selected, *(n for n in custom if n not in BUILTIN and n not in selected)],
        }
    return data
