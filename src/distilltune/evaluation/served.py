"""Timing requests as ``distilltune serve`` answers them: the request path driven over the serving engine.

The efficiency probe (``efficiency.probe``) times requests through exactly what the server runs: the
engine built by ``inference.engine.open_engine`` (continuous batching, its worker thread, its
defaults) and ``inference.RequestPath``'s steps made thread-safe as the server makes them
(``RequestPath.for_threads``) — input guard → retrieval and prompt assembly → prompt tokenization →
engine generation (greedy) → confidence → output guard. What the server adds on top (HTTP, JSON,
the request log) is not timed; ``benchmarks/served_latency.py`` measures how far that moves the p95.

Two measurements:

- ``time_sequential``: one request at a time (batch 1), after untimed warm-up requests;
- ``time_concurrent``: ``concurrency`` closed-loop clients (one thread each, as K users would), each
  sending its next request when its previous answer arrives; the engine batches whatever is in
  flight. The first and last requests run with fewer neighbours (ramp-up and drain), as in a load test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from distilltune.errors import UserError
from distilltune.inference import ROUTE_REFUSED_INPUT, RequestPath, RequestResult, prompt_ids

# A p95 from four requests is the maximum of four, and moved a recommendation on a few milliseconds
# of noise in the first wave's demo; with a time budget a slow model still gets this many.
MIN_TIMED = 8


class ServedAnswerer:
    """Answers one conversation at a time per calling thread, through the path and a started engine."""

    def __init__(self, path: RequestPath, engine, tokenizer, max_new_tokens: int):
        self.path = path.for_threads()
        self.engine = engine
        self.tokenizer = tokenizer
        self.tok_lock = threading.Lock()  # HF tokenizers are not safe to call from several threads
        self.max_new_tokens = max_new_tokens
        self.batches: list[int] = []  # per generated answer: the largest batch it was decoded in
        self._lock = threading.Lock()

    def __call__(self, conversation: Sequence[dict]) -> RequestResult:
        """The server's non-streaming steps for a request without a fallback model, blocking."""
        path = self.path
        res = path.prepare(conversation)
        if res.route == ROUTE_REFUSED_INPUT:
            return res
        ids = prompt_ids(self.tokenizer, res.messages, self.tok_lock)
        gen = self.engine.generate(ids, self.max_new_tokens, temperature=0.0)
        if gen.finish_reason in ("error", "cancelled"):
            raise UserError(f"the engine failed a timed request ({gen.error or gen.finish_reason})")
        path.judge(res, gen.logprobs, has_fallback=False)
        releaser = path.releaser(res, self.tokenizer, self.tok_lock)
        finish = None
        for tok in gen.token_ids:
            r = releaser.add(tok, self.engine.stop_ids)
            if releaser.done:
                finish = r.finish_reason
                break
        if not releaser.done:
            finish = releaser.finish("length" if gen.finish_reason == "length" else "stop").finish_reason
        path.complete(res, releaser, finish or "stop", len(ids), len(gen.token_ids))
        res.finished = gen.finish_reason == "stop"
        res.queue_s, res.prefill_s, res.decode_s = gen.queue_s, gen.prefill_s, gen.decode_s
        with self._lock:
            self.batches.append(gen.max_batch_seen)
        return res


def _over_budget(budget: float | None, started: float, timed: int) -> bool:
    """A slow model gets fewer requests once ``budget`` seconds are spent, never fewer than MIN_TIMED."""
    return bool(budget) and timed >= MIN_TIMED and time.perf_counter() - started > budget


def time_sequential(
    answer: Callable[[Sequence[dict]], RequestResult],
    prompts: list,
    warmup: int,
    budget_s: float | None = None,
) -> tuple[list[RequestResult], list[float]]:
    """Batch 1: ``warmup`` untimed answers, then each remaining prompt timed alone (wall seconds)."""
    for conv in prompts[:warmup]:
        answer(conv)
    answers, latencies = [], []
    started = time.perf_counter()
    for conv in prompts[warmup:]:
        if _over_budget(budget_s, started, len(latencies)):
            break
        t = time.perf_counter()
        answers.append(answer(conv))
        latencies.append(time.perf_counter() - t)
    return answers, latencies


def time_concurrent(
    answer: Callable[[Sequence[dict]], RequestResult],
    prompts: list,
    concurrency: int,
    budget_s: float | None = None,
) -> tuple[list[RequestResult], list[float], float]:
    """``concurrency`` closed-loop clients share ``prompts``; returns answers, latencies and wall time."""
    todo = list(prompts)
    lock = threading.Lock()
    answers: list[RequestResult] = []
    latencies: list[float] = []
    errors: list[BaseException] = []
    started = time.perf_counter()

    def client() -> None:
        while True:
            with lock:
                if not todo or errors or _over_budget(budget_s, started, len(latencies)):
                    return
                conv = todo.pop(0)
            t = time.perf_counter()
            try:
                res = answer(conv)
            except BaseException as e:  # re-raised on the caller's thread below
                with lock:
                    errors.append(e)
                return
            dt = time.perf_counter() - t
            with lock:
                answers.append(res)
                latencies.append(dt)

    threads = [threading.Thread(target=client, name=f"client-{i}") for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return answers, latencies, time.perf_counter() - started
