"""The HTTP layer: OpenAI-compatible routes (FastAPI), auth, limits, errors, SSE streaming.

Routes: ``POST /v1/chat/completions`` (JSON or SSE ``chat.completion.chunk`` events ending with
``data: [DONE]``; ``stream_options.include_usage`` adds the usage chunk), ``GET /v1/models``
(adapters listed with their parent, as vLLM does), ``GET /health``, ``GET /metrics`` (Prometheus).

Every error leaves in OpenAI's JSON shape so the official client raises its typed exceptions:
401 (API key), 400 (bad JSON of any depth or size, unsupported parameter, over a limit), 403/415
(without an API key: a foreign Host or Origin, a non-JSON body; see ``check_browser_safety``), 404
(unknown model), 408 (body not received in time), 413 (body too large), 422 (schema), 429 +
Retry-After (queue full), 504 (per-request timeout). Bad input is never a 5xx: the client retries
those. The request body is parsed here rather than by FastAPI so the error shape and the status codes
are ours, and error messages never echo request content or exception internals.

With ``--candidate`` each request for MODEL's id gets an arm (``serve/ab.py``), named in the
``X-Distilltune-Arm`` header and the log.

Each request writes one row to the request log and updates the metrics, whatever its outcome
(status 499 when the client went away mid-stream).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from distilltune.inference import ROUTE_REFUSED_INPUT, ROUTE_REFUSED_OUTPUT
from distilltune.inference.backends import BACKENDS
from distilltune.serve import feedback
from distilltune.serve.ab import ABRouter
from distilltune.serve.intake import (
    allowed_hosts,
    check_access,
    check_api_key,
    parse_request,
    read_body,
)
from distilltune.serve.loading import ServerState
from distilltune.serve.openai_types import APIError, chunk, completion, new_id
from distilltune.serve.pipeline import Delta, End, RequestPipeline, Start
from distilltune.serve.requestlog import LogRecord

log = logging.getLogger("distilltune.serve")

ROUTE_HEADER = "X-Distilltune-Route"
CITATIONS_HEADER = "X-Distilltune-Citations"
ARM_HEADER = "X-Distilltune-Arm"


def _error_response(e: APIError, request_id: str | None = None) -> JSONResponse:
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


def create_app(state: ServerState, manage_lifecycle: bool = True) -> FastAPI:
    """The ASGI app; with ``manage_lifecycle`` the engines start and stop with the app."""
    pipeline = RequestPipeline(state)
    ab = ABRouter(state, pipeline)  # --candidate: A/B arms or shadow copies (serve/ab.py)
    cfg = state.config
    metrics = state.metrics
    hosts = allowed_hosts(cfg)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if manage_lifecycle:
            state.start()
        try:
            yield
        finally:
            await ab.close()
            if manage_lifecycle:
                state.stop()

    app = FastAPI(
        title="distilltune",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.server = state
    feedback.register(app, state)  # POST /v1/feedback (serve/feedback.py)
    app.state.ab = ab

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, e: APIError):
        return _error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, e: StarletteHTTPException):
        kind = "not_found" if e.status_code == 404 else "invalid_request"
        return _error_response(APIError(e.status_code, str(e.detail), code=kind))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, e: RequestValidationError):
        return _error_response(APIError(422, "invalid request", code="invalid_request"))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, e: Exception):
        log.error("internal error: %s", type(e).__name__)  # never the request content
        return _error_response(APIError(500, "internal server error", type="server_error"))

    def finalize(rec: LogRecord, status: int, t0: float, ttft: float | None, error: APIError | None) -> None:
        rec.status = status
        rec.latency_ms = (time.perf_counter() - t0) * 1000
        rec.ttft_ms = ttft
        if error is not None:
            rec.error = f"{error.status} {error.code or error.type}"
        model_label = rec.model if rec.model in state.models else "other"
        metrics.requests.labels(model_label, rec.route or "error", str(status)).inc()
        if status == 200:
            metrics.latency.labels(rec.route).observe(rec.latency_ms / 1000)
            if ttft is not None:
                metrics.ttft.labels(rec.route).observe(ttft / 1000)
        else:
            metrics.errors.labels(str(status)).inc()
        if rec.route == ROUTE_REFUSED_INPUT:
            metrics.refusals.labels("input").inc()
        elif rec.route == ROUTE_REFUSED_OUTPUT:
            metrics.refusals.labels("output").inc()
        if any(r.startswith("pii:") for r in rec.input_reasons):
            metrics.redactions.labels("input").inc()
        if any(r.startswith("pii:") for r in rec.output_reasons):
            metrics.redactions.labels("output").inc()
        metrics.signals.observe(rec)
        state.log.write(rec)
        ab.finished(rec)

    @app.get("/health")
    async def health():
        """503 when an engine or the request log's writer has stopped (why: the operator's log)."""
        engines = {role: slot.engine for role, slot in state.slots().items()}
        body = {
            "status": "ok",
            "models": list(state.models),
            "engines": {
                k: {"queue_depth": e.queue_depth, "active": e.active, "healthy": e.healthy}
                for k, e in engines.items()
            },
            "log": {"healthy": state.log.healthy},
        }
        if not state.log.healthy or not all(e.healthy for e in engines.values()):
            body["status"] = "error"
            return JSONResponse(body, status_code=503)
        return body

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    def model_card(m) -> dict:
        return {
            "id": m.id,
            "object": "model",
            "created": m.created,
            "owned_by": "distilltune",
            "root": m.slot.ref if m.adapter is None or m.parent is None else m.adapter,
            "parent": m.parent,
            # how this model generates: only the torch engine batches concurrent requests together
            "backend": m.slot.backend,
            "continuous_batching": BACKENDS[m.slot.backend].continuous_batching,
        }

    @app.get("/v1/models")
    async def list_models(request: Request):
        check_api_key(request, state.api_key)
        return {"object": "list", "data": [model_card(m) for m in state.models.values()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request):
        check_api_key(request, state.api_key)
        if model_id not in state.models:
            raise APIError(404, "model not found", code="model_not_found", param="model")
        return model_card(state.models[model_id])

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        t0 = time.perf_counter()
        cid = new_id()
        rec = LogRecord(id=cid, ts=time.time(), model="")
        deadline = t0 + cfg.limits.timeout_s
        events = None
        try:
            check_access(request, state.api_key, hosts)
            req = parse_request(
                await read_body(request, cfg.limits.max_body_bytes, cfg.limits.body_timeout_s)
            )
            rec.stream = req.stream
            served = ab.assign(req, request, pipeline.resolve(req), rec)
            rec.model, rec.adapter = req.model, served.adapter
            max_tokens = pipeline.check(req)
            events = pipeline.run(req, served, max_tokens, rec, stream=req.stream)
            start = await _next(events, deadline, cfg.limits.timeout_s)
            assert isinstance(start, Start)
        except asyncio.CancelledError:
            if events is not None:
                await events.aclose()
            finalize(rec, 499, t0, None, None)
            raise
        except Exception as exc:
            e = exc if isinstance(exc, APIError) else _internal(exc)
            if events is not None:
                await events.aclose()
            finalize(rec, e.status, t0, None, e)
            return _error_response(e, cid)
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
                _sse(events, rec, req.model, cid, created, include_usage, deadline, t0),
                media_type="text/event-stream",
                headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        parts: list[str] = []
        try:
            while True:
                ev = await _next(events, deadline, cfg.limits.timeout_s)
                if isinstance(ev, Delta):
                    parts.append(ev.text)
                elif isinstance(ev, End):
                    break
        except asyncio.CancelledError:
            await events.aclose()
            finalize(rec, 499, t0, None, None)
            raise
        except Exception as exc:
            e = exc if isinstance(exc, APIError) else _internal(exc)
            await events.aclose()
            finalize(rec, e.status, t0, None, e)
            return _error_response(e, cid)
        await events.aclose()
        ttft = (time.perf_counter() - t0) * 1000
        finalize(rec, 200, t0, ttft, None)
        headers[ROUTE_HEADER] = ev.extra.get("route") or start.route
        body = completion(cid, req.model, "".join(parts), ev.finish_reason, ev.usage, ev.extra, created)
        return JSONResponse(body, headers=headers)

    async def _sse(
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
        try:
            yield data({**chunk(cid, model, created, {"role": "assistant", "content": ""}), **usage_field})
            while True:
                try:
                    ev = await _next(events, deadline, cfg.limits.timeout_s)
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
            yield "data: [DONE]\n\n"
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        except Exception as exc:
            # Headers are gone: report in-band, as OpenAI does; the client raises on an "error" event.
            error = exc if isinstance(exc, APIError) else _internal(exc)
            status = error.status
            yield data(error.body())
        finally:
            await events.aclose()
            finalize(rec, status, t0, ttft, error)

    return app


def serve_forever(state: ServerState) -> None:
    """Run uvicorn on the configured host/port until interrupted."""
    import uvicorn

    cfg = state.config
    app = create_app(state)
    uvicorn.run(
        app,
        host=cfg.host,
        port=cfg.port,
        log_level="info",
        access_log=True,  # method, path and status only: no bodies
        timeout_graceful_shutdown=10,
    )
