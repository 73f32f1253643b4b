"""llama.cpp backend (``llama-cpp-python``, the ``gguf`` extra): a ``.gguf`` file decoded by llama.cpp.

llama.cpp keeps the KV cache inside its context: ``reset`` + ``eval(prompt)`` prefills, each
``eval([token])`` appends one token, and the logits of the last evaluated position are read with
``llama_get_logits_ith(ctx, -1)`` (with ``logits_all`` off, llama-cpp-python 0.3 no longer copies them
into ``Llama.scores``; asking for every position's logits would cost an ``n_ctx × vocab`` array). Token choice and log-probabilities are the base class's, from those
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


def gguf_layout(path: Path) -> tuple[int | None, bool]:
    """(``<arch>.context_length``, whether every tensor is f32) from the file's header (memory-mapped)."""
    from gguf import GGMLQuantizationType, GGUFReader

    reader = GGUFReader(str(path))
    ctx = None
    for key, field in reader.fields.items():
        if key.endswith(".context_length") and field.data:
            ctx = int(field.parts[field.data[0]][0])
    all_f32 = all(t.tensor_type == GGMLQuantizationType.F32 for t in reader.tensors)
    return ctx, all_f32


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
        self._get_logits_ith = llama_cpp.llama_get_logits_ith
        if not gguf.is_file():
            raise UserError(f"{gguf}: GGUF file not found")
        threads = threads or int(os.environ.get("DISTILLTUNE_THREADS", "0")) or len(os.sched_getaffinity(0))
        ctx_len, all_f32 = gguf_layout(gguf)
        self.max_context = n_ctx or min(ctx_len or 2048, 4096)
        # llama.cpp keeps its KV cache in f16 by default; that alone moves logits by ~1e-3 and flips
        # near-tied greedy choices, so an unquantized (f32) file gets an f32 cache and decodes like torch.
        kv = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if all_f32 else {}
        self.llm = llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=self.max_context,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=False,
            verbose=False,
            **kv,
        )

        self._n_vocab = self.llm.n_vocab()

    def _last_logits(self) -> np.ndarray:
        ptr = self._get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).copy()

    def _prefill(self, prompt_ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(list(prompt_ids))
        return self._last_logits()

    def _decode(self, token: int) -> np.ndarray:
        self.llm.eval([token])
        return self._last_logits()

    def _close(self) -> None:
        # Freed now rather than at interpreter exit, where llama-cpp-python's finalizer can fail noisily.
        self.llm.close()
