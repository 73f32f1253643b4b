"""ONNX Runtime backend: the directory ``distilltune export --format onnx`` writes, decoded with its KV cache.

The graph (``onnx_io.json`` names it) takes ``input_ids``, ``attention_mask``, ``position_ids`` and
``past.<layer>.key|value`` and returns ``logits`` and ``present.<layer>.key|value``: the prompt runs
once from an empty cache, then each new token runs alone with the previous step's ``present`` fed
back as ``past`` (one graph for both). int8 exports (dynamic quantization) load the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from distilltune.errors import UserError
from distilltune.inference.backends.sequential import SequentialEngine

ONNX_FILE = "model.onnx"
IO_FILE = "onnx_io.json"
INSTALL_HINT = "pip install 'distilltune[onnx]' (onnxruntime, onnx, onnxscript)"


def is_onnx_dir(path: Path) -> bool:
    return path.is_dir() and (path / ONNX_FILE).is_file() and (path / IO_FILE).is_file()


def ort_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session (``threads`` intra-op threads; default every core we may use)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError(f"the onnx backend needs onnxruntime: {INSTALL_HINT}") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = (
        threads or int(os.environ.get("DISTILLTUNE_THREADS", "0")) or len(os.sched_getaffinity(0))
    )
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxCausalLM:
    """An exported graph with its KV cache as plain arrays (batch 1)."""

    def __init__(self, directory: Path, threads: int | None = None):
        if not is_onnx_dir(directory):
            raise UserError(f"{directory}: not an ONNX export (expected {ONNX_FILE} and {IO_FILE})")
        self.io = json.loads((directory / IO_FILE).read_text())
        self.session = ort_session(directory / ONNX_FILE, threads)
        self.past_names = self.io["inputs"][3:]

    def empty_past(self) -> dict[str, np.ndarray]:
        shape = (1, self.io["kv_heads"], 0, self.io["head_dim"])
        return {n: np.zeros(shape, dtype=np.float32) for n in self.past_names}

    def run(self, ids: list[int], past: dict[str, np.ndarray], start: int):
        """Logits ``[len(ids), vocab]`` for ``ids`` at positions ``start..``, and the grown cache."""
        total = start + len(ids)
        feed = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, total), dtype=np.int64),
            "position_ids": np.arange(start, total, dtype=np.int64)[None],
            **past,
        }
        out = self.session.run(None, feed)
        return out[0][0], dict(zip(self.past_names, out[1:], strict=True))


class OnnxEngine(SequentialEngine):
    backend = "onnx"

    def __init__(self, directory: Path, stop_ids: list[int], *, threads: int | None = None, **kw):
        super().__init__(stop_ids, **kw)
        self.lm = OnnxCausalLM(directory, threads)
        cfg_file = directory / "config.json"
        if cfg_file.is_file():
            self.max_context = json.loads(cfg_file.read_text()).get("max_position_embeddings")
        self._past: dict[str, np.ndarray] = {}
        self._pos = 0

    def _prefill(self, prompt_ids: list[int]) -> np.ndarray:
        logits, self._past = self.lm.run(list(prompt_ids), self.lm.empty_past(), 0)
        self._pos = len(prompt_ids)
        return logits[-1]

    def _decode(self, token: int) -> np.ndarray:
        logits, self._past = self.lm.run([token], self._past, self._pos)
        self._pos += 1
        return logits[-1]

    def score_answer(self, prompt_ids: list[int], answer_ids: list[int]) -> np.ndarray:
        """One pass over prompt + answer (no cache to keep): the rows predicting each answer token."""
        ids = list(prompt_ids) + list(answer_ids)
        logits = self.lm.run(ids, self.lm.empty_past(), 0)[0]
        return logits[len(prompt_ids) - 1 : len(ids) - 1]
