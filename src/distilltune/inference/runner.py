"""Running the model for the engine: prefill a group of requests, one decode step of the running batch.

Kept apart from the engine's scheduling (``engine.Engine``: queue, worker thread, admission, retiring,
callbacks) because this is the part that knows the model: its KV-cache argument, whether it can keep
a cache at all, which LoRA adapter is active, and that only the last position's logits are needed.
This is also the seam another backend (an exported runtime) would replace.

Every row keeps its own positions (left padding, ``position_ids`` from the mask), so batching does
not change what a row attends to. PEFT prefix-tuned models are decoded without a KV cache (their
prefix is lost with it; docs/design.md), recomputing each row's full sequence every step.
"""

from __future__ import annotations

import contextlib
import inspect
import time

import torch

from distilltune.inference.batch import Batch, Row, pick
from distilltune.inference.generation import GenRequest
from distilltune.models.generate import _cache_kwarg, uses_prefix_tuning


def _accepts(model, kwarg: str) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return kwarg in inspect.signature(base.forward).parameters


class ModelRunner:
    """One model's forward passes for the engine (called on the engine's worker thread only)."""

    def __init__(self, model, pad_id: int, adapters: tuple[str, ...] = ()):
        self.model = model.eval()
        self.pad_id = pad_id
        self.adapters = set(adapters)
        self.device = next(model.parameters()).device
        self.use_cache = not uses_prefix_tuning(model)
        self.cache_kw = _cache_kwarg(model)
        # Only the last position's logits are needed: skipping the vocabulary projection for the rest of
        # the prompt halves the prefill of a small model (its lm_head is most of its parameters).
        self._keep_last = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}

    @contextlib.contextmanager
    def _adapter_ctx(self, adapter: str | None):
        if not self.adapters:
            yield
        elif adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            if getattr(self.model, "active_adapter", None) != adapter:
                self.model.set_adapter(adapter)
            yield

    def _forward(self, batch_adapter: str | None, **kw):
        with self._adapter_ctx(batch_adapter):
            return self.model(**kw)

    @torch.inference_mode()
    def prefill(self, reqs: list[GenRequest], admitted: int) -> Batch:
        """Prefill ``reqs`` as a group and pick their first tokens; returns the group, not yet merged."""
        t0 = time.perf_counter()
        width = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(reqs), width), dtype=torch.long)
        for i, r in enumerate(reqs):
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        adapter = reqs[0].adapter
        res = self._forward(
            adapter,
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=self.use_cache,
            **self._keep_last,
            **({self.cache_kw: None} if self.use_cache else {}),
        )
        rows = []
        for r in reqs:
            gen = torch.Generator(device="cpu").manual_seed(r.seed) if r.seed is not None else None
            rows.append(
                Row(r, n_real=len(r.prompt_ids), admitted_at=t0, generator=gen, max_batch_seen=admitted)
            )
        nxt, lp = pick(res.logits[:, -1, :], rows)
        prefill_s = time.perf_counter() - t0
        for row in rows:
            row.prefill_s = prefill_s
            row.first_token_at = time.perf_counter()
        group = Batch()
        group.rows, group.mask, group.adapter = rows, mask, adapter
        group.cache = getattr(res, self.cache_kw) if self.use_cache else None
        group.seq = None if self.use_cache else ids
        group.next_ids, group.logprobs = nxt, lp
        return group

    @torch.inference_mode()
    def step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One decode step for every row: feed each row's next token; returns the following ones and
        their log-probabilities (also left in ``batch.next_ids``)."""
        b = len(batch.rows)
        ones = torch.ones((b, 1), dtype=batch.mask.dtype, device=self.device)
        batch.mask = torch.cat([batch.mask, ones], dim=1)
        if self.use_cache:
            pos = torch.tensor([[r.n_real] for r in batch.rows], device=self.device)
            res = self._forward(
                batch.adapter,
                input_ids=batch.next_ids[:, None],
                attention_mask=batch.mask,
                position_ids=pos,
                use_cache=True,
                **{self.cache_kw: batch.cache},
            )
            batch.cache = getattr(res, self.cache_kw)
        else:
            batch.seq = torch.cat([batch.seq, batch.next_ids[:, None]], dim=1)
            pos = (batch.mask.cumsum(-1) - 1).clamp(min=0)
            res = self._forward(
                batch.adapter,
                input_ids=batch.seq,
                attention_mask=batch.mask,
                position_ids=pos,
                use_cache=False,
                **self._keep_last,
            )
        for row in batch.rows:
            row.n_real += 1
        nxt, lp = pick(res.logits[:, -1, :], batch.rows)
        batch.next_ids = nxt
        return nxt, lp
