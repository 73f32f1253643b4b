"""Where a run is, as pure functions of its settings: the LR schedule, the number of updates, which
examples a micro-batch holds, and how evaluations are ranked.

Kept free of Accelerate and of the model so the loop's arithmetic is testable on its own, and so a
resumed run recomputes the same data positions from (seed, micro-batch counter) alone.
"""

from __future__ import annotations

import math

from distilltune.data.chat import epoch_order
from distilltune.train.config import TrainSettings


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up from ~0 to 1 over ``warmup`` updates, cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batches_per_epoch(n: int, batch_size: int, world: int) -> int:
    return max(1, math.ceil(n / (batch_size * world)))


def micro_batch_indices(
    n: int, batch_size: int, seed: int, micro_step: int, rank: int, world: int
) -> list[int]:
    """The example positions of micro-batch ``micro_step`` for process ``rank``.

    One process: consecutive slices of the epoch's permutation (the last one may be smaller).
    Several: each global batch is split by rank; the last global batch wraps around the epoch so
    every process gets a full micro-batch (DDP needs every rank to step together).
    """
    per_epoch = batches_per_epoch(n, batch_size, world)
    epoch, i = divmod(micro_step, per_epoch)
    order = epoch_order(n, seed, epoch)
    start = (i * world + rank) * batch_size
    if world == 1:
        return order[start : start + batch_size]
    return [order[j % n] for j in range(start, start + batch_size)]


def total_updates(settings: TrainSettings, n_examples: int, world: int = 1) -> int:
    if settings.max_steps:
        return settings.max_steps
    per_epoch = batches_per_epoch(n_examples, settings.batch_size, world)
    return max(1, math.ceil(settings.epochs * per_epoch / settings.grad_accum))


def score(metrics: dict, select: str) -> tuple:
    """Bigger is better: fact recall (ties broken by lower eval loss), or negative eval loss."""
    loss = metrics.get("eval_loss")
    neg_loss = -loss if loss is not None else float("-inf")
    recall = metrics.get("fact_recall")
    if select == "fact_recall" and recall is not None:
        return (recall, neg_loss)
    return (neg_loss,)
