"""Hidden-state distillation: match mapped student and teacher layers (MSE or cosine).

The layer map pairs each student layer with a teacher layer: a depth-pruned student is paired with
the teacher layers it was copied from (``config.distilltune_student_layers``), any other student with
evenly spaced teacher layers (the last with the last). When the widths differ a learned linear
projection (student width → teacher width) per pair is trained with the student; it is attached to
the student as ``distill_projection`` so the loop's optimizer and checkpoints carry it, and removed
before the artifact is saved (``detach_projection``).

Hidden states are compared at every real (non-padding) token. ``hidden_states[j + 1]`` is the output
of layer j (index 0 is the embeddings; the last entry is after the final norm, on both sides).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distilltune.errors import UserError

ATTR = "distill_projection"


def _n_layers(model: nn.Module) -> int:
    cfg = model.config
    return int(cfg.num_hidden_layers)


def default_layer_map(student: nn.Module, teacher: nn.Module) -> list[tuple[int, int]]:
    n_s, n_t = _n_layers(student), _n_layers(teacher)
    src = getattr(student.config, "distilltune_student_layers", None)
    if src and len(src) == n_s and max(src) < n_t:
        return [(i, int(j)) for i, j in enumerate(src)]
    return [(i, round((i + 1) * n_t / n_s) - 1) for i in range(n_s)]


def check_layer_map(pairs: list[tuple[int, int]], n_student: int, n_teacher: int) -> None:
    bad = [(s, t) for s, t in pairs if not (0 <= s < n_student and 0 <= t < n_teacher)]
    if bad or not pairs:
        raise UserError(
            f"hidden.layers {bad or pairs}: student layers must be in 0..{n_student - 1}, "
            f"teacher layers in 0..{n_teacher - 1}"
        )


class Projection(nn.Module):
    """One linear map per layer pair (student width → teacher width), initialised near a truncation."""

    def __init__(self, n_pairs: int, d_student: int, d_teacher: int):
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(d_student, d_teacher, bias=False) for _ in range(n_pairs))
        with torch.no_grad():
            for m in self.maps:
                m.weight.zero_()
                k = min(d_student, d_teacher)
                m.weight[:k, :k] = torch.eye(k)


def attach_projection(
    student: nn.Module, teacher: nn.Module, pairs: list[tuple[int, int]]
) -> Projection | None:
    """Give the student a trainable projection when the widths differ; None when they match."""
    d_s, d_t = int(student.config.hidden_size), int(teacher.config.hidden_size)
    if d_s == d_t:
        return None
    proj = Projection(len(pairs), d_s, d_t).to(next(student.parameters()).device)
    base = student.get_base_model() if hasattr(student, "get_base_model") else student
    base.add_module(ATTR, proj)
    return proj


def detach_projection(student: nn.Module) -> None:
    base = student.get_base_model() if hasattr(student, "get_base_model") else student
    if hasattr(base, ATTR):
        delattr(base, ATTR)


def hidden_loss(
    student_layers: tuple[torch.Tensor, ...],
    teacher_layers: tuple[torch.Tensor, ...],
    pairs: list[tuple[int, int]],
    attention_mask: torch.Tensor,
    kind: str = "mse",
    projection: Projection | None = None,
) -> torch.Tensor:
    """Mean over pairs of the per-token MSE (or 1 - cosine) at real tokens.

    student_layers / teacher_layers: the models' ``hidden_states`` tuples ([B, T, H] each, index 0 =
    embeddings); attention_mask: [B, T]. Returns a scalar; 0 when there are no real tokens.
    """
    mask = attention_mask.bool()
    n = int(mask.sum())
    if n == 0:
        return student_layers[0].sum() * 0.0
    total = student_layers[0].new_zeros(())
    for i, (s, t) in enumerate(pairs):
        hs = student_layers[s + 1][mask].float()
        ht = teacher_layers[t + 1][mask].float().detach()
        if projection is not None:
            hs = projection.maps[i](hs)
        if kind == "mse":
            total = total + F.mse_loss(hs, ht, reduction="mean")
        elif kind == "cosine":
            total = total + (1.0 - F.cosine_similarity(hs, ht, dim=-1)).mean()
        else:
            raise ValueError(f"unknown hidden loss {kind!r}")
    return total / len(pairs)
