"""From strategies to runnable configs: the one place a strategy's recipe meets the comparison's settings.

``train_config`` builds the ``FinetuneConfig`` / ``DistillConfig`` of a trained strategy as one dict,
the comparison's defaults (task view, retrieval, loop settings derived from ``steps``) with the
strategy's recipe merged over them, validated by the command's own model: what the comparison runs
is exactly what ``distilltune finetune`` / ``distill --config configs/train-<name>.yaml`` runs.

Recipe values may name a comparison setting as a whole value, ``"${kd_top_k}"``: the built-in
recipes read the preset's knobs (``teacher_lora``, ``kd_loss``, ``seqkd_prompts``, ...) that way, so
an old compare YAML keeps meaning what it meant.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from distilltune.compare.strategies import DEPLOY, SYMBOLS, TRAINER, Strategy, training_order
from distilltune.config import deep_merge, validation_problems
from distilltune.errors import Problem, UserError

_KNOB = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def train_settings(cfg, steps: int) -> dict[str, Any]:
    """The loop settings every trained strategy shares (a recipe's ``train:`` is merged over them)."""
    return {
        "max_steps": steps,
        "batch_size": cfg.batch_size,
        "warmup_steps": max(1, steps // 10),
        "max_length": cfg.max_length,
        # One held-out loss at the end, no generation: the comparison's evaluation is the real
        # measurement, and answering eval items twice would only cost time.
        "eval_every": 0,
        "eval_samples": 0,
        "eval_loss_items": min(32, cfg.eval_limit or 32),
        "select_metric": "eval_loss",
        "save_every": max(1, steps // 2),
        "keep_last": 1,
        "seed": cfg.seed,
    }


def _substitute(value: Any, cfg, where: str, problems: list[str]) -> Any:
    """Replace whole-value ``${setting}`` placeholders by the comparison's setting."""
    if isinstance(value, dict):
        return {k: _substitute(v, cfg, f"{where}.{k}", problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, cfg, f"{where}.{i}", problems) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        m = _KNOB.match(value)
        if m is None or m[1] not in type(cfg).model_fields:
            problems.append(
                f"{where}: {value!r} is not a compare setting written as ${{name}} (the whole value)"
            )
            return value
        knob = getattr(cfg, m[1])
        return knob.model_dump() if isinstance(knob, BaseModel) else knob
    return value


@dataclass
class Refs:
    """Binds a strategy's symbolic model references (see compare.strategies) to real ones."""

    cfg: Any
    table: dict[str, Strategy]
    runs: Path
    students: dict[str, str] = field(default_factory=dict)  # bound student spec → resolved (measured layers)

    def bind(self, ref: str) -> str:
        """The reference before layer measurement: 'teacher' and 'teacher:...' name the comparison's teacher."""
        if ref == "teacher":
            return self.cfg.teacher
        if ref == "student":
            return self.cfg.student_spec()
        base, _, rest = ref.partition(":")
        return f"{self.cfg.teacher}:{rest}" if base == "teacher" and rest else ref

    def __call__(self, ref: str) -> str:
        if ref not in SYMBOLS and ref in self.table:
            s = self.table[ref]
            return str(self.runs / ref) if s.trained else self(s.model or "teacher")
        bound = self.bind(ref)
        return self.students.get(bound, bound)

    def is_student(self, name: str) -> bool:
        """Whether a strategy's model is smaller than the teacher (a student, or trained from one)."""
        from distilltune.models.resolve import is_student_spec

        s = self.table[name]
        if s.kind == "distill":
            return True
        ref = s.model or "teacher"
        if ref not in SYMBOLS and ref in self.table:
            return self.is_student(ref)
        return ref == "student" or is_student_spec(self.bind(ref))


def student_specs(cfg, table: dict[str, Strategy]) -> list[str]:
    """The bound student specs the selected strategies and their sources start from (to measure)."""
    from distilltune.models.resolve import is_student_spec

    refs = Refs(cfg, table, Path())
    names = [*training_order(table, cfg.strategies), *(n for n in cfg.strategies if not table[n].trained)]
    specs = [refs.bind(r) for n in names for r in table[n].refs() if r in SYMBOLS or r not in table]
    return list(dict.fromkeys(s for s in specs if is_student_spec(s)))


def _where(s: Strategy) -> str:
    return f"custom_strategies.{s.name}" if not s.builtin else f"strategies.{s.name}"


def train_config(cfg, s: Strategy, view: Path, out: Path, refs: Refs) -> BaseModel:
    """The FinetuneConfig or DistillConfig of one trained strategy: defaults, recipe merged, validated."""
    from distilltune.distill.config import DistillConfig
    from distilltune.train.config import FinetuneConfig

    data: dict[str, Any] = {
        "task": str(view),
        "rag": True,
        "retrieval": cfg.retrieval.model_dump(),
        "output": str(out / "runs" / s.name),
        "train": train_settings(cfg, cfg.steps_for(s)),
    }
    if TRAINER[s.kind] == "distill":
        data |= {"teacher": refs(s.teacher or "teacher-lora"), "student": refs(s.student or "student")}
    else:
        data["model"] = refs(s.model or "student")
    found: list[str] = []
    data = deep_merge(data, _substitute(s.recipe, cfg, f"{_where(s)}.recipe", found))
    problems = [Problem("<compare config>", m) for m in found]
    cls = DistillConfig if TRAINER[s.kind] == "distill" else FinetuneConfig
    try:
        if not problems:
            return cls.model_validate(data)
    except ValidationError as e:
        problems = [  # a moved key (``loss`` → ``kd.loss``) says where it lives now
            Problem(p.file, p.message, field=f"{_where(s)}.recipe.{p.field}")
            for p in validation_problems(e, "<compare config>", getattr(cls, "MOVED_KEYS", None))
        ]
    raise UserError(f"strategy {s.name!r}: invalid recipe", problems)


def training_configs(
    cfg, view: Path, out: Path, students: dict[str, str] | None = None
) -> dict[str, BaseModel]:
    """The config of every strategy to train, dependencies first; every strategy's problems at once.

    ``students``: bound student spec → resolved spec (``students.resolve_student``); unresolved
    specs are used as bound.
    """
    table = cfg.table()
    refs = Refs(cfg, table, out / "runs", dict(students or {}))
    configs: dict[str, BaseModel] = {}
    problems: list[Problem] = []
    for name in training_order(table, cfg.strategies):
        try:
            configs[name] = train_config(cfg, table[name], view, out, refs)
        except UserError as e:
            problems += e.problems
    if problems:
        raise UserError("invalid strategies", problems)
    return configs


def recipe_problems(cfg) -> list[str]:
    """Recipe problems found without any file: what ``CompareConfig`` reports when it is read."""
    try:
        training_configs(cfg, Path("<task>"), Path("<output>"))
    except UserError as e:
        return [str(p).removeprefix("<compare config>: ") for p in e.problems]
    return []


def export_config(cfg, out: Path, name: str, refs: Refs | None = None):
    """The export stage of a ``SOURCE@QUANT`` candidate: its source's model, written to OUT/exports/<name>."""
    from distilltune.export.config import ExportConfig

    refs = refs or Refs(cfg, cfg.table(), out / "runs")
    quant = refs.table[name].deploy
    return ExportConfig(
        model=refs(name),
        output=str(out / "exports" / name),
        format=DEPLOY[quant][1],
        quant=quant,
        teacher=cfg.teacher,
        check=0,  # the evaluation that follows is the measurement
    )


def deployed_file(xc) -> Path:
    """What the backend loads from an export stage's output (known before the export runs)."""
    out = Path(xc.output)
    return out if xc.format == "onnx" else out / f"model-{xc.quant}.gguf"


def evaluate_config(cfg, view: Path, out: Path, name: str, refs: Refs | None = None):
    """How every strategy is evaluated: the same view, retrieval, decoding and timing; a deployed
    candidate through its backend, on the file its export stage writes."""
    from distilltune.evaluation.config import EfficiencySettings, EvaluateConfig

    refs = refs or Refs(cfg, cfg.table(), out / "runs")
    quant = cfg.table()[name].deploy
    deploy = {}
    if quant:
        xc = export_config(cfg, out, name, refs)
        deploy = {"backend": DEPLOY[quant][0], "quant": quant, "artifact": str(deployed_file(xc))}
    return EvaluateConfig(
        **deploy,
        model=refs(name),
        task=str(view),
        output=str(out / "evals" / name),
        retrieval=cfg.retrieval,
        teacher_agreement=False,
        max_new_tokens=cfg.max_new_tokens,
        efficiency=EfficiencySettings(
            prompts=cfg.efficiency_prompts,
            warmup=1,
            max_new_tokens=cfg.max_new_tokens,
            time_budget_s=cfg.efficiency_time_budget_s,
            concurrency=cfg.budgets.concurrency,  # None: the task card's budgets.concurrency
        ),
    )


def _layers(ref: str) -> int | None:
    """Decoder layers of a local or cached built-in model, from its config.json (no weights read)."""
    from distilltune.models.bundled import BUILTIN_MODELS, distilltune_home
    from distilltune.models.resolve import run_artifact_dir

    path = distilltune_home() / "models" / ref if ref in BUILTIN_MODELS else run_artifact_dir(Path(ref))
    try:
        n = json.loads((path / "config.json").read_text()).get("num_hidden_layers")
    except (OSError, ValueError):
        return None
    return n if isinstance(n, int) and n > 0 else None


def size_fraction(refs: Refs, name: str) -> float:
    """The trained or evaluated model's share of the teacher's decoder layers (1.0 if not a student)."""
    from distilltune.models.spec import parse_student_spec

    s = refs.table[name]
    if not refs.is_student(name):
        return 1.0
    ref = s.student if s.kind == "distill" else s.model
    if ref and ref not in SYMBOLS and ref in refs.table:
        return size_fraction(refs, ref)
    spec = parse_student_spec(refs(ref or "student"))
    total = _layers(spec.base) if spec else None
    if spec is None or total is None:
        return 0.25
    try:
        kept = len(spec.layer_choice(total))
    except UserError:  # layers the base does not have: reported when the run is checked
        return 0.25
    # width pruning thins each kept layer: about 2/3 of a layer's weights are MLP, 1/3 attention
    width = 2 / 3 * (spec.mlp or 1.0) + 1 / 3 * (spec.heads or 1.0)
    return min(1.0, kept / total * width)


def stage_weight(cfg, refs: Refs, name: str, action: str, n_train: int, n_eval: int, tc=None) -> float:
    """Estimated seconds of one stage, for the ETA: the strategy's unit costs scaled by the task's size."""
    f = size_fraction(refs, name)
    if action == "evaluate":
        return n_eval * 2.0 * (0.25 + 0.75 * f) + 15
    if action == "export":
        return 60 * f + 10
    s = refs.table[name]
    method = getattr(tc, "method", "full")
    per = s.eta.per_example_s or (1.5 if method == "lora" else 2.0)
    mode = getattr(tc, "mode", None)
    setup = s.eta.per_train_example_s
    if setup is None:
        setup = {"cached": 0.4, "sequence": 0.8}.get(mode, 0.0)
    if mode == "sequence" and tc.sequence.max_prompts:
        n_train = min(n_train, tc.sequence.max_prompts)
    return cfg.steps_for(s) * cfg.batch_size * per * f + setup * n_train + 15
