"""Classic bottleneck adapters (Houlsby 2019, Pfeiffer 2020), a small module of our own.

PEFT has no bottleneck adapters, and AdapterHub's ``adapters`` package pins older transformers
releases than ours, so this module adds them directly: an adapter wraps a sublayer's output
projection ``f`` and returns ``y + up(act(down(y)))`` with ``y = f(x)``, i.e. it sits on the sublayer
output just before the residual addition, as in both papers. Houlsby puts one after attention
(``o_proj``) and one after the MLP (``down_proj``); Pfeiffer only after the MLP. ``up`` starts at
zero, so a fresh adapter is the identity.

Saved like a PEFT adapter: ``adapter_config.json`` (``"peft_type": "DISTILLTUNE_BOTTLENECK"``, the
base model's local directory, the settings) and ``adapter_model.safetensors`` with only the adapter
weights. ``load_bottleneck_adapter(base, dir)`` (used by ``distilltune.models.load_model``) restores it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from distilltune.errors import UserError

PEFT_TYPE = "DISTILLTUNE_BOTTLENECK"
DEFAULT_TARGETS = {"houlsby": ["o_proj", "down_proj"], "pfeiffer": ["down_proj"]}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"


class Bottleneck(nn.Module):
    def __init__(self, dim: int, bottleneck: int, non_linearity: str):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.up(self.act(self.down(y)))


class AdaptedLinear(nn.Module):
    """``base`` (frozen) followed by a bottleneck adapter on its output."""

    def __init__(self, base: nn.Linear, bottleneck: int, non_linearity: str):
        super().__init__()
        self.base = base
        self.adapter = Bottleneck(base.out_features, bottleneck, non_linearity).to(
            device=base.weight.device, dtype=base.weight.dtype
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(self.base(x))


def matching_modules(model: nn.Module, targets: list[str]) -> dict[str, list[str]]:
    """For each target name, the full names of modules whose name is it or ends with ``.name``."""
    found: dict[str, list[str]] = {t: [] for t in targets}
    for name, _module in model.named_modules():
        for t in targets:
            if name == t or name.endswith("." + t):
                found[t].append(name)
    return found


def add_bottleneck_adapters(
    model: nn.Module,
    kind: str = "pfeiffer",
    reduction_factor: int = 16,
    non_linearity: str = "relu",
    target_modules: list[str] | None = None,
) -> nn.Module:
    """Freeze ``model`` and wrap every target Linear with an adapter (in place; returns ``model``)."""
    targets = target_modules or DEFAULT_TARGETS[kind]
    matches = matching_modules(model, targets)
    empty = [t for t, names in matches.items() if not names]
    if empty:
        raise UserError(f"adapter.target_modules {empty} match no module of {type(model).__name__}")
    for p in model.parameters():
        p.requires_grad_(False)
    for names in matches.values():
        for name in names:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            base = getattr(parent, attr)
            if not isinstance(base, nn.Linear):
                raise UserError(f"adapter target {name} is a {type(base).__name__}, not a Linear layer")
            width = max(1, base.out_features // reduction_factor)
            setattr(parent, attr, AdaptedLinear(base, width, non_linearity))
    model.distilltune_bottleneck = {
        "kind": kind,
        "reduction_factor": reduction_factor,
        "non_linearity": non_linearity,
        "target_modules": targets,
    }
    return model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if ".adapter." in name
    }


def save_bottleneck_adapter(
    model: nn.Module, out_dir: str | Path, base_model_name_or_path: str, state_dict: dict | None = None
) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = getattr(model, "distilltune_bottleneck", None)
    if settings is None:
        raise ValueError("model has no bottleneck adapters")
    weights = (
        adapter_state(model)
        if state_dict is None
        else {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if ".adapter." in k}
    )
    save_file(weights, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    cfg = {"peft_type": PEFT_TYPE, "base_model_name_or_path": base_model_name_or_path, **settings}
    (out / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")


def load_bottleneck_adapter(base_model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Add the adapters described in ``adapter_dir`` to ``base_model`` and load their weights."""
    d = Path(adapter_dir)
    cfg = json.loads((d / CONFIG_NAME).read_text())
    if cfg.get("peft_type") != PEFT_TYPE:
        raise UserError(f"{d}/{CONFIG_NAME}: not a distilltune bottleneck adapter")
    model = add_bottleneck_adapters(
        base_model,
        kind=cfg["kind"],
        reduction_factor=int(cfg["reduction_factor"]),
        non_linearity=cfg["non_linearity"],
        target_modules=list(cfg["target_modules"]),
    )
    state = load_file(str(d / WEIGHTS_NAME))
    expected = adapter_state(model).keys()
    if set(state) != set(expected):
        raise UserError(f"{d}/{WEIGHTS_NAME}: adapter weights do not fit the base model")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].dtype))
    return model.eval()
