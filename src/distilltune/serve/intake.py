"""What arrives over HTTP, checked before anything runs: the API key or browser safety, the body (size,
time), its JSON.

Every failure here is a 4xx in OpenAI's error shape (``APIError``), never a 5xx the client would
retry, and no message echoes the body: malformed JSON of any nesting depth or number size is a 400,
a body over the limit a 413, one that does not arrive in time a 408 (a slow client must not hold a
connection forever), a client gone mid-upload a 499 in the log.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from distilltune.serve.openai_types import APIError, ChatRequest, validation_error

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, at most ``limit`` bytes, within ``timeout_s`` (a slow client cannot hold a slot)."""
    too_big = APIError(413, f"request body exceeds {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_big
        except ValueError:
            raise APIError(400, "invalid Content-Length header") from None
    buf = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for part in request.stream():
                buf += part
                if len(buf) > limit:
                    raise too_big
    except TimeoutError:
        raise APIError(
            408, f"the request body did not arrive within {timeout_s:g} s", code="request_timeout"
        ) from None
    except ClientDisconnect:
        raise APIError(499, "the client closed the connection", code="client_closed_request") from None
    return bytes(buf)


def parse_json_body(body: bytes, model: type[M]) -> M:
    """JSON → ``model``; anything malformed (any depth, any size of number) is a 4xx, never a 5xx.

    One parser for every endpoint that takes a JSON body (chat completions, feedback)."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise APIError(400, "request body is nested too deeply", code="invalid_json") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer over Python's digit limit
        raise APIError(
            400, f"request body is not valid JSON ({type(e).__name__})", code="invalid_json"
        ) from None
    if not isinstance(payload, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(payload)
    except ValidationError as e:
        raise validation_error(e) from None
    except RecursionError:
        raise APIError(400, "request body is nested too deeply", code="invalid_json") from None


def parse_request(body: bytes) -> ChatRequest:
    return parse_json_body(body, ChatRequest)


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def _hostname(host: str) -> str:
    """The name part of a Host header or an origin's authority ("[::1]:8000" → "::1")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def check_browser_safety(request: Request, allowed_hosts: set[str]) -> None:
    """Without an API key, refuse what a web page in the user's browser could send.

    A page can POST to 127.0.0.1 from any origin as a "simple" request (``text/plain`` or a form, no
    preflight), and DNS rebinding can make a page's own host name resolve to 127.0.0.1. So: the body
    must be declared ``application/json`` (a cross-origin JSON POST needs a CORS preflight, which this
    server never grants), the Host must be a name this server answers to, and an ``Origin`` header,
    which browsers send on cross-origin POSTs, must be this server's own.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise APIError(415, "Content-Type must be application/json", code="unsupported_media_type")
    host = request.headers.get("host", "")
    if "*" not in allowed_hosts and _hostname(host) not in allowed_hosts:
        raise APIError(
            403,
            "this Host is not served without an API key (see limits.allowed_hosts)",
            code="forbidden_host",
        )
    origin = request.headers.get("origin")
    if origin is not None and origin.strip().lower() not in (
        f"http://{host}".lower(),
        f"https://{host}".lower(),
    ):
        raise APIError(403, "cross-origin requests need an API key", code="cross_origin")


def allowed_hosts(cfg) -> set[str]:
    """Host names served without an API key: loopback, the bound host, ``limits.allowed_hosts``."""
    return {*LOOPBACK_NAMES, cfg.host.lower(), *(h.lower() for h in cfg.limits.allowed_hosts)}


def check_api_key(request: Request, api_key: str | None) -> None:
    """``Authorization: Bearer <key>`` compared in constant time; nothing to check without a key."""
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise APIError(
            401, "missing or incorrect API key: send Authorization: Bearer <key>", code="invalid_api_key"
        )


def check_access(request: Request, api_key: str | None, hosts: set[str]) -> None:
    """Who may POST (chat completions, feedback): the API key when one is set, else browser safety."""
    if api_key is None:
        check_browser_safety(request, hosts)
    else:
        check_api_key(request, api_key)
