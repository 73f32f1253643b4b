"""``run_monitor``: read the request log, compute every signal per window, decide the alerts.

Inputs are injectable so the statistics can be tested without the embedding model: ``embedder`` is
anything with ``encode(list[str]) -> ndarray`` (default: the bundled MiniLM, shared with the
knowledge index), ``knowledge`` a function (questions, their vectors) → best retrieval score each
(default: dense search in the task's knowledge index). Dense cosine similarity is used for the
knowledge-gap signal even when the server retrieves in hybrid mode: the logged hybrid score is a
reciprocal-rank fusion score, which depends only on ranks and so cannot say "nothing relevant".

Cost is bounded per window: at most ``monitoring.max_samples`` questions of a window are embedded
(a seeded sample); training-question embeddings are cached under ``$DISTILLTUNE_HOME/monitor``.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from distilltune.errors import UserError
from distilltune.monitor import drift
from distilltune.monitor.alerts import output_drift, window_alerts
from distilltune.monitor.logread import Window, read_log, windows
from distilltune.monitor.traffic import unanswered_matcher, window_traffic

SCHEMA_VERSION = 1
KnowledgeScorer = Callable[[list[str], np.ndarray], np.ndarray]


class TextEmbedder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


def embed_cached(embedder: TextEmbedder, texts: list[str]) -> np.ndarray:
    """Embed ``texts``, reusing a cached copy when the embedder has an ``identity`` (a model fingerprint)."""
    identity = getattr(embedder, "identity", None)
    if not isinstance(identity, str):
        return np.asarray(embedder.encode(texts), dtype=np.float32)
    from distilltune.io import atomic_write_bytes
    from distilltune.models.bundled import distilltune_home

    key = hashlib.sha256("\x00".join([identity, *texts]).encode("utf-8")).hexdigest()[:24]
    path = distilltune_home() / "monitor" / "embeddings" / f"{key}.npy"
    if path.is_file():
        try:
            vecs = np.load(path, allow_pickle=False)
            if vecs.shape[0] == len(texts):
                return vecs
        except (OSError, ValueError):
            pass  # a damaged cache entry: recompute and replace it
    vecs = np.asarray(embedder.encode(texts), dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, vecs, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
    return vecs


def index_scorer(task, embedding_model: str | None) -> tuple[TextEmbedder, KnowledgeScorer | None]:
    """The default embedder and, when the task has knowledge, a dense best-score function on its index."""
    from distilltune.retrieval.embed import load_embedder

    if not task.knowledge:
        return load_embedder(embedding_model), None
    from distilltune.retrieval import KnowledgeIndex, RetrievalConfig

    index = KnowledgeIndex.open(task, RetrievalConfig(embedding_model=embedding_model))

    def score(texts: list[str], vectors: np.ndarray) -> np.ndarray:
        best = []
        for t, v in zip(texts, vectors, strict=True):
            hits = index.dense(t, 1, vector=v)
            best.append(hits[0].score if hits else -1.0)
        return np.asarray(best, dtype=np.float64)

    return index.embedder, score


def _sample(win: Window, n: int, seed: int) -> list:
    """The window's requests that carry a question, a seeded sample of at most ``n``."""
    asked = [r for r in win.requests if r.question]
    if len(asked) <= n:
        return asked
    idx = np.sort(np.random.default_rng(seed).choice(len(asked), n, replace=False))
    return [asked[i] for i in idx]


def _knowledge_reference(task, embedder, knowledge) -> dict | None:
    """The lowest best-retrieval score over the (answerable) eval questions: the floor eval never went under."""
    if knowledge is None:
        return None
    qs = [c.question for c in task.eval if c.question and not task.is_refusal(c)]
    if not qs:
        return None
    scores = knowledge(qs, embed_cached(embedder, qs))
    return {"eval_min_score": float(scores.min()), "n_eval": len(qs), "score": "dense cosine similarity"}


def _input_signals(vecs, train, threshold, gap_floor, scores, spec, seed) -> tuple[dict, tuple]:
    """A window's drift test, OOD and knowledge-gap shares, and (OOD mask, gap mask) for clustering."""
    n = len(vecs)
    out: dict = {"questions": n, "drift": None, "ood": None, "knowledge_gap": None, "note": None}
    if n < spec.min_requests:
        out["note"] = f"{n} questions: fewer than min_requests ({spec.min_requests}), not tested"
        return out, (None, None)
    res = drift.mmd_test(vecs, train, spec.permutations, seed, spec.max_samples)
    out["drift"] = res.to_dict()
    dist = drift.nearest_distances(vecs, train)
    flagged = dist > threshold
    out["ood"] = {"n": n, "flagged": int(flagged.sum()), "rate": float(flagged.mean()),
                  "median_distance": float(np.median(dist))}  # fmt: skip
    low = None
    if scores is not None:
        low = scores < gap_floor
        out["knowledge_gap"] = {"n": n, "flagged": int(low.sum()), "rate": float(low.mean()),
                                "median_score": float(np.median(scores))}  # fmt: skip
    return out, (flagged, low)


def run_monitor(
    db: str | Path,
    task,
    window_s: float,
    since_s: float | None = None,
    embedder: TextEmbedder | None = None,
    knowledge: KnowledgeScorer | None = None,
    embedding_model: str | None = None,
    log: Callable[[str], None] = lambda m: None,
) -> dict:
    """The monitoring report (a JSON-able dict) for the log ``db`` against the task card ``task``."""
    from distilltune.task import load_task

    task = load_task(task) if isinstance(task, str | Path) else task
    spec = task.spec.monitoring
    requests = read_log(db, since_s)
    wins = windows(requests, window_s)
    train_qs = [c.question for c in task.train if c.question]
    if len(train_qs) < 2:
        raise UserError(f"{task.root}: the drift test needs at least 2 training questions")
    if embedder is None:
        embedder, default_knowledge = index_scorer(task, embedding_model)
        knowledge = knowledge or default_knowledge
    t0 = time.perf_counter()
    train = embed_cached(embedder, train_qs)
    threshold = drift.ood_threshold(train, spec.ood_quantile)
    kref = _knowledge_reference(task, embedder, knowledge)
    log(f"reference: {len(train_qs)} training questions embedded in {time.perf_counter() - t0:.1f} s")
    ood_pool: tuple[list, list] = ([], [])  # the latest window's flagged questions (vectors, texts)
    gap_pool: tuple[list, list] = ([], [])
    out_windows, conf_samples = [], []
    unanswered = unanswered_matcher(spec.unanswered_patterns)
    for i, win in enumerate(wins):
        asked = _sample(win, spec.max_samples, spec.seed + i)
        texts = [r.question for r in asked]
        vecs = (
            np.asarray(embedder.encode(texts), dtype=np.float32) if texts else np.zeros((0, train.shape[1]))
        )
        scores = knowledge(texts, vecs) if (kref and texts) else None
        floor = kref["eval_min_score"] if kref else None
        sig, (ood_mask, gap_mask) = _input_signals(
            vecs, train, threshold, floor, scores, spec, spec.seed * 1_000_003 + i
        )
        if i == len(wins) - 1:  # clusters describe the window the alerts (and the exit status) are about
            ood_pool, gap_pool = _flagged(vecs, texts, ood_mask), _flagged(vecs, texts, gap_mask)
        w = {
            "start": win.start,
            "end": win.end,
            "traffic": window_traffic(win.requests, window_s, unanswered),
        }
        out_windows.append(w | sig)
        conf_samples.append([r.confidence for r in win.requests if r.confidence is not None])
    base_i = _baseline(out_windows, conf_samples, spec)
    log(f"{len(requests)} requests in {len(wins)} windows analysed in {time.perf_counter() - t0:.1f} s")
    return _assemble(task, db, window_s, since_s, requests, out_windows, train_qs, threshold, kref,
                     base_i, ood_pool, gap_pool, spec, embedder)  # fmt: skip


def _baseline(out_windows: list[dict], conf_samples: list[list[float]], spec) -> int | None:
    """Output drift of every later window against the first window with ``min_requests`` requests."""
    base_i = next(
        (i for i, w in enumerate(out_windows) if w["traffic"]["requests"] >= spec.min_requests), None
    )
    for i, w in enumerate(out_windows):
        base = out_windows[base_i]["traffic"] if base_i is not None and i > base_i else None
        w["output_drift"] = output_drift(
            w["traffic"], conf_samples[i], base, conf_samples[base_i] if base else [], spec.drift_alpha
        )
        w["alerts"] = window_alerts(w, spec)
    return base_i


def _flagged(vecs: np.ndarray, texts: list[str], mask) -> tuple[list, list]:
    if mask is None:
        return [], []
    return list(vecs[mask]), [t for t, m in zip(texts, mask, strict=True) if m]


def _clusters(pool: tuple[list, list], spec, policy) -> list[dict]:
    """Clusters of flagged questions; their text (examples, topic words) passes the task's PII redaction again.

    The server logs redacted text, but a log written before the policy gained a detector was not
    redacted by it: what a report shows must meet today's policy.
    """
    from distilltune.policy.pii import PIIRedactor

    vecs, texts = pool
    if not texts:
        return []
    pii = PIIRedactor(policy.pii.enabled, [(c.name, c.pattern) for c in policy.pii.custom])
    return drift.clusters(np.asarray(vecs), [pii.redact(t)[0] for t in texts], seed=spec.seed)


def _assemble(task, db, window_s, since_s, requests, out_windows, train_qs, threshold, kref,
              base_i, ood_pool, gap_pool, spec, embedder) -> dict:  # fmt: skip
    from distilltune import __version__

    latest = out_windows[-1]
    base = out_windows[base_i] if base_i is not None else None
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "distilltune_version": __version__,
        "db": str(db),
        "task": task.name,
        "task_dir": str(task.root),
        "window_s": window_s,
        "since_s": since_s,
        "requests": len(requests),
        "first_ts": requests[0].ts,
        "last_ts": requests[-1].ts,
        "thresholds": spec.model_dump(mode="json"),
        "embedding_model": getattr(embedder, "identity", type(embedder).__name__),
        "reference": {
            "train_questions": len(train_qs),
            "ood_distance": threshold,
            "ood_quantile": spec.ood_quantile,
        },
        "knowledge": kref,
        "baseline": (
            {
                "source": "first window with min_requests requests",
                "start": base["start"],
                "end": base["end"],
                "escalation_rate": base["traffic"]["escalation_rate"],
                "confidence_mean": (base["traffic"]["confidence"] or {}).get("mean"),
            }
            if base
            else None
        ),
        "windows": out_windows,
        "ood_clusters": _clusters(ood_pool, spec, task.policy),
        "knowledge_gaps": _clusters(gap_pool, spec, task.policy) if kref else None,
        "latest": {"start": latest["start"], "end": latest["end"]},
        "alerts": latest["alerts"],
        "status": "alert" if latest["alerts"] else "ok",
    }
