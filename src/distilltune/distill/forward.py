"""Hidden states at the answer positions, and the output projection that turns them into logits.

Distillation compares distributions only where the training labels are (the answer tokens), so
both models run their decoder body and the vocabulary projection is applied to those positions
alone, chunk by chunk (``losses.chunked_head_loss``). Positions are row-major over
(batch row, position) where ``labels[:, 1:] != IGNORE_INDEX`` — the same order as
``distilltune.train.objectives.loss_positions`` and as the teacher cache stores them.

Models without a separable body/head (PEFT prompt learning, whose virtual tokens only the wrapper's
forward adds) fall back to a full forward and hand out the answer logits instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distilltune.data.chat import IGNORE_INDEX


def loss_mask(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] labels → [B, T-1] bool: position t predicts labels[t + 1]."""
    return labels[:, 1:] != IGNORE_INDEX


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP (``.module``) and the train loop's answer-logits wrapper (``.model``) if present."""
    inner = getattr(model, "module", model)
    if type(inner).__name__ == "AnswerLogitsModel":
        inner = inner.model
    return inner


def _uses_prompt_learning(model: nn.Module) -> bool:
    cfg = getattr(model, "peft_config", None)
    if not cfg:
        return False
    return any(getattr(c, "is_prompt_learning", False) for c in cfg.values())


def body_and_head(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """(decoder body returning ``last_hidden_state``, the vocabulary projection) or None."""
    if _uses_prompt_learning(model):
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_decoder = getattr(base, "get_decoder", None)
    body = get_decoder() if get_decoder is not None else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if body is None or body is base or not isinstance(head, nn.Linear):
        return None
    if getattr(getattr(base, "config", None), "final_logit_softcapping", None):
        return None  # Gemma-style soft-capping is not a plain linear projection
    return body, head


@dataclass
class AnswerStates:
    """One model's view of a batch's answer positions.

    Either ``hidden`` [N, H] with ``weight`` [V, H] / ``bias`` (logits = hidden @ weightᵀ + bias), or,
    for models without a separable head, precomputed ``logits`` [N, V].
    ``layers`` holds the per-layer hidden states [B, T, H] when they were asked for.
    """

    targets: torch.Tensor  # [N] label ids
    hidden: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    layers: tuple[torch.Tensor, ...] | None = None

    @property
    def n(self) -> int:
        return int(self.targets.shape[0])

    def logits_chunk(self, start: int, end: int) -> torch.Tensor:
        if self.logits is not None:
            return self.logits[start:end]
        return F.linear(self.hidden[start:end], self.weight, self.bias)


def answer_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    output_hidden_states: bool = False,
) -> AnswerStates:
    """Run ``model``'s body on a batch and gather the answer positions (see module docstring)."""
    mask = loss_mask(labels)
    targets = labels[:, 1:][mask]
    parts = body_and_head(model)
    kw = {"output_hidden_states": True} if output_hidden_states else {}
    if parts is None:
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kw)
        logits = out.logits[:, -input_ids.shape[1] :]  # prompt tuning prepends virtual positions
        layers = tuple(out.hidden_states) if output_hidden_states else None
        return AnswerStates(targets, logits=logits[:, :-1][mask], layers=layers)
    body, head = parts
    out = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kw)
    hidden = out.last_hidden_state[:, :-1][mask]
    layers = tuple(out.hidden_states) if output_hidden_states else None
    return AnswerStates(targets, hidden=hidden, weight=head.weight, bias=head.bias, layers=layers)
