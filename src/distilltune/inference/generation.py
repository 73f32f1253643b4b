"""What goes into and comes out of the generation engine, and the asyncio view of one request.

Kept apart from the engine's scheduling so a caller (the server's pipeline, a benchmark) can use the
types without reading the decode loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from distilltune.inference.cascade import confidence

# Seeds go to ``torch.Generator.manual_seed`` (a 64-bit value): OpenAI's int64 range is accepted.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
# Below this a sampling temperature divides the logits into infinities (NaN probabilities); the API
# rejects such values up front (400), and the engine fails a row that still hits one, never itself.
MIN_TEMPERATURE = 1e-4
# What an engine runs with unless configured: ``distilltune serve``'s defaults (``batching.max_batch``,
# ``limits.max_queue``), and so what compare's efficiency measurement runs with.
DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_QUEUE = 64


class QueueFull(Exception):
    """The waiting queue is at capacity; the caller should answer 429 with Retry-After."""

    def __init__(self, depth: int, retry_after_s: float):
        super().__init__(f"request queue is full ({depth} waiting)")
        self.depth = depth
        self.retry_after_s = retry_after_s


class EngineStopped(Exception):
    """The engine is shutting down or its worker died; no new requests are accepted."""


@dataclass
class GenResult:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (end token) | "length" (max_new_tokens) | "cancelled" | "error"
    prompt_tokens: int
    queue_s: float  # submitted → admitted into a batch
    prefill_s: float  # the group prefill that produced the first token
    decode_s: float  # first token → last token
    max_batch_seen: int  # the largest batch this request was decoded in
    error: str | None = None

    @property
    def mean_logprob(self) -> float | None:
        return confidence(self.logprobs)


@dataclass
class GenRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    adapter: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    on_token: Callable[[int, float], None] | None = None  # runs on the worker thread
    on_done: Callable[[GenResult], None] | None = None  # runs on the worker thread
    id: int = 0
    submitted_at: float = 0.0
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()


class GenHandle:
    """An asyncio view of one queued request: iterate ``tokens()``, await ``result()``, ``cancel()``."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self._done: asyncio.Future = loop.create_future()
        self.request: GenRequest | None = None

    def _on_token(self, tok: int, lp: float) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (tok, lp))

    def _on_done(self, res: GenResult) -> None:
        def finish() -> None:
            self._queue.put_nowait(None)
            if not self._done.done():
                self._done.set_result(res)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(finish)

    async def tokens(self):
        """Yield (token id, log-prob) as the worker produces them, until the request ends."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    async def result(self) -> GenResult:
        return await asyncio.shield(self._done)

    def cancel(self) -> None:
        if self.request is not None:
            self.request.cancel()
