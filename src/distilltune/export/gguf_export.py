"""Write a transformers Llama-family model as a GGUF file for llama.cpp, Ollama and LM Studio.

Two conventions differ between the formats and both are handled here:

- **Rotary layout.** transformers' Llama rotates the two *halves* of each head's query/key vector;
  llama.cpp rotates *adjacent pairs*. llama.cpp's own converter therefore reorders the rows of
  ``q_proj`` / ``k_proj`` within each head (pair ``(i, i + d/2)`` → rows ``2i, 2i+1``), and every GGUF
  reader that goes back to transformers (including ``from_pretrained(gguf_file=...)``) undoes it. We
  write that same order, so the file is a standard llama.cpp file in both directions.
- **Shapes.** GGUF lists dimensions fastest-first; ``gguf.GGUFWriter`` reverses numpy's order for us,
  and block-quantized rows run along the input dimension, as llama.cpp's matmuls expect.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from distilltune.errors import UserError
from distilltune.export.gguf_vocab import GGUFVocab, write_vocab
from distilltune.export.kquants import plan_q4_k_m, quantize_tensor

QUANT_FILE_TYPES = {"none": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_k_m": "MOSTLY_Q4_K_M"}


@dataclass
class GGUFResult:
    path: Path
    tensor_types: dict[str, int]  # GGML type name → number of tensors written with it
    warnings: list[str] = field(default_factory=list)


def llama_hparams(cfg) -> dict:
    """The architecture numbers llama.cpp needs, after checking this is a Llama it can run as is."""
    if getattr(cfg, "model_type", None) != "llama":
        raise UserError(
            f"GGUF export writes Llama-family models; this model is {getattr(cfg, 'model_type', '?')!r} "
            "(export it as --format onnx or --format safetensors instead)"
        )
    unsupported = [k for k in ("attention_bias", "mlp_bias") if getattr(cfg, k, False)] + (
        [f"hidden_act={cfg.hidden_act}"] if getattr(cfg, "hidden_act", "silu") != "silu" else []
    )
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", None):
        unsupported.append(f"rope_type={rope_type}")
    if unsupported:
        raise UserError(f"GGUF export does not support this Llama variant: {', '.join(unsupported)}")
    heads = cfg.num_attention_heads
    return {
        "n_layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
        "ffn": cfg.intermediate_size,
        "heads": heads,
        "kv_heads": getattr(cfg, "num_key_value_heads", None) or heads,
        "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
        "context": cfg.max_position_embeddings,
        "rope_theta": float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))),
        "rms_eps": float(cfg.rms_norm_eps),
        "tied": bool(getattr(cfg, "tie_word_embeddings", False)),
    }


def to_pair_rotary_order(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder q/k projection rows from transformers' half-split rotary layout to llama.cpp's pairs."""
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: nn.Module, hp: dict):
    """Yield (gguf name, float32 array in llama.cpp's layout) for every weight of ``model``."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, hp["n_layers"])
    unknown = []
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and hp["tied"]:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            unknown.append(hf_name)
            continue
        arr = t.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            arr = to_pair_rotary_order(arr, hp["heads"])
        elif hf_name.endswith("k_proj.weight"):
            arr = to_pair_rotary_order(arr, hp["kv_heads"])
        yield name, np.ascontiguousarray(arr)
    if unknown:
        raise UserError(f"GGUF export: no llama.cpp name for {', '.join(unknown[:5])}")


def _write_hparams(writer, hp: dict, name: str, quant: str) -> None:
    import gguf

    writer.add_name(name)
    writer.add_context_length(hp["context"])
    writer.add_embedding_length(hp["hidden"])
    writer.add_block_count(hp["n_layers"])
    writer.add_feed_forward_length(hp["ffn"])
    writer.add_head_count(hp["heads"])
    writer.add_head_count_kv(hp["kv_heads"])
    writer.add_rope_dimension_count(hp["head_dim"])
    if hp["head_dim"] * hp["heads"] != hp["hidden"]:
        writer.add_key_length(hp["head_dim"])
        writer.add_value_length(hp["head_dim"])
    writer.add_rope_freq_base(hp["rope_theta"])
    writer.add_layer_norm_rms_eps(hp["rms_eps"])
    writer.add_file_type(int(getattr(gguf.LlamaFileType, QUANT_FILE_TYPES[quant])))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def write_gguf(model: nn.Module, vocab: GGUFVocab, path: Path, quant: str, name: str) -> GGUFResult:
    """Write ``model`` with ``vocab`` to ``path`` at ``quant`` (none = float32 everywhere)."""
    import gguf

    hp = llama_hparams(model.config)
    tensors = list(gguf_tensors(model, hp))
    n_vocab = dict(tensors)["token_embd.weight"].shape[0]
    if len(vocab.tokens) != n_vocab:
        raise UserError(f"vocabulary has {len(vocab.tokens)} entries for {n_vocab} embedding rows")
    plan = plan_q4_k_m([n for n, _ in tensors], hp["n_layers"]) if quant == "q4_k_m" else {}
    writer = gguf.GGUFWriter(str(path), "llama")
    _write_hparams(writer, hp, name, quant)
    writer.add_vocab_size(n_vocab)
    write_vocab(writer, vocab)
    counts: Counter[str] = Counter()
    fallbacks: Counter[str] = Counter()
    for tname, arr in tensors:
        data, qtype, wanted = quantize_tensor(arr, quant, plan.get(tname))
        if wanted is not None and wanted != qtype:
            fallbacks[f"{wanted.name}→{qtype.name}"] += 1
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(tname, data)
        else:
            writer.add_tensor(tname, data, raw_dtype=qtype)
        counts[qtype.name] += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    warnings = [
        f"{n} tensor(s) {k}: their rows are not a multiple of the block size (llama.cpp does the same)"
        for k, n in sorted(fallbacks.items())
    ]
    return GGUFResult(path, dict(sorted(counts.items())), warnings)
