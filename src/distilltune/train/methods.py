"""Fine-tuning methods: full, LoRA (rsLoRA/DoRA), prefix tuning and IA3 via PEFT, bottleneck adapters.

``check_method`` validates a method against the model's architecture before any weight is loaded:
the model is instantiated on the meta device from its config (no memory, no weights), and target
module names are matched the way PEFT matches them (exact name or ``.name`` suffix), so a typo in
``lora.target_modules`` is reported together with every other config problem. ``apply_method`` then
wraps the real model and leaves exactly the method's parameters trainable.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from distilltune.errors import Problem
from distilltune.models.bottleneck import DEFAULT_TARGETS, add_bottleneck_adapters, matching_modules
from distilltune.train.config import FinetuneConfig

PEFT_METHODS = ("lora", "prefix", "ia3")


def _config_for(ref: str, teacher: str | None):
    """(HF config, PEFT type of an adapter reference or None) for ``ref``, without loading weights."""
    from transformers import AutoConfig

    from distilltune.models.bundled import COMPLETE_MARKER, distilltune_home, gguf_path
    from distilltune.models.resolve import adapter_base_ref, resolve_path
    from distilltune.models.spec import parse_student_spec
    from distilltune.models.width import width_config

    spec = parse_student_spec(ref)
    if spec:
        cfg, _ = _config_for(spec.bound(teacher).base, None)
        layers = spec.layer_choice(cfg.num_hidden_layers)
        cfg.num_hidden_layers = len(layers)
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = [cfg.layer_types[i] for i in layers]
        if spec.prunes_width:
            cfg = width_config(cfg, spec.mlp, spec.heads)
        return cfg, None
    kind, path = resolve_path(ref)
    if kind == "builtin":
        cached = distilltune_home() / "models" / ref
        if (cached / COMPLETE_MARKER).exists():
            return AutoConfig.from_pretrained(str(cached)), None
        gg = gguf_path(ref)
        return AutoConfig.from_pretrained(str(gg.parent), gguf_file=gg.name), None
    if kind == "gguf":
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name), None
    if kind == "adapter":
        acfg = json.loads((path / "adapter_config.json").read_text())
        cfg, _ = _config_for(adapter_base_ref(path), teacher)
        return cfg, str(acfg.get("peft_type", ""))
    return AutoConfig.from_pretrained(str(path) if path else ref), None


def meta_model(ref: str, teacher: str | None = None) -> tuple[nn.Module, str | None]:
    """The model's architecture on the meta device (no weights) and its adapter type, if any."""
    from transformers import AutoModelForCausalLM

    cfg, peft_type = _config_for(ref, teacher)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return model, peft_type


SUPPORTED_LAYERS = ("Linear", "Embedding", "Conv1D", "Conv1d", "Conv2d")


def _check_targets(model: nn.Module, targets: list[str], key: str, linear_only: bool) -> list[Problem]:
    if targets == ["all-linear"] and not linear_only:
        return []
    problems = []
    modules = dict(model.named_modules())
    leaf_names = sorted(
        {n.rsplit(".", 1)[-1] for n, mod in modules.items() if type(mod).__name__ == "Linear" and n}
    )
    for t, names in matching_modules(model, targets).items():
        if not names:
            problems.append(
                Problem(
                    "<config>",
                    f"{t!r} matches no module of {type(model).__name__} (its linear layers: {', '.join(leaf_names)})",
                    field=key,
                )
            )
            continue
        allowed = ("Linear",) if linear_only else SUPPORTED_LAYERS
        wrong = sorted({type(modules[n]).__name__ for n in names} - set(allowed))
        if wrong:
            problems.append(
                Problem("<config>", f"{t!r} matches {', '.join(wrong)} modules, not linear layers", field=key)
            )
    return problems


def check_method(cfg: FinetuneConfig, model: nn.Module, base_peft_type: str | None) -> list[Problem]:
    """Every reason ``cfg.method`` cannot be applied to ``model`` (a meta-device skeleton)."""
    problems: list[Problem] = []
    if base_peft_type and base_peft_type not in ("LORA", "IA3"):
        problems.append(
            Problem(
                "<config>",
                f"{cfg.model!r} is a {base_peft_type} adapter, which cannot be merged into its base; "
                "fine-tune its base model instead",
                field="model",
            )
        )
    if cfg.method == "lora":
        problems += _check_targets(model, cfg.lora.target_modules, "lora.target_modules", linear_only=False)
    elif cfg.method == "ia3":
        problems += _check_targets(model, cfg.ia3.target_modules, "ia3.target_modules", linear_only=True)
        extra = sorted(set(cfg.ia3.feedforward()) - set(cfg.ia3.target_modules))
        if extra:
            problems.append(
                Problem(
                    "<config>", f"{extra} must also be in ia3.target_modules", field="ia3.feedforward_modules"
                )
            )
    elif cfg.method == "adapter":
        targets = cfg.adapter.target_modules or DEFAULT_TARGETS[cfg.adapter.kind]
        problems += _check_targets(model, targets, "adapter.target_modules", linear_only=True)
    elif cfg.method == "prefix":
        mcfg = model.config
        if not all(hasattr(mcfg, a) for a in ("num_hidden_layers", "num_attention_heads", "hidden_size")):
            problems.append(
                Problem(
                    "<config>",
                    f"prefix tuning needs a decoder with attention; {type(model).__name__} has none",
                    field="method",
                )
            )
        if cfg.train.gradient_checkpointing:
            problems.append(
                Problem(
                    "<config>",
                    "prefix tuning does not work with gradient checkpointing; set it false",
                    field="train.gradient_checkpointing",
                )
            )
    return problems


def peft_config(cfg: FinetuneConfig):
    from peft import IA3Config, LoraConfig, PrefixTuningConfig, TaskType

    if cfg.method == "lora":
        targets = cfg.lora.target_modules
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules="all-linear" if targets == ["all-linear"] else list(targets),
            use_rslora=cfg.lora.use_rslora,
            use_dora=cfg.lora.use_dora,
        )
    if cfg.method == "prefix":
        return PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=cfg.prefix.num_virtual_tokens,
            prefix_projection=cfg.prefix.prefix_projection,
        )
    if cfg.method == "ia3":
        return IA3Config(
            task_type=TaskType.CAUSAL_LM,
            target_modules=list(cfg.ia3.target_modules),
            feedforward_modules=cfg.ia3.feedforward(),
        )
    raise ValueError(cfg.method)


def merge_if_adapter(model: nn.Module) -> nn.Module:
    """A loaded LoRA/IA3 model becomes a plain model (its adapter merged) before a new method."""
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        return model.merge_and_unload()
    return model


def apply_method(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """Wrap ``model`` for ``cfg.method``; exactly the method's parameters require gradients."""
    model = merge_if_adapter(model)
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if cfg.method == "adapter":
        a = cfg.adapter
        return add_bottleneck_adapters(model, a.kind, a.reduction_factor, a.non_linearity, a.target_modules)
    from peft import get_peft_model

    for p in model.parameters():
        p.requires_grad_(False)
    return get_peft_model(model, peft_config(cfg))


def trainable_line(model: nn.Module) -> str:
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.3g}%)"
