"""The policy guard: every input and output passes through it, and every verdict is a typed object.

Input side, in order: PII spans are found and replaced by typed placeholders (``[EMAIL]``) in
``redacted_text`` — the only version of the text a model, a log, a cache or a report may see;
blocked topics are matched (the task's regexes, optionally semantic similarity to the topics'
examples); a request for the system prompt is a ``prompt_extraction`` (refused when the policy
protects the system prompt); injection heuristics raise ``risk``, and the guard refuses on them
only when they stack past ``injection_refuse_risk``.

Output side: PII is redacted again, an answer that shares a long n-gram with the system prompt is a
leak (refused), and a model refusal in any wording is replaced by the policy's exact message. Given
what the request's model read (``output_context``), an answer that obeys injected text or dumps the
retrieved context is caught too (``policy.output``).

``GuardDecision.to_dict()`` holds offsets, labels and the redacted text — never the raw input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from distilltune.config import StrictModel
from distilltune.policy.conversation import turn_spans
from distilltune.policy.injection import extraction_spans, injection_risk, injection_signals
from distilltune.policy.leakage import LeakDetector
from distilltune.policy.output import OutputContext
from distilltune.policy.pii import PIIRedactor, Span
from distilltune.policy.readings import readings
from distilltune.policy.topics import (
    Calibration,
    Embed,
    NeighbourTopics,
    RegexTopics,
    SemanticTopics,
    calibrate_margin,
    calibrate_threshold,
)
from distilltune.task.schema import PolicySpec

Action = Literal["allow", "redact", "refuse"]


class GuardConfig(StrictModel):
    """Tunable parts of the guard (the policy itself lives in the task's policy.yaml)."""

    injection_refuse_risk: float = Field(
        default=0.7, ge=0, le=1, description="refuse on injection signals alone at or above this risk"
    )
    semantic_topics: bool = Field(
        default=False, description="also match blocked topics by embedding similarity to their examples"
    )
    semantic_mode: Literal["examples", "neighbours"] = Field(
        default="examples",
        description="examples: similarity to the topics' examples; neighbours: closer to a blocked "
        "reference (examples + train refusals) than to any in-scope train question, by a calibrated margin",
    )
    semantic_threshold: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="cosine threshold; None = calibrate on the task's in-scope questions (Guard.for_task)",
    )
    embedding_model: str | None = Field(
        default=None, description="sentence-transformers dir for semantic topics (None = bundled MiniLM)"
    )
    deobfuscate: bool = Field(
        default=True,
        description="also run topic, extraction and injection checks on de-obfuscated readings "
        "(look-alike letters, leetspeak, spaced-out letters, base64)",
    )
    leak_ngram_words: int = Field(default=6, ge=3, description="shared word run that counts as a leak")


@dataclass(frozen=True)
class GuardDecision:
    """One verdict. ``redacted_text`` is what may be shown to a model (input) or a user (output)."""

    action: Action
    reasons: list[str] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    redacted_text: str = ""
    risk: float = 0.0

    @property
    def refused(self) -> bool:
        return self.action == "refuse"

    @property
    def pii_spans(self) -> list[Span]:
        return [s for s in self.spans if s.kind == "pii"]

    def to_dict(self) -> dict:
        return {
            "action": self.action,
            "reasons": list(self.reasons),
            "risk": self.risk,
            "redacted_text": self.redacted_text,
            "spans": [s.to_dict() for s in self.spans],
        }


@dataclass(frozen=True)
class ConversationDecision:
    """A whole request's input verdict: every turn redacted, the last user turn's decision.

    ``messages`` are copies of the input turns with ``content`` redacted (roles and other keys kept):
    the only version a model, a log or a cache may see. ``pii_reasons`` covers every turn.
    """

    messages: list[dict]
    decision: GuardDecision
    pii_reasons: list[str]

    @property
    def action(self) -> Action:
        if self.decision.action == "refuse":
            return "refuse"
        return "redact" if self.pii_reasons else self.decision.action

    @property
    def reasons(self) -> list[str]:
        return _dedupe([*self.decision.reasons, *self.pii_reasons])


_GENERIC_REFUSAL = re.compile(
    r"^\W*(?:i'?m\s+sorry|i\s+am\s+sorry|sorry|i\s+apologi[sz]e|unfortunately)?[,.!]?\s*(?:but\s+)?i\s+(?:can'?t|cannot|can\s+not|won'?t|am\s+not\s+able\s+to|'m\s+not\s+able\s+to)"
    r"\s+(?:help|assist)\s+(?:you\s+)?with\s+(?:that|this)",
    re.IGNORECASE,
)


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


class Guard:
    """``check_input`` / ``check_output`` for one task's policy. Cheap to build; thread-safe to use."""

    def __init__(
        self,
        policy: PolicySpec,
        system_prompt: str | None = None,
        config: GuardConfig | None = None,
        embed: Embed | None = None,
    ):
        self.policy = policy
        self.config = config or GuardConfig()
        self.system_prompt = system_prompt or ""
        self.pii = PIIRedactor(policy.pii.enabled, [(c.name, c.pattern) for c in policy.pii.custom])
        self.topics = RegexTopics(policy.blocked_topics)
        self.leaks = LeakDetector(self.system_prompt, self.config.leak_ngram_words)
        self.semantic: SemanticTopics | NeighbourTopics | None = None
        self.calibration: Calibration | None = None
        if self.config.semantic_topics and any(t.examples for t in policy.blocked_topics):
            if embed is None:
                from distilltune.retrieval.embed import load_embedder

                embed = load_embedder(self.config.embedding_model).encode
            threshold = self.config.semantic_threshold
            self.semantic = SemanticTopics(
                policy.blocked_topics, embed, 1.01 if threshold is None else threshold
            )

    @classmethod
    def for_task(cls, task, config: GuardConfig | None = None, embed: Embed | None = None) -> Guard:
        """A guard for a loaded ``Task``; calibrates the semantic threshold on its data when unset.

        Calibration: in-scope = user turns of train conversations whose answer is not the refusal;
        blocked = the topics' examples' siblings, i.e. the user turns of train refusal items.
        """
        guard = cls(task.policy, task.system_prompt, config, embed)
        if guard.semantic is None:
            return guard
        in_scope = [c.question for c in task.train if not task.is_refusal(c)]
        blocked = [c.question for c in task.train if task.is_refusal(c)]
        threshold = guard.config.semantic_threshold
        if guard.config.semantic_mode == "neighbours":
            matcher = NeighbourTopics(task.policy.blocked_topics, guard.semantic.embed, blocked, in_scope)
            if threshold is None:
                n_examples = sum(len(t.examples) for t in task.policy.blocked_topics)
                guard.calibration = calibrate_margin(matcher, n_examples)
                threshold = guard.calibration.threshold
            matcher.threshold = threshold
            guard.semantic = matcher
        elif threshold is None:
            guard.calibration = calibrate_threshold(guard.semantic, in_scope, blocked)
            guard.semantic.threshold = guard.calibration.threshold
        return guard

    @property
    def refusal_message(self) -> str:
        return self.policy.refusal_message

    def check_conversation(self, messages: Sequence[Mapping]) -> ConversationDecision:
        """Redact every turn (any role), PII split across turns included; judge the last user turn.

        Prefer this to calling ``check_input`` per turn: only here are a number typed over two
        messages, or a context word in one message and its number in the next, seen together.
        """
        texts = []
        for i, m in enumerate(messages):
            content = m.get("content")
            if not isinstance(content, str):
                raise ValueError(f"message {i}: content must be a string, got {type(content).__name__}")
            texts.append(content)
        users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
        if not users:
            raise ValueError("the conversation has no user turn")
        spans = turn_spans(self.pii, texts)
        out = [
            {**m, "content": self.pii.redact(t, s)[0]} for m, t, s in zip(messages, texts, spans, strict=True)
        ]
        decision = self.check_input(texts[users[-1]], pii=spans[users[-1]])
        pii_reasons = _dedupe([f"pii:{s.label}" for turn in spans for s in turn])
        return ConversationDecision(out, decision, pii_reasons)

    def check_input(self, text: str, pii: list[Span] | None = None) -> GuardDecision:
        """One text's verdict; ``pii`` (precomputed spans, e.g. by ``check_conversation``) is optional."""
        pii = self.pii.find(text) if pii is None else pii
        redacted, _ = self.pii.redact(text, pii)
        reasons = _dedupe([f"pii:{s.label}" for s in pii])
        spans: list[Span] = list(pii)
        refuse = False

        topic_spans = self.topics.find(text)
        spans += topic_spans
        for name in _dedupe([s.label for s in topic_spans]):
            reasons.append(f"blocked_topic:{name}")
            refuse = True
        if self.semantic is not None:
            # Embed the redacted text: the embedding model is a downstream consumer too.
            regex_names = {s.label for s in topic_spans}
            for score in self.semantic.find(redacted):
                if score.topic not in regex_names:
                    reasons.append(f"blocked_topic_semantic:{score.topic}")
                    refuse = True

        extraction = extraction_spans(text)
        signals = injection_signals(text)
        spans += extraction + signals
        refuse, extracted, signals = self._check_readings(text, reasons, refuse, bool(extraction), signals)
        risk = injection_risk(signals)
        reasons += _dedupe([f"injection:{s.label}" for s in signals])
        if extracted:
            risk = round(1 - (1 - risk) * 0.2, 4)
            reasons.append("prompt_extraction")
            refuse = refuse or self.policy.protect_system_prompt
        if risk >= self.config.injection_refuse_risk and not extracted:
            reasons.append("injection_risk")
            refuse = True

        action: Action = "refuse" if refuse else ("redact" if pii else "allow")
        spans.sort(key=lambda s: (s.start, s.end))
        return GuardDecision(action, reasons, spans, redacted, risk)

    def _check_readings(
        self, text: str, reasons: list[str], refuse: bool, extracted: bool, signals: list[Span]
    ) -> tuple[bool, bool, list[Span]]:
        """Run the word-level checks again on de-obfuscated readings (leetspeak, spacing, base64).

        A finding there adds its reason plus ``obfuscated``; its spans are not kept (their offsets
        belong to the reading, not to the text). Returns the updated refuse/extraction flags and
        the injection signals, extended by those only a reading showed.
        """
        if not self.config.deobfuscate:
            return refuse, extracted, signals
        seen = {s.label for s in signals}
        found = False
        for reading in readings(text):
            for name in _dedupe([s.label for s in self.topics.find(reading)]):
                if f"blocked_topic:{name}" not in reasons:
                    reasons.append(f"blocked_topic:{name}")
                    refuse = found = True
            if not extracted and extraction_spans(reading):
                extracted = found = True
            for sig in injection_signals(reading):
                if sig.label not in seen:
                    seen.add(sig.label)
                    signals = [*signals, Span(0, 0, "injection", sig.label)]
                    found = True
        if found:
            reasons.append("obfuscated")
        return refuse, extracted, signals

    def output_context(self, prompt: str = "", sources: Sequence[str] = ()) -> OutputContext:
        """What one request's model read (system message; turns and chunks), for ``check_output``."""
        return OutputContext(prompt, sources)

    def check_output(self, text: str, context: OutputContext | None = None) -> GuardDecision:
        """An answer's verdict. With ``context`` (what the model read), also the injection checks:
        an answer that says an injected directive's payload, or copies long spans of its prompt
        (``policy.output`` decides whether each refuses, is only flagged, or is off)."""
        pii = self.pii.find(text)
        redacted, _ = self.pii.redact(text, pii)
        reasons = _dedupe([f"pii:{s.label}" for s in pii])
        spans: list[Span] = list(pii)
        refuse = False
        if self.policy.protect_system_prompt:
            leaks = self.leaks.find(text)
            if leaks:
                spans += leaks
                reasons.append("system_prompt_leak")
                refuse = True
        if context is not None:
            refuse = self._check_injection_output(text, context, reasons) or refuse
        if self._is_refusal(text):
            reasons.append("model_refusal")
            refuse = True
        action: Action = "refuse" if refuse else ("redact" if pii else "allow")
        if refuse:
            redacted = self.refusal_message
        spans.sort(key=lambda s: (s.start, s.end))
        risky = {"system_prompt_leak", "injection_followed", "context_dump"} & set(reasons)
        return GuardDecision(action, reasons, spans, redacted, 1.0 if risky else 0.0)

    def _check_injection_output(self, text: str, context: OutputContext, reasons: list[str]) -> bool:
        """Append ``injection_followed`` / ``context_dump`` as found; True when the policy refuses one."""
        checks = self.policy.output
        refuse = False
        if checks.injection_followed != "off" and context.followed(text):
            reasons.append("injection_followed")
            refuse = checks.injection_followed == "refuse"
        if checks.context_dump != "off" and context.copied_words(text) >= checks.context_dump_words:
            reasons.append("context_dump")
            refuse = refuse or checks.context_dump == "refuse"
        return refuse

    def _is_refusal(self, text: str) -> bool:
        from distilltune.text import is_refusal

        return is_refusal(text, self.refusal_message) or bool(_GENERIC_REFUSAL.search(text.strip()))
