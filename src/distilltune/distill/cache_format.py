"""The teacher cache's on-disk format and its reader (memory-mapped; the teacher is not loaded).

A cache holds the teacher's top-k distributions over the *assembled* training examples (exactly the
token ids the student trains on), per distilled position (row-major; the answer positions
``labels[1:] != IGNORE_INDEX``, or every position when distilling at the prompt too —
``forward.kd_mask``):

- ``ids``   [n, k]   uint16 when the vocabulary fits in 16 bits, else int32 — the top-k ids, descending;
- ``logp``  [n, k-1] float16 — the log-probabilities of ranks 2..k;
- ``tail``  [n]      float16 — log of the probability mass outside the top-k (the "rest" bucket).

The top-1 log-probability is not stored: it is ``log(1 - Σ ranks 2..k - tail)``, recovered on read
(``full_topk_logp``). The top-1 is the largest probability of the row, so the fp16 rounding of the
others moves its log by about as much as storing it in fp16 would; the tail keeps its own fp16 log,
which reverse-KL-type losses need when it is tiny. At k=32 that is 128 bytes per position (4·k).
(Format 1 stored all k log-probabilities and the tail, 4·k + 2 bytes; it is still read.) Shards
(``shard-00000.safetensors`` ...) hold whole examples and are written atomically one by one;
``index.safetensors`` maps example → (shard, start, count); ``manifest.json`` is written last, so a
directory without it is an unfinished build (resumed shard by shard, never read).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distilltune.data.chat import IGNORE_INDEX, Example
from distilltune.errors import UserError

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
MANIFEST = "manifest.json"
INDEX = "index.safetensors"
_NP_DTYPES = {"F16": np.float16, "F32": np.float32, "U16": np.uint16, "I32": np.int32, "I64": np.int64}


def n_targets(ex: Example, positions: str = "answer") -> int:
    """Distilled positions of one example: those whose *next* token is labelled (``answer``), or
    every position that has a next token (``all``)."""
    if positions == "all":
        return max(len(ex.input_ids) - 1, 0)
    return sum(1 for x in ex.labels[1:] if x != IGNORE_INDEX)


def memmap_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Memory-map every tensor of a safetensors file as a read-only numpy array (no copy)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", {}) or {}
    out: dict[str, np.ndarray] = {}
    for name, info in header.items():
        dtype = _NP_DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end == begin:
            out[name] = np.zeros(shape, dtype=dtype)
        else:
            out[name] = np.memmap(path, dtype=dtype, mode="r", offset=8 + n + begin, shape=shape)
    return out, meta


@dataclass
class CachedTargets:
    """The teacher's view of a batch's answer positions (row-major, like ``loss_positions``)."""

    logp: torch.Tensor  # [N, k] float32
    ids: torch.Tensor  # [N, k] int64
    tail: torch.Tensor  # [N] float32
    counts: list[int]  # positions per batch row


class TeacherCache:
    """A complete cache directory, memory-mapped. ``get(indices)`` gathers examples' positions."""

    def __init__(self, path: Path):
        self.path = Path(path)
        mf = self.path / MANIFEST
        if not mf.is_file():
            raise UserError(f"{self.path}: not a complete teacher cache (no {MANIFEST})")
        self.manifest = json.loads(mf.read_text())
        if self.manifest.get("format") not in READABLE_FORMATS:
            raise UserError(
                f"{self.path}: teacher cache format {self.manifest.get('format')} is not supported"
            )
        index, _ = memmap_safetensors(self.path / INDEX)
        self._shard_of = np.asarray(index["shard"], dtype=np.int64)
        self._start = np.asarray(index["start"], dtype=np.int64)
        self.counts = np.asarray(index["count"], dtype=np.int64)
        self._shards = [memmap_safetensors(self.path / name)[0] for name in self.manifest["shards"]]

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def k(self) -> int:
        return int(self.manifest["k"])

    @property
    def positions(self) -> str:
        """Which positions it holds: ``answer`` or ``all`` (``forward.KD_POSITIONS``)."""
        return str(self.manifest.get("positions", "answer"))

    def __len__(self) -> int:
        return len(self.counts)

    def check_matches(self, examples: Sequence[Example]) -> None:
        """Every example must have exactly as many positions as were cached for it."""
        if len(examples) != len(self):
            raise UserError(
                f"{self.path}: cache holds {len(self)} examples, the training data has {len(examples)}"
            )
        bad = [i for i, ex in enumerate(examples) if n_targets(ex, self.positions) != self.counts[i]]
        if bad:
            raise UserError(f"{self.path}: lengths differ from the training data at examples {bad[:5]}")

    def get(self, indices: Sequence[int]) -> CachedTargets:
        """The cached positions of ``indices`` (in that order), full top-k log-probs restored."""
        logp, ids, tail, counts = [], [], [], []
        for i in indices:
            shard = self._shards[self._shard_of[i]]
            a = int(self._start[i])
            b = a + int(self.counts[i])
            logp.append(shard["logp"][a:b])
            ids.append(shard["ids"][a:b])
            tail.append(shard["tail"][a:b])
            counts.append(b - a)
        logp_t = torch.from_numpy(np.concatenate(logp).astype(np.float32))
        tail_t = torch.from_numpy(np.concatenate(tail).astype(np.float32))
        if self.manifest["format"] >= 2:
            logp_t = full_topk_logp(logp_t, tail_t)
        return CachedTargets(
            logp=logp_t,
            ids=torch.from_numpy(np.concatenate(ids).astype(np.int64)),
            tail=tail_t,
            counts=counts,
        )


def full_topk_logp(rest_logp: torch.Tensor, tail_logp: torch.Tensor) -> torch.Tensor:
    """Ranks 2..k [n, k-1] + log tail [n] → all k log-probs [n, k]: the top-1 is what the rest leave.

    Rounding can leave a top-1 below rank 2 (or nothing at all) when the row is nearly flat; it is
    then clamped to rank 2's value, as the largest probability of the row must be.
    """
    from distilltune.distill.losses import LOG_FLOOR

    left = 1.0 - rest_logp.exp().sum(-1) - tail_logp.exp()
    top1 = torch.log(left.clamp(min=0.0)).clamp(min=LOG_FLOOR)
    if rest_logp.shape[-1]:
        top1 = torch.maximum(top1, rest_logp[:, 0])
    return torch.cat([top1[:, None], rest_logp], dim=-1)
