"""The model card (README.md) of a distillation run: teacher, student, signal, data, metrics, loading.

It states what a reader needs to trust or reproduce the student: which teacher and how its signal was
obtained (cache key, k, bytes per token, how much of the teacher's mass the top-k hold; or the
sequence-level data's filter and patch counts), the loss and its settings, and the evaluation numbers
(fact recall and eval cross-entropy) measured during training.
"""

from __future__ import annotations

from distilltune.train.artifacts import card_common_sections


def _signal_lines(cfg, summary: dict) -> list[str]:
    lines = []
    c = summary.get("teacher_cache")
    if c:
        mass = c.get("topk_mass") or {}
        where = (
            "positions (every token of the prompts and answers)"
            if c.get("positions") == "all"
            else "answer tokens"
        )
        lines += [
            f"- teacher top-{c['k']} cache `{c['key']}`: {c['n_positions']} {where}, "
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
    kd = cfg.kd
    objective = (
        "cross-entropy on the teacher's curated answers (sequence-level KD)"
        if cfg.mode == "sequence"
        else f"{kd.alpha}·CE(labels) + {1 - kd.alpha:g}·T²·{kd.describe()}, T={kd.temperature}; "
        + (
            "the divergence at every token the teacher reads (prompt, context, answer), CE on the answers"
            if kd.positions == "all"
            else "both on the answer tokens"
        )
    )
    body, loading = card_common_sections(cfg, summary, task, "distill")
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
        *body,
        *loading,
    ]
    return "\n".join(lines)
