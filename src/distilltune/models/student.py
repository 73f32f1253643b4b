"""Build a student by depth pruning: copy the embeddings, final norm, head and a subset of layers
(``build_student`` then narrows the kept layers when the spec asks for width: ``models.width``).

``n_layers=N`` alone keeps the first ceil(N/2) and last floor(N/2) layers (0,1,2,27,28,29 of the
bundled teacher): a choice that needs no data. Measured on SmolLM2-135M (docs/design.md), keeping the
layers with the highest block influence on the task's own prompts starts better (answer CE 10.44 vs
11.50 at 6 layers, 6.76 vs 8.37 at 15), so ``compare`` measures them (``models.importance``,
``compare.students``) and passes the chosen ``layers=`` on. Either way a freshly pruned student is far
from the teacher and needs training (distillation, best) to become useful.
"""

from __future__ import annotations

import copy
import re

import torch
from torch import nn

from distilltune.errors import UserError


def default_layers(n_total: int, n_keep: int) -> list[int]:
    """Keep the first ceil(n/2) and the last floor(n/2) layers."""
    if not 1 <= n_keep <= n_total:
        raise UserError(f"n_layers={n_keep} must be between 1 and the teacher's {n_total} layers")
    head = (n_keep + 1) // 2
    tail = n_keep - head
    return list(range(head)) + list(range(n_total - tail, n_total))


def parse_layers(text: str, n_total: int) -> list[int]:
    try:
        layers = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise UserError(
            f"layers={text!r}: expected comma-separated layer indices like 0,1,2,27,28,29"
        ) from None
    bad = [i for i in layers if not 0 <= i < n_total]
    if bad or not layers:
        raise UserError(f"layers={text!r}: indices must be in 0..{n_total - 1}")
    if sorted(set(layers)) != layers:
        raise UserError(f"layers={text!r}: indices must be increasing and unique")
    return layers


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UserError(
            f"depth pruning supports decoder models with model.layers (Llama, Qwen, Mistral...); "
            f"{type(model).__name__} has none"
        )
    return layers


def instantiate(template: nn.Module, cfg, state: dict, buffers: dict, rename=lambda name: name) -> nn.Module:
    """A new model of ``template``'s class built from ``cfg`` and ``state`` (cloned: nothing is shared
    with the source). Non-persistent buffers (rotary ``inv_freq``) are not in a state dict: each comes
    from ``buffers[rename(name)]``."""
    with torch.device("meta"):
        student = type(template)(cfg)
    state = {k: v.detach().clone() for k, v in state.items()}
    try:
        student.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # a tensor whose shape the pruned config does not expect
        raise UserError(f"could not copy weights into the student ({type(template).__name__}): {e}") from None
    if getattr(cfg, "tie_word_embeddings", False):
        student.tie_weights()
    for name, buf in list(student.named_buffers()):
        if not buf.is_meta:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = student.get_submodule(owner_name) if owner_name else student
        owner._buffers[attr] = buffers[rename(name)].detach().clone()
    missing = [n for n, p in list(student.named_parameters()) + list(student.named_buffers()) if p.is_meta]
    if missing:
        raise UserError(f"could not copy weights into the student: {missing[:3]}")
    for i, layer in enumerate(_decoder_layers(student)):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = i  # the KV cache is indexed by layer
    return student


def prune_layers(teacher: nn.Module, layers: list[int]) -> nn.Module:
    """Return a new model holding copies of ``layers`` of ``teacher``; the teacher is untouched."""
    src = _decoder_layers(teacher)
    cfg = copy.deepcopy(teacher.config)
    cfg.num_hidden_layers = len(layers)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in layers]
    # Everything but the decoder layers, then the chosen layers in order.
    state = {k: v for k, v in teacher.state_dict().items() if ".layers." not in k}
    for new_i, old_i in enumerate(layers):
        for k, v in src[old_i].state_dict().items():
            state[f"model.layers.{new_i}.{k}"] = v
    student = instantiate(
        teacher,
        cfg,
        state,
        dict(teacher.named_buffers()),
        lambda name: re.sub(r"\.layers\.(\d+)\.", lambda m: f".layers.{layers[int(m[1])]}.", name),
    )
    student.config.distilltune_student_layers = layers
    student.generation_config = copy.deepcopy(teacher.generation_config)
    return student.eval()


def build_student(base: nn.Module, spec) -> nn.Module:
    """The student ``spec`` (a ``models.spec.StudentSpec``) describes, cut from ``base``: its layers
    first, then the width of every kept layer, ranked by the spec's importance file or, without one,
    by weight magnitude (``models.width``)."""
    layers = spec.layer_choice(len(_decoder_layers(base)))
    if not spec.prunes_width:
        return prune_layers(base, layers)
    from distilltune.models.width import load_scores, prune_width, weight_importance

    if spec.importance is not None:
        mlp_scores, head_scores = load_scores(spec.importance)
        source = "activations"
    else:
        mlp_scores, head_scores = weight_importance(base)
        source = "weights"
    n_total = len(_decoder_layers(base))
    if mlp_scores.shape[0] != n_total or head_scores.shape[0] != n_total:
        raise UserError(
            f"importance={spec.importance}: scores for {mlp_scores.shape[0]} layers, "
            f"but the base model has {n_total}; measure them on this base"
        )
    depth = prune_layers(base, layers)
    student = prune_width(depth, spec.mlp, spec.heads, mlp_scores[layers], head_scores[layers], source)
    del depth
    return student
