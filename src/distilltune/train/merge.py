"""Merge a LoRA / IA3 adapter into its base: a plain transformers model directory, no PEFT needed.

Bottleneck adapters and prefix tuning add computation that no weight matrix can absorb, so they
cannot be merged; that is reported as a clean error.
"""

from __future__ import annotations

import json
from pathlib import Path

from distilltune.errors import UserError
from distilltune.io import atomic_dir
from distilltune.models.resolve import MERGEABLE, run_artifact_dir

__all__ = ["MERGEABLE", "merge_adapter"]


def merge_adapter(adapter: str | Path, output: str | Path) -> Path:
    from distilltune.models import load_model

    src = run_artifact_dir(Path(adapter))
    cfg_file = src / "adapter_config.json"
    if not cfg_file.is_file():
        raise UserError(f"{adapter}: not an adapter directory (no adapter_config.json)")
    peft_type = str(json.loads(cfg_file.read_text()).get("peft_type", ""))
    if peft_type not in MERGEABLE:
        raise UserError(
            f"{src}: a {peft_type or 'unknown'} adapter cannot be merged into its base; only LoRA and IA3 can"
        )
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; choose another --output")
    loaded = load_model(str(src), merge=False)
    merged = loaded.model.merge_and_unload()
    merged.config.use_cache = True
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
    return out
