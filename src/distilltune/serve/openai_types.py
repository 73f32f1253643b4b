"""The slice of the OpenAI Chat Completions wire format the server speaks, and its error shape.

Requests are validated here (pydantic) so a malformed request becomes a 400/422 in OpenAI's
``{"error": {"message", "type", "param", "code"}}`` shape that the official client turns into a typed
exception, never a 5xx (which the client would retry). Unknown request fields are ignored, as
OpenAI-compatible servers do, so newer clients keep working; fields we cannot honour with a
non-default value (``n > 1``, tools, logprobs, penalties) are rejected rather than silently dropped.
Error messages never echo request content (it may hold PII). Integer fields are strict (``true`` is
not ``1``). Message text with lone UTF-16 surrogates (``"\ud800"``, valid JSON but not encodable
text) has them replaced by U+FFFD on arrival, so no later step (tokenizer, guard, log) can fail on it.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with lone surrogates replaced by U+FFFD (JSON can carry them; UTF-8 cannot)."""
    return _SURROGATE.sub("\ufffd", text)


class APIError(Exception):
    """An error answered in OpenAI's shape; ``headers`` e.g. Retry-After for 429."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str

    @field_validator("text")
    @classmethod
    def _clean(cls, v: str) -> str:
        return clean_text(v)


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _clean(cls, v):
        return clean_text(v) if isinstance(v, str) else v

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatRequest(_Lenient):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: StrictInt | None = Field(default=None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: StrictInt | None = None  # range-checked (400) by the server: it seeds torch
    user: str | None = None
    logprobs: bool | None = None
    top_logprobs: StrictInt | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if v is None:
            return v
        items = [clean_text(s) for s in ([v] if isinstance(v, str) else v)]
        if len(items) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in items):
            raise ValueError("stop sequences must be non-empty")
        return items

    def stop_list(self) -> list[str]:
        return list(self.stop or [])

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) for the first field set to something this server cannot do."""
        if self.n not in (None, 1):
            return "n", "only n=1 is supported"
        if self.logprobs or self.top_logprobs:
            return "logprobs", "logprobs are not supported by this server"
        if self.tools or self.tool_choice not in (None, "none"):
            return "tools", "tool calling is not supported by this server"
        if self.presence_penalty or self.frequency_penalty:
            return "presence_penalty", "presence and frequency penalties are not supported"
        if self.response_format and self.response_format.get("type", "text") != "text":
            return "response_format", "only text responses are supported"
        return None


def validation_error(err: ValidationError) -> APIError:
    """A 422 naming each bad field (without echoing its value: it may hold PII)."""
    parts = []
    first_param = None
    for e in err.errors()[:5]:
        loc = ".".join(str(x) for x in e["loc"] if not str(x).startswith(("function-", "literal[")))
        first_param = first_param or loc or None
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    return APIError(422, "invalid request: " + "; ".join(parts), param=first_param, code="invalid_request")


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def completion(
    cid: str, model: str, text: str, finish_reason: str, usage: dict, extra: dict, created: int | None = None
) -> dict:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage,
        "system_fingerprint": None,
        "distilltune": extra,
    }


def chunk(
    cid: str,
    model: str,
    created: int,
    delta: dict | None = None,
    finish_reason: str | None = None,
    usage: dict | None = None,
    extra: dict | None = None,
    include_choice: bool = True,
) -> dict:
    out: dict = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": (
            [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}]
            if include_choice
            else []
        ),
    }
    if usage is not None:
        out["usage"] = usage
    if extra is not None:
        out["distilltune"] = extra
    return out


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
