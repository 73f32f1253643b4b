"""Held-out cross-entropy of a model on a task's eval answers (the "did distillation help" number).

The issue's acceptance comparison: a distilled student and the same student fine-tuned on labels only
for the same number of steps, scored by their mean per-token cross-entropy on *every* eval answer
(not the training loop's sample), with the prompts assembled exactly as for training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distilltune.data.chat import collate


@torch.no_grad()
def heldout_ce(
    model,
    tokenizer,
    conversations,
    system_prompt: str | None,
    max_length: int = 512,
    batch_size: int = 8,
    prompter=None,
) -> dict:
    """{"ce": mean nats per answer token, "tokens": count, "items": n} over ``conversations``."""
    from distilltune.train.data import build_examples
    from distilltune.train.forward import answer_states

    examples, _ = build_examples(conversations, tokenizer, system_prompt, max_length, prompter)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for s in range(0, len(examples), batch_size):
            b = {k: v.to(device) for k, v in collate(examples[s : s + batch_size], pad).items()}
            st = answer_states(model, b["input_ids"], b["attention_mask"], b["labels"])
            for c in range(0, st.n, 512):
                e = min(c + 512, st.n)
                total += float(
                    F.cross_entropy(st.logits_chunk(c, e).float(), st.targets[c:e], reduction="sum")
                )
            count += st.n
    finally:
        model.train(was_training)
    return {"ce": total / count if count else float("nan"), "tokens": count, "items": len(examples)}
