"""A/B and shadow serving: which arm answers a request, and the candidate's shadow copies.

``serve --candidate MODEL2`` loads a second model (an engine of its own, ``loading.build_state``)
next to MODEL. Only requests for MODEL's own id take part; adapters are not the candidate's to answer.

**Assignment** is a pure function of the user, so a user sees one model for the whole experiment and
the split needs no state: ``sha256(salt, user)`` read as a number in [0, 1), candidate when below the
share (``ab.split``). The user is, in this order, the request's OpenAI ``user`` field, the header
``ab.user_header`` (``X-Distilltune-User``), or the client's address. Behind a reverse proxy every
request carries the proxy's address, so send one of the first two; ``distilltune_ab_requests_total``
counts requests by the key that placed them. The key is hashed in memory and never logged (it may be
an email address); changing ``ab.salt`` re-draws every user's arm.

**A/B** (``--split 0.1``): the candidate answers its share of users through the same request path
(``RequestPipeline.run``: guard, retrieval, cascade to the same fallback, output guard); the log row's
``arm`` is ``live`` or ``candidate``.

**Shadow** (``--shadow``): MODEL answers everyone. Once a live answer is complete (HTTP 200), a copy of
the request for a user in the share (default: all) is queued, and a worker runs it through the same
path on the candidate and logs it with ``arm = shadow`` and ``shadow_of`` = the live request's id. The
copy never delays the live response: it starts after it, in a bounded queue, and is dropped (counted in
``distilltune_shadow_total{outcome="dropped"}``) when the queue is full. At most ``ab.shadow_workers``
copies generate at once, so the candidate and the fallback engines never see more than that many
shadow requests. Shadow rows are not answers: ``logs`` and ``monitor`` leave them out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from distilltune.serve.loading import ServedModel, ServerState
from distilltune.serve.openai_types import APIError, ChatRequest, new_id
from distilltune.serve.pipeline import RequestPipeline
from distilltune.serve.requestlog import LogRecord

ARM_LIVE, ARM_CANDIDATE, ARM_SHADOW = "live", "candidate", "shadow"
MAX_PENDING = 4096  # live requests awaiting their answer before a shadow copy may be queued
log = logging.getLogger("distilltune.serve")


def bucket(user: str, salt: str) -> float:
    """The user's position in [0, 1): the first 8 bytes of sha256(salt NUL user) over 2**64.

    A cryptographic hash, not Python's ``hash()``: the same in every process and run, and uniform,
    so the share of users below ``split`` is ``split`` up to binomial noise.
    """
    digest = hashlib.sha256(f"{salt}\x00{user}".encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def in_share(user: str, share: float, salt: str) -> bool:
    """Whether ``user`` falls in the candidate's share (A/B arm, or mirrored in shadow mode)."""
    return bucket(user, salt) < share


def user_key(req: ChatRequest, headers, client_host: str | None, header_name: str) -> tuple[str, str]:
    """(the user's key, where it came from: ``user`` | ``header`` | ``address``)."""
    if req.user and req.user.strip():
        return req.user.strip(), "user"
    value = headers.get(header_name) if headers is not None else None
    if value and value.strip():
        return value.strip(), "header"
    return client_host or "unknown", "address"


class ABRouter:
    """Per-app A/B state: assigns arms and runs the shadow copies (a no-op without a candidate)."""

    def __init__(self, state: ServerState, pipeline: RequestPipeline):
        self.state = state
        self.cfg = state.config.ab
        self.pipeline = pipeline
        self.candidate: ServedModel | None = state.candidate
        self._live = state.models.get(self.candidate.id) if self.candidate is not None else None
        self._pending: dict[str, ChatRequest] = {}
        self._queue: asyncio.Queue | None = None
        self._workers: list[asyncio.Task] = []
        self.dropped = 0

    def assign(self, req: ChatRequest, request, served: ServedModel, rec: LogRecord) -> ServedModel:
        """The model that answers ``req`` (MODEL or the candidate); sets ``rec.arm``."""
        if self.candidate is None or served is not self._live:
            return served
        client = getattr(request, "client", None)
        key, source = user_key(req, getattr(request, "headers", None), getattr(client, "host", None),
                               self.cfg.user_header)  # fmt: skip
        chosen = in_share(key, self.cfg.share, self.cfg.salt)
        arm = ARM_CANDIDATE if chosen and not self.cfg.shadow else ARM_LIVE
        self.state.metrics.ab_requests.labels(arm, source).inc()
        rec.arm = arm
        if self.cfg.shadow:
            if chosen:
                self._pending[rec.id] = req
                while len(self._pending) > MAX_PENDING:  # rows never finalized (cannot grow unbounded)
                    self._pending.pop(next(iter(self._pending)))
            return served
        return self.candidate if chosen else served

    def finished(self, rec: LogRecord) -> None:
        """Called once per request when its row is final: queue its shadow copy if it was answered."""
        req = self._pending.pop(rec.id, None)
        if req is None or rec.status != 200:
            return
        if self._queue is None:  # first use, inside the event loop
            self._queue = asyncio.Queue(self.cfg.shadow_queue)
            self._workers = [asyncio.create_task(self._work()) for _ in range(self.cfg.shadow_workers)]
        try:
            self._queue.put_nowait((req, rec.id))
        except asyncio.QueueFull:
            self.dropped += 1
            self.state.metrics.shadow.labels("dropped").inc()

    async def close(self) -> None:
        """Stop the shadow workers (queued copies are abandoned: the server is shutting down)."""
        for t in self._workers:
            t.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def drain(self, timeout: float = 60.0) -> None:
        """Wait until every queued shadow copy is logged (tests; bounded)."""
        if self._queue is not None:
            await asyncio.wait_for(self._queue.join(), timeout)

    async def _work(self) -> None:
        while True:
            req, live_id = await self._queue.get()
            try:
                outcome = await self._shadow_one(req, live_id)
                self.state.metrics.shadow.labels(outcome).inc()
            finally:
                self._queue.task_done()

    async def _shadow_one(self, req: ChatRequest, live_id: str) -> str:
        """Run one copy on the candidate through the request path and log it; returns the outcome."""
        t0 = time.perf_counter()
        rec = LogRecord(id=new_id(), ts=time.time(), model=req.model, adapter=self.candidate.adapter,
                        stream=False, arm=ARM_SHADOW, shadow_of=live_id)  # fmt: skip
        timeout = self.state.config.limits.timeout_s
        events = None
        try:
            max_tokens = self.pipeline.check(req)
            events = self.pipeline.run(req, self.candidate, max_tokens, rec, stream=False)

            async def consume() -> None:
                async for _ in events:
                    pass

            await asyncio.wait_for(consume(), timeout)
            rec.status = 200
        except APIError as e:
            rec.status, rec.error = e.status, f"{e.status} {e.code or e.type}"
        except TimeoutError:
            rec.status, rec.error = 504, "504 timeout"
        except Exception as e:  # a bug: logged by type only (its message may quote request text)
            log.error("shadow copy failed: %s", type(e).__name__)
            rec.status, rec.error = 500, "500 internal_error"
        finally:
            if events is not None:
                await events.aclose()
            rec.latency_ms = (time.perf_counter() - t0) * 1000
            self.state.log.write(rec)
        return "done" if rec.status == 200 else "error"
