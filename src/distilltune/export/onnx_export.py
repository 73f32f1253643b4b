"""Export a causal LM to ONNX with a KV cache, optionally with int8 dynamic quantization.

``optimum-onnx`` is not on this project's package index and predates transformers 5, so the graph is
exported with ``torch.onnx`` (the dynamo exporter) around a thin wrapper that turns the model's cache
object into plain tensors: inputs ``input_ids``, ``attention_mask``, ``position_ids`` and
``past.<layer>.key|value`` (batch, kv_heads, past_len, head_dim); outputs ``logits`` and
``present.<layer>.key|value``. One graph serves prefill (past_len 0) and decoding (1 new token).
Attention is exported in its eager form; ONNX Runtime fuses it at load time.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from distilltune.errors import UserError

ONNX_FILE = "model.onnx"
INSTALL_HINT = "pip install 'distilltune[onnx]' (onnxruntime, onnx, onnxscript)"


def require_onnx(what: str = "ONNX export") -> None:
    missing = []
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise UserError(f"{what} needs {', '.join(missing)}: {INSTALL_HINT}")


@dataclass
class OnnxResult:
    path: Path
    warnings: list[str] = field(default_factory=list)


class _CacheAsTensors(nn.Module):
    """The model with its KV cache as flat tensor inputs/outputs, which is what ONNX can carry."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.n_layers = model.config.num_hidden_layers
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.24

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.n_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{self.cache_kw: cache},
        )
        new = getattr(out, self.cache_kw)
        flat = [out.logits]
        for layer in new.layers[: self.n_layers]:
            flat += [layer.keys, layer.values]
        return tuple(flat)


def kv_shape(cfg) -> tuple[int, int]:
    heads = cfg.num_attention_heads
    return (
        getattr(cfg, "num_key_value_heads", None) or heads,
        getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
    )


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    kv = [f"{i}.{t}" for i in range(n_layers) for t in ("key", "value")]
    past = [f"past.{n}" for n in kv]
    present = [f"present.{n}" for n in kv]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def _export_fp32(model: nn.Module, path: Path) -> None:
    wrapper = _CacheAsTensors(model).eval()
    cfg = model.config
    n_kv, head_dim = kv_shape(cfg)
    past_len, seq = 3, 4  # sample sizes; every axis below is dynamic
    past = tuple(torch.zeros(1, n_kv, past_len, head_dim) for _ in range(2 * wrapper.n_layers))
    ids = torch.zeros(1, seq, dtype=torch.long)
    mask = torch.ones(1, past_len + seq, dtype=torch.long)
    pos = torch.arange(past_len, past_len + seq)[None]
    batch, step, total = (torch.export.Dim(n) for n in ("batch", "seq", "total"))
    past_dim = torch.export.Dim("past")
    shapes = (
        {0: batch, 1: step},
        {0: batch, 1: total},
        {0: batch, 1: step},
        tuple({0: batch, 2: past_dim} for _ in past),
    )
    names_in, names_out = io_names(wrapper.n_layers)
    big = sum(p.numel() for p in model.parameters()) * 4 > 1.8 * 2**30  # protobuf's 2 GiB limit
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (ids, mask, pos, *past),
            str(path),
            input_names=names_in,
            output_names=names_out,
            dynamic_shapes=shapes,
            dynamo=True,
            external_data=big,
            optimize=True,
            verbose=False,
        )


def export_onnx(model: nn.Module, out_dir: Path, quant: str) -> OnnxResult:
    """Write ``out_dir/model.onnx`` (+ ``onnx_io.json``); ``quant="int8"`` stores int8 weights."""
    require_onnx()
    previous = getattr(model.config, "_attn_implementation", None)
    model.set_attn_implementation("eager")
    try:
        if quant == "int8":
            tmp = out_dir / ".fp32"
            tmp.mkdir()
            _export_fp32(model, tmp / ONNX_FILE)
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(tmp / ONNX_FILE), str(out_dir / ONNX_FILE), weight_type=QuantType.QInt8)
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
        else:
            _export_fp32(model, out_dir / ONNX_FILE)
    finally:
        if previous:
            model.set_attn_implementation(previous)
    n_kv, head_dim = kv_shape(model.config)
    names_in, names_out = io_names(model.config.num_hidden_layers)
    meta = {"inputs": names_in, "outputs": names_out, "kv_heads": n_kv, "head_dim": head_dim, "quant": quant}
    (out_dir / "onnx_io.json").write_text(json.dumps(meta, indent=2) + "\n")
    return OnnxResult(out_dir / ONNX_FILE)


def session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session for an exported model (all cores unless told otherwise)."""
    require_onnx("running an ONNX export")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = (
        threads or int(os.environ.get("DISTILLTUNE_THREADS", "0")) or len(os.sched_getaffinity(0))
    )
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
