"""The model to export: loaded in float32 as a plain transformers model, adapters folded in first.

Deployment runtimes (llama.cpp, ONNX Runtime) know nothing about PEFT, so a LoRA / IA3 run is merged
into its base before anything is written; adapters that add computation no weight matrix can absorb
(bottleneck, prefix tuning) cannot be exported and say so.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from distilltune.errors import UserError


@dataclass
class Source:
    model: nn.Module
    tokenizer: object
    ref: str
    kind: str  # Loaded.kind of the reference
    merged: str | None  # the adapter type folded into the base, if any


def load_source(ref: str, teacher: str | None = None) -> Source:
    from distilltune.models import load_model
    from distilltune.models.resolve import MERGEABLE, peft_types

    loaded = load_model(ref, teacher=teacher, dtype="float32", merge=False)  # merged below, by type
    model, merged = loaded.model, None
    types = peft_types(model)
    if types:
        if not types <= set(MERGEABLE):
            raise UserError(
                f"{ref}: a {'/'.join(sorted(types))} adapter cannot be merged into its base, so it cannot be "
                f"exported; only {' and '.join(MERGEABLE)} adapters can (or export a fully fine-tuned run)"
            )
        model = model.merge_and_unload()
        merged = "/".join(sorted(types))
    elif loaded.kind == "adapter":
        raise UserError(
            f"{ref}: a distilltune bottleneck adapter adds layers no weight matrix can absorb; it cannot be "
            "exported (train with LoRA or full fine-tuning to deploy outside Python)"
        )
    model.eval()
    model.config.use_cache = True
    return Source(model, loaded.tokenizer, ref, loaded.kind, merged)


def fp32_bytes(model: nn.Module) -> int:
    """Bytes the model's weights take as float32 safetensors (tied tensors counted once, as saved)."""
    seen: set[int] = set()
    total = 0
    for t in model.state_dict().values():
        key = t.untyped_storage().data_ptr()
        if key in seen or not t.is_floating_point():
            continue
        seen.add(key)
        total += t.numel() * 4
    return total
