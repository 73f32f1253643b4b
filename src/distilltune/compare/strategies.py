"""Strategies as data: one declarative object per candidate, the built-in matrix, and user additions.

A strategy says *what* is compared; ``compare.recipes`` turns it into the exact ``finetune`` /
``distill`` / ``evaluate`` configs and ``distill.orchestrate`` runs them. Everything about one
candidate is in its ``Strategy``: its kind, the models it starts from, its recipe (the keys a user
would pass to ``distilltune finetune`` / ``distill``, merged over what the comparison fixes for every
candidate: the task view, retrieval, sequence length, batch size, seed), its dependencies, its
updates per preset and its cost weight for the ETA.

Model references (``model``, ``teacher``, ``student``) are symbolic, so one file works for any task
and teacher: ``teacher`` is the comparison's teacher as is, ``student`` the comparison's student
(with its measured layers), ``teacher:n_layers=N`` a student cut from the comparison's teacher (its
layers measured the same way), the name of another strategy that strategy's trained output (and a
dependency), anything else a model reference as on the command line.

The distilled students learn from the *fine-tuned* teacher and the blend starts from the distilled
student. Selecting a strategy whose source is not selected still trains that source (it is needed),
but evaluates only what was asked for.

Any strategy can also be evaluated *as deployed*: ``SOURCE@QUANT`` (``teacher@q8_0``,
``student-kd@int8``) is the source strategy's model exported to a quantized format (no training:
an export stage) and evaluated through the runtime that format ships with (``DEPLOY``). It is a
``base`` strategy with ``deploy`` set, created from its name when selected (``deployed``).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field

from distilltune.config import StrictModel, deep_merge

Kind = Literal["base", "finetune", "distill", "blend"]
Preset = Literal["quick", "full"]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
SYMBOLS = ("teacher", "student")  # model references that are not strategies
# Keys a recipe may not set: the comparison fixes them (the symbolic model fields and ``steps`` say them)
RESERVED = {
    "task": "the comparison's task view",
    "output": "OUT/runs/<strategy>",
    "model": "the strategy's model:",
    "teacher": "the strategy's teacher:",
    "student": "the strategy's student:",
}
TRAINER = {"finetune": "finetune", "blend": "finetune", "distill": "distill"}  # kind → training command
# ``SOURCE@QUANT`` candidates: quantization → (backend that runs it, export format, what it is)
DEPLOY: dict[str, tuple[str, str, str]] = {
    "int8": ("onnx", "onnx", "ONNX with int8 weights (dynamic quantization), run by ONNX Runtime"),
    "q8_0": ("llama.cpp", "gguf", "GGUF q8_0 (8.5 bits a weight), run by llama.cpp"),
    "q4_k_m": ("llama.cpp", "gguf", "GGUF q4_k_m (about 4.8 bits a weight), run by llama.cpp"),
    "f16": ("llama.cpp", "gguf", "GGUF f16, run by llama.cpp"),
}


class Eta(StrictModel):
    """Cost weights for the progress ETA only (it recalibrates on the measured pace after a minute).

    Seconds on 2 CPU cores for a model the teacher's size; ``compare.recipes.stage_weight`` scales
    them by the updates, the batch, the task's number of training examples and the trained model's
    share of the teacher's layers. Defaults by method and mode, from a quick demo of the 135M teacher
    (benchmarks/results/demo.json stage times): LoRA 1.5 s and a full update 2.0 s per example; before
    the loop, 0.4 s per training example for a top-k teacher cache, 0.8 s for teacher answers.
    """

    per_example_s: float | None = Field(default=None, gt=0, description="per example per update")
    per_train_example_s: float | None = Field(
        default=None, ge=0, description="once per training example before the loop (teacher pass)"
    )


class StrategySpec(StrictModel):
    """A ``custom_strategies`` entry of the compare YAML: a new candidate, or changes to a built-in one.

    For a built-in name every field is optional: the ones given replace the built-in's, and
    ``recipe`` is merged into the built-in recipe key by key.
    """

    kind: Kind | None = Field(default=None, description="base (as is), finetune, distill or blend")
    description: str | None = None
    model: str | None = Field(
        default=None, description="base: the model evaluated; finetune/blend: the model trained"
    )
    teacher: str | None = Field(default=None, description="distill: the teacher (default teacher-lora)")
    student: str | None = Field(default=None, description="distill: the student (default student)")
    recipe: dict[str, Any] = Field(
        default_factory=dict,
        description="finetune/distill config keys merged over the comparison's (e.g. lora.r, kd.loss)",
    )
    depends_on: list[str] | None = Field(default=None, description="strategies trained first")
    steps: int | dict[Preset, int] | None = Field(
        default=None, description="optimizer updates: one number, or per preset {quick: N, full: M}"
    )
    base: str | None = Field(
        default=None, description="an evaluated strategy this one should improve on (report check)"
    )
    eta: Eta | None = None


class Strategy(StrictModel):
    name: str
    kind: Kind
    description: str = ""
    model: str | None = None
    teacher: str | None = None
    student: str | None = None
    recipe: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    steps: dict[Preset, int] = Field(default_factory=dict)
    base: str | None = None
    eta: Eta = Eta()
    builtin: bool = False
    deploy: str | None = None  # a DEPLOY quantization: ``model`` exported and run by its backend

    @property
    def trained(self) -> bool:
        return self.kind != "base"

    def refs(self) -> list[str]:
        """The model references this strategy starts from (symbolic, see the module docstring)."""
        return [r for r in (self.model, self.teacher, self.student) if r is not None]


def _builtin() -> dict[str, Strategy]:
    rows = [
        Strategy(
            name="teacher", kind="base", model="teacher", description="the teacher as is, with retrieval"
        ),
        Strategy(
            name="teacher-lora",
            kind="finetune",
            model="teacher",
            base="teacher",
            description="the teacher fine-tuned with LoRA on the task (retrieval in the prompt)",
            recipe={"method": "lora", "lora": "${teacher_lora}", "train": {"lr": "${teacher_lora_lr}"}},
            # The first wave's 12 updates of q/v at rank 8 changed nothing. On the quick view
            # (benchmarks/results/teacher_sweep.json): LoRA on every linear layer at rank 16 reached
            # 0.38 in 24 updates at lr 2e-3 and 0.44 in 40 at 1e-3, the latter 260 s of a 1108 s demo;
            # quick takes the 24-update recipe, full 48 updates of 8 (~0.7 epoch of acme) at 1e-3.
            steps={"quick": 24, "full": 48},
        ),
        Strategy(
            name="student-ft",
            kind="finetune",
            model="student",
            description="the depth-pruned student fully fine-tuned on the labels only",
            recipe={"method": "full"},
            steps={"quick": 40, "full": 120},
        ),
        Strategy(
            name="student-kd",
            kind="distill",
            teacher="teacher-lora",
            student="student",
            description="the student distilled (cached top-k logit KD) from the fine-tuned teacher",
            recipe={"mode": "cached", "kd": {"loss": "${kd_loss}", "top_k": "${kd_top_k}"}},
            steps={"quick": 40, "full": 120},
        ),
        Strategy(
            name="student-kd-lora",
            kind="blend",
            model="student-kd",
            base="student-kd",
            description="the distilled student, then fine-tuned with LoRA on the labels",
            recipe={"method": "lora"},
            steps={"quick": 12, "full": 40},
        ),
        Strategy(
            name="student-seqkd",
            kind="distill",
            teacher="teacher-lora",
            student="student",
            description="the student trained on the fine-tuned teacher's curated answers (sequence-level KD)",
            # Teacher generation dominates this strategy's cost (24 of ~41 training minutes in a quick
            # demo answering all 160 prompts), so the quick preset answers a sample (seqkd_prompts).
            recipe={
                "mode": "sequence",
                "sequence": {"max_new_tokens": "${seqkd_max_new_tokens}", "max_prompts": "${seqkd_prompts}"},
            },
            steps={"quick": 40, "full": 120},
        ),
    ]
    return {s.name: s.model_copy(update={"builtin": True}) for s in rows}


BUILTIN: dict[str, Strategy] = _builtin()
BUILTIN_NAMES = tuple(BUILTIN)


def _defaults(name: str, spec: StrategySpec) -> dict[str, Any]:
    """A new strategy's fields, with the defaults of its kind."""
    data = spec.model_dump(exclude_none=True, exclude={"steps", "eta"})
    data["name"] = name
    if spec.kind == "base":
        data.setdefault("model", "teacher")
    elif spec.kind == "distill":
        data.setdefault("teacher", "teacher-lora")
        data.setdefault("student", "student")
    elif spec.kind == "finetune":
        data.setdefault("model", "student")
    if spec.kind == "blend" and spec.base is None and spec.model is not None:
        data["base"] = spec.model
    if spec.kind == "finetune" and spec.base is None and spec.model == "teacher":
        data["base"] = "teacher"
    return data


def merge_strategy(name: str, spec: StrategySpec) -> Strategy:
    """A built-in changed by ``spec``, or a new strategy (``spec.kind`` required)."""
    old = BUILTIN.get(name)
    if old is not None:
        given = spec.model_dump(exclude_none=True, exclude={"recipe", "steps", "eta"})
        data = {**old.model_dump(), **given, "recipe": deep_merge(old.recipe, spec.recipe), "builtin": False}
    else:
        data = _defaults(name, spec)
    if isinstance(spec.steps, int):
        data["steps"] = {"quick": spec.steps, "full": spec.steps}
    elif spec.steps is not None:
        data["steps"] = {**(old.steps if old else {}), **spec.steps}
    if spec.eta is not None:
        data["eta"] = spec.eta.model_dump()
    return Strategy.model_validate(data)


def split_deployed(name: str) -> tuple[str, str] | None:
    """``SOURCE@QUANT`` → (source, quant); None for any other name."""
    src, at, quant = name.rpartition("@")
    return (src, quant) if at and src else None


def deployed(name: str, table: dict[str, Strategy]) -> Strategy | None:
    """The ``SOURCE@QUANT`` candidate for a selected name, when its source and quantization exist."""
    parts = split_deployed(name)
    if parts is None or parts[1] not in DEPLOY or parts[0] not in table or table[parts[0]].deploy:
        return None
    src, quant = parts
    return Strategy(
        name=name,
        kind="base",
        model=src,
        deploy=quant,
        description=f"{src} exported to {DEPLOY[quant][2]} (no training)",
    )


def strategy_table(custom: dict[str, StrategySpec], selected: list[str] | tuple = ()) -> dict[str, Strategy]:
    """The built-ins in matrix order, changed by ``custom``, then the new strategies in file order,
    then the selected ``SOURCE@QUANT`` candidates."""
    table = dict(BUILTIN)
    for name, spec in custom.items():
        if name in BUILTIN or spec.kind is not None:
            table[name] = merge_strategy(name, spec)
    for name in selected:
        d = deployed(name, table)
        if d is not None:
            table[name] = d
    return table


def deploy_problems(name: str, table: dict[str, Strategy]) -> list[str]:
    """Why a selected ``SOURCE@QUANT`` cannot run (unknown source or quantization, missing runtime)."""
    import importlib.util

    src, quant = split_deployed(name) or ("", "")
    where = f"strategies: {name}"
    if quant not in DEPLOY:
        return [f"{where}: unknown quantization {quant!r}; choose one of {', '.join(DEPLOY)}"]
    if src not in table:
        return [f"{where}: no strategy named {src!r} to export"]
    if table[src].deploy:
        return [f"{where}: {src!r} is already a deployed format"]
    backend = DEPLOY[quant][0]
    module = {"onnx": "onnxruntime", "llama.cpp": "llama_cpp"}[backend]
    if importlib.util.find_spec(module) is None:
        extra = "gguf" if backend == "llama.cpp" else "onnx"
        how = " or `make install-gguf` (builds llama.cpp with cmake)" if extra == "gguf" else ""
        return [
            f"{where}: runs in {backend}, which is not installed: pip install 'distilltune[{extra}]'{how}"
        ]
    return []


def needs(table: dict[str, Strategy], name: str) -> list[str]:
    """Strategies that must be trained before ``name``: named dependencies and trained sources."""
    s = table[name]
    implied = [r for r in s.refs() if r not in SYMBOLS and r in table and table[r].trained]
    return [n for n in dict.fromkeys([*s.depends_on, *implied]) if n in table]


def training_order(table: dict[str, Strategy], selected: list[str]) -> list[str]:
    """Every strategy that must be trained for ``selected``, each after what it needs, else in table order."""
    wanted: set[str] = set()
    stack = [n for n in selected if n in table]
    while stack:
        name = stack.pop()
        if name not in wanted:
            wanted.add(name)
            stack += needs(table, name)
    order: list[str] = []
    while len(order) < len(wanted):
        ready = [n for n in table if n in wanted and n not in order and set(needs(table, n)) <= set(order)]
        if not ready:
            raise ValueError(f"strategies depend on each other in a cycle: {sorted(wanted - set(order))}")
        order.append(ready[0])
    return [n for n in order if table[n].trained]


def problems(
    custom: dict[str, StrategySpec], selected: list[str], steps: dict[str, int], preset: str
) -> list[str]:
    """Every problem with the strategy definitions and the selection, as ``field: message`` lines."""
    out: list[str] = []
    for name, spec in custom.items():
        where = f"custom_strategies.{name}"
        if name not in BUILTIN and (not NAME_RE.match(name) or name in SYMBOLS):
            out.append(f"{where}: a new strategy's name is letters, digits, - and _, and not 'student'")
        if name not in BUILTIN and spec.kind is None:
            out.append(f"{where}.kind: required for a new strategy (base, finetune, distill or blend)")
        out += [
            f"{where}.recipe.{key}: set by the comparison ({RESERVED[key]}); use that instead"
            for key in spec.recipe
            if key in RESERVED
        ]
        if isinstance(spec.recipe.get("train"), dict) and "max_steps" in spec.recipe["train"]:
            out.append(
                f"{where}.recipe.train.max_steps: use the strategy's steps: (one number or per preset)"
            )
    table = strategy_table(custom, selected)
    for name in selected:
        if split_deployed(name) and name not in custom:
            out += deploy_problems(name, strategy_table(custom))
    for s in table.values():
        out += _strategy_problems(table, s, steps.get(s.name) or s.steps.get(preset), preset)
    try:
        training_order(table, list(table))
    except ValueError as e:
        out.append(f"custom_strategies: {e}")
    unknown = [s for s in selected if s not in table and not split_deployed(s)]
    if unknown:
        out.append(f"strategies: unknown strategies {unknown}; known: {', '.join(table)}")
    if not selected:
        out.append("strategies: at least one strategy is needed")
    for key in steps:
        if key not in table or not table[key].trained:
            out.append(f"steps.{key}: no trained strategy of that name")
    return out


def _strategy_problems(
    table: dict[str, Strategy], s: Strategy, n_steps: int | None, preset: str
) -> list[str]:
    """What is wrong with one (merged) strategy: fields its kind cannot use, unknown names, steps."""
    where = f"custom_strategies.{s.name}"
    out = []
    unused = {"base": ("teacher", "student"), "distill": ("model",)}.get(s.kind, ("teacher", "student"))
    out += [
        f"{where}.{f}: a {s.kind} strategy has no {f} (it uses {_uses(s.kind)})"
        for f in unused
        if getattr(s, f)
    ]
    if s.kind == "base" and s.recipe:
        out.append(
            f"{where}.recipe: a base strategy is evaluated as is; training needs kind finetune or distill"
        )
    if s.kind == "blend" and not (s.model in table and table[s.model].trained):
        out.append(f"{where}.model: a blend continues another trained strategy; name one (found {s.model!r})")
    for f, names in (("depends_on", s.depends_on), ("base", [s.base] if s.base else [])):
        out += [f"{where}.{f}: no strategy named {n!r}" for n in names if n not in table]
    if s.trained and n_steps is None:
        out.append(
            f"{where}.steps: required for a trained strategy (one number, or {{quick: N, full: M}}); none for {preset}"
        )
    elif s.trained and n_steps < 1:
        out.append(f"{where}.steps: at least 1 update (found {n_steps})")
    return out


def _uses(kind: str) -> str:
    return {"base": "model", "distill": "teacher and student"}.get(kind, "model")
