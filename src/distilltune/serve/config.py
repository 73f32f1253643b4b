"""``ServeConfig``: everything ``distilltune serve`` needs, as one typed config.

The CLI options, ``--config FILE.yaml`` and ``key.sub=value`` overrides all fill this model, and the
resolved config is printed with ``--print-config``. Limits are part of the config, not constants, so
an operator can loosen or tighten them without touching code.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from distilltune.config import StrictModel
from distilltune.inference.backends import BACKENDS
from distilltune.inference.cascade import CascadeConfig
from distilltune.inference.generation import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE
from distilltune.policy import GuardConfig
from distilltune.retrieval.config import RetrievalConfig

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class Limits(StrictModel):
    """Request limits; a request over any of them gets a 4xx in OpenAI's error shape."""

    max_body_bytes: int = Field(default=256 * 1024, ge=1024, description="largest accepted request body")
    max_messages: int = Field(default=64, ge=1, description="most messages in one request")
    max_message_chars: int = Field(default=16_000, ge=1, description="longest single message")
    max_request_chars: int = Field(
        default=12_000,
        ge=1,
        description="most characters in all messages together: bounds the guard's CPU per request "
        "(worst case about 40 us per character on the dev machine, so about 0.5 s at the default)",
    )
    max_tokens: int = Field(default=512, ge=1, description="largest max_tokens a request may ask for")
    max_prompt_tokens: int = Field(
        default=2048, ge=16, description="longest rendered prompt (system + context + conversation)"
    )
    max_queue: int = Field(
        default=DEFAULT_MAX_QUEUE, ge=1, description="waiting requests per model before 429"
    )
    timeout_s: float = Field(default=120.0, gt=0, description="per-request wall-clock limit")
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="the whole request body must arrive within this (else 408)"
    )
    allowed_hosts: list[str] = Field(
        default=[],
        description="without an API key: Host names accepted besides loopback and --host ('*' = any)",
    )


class Batching(StrictModel):
    max_batch: int = Field(
        default=DEFAULT_MAX_BATCH, ge=1, description="sequences decoded together per forward pass"
    )


class Generation(StrictModel):
    default_max_tokens: int = Field(default=128, ge=1, description="when the request sets no max_tokens")
    default_temperature: float = Field(
        default=0.0, ge=0, le=2, description="when the request sets none (0 = greedy, unlike OpenAI's 1)"
    )


class ABConfig(StrictModel):
    """A/B or shadow serving of ``candidate`` next to MODEL (``serve/ab.py``, docs/ab.md)."""

    split: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="share of users routed to (A/B) or mirrored to (shadow) the candidate; "
        "default 0.1 for A/B, 1.0 for shadow",
    )
    shadow: bool = Field(
        default=False, description="run the candidate on a copy of the traffic; only MODEL answers"
    )
    user_header: str = Field(
        default="X-Distilltune-User",
        pattern=r"^[A-Za-z0-9-]{1,64}$",
        description="header naming the user when the request has no 'user' field",
    )
    salt: str = Field(
        default="distilltune-ab", min_length=1, description="hash salt: change it to re-draw the arms"
    )
    shadow_queue: int = Field(default=32, ge=1, description="shadow copies waiting; more are dropped")
    shadow_workers: int = Field(default=1, ge=1, le=16, description="shadow copies generated at once")

    @property
    def share(self) -> float:
        return self.split if self.split is not None else (1.0 if self.shadow else 0.1)


class ServeConfig(StrictModel):
    model: str = Field(description="student/base model reference (dir, run dir, built-in, spec)")
    task: str = Field(description="task directory: system prompt, knowledge, policy")
    fallback: str | None = Field(default=None, description="model that answers when the student is unsure")
    teacher: str | None = Field(default=None, description="resolves 'teacher' in student specs")
    candidate: str | None = Field(
        default=None, description="model tested against MODEL on live traffic (A/B or shadow)"
    )
    ab: ABConfig = ABConfig()
    served_name: str | None = Field(
        default=None, description="model id of MODEL in the API (default: derived)"
    )
    adapters: dict[str, str] = Field(
        default={}, description="extra LoRA adapters on MODEL's base: name → dir"
    )
    backend: Literal["torch", "onnx", "llama.cpp"] = Field(
        default="torch",
        description="what generates: torch (continuous batching), onnx (ONNX Runtime) or llama.cpp; "
        "a model that is not yet in the backend's format is exported on the fly into a cache",
    )
    quant: str = Field(
        default="none",
        description="quantization of that on-the-fly export (onnx: none|int8; llama.cpp: none|f16|q8_0|q4_k_m)",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_key_env: str | None = Field(default=None, description="env var holding the API key (unset = no auth)")
    log_db: str = Field(default="distilltune-requests.db", description="SQLite request log (WAL)")
    log_retention_days: float | None = Field(
        default=None,
        gt=0,
        description="delete request-log rows older than this, at start-up and hourly (None = keep all)",
    )
    limits: Limits = Limits()
    batching: Batching = Batching()
    generation: Generation = Generation()
    cascade: CascadeConfig = CascadeConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    guard: GuardConfig = GuardConfig()

    @field_validator("adapters")
    @classmethod
    def _adapter_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not ADAPTER_NAME.match(name):
                raise ValueError(
                    f"adapter name {name!r} must be 1-64 letters, digits, '.', '_', ':' or '-' "
                    "(it becomes the request's model field)"
                )
        return v

    @model_validator(mode="after")
    def _generation_within_limits(self) -> ServeConfig:
        if self.generation.default_max_tokens > self.limits.max_tokens:
            raise ValueError(
                f"generation.default_max_tokens ({self.generation.default_max_tokens}) exceeds "
                f"limits.max_tokens ({self.limits.max_tokens})"
            )
        quants = BACKENDS[self.backend].quants
        if self.quant not in quants:
            raise ValueError(
                f"quant {self.quant!r} does not apply to backend {self.backend}; choose one of {', '.join(quants)}"
            )
        if self.adapters and self.backend != "torch":
            raise ValueError(
                f"--adapter needs --backend torch (a {self.backend} model has its adapter merged in at export)"
            )
        if self.served_name is not None and self.served_name in self.adapters:
            raise ValueError(f"served_name {self.served_name!r} is also an adapter name")
        if self.candidate is None and (self.ab.shadow or self.ab.split is not None):
            raise ValueError("ab.split and ab.shadow need a candidate model (--candidate)")
        if self.candidate is not None and not self.ab.shadow and self.ab.share >= 1:
            raise ValueError(
                "ab.split must be below 1 in an A/B test (to send all traffic to the candidate, serve it as MODEL)"
            )
        return self
