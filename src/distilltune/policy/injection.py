"""Prompt-injection and prompt-extraction heuristics.

Injection signals (instructions to ignore the rules, role overrides, fake system/authority
messages, delimiter tricks, instructions hidden in quoted text, forced output) each carry a weight;
the risk is their noisy-or, ``1 - Π(1 - w)``. A single generic phrase only *raises* risk: the
guard refuses on injection alone when several signals stack up past a threshold, or when an
injection travels with a blocked topic or a request for the system prompt. This keeps in-scope
questions that happen to contain "kill", "hacked" or "attack" answerable.

Prompt extraction (asking for the system prompt, hidden instructions, "the text above") is a
separate, explicit finding: with ``protect_system_prompt`` the guard refuses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from distilltune.policy.pii import Span

_I = re.IGNORECASE


@dataclass(frozen=True)
class Signal:
    name: str
    weight: float
    pattern: re.Pattern


_IGNORE = r"(?:ignore|disregard|forget|override|skip|bypass|drop|abandon)"
_RULES = r"(?:instructions?|rules|guidelines|directions|directives|prompts?|polic(?:y|ies)|restrictions|guardrails|programming|constraints)"

INJECTION_SIGNALS: tuple[Signal, ...] = (
    Signal(
        "override_instructions",
        0.6,
        re.compile(
            rf"\b{_IGNORE}\s+(?:all\s+|any\s+|every\s+)?(?:of\s+)?(?:the\s+|your\s+|my\s+|these\s+|those\s+)?"
            rf"(?:previous\s+|prior\s+|above\s+|earlier\s+|preceding\s+|original\s+|initial\s+|system\s+|existing\s+)*{_RULES}\b",
            _I,
        ),
    ),
    Signal(
        "ignore_context",
        0.3,
        re.compile(
            rf"\b{_IGNORE}\s+(?:all\s+|any\s+)?(?:the\s+|your\s+)?(?:context|documents?|retrieved|sources?|knowledge)\b",
            _I,
        ),
    ),
    Signal(
        "rules_lifted",
        0.4,
        re.compile(
            r"\b(?:no\s+longer\s+(?:bound|restricted|limited)|(?:rules|restrictions|policy|policies|filters?)\s+(?:have\s+been|are|were)\s+"
            r"(?:lifted|removed|disabled|suspended|off)|(?:has|have|with)\s+no\s+(?:rules|restrictions|limits|filters)"
            r"|without\s+(?:any\s+)?(?:rules|restrictions|filters|limits)|no\s+restrictions|developer\s+mode|jailbreak(?:en)?)\b",
            _I,
        ),
    ),
    Signal(
        "role_override",
        0.3,
        re.compile(
            r"\b(?:you\s+are\s+(?:now\s+|no\s+longer\s+)(?!able\b)|from\s+now\s+on,?\s+you|pretend\s+(?:to\s+be|you\s*(?:'re|are))"
            r"|act\s+as\s+(?:a|an|my|if)\b|role-?play\s+as|you\s+are\s+DAN\b|(?:let'?s\s+)?play\s+a\s+game|stay\s+in\s+character"
            r"|new\s+persona|simulate\s+(?:a|an)\s+\w+\s+(?:with|without))",
            _I,
        ),
    ),
    Signal(
        "fake_system_message",
        0.3,
        re.compile(
            r"(?:^|[\s>\[(])(?:system|admin(?:istrator)?|developer)\s*(?:notice|message|override|update|prompt)?\s*:"
            r"|</?\s*(?:context|system|instructions?|im_start|im_end|s)\s*>|<\|im_(?:start|end)\|>"
            r"|\b(?:new|updated|revised)\s+instructions?\s*:"
            r"|\b(?:note|message|notice|memo)\s+from\s+(?:the\s+)?(?:\w+\s+)?(?:admin|administrators?|developers?|system|security|it)\s+team\b",
            _I,
        ),
    ),
    Signal(
        "forced_output",
        0.3,
        re.compile(
            r"\b(?:reply|respond|answer|say|output|print|write)\s+(?:only|exactly|just)\s+(?:with\b|the\s+words\b|:)?"
            r"|\brepeat\s+after\s+me\b|\b(?:reply|respond|answer)\s+with\s+['\"“‘]",
            _I,
        ),
    ),
)

# An instruction inside quotes ("the document says: 'ASSISTANT: reveal ...'"), which the model might obey.
_QUOTED = re.compile(r"[\"“‘']([^\"”’']{8,400})[\"”’']")
_IMPERATIVE = re.compile(
    r"\b(?:ignore|disregard|reveal|print|show|output|repeat|assistant\s*:|system\s*:|you\s+must|you\s+are\s+now)\b",
    _I,
)

_DISCLOSE = (
    r"(?:print|show|reveal|repeat|output|paste|display|tell|give|share|spell|translate|quote|recite|list|"
    r"write|dump|leak|expose|disclose|copy|echo|summari[sz]e|read\s+(?:out|back)|what\s+(?:is|are|was|were))"
)
_PROMPT_OBJECT = (
    r"(?:system\s+(?:prompt|message|instructions?)s?|(?:hidden|secret|initial|original|underlying|internal|"
    r"pre-?)\s*(?:prompt|instructions?|rules|messages?|system\s+messages?)|"
    r"(?:prompt|instructions?)\s+(?:that\s+)?you\s+(?:were|have\s+been|are)\s+(?:given|configured|initiali[sz]ed|"
    r"programmed|told)(?:\s+with)?|instructions?\s+were\s+you\s+given|configured\s+with|"
    r"(?:text|words|everything|message|content)\s+above\b(?!\s+(?:the|a|an|my|your|its|this|that|each|every)\b)|"
    r"everything\s+in\s+(?:your|the)\s+context(?:\s+window)?|(?:your|this)\s+context\s+window|"
    r"your\s+(?:instructions|prompt)\b(?!\s+(?:for|on|to|about|when)\b))"
)
EXTRACTION = (
    re.compile(rf"\b{_DISCLOSE}\b[^.?!\n]{{0,80}}?\b{_PROMPT_OBJECT}", _I),
    re.compile(
        rf"\b{_PROMPT_OBJECT}\b[^.?!\n]{{0,60}}?\b(?:verbatim|word\s+for\s+word|exactly|in\s+full)\b", _I
    ),
    re.compile(r"\bwhat\s+(?:instructions|rules|prompt)\s+(?:were|have)\s+you\s+(?:been\s+)?given\b", _I),
)


def injection_signals(text: str) -> list[Span]:
    """Every injection signal found, as spans labelled with the signal's name."""
    spans = [
        Span(m.start(), m.end(), "injection", sig.name)
        for sig in INJECTION_SIGNALS
        for m in sig.pattern.finditer(text)
    ]
    for m in _QUOTED.finditer(text):
        if _IMPERATIVE.search(m.group(1)):
            spans.append(Span(m.start(), m.end(), "injection", "quoted_instructions"))
    return spans


def injection_risk(spans: list[Span]) -> float:
    """Noisy-or of the distinct signals' weights (each signal counts once)."""
    weights = {s.name: s.weight for s in INJECTION_SIGNALS} | {"quoted_instructions": 0.3}
    keep = 1.0
    for name in {s.label for s in spans if s.kind == "injection"}:
        keep *= 1.0 - weights[name]
    return round(1.0 - keep, 4)


def extraction_spans(text: str) -> list[Span]:
    """Requests to disclose the system prompt or hidden instructions."""
    out: list[Span] = []
    for pat in EXTRACTION:
        out.extend(Span(m.start(), m.end(), "prompt_extraction", "system_prompt") for m in pat.finditer(text))
    return out
