"""Hidden states at the distillation positions, and the output projection that turns them into logits.

Which positions the student imitates the teacher at (``KD_POSITIONS``):

- ``answer`` — where the training labels are (the answer tokens), as supervised fine-tuning;
- ``all``    — every real token the teacher reads: system prompt, retrieved context, question and
  answer. The teacher's distribution over the prompt is knowledge too (how the knowledge base's
  passages read, what follows what); on the bundled task it is ~14x more teacher signal per example,
  and it is what lets a freshly pruned student beat label-only fine-tuning (benchmarks/distill.py
  ``--quality``). The label cross-entropy stays on the answer tokens either way.

Both models run their decoder body and the vocabulary projection is applied to those positions
alone, chunk by chunk (``losses.chunked_head_loss``). Positions are row-major over
(batch row, position) where ``kd_mask`` is true — for ``answer`` the same order as
``distilltune.train.objectives.loss_positions``; the teacher cache stores them in that order.

Models without a separable body/head (PEFT prompt learning, whose virtual tokens only the wrapper's
forward adds) fall back to a full forward and hand out the answer logits instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distilltune.data.chat import IGNORE_INDEX

KD_POSITIONS = ("answer", "all")


def loss_mask(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] labels → [B, T-1] bool: position t predicts labels[t + 1]."""
    return labels[:, 1:] != IGNORE_INDEX


def kd_mask(labels: torch.Tensor, attention_mask: torch.Tensor, positions: str = "answer") -> torch.Tensor:
    """[B, T-1] bool: the positions distilled at (see module docstring). Padding never counts."""
    if positions == "answer":
        return loss_mask(labels)
    if positions == "all":
        real = attention_mask.bool()
        return real[:, 1:] & real[:, :-1]
    raise ValueError(f"unknown KD positions {positions!r}; expected one of {', '.join(KD_POSITIONS)}")


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
    """One model's view of a batch's distillation positions.

    ``targets`` holds the label of each position, ``IGNORE_INDEX`` where none (prompt positions when
    distilling at every position). Either ``hidden`` [N, H] with ``weight`` [V, H] / ``bias`` (logits = hidden @ weightᵀ + bias), or,
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

    @property
    def n_labelled(self) -> int:
        """Positions with a label (the cross-entropy term's denominator)."""
        return int((self.targets != IGNORE_INDEX).sum())

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
    positions: str = "answer",
    mask: torch.Tensor | None = None,
) -> AnswerStates:
    """Run ``model``'s body on a batch and gather the ``positions`` (see module docstring), or the
    positions of an explicit [B, T-1] ``mask``."""
    if mask is None:
        mask = kd_mask(labels, attention_mask, positions)
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
