"""The teacher top-k cache: run the teacher once, store its answer-token distributions, memory-map them.

Cached KD is the default mode because the teacher's forward pass is the most expensive part of an
online KD step and is identical in every epoch and for every strategy of a comparison. The teacher
runs once over the *assembled* training examples (exactly the token ids the student trains on) and
stores, per distilled position (row-major; the answer positions ``labels[1:] != IGNORE_INDEX``, or
every position when distilling at the prompt too — ``forward.kd_mask``):

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

The cache key hashes everything that determines the stored numbers: the teacher's weight files,
the tokenizer (vocabulary, merges, chat template), the assembled example token ids and labels (so
data, system prompt, retrieved context, template and truncation all count), k, the positions, the
teacher dtype and the format version. ``compare`` therefore reuses one cache for every strategy, and a cache
built from anything else is never read (its key differs). At training time the shards are
memory-mapped (numpy ``memmap`` on the safetensors data) and the teacher is not loaded at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from distilltune.data.chat import IGNORE_INDEX, Example, collate
from distilltune.errors import UserError
from distilltune.io import atomic_write_bytes, atomic_write_json, file_lock

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
MANIFEST = "manifest.json"
INDEX = "index.safetensors"
_NP_DTYPES = {"F16": np.float16, "F32": np.float32, "U16": np.uint16, "I32": np.int32, "I64": np.int64}


# --- fingerprints -----------------------------------------------------------------------------------


def _sha256_file(path: Path, memo: dict) -> str:
    st = path.stat()
    rec = memo.get(str(path.resolve()))
    if rec and rec["size"] == st.st_size and rec["mtime_ns"] == st.st_mtime_ns:
        return rec["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    memo[str(path.resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    return digest


# Config fields that are sets written as lists: PEFT saves target_modules in set order, which differs
# from run to run, so identical adapters would otherwise get different cache keys.
_SET_FIELDS = ("target_modules", "modules_to_save", "exclude_modules")


def _config_digest(path: Path) -> str:
    """Hash of a JSON config's content, independent of key order and of set-like fields' order."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError):
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if isinstance(data, dict):
        for key in _SET_FIELDS:
            if isinstance(data.get(key), list):
                data[key] = sorted(data[key], key=str)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_CONFIG_NAMES = ("config.json", "adapter_config.json", "generation_config.json")


def _dir_files(d: Path) -> list[Path]:
    return sorted(
        p
        for p in d.iterdir()
        if p.is_file()
        and (p.suffix in _WEIGHT_SUFFIXES or p.name in _CONFIG_NAMES)
        and p.name != "training_args.bin"
    )


def teacher_fingerprint(ref: str, memo_path: Path | None = None) -> str:
    """A content hash of the teacher's weight and config files, computed without loading the model.

    File hashes are memoised by (path, size, mtime) in ``memo_path`` so re-runs cost a stat per file.
    Hub ids (online only) are identified by name.
    """
    from distilltune.models.bundled import BUILTIN_MODELS, gguf_path
    from distilltune.models.resolve import resolve_path
    from distilltune.models.spec import parse_student_spec

    memo: dict = {}
    if memo_path is not None and memo_path.is_file():
        with contextlib.suppress(ValueError, OSError):
            memo = json.loads(memo_path.read_text())

    def fp(r: str) -> str:
        spec = parse_student_spec(r)
        if spec:
            key = f"spec:{spec.body()}:{fp(spec.base)}"
            if spec.importance is not None:  # the scores choose the channels: hash their content too
                if not Path(spec.importance).is_file():
                    raise UserError(f"{r}: importance file {spec.importance} not found")
                key += ":" + _sha256_file(Path(spec.importance), memo)
            return hashlib.sha256(key.encode()).hexdigest()
        kind, path = resolve_path(r)
        h = hashlib.sha256(f"{kind}\0".encode())
        if kind == "builtin":
            h.update(BUILTIN_MODELS[r]["gguf"].encode())
            h.update(_sha256_file(gguf_path(r), memo).encode())
        elif kind == "gguf":
            h.update(_sha256_file(path, memo).encode())
        elif kind == "hub":
            h.update(r.encode())
        else:
            files = _dir_files(path)
            if not files:
                raise UserError(f"{path}: no weight files to fingerprint the teacher")
            for p in files:
                digest = _config_digest(p) if p.suffix == ".json" else _sha256_file(p, memo)
                h.update(p.name.encode() + b"\0" + digest.encode())
            if kind == "adapter":
                cfg = json.loads((path / "adapter_config.json").read_text())
                base = cfg.get("base_model_name_or_path")
                if base:
                    h.update(fp(base).encode())
        return h.hexdigest()

    digest = fp(ref)
    if memo_path is not None:
        with contextlib.suppress(OSError):
            atomic_write_json(memo_path, memo)
    return digest


def tokenizer_fingerprint(tokenizer) -> str:
    """Vocabulary, merges, normalisation, special tokens and chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    h.update(json.dumps(tokenizer.all_special_tokens).encode())
    return h.hexdigest()


def examples_fingerprint(examples: Sequence[Example]) -> str:
    """The assembled training data, exactly as the student sees it (ids and labels)."""
    h = hashlib.sha256(str(len(examples)).encode())
    for ex in examples:
        h.update(np.asarray(ex.input_ids, dtype=np.int64).tobytes())
        h.update(b"|")
        h.update(np.asarray(ex.labels, dtype=np.int64).tobytes())
        h.update(b"#")
    return h.hexdigest()


def cache_key(
    teacher_fp: str,
    tokenizer_fp: str,
    data_fp: str,
    k: int,
    dtype: str = "float32",
    positions: str = "answer",
) -> str:
    fields = {
        "v": FORMAT_VERSION,
        "teacher": teacher_fp,
        "tok": tokenizer_fp,
        "data": data_fp,
        "k": k,
        "dtype": dtype,
    }
    if positions != "answer":  # answer-position caches keep the keys they had before positions existed
        fields["positions"] = positions
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def n_targets(ex: Example, positions: str = "answer") -> int:
    """Distilled positions of one example: those whose *next* token is labelled (``answer``), or
    every position that has a next token (``all``)."""
    if positions == "all":
        return max(len(ex.input_ids) - 1, 0)
    return sum(1 for x in ex.labels[1:] if x != IGNORE_INDEX)


# --- reading --------------------------------------------------------------------------------------------


def _memmap_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict]:
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
        index, _ = _memmap_safetensors(self.path / INDEX)
        self._shard_of = np.asarray(index["shard"], dtype=np.int64)
        self._start = np.asarray(index["start"], dtype=np.int64)
        self.counts = np.asarray(index["count"], dtype=np.int64)
        self._shards = [_memmap_safetensors(self.path / name)[0] for name in self.manifest["shards"]]

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


# --- building -------------------------------------------------------------------------------------------


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
    vocab = None
    t0 = time.perf_counter()
    masses: list[np.ndarray] = []
    label_nll_sum, label_n = 0.0, 0
    names = []
    for si, (a, b) in enumerate(plan):
        name = f"shard-{si:05d}.safetensors"
        names.append(name)
        path = out_dir / name
        if path.is_file():
            arrays, meta = _memmap_safetensors(path)
            if meta.get("key") == key and meta.get("range") == f"{a}:{b}":
                masses.append(-np.expm1(arrays["tail"].astype(np.float32)))
                label_nll_sum += float(meta.get("label_nll_sum", 0.0))
                label_n += int(meta.get("label_n", 0))
                vocab = vocab or int(meta["vocab"])
                continue
        part = list(examples[a:b])
        per_ex: dict[int, tuple] = {}
        shard_nll, shard_n = 0.0, 0
        for bi, idx in enumerate(_batches(len(part), batch_size, [len(e.input_ids) for e in part])):
            if log and bi and bi % 20 == 0:
                log(f"teacher cache: shard {si + 1}/{len(plan)}, {bi * batch_size} of {len(part)} examples")
            batch = collate([part[i] for i in idx], pad_id)
            vals, ids, tail, lab = teacher_topk(model, batch, k, positions=positions)
            rows = [counts[a + i] for i in idx]
            for i, v, d, t in zip(idx, vals.split(rows), ids.split(rows), tail.split(rows), strict=True):
                per_ex[i] = (v, d, t)
            shard_nll += float(-lab.sum())
            shard_n += int(lab.numel())
        label_nll_sum += shard_nll
        label_n += shard_n
        vocab = vocab or _vocab_size(model)
        id_dtype = torch.uint16 if vocab <= 1 << 16 else torch.int32
        logp = torch.cat([per_ex[i][0] for i in range(len(part))]).to(torch.float16)
        tail = torch.cat([per_ex[i][2] for i in range(len(part))]).to(torch.float16)
        tensors = {
            "logp": logp[:, 1:].contiguous(),  # the top-1 is recovered on read (module docstring)
            "ids": torch.cat([per_ex[i][1] for i in range(len(part))]).to(id_dtype).contiguous(),
            "tail": tail.contiguous(),
        }
        meta = {
            "key": key,
            "range": f"{a}:{b}",
            "vocab": str(vocab),
            "label_nll_sum": repr(shard_nll),
            "label_n": str(shard_n),
        }
        atomic_write_bytes(path, safetensors_bytes(tensors, metadata=meta))
        masses.append(-np.expm1(tail.float().numpy()))
        if log:
            log(f"teacher cache: shard {si + 1}/{len(plan)} ({b} of {len(examples)} examples)")
    starts = np.zeros(len(counts), dtype=np.int64)
    shard_of = np.zeros(len(counts), dtype=np.int32)
    for si, (a, b) in enumerate(plan):
        shard_of[a:b] = si
        starts[a:b] = np.concatenate([[0], np.cumsum(counts[a:b])[:-1]]) if b > a else []
    atomic_write_bytes(
        out_dir / INDEX,
        safetensors_bytes(
            {
                "shard": torch.from_numpy(shard_of),
                "start": torch.from_numpy(starts),
                "count": torch.tensor(counts, dtype=torch.int64),
            }
        ),
    )
    mass = np.concatenate(masses) if masses else np.zeros(0)
    n_pos = int(sum(counts))
    shard_bytes = sum((out_dir / n).stat().st_size for n in names)
    manifest = {
        "format": FORMAT_VERSION,
        "key": key,
        "k": k,
        "positions": positions,
        "vocab_size": vocab,
        "ids_dtype": "uint16" if (vocab or 0) <= 1 << 16 else "int32",
        "n_examples": len(examples),
        "n_positions": n_pos,
        "shards": names,
        "payload_bytes_per_token": (k - 1) * 2 + 2 + k * (2 if (vocab or 0) <= 1 << 16 else 4),
        "file_bytes": shard_bytes,
        "file_bytes_per_token": round(shard_bytes / max(n_pos, 1), 2),
        "topk_mass": {
            "mean": round(float(mass.mean()), 4) if mass.size else None,
            "median": round(float(np.median(mass)), 4) if mass.size else None,
            "p10": round(float(np.percentile(mass, 10)), 4) if mass.size else None,
        },
        "teacher_answer_ce": round(label_nll_sum / label_n, 4) if label_n else None,
        "build_s": round(time.perf_counter() - t0, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(info or {}),
    }
    atomic_write_json(out_dir / MANIFEST, manifest)
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
