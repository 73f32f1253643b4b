"""The cascade decision: does the student's answer stand, or does the fallback model answer instead?

Two confidence signals, both cheap and available for every answer:

- the student's mean token log-probability over its own answer (greedy decoding makes this the
  model's average certainty; a distilled student that drifts out of its domain gets unsure);
- the best retrieval score for the question (no supporting document: the small model is more likely
  to make something up). Its scale depends on the retrieval mode, so its threshold is opt-in.

``confidence`` is the one definition of the first signal, used by evaluation and serving alike: an
answer without a single generated token has no confidence (None), which escalates — it is never
reported as fully confident. ``decide`` is a pure function so the policy can be tested and tuned
offline against logged confidences (``distilltune logs`` reports their distribution).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field

from distilltune.config import StrictModel


class CascadeConfig(StrictModel):
    """When the student is unsure, the fallback model answers instead."""

    min_mean_logprob: float = Field(
        default=-1.5,
        le=0,
        description="escalate when the student's mean token log-probability is below this",
    )
    min_retrieval_score: float | None = Field(
        default=None,
        description="also escalate when the best retrieval score is below this (scale depends on the "
        "retrieval mode; None = ignore retrieval)",
    )


@dataclass(frozen=True)
class CascadeDecision:
    escalate: bool
    reasons: tuple[str, ...]  # "low_logprob" | "low_retrieval" | "empty_answer"
    mean_logprob: float | None
    retrieval_score: float | None

    def as_dict(self) -> dict:
        """The decision as the response's ``distilltune.confidence`` field shows it."""
        return {
            "mean_logprob": self.mean_logprob,
            "retrieval_score": self.retrieval_score,
            "escalated": self.escalate,
            "reasons": list(self.reasons),
        }


def confidence(logprobs: Sequence[float]) -> float | None:
    """Mean token log-probability of an answer (its end token included); None when nothing was generated."""
    return sum(logprobs) / len(logprobs) if logprobs else None


def decide(
    mean_logprob: float | None,
    retrieval_score: float | None,
    min_mean_logprob: float,
    min_retrieval_score: float | None = None,
) -> CascadeDecision:
    """Escalate when any signal is below its threshold (an empty answer counts as unsure)."""
    reasons = []
    if mean_logprob is None:
        reasons.append("empty_answer")
    elif mean_logprob < min_mean_logprob:
        reasons.append("low_logprob")
    if min_retrieval_score is not None and (retrieval_score is None or retrieval_score < min_retrieval_score):
        reasons.append("low_retrieval")
    return CascadeDecision(bool(reasons), tuple(reasons), mean_logprob, retrieval_score)
