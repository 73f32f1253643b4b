"""One small interface over the source model and its exports, so the round trip compares like with like.

``greedy`` decodes one prompt with the runtime's own KV cache (what a deployment does) and
``logits`` scores a whole sequence in one pass (teacher forcing, for per-position agreement).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


class TorchLM:
    """A transformers model: the source, or a GGUF reloaded through transformers' GGUF loader."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer

    def greedy(self, prompt: list[int], stop_ids: list[int], max_new_tokens: int) -> list[int]:
        from distilltune.models.generate import generate_ids

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop_ids[0]
        ids, _, _, _ = generate_ids(self.model, [prompt], stop_ids, pad, max_new_tokens, 0.0)
        return ids[0]

    @torch.inference_mode()
    def logits(self, ids: list[int]) -> np.ndarray:
        return self.model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


class OnnxLM:
    """An exported ONNX graph driven by ONNX Runtime, feeding its ``present`` outputs back as ``past``."""

    def __init__(self, directory: Path, threads: int | None = None):
        from distilltune.export.onnx_export import ONNX_FILE, session

        self.io = json.loads((directory / "onnx_io.json").read_text())
        self.session = session(directory / ONNX_FILE, threads)
        self.past_names = self.io["inputs"][3:]

    def _empty_past(self) -> dict[str, np.ndarray]:
        shape = (1, self.io["kv_heads"], 0, self.io["head_dim"])
        return {n: np.zeros(shape, dtype=np.float32) for n in self.past_names}

    def _run(self, ids: list[int], past: dict[str, np.ndarray], start: int):
        total = start + len(ids)
        feed = {
            "input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, total), dtype=np.int64),
            "position_ids": np.arange(start, total, dtype=np.int64)[None],
            **past,
        }
        out = self.session.run(None, feed)
        return out[0][0], dict(zip(self.past_names, out[1:], strict=True))

    def logits(self, ids: list[int]) -> np.ndarray:
        return self._run(ids, self._empty_past(), 0)[0]

    def greedy(self, prompt: list[int], stop_ids: list[int], max_new_tokens: int) -> list[int]:
        logits, past = self._run(prompt, self._empty_past(), 0)
        out: list[int] = []
        pos = len(prompt)
        for _ in range(max_new_tokens):
            nxt = int(np.argmax(logits[-1]))
            out.append(nxt)
            if nxt in stop_ids:
                break
            logits, past = self._run([nxt], past, pos)
            pos += 1
        return out
