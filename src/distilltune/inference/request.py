"""One request's path, implemented once: input guard → retrieval and prompt assembly → generation →
cascade decision → output guard.

Batch evaluation (``distilltune.evaluation.answer``, HF batch decoding) and the server
(``distilltune.serve.pipeline``, the continuous-batching engine, streaming included) are drivers over
``RequestPath``. They differ only in *how tokens are generated*; every decision a user can observe —
which turns count, what is redacted or refused, what the model is shown, how the prompt is tokenized,
the confidence of an answer and whether it escalates, what the output guard lets through, the route
names — is made here, so an evaluated model behaves exactly as the served one.

The steps, for a conversation of ``{"role", "content"}`` turns ending with a user turn:

1. ``prepare``: client ``system``/``developer`` turns are dropped (the task's system prompt governs;
   a client must not be able to replace the policy) and the remaining turns go through
   ``guard.check_conversation`` together (models, logs and the index never see raw PII, not even
   PII split across turns). The last user turn's decision
   decides: on ``refuse`` the answer is the policy's refusal message and no model runs (route
   ``refused_input``; logs keep only a digest, see ``withheld``). Otherwise ``prompter.messages`` puts
   the system prompt and the numbered retrieved context in front (the function training uses too),
   and ``prompt_ids`` tokenizes the chat;
2. the driver generates (greedy unless asked otherwise);
3. ``judge``: the student's confidence (``cascade.confidence``) and, when a fallback model exists,
   the cascade decision; ``escalate`` records the hand-over (route ``fallback``);
4. ``releaser`` / ``complete``: the generated ids become text through ``TextReleaser`` (stop
   sequences, output guard: PII, system-prompt leaks, answers that obey injected text or dump the
   context, for the student and the fallback alike); a refusal there is route ``refused_output``, otherwise the answer's route
   is ``student`` (or ``fallback``).

The result is one typed ``RequestResult``: route, hits and citations, guard decisions, confidence,
text, token counts and timings. ``raw_text`` (the model's text before the output guard) must never be
logged; ``loggable_conversation()`` is the request as a log may keep it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from distilltune.inference.cascade import CascadeConfig, CascadeDecision, confidence, decide
from distilltune.inference.release import TextReleaser

ROUTE_STUDENT = "student"  # the model asked answered (the served model; the evaluated model)
ROUTE_FALLBACK = "fallback"  # the cascade handed the request to the fallback model
ROUTE_REFUSED_INPUT = "refused_input"
ROUTE_REFUSED_OUTPUT = "refused_output"
ROUTES = (ROUTE_STUDENT, ROUTE_FALLBACK, ROUTE_REFUSED_INPUT, ROUTE_REFUSED_OUTPUT)

DROPPED_ROLES = ("system", "developer")  # client instructions: the task's system prompt governs


def withheld(text: str) -> str:
    """What a log keeps of a request the input guard refused: its length and a digest, not its text.

    Refused requests are attacks or off-policy content, and a task's ``not_contains`` strings may sit
    in the prompt itself ("reply 'I have been pwned'"); the digest still lets repeats be correlated.
    """
    digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]
    return f"[withheld: refused by the input guard; {len(text)} chars; sha256 {digest}]"


def hit_record(hit: Any) -> dict:
    """The loggable part of a retrieval hit (no chunk text: logs stay small and free of context dumps)."""
    return {
        "file": getattr(hit, "file", None),
        "heading": getattr(hit, "heading", None),
        "chunk_id": getattr(hit, "chunk_id", None),
        "score": round(float(getattr(hit, "score", 0.0)), 6),
    }


def prompt_ids(tokenizer, messages: list[dict], lock: threading.Lock | None = None) -> list[int]:
    """The model input for an assembled chat; ``lock`` serialises a tokenizer shared between threads."""
    from distilltune.models.generate import render_prompt  # torch: only where a model runs

    with lock or contextlib.nullcontext():
        return render_prompt(tokenizer, messages)


@dataclass
class RequestResult:
    """Everything one request produced; filled step by step by ``RequestPath``."""

    route: str = ROUTE_STUDENT
    text: str = ""  # what the user receives
    redacted_conversation: list[dict] = field(default_factory=list)  # user/assistant turns, redacted
    input_action: str = "allow"
    input_reasons: list[str] = field(default_factory=list)
    input_risk: float = 0.0
    messages: list[dict] | None = None  # the assembled chat the model reads (None when refused)
    hits: list[Any] = field(default_factory=list)  # retrieval hits shown to the model
    mean_logprob: float | None = None  # the student's confidence (cascade.confidence)
    cascade: CascadeDecision | None = None  # set when a fallback model could take over
    student_answer: str | None = None  # the student's output-guarded text when the fallback answered
    raw_text: str | None = None  # the answering model's text before the output guard (never log it)
    output_action: str | None = None  # None when no model was called
    output_reasons: list[str] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "content_filter"
    prompt_tokens: int = 0  # of the answering model's prompt
    new_tokens: int = 0  # generated by the answering model, its end token included
    finished: bool | None = None  # stopped on an end token (None when not generated)
    queue_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    guard_s: float = 0.0  # input guard
    retrieval_s: float = 0.0  # retrieval and prompt assembly
    output_context: Any = None  # what the model read, for the output guard (policy.OutputContext)

    @property
    def redacted_request(self) -> str:
        """The last user turn after input redaction."""
        users = [m["content"] for m in self.redacted_conversation if m["role"] == "user"]
        return users[-1] if users else ""

    @property
    def citations(self) -> list[dict]:
        return [hit_record(h) for h in self.hits]

    @property
    def retrieval_score(self) -> float | None:
        return max((c["score"] for c in self.citations), default=None)

    @property
    def refused_by_guard(self) -> bool:
        return self.route in (ROUTE_REFUSED_INPUT, ROUTE_REFUSED_OUTPUT)

    def loggable_conversation(self) -> list[dict]:
        """The request as a log may keep it: redacted turns, or withheld text when the input was refused."""
        if self.route == ROUTE_REFUSED_INPUT:
            return [
                {"role": m["role"], "content": withheld(m["content"])} for m in self.redacted_conversation
            ]
        return [dict(m) for m in self.redacted_conversation]

    def guard_decisions(self) -> dict:
        """Actions and reason labels (never matched text), as the response and the log show them."""
        out = {"input": {"action": self.input_action, "reasons": list(self.input_reasons)}}
        if self.route != ROUTE_REFUSED_INPUT:
            out["output"] = {"action": self.output_action, "reasons": list(self.output_reasons)}
        return out


def _last_user_index(conversation: Sequence[dict]) -> int:
    for i in range(len(conversation) - 1, -1, -1):
        if conversation[i]["role"] == "user":
            return i
    raise ValueError("conversation has no user turn")


class RequestPath:
    """The guard, the prompter and the cascade policy of one deployment, applied step by step.

    ``guard=None`` skips the input and output checks (evaluating a bare model). ``prompt_lock``
    serialises the prompter, whose tokenizer counts context tokens and is not thread-safe.
    ``cascade`` is read at every decision, so a live server's thresholds can be changed in place.
    """

    def __init__(
        self,
        guard,
        prompter,
        cascade: CascadeConfig | None = None,
        index=None,
        prompt_lock: threading.Lock | None = None,
    ):
        self.guard = guard
        self.prompter = prompter
        self.cascade = cascade or CascadeConfig()
        self.index = index
        self._prompt_lock = prompt_lock or contextlib.nullcontext()

    def for_threads(self) -> RequestPath:
        """This path for callers on several threads at once (the server, a concurrent measurement).

        The prompter counts context tokens with its tokenizer, which is not thread-safe: it gets a
        private copy of that tokenizer (so retrieval never holds the lock the callers need for
        prompt tokenization and detokenizing) and runs behind its own lock. The guard and the cascade
        settings are shared, so a live server's thresholds can still be changed in place."""
        prompter = self.prompter
        if getattr(prompter, "tokenizer", None) is not None:
            prompter = copy.copy(prompter)
            prompter.tokenizer = copy.deepcopy(prompter.tokenizer)
        return RequestPath(self.guard, prompter, self.cascade, self.index, prompt_lock=threading.Lock())

    def _check_input(self, conv: list[dict], res: RequestResult) -> bool:
        """Redact every turn in place; the last user turn decides. True when the request is refused.

        ``check_conversation`` reads the turns together, so PII typed over two messages, or a context
        word in one turn and its number in the next, is redacted in every turn it touches (earlier
        user turns and the client's assistant turns included) before a model or a log sees them.
        """
        checked = self.guard.check_conversation(conv)
        for m, redacted in zip(conv, checked.messages, strict=True):
            m["content"] = redacted["content"]
        refused = checked.action == "refuse"
        res.input_action, res.input_reasons = checked.action, checked.reasons
        res.input_risk = float(checked.decision.risk)
        return refused

    def prepare(self, conversation: Sequence[dict]) -> RequestResult:
        """Steps 1: input guard, then (unless refused) retrieval and prompt assembly."""
        conv = [
            {"role": m["role"], "content": m["content"]}
            for m in conversation
            if m["role"] not in DROPPED_ROLES
        ]
        _last_user_index(conv)
        res = RequestResult()
        t0 = time.perf_counter()
        refused = self._check_input(conv, res) if self.guard is not None else False
        res.guard_s = time.perf_counter() - t0
        res.redacted_conversation = [dict(m) for m in conv]
        if refused:
            res.route, res.text, res.finish_reason = ROUTE_REFUSED_INPUT, self.guard.refusal_message, "stop"
            return res
        t0 = time.perf_counter()
        with self._prompt_lock:
            messages, hits = self.prompter.messages(conv)
        res.retrieval_s = time.perf_counter() - t0
        res.messages, res.hits = messages, list(hits or [])
        if self.guard is not None:
            t0 = time.perf_counter()
            res.output_context = self._output_context(res)
            res.guard_s += time.perf_counter() - t0
        return res

    def _output_context(self, res: RequestResult):
        """The system message the model reads, and every text a directive could hide in: the
        conversation's turns (redacted, as the model sees them) and each retrieved chunk."""
        system = next((m["content"] for m in res.messages if m["role"] == "system"), "")
        sources = [m["content"] for m in res.redacted_conversation]
        sources += [getattr(h, "text", "") for h in res.hits]
        return self.guard.output_context(system, sources)

    def judge(self, res: RequestResult, logprobs: Sequence[float], has_fallback: bool) -> bool:
        """Step 3: record the student's confidence; True when a fallback should answer instead."""
        res.mean_logprob = confidence(logprobs)
        if not has_fallback:
            return False
        c = self.cascade
        res.cascade = decide(res.mean_logprob, res.retrieval_score, c.min_mean_logprob, c.min_retrieval_score)
        return res.cascade.escalate

    def escalate(self, res: RequestResult, student_text: str) -> None:
        """The fallback answers; the student's answer is kept only output-guarded (for the log)."""
        guarded = (
            self.guard.check_output(student_text, res.output_context).redacted_text
            if self.guard is not None
            else student_text
        )
        res.student_answer, res.route = guarded, ROUTE_FALLBACK

    def releaser(
        self,
        res: RequestResult,
        tokenizer,
        tok_lock: threading.Lock,
        stop: Sequence[str] = (),
        incremental: bool = False,
    ) -> TextReleaser:
        """Step 4's text releaser: decode, cut at stop sequences, guard (sentence by sentence if streaming).

        Whichever model answers (the student or the fallback), its text passes the same output guard
        with the same ``res.output_context``: the injection checks know what that model read.
        """
        return TextReleaser(
            tokenizer, tok_lock, self.guard, list(stop), incremental=incremental, context=res.output_context
        )

    def complete(
        self,
        res: RequestResult,
        releaser: TextReleaser,
        finish_reason: str,
        prompt_tokens: int,
        new_tokens: int,
    ) -> RequestResult:
        """Step 4's outcome: the text released, the output decision, the final route and counts."""
        out = releaser.output_decision
        if out is not None:
            res.output_action, res.output_reasons = out.action, list(out.reasons)
        elif self.guard is None:
            res.output_action = "allow"
        if releaser.refused:
            res.route = ROUTE_REFUSED_OUTPUT
        res.text = releaser.sent
        res.raw_text = releaser.raw_text
        res.finish_reason = finish_reason
        res.prompt_tokens, res.new_tokens = prompt_tokens, new_tokens
        return res

    def complete_text(
        self,
        res: RequestResult,
        text: str,
        finish_reason: str = "stop",
        prompt_tokens: int = 0,
        new_tokens: int = 0,
    ) -> RequestResult:
        """Step 4 for a backend that returns text rather than token ids (e.g. a remote vLLM server)."""
        releaser = self.releaser(res, None, threading.Lock())
        end = releaser.release_text(text, finish_reason)
        return self.complete(res, releaser, end.finish_reason or finish_reason, prompt_tokens, new_tokens)


def build_path(
    task,
    tokenizer,
    retrieval=None,
    guard_config=None,
    max_prompt_tokens: int | None = None,
    cascade: CascadeConfig | None = None,
) -> RequestPath:
    """The request path for ``task``, built the same way for ``distilltune serve`` and ``evaluate``.

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
    return RequestPath(guard, prompter, cascade, index)
