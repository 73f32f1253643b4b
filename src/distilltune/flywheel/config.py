"""``FlywheelSettings``: the thresholds and sizes of one flywheel turn (docs/flywheel.md).

Defaults mirror the serving side: ``min_confidence`` is the cascade's default escalation threshold
(a student answer below it would have been escalated had a fallback been configured), the held-out
share keeps enough reviewed failures back for the gate to measure an improvement on them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distilltune.config import StrictModel

REASONS = (
    "escalated",  # the cascade handed the request to the fallback model
    "low_confidence",  # the student's mean token log-probability below min_confidence
    "thumbs_down",  # a user rated the answer down (POST /v1/feedback)
    "correction",  # a user sent a corrected answer
    "output_guard",  # the output guard refused or redacted the answer
    "unanswered",  # the answer says "I don't know" (the task's unanswered_patterns)
    "out_of_distribution",  # farther from every training question than training's own 95th percentile
)


class FlywheelSettings(StrictModel):
    min_confidence: float = Field(
        default=-1.5, description="harvest student answers below this mean log-prob"
    )
    reasons: list[Literal[REASONS]] = Field(
        default_factory=lambda: list(REASONS), description="which signals harvest"
    )
    max_items: int = Field(default=500, ge=1, description="harvest at most this many distinct questions")
    heldout_share: float = Field(
        default=0.3, ge=0, lt=1, description="share of harvested items kept back for the gate (by id hash)"
    )
    eval_overlap: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="refuse an item whose question's word overlap with an eval question reaches this",
    )
    max_new_tokens: int = Field(default=128, ge=1, description="cap on each teacher answer")
    batch_size: int = Field(default=8, ge=1)
    seed: int = 0
