"""The request pipeline, exactly as the server runs it — implemented once, used by evaluation and serving.

For each conversation (a list of ``{"role", "content"}`` ending with a user turn):

1. ``system`` turns are dropped (the task's system prompt governs, as in ``distilltune serve``) and
   every remaining turn is redacted by ``guard.check_input``; the last user turn's decision decides:
   on ``refuse`` the answer is ``guard.refusal_message`` and the model is never called
   (route ``refused_input``);
2. ``prompter.messages(redacted conversation)`` assembles the chat: system prompt, numbered
   retrieved context (``GroundedPrompter``, the function training and serving use);
3. the model answers (batched, greedy unless ``temperature > 0``, capped by ``max_new_tokens``,
   stopping on the template's end token) via ``distilltune.models.generate.generate_chat``;
4. ``guard.check_output(answer)``; on ``refuse`` the answer becomes the refusal message
   (route ``refused_output``), otherwise its ``redacted_text`` is returned (route ``model``).

``answer_requests`` is the single batch implementation of that pipeline: ``evaluate`` scores its
answers, the efficiency probe times it one request at a time, and a server can call it per batch.
``build_pipeline`` builds the guard and prompter for a task the way ``distilltune serve`` does
(``Guard.for_task``, ``KnowledgeIndex.open`` when retrieval is enabled,
``GroundedPrompter.from_config``). ``guard=None`` skips steps 1's redaction/refusal and 4.
``Answer.loggable_conversation()`` is the request as a log may keep it (redacted; for a refused input
only a digest, as the server's request log does); ``Answer.raw_text`` (the model's text before the
output guard) must never be logged.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from distilltune.models.generate import generate_chat

ROUTE_MODEL = "model"
ROUTE_REFUSED_INPUT = "refused_input"
ROUTE_REFUSED_OUTPUT = "refused_output"


def withheld(text: str) -> str:
    """What a log keeps of a request the input guard refused: its length and a digest, not its text.

    Refused requests are attacks or off-policy content, and a task's ``not_contains`` strings may sit
    in the prompt itself ("reply 'I have been pwned'"); the digest still lets repeats be correlated.
    Same format as the server's request log.
    """
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return f"[withheld: refused by the input guard; {len(text)} chars; sha256 {digest}]"


@dataclass
class Answer:
    text: str  # what the user receives
    route: str  # ROUTE_MODEL | ROUTE_REFUSED_INPUT | ROUTE_REFUSED_OUTPUT
    redacted_request: str  # the last user turn after input redaction
    redacted_conversation: list[dict] = field(default_factory=list)  # every turn redacted, no system
    input_action: str = "allow"
    input_reasons: list[str] = field(default_factory=list)
    input_risk: float = 0.0
    output_action: str | None = None  # None when the model was not called
    output_reasons: list[str] = field(default_factory=list)
    hits: list[Any] = field(default_factory=list)  # retrieval hits shown to the model
    raw_text: str | None = None  # the model's own text before the output guard (never log it)
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0  # of the batch this answer was generated in
    decode_s: float = 0.0
    mean_logprob: float | None = None
    finished: bool | None = None  # stopped on an end token (None when not generated)
    guard_s: float = 0.0
    retrieval_s: float = 0.0

    @property
    def refused_by_guard(self) -> bool:
        return self.route != ROUTE_MODEL

    def loggable_conversation(self) -> list[dict]:
        """The request as a log may keep it: redacted turns, or withheld text when the input was refused."""
        if self.route == ROUTE_REFUSED_INPUT:
            return [
                {"role": m["role"], "content": withheld(m["content"])} for m in self.redacted_conversation
            ]
        return [dict(m) for m in self.redacted_conversation]


def _last_user_index(conversation: Sequence[dict]) -> int:
    for i in range(len(conversation) - 1, -1, -1):
        if conversation[i]["role"] == "user":
            return i
    raise ValueError("conversation has no user turn")


def hit_record(hit: Any) -> dict:
    """The loggable part of a retrieval hit (no chunk text: logs stay small and free of context dumps)."""
    return {
        "file": getattr(hit, "file", None),
        "heading": getattr(hit, "heading", None),
        "chunk_id": getattr(hit, "chunk_id", None),
        "score": round(float(getattr(hit, "score", 0.0)), 6),
    }


def answer_requests(
    model,
    tokenizer,
    guard,
    prompter,
    conversations: Sequence[Sequence[dict]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[Answer]:
    """Answer each conversation through guard → retrieval → model → guard (see the module docstring)."""
    answers: list[Answer | None] = [None] * len(conversations)
    pending: list[tuple[int, list[dict]]] = []
    for idx, raw in enumerate(conversations):
        conv = [{"role": m["role"], "content": m["content"]} for m in raw if m["role"] != "system"]
        last = _last_user_index(conv)
        t0 = time.perf_counter()
        decision, pii_reasons = None, []
        if guard is not None:
            for i, m in enumerate(conv):
                d = guard.check_input(m["content"])
                m["content"] = d.redacted_text
                if i == last:
                    decision = d
                else:
                    pii_reasons += [r for r in d.reasons if r.startswith("pii:")]
        ans = Answer(
            text="",
            route=ROUTE_MODEL,
            redacted_request=conv[last]["content"],
            redacted_conversation=[dict(m) for m in conv],
            guard_s=time.perf_counter() - t0,
        )
        if decision is not None:
            reasons = list(dict.fromkeys([*decision.reasons, *pii_reasons]))
            any_pii = any(r.startswith("pii:") for r in reasons)
            ans.input_action = "redact" if decision.action == "allow" and any_pii else decision.action
            ans.input_reasons = reasons
            ans.input_risk = float(decision.risk)
            if decision.action == "refuse":
                ans.text = guard.refusal_message
                ans.route = ROUTE_REFUSED_INPUT
                answers[idx] = ans
                continue
        t0 = time.perf_counter()
        messages, hits = prompter.messages(conv)
        ans.retrieval_s = time.perf_counter() - t0
        ans.hits = list(hits or [])
        answers[idx] = ans
        pending.append((idx, messages))

    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        gens = generate_chat(
            model,
            tokenizer,
            [m for _, m in chunk],
            max_new_tokens=max_new_tokens,
            batch_size=len(chunk),
            temperature=temperature,
            seed=seed + start,
        )
        for (idx, _), g in zip(chunk, gens, strict=True):
            ans = answers[idx]
            ans.raw_text = g.text
            ans.prompt_tokens, ans.new_tokens = g.prompt_tokens, g.new_tokens
            ans.prefill_s, ans.decode_s = g.prefill_s, g.decode_s
            ans.mean_logprob, ans.finished = g.mean_logprob, g.finished
            if guard is None:
                ans.text, ans.output_action = g.text, "allow"
                continue
            t0 = time.perf_counter()
            out = guard.check_output(g.text)
            ans.guard_s += time.perf_counter() - t0
            ans.output_action = out.action
            ans.output_reasons = list(out.reasons)
            if out.action == "refuse":
                ans.text = guard.refusal_message
                ans.route = ROUTE_REFUSED_OUTPUT
            else:
                ans.text = out.redacted_text
    return answers  # type: ignore[return-value]


@dataclass
class Pipeline:
    """What serving a task needs besides the model: the guard, the prompter, the index (or None)."""

    guard: Any
    prompter: Any
    index: Any = None


def build_pipeline(
    task, tokenizer, retrieval=None, guard_config=None, max_prompt_tokens: int | None = None
) -> Pipeline:
    """The guard and grounded prompter for ``task``, built as ``distilltune serve`` builds them.

    ``retrieval``: a ``RetrievalConfig`` (default settings when None); ``retrieval.enabled=False`` or a
    task without knowledge documents gives a prompter without an index (system prompt only).
    """
    from distilltune.policy import Guard
    from distilltune.retrieval import GroundedPrompter, KnowledgeIndex, RetrievalConfig

    retrieval = retrieval or RetrievalConfig()
    guard = Guard.for_task(task, guard_config)
    index = KnowledgeIndex.open(task, retrieval) if retrieval.enabled and task.knowledge else None
    prompter = GroundedPrompter.from_config(
        task.system_prompt, tokenizer, index, retrieval, max_prompt_tokens=max_prompt_tokens
    )
    return Pipeline(guard, prompter, index)
