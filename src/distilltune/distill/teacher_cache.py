"""The teacher top-k cache: run the teacher once, store its answer-token distributions, memory-map them.

Cached KD is the default mode because the teacher's forward pass is the most expensive part of an
online KD step and is identical in every epoch and for every strategy of a comparison. This module
builds a cache (``build_teacher_cache``: the teacher over the assembled examples, shard by shard,
resumable) and opens the one for a (teacher, tokenizer, data, k, positions), building it first if
needed (``ensure_teacher_cache``). The stored format and its reader are ``cache_format``'s, the key
``cache_key``'s; their public names are re-exported here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from distilltune.data.chat import IGNORE_INDEX, Example, collate
from distilltune.distill.cache_format import (
    FORMAT_VERSION,
    INDEX,
    MANIFEST,
    CachedTargets,
    TeacherCache,
    full_topk_logp,
    memmap_safetensors,
    n_targets,
)
from distilltune.distill.cache_key import (
    cache_key,
    examples_fingerprint,
    teacher_fingerprint,
    tokenizer_fingerprint,
)
from distilltune.errors import UserError
from distilltune.io import atomic_write_bytes, atomic_write_json, file_lock


def plan_shards(counts: Sequence[int], max_positions: int) -> list[tuple[int, int]]:
    """Consecutive example ranges [a, b) holding at most ``max_positions`` positions (≥ 1 example)."""
    plan, a, total = [], 0, 0
    for i, c in enumerate(counts):
        if i > a and total + c > max_positions:
            plan.append((a, i))
            a, total = i, 0
        total += c
    if a < len(counts) or not plan:
        plan.append((a, len(counts)))
    return plan


@torch.inference_mode()
def teacher_topk(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    k: int,
    chunk_size: int = 512,
    positions: str = "answer",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k log-probs [N, k], ids [N, k], log tail mass [N] at the ``positions`` of ``batch``
    (row-major), and the log-prob of each label there (the labelled positions only), projecting
    ``chunk_size`` positions at a time."""
    from distilltune.distill.losses import LOG_FLOOR
    from distilltune.train.forward import answer_states

    dev = next(model.parameters()).device  # batches are collated on the CPU; the teacher may be on a GPU
    batch = {k_: batch[k_].to(dev) for k_ in ("input_ids", "attention_mask", "labels")}
    st = answer_states(
        model, batch["input_ids"], batch["attention_mask"], batch["labels"], positions=positions
    )
    vals, ids, tails, label_lp = [], [], [], []
    for s in range(0, st.n, chunk_size):
        e = min(s + chunk_size, st.n)
        logits = st.logits_chunk(s, e).float()
        lse = logits.logsumexp(-1, keepdim=True)
        top, top_ids = logits.topk(min(k, logits.shape[-1]), dim=-1)
        rest = logits.scatter(-1, top_ids, float("-inf")).logsumexp(-1) - lse[:, 0]
        vals.append(top - lse)
        ids.append(top_ids)
        tails.append(rest.clamp(min=LOG_FLOOR))
        t = st.targets[s:e]
        kept = t != IGNORE_INDEX
        label_lp.append(logits[kept].gather(-1, t[kept, None])[:, 0] - lse[kept, 0])
    if not vals:
        z = torch.zeros(0, k)
        return z, z.long(), torch.zeros(0), torch.zeros(0)
    return tuple(torch.cat(t).cpu() for t in (vals, ids, tails, label_lp))  # type: ignore[return-value]


def _batches(n: int, size: int, lengths: Sequence[int]) -> Iterator[list[int]]:
    """Length-sorted batches (less padding); results are put back in example order by the caller."""
    order = sorted(range(n), key=lambda i: lengths[i])
    for s in range(0, n, size):
        yield order[s : s + size]


def _compute_shard(model, part: list[Example], counts: list[int], settings: dict, progress) -> tuple:
    """The teacher's top-k over one shard's examples, in example order: (tensors, label NLL sum, n)."""
    per_ex: dict[int, tuple] = {}
    nll, n = 0.0, 0
    size = settings["batch_size"]
    for bi, idx in enumerate(_batches(len(part), size, [len(e.input_ids) for e in part])):
        if bi and bi % 20 == 0:
            progress(f"{bi * size} of {len(part)} examples")
        batch = collate([part[i] for i in idx], settings["pad_id"])
        vals, ids, tail, lab = teacher_topk(model, batch, settings["k"], positions=settings["positions"])
        rows = [counts[i] for i in idx]
        for i, v, d, t in zip(idx, vals.split(rows), ids.split(rows), tail.split(rows), strict=True):
            per_ex[i] = (v, d, t)
        nll += float(-lab.sum())
        n += int(lab.numel())
    id_dtype = torch.uint16 if settings["vocab"] <= 1 << 16 else torch.int32
    logp = torch.cat([per_ex[i][0] for i in range(len(part))]).to(torch.float16)
    tensors = {
        "logp": logp[:, 1:].contiguous(),  # the top-1 is recovered on read (cache_format's docstring)
        "ids": torch.cat([per_ex[i][1] for i in range(len(part))]).to(id_dtype).contiguous(),
        "tail": torch.cat([per_ex[i][2] for i in range(len(part))]).to(torch.float16).contiguous(),
    }
    return tensors, nll, n


def _write_index(out_dir: Path, plan: list[tuple[int, int]], counts: list[int]) -> None:
    """``index.safetensors``: example → (shard, start, count)."""
    starts = np.zeros(len(counts), dtype=np.int64)
    shard_of = np.zeros(len(counts), dtype=np.int32)
    for si, (a, b) in enumerate(plan):
        shard_of[a:b] = si
        starts[a:b] = np.concatenate([[0], np.cumsum(counts[a:b])[:-1]]) if b > a else []
    tensors = {
        "shard": torch.from_numpy(shard_of),
        "start": torch.from_numpy(starts),
        "count": torch.tensor(counts, dtype=torch.int64),
    }
    atomic_write_bytes(out_dir / INDEX, safetensors_bytes(tensors))


def _manifest(out_dir: Path, names: list[str], counts: list[int], stats: dict, settings: dict) -> dict:
    """What ``manifest.json`` says of a finished build: format, key, sizes, the teacher's top-k mass."""
    mass = np.concatenate(stats["masses"]) if stats["masses"] else np.zeros(0)
    n_pos = int(sum(counts))
    shard_bytes = sum((out_dir / n).stat().st_size for n in names)
    k, vocab, small = settings["k"], settings["vocab"], (settings["vocab"] or 0) <= 1 << 16
    return {
        "format": FORMAT_VERSION,
        "key": settings["key"],
        "k": k,
        "positions": settings["positions"],
        "vocab_size": vocab,
        "ids_dtype": "uint16" if small else "int32",
        "n_examples": len(counts),
        "n_positions": n_pos,
        "shards": names,
        "payload_bytes_per_token": (k - 1) * 2 + 2 + k * (2 if small else 4),
        "file_bytes": shard_bytes,
        "file_bytes_per_token": round(shard_bytes / max(n_pos, 1), 2),
        "topk_mass": {
            "mean": round(float(mass.mean()), 4) if mass.size else None,
            "median": round(float(np.median(mass)), 4) if mass.size else None,
            "p10": round(float(np.percentile(mass, 10)), 4) if mass.size else None,
        },
        "teacher_answer_ce": round(stats["nll"] / stats["n"], 4) if stats["n"] else None,
    }


def build_teacher_cache(
    model: torch.nn.Module,
    examples: Sequence[Example],
    out_dir: Path,
    *,
    key: str,
    k: int,
    pad_id: int,
    batch_size: int = 8,
    max_shard_positions: int = 1 << 16,
    info: dict | None = None,
    log: Callable[[str], None] | None = None,
    positions: str = "answer",
) -> TeacherCache:
    """Run ``model`` over ``examples`` and write the cache to ``out_dir`` (resuming complete shards)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = [n_targets(ex, positions) for ex in examples]
    plan = plan_shards(counts, max_shard_positions)
    settings = {"key": key, "k": k, "pad_id": pad_id, "batch_size": batch_size, "positions": positions}
    settings["vocab"] = None
    t0 = time.perf_counter()
    stats: dict = {"masses": [], "nll": 0.0, "n": 0}
    names = []
    for si, (a, b) in enumerate(plan):
        name = f"shard-{si:05d}.safetensors"
        names.append(name)
        path = out_dir / name
        if path.is_file():
            arrays, meta = memmap_safetensors(path)
            if meta.get("key") == key and meta.get("range") == f"{a}:{b}":
                stats["masses"].append(-np.expm1(arrays["tail"].astype(np.float32)))
                stats["nll"] += float(meta.get("label_nll_sum", 0.0))
                stats["n"] += int(meta.get("label_n", 0))
                settings["vocab"] = settings["vocab"] or int(meta["vocab"])
                continue
        settings["vocab"] = settings["vocab"] or _vocab_size(model)

        def progress(msg: str, si: int = si) -> None:
            if log:
                log(f"teacher cache: shard {si + 1}/{len(plan)}, {msg}")

        tensors, nll, n = _compute_shard(model, list(examples[a:b]), counts[a:b], settings, progress)
        stats["nll"] += nll
        stats["n"] += n
        meta = {
            "key": key,
            "range": f"{a}:{b}",
            "vocab": str(settings["vocab"]),
            "label_nll_sum": repr(nll),
            "label_n": str(n),
        }
        atomic_write_bytes(path, safetensors_bytes(tensors, metadata=meta))
        stats["masses"].append(-np.expm1(tensors["tail"].float().numpy()))
        if log:
            log(f"teacher cache: shard {si + 1}/{len(plan)} ({b} of {len(examples)} examples)")
    _write_index(out_dir, plan, counts)
    manifest = _manifest(out_dir, names, counts, stats, settings)
    manifest["build_s"] = round(time.perf_counter() - t0, 2)
    manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_json(out_dir / MANIFEST, {**manifest, **(info or {})})
    return TeacherCache(out_dir)


def _vocab_size(model: torch.nn.Module) -> int:
    from distilltune.train.forward import body_and_head

    parts = body_and_head(model)
    if parts is not None:
        return int(parts[1].weight.shape[0])
    return int(model.config.vocab_size)


def default_cache_root() -> Path:
    from distilltune.models.bundled import distilltune_home

    return distilltune_home() / "teacher-cache"


def ensure_teacher_cache(
    *,
    teacher_ref: str,
    tokenizer,
    examples: Sequence[Example],
    k: int,
    load_teacher: Callable[[], torch.nn.Module],
    root: Path | None = None,
    dtype: str = "float32",
    batch_size: int = 8,
    log: Callable[[str], None] | None = None,
    positions: str = "answer",
) -> TeacherCache:
    """Open the cache for this (teacher, tokenizer, data, k, positions), building it first if needed.

    ``load_teacher`` is only called when the cache has to be built. Concurrent builders of the same
    key wait on a lock file and then reuse the finished cache.
    """
    root = Path(root) if root else default_cache_root()
    t_fp = teacher_fingerprint(teacher_ref, root / ".file-hashes.json")
    key = cache_key(
        t_fp, tokenizer_fingerprint(tokenizer), examples_fingerprint(examples), k, dtype, positions
    )
    path = root / key
    if not (path / MANIFEST).is_file():
        with file_lock(root / f".{key}.lock"):
            if not (path / MANIFEST).is_file():
                if log:
                    where = "every position" if positions == "all" else "the answer positions"
                    log(f"building the teacher top-{k} cache ({where} of {len(examples)} examples) in {path}")
                model = load_teacher()
                pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
                build_teacher_cache(
                    model,
                    examples,
                    path,
                    key=key,
                    k=k,
                    pad_id=pad,
                    batch_size=batch_size,
                    info={"teacher": teacher_ref, "teacher_dtype": dtype},
                    log=log,
                    positions=positions,
                )
                del model
    elif log:
        log(f"reusing the teacher top-{k} cache {path}")
    cache = TeacherCache(path)
    if cache.key != key:
        raise UserError(f"{path}: cache key mismatch ({cache.key} != {key}); delete the directory")
    cache.check_matches(examples)
    return cache


def print_log(msg: str) -> None:
    print(f"[distilltune] {msg}", file=sys.stderr, flush=True)


__all__ = [
    "CachedTargets",
    "TeacherCache",
    "build_teacher_cache",
    "cache_key",
    "ensure_teacher_cache",
    "examples_fingerprint",
    "full_topk_logp",
    "n_targets",
    "teacher_fingerprint",
    "teacher_topk",
    "tokenizer_fingerprint",
]
