"""Batched chat generation with the numbers evaluation and serving need.

A small explicit decode loop instead of ``model.generate`` because we need, per answer: prefill and
decode time separately, the mean token log-probability (the cascade's confidence signal), and
correct behaviour for PEFT prefix tuning, whose prefix ``generate()`` silently drops when the KV
cache is on (docs/design.md) — for those models we recompute the full sequence each step.
Every call is capped by ``max_new_tokens`` and stops on the chat template's end token: an untrained
student may never emit it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

# The chat format owns its end tokens (data.chat); re-exported for generation's callers.
from distilltune.data.chat import stop_token_ids


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_s: float
    mean_logprob: float
    finished: bool  # stopped on an end token (not on the length cap)


def uses_prefix_tuning(model) -> bool:
    from distilltune.models.resolve import peft_types

    return "PREFIX_TUNING" in peft_types(model)


def _cache_kwarg(model) -> str:
    """transformers >= 5.24 names the KV cache ``cache``; earlier 5.x releases ``past_key_values``."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def render_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """The prompt ids of a chat: the template rendered as text, then one tokenizer call.

    The same ids as ``apply_chat_template(tokenize=True)`` (which renders, then tokenizes without
    special tokens), ~500x faster than tokenizing inside it; training encodes the same way. The one
    prompt tokenization for evaluation and serving (``distilltune.inference``)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@torch.inference_mode()
def generate_ids(
    model,
    prompts: list[list[int]],
    stop_ids: list[int],
    pad_id: int,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[list[list[int]], list[list[float]], float, float]:
    """Decode a batch of token-id prompts. Returns (new ids, their log-probs, prefill s, decode s)."""
    device = next(model.parameters()).device
    b = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding keeps every sequence's last token aligned
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    use_cache = not uses_prefix_tuning(model)
    cache_kw = _cache_kwarg(model)
    stops = torch.tensor(stop_ids, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    out_ids: list[list[int]] = [[] for _ in range(b)]
    out_lp: list[list[float]] = [[] for _ in range(b)]
    past = None
    t0 = time.perf_counter()
    prefill_s = 0.0
    seq, seq_mask = ids, mask
    for step in range(max_new_tokens):
        if use_cache and past is not None:
            inp = seq[:, -1:]
            pos = (seq_mask.sum(-1, keepdim=True) - 1).clamp(min=0)
        else:
            inp = seq
            pos = (seq_mask.cumsum(-1) - 1).clamp(min=0)
        # Prefix-tuned PEFT models inject their prefix as the cache: passing any cache kwarg
        # (even None) makes transformers drop it, so they get no cache argument at all.
        cache_args = {cache_kw: past, "use_cache": True} if use_cache else {}
        res = model(input_ids=inp, attention_mask=seq_mask, position_ids=pos, **cache_args)
        logits = res.logits[:, -1, :].float()
        past = getattr(res, cache_kw) if use_cache else None
        logp = torch.log_softmax(logits, dim=-1)
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        else:
            nxt = logits.argmax(-1)
        if step == 0:
            prefill_s = time.perf_counter() - t0
        lp = logp.gather(-1, nxt[:, None]).squeeze(-1)
        for i in range(b):
            if not done[i]:
                out_ids[i].append(int(nxt[i]))
                out_lp[i].append(float(lp[i]))
        done = done | torch.isin(nxt, stops)
        nxt = torch.where(done & torch.isin(nxt, stops).logical_not(), torch.full_like(nxt, pad_id), nxt)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        seq_mask = torch.cat([seq_mask, torch.ones((b, 1), dtype=seq_mask.dtype, device=device)], dim=1)
        if bool(done.all()):
            break
    total = time.perf_counter() - t0
    return out_ids, out_lp, prefill_s, total - prefill_s


def generate_chat(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[Generation]:
    """Answer each conversation (a list of {role, content}, ending with a user turn)."""
    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    gen = torch.Generator().manual_seed(seed)
    results: list[Generation] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(conversations), batch_size):
            chunk = conversations[start : start + batch_size]
            prompts = [render_prompt(tokenizer, c) for c in chunk]
            ids, lps, pre, dec = generate_ids(model, prompts, stops, pad, max_new_tokens, temperature, gen)
            for p, new, lp in zip(prompts, ids, lps, strict=True):
                finished = bool(new) and new[-1] in stops
                body = new[:-1] if finished else new
                results.append(
                    Generation(
                        text=tokenizer.decode(body, skip_special_tokens=True).strip(),
                        prompt_tokens=len(p),
                        new_tokens=len(new),
                        prefill_s=pre,
                        decode_s=dec,
                        mean_logprob=sum(lp) / len(lp) if lp else 0.0,
                        finished=finished,
                    )
                )
    finally:
        model.train(was_training)
    return results
