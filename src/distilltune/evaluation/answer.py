"""Batch evaluation's driver over the one request path (``distilltune.inference.RequestPath``).

Every step a user could observe — dropped turns, input guard, retrieval and prompt assembly, prompt
tokenization, confidence, output guard, route names — is ``RequestPath``'s, exactly as the server
runs it; only the generation backend is evaluation's own: conversations that pass the input guard are
decoded together in batches of ``batch_size`` by ``distilltune.models.generate.generate_ids`` (HF
forward passes, greedy unless ``temperature > 0``, capped by ``max_new_tokens``, stopping on the
template's end token) instead of the server's continuous-batching engine. Evaluation has no fallback
model, so the cascade only records the student's confidence (``mean_logprob``).

``answer_requests`` is used by ``evaluate`` to score answers (batched; the greedy text is the
server's, as a test checks); the efficiency probe times the server's engine instead
(``evaluation.served``). ``answer_with_engine`` answers through any started engine the same way
(``evaluation.served.ServedAnswerer``): ``evaluate --backend onnx|llama.cpp`` scores those runtimes. ``build_pipeline`` builds the path for a task as ``distilltune serve`` does.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from distilltune.inference import (
    ROUTE_FALLBACK,
    ROUTE_REFUSED_INPUT,
    ROUTE_REFUSED_OUTPUT,
    ROUTE_STUDENT,
    RequestPath,
    RequestResult,
    build_path,
    hit_record,
    prompt_ids,
    withheld,
)
from distilltune.models.generate import generate_ids, stop_token_ids

Answer = RequestResult  # what ``answer_requests`` returns, by its evaluation name
build_pipeline = build_path

__all__ = [
    "ROUTE_FALLBACK",
    "ROUTE_REFUSED_INPUT",
    "ROUTE_REFUSED_OUTPUT",
    "ROUTE_STUDENT",
    "Answer",
    "answer_requests",
    "answer_with_engine",
    "build_pipeline",
    "hit_record",
    "withheld",
]


def _decode_batch(path: RequestPath, model, tokenizer, chunk: list[RequestResult], settings: dict) -> None:
    """Generate one batch with the HF decode loop and finish each answer through the shared steps."""
    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    prompts = [prompt_ids(tokenizer, r.messages) for r in chunk]
    ids, lps, prefill_s, decode_s = generate_ids(
        model,
        prompts,
        stops,
        pad,
        settings["max_new_tokens"],
        settings["temperature"],
        torch.Generator().manual_seed(settings["seed"]),
    )
    lock = threading.Lock()
    for res, prompt, new, lp in zip(chunk, prompts, ids, lps, strict=True):
        path.judge(res, lp, has_fallback=False)
        releaser = path.releaser(res, tokenizer, lock)
        for tok in new:
            releaser.add(tok, stops)
        finished = bool(new) and new[-1] in stops
        end = releaser.finish("stop" if finished else "length")
        path.complete(res, releaser, end.finish_reason or "stop", len(prompt), len(new))
        res.finished, res.prefill_s, res.decode_s = finished, prefill_s, decode_s


def answer_requests(
    model,
    tokenizer,
    guard,
    prompter,
    conversations: Sequence[Sequence[dict]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[RequestResult]:
    """Answer each conversation through the request path; ``guard=None`` skips both guard steps."""
    path = RequestPath(guard, prompter)
    results = [path.prepare(c) for c in conversations]
    pending = [r for r in results if r.route != ROUTE_REFUSED_INPUT]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(pending), batch_size):
            settings = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed + start}
            _decode_batch(path, model, tokenizer, pending[start : start + batch_size], settings)
    finally:
        model.train(was_training)
    return results


def answer_with_engine(
    engine, tokenizer, guard, prompter, conversations: Sequence[Sequence[dict]], *, max_new_tokens: int = 128
) -> list[RequestResult]:
    """Answer each conversation, one at a time, through the request path over a started engine (greedy)."""
    from distilltune.evaluation.served import ServedAnswerer

    answer = ServedAnswerer(RequestPath(guard, prompter), engine, tokenizer, max_new_tokens)
    return [answer(c) for c in conversations]
