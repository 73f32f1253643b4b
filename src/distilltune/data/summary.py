"""Statistics of a task card for ``distilltune task show``: what the user's data looks like."""

from __future__ import annotations

from distilltune.data.chat import encode_many, with_system
from distilltune.task.load import Task


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {"min": 0, "p50": 0, "p95": 0, "max": 0}
    s = sorted(values)

    def q(f: float) -> int:
        return s[min(len(s) - 1, round(f * (len(s) - 1)))]

    return {"min": s[0], "p50": q(0.5), "p95": q(0.95), "max": s[-1]}


def task_summary(task: Task, tokenizer=None, max_length: int = 4096) -> dict:
    cited = {s for conv in task.train + task.eval for s in conv.sources}
    out: dict = {
        "name": task.name,
        "counts": {
            "train": len(task.train),
            "eval": len(task.eval),
            "knowledge_docs": len(task.knowledge),
            "blocked_topics": len(task.policy.blocked_topics),
            "scenarios": len(task.scenarios),
            "adversarial": len(task.adversarial),
        },
        "refusal_share": {
            split: round(sum(task.is_refusal(c) for c in convs) / len(convs), 3) if convs else 0.0
            for split, convs in (("train", task.train), ("eval", task.eval))
        },
        "multi_turn_share": {
            split: round(
                sum(sum(m.role == "assistant" for m in c.messages) > 1 for c in convs) / len(convs), 3
            )
            if convs
            else 0.0
            for split, convs in (("train", task.train), ("eval", task.eval))
        },
        "uncited_knowledge": sorted(set(task.knowledge) - cited),
        "knowledge_words": sum(len(t.split()) for t in task.knowledge.values()),
        "warnings": len(task.warnings),
    }
    if tokenizer is not None:
        tokens = {}
        for split, convs in (("train", task.train), ("eval", task.eval)):
            msgs = [with_system(task.system_prompt, [m.model_dump() for m in c.messages]) for c in convs]
            examples, stats = encode_many(tokenizer, msgs, max_length)
            tokens[split] = {
                "sequence": _percentiles(stats.lengths),
                "answer": _percentiles([e.n_loss_tokens for e in examples]),
                "total_answer_tokens": stats.loss_tokens,
            }
        doc_tokens = [len(tokenizer(t)["input_ids"]) for t in task.knowledge.values()]
        tokens["knowledge_doc"] = _percentiles(doc_tokens)
        out["tokens"] = tokens
    return out
