"""The monitor's per-window signals, live: Prometheus gauges over the last hour of requests.

``distilltune monitor`` reads the request log after the fact; a dashboard or an alert rule wants the
same numbers now. ``LiveSignals`` keeps a bounded rolling window of what each request's log row says
(route, status, confidence, retrieval score, latency, answer length, whether the answer says "I don't
know") and computes, at scrape time, exactly what ``monitor.traffic.window_traffic`` computes for a
window: route shares, escalation and refusal rates, the unanswered rate, and the distributions of
confidence, retrieval score, latency (HTTP 200 only) and answer words. A test checks the gauges
against ``window_traffic`` on the same requests.

The window holds the requests of the last ``window_s`` seconds (default one hour, the monitor's
default window), at most ``max_requests`` of them (the newest), so memory stays bounded under any
load. Nothing here keeps request text: only the numbers and a yes/no for "unanswered".
Gauges without data (no confidence logged yet) are left out of the scrape rather than set to NaN.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from distilltune.task.schema import UNANSWERED_PATTERNS

WINDOW_S = 3600.0
MAX_REQUESTS = 10_000
ANSWERED = ("student", "fallback")
REFUSED = ("refused_input", "refused_output")
STATS = {"p10": 0.1, "p50": 0.5, "p90": 0.9}


@dataclass(frozen=True)
class _Seen:
    ts: float
    route: str
    status: int | None
    confidence: float | None
    retrieval_score: float | None
    latency_ms: float | None
    answer_words: int | None  # None unless the student or the fallback answered
    unanswered: bool


def _matcher(patterns: Iterable[str]) -> re.Pattern | None:
    patterns = list(patterns)
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None


def _distribution(values: list[float]) -> dict | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), **{k: float(np.quantile(a, q)) for k, q in STATS.items()}}


class LiveSignals(Collector):
    """A Prometheus collector: call ``observe`` with each finished request's ``LogRecord``."""

    def __init__(
        self,
        window_s: float = WINDOW_S,
        max_requests: int = MAX_REQUESTS,
        unanswered_patterns: Iterable[str] = UNANSWERED_PATTERNS,
        clock=time.time,
    ):
        self.window_s = float(window_s)
        self._unanswered = _matcher(unanswered_patterns)
        self._seen: deque[_Seen] = deque(maxlen=max_requests)
        self._lock = threading.Lock()
        self._clock = clock

    def observe(self, rec) -> None:
        """Remember one request's numbers (``rec``: a ``serve.requestlog.LogRecord``)."""
        answered = rec.route in ANSWERED and rec.answer is not None
        seen = _Seen(
            ts=float(rec.ts),
            route=str(rec.route or "error"),
            status=rec.status,
            confidence=rec.confidence,
            retrieval_score=rec.retrieval_score,
            latency_ms=rec.latency_ms,
            answer_words=len(rec.answer.split()) if answered else None,
            unanswered=bool(answered and self._unanswered and self._unanswered.search(rec.answer)),
        )
        with self._lock:
            self._seen.append(seen)

    def snapshot(self) -> dict:
        """The window's signals, named as in ``monitor.traffic.window_traffic``."""
        cutoff = self._clock() - self.window_s
        with self._lock:
            while self._seen and self._seen[0].ts < cutoff:
                self._seen.popleft()
            reqs = [s for s in self._seen if s.ts >= cutoff]
        n = len(reqs)
        routes: dict[str, int] = {}
        for s in reqs:
            routes[s.route] = routes.get(s.route, 0) + 1
        answered = sum(routes.get(r, 0) for r in ANSWERED)
        refused = sum(routes.get(r, 0) for r in REFUSED)
        words = [s.answer_words for s in reqs if s.answer_words is not None]
        lat = [s.latency_ms for s in reqs if s.latency_ms is not None and s.status == 200]
        return {
            "requests": n,
            "shares": {
                "student": routes.get("student", 0) / n if n else None,
                "fallback": routes.get("fallback", 0) / n if n else None,
                "refused": refused / n if n else None,
                "error": routes.get("error", 0) / n if n else None,
            },
            "escalation_rate": routes.get("fallback", 0) / answered if answered else None,
            "refusal_rate": refused / n if n else None,
            "unanswered_rate": sum(s.unanswered for s in reqs) / len(words) if words else None,
            "confidence": _distribution([s.confidence for s in reqs if s.confidence is not None]),
            "retrieval_score": _distribution(
                [s.retrieval_score for s in reqs if s.retrieval_score is not None]
            ),
            "latency_ms": {
                "p50": float(np.quantile(lat, 0.5)) if lat else None,
                "p95": float(np.quantile(lat, 0.95)) if lat else None,
            },
            "answer_words": _distribution([float(w) for w in words]),
        }

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.snapshot()
        win = f" over the last {self.window_s:g} s"
        yield GaugeMetricFamily("distilltune_window_seconds", "Length of the rolling window", self.window_s)
        yield GaugeMetricFamily("distilltune_window_requests", "Requests" + win, snap["requests"])
        shares = GaugeMetricFamily(
            "distilltune_route_share", "Share of requests per route" + win, labels=["route"]
        )
        for route, v in snap["shares"].items():
            if v is not None:
                shares.add_metric([route], v)
        yield shares
        for name, what in (
            ("escalation_rate", "Fallback share of answered requests"),
            ("refusal_rate", "Share of requests refused by the guard"),
            ("unanswered_rate", "Share of answers saying they don't know"),
        ):
            g = GaugeMetricFamily(f"distilltune_{name}", what + win)
            if snap[name] is not None:
                g.add_metric([], snap[name])
            yield g
        for name, what in (
            ("confidence", "Student's mean token log-probability"),
            ("retrieval_score", "Best retrieval score"),
            ("answer_words", "Answer length in words"),
        ):
            g = GaugeMetricFamily(
                f"distilltune_{name}", what + win + " (mean, p10, p50, p90)", labels=["stat"]
            )
            for stat, v in (snap[name] or {}).items():
                g.add_metric([stat], v)
            yield g
        lat = GaugeMetricFamily(
            "distilltune_window_latency_seconds",
            "Latency quantiles of HTTP 200 requests" + win,
            labels=["quantile"],
        )
        for key, q in (("p50", "0.5"), ("p95", "0.95")):
            if snap["latency_ms"][key] is not None:
                lat.add_metric([q], snap["latency_ms"][key] / 1000)
        yield lat
