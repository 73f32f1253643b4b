"""The engine interface for runtimes that decode one request at a time (ONNX Runtime, llama.cpp).

Why a base class: the server and the efficiency probe drive every backend through the interface of
the continuous-batching ``inference.engine.Engine`` (``start``/``stop``/``submit`` → ``GenHandle``,
``generate`` → ``GenResult``, ``queue_depth``, ``active``, ``healthy``, ``retry_after_s``, bounded queue
raising ``QueueFull``, cancellation). Everything except "run the model on these ids" is the same for
every runtime, so it lives here once; a backend supplies ``_prefill`` (prompt → last position's
logits) and ``_decode`` (one token → next logits, reusing the runtime's own KV cache); with them
``score_answer`` gives teacher-forced logits for the reference-answer NLL.

Token choice is made here, from the runtime's logits, with the same rule as the torch engine: greedy
(``argmax``) by default, or temperature / top-p sampling with a per-request seed; the log-probability
of every chosen token is reported, so the cascade's confidence works whichever runtime generated.
These runtimes are not batched: requests wait in the queue and are decoded one after another
(``continuous_batching = False``; ``/v1/models`` says so).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque

import numpy as np

from distilltune.inference.generation import (
    SEED_MAX,
    SEED_MIN,
    EngineStopped,
    GenHandle,
    GenRequest,
    GenResult,
    QueueFull,
)

log = logging.getLogger("distilltune.serve")


def check_request(req: GenRequest, adapters: set[str]) -> None:
    """The request checks every engine makes before queueing (a ValueError is the caller's 400)."""
    if req.adapter is not None and req.adapter not in adapters:
        raise ValueError(f"unknown adapter {req.adapter!r}")
    if not req.prompt_ids:
        raise ValueError("empty prompt")
    if req.seed is not None and not SEED_MIN <= req.seed <= SEED_MAX:
        raise ValueError(f"seed must be between {SEED_MIN} and {SEED_MAX}")
    if not 0 <= req.temperature < float("inf") or not 0 < req.top_p <= 1:
        raise ValueError("temperature must be finite and >= 0, top_p in (0, 1]")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def pick(logits: np.ndarray, req: GenRequest, rng: np.random.Generator | None) -> tuple[int, float]:
    """Next token and its log-probability (under the unscaled distribution, as the torch engine)."""
    logp = log_softmax(logits)
    if not req.temperature or req.temperature <= 0:
        tok = int(np.argmax(logits))
        return tok, float(logp[tok])
    probs = np.exp(log_softmax(logits.astype(np.float64) / req.temperature))
    if req.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        sp = probs[order]
        keep = np.cumsum(sp) - sp < req.top_p
        probs = np.zeros_like(probs)
        probs[order[keep]] = sp[keep]
    total = probs.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("sampling failed: no finite probabilities")
    tok = int((rng or np.random.default_rng()).choice(len(probs), p=probs / total))
    return tok, float(logp[tok])


class SequentialEngine:
    """A worker thread decoding queued requests one at a time through a backend's ``_prefill``/``_decode``."""

    backend = "sequential"
    continuous_batching = False

    def __init__(self, stop_ids: list[int], *, name: str = "model", max_queue: int = 64, on_batch=None):
        self.name = name
        self.stop_ids = sorted(set(stop_ids))
        self.max_batch = 1
        self.max_queue = max_queue
        self.adapters: set[str] = set()
        self.on_batch = on_batch  # metrics hook: batch size of every decode step (always 1 here)
        self.max_context: int | None = None  # prompt + answer tokens the runtime can hold (None: no cap)
        self._waiting: deque[GenRequest] = deque()
        self._cv = threading.Condition()
        self._ids = itertools.count(1)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._active = 0
        self._step_s_ema: float | None = None
        self.fatal: str | None = None

    # ---- what a backend provides -----------------------------------------------------------
    def _prefill(self, prompt_ids: list[int]) -> np.ndarray:
        """Run the prompt from an empty cache; the last position's logits ``[vocab]``."""
        raise NotImplementedError

    def _decode(self, token: int) -> np.ndarray:
        """Append one token to the cache; the logits for the position after it ``[vocab]``."""
        raise NotImplementedError

    def score_answer(self, prompt_ids: list[int], answer_ids: list[int]) -> np.ndarray:
        """Teacher-forced logits predicting each answer token, ``[len(answer_ids), vocab]``.

        Uses the runtime's cache like decoding does, so call it only while no request is in flight
        (evaluation scores after answering)."""
        if not answer_ids:
            return np.zeros((0, 0), dtype=np.float32)
        rows = [self._prefill(list(prompt_ids))]
        rows += [self._decode(t) for t in answer_ids[:-1]]
        return np.stack(rows)

    # ---- lifecycle and introspection (as ``Engine``) -----------------------------------------
    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"engine-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._close()

    def _close(self) -> None:
        """Free the runtime's native resources (after the worker is gone)."""

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return self._active

    @property
    def healthy(self) -> bool:
        return self.fatal is None and self._thread is not None and self._thread.is_alive()

    def retry_after_s(self) -> float:
        """Queued requests × a typical answer (32 steps at the recent step time), at least 1 s."""
        step = self._step_s_ema or 0.05
        return max(1.0, round(step * 32 * max(1, len(self._waiting)), 1))

    # ---- submission (as ``Engine``) -----------------------------------------------------------
    def submit_request(self, req: GenRequest) -> GenRequest:
        check_request(req, self.adapters)
        with self._cv:
            if self._stopping or self.fatal:
                raise EngineStopped(self.fatal or "engine is stopping")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(len(self._waiting), self.retry_after_s())
            req.id = next(self._ids)
            req.submitted_at = time.perf_counter()
            self._waiting.append(req)
            self._cv.notify()
        return req

    def submit(self, prompt_ids: list[int], max_new_tokens: int, **kw) -> GenHandle:
        handle = GenHandle(asyncio.get_running_loop())
        req = GenRequest(
            list(prompt_ids), max_new_tokens, on_token=handle._on_token, on_done=handle._on_done, **kw
        )
        handle.request = self.submit_request(req)
        return handle

    def generate(self, prompt_ids: list[int], max_new_tokens: int, **kw) -> GenResult:
        """Blocking convenience for scripts, evaluation and tests (not for the event loop)."""
        done = threading.Event()
        box: list[GenResult] = []

        def on_done(r: GenResult) -> None:
            box.append(r)
            done.set()

        self.submit_request(GenRequest(list(prompt_ids), max_new_tokens, on_done=on_done, **kw))
        done.wait()
        return box[0]

    # ---- the worker ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._stopping and not self._waiting:
                        self._cv.wait()
                    if self._stopping:
                        break
                    req = self._waiting.popleft()
                self._active = 1
                self._serve(req)
                self._active = 0
        except Exception as e:  # a bug in the loop itself: fail every waiting request rather than hang it
            self.fatal = f"{type(e).__name__}: {e}"
            log.error("engine %s stopped: %s", self.name, type(e).__name__)
        with self._cv:
            pending = list(self._waiting)
            self._waiting.clear()
        for req in pending:
            self._finish(req, [], [], "error" if self.fatal else "cancelled", {})

    def _serve(self, req: GenRequest) -> None:
        """Decode one request to its end; a failure fails this request only."""
        t = {"admitted": time.perf_counter()}
        out_ids: list[int] = []
        out_lp: list[float] = []
        if req.cancelled.is_set():
            self._finish(req, out_ids, out_lp, "cancelled", t)
            return
        budget = req.max_new_tokens
        if self.max_context is not None:
            budget = min(budget, self.max_context - len(req.prompt_ids))
        rng = np.random.default_rng(req.seed % 2**64) if req.seed is not None else None
        try:
            if budget < 1:
                raise ValueError(f"the prompt fills the runtime's context of {self.max_context} tokens")
            logits = self._prefill(req.prompt_ids)
            t["prefill_s"] = time.perf_counter() - t["admitted"]
            t["first"] = time.perf_counter()
            while True:
                tok, lp = pick(logits, req, rng)
                out_ids.append(tok)
                out_lp.append(lp)
                if req.on_token is not None and not self._emit(req, tok, lp, t):
                    self._finish(req, out_ids, out_lp, "error", t)
                    return
                reason = self._end_reason(req, tok, len(out_ids), budget)
                if reason:
                    self._finish(req, out_ids, out_lp, reason, t)
                    return
                s0 = time.perf_counter()
                if self.on_batch is not None:
                    self.on_batch(1)
                logits = self._decode(tok)
                dt = time.perf_counter() - s0
                self._step_s_ema = dt if self._step_s_ema is None else 0.9 * self._step_s_ema + 0.1 * dt
        except Exception as e:
            log.error("engine %s: a request failed (%s)", self.name, type(e).__name__)
            t["error"] = "generation failed"
            self._finish(req, out_ids, out_lp, "error", t)

    def _emit(self, req: GenRequest, tok: int, lp: float, t: dict) -> bool:
        try:
            req.on_token(tok, lp)
        except Exception:  # the caller's callback broke: its request ends, the engine goes on
            t["error"] = "token callback failed"
            return False
        return True

    def _end_reason(self, req: GenRequest, tok: int, n: int, budget: int) -> str | None:
        if tok in self.stop_ids:
            return "stop"
        if n >= budget:
            return "length"
        if req.cancelled.is_set():
            return "cancelled"
        return None

    def _finish(self, req: GenRequest, ids: list[int], lps: list[float], reason: str, t: dict) -> None:
        now = time.perf_counter()
        res = GenResult(
            token_ids=ids,
            logprobs=lps,
            finish_reason=reason,
            prompt_tokens=len(req.prompt_ids),
            queue_s=t.get("admitted", now) - req.submitted_at,
            prefill_s=t.get("prefill_s", 0.0),
            decode_s=(now - t["first"]) if "first" in t else 0.0,
            max_batch_seen=1 if ids else 0,
            error=(t.get("error") or "engine stopped") if reason == "error" else None,
        )
        if req.on_done is not None:
            try:
                req.on_done(res)
            except Exception:
                log.error("engine %s: a request's completion callback failed", self.name)
