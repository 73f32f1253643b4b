"""llama.cpp backend (``llama-cpp-python``, the ``gguf`` extra): a ``.gguf`` file decoded by llama.cpp.

llama.cpp keeps the KV cache inside its context: ``reset`` + ``eval(prompt)`` prefills, each
``eval([token])`` appends one token, and the logits of the last evaluated position are read from
``Llama.scores`` (only that row is kept when ``logits_all`` is off, which saves a
``n_ctx × vocab`` float array). Token choice and log-probabilities are the base class's, from those
logits, so greedy answers and the cascade's confidence mean the same as with the torch engine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from distilltune.errors import UserError
from distilltune.inference.backends.sequential import SequentialEngine

INSTALL_HINT = (
    "pip install 'distilltune[gguf]' (or `make install-gguf`; llama-cpp-python builds llama.cpp from "
    "source with cmake: minutes on a small machine)"
)


def require_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise UserError(f"--backend llama.cpp needs llama-cpp-python: {INSTALL_HINT}") from None
    return llama_cpp


def gguf_context_length(path: Path) -> int | None:
    """``<arch>.context_length`` from the file's metadata (memory-mapped; no tensor is read)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    for key, field in reader.fields.items():
        if key.endswith(".context_length") and field.data:
            return int(field.parts[field.data[0]][0])
    return None


class LlamaCppEngine(SequentialEngine):
    backend = "llama.cpp"

    def __init__(
        self,
        gguf: Path,
        stop_ids: list[int],
        *,
        threads: int | None = None,
        n_ctx: int | None = None,
        **kw,
    ):
        super().__init__(stop_ids, **kw)
        llama_cpp = require_llama_cpp()
        if not gguf.is_file():
            raise UserError(f"{gguf}: GGUF file not found")
        threads = threads or int(os.environ.get("DISTILLTUNE_THREADS", "0")) or len(os.sched_getaffinity(0))
        self.max_context = n_ctx or min(gguf_context_length(gguf) or 2048, 4096)
        self.llm = llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=self.max_context,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=False,
            verbose=False,
        )

    def _last_logits(self) -> np.ndarray:
        return np.array(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float32)

    def _prefill(self, prompt_ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(list(prompt_ids))
        return self._last_logits()

    def _decode(self, token: int) -> np.ndarray:
        self.llm.eval([token])
        return self._last_logits()
