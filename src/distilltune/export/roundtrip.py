"""Does the exported model still answer like the source? Greedy answers to the task's eval prompts.

Three numbers, each against the *source* model's own greedy answer:

- ``exact_match``: share of prompts whose exported greedy answer is token-for-token the same;
- ``token_agreement``: teacher-forced top-1 agreement — the exported model reads the prompt plus the
  source's answer and we count the positions where its most likely next token is the source's
  (unlike comparing free-running answers, one early difference does not void the rest);
- ``fact_recall`` of both answers (``evaluation.metrics.fact_recall``) and their difference.

Prompts are rendered by each side's *own* tokenizer; ``prompt_tokens_identical`` checks that the
exported tokenizer (rebuilt from GGUF metadata, say) encodes them exactly like the source.
Only aggregates are reported: no prompt or answer text goes into ``export.json``.
"""

from __future__ import annotations

import numpy as np

from distilltune.evaluation.metrics import fact_recall


def _render(tokenizer, messages: list[dict]) -> list[int]:
    from distilltune.models.generate import render_prompt

    return render_prompt(tokenizer, messages)


def _answer_text(tokenizer, ids: list[int], stops: list[int]) -> str:
    body = ids[:-1] if ids and ids[-1] in stops else ids
    return tokenizer.decode(body, skip_special_tokens=True).strip()


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def compare(source, exported, prompts: list[list[dict]], facts: list[list[str]], max_new_tokens: int) -> dict:
    """Compare two LMs (``export.lm`` interface, each with ``.tokenizer``) on ``prompts``."""
    from distilltune.models.generate import stop_token_ids

    stops = stop_token_ids(source.tokenizer)
    same_prompt = exact = agree = positions = 0
    recall_src: list[float] = []
    recall_exp: list[float] = []
    for messages, item_facts in zip(prompts, facts, strict=True):
        p_src = _render(source.tokenizer, messages)
        p_exp = _render(exported.tokenizer, messages)
        same_prompt += p_src == p_exp
        a_src = source.greedy(p_src, stops, max_new_tokens)
        a_exp = exported.greedy(p_exp, stops, max_new_tokens)
        exact += a_src == a_exp
        if a_src:
            logits = exported.logits(p_src + a_src)[len(p_src) - 1 : len(p_src) - 1 + len(a_src)]
            agree += int((logits.argmax(-1) == np.asarray(a_src)).sum())
            positions += len(a_src)
        r_src = fact_recall(_answer_text(source.tokenizer, a_src, stops), item_facts)
        r_exp = fact_recall(_answer_text(exported.tokenizer, a_exp, stops), item_facts)
        if r_src is not None and r_exp is not None:
            recall_src.append(r_src)
            recall_exp.append(r_exp)
    n = len(prompts)
    src_mean, exp_mean = _mean(recall_src), _mean(recall_exp)
    return {
        "prompts": n,
        "max_new_tokens": max_new_tokens,
        "prompt_tokens_identical": same_prompt / n if n else None,
        "exact_match": exact / n if n else None,
        "token_agreement": agree / positions if positions else None,
        "positions": positions,
        "fact_recall_source": src_mean,
        "fact_recall_export": exp_mean,
        "fact_recall_diff": exp_mean - src_mean if src_mean is not None else None,
        "items_with_facts": len(recall_src),
    }
