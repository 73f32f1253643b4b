"""Periodic evaluation during training: eval loss and a fast generation metric.

Two numbers per evaluation, both on the task's eval split: the cross-entropy on the reference
answers (``eval_loss``, up to ``train.eval_loss_items`` items) and fact recall of greedy answers on a
fixed sample of items that list facts (``fact_recall``, up to ``train.eval_samples`` items, at most
``train.eval_max_new_tokens`` new tokens). The sample is fixed by the seed so evaluations along a
run, and across resumed runs, compare the same items. The full evaluation lives in
``distilltune.evaluation``; this one is sized to run every few dozen steps.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from distilltune.data.chat import collate
from distilltune.text import fact_recall
from distilltune.train.config import TrainSettings
from distilltune.train.data import build_examples, prompt_messages
from distilltune.train.objectives import answer_logits


def _sample(items: list, k: int, seed: int) -> list:
    if len(items) <= k:
        return list(items)
    picked = sorted(random.Random(seed).sample(range(len(items)), k))
    return [items[i] for i in picked]


def make_evaluator(
    eval_conversations: Sequence,
    tokenizer,
    settings: TrainSettings,
    system_prompt: str | None,
    prompter=None,
    batch_size: int = 8,
) -> Callable[[torch.nn.Module], dict] | None:
    """Return ``evaluate(model) -> {"eval_loss", "fact_recall", ...}``, or None without eval data."""
    from distilltune.models.generate import generate_chat

    convs = list(eval_conversations)
    if not convs or (settings.eval_loss_items == 0 and settings.eval_samples == 0):
        return None
    loss_convs = _sample(convs, settings.eval_loss_items, settings.seed)
    loss_examples, _ = build_examples(loss_convs, tokenizer, system_prompt, settings.max_length, prompter)
    with_facts = [c for c in convs if getattr(c, "facts", None)]
    gen_convs = _sample(with_facts, settings.eval_samples, settings.seed + 1)
    gen_prompts = [prompt_messages(c, system_prompt, prompter) for c in gen_convs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @torch.no_grad()
    def evaluate(model: torch.nn.Module) -> dict:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        out: dict = {}
        try:
            if loss_examples:
                total, count = 0.0, 0
                for start in range(0, len(loss_examples), batch_size):
                    b = collate(loss_examples[start : start + batch_size], pad)
                    b = {k: v.to(device) for k, v in b.items()}
                    logits, targets = answer_logits(model, b["input_ids"], b["attention_mask"], b["labels"])
                    total += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
                    count += targets.numel()
                out["eval_loss"] = total / count if count else 0.0
            if gen_prompts:
                gens = generate_chat(
                    model,
                    tokenizer,
                    gen_prompts,
                    max_new_tokens=settings.eval_max_new_tokens,
                    batch_size=batch_size,
                )
                scores = [fact_recall(g.text, c.facts) for g, c in zip(gens, gen_convs, strict=True)]
                out["fact_recall"] = sum(scores) / len(scores)
                out["eval_samples"] = len(scores)
        finally:
            model.train(was_training)
        return out

    return evaluate
