"""Reference-answer NLL per eval item: a continuous, paired quality signal that costs one forward pass.

Exact fact matches are rare events for small models (the first wave's demo: every student 0.00), so
two strategies that differ a lot in how close they are to the right answer score the same. The mean
negative log-likelihood of the *reference* answer, per answer token, under each candidate sees that
difference: it is measured on the same items for every strategy (so it pairs), and it needs no
generation.

The prompt is exactly the one the model was asked at evaluation time: the chat the request path
assembled (redacted turns, system prompt, numbered retrieved context; ``RequestResult.messages``, so
retrieval is not run a second time), then the reference answer as the assistant turn; only the answer
tokens are scored. Items the input guard answered are skipped (no model saw them), as are refusal items (the
guard, not the model, is what answers them in serving).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distilltune.data.chat import IGNORE_INDEX, collate, encode_chat


@torch.no_grad()
def reference_nll(
    model,
    tokenizer,
    prompts: list[list[dict] | None],
    references: list[str],
    max_length: int = 2048,
    batch_size: int = 4,
) -> list[float | None]:
    """Mean NLL (nats per answer token) of each reference answer; None where the prompt is None.

    ``prompts[i]`` is the assembled chat the model read for item i (ending with the user turn), or None
    to skip the item.
    """
    from distilltune.train.forward import answer_states, loss_mask

    todo = [i for i, m in enumerate(prompts) if m is not None]
    examples = [
        encode_chat(tokenizer, [*prompts[i], {"role": "assistant", "content": references[i]}], max_length)
        for i in todo
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[float | None] = [None] * len(prompts)
    try:
        for s in range(0, len(examples), batch_size):
            b = {k: v.to(device) for k, v in collate(examples[s : s + batch_size], pad).items()}
            st = answer_states(model, b["input_ids"], b["attention_mask"], b["labels"])
            per_pos = torch.cat(
                [
                    F.cross_entropy(st.logits_chunk(c, min(c + 512, st.n)).float(), st.targets[c : c + 512], reduction="none")
                    for c in range(0, st.n, 512)
                ]
            ) if st.n else torch.zeros(0)  # fmt: skip
            counts = loss_mask(b["labels"]).sum(dim=1).tolist()
            for j, part in enumerate(torch.split(per_pos, counts)):
                out[todo[s + j]] = float(part.mean()) if part.numel() else None
    finally:
        model.train(was_training)
    return out


def reference_nll_engine(
    engine, tokenizer, prompts: list[list[dict] | None], references: list[str], max_length: int = 2048
) -> list[float | None]:
    """``reference_nll`` under a runtime engine (``inference.backends``): the same positions (every
    labelled token), scored with the runtime's logits, so a quantized export is judged as deployed."""
    import numpy as np

    from distilltune.inference.backends.sequential import log_softmax

    out: list[float | None] = [None] * len(prompts)
    for i, msgs in enumerate(prompts):
        if msgs is None:
            continue
        ex = encode_chat(tokenizer, [*msgs, {"role": "assistant", "content": references[i]}], max_length)
        ids, labels = list(ex.input_ids), list(ex.labels)
        labelled = [t for t in range(1, len(ids)) if labels[t] != IGNORE_INDEX]
        if not labelled:
            continue
        first = labelled[0]
        logp = log_softmax(engine.score_answer(ids[:first], ids[first:]))  # row j predicts ids[first + j]
        nll = [-logp[t - first, labels[t]] for t in labelled]
        out[i] = float(np.mean(nll))
    return out
