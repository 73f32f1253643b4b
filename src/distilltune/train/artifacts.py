"""What a training run leaves behind: the model or adapter, the model card, the run summary.

Artifacts load without distilltune: a full fine-tune is a plain Hugging Face directory
(``AutoModelForCausalLM.from_pretrained(OUT/model)``); a LoRA / IA3 / prefix adapter is a PEFT
directory whose ``base_model_name_or_path`` is a real local directory (the built-in teacher's cache,
a run's ``model/``, or ``OUT/base-model`` when the base exists only in memory, e.g. a depth-pruned
student), so ``PeftModel.from_pretrained`` finds it. That path breaks when the run directory moves to
another machine or the built-in's home was temporary, so the adapter also carries
``distilltune_base.json`` with the base's portable reference (the built-in's name, or the base's path
relative to the adapter when it lies in the run directory); distilltune's loaders fall back to it
(``models.resolve.adapter_base_ref``). Bottleneck adapters load through
``distilltune.models.load_model``. Every directory is written to a temporary sibling and renamed.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from distilltune.config import to_yaml
from distilltune.io import atomic_dir, atomic_write_json, atomic_write_text
from distilltune.models.bottleneck import save_bottleneck_adapter
from distilltune.models.resolve import BASE_SIDECAR, portable_base_ref

COMPLETE = ".complete"
SUMMARY = "train_summary.json"


def base_reference(ref: str, kind: str, source: str) -> str | None:
    """A local directory (or hub id) PEFT can load the base from; None if the base must be saved."""
    from distilltune.models.bundled import bundled_model_dir

    if kind == "builtin":
        return str(bundled_model_dir(ref).resolve())
    if kind == "dir":
        return str(Path(source).resolve())
    if kind == "hub":
        return ref
    return None  # student spec, GGUF, merged adapter: only in memory


def _prepare_for_saving(model: nn.Module) -> None:
    cfg = getattr(model, "config", None)
    if cfg is not None:
        cfg.use_cache = True  # fast generation for every model but prefix-tuned ones (handled at decode)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.use_cache = True


def save_base_model(model: nn.Module, tokenizer, out_dir: Path) -> Path:
    """Save an in-memory base (student, merged adapter, GGUF) once, so adapters can point at it."""
    if (out_dir / COMPLETE).exists():
        return out_dir
    with atomic_dir(out_dir) as tmp:
        _prepare_for_saving(model)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / COMPLETE).write_text("ok\n")
    return out_dir


def save_trained(
    model: nn.Module,
    tokenizer,
    method: str,
    out_dir: Path,
    base_path: str | None,
    state_dict: dict | None = None,
) -> Path:
    """Write ``model/`` (full) or ``adapter/`` under ``out_dir``; returns the artifact directory.

    ``state_dict``: the full weights when ``model``'s own are sharded (FSDP / DeepSpeed).
    """
    extra = {"state_dict": state_dict} if state_dict is not None else {}
    if method == "full":
        target = out_dir / "model"
        with atomic_dir(target) as tmp:
            _prepare_for_saving(model)
            model.save_pretrained(tmp, safe_serialization=True, **extra)
            tokenizer.save_pretrained(tmp)
        return target
    target = out_dir / "adapter"
    with atomic_dir(target) as tmp:
        if method == "adapter":
            save_bottleneck_adapter(model, tmp, base_path or "", state_dict)
        else:
            model.save_pretrained(tmp, safe_serialization=True, **extra)
            cfg_path = tmp / "adapter_config.json"
            acfg = json.loads(cfg_path.read_text())
            acfg["base_model_name_or_path"] = base_path
            cfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
        portable = portable_base_ref(base_path, target) if base_path else None
        if portable is not None:
            (tmp / BASE_SIDECAR).write_text(json.dumps({"ref": portable}, indent=2) + "\n")
        tokenizer.save_pretrained(tmp)
    return target


def _fmt_metrics(d: dict | None) -> str:
    if not d:
        return "(no evaluation ran)"
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())


def load_snippet(method: str, base_path: str | None) -> str:
    """How to load the run's artifact (``model/`` or ``adapter/``) with the field's usual libraries."""
    artifact = "model" if method == "full" else "adapter"
    if method == "full":
        return (
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{artifact}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{artifact}")\n```\n'
        )
    if method == "adapter":
        return (
            "Bottleneck adapters are not a PEFT type; load them with distilltune:\n\n"
            "```python\nfrom distilltune.models import load_model\n\n"
            f'loaded = load_model("{artifact}")  # .model, .tokenizer\n```\n'
        )
    load = (
        "```python\nfrom peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
        f'model = AutoPeftModelForCausalLM.from_pretrained("{artifact}")  # base: {base_path}\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{artifact}")\n```\n'
    )
    if method in ("lora", "ia3"):
        load += f"\nMerge into a plain model: `distilltune merge {artifact} --output merged`.\n"
    if method == "prefix":
        load += (
            "\nPrefix tuning: generate with `use_cache=False` (transformers' `generate()` drops the "
            "prefix when the KV cache is on); `distilltune generate` does this automatically.\n"
        )
    return load


def card_common_sections(cfg, summary: dict, task, command: str) -> tuple[list[str], list[str]]:
    """The sections every run's card shares: (data + hyperparameters + metrics, how to load).

    The metrics always name the fact recall on held-out eval answers (or say it was not measured),
    so fine-tuned and distilled students can be compared from their cards alone.
    """
    best = summary.get("best_eval") or {}
    last = summary.get("last_eval") or {}
    recall = best.get("fact_recall", last.get("fact_recall"))
    budgets = task.spec.budgets.model_dump(exclude_none=True)
    body = [
        "## Data",
        f"- {summary['train_examples']} training conversations ({summary['train_loss_tokens']} answer tokens), "
        f"{len(task.eval)} eval conversations",
        f"- retrieval-augmented prompts: {'yes' if cfg.rag else 'no'}",
        "",
        "## Hyperparameters",
        "```yaml",
        to_yaml(cfg.train).rstrip(),
        "```",
        "",
        "## Metrics",
        f"- fact recall on held-out eval answers: {recall if recall is not None else 'not measured'}",
        f"- updates: {summary['final_step']} of {summary['total_steps']} ({summary['stopped']}); "
        f"training time {summary['train_seconds']:.1f} s; mean {summary['tokens_per_s']:.0f} tokens/s; "
        f"peak RSS {summary['peak_rss_mb']:.0f} MB",
        f"- best evaluation (step {summary['best_step']}): {_fmt_metrics(summary.get('best_eval'))}",
        f"- last evaluation: {_fmt_metrics(summary.get('last_eval'))}",
        f"- budgets of the task: {budgets or 'none'}",
        "",
    ]
    loading = [
        "## How to load",
        load_snippet(cfg.method, summary.get("base_path")),
        f"The full config is in `config.yaml` (re-run with `distilltune {command} --config config.yaml`); "
        "per-step metrics are in `metrics.jsonl`.",
        "",
    ]
    return body, loading


def model_card(cfg, summary: dict, task) -> str:
    """README.md of the run: base, method, data, hyperparameters, metrics, budgets, how to load."""
    method_cfg = {"lora": cfg.lora, "prefix": cfg.prefix, "ia3": cfg.ia3, "adapter": cfg.adapter}.get(
        cfg.method
    )
    body, loading = card_common_sections(cfg, summary, task, "finetune")
    lines = [
        f"# {task.name}: {cfg.method} fine-tune of {cfg.model}",
        "",
        f"Trained with distilltune on the task card `{task.name}` ({task.spec.description or 'no description'}).",
        "",
        "## Base model",
        f"- reference: `{cfg.model}`",
        f"- base weights: `{summary['base_path']}`",
        f"- parameters: {summary['total_params']:,}; trainable: {summary['trainable_params']:,} "
        f"({100 * summary['trainable_params'] / max(summary['total_params'], 1):.3g}%)",
        "",
        "## Method",
        f"- `{cfg.method}`" + (f": `{method_cfg.model_dump_json()}`" if method_cfg is not None else ""),
        "",
        *body,
        *loading,
    ]
    return "\n".join(lines)


def write_card_and_summary(out_dir: Path, artifact_dir: Path, card: str, summary: dict) -> None:
    atomic_write_text(out_dir / "README.md", card)
    atomic_write_text(artifact_dir / "README.md", card)
    atomic_write_json(out_dir / SUMMARY, summary)


def mark_complete(out_dir: Path) -> None:
    atomic_write_text(out_dir / COMPLETE, "ok\n")


def is_complete(out_dir: Path) -> bool:
    return (Path(out_dir) / COMPLETE).is_file()


def loop_summary(
    result,
    acc,
    *,
    task_name: str,
    base_path: str,
    total_params: int,
    trainable_params: int,
    n_examples: int,
    loss_tokens: int,
) -> dict:
    """The run-summary fields every training run shares (fine-tuning and distillation alike)."""
    import resource

    train_rows = [r for r in result.history if r.get("type") == "train"]
    return {
        "base_path": base_path,
        "task": task_name,
        "total_params": total_params,
        "trainable_params": trainable_params,
        "train_examples": n_examples,
        "train_loss_tokens": loss_tokens,
        "final_step": result.final_step,
        "total_steps": result.total_steps,
        "stopped": result.stopped,
        "resumed_from": result.resumed_from,
        "best_step": result.best_step,
        "best_eval": result.best_eval,
        "last_eval": result.last_eval,
        "train_seconds": result.train_seconds,
        "tokens_per_s": sum(r["tokens_per_s"] for r in train_rows) / len(train_rows) if train_rows else 0.0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "processes": acc.num_processes,
    }
