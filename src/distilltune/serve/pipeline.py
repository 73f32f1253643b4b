"""One request's path through the server, as a stream of events both response modes consume.

input guard → retrieval and prompt assembly → student → (cascade) fallback → output guard:

1. every turn of the conversation is redacted by ``guard.check_input`` (the models, the log and the
   index never see raw PII); the last user turn decides refusal → the policy's refusal message,
   route ``refused_input`` (the log then keeps only a digest of the text). Client ``system``/``developer`` turns are dropped: the task's system
   prompt governs (a client must not be able to replace the policy);
2. ``prompter.messages(conversation)`` — the same function training and evaluation use — puts the
   system prompt and the numbered retrieved context in front;
3. the student answers. With a fallback configured, its whole answer is awaited first: the
   confidence (mean token log-probability, best retrieval score) decides whether it stands (route
   ``student``) or the fallback answers instead (route ``fallback``); without one, tokens stream
   as they are decoded;
4. text is released through ``TextReleaser`` (output guard, stop sequences); a refusal by the
   output guard is route ``refused_output``.

The generator yields ``Start`` (route and citations known) before any text, so the HTTP layer can
still answer 4xx/429 until then and put the route in a header. Everything loggable accumulates in
the request's ``LogRecord`` — redacted text only.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from anyio import to_thread

from distilltune.serve.cascade import decide
from distilltune.serve.engine import EngineStopped, GenHandle, GenResult, QueueFull
from distilltune.serve.loading import ModelSlot, ServedModel, ServerState
from distilltune.serve.openai_types import APIError, ChatRequest, usage_dict
from distilltune.serve.release import TextReleaser
from distilltune.serve.requestlog import LogRecord

ROUTE_REFUSED_INPUT = "refused_input"
ROUTE_STUDENT = "student"
ROUTE_FALLBACK = "fallback"
ROUTE_REFUSED_OUTPUT = "refused_output"


@dataclass
class Start:
    route: str
    citations: list[dict]


@dataclass
class Delta:
    text: str


@dataclass
class End:
    finish_reason: str
    usage: dict
    extra: dict = field(default_factory=dict)


def hit_record(hit) -> dict:
    """The loggable part of a retrieval hit (no chunk text)."""
    return {
        "file": getattr(hit, "file", None),
        "heading": getattr(hit, "heading", None),
        "chunk_id": getattr(hit, "chunk_id", None),
        "score": round(float(getattr(hit, "score", 0.0)), 6),
    }


def withheld(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return f"[withheld: refused by the input guard; {len(text)} chars; sha256 {digest}]"


def render_ids(slot: ModelSlot, messages: list[dict]) -> list[int]:
    """Chat template as text, then one tokenizer call (as training encodes; ~500x faster than tokenizing
    inside ``apply_chat_template``)."""
    with slot.tok_lock:
        text = slot.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(slot.tokenizer(text, add_special_tokens=False)["input_ids"])


class RequestPipeline:
    def __init__(self, state: ServerState):
        self.state = state
        # The prompter counts context tokens with the tokenizer; give it a private copy so retrieval
        # never holds the lock the event loop needs for detokenizing.
        self._prompt_lock = threading.Lock()
        prompter = state.prompter
        if getattr(prompter, "tokenizer", None) is state.student.tokenizer:
            prompter = copy.copy(prompter)
            prompter.tokenizer = copy.deepcopy(state.student.tokenizer)
        self.prompter = prompter

    # ---- validation -------------------------------------------------------------------------
    def resolve(self, req: ChatRequest) -> ServedModel:
        served = self.state.models.get(req.model)
        if served is None:
            raise APIError(
                404,
                f"model {req.model!r} does not exist; available: {', '.join(self.state.models)}",
                code="model_not_found",
                param="model",
            )
        return served

    def check(self, req: ChatRequest) -> int:
        """Limits and supported features; returns the effective max_tokens."""
        lim = self.state.config.limits
        bad = req.unsupported()
        if bad:
            raise APIError(400, bad[1], param=bad[0], code="unsupported_parameter")
        if len(req.messages) > lim.max_messages:
            raise APIError(
                400, f"too many messages: {len(req.messages)} > {lim.max_messages}", param="messages"
            )
        for i, m in enumerate(req.messages):
            if len(m.text()) > lim.max_message_chars:
                raise APIError(
                    400, f"message {i} is longer than {lim.max_message_chars} characters", param="messages"
                )
        turns = [m for m in req.messages if m.role in ("user", "assistant")]
        if not turns or turns[-1].role != "user":
            raise APIError(400, "the conversation must end with a user message", param="messages")
        if any(m.role == "user" and not m.text().strip() for m in turns):
            raise APIError(400, "user messages must not be empty", param="messages")
        asked = req.max_completion_tokens or req.max_tokens
        if asked is not None and asked > lim.max_tokens:
            raise APIError(
                400, f"max_tokens {asked} exceeds this server's limit of {lim.max_tokens}", param="max_tokens"
            )
        return asked or self.state.config.generation.default_max_tokens

    # ---- the pipeline -----------------------------------------------------------------------
    def _guard_conversation(self, conv: list[dict]):
        guard = self.state.guard
        redacted, reasons = [], []
        last_user = max(i for i, m in enumerate(conv) if m["role"] == "user")
        last = None
        for i, m in enumerate(conv):
            d = guard.check_input(m["content"])
            redacted.append({"role": m["role"], "content": d.redacted_text})
            reasons += [r for r in d.reasons if i == last_user or r.startswith("pii:")]
            if i == last_user:
                last = d
        any_pii = any(r.startswith("pii:") for r in reasons)
        action = last.action if last.action == "refuse" else ("redact" if any_pii else last.action)
        return redacted, action, list(dict.fromkeys(reasons)), last.risk

    def _prompt(self, conv: list[dict]):
        with self._prompt_lock:
            return self.prompter.messages(conv)

    def _submit(self, slot: ModelSlot, prompt_ids: list[int], max_tokens: int, **kw) -> GenHandle:
        try:
            return slot.engine.submit(prompt_ids, max_tokens, **kw)
        except QueueFull as e:
            self.state.metrics.errors.labels("429").inc()
            raise APIError(
                429,
                f"the server is busy ({e.depth} requests waiting); retry after {e.retry_after_s:g} s",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(max(1, round(e.retry_after_s)))},
            ) from None
        except EngineStopped as e:
            raise APIError(503, f"the model is unavailable: {e}", type="server_error") from None

    def _check_length(self, slot: ModelSlot, prompt_ids: list[int], max_tokens: int) -> None:
        lim = self.state.config.limits.max_prompt_tokens
        if len(prompt_ids) > lim:
            raise APIError(
                400,
                f"the prompt is {len(prompt_ids)} tokens (with system prompt and context); the limit is {lim}",
                param="messages",
                code="context_length_exceeded",
            )
        if slot.max_positions and len(prompt_ids) + max_tokens > slot.max_positions:
            raise APIError(
                400,
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                f"context of {slot.max_positions} tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )

    @staticmethod
    def _generation_failed(res: GenResult) -> APIError:
        if res.finish_reason == "cancelled":  # the engine stopped under us: shutting down
            return APIError(503, "the server is shutting down", type="server_error", code="unavailable")
        return APIError(500, f"generation failed ({res.error or res.finish_reason})", type="server_error")

    async def run(
        self, req: ChatRequest, served: ServedModel, max_tokens: int, rec: LogRecord, stream: bool
    ) -> AsyncIterator[Start | Delta | End]:
        st = self.state
        cfg = st.config
        conv = [
            {"role": m.role, "content": m.text()} for m in req.messages if m.role in ("user", "assistant")
        ]
        redacted, action, reasons, _risk = await to_thread.run_sync(self._guard_conversation, conv)
        rec.prompt, rec.input_action, rec.input_reasons = redacted, action, reasons
        extra = {"route": None, "citations": [], "guard": {"input": {"action": action, "reasons": reasons}}}
        if action == "refuse":
            # A refused request is attack or off-policy content: its text stays out of the log (the task
            # card's not_contains strings may sit in the prompt itself, e.g. "reply 'I have been pwned'").
            # The guard's reason labels say what it was; a digest lets repeats be correlated.
            rec.prompt = [{"role": m["role"], "content": withheld(m["content"])} for m in redacted]
            rec.route = extra["route"] = ROUTE_REFUSED_INPUT
            rec.answer = st.guard.refusal_message
            rec.finish_reason = "stop"
            yield Start(ROUTE_REFUSED_INPUT, [])
            yield Delta(st.guard.refusal_message)
            yield End("stop", usage_dict(0, 0), extra)
            return

        messages, hits = await to_thread.run_sync(self._prompt, redacted)
        citations = [hit_record(h) for h in hits or []]
        rec.citations = extra["citations"] = citations
        rec.retrieval_score = max((c["score"] for c in citations), default=None)
        student = served.slot
        prompt_ids = await to_thread.run_sync(render_ids, student, messages)
        self._check_length(student, prompt_ids, max_tokens)
        temperature = req.temperature if req.temperature is not None else cfg.generation.default_temperature
        sampling = {"temperature": temperature, "top_p": req.top_p or 1.0, "seed": req.seed}
        stop = req.stop_list()

        answering, answer_ids = student, prompt_ids
        if st.fallback is None:
            handle = self._submit(student, prompt_ids, max_tokens, adapter=served.adapter, **sampling)
            rec.route = extra["route"] = ROUTE_STUDENT
            buffered = None
        else:
            handle = self._submit(student, prompt_ids, max_tokens, adapter=served.adapter, **sampling)
            try:
                buffered = await handle.result()
            finally:
                handle.cancel()  # a timeout or disconnect while waiting: free the batch slot
            if buffered.finish_reason in ("error", "cancelled"):
                raise self._generation_failed(buffered)
            st.metrics.queue_wait.labels("student").observe(buffered.queue_s)
            rec.queue_ms = buffered.queue_s * 1000
            st.metrics.tokens.labels("student", "prompt").inc(buffered.prompt_tokens)
            st.metrics.tokens.labels("student", "completion").inc(len(buffered.token_ids))
            rec.confidence = buffered.mean_logprob
            verdict = decide(
                buffered.mean_logprob,
                rec.retrieval_score,
                cfg.cascade.min_mean_logprob,
                cfg.cascade.min_retrieval_score,
            )
            extra["confidence"] = {
                "mean_logprob": verdict.mean_logprob,
                "retrieval_score": verdict.retrieval_score,
                "escalated": verdict.escalate,
                "reasons": list(verdict.reasons),
            }
            if verdict.escalate:
                st.metrics.escalations.inc()
                with student.tok_lock:
                    student_text = student.tokenizer.decode(
                        [t for t in buffered.token_ids if t not in student.engine.stop_ids],
                        skip_special_tokens=True,
                    ).strip()
                rec.student_answer = st.guard.check_output(student_text).redacted_text
                answering = st.fallback
                answer_ids = await to_thread.run_sync(render_ids, answering, messages)
                self._check_length(answering, answer_ids, max_tokens)
                handle = self._submit(answering, answer_ids, max_tokens, **sampling)
                rec.route = extra["route"] = ROUTE_FALLBACK
                buffered = None
            else:
                rec.route = extra["route"] = ROUTE_STUDENT

        yield Start(rec.route, citations)
        releaser = TextReleaser(answering.tokenizer, answering.tok_lock, st.guard, stop, incremental=stream)
        stop_ids = answering.engine.stop_ids
        finish = None
        res: GenResult | None = buffered
        try:
            if buffered is not None:
                for tok in buffered.token_ids:
                    r = releaser.add(tok, stop_ids)
                    if r.delta:
                        yield Delta(r.delta)
                    if releaser.done:
                        finish = r.finish_reason
                        break
            else:
                async for tok, _lp in handle.tokens():
                    r = releaser.add(tok, stop_ids)
                    if r.delta:
                        yield Delta(r.delta)
                    if releaser.done:
                        finish = r.finish_reason
                        handle.cancel()
                        break
                res = await handle.result()
                if res.finish_reason == "error" or (res.finish_reason == "cancelled" and not releaser.done):
                    raise self._generation_failed(res)
                st.metrics.queue_wait.labels(answering.role).observe(res.queue_s)
                st.metrics.tokens.labels(answering.role, "prompt").inc(res.prompt_tokens)
                st.metrics.tokens.labels(answering.role, "completion").inc(len(res.token_ids))
                if rec.queue_ms is None:
                    rec.queue_ms = res.queue_s * 1000
                if answering is student:
                    rec.confidence = res.mean_logprob
            if not releaser.done:
                r = releaser.finish("length" if res.finish_reason == "length" else "stop")
                if r.delta:
                    yield Delta(r.delta)
                finish = r.finish_reason
        finally:
            if buffered is None:
                handle.cancel()
        out = releaser.output_decision
        rec.output_action = out.action if out is not None else None
        rec.output_reasons = list(out.reasons) if out is not None else []
        extra["guard"]["output"] = {"action": rec.output_action, "reasons": rec.output_reasons}
        if releaser.refused:
            rec.route = extra["route"] = ROUTE_REFUSED_OUTPUT
        rec.answer = releaser.sent
        rec.finish_reason = finish
        rec.prompt_tokens = len(answer_ids)
        rec.completion_tokens = len(res.token_ids) if res is not None else 0
        if res is not None:
            extra["timing"] = {
                "queue_ms": round(res.queue_s * 1000, 2),
                "prefill_ms": round(res.prefill_s * 1000, 2),
                "decode_ms": round(res.decode_s * 1000, 2),
                "batch": res.max_batch_seen,  # the largest batch this answer was decoded in
            }
        yield End(finish or "stop", usage_dict(rec.prompt_tokens, rec.completion_tokens), extra)
