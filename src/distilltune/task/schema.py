"""Typed models of the task card (format fixed in docs/task-card.md and docs/design.md).

These models are the contract between the user's files and every later stage. They hold shape and
type rules; cross-file rules (sources exist, facts appear in sources, regexes compile) live in
``distilltune.task.load`` where file and line are known.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from distilltune.config import StrictModel

# The guard's built-in PII recognizers (distilltune.policy.recognizers; a test keeps the two equal).
PII_DETECTORS = (
    "email",
    "phone",
    "credit_card",
    "ssn",
    "iban",
    "ip_address",
    "bank_account",
    "date_of_birth",
    "passport",
)
PIIDetector = Literal[PII_DETECTORS]  # the same names, as a type pydantic validates against


class DataPaths(StrictModel):
    train: str = "train.jsonl"
    eval: str = "eval.jsonl"
    knowledge: str | None = "knowledge"
    policy: str | None = "policy.yaml"
    scenarios: str | None = "scenarios.jsonl"
    adversarial: str | None = "adversarial.jsonl"


class Budgets(StrictModel):
    latency_p95_ms: float | None = Field(default=None, gt=0)
    # Requests in flight the deployment must handle: efficiency is then also measured with this many
    # concurrent clients, and the latency budget is checked at that load (None: one at a time).
    concurrency: int | None = Field(default=None, ge=1, le=256)
    memory_mb: float | None = Field(default=None, gt=0)
    min_quality: float | None = Field(default=None, ge=0, le=1)


UNANSWERED_PATTERNS = [
    r"\bi (?:don['’]?t|do not) know\b",
    r"\bi(?:['’]m| am) not sure\b",
    r"\b(?:don['’]?t|do not) have (?:that|this|enough|any) information\b",
    r"\b(?:context|documentation|knowledge base) (?:does not|doesn['’]?t) (?:cover|mention|say)\b",
    r"\bnot (?:covered|mentioned) in the (?:context|documentation)\b",
]


class MonitoringSpec(StrictModel):
    """Alert thresholds for ``distilltune monitor`` (docs/monitoring.md): every signal compared per window.

    Defaults are chosen so a window of in-distribution traffic alerts rarely: the drift test at the
    usual 5 % level, rate thresholds well above what sampling noise gives at ``min_requests``.
    """

    min_requests: int = Field(default=30, ge=5, description="fewest questions a window needs to be tested")
    drift_alpha: float = Field(default=0.05, gt=0, lt=1, description="level of the MMD two-sample test")
    permutations: int = Field(default=500, ge=19, le=100_000, description="permutations of the MMD test")
    max_samples: int = Field(default=500, ge=20, description="questions per side the MMD test subsamples to")
    ood_quantile: float = Field(default=0.95, gt=0.5, lt=1, description="training NN-distance quantile")
    ood_rate: float = Field(default=0.2, gt=0, le=1, description="alert above this out-of-distribution share")
    knowledge_gap_rate: float = Field(default=0.2, gt=0, le=1, description="alert above this share")
    escalation_rise: float = Field(default=0.1, ge=0, le=1, description="alert above baseline + this")
    confidence_drop: float = Field(default=0.3, ge=0, description="alert below baseline - this (nats)")
    unanswered_rate: float | None = Field(default=0.3, gt=0, le=1)
    refusal_rate: float | None = Field(default=None, gt=0, le=1)
    latency_p95_ms: float | None = Field(default=None, gt=0)
    unanswered_patterns: list[str] = Field(default_factory=lambda: list(UNANSWERED_PATTERNS))
    seed: int = 0

    @field_validator("unanswered_patterns")
    @classmethod
    def _patterns_compile(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"pattern {p!r} does not compile: {e}") from None
        return v


class TaskSpec(StrictModel):
    name: str = Field(min_length=1)
    description: str = ""
    system_prompt: str = Field(min_length=1)
    data: DataPaths = DataPaths()
    budgets: Budgets = Budgets()
    monitoring: MonitoringSpec = MonitoringSpec()


class Message(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: str

    @model_validator(mode="after")
    def _non_empty_assistant(self) -> Message:
        if self.role == "assistant" and not self.content.strip():
            raise ValueError("assistant turn is empty")
        if self.role == "user" and not self.content.strip():
            raise ValueError("user turn is empty")
        return self


class Conversation(StrictModel):
    messages: list[Message] = Field(min_length=1)
    facts: list[str] = []
    sources: list[str] = []
    id: str | None = None

    @property
    def answer(self) -> str:
        """The final assistant turn: the target of evaluation."""
        return self.messages[-1].content

    @property
    def prompt_messages(self) -> list[Message]:
        """Everything before the final assistant turn."""
        return self.messages[:-1]

    @property
    def question(self) -> str:
        """The last user turn (what retrieval and the guard look at)."""
        for m in reversed(self.messages[:-1]):
            if m.role == "user":
                return m.content
        return ""


class Expectation(StrictModel):
    refuse: bool = False
    contains: list[str] = []
    not_contains: list[str] = []


class Case(StrictModel):
    """A behavioural or adversarial test: one prompt and what the reply must (not) do."""

    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    expect: Expectation = Expectation()
    kind: str | None = None


class BlockedTopic(StrictModel):
    name: str = Field(min_length=1)
    description: str = ""
    patterns: list[str] = []
    examples: list[str] = []


class CustomPII(StrictModel):
    name: str = Field(min_length=1)
    pattern: str

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", v):
            raise ValueError("must be letters, digits and underscores, starting with a letter")
        return v


class PIIRules(StrictModel):
    """Which PII the guard redacts: every built-in detector, minus ``disable``, plus ``custom``.

    On by default because a detector nobody remembered to list is a leak nobody notices.
    ``redact`` is kept so older cards stay valid; listing a detector there changes nothing.
    """

    redact: list[PIIDetector] = []
    disable: list[PIIDetector] = []
    custom: list[CustomPII] = []

    @model_validator(mode="after")
    def _no_contradiction(self) -> PIIRules:
        both = sorted(set(self.redact) & set(self.disable))
        if both:
            raise ValueError(f"{both} listed in both pii.redact and pii.disable")
        return self

    @property
    def enabled(self) -> list[str]:
        """The built-in detectors that run."""
        return [d for d in PII_DETECTORS if d not in self.disable]


OutputAction = Literal["refuse", "flag", "off"]


class OutputChecks(StrictModel):
    """What the output guard does with an answer that obeys injected text or dumps its prompt.

    ``refuse``: the user gets the refusal message (route ``refused_output``) and the reason is logged;
    ``flag``: the answer goes out and only the reason is logged; ``off``: not checked. The threshold's
    default was calibrated on acme-support (``distilltune.policy.output``; docs/guard.md): raise it
    for a task whose grounded answers quote long passages.
    """

    injection_followed: OutputAction = "refuse"
    context_dump: OutputAction = "refuse"
    context_dump_words: int = Field(
        default=32, ge=8, description="answer words copied from the prompt (in 8-word runs) that make a dump"
    )


class PolicySpec(StrictModel):
    refusal_message: str = "I'm sorry, but I can't help with that."
    blocked_topics: list[BlockedTopic] = []
    pii: PIIRules = PIIRules()
    protect_system_prompt: bool = True
    output: OutputChecks = OutputChecks()
