"""Input drift on sentence embeddings: an MMD two-sample test, out-of-distribution distances, clusters.

Pure numpy/scipy on precomputed embeddings, so the statistics can be tested (and calibrated) on
synthetic vectors in milliseconds, independent of any embedding model.

- ``mmd_test``: the maximum mean discrepancy between a window of requests and the training questions,
  with an RBF kernel whose bandwidth is the median pairwise distance of the pooled sample (the
  pooled sample does not change under relabelling, so the permutation test stays exact) and a
  permutation p-value ``(1 + #{perm >= observed}) / (1 + permutations)``, which is valid at any
  sample size: under exchangeability, P(p <= alpha) <= alpha.
- ``nearest_distances`` / ``loo_distances``: cosine distance to the nearest training question, and
  each training question's own (leave-one-out) nearest-neighbour distance, whose upper quantile
  defines "out of distribution".
- ``clusters``: average-linkage agglomerative clustering (cosine) of flagged requests, reported with
  the questions nearest each cluster's centre and its most frequent words as a topic label.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

_BLOCK = 4_000_000  # similarity-matrix entries computed at once (16 MB of float32)
_STOP_TEXT = (
    "a an and are as at be by can could did do does for from has have how i if in is it its me my no not "
    "of on or our should so that the their there this to was we what when where which who why will with "
    "would you your yours i'm i've don't can't there's what's it's any some get got much many more most "
    "about into than then them they also just"
)
STOPWORDS = frozenset(_STOP_TEXT.split())


@dataclass(frozen=True)
class MMDResult:
    mmd2: float  # biased (V-statistic) estimate of squared MMD
    p_value: float
    bandwidth: float  # RBF sigma (median pairwise Euclidean distance of the pooled sample)
    n_window: int
    n_reference: int
    permutations: int

    def to_dict(self) -> dict:
        return asdict(self)


def _subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if len(x) <= n:
        return x
    return x[np.sort(rng.choice(len(x), n, replace=False))]


def _sq_distances(z: np.ndarray) -> np.ndarray:
    sq = np.einsum("ij,ij->i", z, z)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)


def mmd_test(
    window: np.ndarray,
    reference: np.ndarray,
    permutations: int = 500,
    seed: int = 0,
    max_samples: int | None = 500,
) -> MMDResult:
    """Two-sample MMD permutation test of ``window`` (rows = embeddings) against ``reference``.

    Each side is subsampled (seeded) to ``max_samples`` so the cost is bounded: the kernel matrix is
    at most (2 * max_samples)^2 and every permutation's statistic is one quadratic form on it.
    """
    if len(window) < 2 or len(reference) < 2:
        raise ValueError("the MMD test needs at least 2 samples on each side")
    rng = np.random.default_rng(seed)
    if max_samples:
        window, reference = _subsample(window, max_samples, rng), _subsample(reference, max_samples, rng)
    z = np.vstack([window, reference]).astype(np.float64)
    n, m = len(window), len(reference)
    d2 = _sq_distances(z)
    off = d2[np.triu_indices(len(z), 1)]
    med = float(np.median(off))
    if med <= 0:  # more than half the pairs coincide: fall back to the mean non-zero distance
        nz = off[off > 0]
        med = float(nz.mean()) if len(nz) else 1.0
    k = np.exp(-d2 / (2.0 * med))  # sigma^2 = median squared distance, sigma = median distance
    w = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    observed = float(w @ k @ w)
    exceed = 0
    done = 0
    while done < permutations:
        b = min(128, permutations - done)
        ws = np.stack([rng.permutation(w) for _ in range(b)], axis=1)
        stats = np.einsum("ip,ip->p", k @ ws, ws)
        exceed += int(np.sum(stats >= observed - 1e-12 * abs(observed)))  # ties count against drift
        done += b
    return MMDResult(
        mmd2=observed,
        p_value=(1 + exceed) / (1 + permutations),
        bandwidth=float(np.sqrt(med)),
        n_window=n,
        n_reference=m,
        permutations=permutations,
    )


def _rows(n_reference: int) -> int:
    """Query rows per block, so a block of similarities stays near ``_BLOCK`` entries at any training size."""
    return max(1, min(1024, _BLOCK // max(1, n_reference)))


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def nearest_distances(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine distance (1 - cosine similarity) from each query to its nearest reference row."""
    q, r = normalize(queries), normalize(reference)
    out = np.empty(len(q), dtype=np.float64)
    step = _rows(len(r))
    for i in range(0, len(q), step):
        out[i : i + step] = 1.0 - (q[i : i + step] @ r.T).max(axis=1)
    return np.clip(out, 0.0, 2.0)


def loo_distances(reference: np.ndarray) -> np.ndarray:
    """Each reference row's cosine distance to its nearest *other* row (leave-one-out)."""
    r = normalize(reference)
    if len(r) < 2:
        raise ValueError("leave-one-out distances need at least 2 training questions")
    out = np.empty(len(r), dtype=np.float64)
    step = _rows(len(r))
    for i in range(0, len(r), step):
        s = r[i : i + step] @ r.T
        rows = np.arange(len(s))
        s[rows, rows + i] = -np.inf
        out[i : i + step] = 1.0 - s.max(axis=1)
    return np.clip(out, 0.0, 2.0)


def ood_threshold(reference: np.ndarray, quantile: float) -> float:
    """The training set's own ``quantile`` nearest-neighbour distance: farther than this is "out"."""
    return float(np.quantile(loo_distances(reference), quantile))


def topic_terms(texts: list[str], n: int = 3) -> list[str]:
    """The most frequent content words (each counted once per text): a readable label for a cluster."""
    counts: Counter[str] = Counter()
    for t in texts:
        counts.update({w for w in re.findall(r"[a-z][a-z0-9'-]{2,}", t.lower()) if w not in STOPWORDS})
    return [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def clusters(
    vectors: np.ndarray,
    texts: list[str],
    max_distance: float = 0.6,
    top: int = 5,
    examples: int = 3,
    max_points: int = 2000,
    seed: int = 0,
) -> list[dict]:
    """The ``top`` largest clusters (average linkage, cosine, cut at ``max_distance``), largest first.

    Each: ``size``, ``share`` (of the clustered requests), ``terms`` and up to ``examples`` distinct
    texts nearest the cluster centre. At most ``max_points`` requests are clustered (seeded sample):
    linkage needs the full distance matrix.
    """
    if len(texts) == 0:
        return []
    idx = np.arange(len(texts))
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(len(idx), max_points, replace=False))
    v = normalize(vectors[idx])
    if len(idx) == 1:
        labels = np.ones(1, dtype=int)
    else:
        from scipy.cluster.hierarchy import fcluster, linkage

        labels = fcluster(linkage(v, method="average", metric="cosine"), t=max_distance, criterion="distance")
    out = []
    for lab, size in Counter(labels.tolist()).most_common(top):
        members = np.flatnonzero(labels == lab)
        centre = normalize(v[members].mean(axis=0, keepdims=True))[0]
        order = members[np.argsort(-(v[members] @ centre), kind="stable")]
        shown: list[str] = []
        for j in order:
            t = texts[idx[j]]
            if t not in shown:
                shown.append(t)
            if len(shown) == examples:
                break
        out.append(
            {
                "size": int(size),
                "share": size / len(idx),
                "terms": topic_terms([texts[idx[j]] for j in members]),
                "examples": shown,
            }
        )
    return out
