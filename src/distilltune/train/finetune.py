"""``run_finetune(cfg)``: validate, load, apply the method, run the shared loop, write the run dir.

The order matters for the user: every config problem (unknown keys and types are caught by the
typed config; task card errors, LoRA target modules that match nothing, a method that does not fit
the model, an unfinished output dir) is collected and reported at once *before* any weight is
loaded: the architecture is checked on the meta device. A finished run dir (marker ``.complete``,
written last) is returned as is, so ``compare`` can call this idempotently; ``resume=True``
continues an unfinished one from its latest complete checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from distilltune.config import read_yaml, to_yaml
from distilltune.errors import Problem, UserError
from distilltune.io import atomic_write_text
from distilltune.train.artifacts import (
    base_reference,
    is_complete,
    loop_summary,
    mark_complete,
    model_card,
    save_base_model,
    save_trained,
    write_card_and_summary,
)
from distilltune.train.checkpoint import list_checkpoints
from distilltune.train.config import FinetuneConfig
from distilltune.train.progress import LineReporter, Reporter


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def validate(cfg: FinetuneConfig, resume: bool = False):
    """Check everything that can be checked without weights; return the loaded task."""
    from distilltune.task import load_task
    from distilltune.train.methods import check_method, meta_model

    problems: list[Problem] = []
    task = None
    try:
        task = load_task(cfg.task)
    except UserError as e:
        problems += e.problems or [Problem(cfg.task, e.message, field="task")]
    try:
        skeleton, base_peft = meta_model(cfg.model, cfg.teacher)
        problems += check_method(cfg, skeleton, base_peft)
        del skeleton
    except UserError as e:
        problems += [Problem("<config>", e.message, field="model"), *e.problems]
    except (OSError, ValueError, KeyError) as e:
        problems.append(Problem("<config>", f"cannot read the model's config: {e}", field="model"))
    if task is not None:
        if not task.train:
            problems.append(Problem(cfg.task, "the task has no training conversations", field="data.train"))
        if cfg.rag and not task.knowledge:
            problems.append(
                Problem(cfg.task, "rag: true needs knowledge documents, and the task has none", field="rag")
            )
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        problems.append(Problem("<config>", f"{out} exists and is not a directory", field="output"))
    elif out.is_dir() and not is_complete(out):
        has_run = (out / "config.yaml").exists() or bool(list_checkpoints(out))
        if has_run and not resume:
            problems.append(
                Problem(
                    "<config>",
                    f"{out} holds an unfinished run; pass --resume to continue it or choose another --output",
                    field="output",
                )
            )
        if resume and (out / "config.yaml").exists():
            before = read_yaml(out / "config.yaml")
            changed = _diff_keys(before, cfg.resolved().model_dump(mode="json"))
            if changed:
                problems.append(
                    Problem(
                        str(out / "config.yaml"),
                        f"--resume needs the same config as the interrupted run; changed: {', '.join(changed)}",
                    )
                )
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        n = len(errors)
        raise UserError(f"cannot fine-tune: {n} problem{'s' if n != 1 else ''}", problems)
    return task


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


def load_finetune_config(
    config_file: str | Path | None, cli_values: dict, overrides: list[str] | None, resume: bool = False
) -> FinetuneConfig:
    """``resolve_config`` for finetune, reporting type errors *and* model/task problems in one go.

    When some keys are invalid, the rest of the config is still checked against the task and the
    model's architecture (with the invalid keys at their defaults), so a user sees every problem at once.
    """
    from pydantic import ValidationError

    from distilltune.config import deep_merge, deep_set, parse_override, resolve_config

    try:
        return resolve_config(FinetuneConfig, config_file, cli_values, overrides)
    except UserError as first:
        if not first.problems or first.message != "invalid configuration":
            raise
        data = read_yaml(config_file) if config_file else {}
        data = deep_merge(data, {k: v for k, v in cli_values.items() if v is not None})
        for text in overrides or []:
            keys, value = parse_override(text)
            deep_set(data, keys, value)
        try:
            FinetuneConfig.model_validate(data)
        except ValidationError as e:
            for err in e.errors():
                if err["type"] != "missing":
                    _drop(data, err["loc"])
        problems = list(first.problems)
        try:
            validate(FinetuneConfig.model_validate(data), resume)
        except ValidationError:
            pass  # required keys missing: already reported
        except UserError as more:
            problems += more.problems
        raise UserError(f"invalid configuration: {len(problems)} problems", problems) from None


def make_prompter(cfg: FinetuneConfig, task, tokenizer):
    """The server's prompt assembly (system prompt + retrieved context) when rag is on, else None."""
    if not cfg.rag:
        return None
    from distilltune.retrieval import GroundedPrompter, KnowledgeIndex

    index = KnowledgeIndex.open(task, cfg.retrieval)
    return GroundedPrompter.from_config(task.system_prompt, tokenizer, index, cfg.retrieval)


def _count_params(model: torch.nn.Module) -> tuple[int, int]:
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def run_finetune(cfg: FinetuneConfig, resume: bool = False, reporter: Reporter | None = None) -> Path:
    """Fine-tune ``cfg.model`` on ``cfg.task`` with ``cfg.method``; returns the run directory."""
    from distilltune.models import load_model
    from distilltune.train.data import build_examples
    from distilltune.train.evaluator import make_evaluator
    from distilltune.train.loop import make_accelerator, train_loop
    from distilltune.train.methods import apply_method, trainable_line
    from distilltune.train.objectives import causal_lm_objective

    out = Path(cfg.output)
    reporter = reporter or LineReporter(sys.stderr)
    if is_complete(out):
        reporter.message(f"{out} is already complete; nothing to do")
        return out
    task = validate(cfg, resume)
    cfg = cfg.resolved()
    acc = make_accelerator(cfg.train.precision)
    main = acc.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", to_yaml(cfg))
    acc.wait_for_everyone()

    torch.manual_seed(cfg.train.seed)  # method initialisation (LoRA A matrices, adapters)
    loaded = load_model(cfg.model, teacher=cfg.teacher, trainable=True)
    tokenizer = loaded.tokenizer
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    base_path = base_reference(cfg.model, loaded.kind, loaded.source)
    if cfg.method != "full" and (base_path is None or loaded.kind == "adapter"):
        from distilltune.train.methods import merge_if_adapter

        base = merge_if_adapter(loaded.model)
        if main:
            save_base_model(base, tokenizer, out / "base-model")
        acc.wait_for_everyone()
        base_path = str((out / "base-model").resolve())
        loaded.model = base
    model = apply_method(loaded.model, cfg)
    total_params, trainable_params = _count_params(model)
    if main:
        reporter.message(f"{cfg.method} on {cfg.model}: {trainable_line(model)}")

    prompter = make_prompter(cfg, task, tokenizer)
    examples, stats = build_examples(
        task.train, tokenizer, task.system_prompt, cfg.train.max_length, prompter
    )
    if main:
        reporter.message(f"training data: {stats.line()}" + (" (with retrieved context)" if cfg.rag else ""))
    evaluator = make_evaluator(task.eval, tokenizer, cfg.train, task.system_prompt, prompter)
    result = train_loop(
        model=model,
        examples=examples,
        objective=causal_lm_objective,
        settings=cfg.train,
        lr=cfg.lr(),
        run_dir=out,
        pad_id=tokenizer.pad_token_id,
        evaluator=evaluator,
        reporter=reporter,
        resume=resume,
        accelerator=acc,
    )
    if main:
        summary = {
            "method": cfg.method,
            "model": cfg.model,
            **loop_summary(
                result,
                acc,
                task_name=task.name,
                base_path=base_path,
                total_params=total_params,
                trainable_params=trainable_params,
                n_examples=len(examples),
                loss_tokens=stats.loss_tokens,
            ),
        }
        artifact = save_trained(result.model, tokenizer, cfg.method, out, base_path, result.state_dict)
        write_card_and_summary(out, artifact, model_card(cfg, summary, task), summary)
        mark_complete(out)
        reporter.message(f"done: {artifact}")
    acc.wait_for_everyone()
    return out
