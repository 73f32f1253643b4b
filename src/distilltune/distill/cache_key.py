"""The teacher cache's key: content hashes of everything that determines the stored numbers.

The teacher's weight and config files (hashed without loading the model, memoised by size and
mtime), the tokenizer (vocabulary, merges, chat template), the assembled example token ids and labels
(so data, system prompt, retrieved context, template and truncation all count), k, the positions, the
teacher dtype and the cache format version. A cache built from anything else has another key and is
never read; ``compare`` reuses one cache for every strategy because their keys agree.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distilltune.data.chat import Example
from distilltune.distill.cache_format import FORMAT_VERSION
from distilltune.errors import UserError
from distilltune.io import atomic_write_json


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
    from distilltune.models.resolve import adapter_base_ref, resolve_path
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
                if cfg.get("base_model_name_or_path"):
                    # The recorded path when it exists (the keys written before portable references
                    # stay valid); its portable reference only when it is gone (a miss, never a wrong hit).
                    h.update(fp(adapter_base_ref(path)).encode())
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
