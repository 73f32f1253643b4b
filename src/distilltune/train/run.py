"""One training run for any objective: ``run_training(cfg, recipe)`` checks, sets up, trains, saves.

Fine-tuning (``train.finetune``) and distillation (``distill.distill``) are *recipes*: the few things
that differ (extra checks, where the training conversations come from, what must exist before the
model loads, which registered objective trains it, the card). Everything else happens here, once, in
an order chosen so mistakes cost seconds, not hours:

1. ``check_run`` without weights, every problem reported at once: the task card, the trained model's
   tokenizer, its method on a meta-device skeleton, the recipe's own checks (teacher vocabulary,
   files), the output dir (an unfinished run needs ``--resume`` with an unchanged config);
2. ``config.yaml``; prompt assembly; the training conversations (``recipe.conversations``: the task's,
   or the teacher's curated answers) encoded into examples;
3. ``recipe.prepare``: what must exist before the trained model is loaded (the teacher signal: a
   top-k cache is built and its teacher freed first, so two models never share memory needlessly);
4. the model and its method; a base that exists only in memory (a pruned student, a merged adapter)
   is saved once as ``base-model/`` so an adapter artifact can point at it;
5. the objective from the registry (``train.objectives.OBJECTIVES``) in the shared loop;
6. ``save_run``: the artifact from the weights the loop gathered when they were sharded (FSDP /
   DeepSpeed: the main process's model holds only its shard), the card, the summary, ``.complete`` last.

A finished run dir (marker ``.complete``) is returned as is, so ``compare`` and pipelines can call
this idempotently; ``resume=True`` continues an unfinished one from its latest complete checkpoint.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from distilltune.config import read_yaml, to_yaml
from distilltune.errors import Problem, UserError
from distilltune.io import atomic_write_text
from distilltune.train.artifacts import is_complete
from distilltune.train.progress import LineReporter, Reporter


class Recipe(Protocol):
    """What one kind of training run adds to ``run_training`` (see the module docstring)."""

    kind: str  # "finetune" | "distill": the summary's kind and the command named in the card
    verb: str  # "fine-tune" | "distill": "cannot distill: 2 problems"
    model_field: str  # the config key naming the trained model ("model" | "student")

    def method_config(self, cfg) -> Any:
        """The ``FinetuneConfig`` view of ``cfg`` that method checks and PEFT wrapping read."""

    def check(self, cfg, skeleton: nn.Module | None, tokenizer) -> list[Problem]:
        """Weight-free problems of the recipe's own settings (skeleton/tokenizer: None if unreadable)."""

    def reusable(self, out: Path) -> bool:
        """True if an unfinished ``out`` may be continued without ``--resume`` (a review stage)."""

    def conversations(self, ctx: RunContext) -> list | None:
        """The training conversations; None ends the run here (e.g. answers left for review)."""

    def prepare(self, ctx: RunContext) -> None:
        """Set up what the objective needs before the trained model loads (``ctx.signal``)."""

    def objective(self, cfg) -> str:
        """The name of the registered objective that trains this run."""

    def finish(self, ctx: RunContext, result) -> None:
        """After the loop, before saving (remove training-only modules, free the teacher)."""

    def summary(self, ctx: RunContext) -> dict:
        """The recipe's own fields of ``train_summary.json``."""

    def card(self, cfg, summary: dict, task) -> str:
        """The model card (README.md)."""


@dataclass
class RunContext:
    """The state of a run as it is built, handed to the recipe's hooks and the objective builders."""

    cfg: Any  # resolved config
    recipe: Recipe
    task: Any
    tokenizer: Any
    acc: Any  # accelerate.Accelerator
    reporter: Reporter
    out: Path
    prompter: Any = None
    examples: list | None = None
    stats: Any = None
    model: nn.Module | None = None  # the trained model, method applied (set before the objective is built)
    signal: Any = None  # what recipe.prepare set up (distillation: the teacher, its cache, its answers)

    @property
    def main(self) -> bool:
        return self.acc.is_main_process


def diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameters, tied weights counted once."""
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def _model_problems(cfg, recipe: Recipe) -> tuple[list[Problem], Any]:
    """The trained model's tokenizer and method (on a meta-device skeleton), plus the recipe's checks;
    returns (problems, the tokenizer or None)."""
    from distilltune.models import load_tokenizer
    from distilltune.train.methods import check_method, meta_model

    field = recipe.model_field
    ref = getattr(cfg, field)
    problems: list[Problem] = []
    tokenizer = skeleton = None
    try:
        tokenizer = load_tokenizer(ref, teacher=cfg.teacher)
    except UserError as e:
        problems += [Problem("<config>", e.message, field=field), *e.problems]
    except (OSError, ValueError) as e:
        problems.append(Problem("<config>", f"cannot read the tokenizer: {e}", field=field))
    try:
        skeleton, base_peft = meta_model(ref, cfg.teacher)
        problems += check_method(recipe.method_config(cfg), skeleton, base_peft)
    except UserError as e:
        if all(p.message != e.message for p in problems):  # an unreadable reference is reported once
            problems += [Problem("<config>", e.message, field=field), *e.problems]
    except (OSError, ValueError, KeyError) as e:
        problems.append(Problem("<config>", f"cannot read the model's config: {e}", field=field))
    problems += recipe.check(cfg, skeleton, tokenizer)
    return problems, tokenizer


def _output_problems(cfg, recipe: Recipe, resume: bool) -> list[Problem]:
    from distilltune.train.checkpoint import list_checkpoints

    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        return [Problem("<config>", f"{out} exists and is not a directory", field="output")]
    if not out.is_dir() or is_complete(out) or recipe.reusable(out):
        return []
    problems = []
    if ((out / "config.yaml").exists() or list_checkpoints(out)) and not resume:
        msg = f"{out} holds an unfinished run; pass --resume to continue it or choose another --output"
        problems.append(Problem("<config>", msg, field="output"))
    if resume and (out / "config.yaml").exists():
        changed = diff_keys(read_yaml(out / "config.yaml"), cfg.resolved().model_dump(mode="json"))
        if changed:
            msg = f"--resume needs the same config as the interrupted run; changed: {', '.join(changed)}"
            problems.append(Problem(str(out / "config.yaml"), msg))
    return problems


def check_run(cfg, recipe: Recipe, resume: bool = False):
    """Every problem that can be found without loading weights, reported at once.

    Returns (the task, the trained model's tokenizer)."""
    from distilltune.task import load_task

    problems: list[Problem] = []
    task = None
    try:
        task = load_task(cfg.task)
    except UserError as e:
        problems += e.problems or [Problem(cfg.task, e.message, field="task")]
    more, tokenizer = _model_problems(cfg, recipe)
    problems += more
    if task is not None:
        if not task.train:
            problems.append(Problem(cfg.task, "the task has no training conversations", field="data.train"))
        if cfg.rag and not task.knowledge:
            problems.append(
                Problem(cfg.task, "rag: true needs knowledge documents, and the task has none", field="rag")
            )
    problems += _output_problems(cfg, recipe, resume)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        n = len(errors)
        raise UserError(f"cannot {recipe.verb}: {n} problem{'s' if n != 1 else ''}", problems)
    return task, tokenizer


def make_prompter(cfg, task, tokenizer):
    """The server's prompt assembly (system prompt + retrieved context) when rag is on, else None."""
    if not cfg.rag:
        return None
    from distilltune.retrieval import GroundedPrompter, KnowledgeIndex

    index = KnowledgeIndex.open(task, cfg.retrieval)
    return GroundedPrompter.from_config(task.system_prompt, tokenizer, index, cfg.retrieval)


def _start(cfg, recipe: Recipe, task, tokenizer, reporter: Reporter) -> RunContext:
    """config.yaml (main process), the accelerator, the padded tokenizer and the prompt assembly."""
    from distilltune.train.loop import make_accelerator

    acc = make_accelerator(cfg.train.precision)
    out = Path(cfg.output)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", to_yaml(cfg))
    acc.wait_for_everyone()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    ctx = RunContext(cfg, recipe, task, tokenizer, acc, reporter, out)
    ctx.prompter = make_prompter(cfg, task, tokenizer)
    return ctx


def load_trained_model(ctx: RunContext) -> tuple[nn.Module, str | None]:
    """The model to train with its method applied, and the base an adapter artifact will point at."""
    from distilltune.models import load_model
    from distilltune.train.artifacts import base_reference, save_base_model
    from distilltune.train.methods import apply_method, merge_if_adapter, trainable_line

    cfg, recipe = ctx.cfg, ctx.recipe
    ref = getattr(cfg, recipe.model_field)
    torch.manual_seed(cfg.train.seed)  # method initialisation (LoRA A matrices, adapters)
    loaded = load_model(ref, teacher=cfg.teacher, trainable=True)
    base_path = base_reference(ref, loaded.kind, loaded.source)
    if cfg.method != "full" and (base_path is None or loaded.kind == "adapter"):
        base = merge_if_adapter(loaded.model)
        if ctx.main:
            save_base_model(base, ctx.tokenizer, ctx.out / "base-model")
        ctx.acc.wait_for_everyone()
        base_path = str((ctx.out / "base-model").resolve())
        loaded.model = base
    model = apply_method(loaded.model, recipe.method_config(cfg))  # the loop's prepare() places it
    if ctx.main:
        ctx.reporter.message(f"{recipe.model_field} {ref} ({cfg.method}): {trainable_line(model)}")
    return model, base_path


def run_training(cfg, recipe: Recipe, resume: bool = False, reporter: Reporter | None = None) -> Path:
    """Check, set up, train and save one run of ``recipe``; returns the run directory."""
    from distilltune.train.data import build_examples
    from distilltune.train.evaluator import make_evaluator
    from distilltune.train.loop import train_loop
    from distilltune.train.objectives import build_objective

    out = Path(cfg.output)
    reporter = reporter or LineReporter(sys.stderr)
    if is_complete(out):
        reporter.message(f"{out} is already complete; nothing to do")
        return out
    task, tokenizer = check_run(cfg, recipe, resume)
    ctx = _start(cfg.resolved(), recipe, task, tokenizer, reporter)
    cfg = ctx.cfg
    convs = recipe.conversations(ctx)
    if convs is None:
        return out
    ctx.examples, ctx.stats = build_examples(
        convs, ctx.tokenizer, task.system_prompt, cfg.train.max_length, ctx.prompter
    )
    if ctx.main:
        rag = " (with retrieved context)" if cfg.rag else ""
        reporter.message(f"training data: {ctx.stats.line()}{rag}")
    recipe.prepare(ctx)
    ctx.model, base_path = load_trained_model(ctx)
    params = count_params(ctx.model)
    objective_name = recipe.objective(cfg)
    result = train_loop(
        model=ctx.model,
        examples=ctx.examples,
        objective=build_objective(objective_name, ctx),
        settings=cfg.train,
        lr=cfg.lr(),
        run_dir=out,
        pad_id=ctx.tokenizer.pad_token_id,
        evaluator=make_evaluator(task.eval, ctx.tokenizer, cfg.train, task.system_prompt, ctx.prompter),
        reporter=reporter,
        resume=resume,
        accelerator=ctx.acc,
        header=f"{recipe.kind} ({objective_name}) ",
    )
    recipe.finish(ctx, result)
    save_run(ctx, result, base_path, params)
    return out


def save_run(ctx: RunContext, result, base_path: str | None, params: tuple[int, int]) -> Path | None:
    """Artifact, card, summary and ``.complete`` (main process); every process waits for it.

    The artifact is written from ``result.state_dict`` when the loop gathered one: under FSDP or
    DeepSpeed ``result.model`` on the main process holds only its shard, and saving it would write a
    partial model. With one process or DDP the state dict is None and the model's own weights are whole.
    """
    from distilltune.train.artifacts import loop_summary, mark_complete, save_trained, write_card_and_summary

    cfg, recipe, artifact = ctx.cfg, ctx.recipe, None
    if ctx.main:
        summary = {
            "kind": recipe.kind,
            **recipe.summary(ctx),
            **loop_summary(
                result,
                ctx.acc,
                task_name=ctx.task.name,
                base_path=base_path,
                total_params=params[0],
                trainable_params=params[1],
                n_examples=len(ctx.examples),
                loss_tokens=ctx.stats.loss_tokens,
            ),
        }
        artifact = save_trained(
            result.model, ctx.tokenizer, cfg.method, ctx.out, base_path, result.state_dict
        )
        write_card_and_summary(ctx.out, artifact, recipe.card(cfg, summary, ctx.task), summary)
        mark_complete(ctx.out)
        ctx.reporter.message(f"done: {artifact}")
    ctx.acc.wait_for_everyone()
    return artifact


def _drop(data: dict, loc: tuple) -> None:
    """Remove the value at ``loc`` (a pydantic error location) from nested ``data``, if present."""
    if not loc:
        return
    node = data
    for key in loc[:-1]:
        if not isinstance(node, dict) or key not in node:
            return
        node = node[key]
    if isinstance(node, dict):
        node.pop(loc[-1], None)


def load_run_config(
    cls,
    recipe,
    config_file: str | Path | None,
    cli_values: dict,
    overrides: list[str] | None,
    resume: bool = False,
):
    """``resolve_config`` for a training command, reporting type errors *and* model/task problems at once.

    When some keys are invalid, the rest of the config is still checked against the task and the
    model's architecture (with the invalid keys at their defaults), so a user sees every problem at once.
    """
    from pydantic import ValidationError

    from distilltune.config import deep_merge, deep_set, parse_override, resolve_config

    try:
        return resolve_config(cls, config_file, cli_values, overrides)
    except UserError as first:
        if not first.problems or first.message != "invalid configuration":
            raise
        data = read_yaml(config_file) if config_file else {}
        data = deep_merge(data, {k: v for k, v in cli_values.items() if v is not None})
        for text in overrides or []:
            keys, value = parse_override(text)
            deep_set(data, keys, value)
        try:
            cls.model_validate(data)
        except ValidationError as e:
            for err in e.errors():
                if err["type"] != "missing":
                    _drop(data, err["loc"])
        problems = list(first.problems)
        try:
            check_run(cls.model_validate(data), recipe, resume)
        except ValidationError:
            pass  # required keys missing: already reported
        except UserError as more:
            problems += more.problems
        raise UserError(f"invalid configuration: {len(problems)} problems", problems) from None
