"""The engine's running batch: rows, their left-padded token history and KV cache, and token choice.

Kept apart from the engine's scheduling (``engine.Engine``: queue, worker loop, admission, callbacks)
because this is the part that knows tensor layouts: how two groups' KV caches are merged, how finished
rows leave and padding columns nobody needs are trimmed, and how each row's next token is picked.

Merging touches the cache's per-layer key/value tensors, which is only valid for plain
``DynamicLayer`` caches (full attention, e.g. Llama/SmolLM2); ``plain_dynamic_layers`` returns None
for any other layout, and the engine then admits only into an empty batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from distilltune.inference.generation import GenRequest


@dataclass
class Row:
    req: GenRequest
    out_ids: list[int] = field(default_factory=list)
    out_lp: list[float] = field(default_factory=list)
    n_real: int = 0  # real (non-padding) tokens in the cache/sequence for this row
    admitted_at: float = 0.0
    first_token_at: float = 0.0
    prefill_s: float = 0.0
    max_batch_seen: int = 0
    generator: torch.Generator | None = None
    error: str | None = None  # this request failed (its own parameters or callbacks): retire it alone


class Batch:
    """The running batch: per-row token history (left-padded), attention mask, KV cache, next token."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.seq: torch.Tensor | None = None  # [b, L] ids (only kept without a KV cache)
        self.mask: torch.Tensor | None = None  # [b, L] 1 for real positions in cache/sequence
        self.cache = None
        self.next_ids: torch.Tensor | None = None  # [b] the token each row feeds next
        self.logprobs: torch.Tensor | None = None  # [b] their log-probabilities (a fresh group only)
        self.adapter: str | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def clear(self) -> None:
        """Empty the batch (every row gone: nothing of the old cache may be reused)."""
        self.rows, self.mask, self.cache, self.seq, self.next_ids = [], None, None, None, None
        self.adapter = None


def left_pad(t: torch.Tensor, width: int, value: float = 0) -> torch.Tensor:
    """Pad dim ``-1`` (2-D ids/mask) on the left to ``width``."""
    extra = width - t.shape[-1]
    if extra <= 0:
        return t
    pad = torch.full((*t.shape[:-1], extra), value, dtype=t.dtype, device=t.device)
    return torch.cat([pad, t], dim=-1)


def left_pad_kv(t: torch.Tensor, width: int) -> torch.Tensor:
    """Pad a [b, heads, L, dim] key/value tensor on the left of the sequence axis to ``width``."""
    extra = width - t.shape[-2]
    if extra <= 0:
        return t
    pad = torch.zeros((t.shape[0], t.shape[1], extra, t.shape[3]), dtype=t.dtype, device=t.device)
    return torch.cat([pad, t], dim=-2)


def plain_dynamic_layers(cache) -> list | None:
    """The cache's layers if every one is a plain full-attention ``DynamicLayer`` (mergeable), else None."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - transformers < 4.56 has no layer classes
        return None
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return list(layers)


def merge(batch: Batch, group: Batch, pad_id: int, use_cache: bool) -> None:
    """Append a freshly prefilled ``group`` to ``batch``, left-padding both to a common width."""
    if not batch.rows:
        batch.rows, batch.mask, batch.cache = group.rows, group.mask, group.cache
        batch.seq, batch.next_ids, batch.adapter = group.seq, group.next_ids, group.adapter
        return
    width = max(batch.mask.shape[1], group.mask.shape[1])
    batch.mask = torch.cat([left_pad(batch.mask, width), left_pad(group.mask, width)])
    if batch.seq is not None:
        batch.seq = torch.cat([left_pad(batch.seq, width, pad_id), left_pad(group.seq, width, pad_id)])
    if use_cache:
        for mine, theirs in zip(
            plain_dynamic_layers(batch.cache), plain_dynamic_layers(group.cache), strict=True
        ):
            mine.keys = torch.cat([left_pad_kv(mine.keys, width), left_pad_kv(theirs.keys, width)])
            mine.values = torch.cat([left_pad_kv(mine.values, width), left_pad_kv(theirs.values, width)])
    batch.rows = batch.rows + group.rows
    batch.next_ids = torch.cat([batch.next_ids, group.next_ids])


def keep_rows(batch: Batch, keep: list[int], use_cache: bool) -> None:
    """Keep only the rows at ``keep`` (others finished), then trim columns that are padding for all."""
    if not keep:
        batch.clear()
        return
    idx = torch.tensor(keep, device=batch.mask.device)
    batch.rows = [batch.rows[i] for i in keep]
    batch.mask = batch.mask[idx]
    batch.next_ids = batch.next_ids[idx]
    if batch.seq is not None:
        batch.seq = batch.seq[idx]
    # Columns that are padding for every remaining row cost compute in every later step: trim them.
    real_cols = batch.mask.any(dim=0).nonzero()
    trim = int(real_cols[0]) if len(real_cols) else 0
    if batch.seq is not None:
        batch.seq = batch.seq[:, trim:]
    if use_cache:
        layers = plain_dynamic_layers(batch.cache)
        if layers is not None:
            for layer in layers:
                layer.keys = layer.keys[idx, :, trim:, :]
                layer.values = layer.values[idx, :, trim:, :]
        else:
            trim = 0
            batch.cache.batch_select_indices(idx)
    batch.mask = batch.mask[:, trim:]


def pick(logits: torch.Tensor, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token per row: greedy, or sampled with the row's temperature/top_p. Returns (ids, log-probs)."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    nxt = logits.argmax(-1)
    for i, row in enumerate(rows):
        t = row.req.temperature
        if t and t > 0 and row.error is None:
            try:
                nxt[i] = _sample(logits[i], row)
            except (RuntimeError, ValueError):  # e.g. NaN probabilities: this request fails alone
                row.error = "sampling failed"
    return nxt, logp.gather(-1, nxt[:, None]).squeeze(-1)


def _sample(logits: torch.Tensor, row: Row) -> torch.Tensor:
    probs = torch.softmax(logits / row.req.temperature, dim=-1)
    if row.req.top_p < 1.0:
        sp, si = probs.sort(descending=True)
        keep = sp.cumsum(-1) - sp < row.req.top_p
        probs = torch.zeros_like(probs).scatter(0, si[keep], sp[keep])
    return torch.multinomial(probs, 1, generator=row.generator).squeeze(-1)
