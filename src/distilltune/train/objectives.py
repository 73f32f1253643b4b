"""Objectives plugged into the training loop, and the forward pass they share.

An objective is ``objective(model, batch, step) -> (loss, metrics)``: ``model`` is the prepared
``AnswerLogitsModel`` (possibly wrapped by DDP), ``batch`` holds ``input_ids``, ``attention_mask``,
``labels`` and ``index`` (positions of the examples in the training list); ``loss`` is a scalar
tensor to minimise, ``metrics`` a dict of floats for the log.

Why a wrapper module: the vocabulary projection is the most expensive tensor of a small model's step
(8 × 128 × 49152 logits ≈ 200 MB). We run the decoder body, keep only the hidden states at positions
that predict a label, and apply ``lm_head`` to those (1.24× faster, less memory; docs/design.md). Doing it
inside ``forward`` of a module keeps DDP/FSDP gradient synchronisation intact (they hook ``forward``).

Objectives are registered by name (``OBJECTIVES``): a builder takes the run being built
(``train.run.RunContext``: config, tokenizer, trained model, the teacher signal a recipe prepared) and
returns the objective. ``causal-lm`` is registered here; distillation registers its own
(``distill.objectives``). A training run names its objective, and ``train.run`` looks it up, so a new
objective is one ``register_objective`` call, not a branch in the run setup.

Loss positions are row-major over (batch row, position) where ``labels[:, 1:] != IGNORE_INDEX``;
``loss_positions`` gives the same order to objectives that join per-token data (teacher top-k cache).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distilltune.errors import UserError
from distilltune.train.forward import answer_states, loss_mask  # one forward for both objectives

Objective = Callable[[nn.Module, dict[str, torch.Tensor], int], tuple[torch.Tensor, dict[str, float]]]
ObjectiveBuilder = Callable[[Any], Objective]  # train.run.RunContext -> objective

OBJECTIVES: dict[str, ObjectiveBuilder] = {}


def register_objective(name: str, builder: ObjectiveBuilder) -> None:
    """Make ``builder`` the objective called ``name`` (a training run names the one it trains with)."""
    if name in OBJECTIVES:
        raise ValueError(f"an objective named {name!r} is already registered")
    OBJECTIVES[name] = builder


def build_objective(name: str, ctx) -> Objective:
    """The objective ``name`` for the run ``ctx``."""
    builder = OBJECTIVES.get(name)
    if builder is None:
        raise UserError(f"unknown training objective {name!r}; registered: {', '.join(OBJECTIVES)}")
    return builder(ctx)


def loss_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the predicting positions, in the order ``answer_logits`` returns them."""
    rows, cols = loss_mask(labels).nonzero(as_tuple=True)
    return rows, cols


def answer_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits only where a label is predicted: ([N, V], targets [N]) in ``loss_positions`` order.

    ``mask`` [B, T-1] picks other positions instead (distillation at every token); their targets
    are ``IGNORE_INDEX`` where nothing is labelled. Works on a plain HF causal LM, a PEFT model and
    (with a full forward) prompt-learning PEFT models, whose virtual tokens only the PEFT wrapper's
    forward adds.
    """
    st = answer_states(model, input_ids, attention_mask, labels, mask=mask)
    return (st.logits if st.logits is not None else st.logits_chunk(0, st.n)), st.targets


class AnswerLogitsModel(nn.Module):
    """What the loop prepares and hands to objectives: ``forward`` = ``answer_logits`` of ``.model``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return answer_logits(self.model, input_ids, attention_mask, labels, mask)


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over N tokens; 0 (with a graph) when N == 0, never NaN."""
    if targets.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets, reduction="mean")


def causal_lm_objective(model: nn.Module, batch: dict[str, torch.Tensor], step: int):
    """Supervised fine-tuning: next-token cross-entropy on the assistant tokens."""
    logits, targets = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
    loss = token_cross_entropy(logits, targets)
    return loss, {"ce": float(loss.detach())}


register_objective("causal-lm", lambda ctx: causal_lm_objective)
