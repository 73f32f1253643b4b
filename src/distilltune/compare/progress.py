"""Progress of a comparison: one line per stage with elapsed time and a self-calibrating ETA, and the
training reporter that prints a line every few updates inside a stage."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Stage:
    strategy: str
    action: str  # "train" | "evaluate"
    weight: float  # estimated seconds on 2 cores (compare.recipes.stage_weight), for the ETA


class Progress:
    """One overall progress line per stage, with elapsed time and a self-calibrating ETA."""

    def __init__(self, stages: list[Stage], log: Callable[[str], None]):
        self.total = sum(s.weight for s in stages)
        self.done_weight = 0.0
        self.started = time.perf_counter()
        self.n = len(stages)
        self.log = log

    @staticmethod
    def _fmt(seconds: float) -> str:
        m, s = divmod(int(max(seconds, 0)), 60)
        return f"{m}:{s:02d}"

    def begin(self, i: int, stage: Stage, skipped: bool = False) -> None:
        elapsed = time.perf_counter() - self.started
        remaining = self.total - self.done_weight
        scale = elapsed / self.done_weight if self.done_weight > 60 else 1.0
        status = "done already, skipping" if skipped else f"ETA {self._fmt(remaining * scale)}"
        self.log(
            f"[compare {i}/{self.n}] {stage.strategy} · {stage.action} — elapsed {self._fmt(elapsed)}, {status}"
        )

    def end(self, stage: Stage, skipped: bool = False) -> None:
        if not skipped:
            self.done_weight += stage.weight
        else:
            self.total -= stage.weight


class StageReporter:
    """Training progress inside a comparison: its messages and a line every ``every`` updates."""

    def __init__(self, name: str, emit: Callable[[str], None], every: int = 10):
        self.name, self.emit, self.every = name, emit, every

    def start(self, total_steps: int, done_steps: int, header: str) -> None:
        self.emit(f"  {self.name}: {header} ({done_steps}/{total_steps} updates done)")

    def log(self, row: dict) -> None:
        step = row.get("step")
        if isinstance(step, int) and step % self.every == 0 and "loss" in row:
            tps = row.get("tokens_per_s")
            self.emit(
                f"  {self.name}: step {step} loss {row['loss']:.3f}" + (f", {tps:.0f} tok/s" if tps else "")
            )

    def message(self, text: str) -> None:
        self.emit(f"  {self.name}: {text}")

    def close(self) -> None:
        pass
