"""The server's driver over the one request path (``distilltune.inference.RequestPath``).

Guard, retrieval and prompt assembly, prompt tokenization, confidence, cascade decision, output guard
and route names are ``RequestPath``'s, shared with batch evaluation. What is the server's own: the
generation backend (each model's continuous-batching ``Engine``), streaming, limits, and turning the
result into events both response modes consume:

- without a fallback the student's tokens stream as they are decoded;
- with one, the student's whole answer is awaited first, ``RequestPath.judge`` decides whether it
  stands (route ``student``) or the fallback answers instead (route ``fallback``);
- text leaves through the path's ``TextReleaser`` (output guard, stop sequences; sentence by
  sentence when streaming).

The generator yields ``Start`` (route and citations known) before any text, so the HTTP layer can
still answer 4xx/429 until then and put the route in a header. Everything loggable accumulates in
the request's ``LogRecord`` — redacted text only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from anyio import to_thread

from distilltune.inference import ROUTE_REFUSED_INPUT, RequestPath, RequestResult, prompt_ids
from distilltune.inference.engine import (
    MIN_TEMPERATURE,
    SEED_MAX,
    SEED_MIN,
    EngineStopped,
    GenHandle,
    GenResult,
    QueueFull,
)
from distilltune.serve.loading import ModelSlot, ServedModel, ServerState
from distilltune.serve.openai_types import APIError, ChatRequest, usage_dict
from distilltune.serve.requestlog import LogRecord


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


def render_ids(slot: ModelSlot, messages: list[dict]) -> list[int]:
    """The prompt ids for ``slot``'s model (the shared tokenization, under the slot's tokenizer lock)."""
    return prompt_ids(slot.tokenizer, messages, slot.tok_lock)


def _record(rec: LogRecord, res: RequestResult, done: bool) -> None:
    """Copy what a log may keep (redacted, or withheld when refused) into the request's row; the
    route and the answer only once they are final (an error before then logs route ``error``)."""
    rec.prompt = res.loggable_conversation()
    rec.input_action, rec.input_reasons = res.input_action, list(res.input_reasons)
    rec.citations, rec.retrieval_score = res.citations, res.retrieval_score
    if not done:
        return
    rec.route, rec.answer, rec.finish_reason = res.route, res.text, res.finish_reason
    rec.confidence, rec.student_answer = res.mean_logprob, res.student_answer
    rec.output_action, rec.output_reasons = res.output_action, list(res.output_reasons)
    rec.prompt_tokens, rec.completion_tokens = res.prompt_tokens, res.new_tokens


class RequestPipeline:
    def __init__(self, state: ServerState):
        self.state = state
        # Requests run on many threads: the prompter gets a private tokenizer behind its own lock.
        self.path = RequestPath(state.guard, state.prompter, state.config.cascade).for_threads()

    # ---- validation -------------------------------------------------------------------------
    def resolve(self, req: ChatRequest) -> ServedModel:
        served = self.state.models.get(req.model)
        if served is None:
            # Never echo the field: a client may put anything there (an email, a prompt).
            raise APIError(
                404,
                f"the requested model does not exist; available: {', '.join(self.state.models)}",
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
        total = sum(len(m.text()) for m in req.messages)
        if total > lim.max_request_chars:
            # The guard reads every character (PII in any turn, split across turns): its CPU grows
            # with the total, so the total is capped, not only each message. No content is echoed.
            raise APIError(
                400,
                f"the messages hold more than {lim.max_request_chars} characters in total",
                param="messages",
                code="request_too_long",
            )
        turns = [m for m in req.messages if m.role in ("user", "assistant")]
        if not turns or turns[-1].role != "user":
            raise APIError(400, "the conversation must end with a user message", param="messages")
        if any(m.role == "user" and not m.text().strip() for m in turns):
            raise APIError(400, "user messages must not be empty", param="messages")
        for name in ("max_tokens", "max_completion_tokens"):  # both: either one may be the one used
            asked = getattr(req, name)
            if asked is not None and asked > lim.max_tokens:
                raise APIError(400, f"{name} exceeds this server's limit of {lim.max_tokens}", param=name)
        self._check_sampling(req)
        return req.max_completion_tokens or req.max_tokens or self.state.config.generation.default_max_tokens

    @staticmethod
    def _check_sampling(req: ChatRequest) -> None:
        """Values the schema admits but the sampler cannot use: a 400 now, not a failure in the engine."""
        if req.seed is not None and not SEED_MIN <= req.seed <= SEED_MAX:
            raise APIError(400, f"seed must be between {SEED_MIN} and {SEED_MAX}", param="seed")
        if req.temperature is not None and 0 < req.temperature < MIN_TEMPERATURE:
            raise APIError(
                400, f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}", param="temperature"
            )

    # ---- the generation backend -----------------------------------------------------------------
    def _submit(self, slot: ModelSlot, prompt_ids: list[int], max_tokens: int, **kw) -> GenHandle:
        try:
            return slot.engine.submit(prompt_ids, max_tokens, **kw)
        except QueueFull as e:  # counted in distilltune_errors_total when the request is finalized
            raise APIError(
                429,
                f"the server is busy ({e.depth} requests waiting); retry after {e.retry_after_s:g} s",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(max(1, round(e.retry_after_s)))},
            ) from None
        except EngineStopped:  # its reason is for the operator's log, not for clients
            raise APIError(503, "the model is unavailable", type="server_error", code="unavailable") from None
        except ValueError:  # parameters the engine refuses (checked up front; a last line of defence)
            raise APIError(400, "invalid generation parameters", code="invalid_request") from None

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

    async def _prompt(self, slot: ModelSlot, res: RequestResult, max_tokens: int) -> list[int]:
        ids = await to_thread.run_sync(render_ids, slot, res.messages)
        self._check_length(slot, ids, max_tokens)
        return ids

    @staticmethod
    def _generation_failed(res: GenResult) -> APIError:
        if res.finish_reason == "cancelled":  # the engine stopped under us: shutting down
            return APIError(503, "the server is shutting down", type="server_error", code="unavailable")
        return APIError(500, "generation failed", type="server_error", code="generation_failed")

    def _account(self, slot: ModelSlot, gen: GenResult, rec: LogRecord) -> None:
        m = self.state.metrics
        m.queue_wait.labels(slot.role).observe(gen.queue_s)
        m.tokens.labels(slot.role, "prompt").inc(gen.prompt_tokens)
        m.tokens.labels(slot.role, "completion").inc(len(gen.token_ids))
        if rec.queue_ms is None:
            rec.queue_ms = gen.queue_s * 1000

    async def _student_first(self, res, served, ids, max_tokens, sampling, stop, rec):
        """With a fallback: await the student's whole answer, then let the path decide who answers.

        Returns (answering slot, its prompt ids, the finished student result or None, a live handle
        or None)."""
        st, student = self.state, served.slot
        handle = self._submit(student, ids, max_tokens, adapter=served.adapter, **sampling)
        try:
            gen = await handle.result()
        finally:
            handle.cancel()  # a timeout or disconnect while waiting: free the batch slot
        if gen.finish_reason in ("error", "cancelled"):
            raise self._generation_failed(gen)
        self._account(student, gen, rec)
        if not self.path.judge(res, gen.logprobs, has_fallback=True):
            return student, ids, gen, None
        st.metrics.escalations.inc()
        draft = self.path.releaser(res, student.tokenizer, student.tok_lock, stop)
        for tok in gen.token_ids:
            draft.add(tok, student.engine.stop_ids)
        self.path.escalate(res, draft.raw_text)
        fallback_ids = await self._prompt(st.fallback, res, max_tokens)
        return (
            st.fallback,
            fallback_ids,
            None,
            self._submit(st.fallback, fallback_ids, max_tokens, **sampling),
        )

    # ---- the request ------------------------------------------------------------------------
    async def run(
        self, req: ChatRequest, served: ServedModel, max_tokens: int, rec: LogRecord, stream: bool
    ) -> AsyncIterator[Start | Delta | End]:
        st = self.state
        conv = [{"role": m.role, "content": m.text()} for m in req.messages]
        res = await to_thread.run_sync(self.path.prepare, conv)
        _record(rec, res, done=res.route == ROUTE_REFUSED_INPUT)
        extra = {"route": res.route, "citations": res.citations, "guard": res.guard_decisions()}
        if res.route == ROUTE_REFUSED_INPUT:
            yield Start(res.route, [])
            yield Delta(res.text)
            yield End("stop", usage_dict(0, 0), extra)
            return

        student = served.slot
        ids = await self._prompt(student, res, max_tokens)
        temperature = (
            req.temperature if req.temperature is not None else st.config.generation.default_temperature
        )
        sampling = {"temperature": temperature, "top_p": req.top_p or 1.0, "seed": req.seed}
        stop = req.stop_list()
        if st.fallback is None:
            answering, answer_ids, buffered = student, ids, None
            handle = self._submit(student, ids, max_tokens, adapter=served.adapter, **sampling)
        else:
            answering, answer_ids, buffered, handle = await self._student_first(
                res, served, ids, max_tokens, sampling, stop, rec
            )
            extra["confidence"] = res.cascade.as_dict()
            rec.confidence, rec.student_answer = res.mean_logprob, res.student_answer
        rec.route = extra["route"] = res.route
        yield Start(res.route, res.citations)

        releaser = self.path.releaser(res, answering.tokenizer, answering.tok_lock, stop, incremental=stream)
        gen, finish = buffered, None
        try:
            if buffered is not None:
                for tok in buffered.token_ids:
                    r = releaser.add(tok, answering.engine.stop_ids)
                    if r.delta:
                        yield Delta(r.delta)
                    if releaser.done:
                        finish = r.finish_reason
                        break
            else:
                async for tok, _lp in handle.tokens():
                    r = releaser.add(tok, answering.engine.stop_ids)
                    if r.delta:
                        yield Delta(r.delta)
                    if releaser.done:
                        finish = r.finish_reason
                        handle.cancel()
                        break
                gen = await handle.result()
                if gen.finish_reason == "error" or (gen.finish_reason == "cancelled" and not releaser.done):
                    raise self._generation_failed(gen)
                self._account(answering, gen, rec)
                if answering is student:
                    self.path.judge(res, gen.logprobs, has_fallback=False)
            if not releaser.done:
                r = releaser.finish("length" if gen.finish_reason == "length" else "stop")
                if r.delta:
                    yield Delta(r.delta)
                finish = r.finish_reason
        finally:
            if handle is not None:
                handle.cancel()
        self.path.complete(res, releaser, finish or "stop", len(answer_ids), len(gen.token_ids))
        _record(rec, res, done=True)
        extra["route"], extra["guard"] = res.route, res.guard_decisions()
        extra["timing"] = {
            "queue_ms": round(gen.queue_s * 1000, 2),
            "prefill_ms": round(gen.prefill_s * 1000, 2),
            "decode_ms": round(gen.decode_s * 1000, 2),
            "batch": gen.max_batch_seen,  # the largest batch this answer was decoded in
        }
        yield End(res.finish_reason, usage_dict(res.prompt_tokens, res.new_tokens), extra)
