"""Prometheus metrics for the server, on a registry of its own (several apps may live in one process).

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms). Labels are small
closed sets (route, status class, model id, guard stage) — never request text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from distilltune.serve.signals import LiveSignals
from distilltune.task.schema import UNANSWERED_PATTERNS

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, unanswered_patterns: Iterable[str] = UNANSWERED_PATTERNS) -> None:
        r = self.registry = CollectorRegistry()
        # The monitor's per-window signals over the last hour (docs/monitoring.md), computed at scrape.
        self.signals = LiveSignals(unanswered_patterns=unanswered_patterns)
        r.register(self.signals)
        self.feedback = Counter(
            "distilltune_feedback", "Feedback received (POST /v1/feedback)", ["rating"], registry=r
        )
        self.requests = Counter(
            "distilltune_requests",
            "Chat completion requests answered",
            ["model", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "distilltune_request_latency_seconds",
            "Request arrival to last byte",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "distilltune_time_to_first_token_seconds",
            "Request arrival to the first released content",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "distilltune_queue_wait_seconds",
            "Time a request waited for a batch slot",
            ["engine"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "distilltune_tokens", "Tokens processed", ["engine", "kind"], registry=r
        )  # kind: prompt | completion
        self.refusals = Counter(
            "distilltune_refusals", "Requests answered with the refusal message", ["stage"], registry=r
        )  # stage: input | output
        self.redactions = Counter(
            "distilltune_redactions", "Requests with PII redacted", ["stage"], registry=r
        )
        self.escalations = Counter(
            "distilltune_escalations", "Requests the fallback model answered (cascade)", registry=r
        )
        self.errors = Counter("distilltune_errors", "Error responses", ["status"], registry=r)
        self.batch_size = Histogram(
            "distilltune_batch_size",
            "Sequences per decode step",
            ["engine"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
            registry=r,
        )
        self.ab_requests = Counter(
            "distilltune_ab_requests",
            "Requests for MODEL's id by A/B arm and the key that placed them (user | header | address)",
            ["arm", "user_key"],
            registry=r,
        )
        self.shadow = Counter(
            "distilltune_shadow", "Shadow copies by outcome (done | error | dropped)", ["outcome"], registry=r
        )
        self._queue_depth = Gauge(
            "distilltune_queue_depth", "Requests waiting for a batch slot", ["engine"], registry=r
        )
        self._active = Gauge(
            "distilltune_active_sequences", "Sequences in the running batch", ["engine"], registry=r
        )

    def track_engine(self, name: str, depth: Callable[[], float], active: Callable[[], float]) -> None:
        self._queue_depth.labels(name).set_function(depth)
        self._active.labels(name).set_function(active)

    def render(self) -> bytes:
        return generate_latest(self.registry)
