"""Inference: one request's path (guard → retrieval and prompt → generation → cascade → output guard).

Sits above ``models``, ``retrieval`` and ``policy`` and below ``evaluation`` and ``serve``, which are
thin drivers over ``RequestPath`` (they differ only in the generation backend). The continuous-batching
generation engine (``engine.Engine``, its request/result types in ``generation``) lives here too, so that
evaluation's efficiency measurement and the server generate through the same engine.
"""

from distilltune.inference.cascade import CascadeConfig, CascadeDecision, confidence, decide
from distilltune.inference.release import TextReleaser
from distilltune.inference.request import (
    ROUTE_FALLBACK,
    ROUTE_REFUSED_INPUT,
    ROUTE_REFUSED_OUTPUT,
    ROUTE_STUDENT,
    ROUTES,
    RequestPath,
    RequestResult,
    build_path,
    hit_record,
    prompt_ids,
    withheld,
)

__all__ = [
    "ROUTES",
    "ROUTE_FALLBACK",
    "ROUTE_REFUSED_INPUT",
    "ROUTE_REFUSED_OUTPUT",
    "ROUTE_STUDENT",
    "CascadeConfig",
    "CascadeDecision",
    "RequestPath",
    "RequestResult",
    "TextReleaser",
    "build_path",
    "confidence",
    "decide",
    "hit_record",
    "prompt_ids",
    "withheld",
]
