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

The chat completions route itself (pipeline events to JSON or SSE, one log row and the metrics per
request whatever its outcome, status 499 when the client went away mid-stream) is ``serve/chat.py``.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from distilltune.inference.backends import BACKENDS
from distilltune.serve import feedback
from distilltune.serve.ab import ABRouter
from distilltune.serve.chat import ChatRoute, error_response
from distilltune.serve.intake import (
    allowed_hosts,
    check_api_key,
)
from distilltune.serve.loading import ServerState
from distilltune.serve.openai_types import APIError
from distilltune.serve.pipeline import RequestPipeline

log = logging.getLogger("distilltune.serve")


def create_app(state: ServerState, manage_lifecycle: bool = True) -> FastAPI:
    """The ASGI app; with ``manage_lifecycle`` the engines start and stop with the app."""
    pipeline = RequestPipeline(state)
    ab = ABRouter(state, pipeline)  # --candidate: A/B arms or shadow copies (serve/ab.py)
    hosts = allowed_hosts(state.config)

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

    _add_error_handlers(app)
    _add_info_routes(app, state)
    app.post("/v1/chat/completions")(ChatRoute(state, pipeline, ab, hosts).handle)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's shape; an unexpected one is logged by type only."""

    @app.exception_handler(APIError)
    async def _api_error(_request: Request, e: APIError):
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, e: StarletteHTTPException):
        kind = "not_found" if e.status_code == 404 else "invalid_request"
        return error_response(APIError(e.status_code, str(e.detail), code=kind))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, e: RequestValidationError):
        return error_response(APIError(422, "invalid request", code="invalid_request"))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, e: Exception):
        log.error("internal error: %s", type(e).__name__)  # never the request content
        return error_response(APIError(500, "internal server error", type="server_error"))


def _add_info_routes(app: FastAPI, state: ServerState) -> None:
    """``/health``, ``/metrics`` and ``/v1/models`` (adapters listed with their parent)."""
    metrics = state.metrics

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
