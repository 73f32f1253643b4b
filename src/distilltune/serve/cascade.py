"""The cascade decision: does the student's answer stand, or does the fallback model answer instead?

Two confidence signals, both cheap and available for every answer:

- the student's mean token log-probability over its own answer (greedy decoding makes this the
  model's average certainty; a distilled student that drifts out of its domain gets unsure);
- the best retrieval score for the question (no supporting document: the small model is more likely
  to make something up). Its scale depends on the retrieval mode, so its threshold is opt-in.

A pure function so the policy can be tested and tuned offline against logged confidences
(``distilltune logs`` reports their distribution).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CascadeDecision:
    escalate: bool
    reasons: tuple[str, ...]  # "low_logprob" | "low_retrieval" | "empty_answer"
    mean_logprob: float | None
    retrieval_score: float | None


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
