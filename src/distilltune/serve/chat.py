"""``POST /v1/chat/completions``: one request from HTTP through the pipeline to JSON or SSE, logged once.

Every request writes one row to the request log and updates the metrics whatever its outcome
(``ChatRoute.finalize``; status 499 when the client went away mid-stream). Errors before the first
event are HTTP errors in OpenAI's shape; once an SSE stream has started they are reported in-band
(an ``error`` event), as OpenAI does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from distilltune.inference import ROUTE_REFUSED_INPUT, ROUTE_REFUSED_OUTPUT
from distilltune.serve.ab import ABRouter
from distilltune.serve.intake import check_access, parse_request, read_body
from distilltune.serve.loading import ServerState
from distilltune.serve.openai_types import APIError, chunk, completion, new_id
from distilltune.serve.pipeline import Delta, End, RequestPipeline, Start
from distilltune.serve.requestlog import LogRecord

log = logging.getLogger("distilltune.serve")

ROUTE_HEADER = "X-Distilltune-Route"
CITATIONS_HEADER = "X-Distilltune-Citations"
ARM_HEADER = "X-Distilltune-Arm"


def error_response(e: APIError, request_id: str | None = None) -> JSONResponse:
    headers = dict(e.headers)
    if request_id:
        headers["X-Request-Id"] = request_id
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def _internal(e: Exception) -> APIError:
    """An unexpected exception (a bug): logged by type only (its message may quote request text)."""
    log.error("internal error while answering a request: %s", type(e).__name__)
    return APIError(500, "internal server error", type="server_error", code="internal_error")


def _citation_header(citations: list[dict]) -> str:
    files = list(dict.fromkeys(c["file"] for c in citations if c.get("file")))
    return ",".join(quote(f, safe="/._-") for f in files)


async def _next(events: AsyncIterator, deadline: float, timeout_s: float):
    """The next pipeline event, or a 504 when the request's deadline passes first."""
    remaining = deadline - time.perf_counter()
    try:
        if remaining <= 0:
            raise TimeoutError
        return await asyncio.wait_for(anext(events), remaining)
    except TimeoutError:
        raise APIError(
            504, f"the request did not finish within {timeout_s:g} s", type="timeout_error", code="timeout"
        ) from None


class ChatRoute:
    """The chat completions route of one server: its pipeline, A/B router and access rules."""

    def __init__(self, state: ServerState, pipeline: RequestPipeline, ab: ABRouter, hosts: set[str]):
        self.state = state
        self.cfg = state.config
        self.metrics = state.metrics
        self.pipeline = pipeline
        self.ab = ab
        self.hosts = hosts

    def finalize(
        self, rec: LogRecord, status: int, t0: float, ttft: float | None, error: APIError | None
    ) -> None:
        rec.status = status
        rec.latency_ms = (time.perf_counter() - t0) * 1000
        rec.ttft_ms = ttft
        if error is not None:
            rec.error = f"{error.status} {error.code or error.type}"
        model_label = rec.model if rec.model in self.state.models else "other"
        self.metrics.requests.labels(model_label, rec.route or "error", str(status)).inc()
        if status == 200:
            self.metrics.latency.labels(rec.route).observe(rec.latency_ms / 1000)
            if ttft is not None:
                self.metrics.ttft.labels(rec.route).observe(ttft / 1000)
        else:
            self.metrics.errors.labels(str(status)).inc()
        if rec.route == ROUTE_REFUSED_INPUT:
            self.metrics.refusals.labels("input").inc()
        elif rec.route == ROUTE_REFUSED_OUTPUT:
            self.metrics.refusals.labels("output").inc()
        if any(r.startswith("pii:") for r in rec.input_reasons):
            self.metrics.redactions.labels("input").inc()
        if any(r.startswith("pii:") for r in rec.output_reasons):
            self.metrics.redactions.labels("output").inc()
        self.metrics.signals.observe(rec)
        self.state.log.write(rec)
        self.ab.finished(rec)

    async def handle(self, request: Request):
        """``POST /v1/chat/completions``: JSON, or SSE when ``stream`` is set."""
        t0 = time.perf_counter()
        cid = new_id()
        rec = LogRecord(id=cid, ts=time.time(), model="")
        deadline = t0 + self.cfg.limits.timeout_s
        events = None
        try:
            check_access(request, self.state.api_key, self.hosts)
            req = parse_request(
                await read_body(request, self.cfg.limits.max_body_bytes, self.cfg.limits.body_timeout_s)
            )
            rec.stream = req.stream
            served = self.ab.assign(req, request, self.pipeline.resolve(req), rec)
            rec.model, rec.adapter = req.model, served.adapter
            max_tokens = self.pipeline.check(req)
            events = self.pipeline.run(req, served, max_tokens, rec, stream=req.stream)
            start = await _next(events, deadline, self.cfg.limits.timeout_s)
            assert isinstance(start, Start)
        except asyncio.CancelledError:
            if events is not None:
                await events.aclose()
            self.finalize(rec, 499, t0, None, None)
            raise
        except Exception as exc:
            e = exc if isinstance(exc, APIError) else _internal(exc)
            if events is not None:
                await events.aclose()
            self.finalize(rec, e.status, t0, None, e)
            return error_response(e, cid)
        headers = {
            "X-Request-Id": cid,
            ROUTE_HEADER: start.route,
            CITATIONS_HEADER: _citation_header(start.citations),
            **({ARM_HEADER: rec.arm} if rec.arm else {}),
        }
        created = int(rec.ts)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                self._sse(events, rec, req.model, cid, created, include_usage, deadline, t0),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        parts: list[str] = []
        try:
            while True:
                ev = await _next(events, deadline, self.cfg.limits.timeout_s)
                if isinstance(ev, Delta):
                    parts.append(ev.text)
                elif isinstance(ev, End):
                    break
        except asyncio.CancelledError:
            await events.aclose()
            self.finalize(rec, 499, t0, None, None)
            raise
        except Exception as exc:
            e = exc if isinstance(exc, APIError) else _internal(exc)
            await events.aclose()
            self.finalize(rec, e.status, t0, None, e)
            return error_response(e, cid)
        await events.aclose()
        ttft = (time.perf_counter() - t0) * 1000
        self.finalize(rec, 200, t0, ttft, None)
        headers[ROUTE_HEADER] = ev.extra.get("route") or start.route
        body = completion(cid, req.model, "".join(parts), ev.finish_reason, ev.usage, ev.extra, created)
        return JSONResponse(body, headers=headers)

    async def _sse(
        self,
        events,
        rec: LogRecord,
        model: str,
        cid: str,
        created: int,
        include_usage: bool,
        deadline: float,
        t0: float,
    ):
        status, error, ttft = 200, None, None

        def data(obj: dict) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        usage_field = {"usage": None} if include_usage else {}
        # The last event goes out after the request is logged: a client that has read [DONE] (or the
        # error event) finds its row in the log after ``log.flush()``, never a moment later.
        last = "data: [DONE]\n\n"
        try:
            yield data({**chunk(cid, model, created, {"role": "assistant", "content": ""}), **usage_field})
            while True:
                try:
                    ev = await _next(events, deadline, self.cfg.limits.timeout_s)
                except StopAsyncIteration:
                    break
                if isinstance(ev, Delta) and ev.text:
                    if ttft is None:
                        ttft = (time.perf_counter() - t0) * 1000
                    yield data({**chunk(cid, model, created, {"content": ev.text}), **usage_field})
                elif isinstance(ev, End):
                    yield data(
                        {**chunk(cid, model, created, {}, ev.finish_reason, extra=ev.extra), **usage_field}
                    )
                    if include_usage:
                        yield data(chunk(cid, model, created, usage=ev.usage, include_choice=False))
                    break
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        except Exception as exc:
            # Headers are gone: report in-band, as OpenAI does; the client raises on an "error" event.
            error = exc if isinstance(exc, APIError) else _internal(exc)
            status = error.status
            last = data(error.body())
        finally:
            await events.aclose()
            self.finalize(rec, status, t0, ttft, error)
        yield last
