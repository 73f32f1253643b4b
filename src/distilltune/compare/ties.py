"""Choosing among strategies whose quality is statistically tied, without deciding on noise.

The first wave's demo recommended teacher-lora in one run and teacher in the next: both were tied on
quality, and the "cheaper" one was chosen on a p95 difference of a few milliseconds from four timed
requests. Here every step of the choice is a comparison that must clear its own noise before it
decides anything:

1. **latency**: a candidate is dropped when another's p95 bootstrap interval lies entirely below its
   own (without intervals: a p95 more than ``LATENCY_MARGIN`` lower);
2. **memory**: dropped when another needs over ``MEMORY_MARGIN`` less peak memory (peak RSS repeats
   within a few per cent between runs of the same model);
3. **size**: dropped when another is over ``SIZE_MARGIN`` smaller on disk;
4. **secondary quality**: dropped when another is better on the paired secondary signal beyond its
   noise and by a margin that matters (reference-answer NLL: its paired interval lies below
   −0.05 nats/token, ``pairs.NLL_MARGIN``);
5. **training cost**: dropped when another took under ``1 - TRAIN_MARGIN`` of its training time
   (dependencies included: a blend pays for the run it starts from).

What is left after the last step is a tie the evidence cannot break; the report says so and names
them, and the pick among them (lowest p95 point estimate, then name) is flagged as arbitrary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

LATENCY_MARGIN = 0.10
MEMORY_MARGIN = 0.05
SIZE_MARGIN = 0.05
TRAIN_MARGIN = 0.10


@dataclass(frozen=True)
class Costs:
    """What the tie-break reads of one candidate (None: not measured, never wins a step)."""

    name: str
    latency_p95_ms: float | None = None
    latency_ci: tuple[float, float] | None = None
    memory_mb: float | None = None
    size_bytes: float | None = None
    train_s: float | None = None


@dataclass
class TieBreak:
    """The outcome: ``pick``, the steps that removed candidates, and the ones still tied with it."""

    pick: str
    steps: list[str] = field(default_factory=list)  # "latency: dropped b (…)"
    still_tied: list[str] = field(default_factory=list)

    @property
    def arbitrary(self) -> bool:
        return bool(self.still_tied)


def _latency_beats(a: Costs, b: Costs) -> bool:
    """a's p95 is lower than b's beyond the noise."""
    if a.latency_ci is not None and b.latency_ci is not None:
        return a.latency_ci[1] < b.latency_ci[0]
    if a.latency_p95_ms is None or b.latency_p95_ms is None:
        return a.latency_p95_ms is not None and b.latency_p95_ms is None
    return a.latency_p95_ms < b.latency_p95_ms * (1 - LATENCY_MARGIN)


def _margin_beats(attr: str, margin: float) -> Callable[[Costs, Costs], bool]:
    def beats(a: Costs, b: Costs) -> bool:
        x, y = getattr(a, attr), getattr(b, attr)
        if x is None or y is None:
            return x is not None and y is None
        return x < y * (1 - margin)

    return beats


def _filter(pool: list[Costs], beats: Callable[[Costs, Costs], bool]) -> tuple[list[Costs], list[str]]:
    """Keep the candidates no other one beats; return them and the names dropped."""
    kept = [c for c in pool if not any(beats(d, c) for d in pool if d is not c)]
    if not kept:  # a cycle cannot happen with these orders, but never empty the pool
        return pool, []
    return kept, [c.name for c in pool if c not in kept]


def break_tie(tied: Sequence[Costs], secondary_better: Callable[[str, str], bool] | None = None) -> TieBreak:
    """Pick one of ``tied`` (quality-tied candidates) by the steps in the module docstring.

    ``secondary_better(a, b)`` says whether a is significantly better than b on the secondary quality
    signal (None: no such signal).
    """
    if not tied:
        raise ValueError("break_tie needs at least one candidate")
    pool = list(tied)
    steps: list[str] = []
    by_name = {c.name: c for c in pool}
    rules: list[tuple[str, Callable[[Costs, Costs], bool]]] = [
        ("latency", _latency_beats),
        ("memory", _margin_beats("memory_mb", MEMORY_MARGIN)),
        ("size", _margin_beats("size_bytes", SIZE_MARGIN)),
    ]
    if secondary_better is not None:
        rules.append(("answer likelihood", lambda a, b: secondary_better(a.name, b.name)))
    rules.append(("training cost", _margin_beats("train_s", TRAIN_MARGIN)))
    for label, beats in rules:
        if len(pool) == 1:
            break
        pool, dropped = _filter(pool, beats)
        if dropped:
            steps.append(f"{label}: {', '.join(dropped)} {'is' if len(dropped) == 1 else 'are'} beaten")
    inf = float("inf")
    pool.sort(key=lambda c: (inf if c.latency_p95_ms is None else c.latency_p95_ms, c.name))
    pick = pool[0]
    return TieBreak(pick.name, steps, [c.name for c in pool[1:] if c.name in by_name])
