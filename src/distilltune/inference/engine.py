"""The generation engine: a request queue feeding one worker thread that decodes requests together.

Why a worker thread with its own decode loop: the model is the bottleneck and runs best on one
thread pool (torch intra-op threads) with as many sequences per forward pass as possible. On CPU a
decode step of a small model is memory-bound (the weights are streamed once per step whatever the
batch), so eight sequences cost far less than eight times one.

Scheduling is continuous (iteration-level) batching: between two decode steps the worker admits
waiting requests (up to ``max_batch`` rows), prefills them as a group and merges their KV cache into
the running batch, left-padded, so a request never waits for a whole batch to drain; finished or
cancelled rows leave the batch at once and padding columns nobody needs are trimmed. Every row keeps
its own positions, so batching does not change what a row attends to.

This module is the scheduler. The forward passes (prefill, decode step, adapter switching, prefix-tuned
models without a KV cache) are ``inference.runner``'s; the running batch's tensors (left-padded mask
and KV cache, merging, trimming, token choice) are ``inference.batch``'s. Models whose cache cannot be
merged (sliding windows) fall back to admitting only into an empty batch.

Several LoRA adapters can share the base (``adapter`` per request): a batch holds one adapter at a
time; the oldest waiting request decides which adapter runs next.

Tokens are reported per row through callbacks run on the worker thread; ``submit`` wraps them for
asyncio callers (``GenHandle``). The request/result types live in ``inference.generation``.
Per-token log-probabilities are returned for the cascade's confidence signal.

``open_engine`` is the one way to build an engine for a loaded model: the server (one per served
model) and compare's efficiency measurement both call it, so what compare times is what serve runs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import torch

from distilltune.inference.batch import Batch, Row, keep_rows, merge, plain_dynamic_layers
from distilltune.inference.generation import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_QUEUE,
    MIN_TEMPERATURE,
    SEED_MAX,
    SEED_MIN,
    EngineStopped,
    GenHandle,
    GenRequest,
    GenResult,
    QueueFull,
)
from distilltune.inference.runner import ModelRunner

log = logging.getLogger("distilltune.serve")


class Engine:
    """Owns one model; serves generation requests from any thread through a bounded queue."""

    def __init__(
        self,
        model,
        stop_ids: list[int],
        pad_id: int,
        *,
        name: str = "model",
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
        adapters: tuple[str, ...] = (),
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.runner = ModelRunner(model, pad_id, tuple(adapters))
        self.model = self.runner.model
        self.name = name
        self.stop_ids = sorted(set(stop_ids))
        self.pad_id = pad_id
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.adapters = self.runner.adapters
        self.on_batch = on_batch  # metrics hook: called with the batch size of every decode step
        self.device = self.runner.device
        self.use_cache = self.runner.use_cache
        self._waiting: deque[GenRequest] = deque()
        self._cv = threading.Condition()
        self._ids = itertools.count(1)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._mergeable: bool | None = None  # decided on the first prefill
        self._active = 0
        self._step_s_ema: float | None = None  # seconds per decode step (for Retry-After)
        self.fatal: str | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> Engine:
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

    # ---- introspection ----------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return self._active

    @property
    def healthy(self) -> bool:
        """The worker runs and has not died (``/health`` reports an engine that is not)."""
        return self.fatal is None and self._thread is not None and self._thread.is_alive()

    def retry_after_s(self) -> float:
        """A rough wait until a queue slot frees: queued work × the recent step time, at least 1 s."""
        step = self._step_s_ema or 0.05
        return max(1.0, round(step * 32 * max(1, len(self._waiting)) / self.max_batch, 1))

    # ---- submission -------------------------------------------------------------------------
    def submit_request(self, req: GenRequest) -> GenRequest:
        """Queue ``req`` (thread-safe). Raises ``QueueFull`` or ``EngineStopped``."""
        if req.adapter is not None and req.adapter not in self.adapters:
            raise ValueError(f"unknown adapter {req.adapter!r}")
        if not req.prompt_ids:
            raise ValueError("empty prompt")
        if req.seed is not None and not SEED_MIN <= req.seed <= SEED_MAX:
            raise ValueError(f"seed must be between {SEED_MIN} and {SEED_MAX}")
        if not 0 <= req.temperature < float("inf") or not 0 < req.top_p <= 1:
            raise ValueError("temperature must be finite and >= 0, top_p in (0, 1]")
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
        """Queue a request from asyncio code; returns a handle to await tokens and the result."""
        handle = GenHandle(asyncio.get_running_loop())
        req = GenRequest(
            list(prompt_ids), max_new_tokens, on_token=handle._on_token, on_done=handle._on_done, **kw
        )
        handle.request = self.submit_request(req)
        return handle

    def generate(self, prompt_ids: list[int], max_new_tokens: int, **kw) -> GenResult:
        """Blocking convenience for scripts and tests (not for the event loop)."""
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
        """The worker loop. A failure while serving requests fails those requests, never the loop:
        only a failure of the loop's own bookkeeping is fatal (then every request is failed, not hung)."""
        batch = Batch()
        try:
            while True:
                with self._cv:
                    while not self._stopping and not self._waiting and not batch.rows:
                        self._cv.wait()
                    if self._stopping:
                        break
                    admitted = self._take_admissible(batch)
                self._drop_cancelled(batch)
                if admitted:
                    self._guarded(batch, self._admit, batch, admitted)
                if batch.rows:
                    self._guarded(batch, self._step, batch)
                self._active = len(batch.rows)
        except Exception as e:  # a bug in the loop itself: fail every request rather than hang them
            self.fatal = f"{type(e).__name__}: {e}"
            log.error("engine %s stopped: %s", self.name, type(e).__name__)
            self._end_all(batch, "error")
            raise
        self._end_all(batch, "cancelled")  # shutting down: no caller waits forever

    def _end_all(self, batch: Batch, reason: str) -> None:
        with self._cv:
            pending = list(self._waiting)
            self._waiting.clear()
        for row in batch.rows:
            self._finish(row, reason)
        for req in pending:
            self._finish(Row(req), reason)
        batch.rows = []

    def _guarded(self, batch: Batch, fn, *args) -> None:
        """Run a prefill or decode step; if it raises, the rows it touched fail and the engine goes on.

        The running batch's cache may be half-updated after a failure, so every row in it fails with
        the step (a failed prefill of new rows before the merge fails only those, see ``_prefill_group``)."""
        try:
            fn(*args)
        except Exception as e:
            log.error(
                "engine %s: a step failed (%s); failing its %d request(s)",
                self.name,
                type(e).__name__,
                len(batch.rows),
            )
            for row in batch.rows:
                row.error = row.error or "generation failed"
                self._finish(row, "error")
            batch.clear()

    def _take_admissible(self, batch: Batch) -> list[GenRequest]:
        """Pop waiting requests that may join now (called with the lock held)."""
        # Cancelled while waiting: answer them without spending compute.
        for req in [r for r in self._waiting if r.cancelled.is_set()]:
            self._waiting.remove(req)
            self._finish(Row(req), "cancelled")
        room = self.max_batch - len(batch.rows)
        if room <= 0 or not self._waiting:
            return []
        if batch.rows and self._mergeable is False:
            return []
        adapter = batch.adapter if batch.rows else self._waiting[0].adapter
        taken = [r for r in self._waiting if r.adapter == adapter][:room]
        for r in taken:
            self._waiting.remove(r)
        return taken

    @torch.inference_mode()  # merging and retiring touch the cache's inference tensors too
    def _admit(self, batch: Batch, reqs: list[GenRequest]) -> None:
        """Prefill ``reqs``, pick their first tokens, merge them into ``batch``.

        Prefill is compute-bound, so batching it saves nothing while left-padding wastes work: requests
        are prefilled in groups of similar length (within 10 %) and merged one group at a time."""
        if self.use_cache and not self._mergeable:  # unknown yet, or not mergeable: one group
            groups = [reqs]
        else:
            groups, current = [], []
            for r in sorted(reqs, key=lambda r: len(r.prompt_ids)):
                if current and len(r.prompt_ids) > 1.1 * len(current[0].prompt_ids):
                    groups.append(current)
                    current = []
                current.append(r)
            groups.append(current)
        for group in groups:
            self._prefill_group(batch, group, len(reqs))

    def _prefill_group(self, batch: Batch, reqs: list[GenRequest], admitted: int) -> None:
        try:
            group = self.runner.prefill(reqs, admitted)
            if self.use_cache and self._mergeable is None:
                self._mergeable = plain_dynamic_layers(group.cache) is not None
        except Exception as e:  # before the merge: the running batch is untouched, only these fail
            log.error("engine %s: prefill failed (%s)", self.name, type(e).__name__)
            for r in reqs:
                self._finish(Row(r, error="generation failed"), "error")
            return
        new_rows = group.rows
        merge(batch, group, self.pad_id, self.use_cache)
        self._emit_and_retire(batch, group.next_ids, group.logprobs, rows_new=new_rows)

    @torch.inference_mode()
    def _step(self, batch: Batch) -> None:
        """One decode step for every row (the runner's forward pass), then report and retire."""
        t0 = time.perf_counter()
        b = len(batch.rows)
        if self.on_batch is not None:
            self.on_batch(b)
        for row in batch.rows:
            row.max_batch_seen = max(row.max_batch_seen, b)
        nxt, lp = self.runner.step(batch)
        dt = time.perf_counter() - t0
        self._step_s_ema = dt if self._step_s_ema is None else 0.9 * self._step_s_ema + 0.1 * dt
        self._emit_and_retire(batch, nxt, lp)

    def _emit_and_retire(
        self, batch: Batch, nxt: torch.Tensor, lp: torch.Tensor, rows_new: list[Row] | None = None
    ) -> None:
        """Report the new token of ``rows_new`` (default: every row) and drop rows that are done."""
        offset = len(batch.rows) - len(rows_new) if rows_new is not None else 0
        targets = rows_new if rows_new is not None else batch.rows
        ids = nxt.tolist()
        lps = lp.tolist()
        finished: dict[int, str] = {}
        for j, row in enumerate(targets):
            i = offset + j
            tok, tok_lp = ids[j], lps[j]
            if row.error is not None:
                finished[i] = "error"
                continue
            row.out_ids.append(tok)
            row.out_lp.append(tok_lp)
            if row.req.on_token is not None:
                try:
                    row.req.on_token(tok, tok_lp)
                except Exception:  # the caller's callback broke: its request ends, the batch goes on
                    row.error = "token callback failed"
                    finished[i] = "error"
                    continue
            if tok in self.stop_ids:
                finished[i] = "stop"
            elif len(row.out_ids) >= row.req.max_new_tokens:
                finished[i] = "length"
            elif row.req.cancelled.is_set():
                finished[i] = "cancelled"
        if finished:
            self._retire(batch, finished)

    def _drop_cancelled(self, batch: Batch) -> None:
        gone = {i: "cancelled" for i, r in enumerate(batch.rows) if r.req.cancelled.is_set()}
        if gone:
            self._retire(batch, gone)

    def _retire(self, batch: Batch, finished: dict[int, str]) -> None:
        for i, reason in finished.items():
            self._finish(batch.rows[i], reason)
        keep = [i for i in range(len(batch.rows)) if i not in finished]
        keep_rows(batch, keep, self.use_cache)

    def _finish(self, row: Row, reason: str) -> None:
        now = time.perf_counter()
        req = row.req
        res = GenResult(
            token_ids=row.out_ids,
            logprobs=row.out_lp,
            finish_reason=reason,
            prompt_tokens=len(req.prompt_ids),
            queue_s=(row.admitted_at or now) - req.submitted_at,
            prefill_s=row.prefill_s,
            decode_s=(now - row.first_token_at) if row.first_token_at else 0.0,
            max_batch_seen=row.max_batch_seen,
            error=(row.error or "engine stopped") if reason == "error" else None,
        )
        if req.on_done is not None:
            try:
                req.on_done(res)
            except Exception:  # a caller's callback must not take the worker down
                log.error("engine %s: a request's completion callback failed", self.name)


def open_engine(
    model,
    tokenizer,
    *,
    name: str = "model",
    max_batch: int = DEFAULT_MAX_BATCH,
    max_queue: int = DEFAULT_MAX_QUEUE,
    adapters: tuple[str, ...] = (),
    on_batch: Callable[[int], None] | None = None,
) -> Engine:
    """An engine (not yet started: call ``start()``) generating with ``model``, stopping on the end
    tokens of ``tokenizer``'s chat template and padding with its pad token (the first end token if
    it has none). ``adapters``: PEFT adapter names requests may select; ``on_batch``: metrics hook.

    The one place an engine is built, so every caller decodes the same way (``distilltune serve``,
    compare's efficiency measurement, benchmarks)."""
    from distilltune.models.generate import stop_token_ids

    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    return Engine(
        model,
        stops,
        pad,
        name=name,
        max_batch=max_batch,
        max_queue=max_queue,
        adapters=tuple(adapters),
        on_batch=on_batch,
    )


__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_QUEUE",
    "MIN_TEMPERATURE",
    "SEED_MAX",
    "SEED_MIN",
    "Engine",
    "EngineStopped",
    "GenHandle",
    "GenRequest",
    "GenResult",
    "QueueFull",
    "open_engine",
]
