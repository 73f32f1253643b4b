"""The model card (README.md) of a distillation run: teacher, student, signal, data, metrics, loading.

It states what a reader needs to trust or reproduce the student: which teacher and how its signal was
obtained (cache key, k, bytes per token, how much of the teacher's mass the top-k hold; or the
sequence-level data's filter and patch counts), the loss and its settings, and the evaluation numbers
(fact recall and eval cross-entropy) measured during training.
"""

from __future__ import annotations

from distilltune.config import to_yaml


def _fmt(d: dict | None) -> str:
    if not d:
        return "(no evaluation ran)"
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())


def _signal_lines(cfg, summary: dict) -> list[str]:
    lines = []
    c = summary.get("teacher_cache")
    if c:
        mass = c.get("topk_mass") or {}
        lines += [
            f"- teacher top-{c['k']} cache `{c['key']}`: {c['n_positions']} answer tokens, "
            f"{c['payload_bytes_per_token']} bytes/token ({c['file_bytes'] / 1e6:.1f} MB on disk)",
            f"- the top-{c['k']} hold a median {mass.get('median')} of the teacher's probability mass "
            f"(10th percentile {mass.get('p10')}); the rest is one tail bucket",
            f"- teacher cross-entropy on the training answers: {c.get('teacher_answer_ce')}",
        ]
    s = summary.get("sequence")
    if s:
        lines += [
            f"- sequence-level data: {s['kept']} of {s['prompts']} teacher answers kept "
            f"(by origin {s['kept_by_origin']}), dropped {s['dropped_by_reason'] or 'none'}, {s['patched']} patched",
            "- reviewable answers with provenance: `sequence/teacher_answers.jsonl`; trained on "
            "`sequence/train_data.jsonl`",
        ]
    if cfg.mode == "on-policy":
        o = cfg.onpolicy
        lines.append(
            f"- on-policy: λ={o.lmbda} of batches answered by the student (≤ {o.max_new_tokens} tokens, "
            f"T={o.temperature}), other batches from the {o.off_policy} teacher"
        )
    if cfg.hidden.weight > 0:
        lines.append(f"- hidden-state term: {cfg.hidden.loss}, weight {cfg.hidden.weight}")
    return lines


def distill_card(cfg, summary: dict, task) -> str:
    artifact = "model" if cfg.method == "full" else "adapter"
    if cfg.method == "full":
        load = (
            "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'model = AutoModelForCausalLM.from_pretrained("{artifact}")\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{artifact}")\n```\n'
        )
    else:
        load = (
            "```python\nfrom peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n\n"
            f'model = AutoPeftModelForCausalLM.from_pretrained("{artifact}")  # base: {summary["base_path"]}\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{artifact}")\n```\n'
        )
    loss_desc = {
        "fkl": "forward KL",
        "rkl": "reverse KL",
        "jsd": f"generalised JSD (β={cfg.beta})",
        "skl": f"skew forward KL (α={cfg.skew})",
        "srkl": f"skew reverse KL (α={cfg.skew})",
        "tvd": "total variation",
    }[cfg.loss]
    best = summary.get("best_eval") or {}
    last = summary.get("last_eval") or {}
    recall = best.get("fact_recall", last.get("fact_recall"))
    budgets = task.spec.budgets.model_dump(exclude_none=True)
    objective = (
        "cross-entropy on the teacher's curated answers (sequence-level KD)"
        if cfg.mode == "sequence"
        else f"{cfg.alpha}·CE(labels) + {1 - cfg.alpha:g}·T²·{loss_desc}, T={cfg.temperature}"
    )
    lines = [
        f"# {task.name}: student distilled from {cfg.teacher}",
        "",
        f"Trained with distilltune on the task card `{task.name}` ({task.spec.description or 'no description'}).",
        "",
        "## Teacher and student",
        f"- teacher: `{cfg.teacher}`",
        f"- student: `{cfg.student}` ({cfg.method}); parameters: {summary['total_params']:,}, "
        f"trainable: {summary['trainable_params']:,}",
        "",
        "## Distillation",
        f"- mode: `{cfg.mode}`; objective: {objective}",
        *_signal_lines(cfg, summary),
        "",
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
        f"- best evaluation (step {summary['best_step']}): {_fmt(summary.get('best_eval'))}",
        f"- last evaluation: {_fmt(summary.get('last_eval'))}",
        f"- budgets of the task: {budgets or 'none'}",
        "",
        "## How to load",
        load,
        "The full config is in `config.yaml` (re-run with `distilltune distill --config config.yaml`); "
        "per-step metrics are in `metrics.jsonl`.",
        "",
    ]
    return "\n".join(lines)
